//! Cuts the bytes of one file into records: lines, or multiline events.
//!
//! The framer never drops a byte. It holds a trailing partial line until its
//! newline arrives, splits lines longer than the limit into pieces, and (with
//! a start pattern) joins continuation lines to the event they belong to. It
//! also knows the *committed* offset: the file offset just past the last byte
//! that left through the sink, which is what a checkpoint may safely record.

use std::io;
use std::time::{Duration, Instant};

use memchr::{memchr, memchr_iter, memrchr};
use regex::bytes::Regex;

/// How bytes become records; shared by every file of a relay.
#[derive(Debug, Clone)]
pub struct Rules {
    /// Longest record content (without its newline); longer lines are split.
    pub max_line_bytes: usize,
    /// Lines that do not match start no new event and join the previous one.
    pub multiline_start: Option<Regex>,
    /// A pending multiline event is emitted after this long without a new line.
    pub multiline_timeout: Duration,
    /// The sink takes runs of complete lines verbatim (raw output, no prefix,
    /// no multiline): the fast path that copies whole buffers.
    pub blocks: bool,
}

/// Where records go.
pub trait Sink {
    /// Complete lines, each ending in `\n`, none longer than the limit.
    /// Called only when [`Rules::blocks`] is set.
    fn block(&mut self, bytes: &[u8], lines: u64) -> io::Result<()>;
    /// One record without its trailing newline (a multiline event holds inner newlines).
    fn record(&mut self, bytes: &[u8]) -> io::Result<()>;
}

/// What a framer emitted since the last [`Framer::take_stats`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub records: u64,
    pub splits: u64,
}

/// Framing state of one file.
#[derive(Debug)]
pub struct Framer {
    /// Offset just past the last byte pushed in.
    consumed: u64,
    /// Partial line (no newline yet) and the offset where it starts.
    pending: Vec<u8>,
    pending_start: u64,
    /// Multiline event being assembled: its bytes, start offset, last growth.
    event: Vec<u8>,
    event_start: Option<u64>,
    event_at: Instant,
    stats: Stats,
}

impl Framer {
    /// A framer for bytes that start at file offset `offset`.
    pub fn new(offset: u64) -> Self {
        Self {
            consumed: offset,
            pending: Vec::new(),
            pending_start: offset,
            event: Vec::new(),
            event_start: None,
            event_at: Instant::now(),
            stats: Stats::default(),
        }
    }

    /// Offset just past the last byte that has left through the sink.
    pub fn committed(&self) -> u64 {
        match self.event_start {
            Some(start) => start,
            None if !self.pending.is_empty() => self.pending_start,
            None => self.consumed,
        }
    }

    /// Offset just past the last byte pushed in.
    pub fn consumed(&self) -> u64 {
        self.consumed
    }

    /// True when bytes are held back (a partial line or an open event).
    pub fn holds_data(&self) -> bool {
        !self.pending.is_empty() || self.event_start.is_some()
    }

    pub fn take_stats(&mut self) -> Stats {
        std::mem::take(&mut self.stats)
    }

    /// Feeds the next bytes of the file.
    pub fn push(
        &mut self,
        rules: &Rules,
        mut data: &[u8],
        now: Instant,
        sink: &mut dyn Sink,
    ) -> io::Result<()> {
        let max = rules.max_line_bytes.max(1);
        while !data.is_empty() {
            if rules.blocks && self.pending.is_empty() && self.event_start.is_none() {
                // Fast path: copy the longest run of complete, short-enough lines at once.
                let (end, lines) = if data.len() <= max {
                    // No line inside `data` can be longer than `data`: no need to measure each.
                    match memrchr(b'\n', data) {
                        Some(last) => (
                            last + 1,
                            memchr_iter(b'\n', &data[..last]).count() as u64 + 1,
                        ),
                        None => (0, 0),
                    }
                } else {
                    let mut end = 0;
                    let mut lines = 0;
                    for nl in memchr_iter(b'\n', data) {
                        if nl - end > max {
                            break;
                        }
                        lines += 1;
                        end = nl + 1;
                    }
                    (end, lines)
                };
                if end > 0 {
                    sink.block(&data[..end], lines)?;
                    self.stats.records += lines;
                    self.consumed += end as u64;
                    data = &data[end..];
                    continue;
                }
            }
            // One line at a time. The pending part never exceeds `max`.
            let room = max - self.pending.len();
            let window = &data[..data.len().min(room + 1)];
            match memchr(b'\n', window) {
                Some(i) => {
                    self.complete_with(rules, &data[..i], now, sink)?;
                    self.consumed += i as u64 + 1;
                    data = &data[i + 1..];
                }
                None if data.len() > room => {
                    // The line is longer than allowed: emit a full piece, never drop it.
                    self.stats.splits += 1;
                    self.complete_with(rules, &data[..room], now, sink)?;
                    self.consumed += room as u64;
                    data = &data[room..];
                }
                None => {
                    if self.pending.is_empty() {
                        self.pending_start = self.consumed;
                    }
                    self.pending.extend_from_slice(data);
                    self.consumed += data.len() as u64;
                    data = &[];
                }
            }
        }
        Ok(())
    }

    /// Completes the pending partial line (if any) with `tail` and hands the line on.
    fn complete_with(
        &mut self,
        rules: &Rules,
        tail: &[u8],
        now: Instant,
        sink: &mut dyn Sink,
    ) -> io::Result<()> {
        if self.pending.is_empty() {
            let start = self.consumed;
            self.line(rules, tail, start, now, sink)
        } else {
            let start = self.pending_start;
            let mut line = std::mem::take(&mut self.pending);
            line.extend_from_slice(tail);
            let result = self.line(rules, &line, start, now, sink);
            line.clear();
            self.pending = line; // keep the allocation
            result
        }
    }

    /// A complete line (without newline) that starts at file offset `start`.
    fn line(
        &mut self,
        rules: &Rules,
        line: &[u8],
        start: u64,
        now: Instant,
        sink: &mut dyn Sink,
    ) -> io::Result<()> {
        let Some(pattern) = &rules.multiline_start else {
            self.stats.records += 1;
            return sink.record(line);
        };
        let joins = self.event_start.is_some()
            && !pattern.is_match(line)
            && self.event.len() + 1 + line.len() <= rules.max_line_bytes.max(1);
        if joins {
            self.event.push(b'\n');
            self.event.extend_from_slice(line);
        } else {
            self.flush_event(sink)?;
            self.event.extend_from_slice(line);
            self.event_start = Some(start);
        }
        self.event_at = now;
        Ok(())
    }

    fn flush_event(&mut self, sink: &mut dyn Sink) -> io::Result<()> {
        if self.event_start.take().is_some() {
            self.stats.records += 1;
            let result = sink.record(&self.event);
            self.event.clear();
            if self.event.capacity() > 64 * 1024 {
                self.event.shrink_to(64 * 1024);
            }
            result?;
        }
        Ok(())
    }

    /// Emits a multiline event that has waited longer than the timeout.
    pub fn flush_stale(
        &mut self,
        rules: &Rules,
        now: Instant,
        sink: &mut dyn Sink,
    ) -> io::Result<()> {
        if self.event_start.is_some()
            && now.duration_since(self.event_at) >= rules.multiline_timeout
        {
            self.flush_event(sink)?;
        }
        Ok(())
    }

    /// Emits everything held: the partial line (a newline is added) and the open event.
    /// Used at shutdown, at rotation and when a file is truncated.
    pub fn finish(&mut self, rules: &Rules, now: Instant, sink: &mut dyn Sink) -> io::Result<()> {
        if !self.pending.is_empty() {
            self.complete_with(rules, &[], now, sink)?;
            if self.pending.capacity() > 64 * 1024 {
                self.pending.shrink_to(64 * 1024);
            }
        }
        self.flush_event(sink)
    }

    /// Starts over at `offset` (after a truncation). Call [`Framer::finish`] first.
    pub fn restart_at(&mut self, offset: u64) {
        debug_assert!(!self.holds_data());
        self.consumed = offset;
        self.pending_start = offset;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Collects records as the raw output would show them.
    #[derive(Default)]
    struct Collect {
        out: Vec<u8>,
        records: Vec<Vec<u8>>,
    }

    impl Sink for Collect {
        fn block(&mut self, bytes: &[u8], lines: u64) -> io::Result<()> {
            assert_eq!(bytes.iter().filter(|b| **b == b'\n').count() as u64, lines);
            assert_eq!(bytes.last(), Some(&b'\n'));
            self.out.extend_from_slice(bytes);
            for line in bytes[..bytes.len() - 1].split(|b| *b == b'\n') {
                self.records.push(line.to_vec());
            }
            Ok(())
        }
        fn record(&mut self, bytes: &[u8]) -> io::Result<()> {
            self.out.extend_from_slice(bytes);
            self.out.push(b'\n');
            self.records.push(bytes.to_vec());
            Ok(())
        }
    }

    fn rules(max: usize, blocks: bool, multiline: Option<&str>) -> Rules {
        Rules {
            max_line_bytes: max,
            multiline_start: multiline.map(|p| Regex::new(p).unwrap()),
            multiline_timeout: Duration::from_secs(1),
            blocks,
        }
    }

    fn run(rules: &Rules, chunks: &[&[u8]]) -> (Collect, Framer) {
        let mut sink = Collect::default();
        let mut f = Framer::new(0);
        let now = Instant::now();
        for c in chunks {
            f.push(rules, c, now, &mut sink).unwrap();
        }
        (sink, f)
    }

    #[test]
    fn holds_a_partial_line_until_its_newline() {
        for blocks in [true, false] {
            let r = rules(100, blocks, None);
            let (sink, f) = run(&r, &[b"one\ntw", b"o\nthr"]);
            assert_eq!(sink.out, b"one\ntwo\n");
            assert_eq!(f.committed(), 8);
            assert_eq!(f.consumed(), 11);
            assert!(f.holds_data());
        }
    }

    #[test]
    fn finish_adds_the_missing_newline() {
        let r = rules(100, true, None);
        let (mut sink, mut f) = run(&r, &[b"a\nlast"]);
        f.finish(&r, Instant::now(), &mut sink).unwrap();
        assert_eq!(sink.out, b"a\nlast\n");
        assert_eq!(f.committed(), 6);
        assert!(!f.holds_data());
    }

    #[test]
    fn splits_long_lines_into_pieces_and_counts_them() {
        let r = rules(4, true, None);
        let (mut sink, mut f) = run(&r, &[b"abcdefghij\nxy", b"z\n1234\n"]);
        f.finish(&r, Instant::now(), &mut sink).unwrap();
        assert_eq!(sink.out, b"abcd\nefgh\nij\nxyz\n1234\n");
        assert_eq!(
            f.take_stats(),
            Stats {
                records: 5,
                splits: 2
            }
        );
    }

    #[test]
    fn a_line_of_exactly_the_limit_is_not_split() {
        let r = rules(4, false, None);
        let (sink, mut f) = run(&r, &[b"ab", b"cd", b"\n"]);
        assert_eq!(sink.out, b"abcd\n");
        assert_eq!(f.take_stats().splits, 0);
    }

    #[test]
    fn multiline_joins_continuations_and_commits_at_event_start() {
        let r = rules(1000, false, Some(r"^\d"));
        let (mut sink, mut f) = run(&r, &[b"1 error\n  at a\n  at b\n2 ok\n3 next\n  more\n"]);
        assert_eq!(
            sink.records,
            vec![b"1 error\n  at a\n  at b".to_vec(), b"2 ok".to_vec()]
        );
        assert_eq!(
            f.committed(),
            b"1 error\n  at a\n  at b\n2 ok\n".len() as u64
        );
        // Not stale yet, then stale.
        let now = Instant::now();
        f.flush_stale(&r, now, &mut sink).unwrap();
        assert_eq!(sink.records.len(), 2);
        f.flush_stale(&r, now + Duration::from_secs(2), &mut sink)
            .unwrap();
        assert_eq!(sink.records[2], b"3 next\n  more".to_vec());
        assert_eq!(f.committed(), f.consumed());
    }

    #[test]
    fn multiline_event_longer_than_the_limit_is_cut() {
        let r = rules(12, false, Some(r"^S"));
        let (mut sink, mut f) = run(&r, &[b"S1\n aaaa\n bbbb\n cccc\nS2\n"]);
        f.finish(&r, Instant::now(), &mut sink).unwrap();
        assert_eq!(
            sink.records,
            vec![
                b"S1\n aaaa".to_vec(),
                b" bbbb\n cccc".to_vec(),
                b"S2".to_vec()
            ]
        );
    }

    proptest! {
        /// However the input is chunked and whatever the limit, raw output is the
        /// input with newlines added only at splits and at the end.
        #[test]
        fn never_loses_or_repeats_bytes(
            data in proptest::collection::vec(prop_oneof![Just(b'\n'), Just(b'a'), any::<u8>()], 0..2000),
            cuts in proptest::collection::vec(0usize..2000, 0..10),
            max in 1usize..50,
            blocks in any::<bool>(),
        ) {
            let r = rules(max, blocks, None);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(data.len())).collect();
            cuts.push(0);
            cuts.push(data.len());
            cuts.sort_unstable();
            let chunks: Vec<&[u8]> = cuts.windows(2).map(|w| &data[w[0]..w[1]]).collect();
            let (mut sink, mut f) = run(&r, &chunks);
            // Mid-stream: committed never passes consumed and equals the emitted bytes.
            prop_assert!(f.committed() <= f.consumed());
            f.finish(&r, Instant::now(), &mut sink).unwrap();
            prop_assert_eq!(f.committed(), data.len() as u64);
            // Removing the newlines we added gives back the input exactly.
            let mut expected = Vec::new();
            let segments: Vec<&[u8]> = data.split(|b| *b == b'\n').collect();
            for (i, line) in segments.iter().enumerate() {
                if line.is_empty() {
                    if i + 1 < segments.len() {
                        expected.push(b'\n');
                    }
                    continue;
                }
                for piece in line.chunks(max) {
                    expected.extend_from_slice(piece);
                    expected.push(b'\n');
                }
            }
            prop_assert_eq!(&sink.out, &expected);
            for rec in &sink.records {
                prop_assert!(rec.len() <= max);
            }
        }
    }
}
