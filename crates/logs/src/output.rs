//! Writes records to stdout (or any writer) in the chosen format.

use std::io::{self, Write};
use std::time::SystemTime;

use serde::Serialize;

use crate::framer::Sink;

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
}

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
        if self.dirty {
            self.writer.flush()?;
            self.dirty = false;
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
        self.out.writer.write_all(bytes)
    }

    fn record(&mut self, bytes: &[u8]) -> io::Result<()> {
        let out = &mut *self.out;
        out.dirty = true;
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
