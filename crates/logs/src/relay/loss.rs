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
/// How much later than the relay's read of a file the watcher may see it
/// appear (both run at once; after a stop, they resume together).
const GRACE: std::time::Duration = std::time::Duration::from_secs(1);

#[derive(Debug, Default)]
struct PathLedger {
    appeared: VecDeque<Appearance>,
    /// Files read since the last settlement, and when their reading began.
    read: VecDeque<(FileId, Instant)>,
    /// The previous look that found the followed file in place.
    last_settled: Option<Instant>,
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
    pub(super) fn settle(&mut self, path: &std::path::Path, now: Instant, final_look: bool) -> u64 {
        let Some(l) = self.paths.get_mut(path) else {
            return 0;
        };
        let cut = if final_look {
            Some(now)
        } else {
            l.last_settled.replace(now)
        };
        let Some(cut) = cut else {
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
        // Reads well before the cut match no appearance still to come (the
        // watcher sees an event within milliseconds of the relay's read).
        while l.read.front().is_some_and(|r| r.1 + GRACE < cut) {
            l.read.pop_front();
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
        assert_eq!(l.settle(&path, at(10), false), 0);
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
            l.settle(&path, at(200), false),
            0,
            "events newer than the last look wait"
        );
        assert_eq!(l.settle(&path, at(300), false), 1, "F2 was never read");
        assert_eq!(l.settle(&path, at(400), false), 0);
        // A read long before an unknown appearance pairs with nothing.
        l.read(&path, id(7), at(500));
        l.settle(&path, at(2000), false);
        l.settle(&path, at(2900), false);
        l.appeared(Appearance {
            path: path.clone(),
            at: at(3000),
            id: None,
        });
        assert_eq!(l.settle(&path, at(3100), false), 0);
        assert_eq!(l.settle(&path, at(3200), false), 1);
    }

    #[test]
    fn every_file_read_matches_its_appearance_whatever_the_order() {
        let path = PathBuf::from("/l/app.log");
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut l = Ledger::default();
        l.settle(&path, at(0), false);
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
        assert_eq!(l.settle(&path, at(50), false), 0);
        assert_eq!(l.settle(&path, at(100), false), 0);
        // The path emptied: what was seen until now counts at once.
        l.appeared(Appearance {
            path: path.clone(),
            at: at(120),
            id: None,
        });
        assert_eq!(l.settle(&path, at(130), true), 1);
    }
}
