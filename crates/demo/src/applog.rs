//! The demo app's logger: writes numbered log lines to a file and rotates it
//! the way real loggers do. Also the writer the tests and benchmarks use.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

/// How the log file is rotated when it reaches its size limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Rotation {
    /// Rename `app.log` to `app.log.1` (shifting older ones) and create a new
    /// `app.log`: logrotate `create`, Python's RotatingFileHandler, Serilog.
    #[default]
    Rename,
    /// Copy `app.log` to `app.log.1`, then truncate `app.log` in place:
    /// logrotate `copytruncate`. The writer keeps its descriptor (O_APPEND).
    CopyTruncate,
    /// Delete `app.log` and create it again.
    Delete,
}

impl std::str::FromStr for Rotation {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "rename" | "create" => Ok(Self::Rename),
            "copytruncate" => Ok(Self::CopyTruncate),
            "delete" => Ok(Self::Delete),
            _ => Err(format!(
                "`{s}` is not a rotation style; use rename, copytruncate or delete"
            )),
        }
    }
}

/// What the writer does.
#[derive(Debug, Clone)]
pub struct WriterOptions {
    pub file: PathBuf,
    /// Lines to write.
    pub lines: u64,
    /// Lines per second; 0 writes as fast as possible.
    pub rate: u64,
    /// Rotate when the file reaches this many bytes; 0 never rotates.
    pub rotate_bytes: u64,
    pub rotation: Rotation,
    /// Rotated files kept (`app.log.1` ... `app.log.N`).
    pub backups: u32,
    /// Leave the last line without its newline.
    pub partial_last_line: bool,
    /// Sequence number of the first line (to continue an earlier run).
    pub first_seq: u64,
}

impl WriterOptions {
    /// Writes `lines` lines to `file` at full speed, rotating by `rotation` every `rotate_bytes`.
    pub fn new(file: impl Into<PathBuf>, lines: u64) -> Self {
        Self {
            file: file.into(),
            lines,
            rate: 0,
            rotate_bytes: 0,
            rotation: Rotation::Rename,
            backups: 5,
            partial_last_line: false,
            first_seq: 1,
        }
    }
}

/// What the writer did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Written {
    pub lines: u64,
    pub rotations: u64,
}

/// The text of line number `seq` (1-based); tests and the demo parse the
/// sequence number back with [`parse_seq`].
pub fn line(seq: u64, now: SystemTime, out: &mut Vec<u8>) {
    const PATHS: [&str; 4] = [
        "/api/products",
        "/api/stock/12",
        "/api/products/7",
        "/health",
    ];
    let path = PATHS[(seq % 4) as usize];
    let status = if seq % 97 == 0 { 503 } else { 200 };
    let _ = write!(
        out,
        "{} INFO widgetario-web seq={seq:08} GET {path} {status} {}ms",
        humantime::format_rfc3339_millis(now),
        3 + seq * 7 % 40
    );
}

/// The sequence number in a line written by [`line`].
pub fn parse_seq(line: &[u8]) -> Option<u64> {
    let pos = memfind(line, b"seq=")? + 4;
    let digits = line[pos..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    std::str::from_utf8(&line[pos..pos + digits])
        .ok()?
        .parse()
        .ok()
}

fn memfind(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

struct LogFile {
    path: PathBuf,
    out: BufWriter<File>,
    size: u64,
}

impl LogFile {
    fn open(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(Self {
            path: path.to_path_buf(),
            out: BufWriter::with_capacity(64 * 1024, file),
            size,
        })
    }

    fn backup(&self, n: u32) -> PathBuf {
        let mut name = self.path.clone().into_os_string();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    /// Shifts app.log.1 → app.log.2 … keeping `backups` files.
    fn shift_backups(&self, backups: u32) -> io::Result<()> {
        for n in (1..backups).rev() {
            match fs::rename(self.backup(n), self.backup(n + 1)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }

    fn rotate(&mut self, how: Rotation, backups: u32) -> io::Result<()> {
        self.out.flush()?;
        match how {
            Rotation::Rename => {
                if backups > 0 {
                    self.shift_backups(backups)?;
                    fs::rename(&self.path, self.backup(1))?;
                } else {
                    fs::remove_file(&self.path)?;
                }
                *self = Self::open(&self.path)?;
            }
            Rotation::CopyTruncate => {
                if backups > 0 {
                    self.shift_backups(backups)?;
                    fs::copy(&self.path, self.backup(1))?;
                }
                self.out.get_ref().set_len(0)?;
                self.size = 0;
            }
            Rotation::Delete => {
                fs::remove_file(&self.path)?;
                *self = Self::open(&self.path)?;
            }
        }
        Ok(())
    }
}

/// Writes `opts.lines` lines (fewer if `stop` is set), rotating as asked.
pub fn write_logs(opts: &WriterOptions, stop: &AtomicBool) -> io::Result<Written> {
    let mut file = LogFile::open(&opts.file)?;
    let mut done = Written::default();
    let mut buf = Vec::with_capacity(256);
    let start = Instant::now();
    let last = opts.first_seq + opts.lines.saturating_sub(1);
    for seq in opts.first_seq..=last {
        if stop.load(Ordering::Relaxed) || opts.lines == 0 {
            break;
        }
        if opts.rate > 0 {
            let n = seq - opts.first_seq;
            let due = start + Duration::from_secs_f64(n as f64 / opts.rate as f64);
            let now = Instant::now();
            if due > now {
                file.out.flush()?;
                std::thread::sleep(due - now);
            }
        }
        buf.clear();
        line(seq, SystemTime::now(), &mut buf);
        if !(opts.partial_last_line && seq == last) {
            buf.push(b'\n');
        }
        file.out.write_all(&buf)?;
        file.size += buf.len() as u64;
        done.lines += 1;
        if opts.rotate_bytes > 0 && file.size >= opts.rotate_bytes && seq < last {
            file.rotate(opts.rotation, opts.backups)?;
            done.rotations += 1;
        }
    }
    file.out.flush()?;
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_carry_their_sequence_number() {
        let mut buf = Vec::new();
        line(42, SystemTime::UNIX_EPOCH, &mut buf);
        assert_eq!(parse_seq(&buf), Some(42));
        assert!(buf.starts_with(b"1970-01-01T00:00:00.000Z INFO"));
        assert_eq!(parse_seq(b"no number"), None);
    }

    #[test]
    fn each_rotation_style_keeps_every_line_somewhere() {
        for rotation in [Rotation::Rename, Rotation::CopyTruncate] {
            let dir = tempfile::tempdir().unwrap();
            let opts = WriterOptions {
                rotate_bytes: 1000,
                rotation,
                backups: 100,
                ..WriterOptions::new(dir.path().join("app.log"), 100)
            };
            let written = write_logs(&opts, &AtomicBool::new(false)).unwrap();
            assert_eq!(written.lines, 100);
            assert!(written.rotations >= 5, "{written:?}");
            let mut seqs: Vec<u64> = fs::read_dir(dir.path())
                .unwrap()
                .flat_map(|e| {
                    fs::read(e.unwrap().path())
                        .unwrap()
                        .split(|b| *b == b'\n')
                        .filter_map(parse_seq)
                        .collect::<Vec<_>>()
                })
                .collect();
            seqs.sort_unstable();
            assert_eq!(seqs, (1..=100).collect::<Vec<_>>(), "{rotation:?}");
        }
    }
}
