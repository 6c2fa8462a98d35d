//! Files rotated away before the relay could read them, found beside the
//! followed file by name (`app.log.1`, `app.log-20260101`), age and identity.

use super::reader::Reader;
use super::rotation::at_path;
use super::{Relay, RelayError, file_name, parent_dir};
use std::collections::HashSet;
use std::fs::{self, File};
use std::io::Write;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use crate::identity::{FileId, Fingerprint, FirstBytes, ReadContent, open_regular};
use crate::metrics::RotationKind;
use crate::output::Output;

/// Directory entries looked at when searching for rotated files.
pub(super) const DIR_SEARCH_LIMIT: usize = 10_000;

/// Rotated files with these endings are compressed: not relayed.
pub(super) const COMPRESSED: [&str; 5] = [".gz", ".bz2", ".xz", ".zst", ".lz4"];

/// Which files [`Relay::recover_missed`] leaves to the followed file's reader.
#[derive(Clone, Copy)]
pub(super) enum Skip<'a> {
    /// None: every missed file is relayed.
    Nothing,
    /// Copies (whole or in progress) of what the followed path holds now.
    CopiesOfPath,
    /// Copies of content that starts with these bytes.
    CopiesOf(&'a Fingerprint),
}

/// A file beside a followed one that may hold lines we never read.
pub(super) struct Candidate {
    pub(super) mtime: SystemTime,
    pub(super) number: Option<u64>,
    pub(super) path: PathBuf,
    pub(super) id: FileId,
    /// The file, when it was opened before it was listed (pinned).
    pub(super) file: Option<File>,
}

/// Sorts `found` oldest first (for equal times `app.log.2` before
/// `app.log.1`) and opens them all before reading any: names shift with each
/// rotation. A name that already belongs to another file is skipped; the
/// next listing finds that file under its new name.
pub(super) fn open_candidates(mut found: Vec<Candidate>) -> Vec<(PathBuf, File)> {
    found.sort_by(|a, b| {
        a.mtime
            .cmp(&b.mtime)
            .then_with(|| match (a.number, b.number) {
                (Some(x), Some(y)) => y.cmp(&x),
                _ => a.path.cmp(&b.path),
            })
    });
    found
        .into_iter()
        .filter_map(|c| {
            if let Some(file) = c.file {
                return Some((c.path, file));
            }
            let (file, _) = open_regular(&c.path).ok()?;
            let same = file.metadata().is_ok_and(|m| FileId::of(&m) == c.id);
            same.then_some((c.path, file))
        })
        .collect()
}

/// The file in `dirs` with inode `id` that still starts with `fp` and has at least `len` bytes.
pub(super) fn find_by_inode(
    dirs: &[PathBuf],
    id: FileId,
    fp: &impl FirstBytes,
    len: u64,
) -> Option<(File, PathBuf)> {
    dirs.iter().flat_map(|d| dir_entries(d)).find_map(|p| {
        let m = fs::metadata(&p).ok()?;
        if !m.is_file() || FileId::of(&m) != id || m.len() < len {
            return None;
        }
        let (f, _) = open_regular(&p).ok()?;
        fp.found_in(&f).ok()?.then_some((f, p))
    })
}

/// The paths in `dir` (up to [`DIR_SEARCH_LIMIT`]), from two listings: a
/// listing can miss a file renamed while it is read (a rotation shifting
/// `app.log.1` to `app.log.2`).
pub(super) fn dir_entries(dir: &Path) -> Vec<PathBuf> {
    let list = || -> Vec<PathBuf> {
        fs::read_dir(dir)
            .map(|entries| {
                entries
                    .flatten()
                    .take(DIR_SEARCH_LIMIT)
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut paths = list();
    let mut seen: HashSet<PathBuf> = paths.iter().cloned().collect();
    for p in list() {
        if seen.insert(p.clone()) {
            paths.push(p);
        }
    }
    paths
}

/// `Some(n)` for a rotation suffix `.n` (`app.log.3`).
pub(super) fn rotation_number(suffix: &str) -> Option<u64> {
    suffix.strip_prefix('.')?.parse().ok()
}

/// A copy of a truncated file's content, found beside it.
pub(super) struct Copy {
    pub(super) file: File,
    pub(super) path: PathBuf,
    pub(super) len: u64,
}

/// Finds the copy of a truncated file: a regular file in `dirs`, other than
/// `exclude`, that starts with `fp`. The most recently modified one at least
/// `min_len` long wins; if none is, the most recently modified shorter one
/// (made before the writer's last lines, which the relay read from the file
/// itself: its whole content was relayed already).
pub(super) fn find_copy(
    dirs: &[PathBuf],
    fp: &impl FirstBytes,
    min_len: u64,
    exclude: FileId,
) -> Option<Copy> {
    if fp.covered() == 0 {
        return None;
    }
    // The best one long enough, and the best shorter one.
    let mut best: [Option<(SystemTime, Copy)>; 2] = [None, None];
    for path in dirs.iter().flat_map(|d| dir_entries(d)) {
        let Ok(meta) = fs::metadata(&path) else {
            continue;
        };
        if !meta.is_file() || FileId::of(&meta) == exclude {
            continue;
        }
        let Ok((file, _)) = open_regular(&path) else {
            continue;
        };
        if !fp.found_in(&file).unwrap_or(false) {
            continue;
        }
        let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        let slot = &mut best[usize::from(meta.len() < min_len)];
        if slot.as_ref().is_none_or(|(t, _)| mtime > *t) {
            let len = meta.len();
            *slot = Some((mtime, Copy { file, path, len }));
        }
    }
    let [long, short] = best;
    long.or(short).map(|(_, c)| c)
}

impl Relay {
    /// Relays, oldest first, files beside `label` (named like it: `app.log.1`,
    /// `app.log-20260101`) that changed since `since` and that we never read:
    /// files rotated away before the relay could open them.
    ///
    /// With `copytruncate`, a copy of what the followed file holds now is
    /// skipped (`skip`): the reader of the followed file
    /// relays that content, and finishes it from the copy after the truncation.
    ///
    /// With an `anchor` (the file at the path now, read next), a listing
    /// counts only if the anchor is still at the path after it: files the
    /// writer rotates after the anchor are newer and wait for it.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn recover_missed<W: Write>(
        &mut self,
        label: &Arc<str>,
        since: SystemTime,
        skip: Skip<'_>,
        exclude: &[FileId],
        anchor: Option<FileId>,
        now: Instant,
        out: &mut Output<W>,
    ) -> Result<(), RelayError> {
        let label_path = Path::new(&**label);
        // Again after reading, for files rotated meanwhile.
        for _ in 0..100 {
            let of_path;
            let current = match skip {
                Skip::Nothing => None,
                Skip::CopiesOf(fp) => Some(fp),
                Skip::CopiesOfPath => {
                    of_path = open_regular(label_path)
                        .map(|(f, _)| f)
                        .and_then(|f| Fingerprint::read(&f, u64::MAX))
                        .unwrap_or_default();
                    Some(&of_path)
                }
            };
            let found = self.list_missed(label_path, since, current, exclude);
            if found.is_empty() {
                break;
            }
            if anchor.is_some_and(|a| !at_path(label_path, a)) {
                // Some may be older than the anchor: the next rotation of
                // this label looks back to `since` (nothing is lost).
                let t = self.deferred.entry(Arc::clone(label)).or_insert(since);
                *t = (*t).min(since);
                break;
            }
            for (path, file) in open_candidates(found) {
                self.relay_file(label, path, file, true, now, out)?;
            }
        }
        Ok(())
    }

    /// Files [`Relay::missed_candidates`] finds in two listings: a listing
    /// can miss a file renamed while it is read.
    pub(super) fn list_missed(
        &self,
        label_path: &Path,
        since: SystemTime,
        current: Option<&Fingerprint>,
        exclude: &[FileId],
    ) -> Vec<Candidate> {
        let mut found = self.missed_candidates(label_path, since, current, exclude);
        for extra in self.missed_candidates(label_path, since, current, exclude) {
            if !found.iter().any(|c| c.id == extra.id) {
                found.push(extra);
            }
        }
        found
    }

    /// Relays a whole file of `label` that the relay did not follow: one
    /// `rotated` away before it could (else a short-lived file under a glob).
    /// The file is then held, unattached, until it stays quiet for
    /// `--rotate-wait`.
    pub(super) fn relay_file<W: Write>(
        &mut self,
        label: &Arc<str>,
        path: PathBuf,
        file: File,
        rotated: bool,
        now: Instant,
        out: &mut Output<W>,
    ) -> Result<(), RelayError> {
        // A copy of a truncated file's content that we relayed (a copy that
        // was not there yet when the truncation was handled) goes on from
        // where that content was relayed to.
        let start = self
            .read_contents
            .iter()
            .rev()
            .find(|c| c.is_in(&file).unwrap_or(false))
            .map_or(0, ReadContent::end);
        let Ok(reader) = Reader::new(label, path, file, start, &self.metrics) else {
            return Ok(());
        };
        // Listed or held before something else read it (then it is known).
        if self.was_read(reader.id, &reader.file) {
            return Ok(());
        }
        if start > 0 {
            tracing::info!(
                "{label}: {} is a copy of content relayed up to byte {start}; relaying what follows",
                reader.path.display()
            );
        } else if rotated {
            tracing::info!(
                "{label}: {} was rotated away before the relay could follow it; relaying it now",
                reader.path.display()
            );
        }
        tracing::debug!(
            "{label}: relaying inode {} from byte {start}",
            reader.id.ino
        );
        if rotated {
            self.metrics.rotation(label, RotationKind::Rename);
        }
        self.ledger.read(Path::new(&**label), reader.id, now);
        self.readers.push(reader);
        let j = self.readers.len() - 1;
        self.drain_reader(j, now, out)?;
        // Held like any rotated file: a writer that still has it open may
        // add lines; `retire_quiet` lets go after `--rotate-wait` of quiet.
        self.readers[j].last_data = now;
        self.metrics.files_open.set(self.readers.len() as i64);
        Ok(())
    }

    /// One listing for [`Relay::recover_missed`].
    pub(super) fn missed_candidates(
        &self,
        label_path: &Path,
        since: SystemTime,
        current: Option<&Fingerprint>,
        exclude: &[FileId],
    ) -> Vec<Candidate> {
        let mut found = Vec::new();
        for (dir, base) in self.rotation_places(label_path) {
            self.missed_in(&dir, &base, since, current, exclude, &mut found);
        }
        found
    }

    /// Where files rotated away from `label_path` are: beside it, and, when
    /// it is a symlink, beside the file it points to now and the one it
    /// pointed to when last followed (the writer rotates those).
    pub(super) fn rotation_places(&self, label_path: &Path) -> Vec<(PathBuf, String)> {
        let mut places = vec![(parent_dir(label_path), file_name(label_path))];
        let is_link = fs::symlink_metadata(label_path).is_ok_and(|m| m.file_type().is_symlink());
        let now = is_link.then(|| fs::canonicalize(label_path).ok()).flatten();
        let before = self.targets.get(label_path);
        for target in now.iter().chain(before) {
            let place = (parent_dir(target), file_name(target));
            if !places.contains(&place) {
                places.push(place);
            }
        }
        places
    }

    /// The directories [`Relay::rotation_places`] names, and `also` first.
    pub(super) fn rotation_dirs(&self, label_path: &Path, also: &Path) -> Vec<PathBuf> {
        let mut dirs = vec![also.to_path_buf()];
        for (dir, _) in self.rotation_places(label_path) {
            if !dirs.contains(&dir) {
                dirs.push(dir);
            }
        }
        dirs
    }

    /// The files named like `base` in `dir` for [`Relay::missed_candidates`].
    fn missed_in(
        &self,
        dir: &Path,
        base: &str,
        since: SystemTime,
        current: Option<&Fingerprint>,
        exclude: &[FileId],
        found: &mut Vec<Candidate>,
    ) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten().take(DIR_SEARCH_LIMIT) {
            let fname = entry.file_name().to_string_lossy().into_owned();
            if fname == base
                || !fname.starts_with(base)
                || COMPRESSED.iter().any(|c| fname.ends_with(c))
            {
                continue;
            }
            let path = entry.path();
            let Ok(meta) = fs::metadata(&path) else {
                continue;
            };
            let id = FileId::of(&meta);
            let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            if !meta.is_file()
                || mtime < since
                || exclude.contains(&id)
                || self.pinned.iter().any(|p| p.2 == id)
                || self.readers.iter().any(|r| r.id == id)
                || found.iter().any(|c| c.id == id)
            {
                continue;
            }
            // Read before: the same inode *and* the same first bytes (a new
            // file that reuses a freed inode is not the one read).
            let read_before = self.known.get(&id).is_some_and(|k| {
                open_regular(&path).is_ok_and(|(f, _)| k.fp.matches(&f).unwrap_or(false))
            });
            if read_before {
                continue;
            }
            // A copy of what the path holds, or one just created and still
            // empty (copytruncate's copy before its first bytes): the
            // followed file's reader relays that content.
            if current.is_some_and(|current| {
                !current.is_empty()
                    && (meta.len() == 0
                        || open_regular(&path)
                            .map(|(f, _)| f)
                            .is_ok_and(|f| current.shares_start_with(&f).unwrap_or(false)))
            }) {
                continue;
            }
            found.push(Candidate {
                mtime,
                number: rotation_number(&fname[base.len()..]),
                path,
                id,
                file: None,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A copytruncate copy just created, still empty, is a copy in the
    /// making: left to the followed file's reader, like a copy with content
    /// (relaying it later from its start repeated the followed file's lines).
    #[test]
    fn an_empty_new_copy_is_not_taken_for_a_missed_file() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("app.log");
        std::fs::write(&log, "line 1\nline 2\n").unwrap();
        std::fs::write(dir.path().join("app.log.1"), "").unwrap();
        let relay = super::super::test_relay(&log);
        let fp = Fingerprint::read(&File::open(&log).unwrap(), u64::MAX).unwrap();
        let since = SystemTime::UNIX_EPOCH;
        assert!(relay.list_missed(&log, since, Some(&fp), &[]).is_empty());
        // Where no copy is expected, an empty rotated file is listed.
        assert_eq!(relay.list_missed(&log, since, None, &[]).len(), 1);
    }

    #[test]
    fn rotation_numbers_are_read_from_dot_suffixes_only() {
        assert_eq!(rotation_number(".1"), Some(1));
        assert_eq!(rotation_number(".12"), Some(12));
        assert_eq!(rotation_number("-20260101"), None);
        assert_eq!(rotation_number(".1.gz"), None);
        assert_eq!(rotation_number(""), None);
    }

    #[test]
    fn candidates_are_relayed_oldest_first_and_higher_numbers_first_on_a_tie() {
        let dir = tempfile::tempdir().unwrap();
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(100);
        let mut found = Vec::new();
        for (name, secs) in [("app.log.1", 100), ("app.log.2", 100), ("app.log-old", 50)] {
            let path = dir.path().join(name);
            std::fs::write(&path, name).unwrap();
            let id = FileId::of(&std::fs::metadata(&path).unwrap());
            found.push(Candidate {
                mtime: t + std::time::Duration::from_secs(secs)
                    - std::time::Duration::from_secs(100),
                number: rotation_number(name.strip_prefix("app.log").unwrap_or("")),
                path,
                id,
                file: None,
            });
        }
        // A name now held by another file than the one listed is skipped.
        let gone = dir.path().join("app.log.3");
        std::fs::write(&gone, "x").unwrap();
        found.push(Candidate {
            mtime: t,
            number: Some(3),
            path: gone,
            id: FileId { dev: 0, ino: 0 },
            file: None,
        });
        let names: Vec<String> = open_candidates(found)
            .into_iter()
            .map(|(p, _)| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["app.log-old", "app.log.2", "app.log.1"]);
    }
}
