//! Writes records to stdout (or any writer) in the chosen format.

use std::io::{self, IoSlice, Write};
use std::time::SystemTime;

use serde::Serialize;

use crate::framer::Sink;

/// The pipe capacity `sidecar logs` asks for when stdout is a pipe.
pub const PIPE_CAPACITY: usize = 1024 * 1024;

/// Raises the capacity of the pipe `fd` (stdout, read by the container
/// runtime) to at least `bytes`: with Linux's default of 64 KiB, each
/// 128 KiB write of the relay stops half-way until the reader has caught
/// up, and the two take turns instead of working at once (half of GNU
/// tail's throughput into a pipe, measured; with 1 MiB, more than tail's).
/// Returns the capacity now, or `None` when `fd` is not a pipe or the
/// kernel refused (beyond `/proc/sys/fs/pipe-max-size` or the user's pipe
/// quota); the relay works the same, only slower then.
pub fn widen_pipe(fd: std::os::fd::BorrowedFd<'_>, bytes: usize) -> Option<usize> {
    use nix::fcntl::{FcntlArg, fcntl};
    let now = usize::try_from(fcntl(fd, FcntlArg::F_GETPIPE_SZ).ok()?).ok()?;
    if now >= bytes {
        return Some(now);
    }
    let wanted = i32::try_from(bytes).ok()?;
    fcntl(fd, FcntlArg::F_SETPIPE_SZ(wanted))
        .ok()
        .and_then(|n| usize::try_from(n).ok())
}

/// Output format of the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// Each line exactly as written, with its newline.
    #[default]
    Raw,
    /// One JSON object per record: `{"ts","file","line"}`.
    Json,
}

/// The shared output stream of a relay.
pub struct Output<W: Write> {
    writer: W,
    format: Format,
    prefix: bool,
    /// RFC 3339 time of the current read, used by the JSON format.
    ts: String,
    dirty: bool,
    /// Raw lines emitted one by one (a line completed across two reads),
    /// held so that they go out in the same write as the block after them:
    /// one write per read, not a short one and a long one (into a pipe,
    /// every write wakes the reader).
    carry: Vec<u8>,
}

/// Lines held in `carry` beyond this are written out.
const CARRY_MAX: usize = 64 * 1024;

#[derive(Serialize)]
struct JsonRecord<'a> {
    ts: &'a str,
    file: &'a str,
    line: &'a str,
}

impl<W: Write> Output<W> {
    pub fn new(writer: W, format: Format, prefix: bool) -> Self {
        Self {
            writer,
            format,
            prefix,
            ts: String::new(),
            dirty: false,
            carry: Vec::new(),
        }
    }

    /// True when runs of raw lines can be copied without looking at each line.
    pub fn takes_blocks(&self) -> bool {
        self.format == Format::Raw && !self.prefix
    }

    /// Sets the read time stamped on JSON records.
    pub fn set_read_time(&mut self, now: SystemTime) {
        if self.format == Format::Json {
            self.ts = humantime::format_rfc3339_micros(now).to_string();
        }
    }

    /// A sink that writes records of one file.
    pub fn for_file<'a>(&'a mut self, file: &'a str, name: &'a str) -> FileSink<'a, W> {
        FileSink {
            out: self,
            file,
            name,
        }
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.write_carry(&[])?;
        if self.dirty {
            self.writer.flush()?;
            self.dirty = false;
        }
        Ok(())
    }

    /// Writes the held lines, then `bytes`, with as few writes as it takes.
    fn write_carry(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.carry.is_empty() {
            return self.writer.write_all(bytes);
        }
        let mut slices = [IoSlice::new(&self.carry), IoSlice::new(bytes)];
        let mut rest = &mut slices[..];
        while !rest.is_empty() {
            match self.writer.write_vectored(rest) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => IoSlice::advance_slices(&mut rest, n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.carry.clear();
        if self.carry.capacity() > CARRY_MAX {
            self.carry.shrink_to(CARRY_MAX);
        }
        Ok(())
    }

    pub fn get_ref(&self) -> &W {
        &self.writer
    }
}

/// Writes the records of one file into the shared [`Output`].
pub struct FileSink<'a, W: Write> {
    out: &'a mut Output<W>,
    /// The followed path, for JSON.
    file: &'a str,
    /// The file name, for `--prefix`.
    name: &'a str,
}

impl<W: Write> Sink for FileSink<'_, W> {
    fn block(&mut self, bytes: &[u8], _lines: u64) -> io::Result<()> {
        self.out.dirty = true;
        self.out.write_carry(bytes)
    }

    fn record(&mut self, bytes: &[u8]) -> io::Result<()> {
        let out = &mut *self.out;
        out.dirty = true;
        if out.takes_blocks() {
            out.carry.extend_from_slice(bytes);
            out.carry.push(b'\n');
            if out.carry.len() >= CARRY_MAX {
                out.write_carry(&[])?;
            }
            return Ok(());
        }
        match out.format {
            Format::Raw => {
                if out.prefix {
                    out.writer.write_all(self.name.as_bytes())?;
                    out.writer.write_all(b": ")?;
                }
                out.writer.write_all(bytes)?;
            }
            Format::Json => {
                let line = String::from_utf8_lossy(bytes);
                let record = JsonRecord {
                    ts: &out.ts,
                    file: self.file,
                    line: &line,
                };
                serde_json::to_writer(&mut out.writer, &record).map_err(io::Error::other)?;
            }
        }
        out.writer.write_all(b"\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts the writes that reach it.
    #[derive(Default)]
    struct Counted {
        data: Vec<u8>,
        calls: usize,
    }

    impl Write for Counted {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.calls += 1;
            self.data.extend_from_slice(buf);
            Ok(buf.len())
        }

        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            self.calls += 1;
            let mut n = 0;
            for b in bufs {
                self.data.extend_from_slice(b);
                n += b.len();
            }
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_line_completed_across_reads_goes_out_with_the_block_after_it() {
        let mut out = Output::new(Counted::default(), Format::Raw, false);
        let mut sink = out.for_file("/logs/app.log", "app.log");
        sink.record(b"end of a line").unwrap();
        sink.block(b"two\nthree\n", 2).unwrap();
        assert_eq!(out.get_ref().calls, 1);
        out.for_file("/logs/app.log", "app.log")
            .record(b"last")
            .unwrap();
        out.flush().unwrap();
        assert_eq!(out.get_ref().data, b"end of a line\ntwo\nthree\nlast\n");
        assert_eq!(out.get_ref().calls, 2);
    }

    #[test]
    fn raw_with_prefix() {
        let mut out = Output::new(Vec::new(), Format::Raw, true);
        assert!(!out.takes_blocks());
        out.for_file("/logs/app.log", "app.log")
            .record(b"hello")
            .unwrap();
        assert_eq!(out.get_ref(), b"app.log: hello\n");
    }

    #[test]
    fn json_replaces_invalid_utf8_and_escapes() {
        let mut out = Output::new(Vec::new(), Format::Json, false);
        out.set_read_time(SystemTime::UNIX_EPOCH);
        out.for_file("/l/a.log", "a.log")
            .record(b"bad \xff byte \"quoted\"\n  at x")
            .unwrap();
        let text = String::from_utf8(out.get_ref().clone()).unwrap();
        assert!(text.ends_with('\n'));
        let v: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
        assert_eq!(v["ts"], "1970-01-01T00:00:00.000000Z");
        assert_eq!(v["file"], "/l/a.log");
        assert_eq!(v["line"], "bad \u{fffd} byte \"quoted\"\n  at x");
    }
}
