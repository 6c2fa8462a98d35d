//! Finding files: inotify (through `notify`), files opened the moment they
//! appear, glob scans, and the look at each followed path every wake.

use super::{MAX_PINNED, Notice, Pattern, Relay, RelayError, parent_dir};
use crate::identity::FileId;
use crate::output::Output;
use notify::{RecursiveMode, Watcher};
use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// Files opened by the watcher's thread as they appear at followed paths.
#[derive(Default)]
pub(super) struct Early {
    /// The followed paths (literal paths and the paths of followed files).
    paths: BTreeSet<PathBuf>,
    files: Vec<(PathBuf, File, FileId)>,
}

impl Early {
    pub(super) fn opened(&mut self, paths: &[PathBuf]) {
        for path in paths {
            if !self.paths.contains(path) || self.files.len() >= MAX_PINNED {
                continue;
            }
            let Ok(file) = File::open(path) else {
                continue;
            };
            let Ok(meta) = file.metadata() else {
                continue;
            };
            let id = FileId::of(&meta);
            if meta.is_file() && !self.files.iter().any(|f| f.2 == id) {
                self.files.push((path.clone(), file, id));
            }
        }
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
    pub(super) fn start_watcher(&mut self) {
        let tx = self.wake_tx.clone();
        let early = Arc::clone(&self.early);
        match notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if let Ok(event) = event {
                if matches!(
                    event.kind,
                    notify::EventKind::Create(_)
                        | notify::EventKind::Modify(notify::event::ModifyKind::Name(_))
                ) {
                    let mut early = early.lock().unwrap_or_else(|e| e.into_inner());
                    early.opened(&event.paths);
                }
            }
            let _ = tx.try_send(());
        }) {
            Ok(w) => self.watcher = Some(w),
            Err(e) => tracing::warn!(
                "file change notifications are not available ({e}); checking files every {} instead",
                humantime::format_duration(self.cfg.poll_interval)
            ),
        }
    }

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
        let Some(watcher) = self.watcher.as_mut() else {
            return;
        };
        if self.watched.contains(&dir) {
            return;
        }
        match watcher.watch(&dir, RecursiveMode::NonRecursive) {
            Ok(()) => {
                self.watched.insert(dir);
            }
            Err(e) => {
                tracing::debug!("cannot watch {}: {e}; polling it", dir.display());
            }
        }
    }

    /// Moves the files the watcher opened early to `pinned` (those not read
    /// yet), and tells it which paths to open early from now on.
    pub(super) fn take_early(&mut self, paths: &BTreeSet<PathBuf>) {
        let opened = {
            let mut early = self.early.lock().unwrap_or_else(|e| e.into_inner());
            if early.paths != *paths {
                early.paths.clone_from(paths);
            }
            std::mem::take(&mut early.files)
        };
        for (path, file, id) in opened {
            if self.pinned.len() < MAX_PINNED
                && !self.pinned.iter().any(|p| p.2 == id)
                && !self.readers.iter().any(|r| r.id == id)
            {
                self.pinned.push((path, file, id));
            }
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
        for path in paths {
            self.check_path(&path, now, out)?;
        }
        Ok(())
    }

    /// Opens (without reading) files that replaced followed files since the
    /// last check, so they are still there when we get to them. Called while
    /// a long read is under way.
    pub(super) fn pin_new_files(&mut self) {
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
            if let Ok(f) = File::open(&path) {
                if f.metadata().is_ok_and(|m| FileId::of(&m) == id) {
                    self.pinned.push((path, f, id));
                }
            }
        }
    }
}
