//! One open file: its state, and reading what is new in it through the framer.

use super::cut::{AsRead, LineEnds, kept_prefix};
use super::{Progress, Relay, RelayError, Summary, TICK_BUDGET, file_name};
use std::fs::File;
use std::io::{self, Write};

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use crate::framer::{Framer, Rules};
use crate::identity::{FileId, Fingerprint, Tail, read_full_at};
use crate::metrics::{FileMetrics, Metrics};
use crate::output::Output;

/// One open file.
pub(super) struct Reader {
    /// The followed path this file was found at: `file` in JSON, metrics label.
    pub(super) label: Arc<str>,
    /// File name of the label, for `--prefix`.
    pub(super) name: Arc<str>,
    /// Where the file is now, as far as we know.
    pub(super) path: PathBuf,
    /// True while the file is the one at a followed path.
    pub(super) attached: bool,
    pub(super) id: FileId,
    pub(super) file: File,
    pub(super) fp: Fingerprint,
    /// The last bytes read (before `offset`).
    pub(super) tail: Tail,
    /// Next byte to read.
    pub(super) offset: u64,
    /// When the file was made (statx birth time, where the filesystem has it).
    pub(super) born: Option<SystemTime>,
    /// Size and modification time at the last look.
    pub(super) size: u64,
    pub(super) mtime: SystemTime,
    pub(super) framer: Framer,
    pub(super) last_data: Instant,
    pub(super) metrics: FileMetrics,
    /// Committed offset already counted in the bytes metric.
    pub(super) counted: u64,
    pub(super) error_noted: bool,
    /// Times the file at the path moved on while the files rotated before it
    /// were listed (see [`Relay::rotated_before`]).
    pub(super) rotation_tries: u32,
    /// The last line ends read, to find where the file was cut (`cut.rs`).
    pub(super) line_ends: LineEnds,
    /// Set when the reader starts a file at offset 0 after the first scan
    /// (with the time since which missed files count): before relaying the
    /// content, copies that later `copytruncate`s made meanwhile are
    /// relayed (see [`Relay::recheck_first_bytes`]).
    pub(super) recheck_since: Option<SystemTime>,
}

impl Reader {
    /// A reader for `file` (found at `path`) that starts at `offset`.
    pub(super) fn new(
        label: &str,
        path: PathBuf,
        file: File,
        offset: u64,
        metrics: &Metrics,
    ) -> io::Result<Self> {
        let meta = file.metadata()?;
        Ok(Self {
            name: Arc::from(file_name(Path::new(label))),
            label: Arc::from(label),
            path,
            attached: false,
            id: FileId::of(&meta),
            fp: Fingerprint::read(&file, offset)?,
            tail: Tail::read(&file, offset)?,
            offset,
            born: meta.created().ok(),
            size: meta.len(),
            mtime: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            framer: Framer::new(offset),
            last_data: Instant::now(),
            metrics: metrics.for_file(label),
            counted: offset,
            error_noted: false,
            rotation_tries: 0,
            line_ends: LineEnds::default(),
            recheck_since: None,
            file,
        })
    }

    /// Frames `data` (the file's bytes from `offset` on, or a copy's) into
    /// `out`, and counts what was emitted.
    pub(super) fn frame<W: Write>(
        &mut self,
        data: &[u8],
        rules: &Rules,
        now: Instant,
        out: &mut Output<W>,
        summary: &mut Summary,
    ) -> Result<(), RelayError> {
        self.tail.push(data);
        let mut sink = out.for_file(&self.label, &self.name);
        self.framer
            .push(rules, data, now, &mut sink)
            .map_err(RelayError::Output)?;
        account(self, summary);
        Ok(())
    }

    /// Bytes read from the file itself at `offset`: framed, and the position moves on.
    pub(super) fn take<W: Write>(
        &mut self,
        data: &[u8],
        rules: &Rules,
        now: Instant,
        out: &mut Output<W>,
        summary: &mut Summary,
    ) -> Result<(), RelayError> {
        self.error_noted = false;
        self.fp.extend(self.offset, data);
        self.line_ends.note(self.offset, data, self.tail.as_bytes());
        self.frame(data, rules, now, out, summary)?;
        self.offset += data.len() as u64;
        self.size = self.size.max(self.offset);
        self.last_data = now;
        Ok(())
    }

    /// Emits what the framer holds: a stale multiline event (`all`: false),
    /// or everything, a partial last line with a newline added (`all`).
    pub(super) fn flush<W: Write>(
        &mut self,
        all: bool,
        rules: &Rules,
        now: Instant,
        out: &mut Output<W>,
        summary: &mut Summary,
    ) -> Result<(), RelayError> {
        let mut sink = out.for_file(&self.label, &self.name);
        let done = if all {
            self.framer.finish(rules, now, &mut sink)
        } else {
            self.framer.flush_stale(rules, now, &mut sink)
        };
        done.map_err(RelayError::Output)?;
        account(self, summary);
        Ok(())
    }

    /// The file's last change: its mtime now, else at the last look.
    pub(super) fn last_change(&self) -> SystemTime {
        self.file
            .metadata()
            .and_then(|m| m.modified())
            .unwrap_or(self.mtime)
    }
}

/// Moves what the framer emitted into the metrics and the summary.
pub(super) fn account(r: &mut Reader, summary: &mut Summary) {
    let stats = r.framer.take_stats();
    if stats.records > 0 {
        r.metrics.lines.inc_by(stats.records);
        summary.records += stats.records;
    }
    if stats.splits > 0 {
        r.metrics.lines_split.inc_by(stats.splits);
    }
    let committed = r.framer.committed();
    if committed > r.counted {
        let bytes = committed - r.counted;
        r.metrics.bytes.inc_by(bytes);
        summary.bytes += bytes;
        r.counted = committed;
    }
}

pub(super) fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    use std::os::unix::fs::FileExt;
    loop {
        match file.read_at(buf, offset) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            other => return other,
        }
    }
}

/// Offset just past the last complete line, for `--from end`.
pub(super) fn end_of_last_line(file: &File, size: u64) -> u64 {
    let window = size.min(64 * 1024);
    let mut buf = vec![0; window as usize];
    match read_full_at(file, &mut buf, size - window) {
        Ok(n) if n == buf.len() => match memchr::memrchr(b'\n', &buf) {
            Some(i) => size - window + i as u64 + 1,
            None => size,
        },
        _ => size,
    }
}

impl Relay {
    pub(super) fn read_all<W: Write>(
        &mut self,
        now: Instant,
        out: &mut Output<W>,
    ) -> Result<Progress, RelayError> {
        let mut progress = Progress::default();
        // Labels whose older file still has unread bytes: newer files of the
        // same label wait, so lines keep their order across a rotation.
        let mut held_back: Vec<Arc<str>> = Vec::new();
        for i in 0..self.readers.len() {
            if held_back.contains(&self.readers[i].label) || self.older_unread(i) {
                progress.budget_hit = true;
                continue;
            }
            let p = self.poll_reader(i, now, out)?;
            if p.read_any {
                progress.read_any = true;
                self.last_data_any = now;
            }
            if p.budget_hit {
                progress.budget_hit = true;
                held_back.push(Arc::clone(&self.readers[i].label));
            }
            self.readers[i].flush(false, &self.rules, now, out, &mut self.summary)?;
        }
        self.retire_quiet(now, out)?;
        self.update_lag();
        Ok(progress)
    }

    /// True when reader `i` follows a path while an older file of its label
    /// (rotated away; after a stop half-way through it, maybe opened after
    /// `i`) still has bytes left: `i` waits, so lines keep their order.
    fn older_unread(&self, i: usize) -> bool {
        let r = &self.readers[i];
        r.attached
            && self
                .readers
                .iter()
                .any(|o| !o.attached && !o.error_noted && o.label == r.label && o.offset < o.size)
    }

    /// Reads what is new in one file.
    pub(super) fn poll_reader<W: Write>(
        &mut self,
        i: usize,
        now: Instant,
        out: &mut Output<W>,
    ) -> Result<Progress, RelayError> {
        let mut progress = Progress::default();
        let (size, mtime) = match self.readers[i].file.metadata() {
            Ok(m) => (m.len(), m.modified().unwrap_or(SystemTime::UNIX_EPOCH)),
            Err(e) => {
                self.read_error(i, &e);
                return Ok(progress);
            }
        };
        let r = &self.readers[i];
        // Shorter than what we read: truncated. Changed, and no longer
        // starting as it did: truncated and written again, maybe as far as
        // before (then there is nothing new to read that would show it).
        // Shorter, but still starting as it did: cut to a non-zero size
        // (`truncate -s`). What it keeps was relayed already.
        if let Some(cut) = (size < r.offset && size > 0)
            .then(|| kept_prefix(r, size))
            .flatten()
        {
            self.cut_short(i, cut);
        } else if size < r.offset || (mtime != r.mtime && !r.fp.matches(&r.file).unwrap_or(true)) {
            self.truncated(i, now, out)?;
        }
        self.readers[i].size = size;
        self.readers[i].mtime = mtime;
        self.recheck_first_bytes(i, now, out)?;
        let mut budget = TICK_BUDGET;
        let mut chunks = 0u32;
        while budget > 0 {
            // A file started over at offset 0 (new, or truncated: also just
            // now, below) is read only after its first bytes were checked
            // for copies made meanwhile; while it is empty, not at all
            // (bytes written after an empty look may follow more rotations).
            if self.readers[i].recheck_since.is_some() {
                self.recheck_first_bytes(i, now, out)?;
                if self.readers[i].recheck_since.is_some() {
                    break;
                }
            }
            let r = &mut self.readers[i];
            let want = self.buf.len().min(budget);
            let n = match read_at(&r.file, &mut self.buf[..want], r.offset) {
                Ok(n) => n,
                Err(e) => {
                    self.read_error(i, &e);
                    break;
                }
            };
            if n == 0 {
                break;
            }
            // The bytes count only if the file still holds what was read:
            // otherwise it was truncated and rewritten between two looks
            // (copytruncate), or cut and written past the old end since.
            // Checked before every read, the first of a wake too: the check
            // above runs only when the mtime moved, and a truncation and
            // rewrite within one clock tick leaves the mtime as it was.
            match r.as_read() {
                AsRead::Same => {}
                AsRead::Rewritten => {
                    self.truncated(i, now, out)?;
                    continue;
                }
                AsRead::Cut => {
                    let size = r.file.metadata().map_or(r.offset, |m| m.len());
                    let cut = kept_prefix(r, size).unwrap_or(r.offset);
                    self.cut_short(i, cut);
                    continue;
                }
            }
            self.readers[i].take(&self.buf[..n], &self.rules, now, out, &mut self.summary)?;
            budget -= n;
            progress.read_any = true;
            self.dirty = true;
            chunks += 1;
            if n < want {
                // The end of the file for now: no read that returns nothing.
                break;
            }
            if chunks % 8 == 0 {
                self.pin_new_files();
            }
        }
        if budget == 0 {
            progress.budget_hit = true;
        }
        Ok(progress)
    }

    pub(super) fn read_error(&mut self, i: usize, e: &io::Error) {
        let r = &mut self.readers[i];
        r.metrics.read_errors.inc();
        if !r.error_noted {
            r.error_noted = true;
            tracing::warn!("cannot read {}: {e}; will retry", r.path.display());
        }
    }

    /// Reads `copy` from `offset` to its end as the continuation of reader `i`.
    pub(super) fn read_copy<W: Write>(
        &mut self,
        i: usize,
        copy: &File,
        mut offset: u64,
        now: Instant,
        out: &mut Output<W>,
    ) -> Result<u64, RelayError> {
        while !self.out_of_time() {
            let n = match read_at(copy, &mut self.buf, offset) {
                Ok(n) => n,
                Err(e) => {
                    self.read_error(i, &e);
                    break;
                }
            };
            if n == 0 {
                break;
            }
            self.readers[i].frame(&self.buf[..n], &self.rules, now, out, &mut self.summary)?;
            offset += n as u64;
        }
        Ok(offset)
    }

    /// Lets go of rotated files that were read to their end and stayed quiet.
    pub(super) fn retire_quiet<W: Write>(
        &mut self,
        now: Instant,
        out: &mut Output<W>,
    ) -> Result<(), RelayError> {
        let mut i = 0;
        while i < self.readers.len() {
            let r = &self.readers[i];
            let quiet = now.duration_since(r.last_data) >= self.cfg.rotate_wait;
            if !r.attached && quiet && r.offset >= r.size {
                self.finish_reader(i, now, out)?;
                let r = self.readers.remove(i);
                tracing::debug!(
                    "done with the rotated file {} of {}",
                    r.path.display(),
                    r.label
                );
                let label = Arc::clone(&r.label);
                self.forget_reader(r);
                if !self.literal_labels.contains(&*label)
                    && !self.readers.iter().any(|o| o.label == label)
                {
                    self.metrics.forget_file(&label);
                }
                self.metrics.files_open.set(self.readers.len() as i64);
                self.dirty = true;
            } else {
                i += 1;
            }
        }
        Ok(())
    }

    pub(super) fn finish_reader<W: Write>(
        &mut self,
        i: usize,
        now: Instant,
        out: &mut Output<W>,
    ) -> Result<(), RelayError> {
        self.readers[i].flush(true, &self.rules, now, out, &mut self.summary)
    }

    /// Reads reader `i` to the end of its file, whatever the tick budget,
    /// unless the drain timeout passes first (what is left is then counted
    /// when the relay stops, see [`Relay::finish_all`]).
    pub(super) fn drain_reader<W: Write>(
        &mut self,
        i: usize,
        now: Instant,
        out: &mut Output<W>,
    ) -> Result<(), RelayError> {
        while !self.out_of_time() && self.poll_reader(i, now, out)?.budget_hit {}
        Ok(())
    }

    /// At exit: emits what the framers hold (a partial last line gets its
    /// newline). After a drain timeout, a file with bytes left unread keeps
    /// its held line (it goes on in the unread bytes): the checkpoint
    /// records where relaying stopped, and what is left is counted lost
    /// for this run, with one warning.
    pub(super) fn finish_all<W: Write>(&mut self, out: &mut Output<W>) -> Result<(), RelayError> {
        let now = Instant::now();
        let (mut left, mut files) = (0u64, 0usize);
        for i in 0..self.readers.len() {
            let r = &self.readers[i];
            let size = r.file.metadata().map_or(r.size, |m| m.len());
            let unread = if self.summary.drain_timed_out && size > r.offset {
                size.saturating_sub(r.framer.committed())
            } else {
                0
            };
            if unread == 0 {
                self.finish_reader(i, now, out)?;
                continue;
            }
            r.metrics.bytes_lost.inc_by(unread);
            left += unread;
            files += 1;
        }
        if left > 0 {
            let resume = if self.store.is_some() {
                "a restart with the same --state-dir relays them from there"
            } else {
                "without --state-dir they are not relayed by anyone"
            };
            tracing::warn!(
                "stopping with {left} bytes of {files} file(s) not relayed: the drain timeout of {} passed first; counted in sidecar_logs_bytes_lost_total ({resume})",
                humantime::format_duration(self.cfg.drain_timeout)
            );
        }
        Ok(())
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A temporary file holding `content`, and the file opened for reading.
    pub(in crate::relay) fn file_with(content: &[u8]) -> (tempfile::NamedTempFile, File) {
        let mut t = tempfile::NamedTempFile::new().unwrap();
        t.write_all(content).unwrap();
        let f = File::open(t.path()).unwrap();
        (t, f)
    }

    #[test]
    fn from_end_starts_after_the_last_complete_line() {
        let (_t, f) = file_with(b"one\ntwo\npart");
        assert_eq!(end_of_last_line(&f, 12), 8);
        let (_t, f) = file_with(b"no newline");
        assert_eq!(end_of_last_line(&f, 10), 10);
    }
}
