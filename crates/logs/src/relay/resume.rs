//! Checkpoints: saving what was relayed, and after a restart resuming the
//! files saved, including those rotated away while the relay was down.

use super::reader::Reader;
use super::siblings::{Skip, find_by_inode, find_copy};
use super::{Known, Relay, RelayError, parent_dir};
use std::io::Write;
use std::path::Path;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::checkpoint::{CheckpointError, Entry};
use crate::identity::{BeforeHash, FingerprintHash};
use crate::output::Output;

impl Relay {
    /// Loads a checkpoint: files are resumed when found again with the same
    /// identity; the others are looked for as rotated files after the first scan.
    pub(super) fn restore(&mut self, saved: Vec<Entry>) {
        for entry in saved {
            self.saved_labels.insert(entry.label.clone());
            let known = Known {
                fp: entry.fingerprint(),
                offset: entry.offset,
                before: entry.before(),
                born: entry.born(),
                label: entry.label.clone(),
                path: entry.path.clone(),
            };
            if entry.open {
                self.saved_open.push(entry.clone());
            }
            self.remember(entry.id, known);
        }
    }

    /// After the first scan: files from the checkpoint that were not found
    /// again at a followed path were rotated while the relay was down. Find
    /// each beside its old path (same inode and first bytes, or a copy with the
    /// same first bytes), relay it from the saved offset, then relay the files
    /// rotated after it, all before the files now at the followed paths.
    pub(super) fn find_orphans<W: Write>(
        &mut self,
        now: Instant,
        out: &mut Output<W>,
    ) -> Result<(), RelayError> {
        let orphans = std::mem::take(&mut self.saved_open);
        // Per label: files rotated after the last of its orphans come after all of them.
        let mut after: Vec<(Arc<str>, SystemTime, bool)> = Vec::new();
        for entry in orphans {
            let fp = entry.fingerprint();
            let dir = parent_dir(&entry.path);
            let label: Arc<str> = Arc::from(entry.label.as_str());
            let dirs = self.rotation_dirs(Path::new(&entry.label), &dir);
            // A new file that took the inode and starts the same (a banner)
            // holds other bytes before the offset.
            let (before, born) = (entry.before(), entry.born());
            let by_inode = find_by_inode(&dirs, entry.id, &fp, entry.offset).filter(|(f, _)| {
                super::same_birth(born, f)
                    && before.is_none_or(|b| b.matches_at(f, entry.offset).unwrap_or(false))
            });
            let by_copy = by_inode.is_none();
            let located = match by_inode {
                Some(found) => Some(found),
                None => match find_copy(&dirs, &fp, entry.offset, entry.id) {
                    Some(copy) if copy.len < entry.offset => {
                        // Made before the writer's last lines, which were
                        // relayed from the file itself before the stop.
                        tracing::info!(
                            "{label} was truncated while the relay was down; its copy {} holds only what was relayed already",
                            copy.path.display()
                        );
                        let since = copy.file.metadata().and_then(|m| m.modified()).ok();
                        self.remember_copy(&label, &copy.file, copy.path, copy.len);
                        let since =
                            since.unwrap_or_else(|| self.checkpoint_time.unwrap_or(self.started));
                        note_after(&mut after, label, since, true);
                        continue;
                    }
                    Some(copy) => Some((copy.file, copy.path)),
                    None => None,
                },
            };
            let since = match located {
                Some((file, path)) => {
                    let Ok(reader) = Reader::new(&label, path, file, entry.offset, &self.metrics)
                    else {
                        continue;
                    };
                    if self.readers.iter().any(|r| r.id == reader.id) {
                        continue;
                    }
                    tracing::info!(
                        "{label} was rotated while the relay was down; finishing {} from byte {}",
                        reader.path.display(),
                        entry.offset
                    );
                    self.known.remove(&entry.id);
                    let since = reader.mtime;
                    self.readers.push(reader);
                    let j = self.readers.len() - 1;
                    self.drain_reader(j, now, out)?;
                    if self.out_of_time() {
                        // Stopped half-way: kept open, what is left is
                        // counted at exit and the checkpoint keeps it.
                        continue;
                    }
                    self.finish_reader(j, now, out)?;
                    if let Some(r) = self.readers.pop() {
                        self.forget_reader(r);
                    }
                    since
                }
                None if entry.ended => {
                    tracing::info!(
                        "{label}: {} had been rotated away and relayed to its end before the relay stopped; it is gone now, with nothing known to be missing",
                        entry.path.display()
                    );
                    self.checkpoint_time.unwrap_or(self.started)
                }
                None => {
                    tracing::warn!(
                        "{label} was read up to byte {} before the relay stopped, then rotated away; no file in {} has its content, so lines written to it after that may be lost",
                        entry.offset,
                        dir.display()
                    );
                    self.checkpoint_time.unwrap_or(self.started)
                }
            };
            note_after(&mut after, label, since, by_copy);
        }
        for (label, since, by_copy) in after {
            let skip = if by_copy {
                Skip::CopiesOfPath
            } else {
                Skip::Nothing
            };
            self.recover_missed(&label, since, skip, &[], None, now, out)?;
        }
        self.metrics.files_open.set(self.readers.len() as i64);
        Ok(())
    }

    pub(super) fn checkpoint_if_due(&mut self, now: Instant) {
        if self.dirty && now.duration_since(self.last_checkpoint) >= Duration::from_secs(1) {
            self.last_checkpoint = now;
            // A failure is counted and logged; the next second tries again.
            let _ = self.save_checkpoint();
        }
    }

    /// Saves offsets of bytes already flushed to stdout. Call after flushing.
    pub(super) fn save_checkpoint(&mut self) -> Result<(), CheckpointError> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        if !self.dirty {
            return Ok(());
        }
        let mut entries: Vec<Entry> = self
            .readers
            .iter()
            .map(|r| Entry {
                label: r.label.to_string(),
                path: r.path.clone(),
                id: r.id,
                fingerprint: FingerprintHash::of(&r.fp).encode(),
                offset: r.framer.committed(),
                before: Some(if r.framer.committed() == r.offset {
                    BeforeHash::of(r.tail.as_bytes())
                } else {
                    BeforeHash::read(&r.file, r.framer.committed()).unwrap_or_default()
                })
                .map(|b| b.encode()),
                born: r.born.and_then(crate::checkpoint::nanos),
                open: true,
                ended: !r.attached && r.framer.committed() >= r.size,
            })
            .collect();
        for id in &self.known_order {
            if let Some(k) = self.known.get(id) {
                entries.push(Entry {
                    label: k.label.clone(),
                    path: k.path.clone(),
                    id: *id,
                    fingerprint: k.fp.encode(),
                    offset: k.offset,
                    before: k.before.map(|b| b.encode()),
                    born: k.born.and_then(crate::checkpoint::nanos),
                    open: false,
                    ended: false,
                });
            }
        }
        // Files from the checkpoint not found yet stay in it.
        entries.extend(self.saved_open.iter().cloned());
        match store.save(entries) {
            Ok(dropped) => {
                if dropped > 0 {
                    tracing::debug!(
                        "the checkpoint keeps the {} most recent of the files let go, not {dropped} older ones",
                        self.known.len().saturating_sub(dropped)
                    );
                }
                self.metrics.checkpoints.inc();
                self.dirty = false;
                Ok(())
            }
            Err(e) => {
                self.metrics.checkpoint_errors.inc();
                tracing::warn!("{e}");
                Err(e)
            }
        }
    }
}

/// Notes that files of `label` rotated after `since` come after its orphans
/// (`by_copy`: an orphan was found as a copytruncate copy).
fn note_after(
    after: &mut Vec<(Arc<str>, SystemTime, bool)>,
    label: Arc<str>,
    since: SystemTime,
    by_copy: bool,
) {
    match after.iter_mut().find(|(l, _, _)| *l == label) {
        Some((_, t, c)) => {
            *t = (*t).max(since);
            *c |= by_copy;
        }
        None => after.push((label, since, by_copy)),
    }
}
