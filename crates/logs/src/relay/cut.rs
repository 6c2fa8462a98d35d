//! Files cut to a non-zero size (`truncate -s`), maybe with lines appended
//! before the relay looks: where they were cut.
//!
//! What a file keeps after a cut was relayed already; what was appended
//! since was not. In a file no longer than its fingerprint, the cut is the
//! last line end it still shares with it. In a longer one, each reader
//! remembers its last [`LINE_ENDS`] line ends with the 8 bytes before each:
//! the cut is at the newest one whose bytes the file still holds. A cut
//! followed by appends past the old end is seen by the bytes before the
//! reader's offset changing while the first bytes stay (checked before
//! every read, see [`Reader::as_read`]).

use std::collections::VecDeque;
use std::fs::File;

use super::Relay;
use super::reader::Reader;
use crate::identity::{FINGERPRINT_BYTES, Fingerprint, Tail, read_full_at};
use crate::metrics::RotationKind;

/// Line ends remembered per file.
pub(super) const LINE_ENDS: usize = 256;

/// Bytes kept before each line end.
const END_BYTES: usize = 8;

/// The last [`LINE_ENDS`] line ends read from a file, with the bytes before each.
#[derive(Debug, Default)]
pub(super) struct LineEnds(VecDeque<(u64, [u8; END_BYTES])>);

impl LineEnds {
    /// Notes the line ends in `data`, read at `offset` right after
    /// `before` (the bytes read last).
    pub(super) fn note(&mut self, offset: u64, data: &[u8], before: &[u8]) {
        // The last ones only, newest first, without allocating.
        let mut ends = [0usize; LINE_ENDS];
        let mut n = 0;
        for p in memchr::memrchr_iter(b'\n', data).take(LINE_ENDS) {
            ends[n] = p;
            n += 1;
        }
        for &p in ends[..n].iter().rev() {
            let end = p + 1;
            let mut last = [0u8; END_BYTES];
            let from_data = end.min(END_BYTES);
            last[END_BYTES - from_data..].copy_from_slice(&data[end - from_data..end]);
            let need = END_BYTES - from_data;
            if need > before.len() {
                // Too near the start of the file to tell apart.
                continue;
            }
            last[..need].copy_from_slice(&before[before.len() - need..]);
            if self.0.len() == LINE_ENDS {
                self.0.pop_front();
            }
            self.0.push_back((offset + end as u64, last));
        }
    }

    /// Forgets the line ends past `end` (content cut away).
    pub(super) fn forget_after(&mut self, end: u64) {
        while self.0.back().is_some_and(|(e, _)| *e > end) {
            self.0.pop_back();
        }
    }

    pub(super) fn clear(&mut self) {
        self.0.clear();
    }

    /// The newest line end whose bytes `file` (of `size` bytes) still holds.
    pub(super) fn kept_end(&self, file: &File, size: u64) -> Option<u64> {
        self.0.iter().rev().find_map(|&(end, last)| {
            if end > size {
                return None;
            }
            let mut buf = [0u8; END_BYTES];
            let got = read_full_at(file, &mut buf, end - END_BYTES as u64).ok()?;
            (got == END_BYTES && buf == last).then_some(end)
        })
    }
}

/// What a reader's file holds before its offset, checked before each read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AsRead {
    /// What was read.
    Same,
    /// Other first bytes: truncated and written again (copytruncate).
    Rewritten,
    /// The first bytes, but not the last ones read: cut, and written past
    /// the old end since.
    Cut,
}

impl Reader {
    /// Whether the file still holds what was read (see [`AsRead`]). Past
    /// the fingerprint, the bytes right before the offset tell, and the
    /// first bytes only when those changed; a read error counts as the same
    /// (the read that follows reports it).
    pub(super) fn as_read(&self) -> AsRead {
        let starts = || self.fp.matches(&self.file).unwrap_or(true);
        if self.offset <= FINGERPRINT_BYTES as u64 {
            return if starts() {
                AsRead::Same
            } else {
                AsRead::Rewritten
            };
        }
        if self
            .tail
            .matches_at(&self.file, self.offset)
            .unwrap_or(true)
        {
            AsRead::Same
        } else if starts() {
            AsRead::Cut
        } else {
            AsRead::Rewritten
        }
    }
}

/// Where a file of `size` bytes that starts as it did (`fp`) was cut, if it
/// was cut and not rewritten: in a file no longer than the fingerprint, at
/// the last line end of what it still shares with it (bytes appended since
/// the cut may follow); in a longer one at the newest line end it still
/// holds (`ends`), else, when the cut is older than those, at `size`. None
/// when its first bytes changed (a rewrite, or a copytruncate).
pub(super) fn kept_prefix(r: &Reader, size: u64) -> Option<u64> {
    let (fp, ends, file) = (&r.fp, &r.line_ends, &r.file);
    if fp.is_empty() {
        return None;
    }
    if fp.len() as u64 <= size {
        if !fp.matches(file).ok()? {
            return None;
        }
        return Some(ends.kept_end(file, size).unwrap_or_else(|| {
            tracing::warn!(
                "{} was cut before the last {LINE_ENDS} lines relayed from it: taken as cut where it ends now ({size} bytes), so lines appended since the cut, if any, are skipped",
                r.label
            );
            size
        }));
    }
    let shared = fp.common_prefix(file).ok()?;
    let line_end = fp.as_bytes()[..shared].iter().rposition(|b| *b == b'\n')? + 1;
    Some(line_end as u64)
}

impl Relay {
    /// Reader `i`'s file was cut to `size` bytes, its first bytes unchanged:
    /// reading goes on from there (or from the line held unfinished, if it
    /// began before), so nothing is written twice.
    pub(super) fn cut_short(&mut self, i: usize, size: u64) {
        let r = &mut self.readers[i];
        let resume = size.min(r.framer.committed());
        self.metrics.rotation(&r.label, RotationKind::Truncate);
        tracing::info!(
            "{} was truncated to {size} bytes; what it keeps was relayed already, so relaying goes on from byte {resume}",
            r.label
        );
        r.framer.restart_at(resume);
        r.offset = resume;
        r.counted = resume;
        r.size = size;
        r.tail = Tail::read(&r.file, resume).unwrap_or_default();
        r.line_ends.forget_after(resume);
        // What the file starts with now (it may have grown since the cut).
        r.fp = Fingerprint::read(&r.file, resume).unwrap_or_default();
        self.dirty = true;
    }
}

#[cfg(test)]
mod tests {
    use super::super::reader::tests::file_with;
    use super::*;

    /// A reader of `content` that read `fp_of` (its first bytes) and
    /// remembers `ends`.
    fn reader_of(
        content: &[u8],
        fp_of: &[u8],
        ends: LineEnds,
    ) -> (tempfile::NamedTempFile, Reader) {
        let (t, f) = file_with(content);
        let metrics =
            crate::Metrics::register(&mut prometheus_client::registry::Registry::default());
        let mut r = Reader::new("/l/app.log", t.path().to_path_buf(), f, 0, &metrics).unwrap();
        r.fp = Fingerprint::read(&file_with(fp_of).1, u64::MAX).unwrap();
        r.line_ends = ends;
        (t, r)
    }

    #[test]
    fn a_cut_is_found_where_the_kept_part_ends() {
        let none = LineEnds::default;
        // A short file: cut after "b\n", then "x\n" appended.
        let (_t, r) = reader_of(b"a\nb\nx\n", b"a\nb\nc\nd\n", none());
        assert_eq!(kept_prefix(&r, 6), Some(4));
        // Rewritten from the start: not a cut.
        let (_t, r) = reader_of(b"z\n", b"a\nb\nc\nd\n", none());
        assert_eq!(kept_prefix(&r, 2), None);
        // A long file whose whole fingerprint is still there, with no line
        // ends known: cut at its size.
        let long: Vec<u8> = (0..600).map(|i| b'a' + (i % 26) as u8).collect();
        let (_t, mut r) = reader_of(&long[..400], &long, none());
        assert_eq!(kept_prefix(&r, 400), Some(400));
        r.fp = Fingerprint::default();
        assert_eq!(kept_prefix(&r, 400), None);
    }

    #[test]
    fn a_long_file_is_cut_at_the_newest_line_end_it_still_holds() {
        let old: String = (0..100).map(|i| format!("old line {i}\n")).collect();
        let mut ends = LineEnds::default();
        // Read in two pieces, the second starting inside a line.
        ends.note(0, &old.as_bytes()[..605], b"");
        ends.note(605, &old.as_bytes()[605..], &old.as_bytes()[..605]);
        // Cut after line 59, then lines appended: fewer than cut, or more.
        let kept: String = (0..60).map(|i| format!("old line {i}\n")).collect();
        for n in [3, 80] {
            let new: String = (0..n).map(|i| format!("new {i}\n")).collect();
            let content = format!("{kept}{new}");
            let (_t, mut r) = reader_of(
                content.as_bytes(),
                old.as_bytes(),
                std::mem::take(&mut ends),
            );
            assert_eq!(
                kept_prefix(&r, content.len() as u64),
                Some(kept.len() as u64),
                "{n} appended"
            );
            ends = std::mem::take(&mut r.line_ends);
        }
        ends.forget_after(kept.len() as u64);
        assert_eq!(ends.0.back().map(|e| e.0), Some(kept.len() as u64));
        ends.clear();
        assert!(ends.0.is_empty());
    }
}
