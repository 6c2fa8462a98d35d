//! File identity: device + inode, confirmed by a fingerprint of the first bytes.
//!
//! Device and inode tell which file a path points to now; the fingerprint
//! (the file's first bytes, up to [`FINGERPRINT_BYTES`]) tells whether a file
//! with a known inode is still the file we read, or a new file that reuses a
//! freed inode, or the same inode truncated and rewritten (copytruncate).

use std::fs::{File, Metadata};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};

use serde::{Deserialize, Serialize};

/// How many leading bytes of a file make its fingerprint.
pub const FINGERPRINT_BYTES: usize = 256;

/// Device and inode of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

impl FileId {
    pub fn of(meta: &Metadata) -> Self {
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

/// The first bytes of a file (fewer while the file is shorter).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fingerprint(Vec<u8>);

impl Fingerprint {
    /// Reads the first `min(len, FINGERPRINT_BYTES)` bytes of `file`.
    pub fn read(file: &File, len: u64) -> io::Result<Self> {
        let want = len.min(FINGERPRINT_BYTES as u64) as usize;
        let mut buf = vec![0; want];
        let got = read_full_at(file, &mut buf, 0)?;
        buf.truncate(got);
        Ok(Self(buf))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Adds bytes read at `offset` while the fingerprint is still short.
    pub fn extend(&mut self, offset: u64, data: &[u8]) {
        if self.0.len() < FINGERPRINT_BYTES && offset == self.0.len() as u64 {
            let take = (FINGERPRINT_BYTES - self.0.len()).min(data.len());
            self.0.extend_from_slice(&data[..take]);
        }
    }

    /// True when `file` still starts with these bytes.
    pub fn matches(&self, file: &File) -> io::Result<bool> {
        if self.0.is_empty() {
            return Ok(true);
        }
        let mut buf = [0u8; FINGERPRINT_BYTES];
        let buf = &mut buf[..self.0.len()];
        let got = read_full_at(file, buf, 0)?;
        Ok(got == self.0.len() && buf[..] == self.0[..])
    }

    /// True when `file` and these bytes agree on their common, non-empty start
    /// (a copy still being written shares the start of its original).
    pub fn shares_start_with(&self, file: &File) -> io::Result<bool> {
        let mut buf = [0u8; FINGERPRINT_BYTES];
        let got = read_full_at(file, &mut buf[..self.0.len()], 0)?;
        Ok(got > 0 && buf[..got] == self.0[..got])
    }

    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn from_hex(hex: &str) -> Option<Self> {
        if hex.len() % 2 != 0 || hex.len() > FINGERPRINT_BYTES * 2 {
            return None;
        }
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
            .collect::<Option<Vec<u8>>>()
            .map(Self)
    }
}

/// Reads until `buf` is full or end of file; returns how many bytes were read.
pub fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match file.read_at(&mut buf[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn fingerprint_tells_rewritten_content_apart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        std::fs::write(&path, b"first line\nsecond\n").unwrap();
        let f = File::open(&path).unwrap();
        let fp = Fingerprint::read(&f, 11).unwrap();
        assert_eq!(fp.len(), 11);
        assert!(fp.matches(&f).unwrap());
        // Truncate and rewrite through another handle: same inode, new bytes.
        let mut w = File::create(&path).unwrap();
        w.write_all(b"other line\n").unwrap();
        assert!(!fp.matches(&f).unwrap());
        // Shorter than the fingerprint: no match.
        std::fs::write(&path, b"first").unwrap();
        assert!(!fp.matches(&f).unwrap());
    }

    #[test]
    fn extend_only_appends_at_the_end_and_caps() {
        let mut fp = Fingerprint::default();
        fp.extend(0, b"abc");
        fp.extend(10, b"zzz");
        fp.extend(3, &[b'x'; 1000]);
        assert_eq!(fp.len(), FINGERPRINT_BYTES);
        assert_eq!(&fp.0[..4], b"abcx");
    }

    #[test]
    fn hex_round_trip() {
        let fp = Fingerprint(vec![0, 1, 0xab, 0xff]);
        assert_eq!(fp.to_hex(), "0001abff");
        assert_eq!(Fingerprint::from_hex("0001abff"), Some(fp));
        assert_eq!(Fingerprint::from_hex("0g"), None);
        assert_eq!(Fingerprint::from_hex("abc"), None);
    }
}
