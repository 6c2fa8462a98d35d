//! Finding files: inotify (through `notify`), files opened the moment they
//! appear, glob scans, and the look at each followed path every wake.

use super::inotify::Appeared;
use super::loss::Appearance;
use super::rotation::at_path;
use super::{MAX_PINNED, Notice, Pattern, Relay, RelayError, parent_dir};
use crate::identity::{FileId, open_regular};
use crate::output::Output;
use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// Files opened as they appear (inotify) at followed paths,
/// or as files matching a glob appear in its directory (a short-lived file
/// can be gone before the next glob scan).
#[derive(Default)]
pub(super) struct Early {
    /// The followed paths (literal paths and the paths of followed files).
    paths: BTreeSet<PathBuf>,
    globs: Vec<glob::Pattern>,
    files: Vec<(PathBuf, File, FileId)>,
    /// Files that appeared at followed paths, in order (see `loss.rs`).
    appeared: Vec<Appearance>,
    /// The last few files seen appearing at each followed path: a second
    /// event that finds the same file there was for another file, now gone.
    recent: Vec<(PathBuf, FileId)>,
    /// A file matching a glob appeared: scan the globs at once.
    glob_hit: bool,
    /// Files that appeared and are not held: gone before they could be
    /// opened (under a glob), or beyond [`MAX_PINNED`]. Each must be read
    /// by the relay, or is lost (see [`Relay::settle_unheld`]).
    unheld: Vec<Unheld>,
}

/// A file that appeared and was not held open (see [`Early::unheld`]).
#[derive(Debug)]
pub(super) struct Unheld {
    path: PathBuf,
    /// None when it was gone already.
    id: Option<FileId>,
}

/// Most appearances waiting to be settled; most recent identities kept.
const MAX_APPEARED: usize = 4096;
const MAX_RECENT: usize = 256;

impl Early {
    pub(super) fn for_globs(globs: Vec<glob::Pattern>) -> Self {
        Self {
            globs,
            ..Self::default()
        }
    }

    /// A file appeared at (or was renamed to) each path.
    pub(super) fn appeared(&mut self, appeared: &[Appeared]) {
        for Appeared { path, origin } in appeared {
            // Renamed away and back: the file the path had, no new one.
            let back = origin.as_ref() == Some(path);
            let followed = self.paths.contains(path);
            let globbed = !followed && self.globs.iter().any(|g| g.matches_path(path));
            if !(followed || globbed) {
                continue;
            }
            self.glob_hit |= globbed;
            // Never blocks (a FIFO opens at once) and takes regular files only.
            let opened = open_regular(path);
            let gone = opened
                .as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound);
            let opened = opened.ok();
            let id = opened.as_ref().map(|(_, m)| FileId::of(m));
            if followed && !back {
                // A file already seen at this path: the event was for a
                // file that is gone from it since.
                let new = id.filter(|id| !self.recent.iter().any(|r| r.0 == *path && r.1 == *id));
                if self.appeared.len() < MAX_APPEARED {
                    self.appeared.push(Appearance {
                        path: path.clone(),
                        at: Instant::now(),
                        id: new,
                    });
                }
                if let Some(id) = new {
                    if self.recent.len() >= MAX_RECENT {
                        self.recent.remove(0);
                    }
                    self.recent.push((path.clone(), id));
                }
            }
            match (opened, id) {
                (Some((file, _)), Some(id)) => {
                    if self.files.iter().any(|f| f.2 == id) {
                        continue;
                    }
                    if self.files.len() < MAX_PINNED {
                        self.files.push((path.clone(), file, id));
                    } else {
                        self.unheld(path.clone(), Some(id));
                    }
                }
                // Gone already; at a followed path, the loss ledger knows it.
                _ if gone && !followed => self.unheld(path.clone(), None),
                _ => {}
            }
        }
    }

    fn unheld(&mut self, path: PathBuf, id: Option<FileId>) {
        if self.unheld.len() < MAX_APPEARED {
            self.unheld.push(Unheld { path, id });
        }
    }

    /// What lost files that appeared at `path` are counted under: the glob
    /// it matches (one series for any number of files), else the path.
    fn label_for(&self, path: &Path) -> String {
        self.globs
            .iter()
            .find(|g| g.matches_path(path))
            .map_or_else(
                || path.to_string_lossy().into_owned(),
                |g| g.as_str().to_string(),
            )
    }
}

/// The directory a glob pattern starts in: its leading components without wildcards.
pub(super) fn glob_base_dir(pattern: &str) -> PathBuf {
    let mut base = PathBuf::new();
    for part in Path::new(pattern).components() {
        let text = part.as_os_str().to_string_lossy();
        if text.contains(['*', '?', '[']) {
            break;
        }
        base.push(part);
    }
    if base.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        base
    }
}

impl Relay {
    /// Watches the directories the patterns point into (those that exist).
    pub(super) fn watch_pattern_dirs(&mut self) {
        let dirs: Vec<PathBuf> = self
            .patterns
            .iter()
            .map(|p| match p {
                Pattern::Literal(path) => parent_dir(path),
                Pattern::Glob(g) => glob_base_dir(g),
            })
            .collect();
        for dir in dirs {
            self.watch_dir(dir);
        }
    }

    pub(super) fn watch_dir(&mut self, dir: PathBuf) {
        self.waiter.watch(&dir);
    }

    /// Moves the files the watcher opened early to `pinned` (those not read
    /// yet) and what appeared to the loss ledger, and tells it which paths
    /// to open early from now on.
    pub(super) fn take_early(&mut self, paths: &BTreeSet<PathBuf>) {
        if self.early.paths != *paths {
            self.early.paths.clone_from(paths);
        }
        let opened = std::mem::take(&mut self.early.files);
        let appeared = std::mem::take(&mut self.early.appeared);
        for a in appeared {
            self.ledger.appeared(a);
        }
        for (path, file, id) in opened {
            if self.pinned.iter().any(|p| p.2 == id) || self.readers.iter().any(|r| r.id == id) {
                continue;
            }
            if self.pinned.len() < MAX_PINNED {
                self.pinned.push((path, file, id));
            } else {
                self.early.unheld(path, Some(id));
            }
        }
    }

    /// Files that appeared and were not held (see [`Early::unheld`]): those
    /// read, or read before (by inode, or by path for one gone at once), are
    /// done; those still in place wait for the scan that finds them; the
    /// others are lost: counted in `sidecar_logs_files_lost_total`, under
    /// the glob they matched, with one warning per look that finds any.
    fn settle_unheld(&mut self) {
        let mut lost: Vec<(String, u64)> = Vec::new();
        for u in std::mem::take(&mut self.early.unheld) {
            let read = match u.id {
                Some(id) => self.readers.iter().any(|r| r.id == id) || self.known.contains_key(&id),
                None => {
                    self.readers.iter().any(|r| r.path == u.path)
                        || self.known.values().any(|k| k.path == u.path)
                }
            };
            if read {
                continue;
            }
            if u.id.is_some_and(|id| at_path(&u.path, id)) {
                self.early.unheld.push(u);
                continue;
            }
            let label = self.early.label_for(&u.path);
            match lost.iter_mut().find(|(l, _)| *l == label) {
                Some((_, n)) => *n += 1,
                None => lost.push((label, 1)),
            }
        }
        for (label, n) in lost {
            self.metrics
                .files_lost
                .get_or_create(&crate::metrics::FileLabel {
                    file: label.clone(),
                })
                .inc_by(n);
            tracing::warn!(
                "{n} file(s) that appeared under {label} were gone before the relay could read them (deleted or renamed away at once, or more at once than the {MAX_PINNED} it holds open ahead of their turn); their lines are lost"
            );
        }
    }

    /// Re-checks the followed paths: new files, rotated files, vanished files.
    pub(super) fn check_paths<W: Write>(
        &mut self,
        glob_due: bool,
        now: Instant,
        out: &mut Output<W>,
    ) -> Result<(), RelayError> {
        if glob_due {
            self.watch_pattern_dirs();
        }
        let mut paths: BTreeSet<PathBuf> = BTreeSet::new();
        let mut unmatched = Vec::new();
        for pattern in &self.patterns {
            match pattern {
                Pattern::Literal(p) => {
                    paths.insert(p.clone());
                }
                Pattern::Glob(g) if glob_due => {
                    let before = paths.len();
                    if let Ok(entries) = glob::glob(g) {
                        for entry in entries.flatten() {
                            paths.insert(entry);
                        }
                    }
                    if paths.len() == before {
                        unmatched.push(g.clone());
                    }
                }
                Pattern::Glob(_) => {}
            }
        }
        for g in unmatched {
            self.note(
                &g,
                Notice::NoMatch,
                format_args!("no file matches {g} yet; waiting for one to appear"),
            );
        }
        for r in &self.readers {
            if r.attached {
                paths.insert(r.path.clone());
            }
        }
        self.take_early(&paths);
        for path in &paths {
            self.check_path(path, now, out)?;
        }
        self.relay_short_lived(&paths, now, out)?;
        self.settle_unheld();
        Ok(())
    }

    /// True when a file matching a glob appeared since the last call: the
    /// globs are scanned at once, not at the next `--glob-interval`.
    pub(super) fn take_glob_hit(&mut self) -> bool {
        std::mem::take(&mut self.early.glob_hit)
    }

    /// Files the watcher opened as they appeared under a glob, and that are
    /// gone from their path before a scan found them: relayed whole.
    fn relay_short_lived<W: Write>(
        &mut self,
        paths: &BTreeSet<PathBuf>,
        now: Instant,
        out: &mut Output<W>,
    ) -> Result<(), RelayError> {
        let mut i = 0;
        while i < self.pinned.len() {
            let path = &self.pinned[i].0;
            let gone = !paths.contains(path) && !at_path(path, self.pinned[i].2);
            if !gone {
                i += 1;
                continue;
            }
            let (path, file, id) = self.pinned.remove(i);
            if self.was_read(id, &file) {
                continue;
            }
            let label: Arc<str> = Arc::from(path.to_string_lossy().as_ref());
            tracing::info!("{label} appeared and was gone before a scan found it; relaying it now");
            self.relay_file(&label, path, file, false, now, out)?;
        }
        Ok(())
    }

    /// Opens (without reading) files that replaced followed files since the
    /// last check, so they are still there when we get to them. Called while
    /// a long read is under way.
    pub(super) fn pin_new_files(&mut self) {
        // Files that appeared meanwhile are opened now too.
        let changes = self.waiter.events();
        self.early.appeared(&changes.appeared);
        for i in 0..self.readers.len() {
            let r = &self.readers[i];
            if !r.attached || self.pinned.len() >= MAX_PINNED {
                continue;
            }
            let Ok(meta) = fs::metadata(&r.path) else {
                continue;
            };
            let id = FileId::of(&meta);
            if id == r.id
                || self.pinned.iter().any(|p| p.2 == id)
                || self.readers.iter().any(|o| o.id == id)
            {
                continue;
            }
            let path = r.path.clone();
            if let Ok((f, _)) = open_regular(&path) {
                if f.metadata().is_ok_and(|m| FileId::of(&m) == id) {
                    self.pinned.push((path, f, id));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn created(paths: &[PathBuf]) -> Vec<Appeared> {
        paths
            .iter()
            .map(|p| Appeared {
                path: p.clone(),
                origin: None,
            })
            .collect()
    }

    #[test]
    fn a_glob_is_watched_from_its_last_directory_without_wildcards() {
        assert_eq!(glob_base_dir("/logs/*.log"), PathBuf::from("/logs"));
        assert_eq!(glob_base_dir("/logs/*/app.log"), PathBuf::from("/logs"));
        assert_eq!(glob_base_dir("app-?.log"), PathBuf::from("."));
        assert_eq!(glob_base_dir("/a/b/[xy].log"), PathBuf::from("/a/b"));
    }

    #[test]
    fn files_appearing_are_opened_at_once_and_a_second_event_for_a_file_seen_is_an_unknown_one() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("app.log");
        let mut early = Early::for_globs(vec![
            glob::Pattern::new(&format!("{}/*.txt", dir.path().display())).unwrap(),
        ]);
        early.paths.insert(log.clone());
        std::fs::write(&log, "1\n").unwrap();
        early.appeared(&created(std::slice::from_ref(&log)));
        early.appeared(&created(std::slice::from_ref(&log)));
        assert_eq!(early.files.len(), 1, "held once");
        let ids: Vec<bool> = early.appeared.iter().map(|a| a.id.is_some()).collect();
        assert_eq!(ids, [true, false]);
        // Renamed away and back: no file new to the path.
        early.appeared(&[Appeared {
            path: log.clone(),
            origin: Some(log.clone()),
        }]);
        assert_eq!(early.appeared.len(), 2);
        // A glob match is held and asks for a scan; a FIFO is never opened.
        let txt = dir.path().join("job.txt");
        std::fs::write(&txt, "x").unwrap();
        let fifo = dir.path().join("pipe.txt");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        early.appeared(&created(&[txt, fifo]));
        assert!(early.glob_hit);
        assert_eq!(early.files.len(), 2);
        // Unfollowed, unmatched paths are ignored.
        early.appeared(&created(&[dir.path().join("other.log")]));
        assert_eq!(early.appeared.len(), 2);
        // A FIFO or a directory is not a file gone before it could be read.
        assert!(early.unheld.is_empty());
    }

    #[test]
    fn files_beyond_the_ones_held_and_files_gone_at_once_are_kept_unheld() {
        let dir = tempfile::tempdir().unwrap();
        let mut early = Early::for_globs(vec![
            glob::Pattern::new(&format!("{}/*.log", dir.path().display())).unwrap(),
        ]);
        let paths: Vec<PathBuf> = (0..MAX_PINNED + 3)
            .map(|i| {
                let p = dir.path().join(format!("{i}.log"));
                std::fs::write(&p, "x\n").unwrap();
                p
            })
            .collect();
        std::fs::create_dir(dir.path().join("dir.log")).unwrap();
        early.appeared(&created(&paths));
        early.appeared(&created(&[
            dir.path().join("gone.log"),
            dir.path().join("dir.log"),
        ]));
        assert_eq!(early.files.len(), MAX_PINNED);
        let unheld: Vec<bool> = early.unheld.iter().map(|u| u.id.is_some()).collect();
        assert_eq!(unheld, [true, true, true, false]);
        assert_eq!(
            early.label_for(&dir.path().join("gone.log")),
            format!("{}/*.log", dir.path().display())
        );
    }
}
