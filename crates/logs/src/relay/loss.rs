//! Loss no follower could avoid, made known: files that appeared at a
//! followed path and were rotated away and deleted before the relay could
//! open them (the writer rotates faster than the relay reads, or the relay
//! was stopped or starved).
//!
//! The watcher records each file that appears at a followed path (created
//! there or renamed to it), with the file it then found there if it was
//! new to the path, or none (that file is gone again). The relay records
//! each file it reads. At a look where the followed path still holds the
//! file being read, every appearance from before the previous such look
//! must have been read: rotations found before then were handled then.
//! Appearances of a known file match its read; the others match reads of
//! files nobody saw appear (found beside the path after the event); what
//! is left was never read, and is lost.
//!
//! No time window decides what pairs with what: a file's event is made
//! before the relay can read it, so once the watcher has emptied its queue
//! (inotify.rs reads it to the end) every read made before then has its
//! appearance recorded; such a read is dropped only after those
//! appearances were settled. However far behind the watcher is (a
//! directory busy with other files, a starved relay), a read waits for
//! its event. A file renamed away and back (the watcher follows rename
//! cookies) is no new file at the path and is not recorded at all.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::time::Instant;

use crate::identity::FileId;

/// A file that appeared at a followed path.
#[derive(Debug, Clone)]
pub(super) struct Appearance {
    pub(super) path: PathBuf,
    /// When the watcher saw it.
    pub(super) at: Instant,
    /// The file the watcher then found at the path, if new to it.
    pub(super) id: Option<FileId>,
}

/// Most appearances or reads kept per followed path.
const MAX_PER_PATH: usize = 1024;

#[derive(Debug, Default)]
struct PathLedger {
    appeared: VecDeque<Appearance>,
    /// Files read since the last settlement, and when their reading began.
    read: VecDeque<(FileId, Instant)>,
    /// The previous look that found the followed file in place, and the
    /// start of the last read that emptied the watcher's queue before it.
    last_settled: Option<(Instant, Option<Instant>)>,
}

/// Appearances and reads, per followed path.
#[derive(Debug, Default)]
pub(super) struct Ledger {
    paths: HashMap<PathBuf, PathLedger>,
}

impl Ledger {
    pub(super) fn appeared(&mut self, a: Appearance) {
        let l = self.paths.entry(a.path.clone()).or_default();
        if l.appeared.len() < MAX_PER_PATH {
            l.appeared.push_back(a);
        }
    }

    /// The relay began reading file `id` for the followed `path`.
    pub(super) fn read(&mut self, path: &std::path::Path, id: FileId, at: Instant) {
        let l = self.paths.entry(path.to_path_buf()).or_default();
        if l.read.len() >= MAX_PER_PATH {
            l.read.pop_front();
        }
        l.read.push_back((id, at));
    }

    /// At a look (at `now`) that found the followed file in place: how many
    /// files appeared at `path` before the previous such look and were
    /// never read. With `final_look`, everything seen until `now` counts
    /// (the path is empty, and what was beside it was searched already).
    /// `drained` is the start of the last read that emptied the watcher's
    /// event queue before `now`.
    pub(super) fn settle(
        &mut self,
        path: &std::path::Path,
        now: Instant,
        drained: Option<Instant>,
        final_look: bool,
    ) -> u64 {
        let Some(l) = self.paths.get_mut(path) else {
            return 0;
        };
        let cut = if final_look {
            Some((now, drained))
        } else {
            l.last_settled.replace((now, drained))
        };
        let Some((cut, drained)) = cut else {
            return 0;
        };
        let mut lost = 0;
        while l.appeared.front().is_some_and(|a| a.at < cut) {
            let Some(a) = l.appeared.pop_front() else {
                break;
            };
            let matched = match a.id {
                // The watcher held it open: it was read (or is being read).
                Some(id) => {
                    if let Some(i) = l.read.iter().position(|r| r.0 == id) {
                        l.read.remove(i);
                    }
                    true
                }
                // A file gone from the path when the watcher looked: a file
                // read that no appearance names (found beside the path) was
                // it. The relay may have read it before the watcher saw the
                // event, so any such read counts.
                None => {
                    let named = |id: &FileId| l.appeared.iter().any(|b| b.id == Some(*id));
                    match l.read.iter().position(|r| !named(&r.0)) {
                        Some(i) => {
                            l.read.remove(i);
                            true
                        }
                        None => false,
                    }
                }
            };
            if !matched {
                lost += 1;
            }
        }
        // A file read before the queue was emptied had its event read by
        // then (it appeared before it was read), and that appearance was
        // settled just now (seen before the cut): such a read matches no
        // appearance still to come. Later reads wait, however late the
        // watcher is.
        if let Some(drained) = drained {
            while l.read.front().is_some_and(|r| r.1 < drained) {
                l.read.pop_front();
            }
        }
        lost
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn id(ino: u64) -> FileId {
        FileId { dev: 1, ino }
    }

    #[test]
    fn a_file_that_appeared_and_was_never_read_is_lost() {
        let path = PathBuf::from("/l/app.log");
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut l = Ledger::default();
        assert_eq!(l.settle(&path, at(10), Some(at(10 - 1)), false), 0);
        // Three rotations while the relay was stopped. After it resumes it
        // reads F3 (beside the path) and F4 (at it) before the watcher
        // reports the events, each finding F4 at the path (only the first
        // is new to it).
        l.read(&path, id(3), at(98));
        l.read(&path, id(4), at(99));
        for ms in [100, 101, 102] {
            l.appeared(Appearance {
                path: path.clone(),
                at: at(ms),
                id: (ms == 100).then_some(id(4)),
            });
        }
        // The look that moved on to F4, then a look with F4 in place.
        assert_eq!(
            l.settle(&path, at(200), Some(at(200 - 1)), false),
            0,
            "events newer than the last look wait"
        );
        assert_eq!(
            l.settle(&path, at(300), Some(at(300 - 1)), false),
            1,
            "F2 was never read"
        );
        assert_eq!(l.settle(&path, at(400), Some(at(400 - 1)), false), 0);
        // A read long before an unknown appearance pairs with nothing.
        l.read(&path, id(7), at(500));
        l.settle(&path, at(2000), Some(at(2000 - 1)), false);
        l.settle(&path, at(2900), Some(at(2900 - 1)), false);
        l.appeared(Appearance {
            path: path.clone(),
            at: at(3000),
            id: None,
        });
        assert_eq!(l.settle(&path, at(3100), Some(at(3100 - 1)), false), 0);
        assert_eq!(l.settle(&path, at(3200), Some(at(3200 - 1)), false), 1);
    }

    #[test]
    fn a_read_waits_for_its_appearance_however_late_the_watcher_is() {
        let path = PathBuf::from("/l/app.log");
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut l = Ledger::default();
        l.settle(&path, at(0), None, false);
        // The relay read F2, then F3 (F2 found beside the path), while the
        // watcher's queue was full of other files' events: it never
        // emptied after 50 ms, and the two events come seconds later,
        // both finding F3 at the path.
        l.read(&path, id(2), at(100));
        l.read(&path, id(3), at(150));
        for ms in (200..5000).step_by(200) {
            assert_eq!(l.settle(&path, at(ms), Some(at(50)), false), 0);
        }
        for (ms, found) in [(5000, Some(id(3))), (5001, None)] {
            l.appeared(Appearance {
                path: path.clone(),
                at: at(ms),
                id: found,
            });
        }
        for ms in [5100, 5200, 5300] {
            assert_eq!(l.settle(&path, at(ms), Some(at(ms - 1)), false), 0);
        }
    }

    #[test]
    fn every_file_read_matches_its_appearance_whatever_the_order() {
        let path = PathBuf::from("/l/app.log");
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut l = Ledger::default();
        l.settle(&path, at(0), None, false);
        // The relay found the new file before the event came.
        l.read(&path, id(2), at(5));
        l.appeared(Appearance {
            path: path.clone(),
            at: at(6),
            id: Some(id(2)),
        });
        // A rotation whose file was renamed away before the watcher looked,
        // then read beside the path.
        l.appeared(Appearance {
            path: path.clone(),
            at: at(20),
            id: None,
        });
        l.read(&path, id(3), at(25));
        assert_eq!(l.settle(&path, at(50), Some(at(50 - 1)), false), 0);
        assert_eq!(l.settle(&path, at(100), Some(at(100 - 1)), false), 0);
        // The path emptied: what was seen until now counts at once.
        l.appeared(Appearance {
            path: path.clone(),
            at: at(120),
            id: None,
        });
        assert_eq!(l.settle(&path, at(130), Some(at(130 - 1)), true), 1);
    }
}
