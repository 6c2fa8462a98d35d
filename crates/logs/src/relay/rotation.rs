//! Where a followed file went: replaced (renamed or deleted), vacated,
//! truncated (copytruncate), and the start of the file that came next.

use super::reader::{Reader, end_of_last_line};
use super::siblings::{Skip, find_copy, open_candidates};
use super::{
    Known, MAX_ROTATION_TRIES, Notice, READ_CONTENTS, Relay, RelayError, StartAt, parent_dir,
};
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use crate::identity::{
    BeforeHash, FileId, Fingerprint, FingerprintHash, ReadContent, open_regular,
};
use crate::metrics::RotationKind;
use crate::output::Output;

/// True when the file at `path` is `id`.
pub(super) fn at_path(path: &Path, id: FileId) -> bool {
    fs::metadata(path).is_ok_and(|m| FileId::of(&m) == id)
}

#[cfg(test)]
thread_local! {
    /// Runs at the end of [`Relay::truncated`] (tests: a writer that rotates
    /// again right then).
    pub(super) static AFTER_TRUNCATION: std::cell::RefCell<Option<Box<dyn FnMut()>>> =
        const { std::cell::RefCell::new(None) };
}

impl Relay {
    pub(super) fn check_path<W: Write>(
        &mut self,
        path: &Path,
        now: Instant,
        out: &mut Output<W>,
    ) -> Result<(), RelayError> {
        let attached = self
            .readers
            .iter()
            .position(|r| r.attached && r.path == path);
        let key = path.to_string_lossy().into_owned();
        let meta = match fs::metadata(path) {
            Ok(meta) => meta,
            Err(e) => {
                if e.kind() == io::ErrorKind::NotFound {
                    if let Some(i) = attached {
                        let label = Arc::clone(&self.readers[i].label);
                        let since = self.detach(i, now, out)?;
                        self.vacated.insert(Arc::clone(&label), since);
                        // What was beside the path was searched just now.
                        self.settle_losses(&label, path, now, true);
                    } else {
                        self.note(
                            &key,
                            Notice::Missing,
                            format_args!("{key} does not exist yet; waiting for it to appear"),
                        );
                    }
                } else if attached.is_none() {
                    // The open file (if any) is still read through its descriptor.
                    self.note(
                        &key,
                        Notice::Unreadable,
                        format_args!("cannot look at {key}: {e}; will retry"),
                    );
                }
                return Ok(());
            }
        };
        if meta.is_dir() {
            self.note(
                &key,
                Notice::Directory,
                format_args!(
                    "{key} is a directory, not a file; follow the files in it with a quoted glob such as '{key}/*.log'"
                ),
            );
            return Ok(());
        }
        if !meta.is_file() {
            self.note(
                &key,
                Notice::NotRegular,
                format_args!("{key} is not a regular file; skipping it"),
            );
            return Ok(());
        }
        if let Some(i) = attached.filter(|i| self.readers[*i].id == FileId::of(&meta)) {
            let label = Arc::clone(&self.readers[i].label);
            self.settle_losses(&label, path, now, false);
            return Ok(());
        }
        // Hold what is at the path now before catching up on anything else:
        // once open, it cannot vanish, whatever the writer does meanwhile.
        let Some((file, meta)) = self.open_at(path) else {
            return Ok(());
        };
        let id = FileId::of(&meta);
        let held = self.take_held(path, id);
        let Some(i) = attached else {
            for (f, _) in held {
                let label: Arc<str> = Arc::from(key.as_str());
                self.relay_file(&label, path.to_path_buf(), f, true, now, out)?;
            }
            return self.start_reader(path, file, &meta, now, out);
        };
        // Another file now has the path: the old one was rotated. Files
        // rotated between the two are listed before anything is read, and
        // only if `id` is still at the path afterwards: files the writer
        // rotates later, while we read, come after `id`, not before it.
        let label = Arc::clone(&self.readers[i].label);
        // Copies older than the old file's content, if it has not looked yet.
        self.recheck_first_bytes(i, now, out)?;
        let since = self.look_back(i);
        // When the writer rotated again while we listed, look again next
        // tick; a writer that outruns every listing gets its files in the
        // order found (by age and number) after a few tries.
        let force = self.readers[i].rotation_tries >= MAX_ROTATION_TRIES;
        let Some(between) = self.rotated_before(&label, since, id, held, force) else {
            self.readers[i].rotation_tries += 1;
            return Ok(());
        };
        self.deferred.remove(&label);
        self.let_go(i, now, out)?;
        for (p, f) in between {
            self.relay_file(&label, p, f, true, now, out)?;
        }
        // Files rotated while we read those, as long as `id` is at the path.
        self.recover_missed(&label, since, Skip::Nothing, &[id], Some(id), now, out)?;
        self.start_reader(path, file, &meta, now, out)
    }

    /// True when `file` (inode `id`) is being read, or was read and still
    /// starts as it did.
    pub(super) fn was_read(&self, id: FileId, file: &File) -> bool {
        self.readers.iter().any(|r| r.id == id)
            || self
                .known
                .get(&id)
                .is_some_and(|k| k.fp.matches(file).unwrap_or(false) && k.ends_as_before(file))
    }

    /// Takes the files pinned for `path` (seen there between two checks)
    /// that are neither `current` nor read already.
    pub(super) fn take_held(&mut self, path: &Path, current: FileId) -> Vec<(File, FileId)> {
        let mut held = Vec::new();
        let mut i = 0;
        while i < self.pinned.len() {
            if self.pinned[i].0 == path {
                let (_, f, pid) = self.pinned.remove(i);
                if pid != current && !self.was_read(pid, &f) {
                    held.push((f, pid));
                }
            } else {
                i += 1;
            }
        }
        held
    }

    /// The files rotated away from `label` since `since`, before `anchor`
    /// (the file at the path now) and not read yet, oldest first and opened:
    /// the files listed beside the path, with the `held` files (pinned there
    /// earlier; those no longer beside it first, by their last change). `None`, with
    /// `held` pinned again, when `anchor` left the path while we listed (some
    /// files listed may then be newer than it), unless `force`.
    pub(super) fn rotated_before(
        &mut self,
        label: &Arc<str>,
        since: SystemTime,
        anchor: FileId,
        held: Vec<(File, FileId)>,
        force: bool,
    ) -> Option<Vec<(PathBuf, File)>> {
        let label_path = Path::new(&**label);
        let mut found = self.list_missed(label_path, since, None, &[anchor]);
        if !force && !at_path(label_path, anchor) {
            for (f, id) in held {
                self.pinned.push((label_path.to_path_buf(), f, id));
            }
            return None;
        }
        tracing::debug!(
            "{label}: rotated before inode {}: inodes {:?} listed, {:?} held",
            anchor.ino,
            found.iter().map(|c| c.id.ino).collect::<Vec<_>>(),
            held.iter().map(|h| h.1.ino).collect::<Vec<_>>()
        );
        let mut unlisted = Vec::new();
        for (f, id) in held {
            match found.iter_mut().find(|c| c.id == id) {
                Some(c) => c.file = Some(f),
                None => unlisted.push((label_path.to_path_buf(), f)),
            }
        }
        // Deleted, they are known by their last change only: the order they
        // were pinned in is not always theirs (a file pinned by a look at
        // the path, another by an inotify event, or pinned again after a
        // listing that did not count).
        unlisted.sort_by_key(|(_, f): &(PathBuf, File)| {
            f.metadata()
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH)
        });
        unlisted.extend(open_candidates(found));
        Some(unlisted)
    }

    /// Opens the file at `path`, noting (once) why not if it cannot.
    pub(super) fn open_at(&mut self, path: &Path) -> Option<(File, fs::Metadata)> {
        let opened = open_regular(path);
        match opened {
            Ok(pair) => Some(pair),
            Err(e) => {
                let key = path.to_string_lossy().into_owned();
                self.metrics.for_file(&key).read_errors.inc();
                self.note(
                    &key,
                    Notice::Unreadable,
                    format_args!("cannot open {key}: {e}; will retry"),
                );
                None
            }
        }
    }

    /// Starts following a file found at a followed path; a reader already
    /// reading it (a file renamed into a match, or a second link) keeps its
    /// place instead, never starting over.
    pub(super) fn start_reader<W: Write>(
        &mut self,
        path: &Path,
        file: File,
        meta: &fs::Metadata,
        now: Instant,
        out: &mut Output<W>,
    ) -> Result<(), RelayError> {
        let id = FileId::of(meta);
        if let Some(r) = self.readers.iter_mut().find(|r| r.id == id) {
            if !r.attached {
                r.attached = true;
                r.path = path.to_path_buf();
            }
            return Ok(());
        }
        let key = path.to_string_lossy().into_owned();
        self.notices.remove(&key);
        let size = meta.len();
        let (offset, how) = match self.take_known(id, &file, size) {
            Some(offset) => (offset, "resuming"),
            None if self.initial_scan
                && self.cfg.from == StartAt::End
                && !self.saved_labels.contains(&key) =>
            {
                (end_of_last_line(&file, size), "from its end")
            }
            None => (0, "from the beginning"),
        };
        let mut reader = match Reader::new(&key, path.to_path_buf(), file, offset, &self.metrics) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("cannot read {key}: {e}; will retry");
                return Ok(());
            }
        };
        reader.attached = true;
        if !self.initial_scan {
            self.ledger.read(path, id, now);
        }
        tracing::info!("following {key} {how} (offset {offset})");
        tracing::debug!("{key}: following inode {}", reader.id.ino);
        let first = self.seen_labels.insert(Arc::clone(&reader.label));
        let vacated = self.vacated.remove(&reader.label);
        let since = if first && !self.initial_scan {
            // The first file at this path: files rotated away before it (while
            // we waited for the path) hold earlier lines.
            let since = self.started;
            self.recover_missed(
                &reader.label,
                since,
                Skip::CopiesOfPath,
                &[id],
                Some(id),
                now,
                out,
            )?;
            Some(since)
        } else if let Some(since) = vacated {
            // The path was empty for a while: the writer may have rotated
            // several files through it before this one stayed.
            self.recover_missed(
                &reader.label,
                since,
                Skip::Nothing,
                &[id],
                Some(id),
                now,
                out,
            )?;
            Some(since)
        } else {
            None
        };
        if offset == 0 {
            // What the file holds at its first read may already come after
            // a `copytruncate` made since the listing above.
            reader.recheck_since = since;
        }
        self.readers.push(reader);
        self.metrics.files_open.set(self.readers.len() as i64);
        self.dirty = true;
        // A symlink's target may be rotated in its own directory: watched
        // too, and remembered (the link may be pointed elsewhere later).
        for (dir, _) in self.rotation_places(path) {
            self.watch_dir(dir);
        }
        let is_link = fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
        if let Some(target) = is_link.then(|| fs::canonicalize(path).ok()).flatten() {
            if self.targets.len() >= super::KNOWN_FILES {
                self.targets.clear();
            }
            self.targets.insert(path.to_path_buf(), target);
        }
        Ok(())
    }

    /// The offset to resume `file` at, if we read it before (same inode, same first bytes).
    pub(super) fn take_known(&mut self, id: FileId, file: &File, size: u64) -> Option<u64> {
        let known = self.known.get(&id)?;
        let same = known.fp.len() as u64 <= size
            && known.offset <= size
            && known.fp.matches(file).unwrap_or(false)
            && known.ends_as_before(file);
        if !same {
            // The inode was reused by a new file, or the file was rewritten.
            return None;
        }
        let offset = known.offset;
        self.known.remove(&id);
        self.saved_open.retain(|e| e.id != id);
        Some(offset)
    }

    /// The file at a followed path was removed. Read the old file to its end
    /// through its descriptor (it stays open a while for late writes), then
    /// any file rotated away before we could open it. Returns the old file's
    /// last change.
    pub(super) fn detach<W: Write>(
        &mut self,
        i: usize,
        now: Instant,
        out: &mut Output<W>,
    ) -> Result<SystemTime, RelayError> {
        let since = self.look_back(i);
        self.let_go(i, now, out)?;
        let label = Arc::clone(&self.readers[i].label);
        self.deferred.remove(&label);
        self.recover_missed(&label, since, Skip::Nothing, &[], None, now, out)?;
        Ok(since)
    }

    /// How far back to look for files rotated away after reader `i`'s file:
    /// its last change, or earlier if files were left for later.
    pub(super) fn look_back(&self, i: usize) -> SystemTime {
        let r = &self.readers[i];
        let since = r.last_change();
        match self.deferred.get(&r.label) {
            Some(&earlier) => since.min(earlier),
            None => since,
        }
    }

    /// Reader `i`'s file is no longer at its path: note the rotation and
    /// read the file to its end.
    pub(super) fn let_go<W: Write>(
        &mut self,
        i: usize,
        now: Instant,
        out: &mut Output<W>,
    ) -> Result<(), RelayError> {
        let r = &mut self.readers[i];
        r.attached = false;
        let kind = match r.file.metadata() {
            Ok(m) if m.nlink() == 0 => RotationKind::Delete,
            _ => RotationKind::Rename,
        };
        if *r.path == *Path::new(&*r.label) {
            self.metrics.rotation(&r.label, kind);
            tracing::info!(
                "{} was rotated ({}); finishing the old file before the new one",
                r.label,
                match kind {
                    RotationKind::Delete => "deleted",
                    _ => "renamed",
                }
            );
        }
        self.dirty = true;
        self.drain_reader(i, now, out)
    }

    /// A reader that starts a file at offset 0 (new, or over after a
    /// truncation) cannot tell from the file alone whether what it holds at
    /// the first read follows what came before, or comes after more
    /// `copytruncate`s (made while the relay looked elsewhere). Once the
    /// file has its first bytes, copies not starting with them that changed
    /// since the old content are relayed first, oldest first; the
    /// fingerprint taken here then guards the reads that follow.
    pub(super) fn recheck_first_bytes<W: Write>(
        &mut self,
        i: usize,
        now: Instant,
        out: &mut Output<W>,
    ) -> Result<(), RelayError> {
        let r = &mut self.readers[i];
        let Some(since) = r.recheck_since else {
            return Ok(());
        };
        if r.offset != 0 {
            r.recheck_since = None;
            return Ok(());
        }
        let fp = match Fingerprint::read(&r.file, u64::MAX) {
            Ok(fp) if !fp.is_empty() => fp,
            // Nothing written yet: look again once something is.
            _ => return Ok(()),
        };
        r.recheck_since = None;
        r.fp = fp.clone();
        let (label, id) = (Arc::clone(&r.label), r.id);
        // Anchored on this file: once the writer has renamed it away, files
        // beside it may be newer than it, and wait until it is read (the
        // next rotation of the label looks back to `since`).
        self.recover_missed(
            &label,
            since,
            Skip::CopiesOf(&fp),
            &[id],
            Some(id),
            now,
            out,
        )
    }

    /// The file shrank or was rewritten in place. Finish its old content from
    /// the copy a `copytruncate` left beside it, then start over at offset 0.
    pub(super) fn truncated<W: Write>(
        &mut self,
        i: usize,
        now: Instant,
        out: &mut Output<W>,
    ) -> Result<(), RelayError> {
        let (label, dir, old_offset, old_fp, seen_size, id, old_mtime) = {
            let r = &self.readers[i];
            (
                Arc::clone(&r.label),
                parent_dir(&r.path),
                r.offset,
                r.fp.clone(),
                r.size,
                r.id,
                r.mtime,
            )
        };
        self.metrics.rotation(&label, RotationKind::Truncate);
        let mut read_to = old_offset;
        let copy = if old_fp.is_empty() {
            None
        } else {
            let dirs = self.rotation_dirs(Path::new(&*label), &dir);
            find_copy(&dirs, &old_fp, old_offset, id)
        };
        match copy {
            Some(copy) if copy.len < old_offset => {
                // Made before the writer's last lines, which were read from
                // the file itself: all of it was relayed.
                tracing::info!(
                    "{label} was truncated; its copy {} holds only what was relayed already",
                    copy.path.display()
                );
                self.remember_copy(&label, &copy.file, copy.path, copy.len);
                self.count_unread(i, seen_size, old_offset, None);
            }
            Some(copy) => {
                let copy_id = copy.file.metadata().map(|m| FileId::of(&m)).ok();
                let in_use = copy_id.is_some_and(|cid| self.readers.iter().any(|r| r.id == cid));
                if in_use {
                    tracing::info!(
                        "{label} was truncated; its copy {} is already followed",
                        copy.path.display()
                    );
                } else {
                    tracing::info!(
                        "{label} was truncated; finishing its old content from {}",
                        copy.path.display()
                    );
                    let end = self.read_copy(i, &copy.file, old_offset, now, out)?;
                    read_to = end;
                    if end < copy.len {
                        // The drain timeout passed while the copy was read.
                        let left = seen_size.max(copy.len) - end;
                        self.readers[i].metrics.bytes_lost.inc_by(left);
                        tracing::warn!(
                            "the drain timeout passed while the old content of {label} was read from {}: its last {left} bytes are not relayed",
                            copy.path.display()
                        );
                    } else {
                        // Bytes the live file was seen to hold past the copy's
                        // end were written after the copy was made and before
                        // the truncation: in neither file.
                        self.count_unread(i, seen_size, end, Some(&copy.path));
                    }
                    self.remember_copy(&label, &copy.file, copy.path, end);
                }
            }
            None => {
                if seen_size > old_offset {
                    self.count_unread(i, seen_size, old_offset, None);
                } else {
                    tracing::info!("{label} was truncated; reading it from the start");
                }
            }
        }
        self.finish_reader(i, now, out)?;
        let tail = std::mem::take(&mut self.readers[i].tail);
        if let Some(content) = ReadContent::new(old_fp, tail, read_to) {
            if self.read_contents.len() >= READ_CONTENTS {
                self.read_contents.pop_front();
            }
            self.read_contents.push_back(content);
        }
        // Copies made by later rotations we did not see come next.
        self.recover_missed(&label, old_mtime, Skip::CopiesOfPath, &[id], None, now, out)?;
        let r = &mut self.readers[i];
        r.framer.restart_at(0);
        r.line_ends.clear();
        r.counted = 0;
        r.offset = 0;
        r.size = 0;
        r.fp = Fingerprint::default();
        r.recheck_since = Some(old_mtime);
        self.dirty = true;
        #[cfg(test)]
        AFTER_TRUNCATION.with(|h| {
            if let Some(f) = h.borrow_mut().as_mut() {
                f();
            }
        });
        Ok(())
    }

    /// A copy of a truncated file's content, relayed up to `end`: known,
    /// so that no search for rotated files relays it again.
    pub(super) fn remember_copy(&mut self, label: &str, copy: &File, path: PathBuf, end: u64) {
        let Ok(meta) = copy.metadata() else {
            return;
        };
        let fp = Fingerprint::read(copy, end).unwrap_or_default();
        let known = Known {
            fp: FingerprintHash::of(&fp),
            offset: end,
            before: BeforeHash::read(copy, end).ok(),
            born: meta.created().ok(),
            label: label.to_string(),
            path,
        };
        self.remember(FileId::of(&meta), known);
    }

    /// Reader `i`'s file was truncated when it was seen to hold `seen_size`
    /// bytes and its content was relayed up to `relayed` (from the file, or
    /// from its `copy`): the bytes in between are in no file any more.
    fn count_unread(&mut self, i: usize, seen_size: u64, relayed: u64, copy: Option<&Path>) {
        let lost = seen_size.saturating_sub(relayed);
        if lost == 0 {
            return;
        }
        let r = &self.readers[i];
        r.metrics.bytes_lost.inc_by(lost);
        match copy {
            Some(copy) => tracing::warn!(
                "{} was truncated after {} was copied from it: its last {lost} bytes, written in between, are in neither file and are lost",
                r.label,
                copy.display()
            ),
            None => tracing::warn!(
                "{} was truncated before its last {lost} bytes could be read, and no copy in {} holds them; those bytes are lost",
                r.label,
                parent_dir(&r.path).display()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// Files deleted before the listing are relayed by their last change,
    /// whatever order they were pinned in (a full-speed delete-and-recreate
    /// writer once had its lines relayed out of order this way).
    #[test]
    fn deleted_held_files_come_oldest_first_whatever_their_pinning_order() {
        let dir = tempfile::tempdir().unwrap();
        let label_path = dir.path().join("app.log");
        let label: Arc<str> = Arc::from(label_path.to_string_lossy().as_ref());
        let mut relay = crate::relay::test_relay(&label_path);
        let t0 = SystemTime::now() - std::time::Duration::from_secs(60);
        let mut held = Vec::new();
        for (name, age) in [("newer", 10), ("older", 20)] {
            std::fs::write(&label_path, name).unwrap();
            let f = File::open(&label_path).unwrap();
            File::options()
                .write(true)
                .open(&label_path)
                .unwrap()
                .set_modified(t0 - std::time::Duration::from_secs(age))
                .unwrap();
            let id = FileId::of(&f.metadata().unwrap());
            std::fs::remove_file(&label_path).unwrap();
            held.push((f, id));
        }
        std::fs::write(&label_path, "now").unwrap();
        let anchor = FileId::of(&std::fs::metadata(&label_path).unwrap());
        let files = relay
            .rotated_before(&label, SystemTime::UNIX_EPOCH, anchor, held, false)
            .unwrap();
        let contents: Vec<String> = files
            .into_iter()
            .map(|(_, mut f)| {
                let mut s = String::new();
                f.read_to_string(&mut s).unwrap();
                s
            })
            .collect();
        assert_eq!(contents, ["older", "newer"]);
    }

    /// A copytruncate seen by the check before a read (the rewrite kept the
    /// mtime), with the writer rotating twice more right after it was
    /// handled: the two copies come before the file's new content (the read
    /// that followed the truncation once took the new content at offset 0
    /// without looking for them, losing them silently).
    #[test]
    fn copies_made_right_after_a_truncation_seen_while_reading_are_relayed_first() {
        use crate::output::{Format, Output};
        use std::io::Write as _;
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("app.log");
        let content = |tag: &str, n: usize| -> String {
            (0..n)
                .map(|i| format!("{tag} line {i:04} with some padding\n"))
                .collect()
        };
        let (a, b, c, d) = (
            content("A", 40),
            content("B", 60),
            content("C", 40),
            content("D", 40),
        );
        let append = |path: &Path, s: &str| {
            File::options()
                .append(true)
                .open(path)
                .unwrap()
                .write_all(s.as_bytes())
                .unwrap()
        };
        let rotate = {
            let log = log.clone();
            move || {
                let name = |n: u32| PathBuf::from(format!("{}.{n}", log.display()));
                for n in (1..9).rev() {
                    let _ = fs::rename(name(n), name(n + 1));
                }
                fs::copy(&log, name(1)).unwrap();
                File::options()
                    .write(true)
                    .open(&log)
                    .unwrap()
                    .set_len(0)
                    .unwrap();
            }
        };
        fs::write(&log, &a).unwrap();
        let mut relay = crate::relay::test_relay(&log);
        let mut out = Output::new(Vec::new(), Format::Raw, false);
        let now = Instant::now();
        relay.check_paths(true, now, &mut out).unwrap();
        relay.initial_scan = false;
        relay.read_all(now, &mut out).unwrap();
        // copytruncate, then more written than before, within the same mtime.
        let mtime = fs::metadata(&log).unwrap().modified().unwrap();
        rotate();
        append(&log, &b);
        File::options()
            .write(true)
            .open(&log)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        // Right after the relay handled that truncation: two more rotations.
        let (log2, c2, d2) = (log.clone(), c.clone(), d.clone());
        AFTER_TRUNCATION.with(|h| {
            *h.borrow_mut() = Some(Box::new(move || {
                rotate();
                append(&log2, &c2);
                rotate();
                append(&log2, &d2);
            }))
        });
        relay.read_all(now, &mut out).unwrap();
        AFTER_TRUNCATION.with(|h| h.borrow_mut().take());
        relay.read_all(now, &mut out).unwrap();
        out.flush().unwrap();
        let got = String::from_utf8(out.get_ref().clone()).unwrap();
        let want = format!("{a}{b}{c}{d}");
        assert!(got == want, "relayed runs {:?}", runs(&got));
    }

    /// "Ax40", "Dx40": each run of lines by its first letter, and its length.
    fn runs(text: &str) -> Vec<String> {
        let mut runs: Vec<(&str, usize)> = Vec::new();
        for tag in text.lines().map(|l| &l[..1]) {
            match runs.last_mut() {
                Some((last, n)) if *last == tag => *n += 1,
                _ => runs.push((tag, 1)),
            }
        }
        runs.into_iter().map(|(t, n)| format!("{t}x{n}")).collect()
    }
}
