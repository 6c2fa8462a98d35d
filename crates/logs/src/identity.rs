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

/// Opens `path` for reading without ever blocking: `O_NONBLOCK` (a FIFO
/// or device opens at once instead of waiting for a writer), then refuses
/// anything that is not a regular file. Every file the relay opens goes
/// through here.
pub fn open_regular(path: &std::path::Path) -> io::Result<(File, Metadata)> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    Ok((file, meta))
}

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

    /// How many of these bytes `file` starts with.
    pub fn common_prefix(&self, file: &File) -> io::Result<usize> {
        let mut buf = [0u8; FINGERPRINT_BYTES];
        let got = read_full_at(file, &mut buf[..self.0.len()], 0)?;
        Ok(buf[..got]
            .iter()
            .zip(&self.0)
            .take_while(|(a, b)| a == b)
            .count())
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
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

/// What tells a file by its first bytes: a [`Fingerprint`], or the
/// [`FingerprintHash`] kept of it once the file is no longer read.
pub trait FirstBytes {
    /// How many first bytes it covers.
    fn covered(&self) -> usize;
    /// True when `file` starts with those bytes (always, when there are none).
    fn found_in(&self, file: &File) -> io::Result<bool>;
}

impl FirstBytes for Fingerprint {
    fn covered(&self) -> usize {
        self.len()
    }

    fn found_in(&self, file: &File) -> io::Result<bool> {
        self.matches(file)
    }
}

/// A fingerprint as kept for files no longer read (and in the checkpoint):
/// how many first bytes it covers and their SHA-256, 68 characters written
/// out instead of up to 512.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FingerprintHash {
    len: u16,
    sha256: [u8; 32],
}

impl FingerprintHash {
    pub fn of(fp: &Fingerprint) -> Self {
        use sha2::Digest;
        Self {
            len: u16::try_from(fp.len()).unwrap_or(u16::MAX),
            sha256: sha2::Sha256::digest(fp.as_bytes()).into(),
        }
    }

    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// True when `file` still starts with the bytes hashed.
    pub fn matches(&self, file: &File) -> io::Result<bool> {
        if self.is_empty() {
            return Ok(true);
        }
        let fp = Fingerprint::read(file, u64::from(self.len))?;
        Ok(fp.len() == self.len() && Self::of(&fp) == *self)
    }

    /// `<length>:<SHA-256 in hex>`, as the checkpoint holds it.
    pub fn encode(&self) -> String {
        encode_len_hash(self.len, &self.sha256)
    }

    /// Reads [`FingerprintHash::encode`]'s form, or the hex of the bytes
    /// themselves (checkpoints written before version 2).
    pub fn decode(text: &str) -> Option<Self> {
        let Some((len, hex)) = text.split_once(':') else {
            return Fingerprint::from_hex(text).map(|fp| Self::of(&fp));
        };
        let (len, sha256) = decode_len_hash(len, hex)?;
        Some(Self { len, sha256 })
    }
}

impl FirstBytes for FingerprintHash {
    fn covered(&self) -> usize {
        self.len()
    }

    fn found_in(&self, file: &File) -> io::Result<bool> {
        self.matches(file)
    }
}

/// The last bytes read from a file (up to [`FINGERPRINT_BYTES`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tail(Vec<u8>);

impl Tail {
    /// Adds bytes read right after the ones held.
    pub fn push(&mut self, data: &[u8]) {
        if data.len() >= FINGERPRINT_BYTES {
            self.0.clear();
            self.0
                .extend_from_slice(&data[data.len() - FINGERPRINT_BYTES..]);
            return;
        }
        let excess = (self.0.len() + data.len()).saturating_sub(FINGERPRINT_BYTES);
        self.0.drain(..excess);
        self.0.extend_from_slice(data);
    }

    /// The bytes of `file` right before `offset`.
    pub fn read(file: &File, offset: u64) -> io::Result<Self> {
        let want = offset.min(FINGERPRINT_BYTES as u64);
        let mut buf = vec![0; want as usize];
        let got = read_full_at(file, &mut buf, offset - want)?;
        buf.truncate(got);
        Ok(Self(buf))
    }

    pub fn clear(&mut self) {
        self.0.clear();
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// True when `file` holds these bytes right before `offset`.
    pub fn matches_at(&self, file: &File, offset: u64) -> io::Result<bool> {
        let len = self.0.len() as u64;
        if len > offset {
            return Ok(false);
        }
        let mut buf = [0u8; FINGERPRINT_BYTES];
        let buf = &mut buf[..self.0.len()];
        let got = read_full_at(file, buf, offset - len)?;
        Ok(got == buf.len() && buf[..] == self.0[..])
    }
}

/// `<length>:<hash in hex>`.
fn encode_len_hash(len: u16, hash: &[u8]) -> String {
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    format!("{len}:{hex}")
}

/// The length (at most [`FINGERPRINT_BYTES`]) and the `N` bytes of hash
/// that [`encode_len_hash`] wrote.
fn decode_len_hash<const N: usize>(len: &str, hex: &str) -> Option<(u16, [u8; N])> {
    let len: u16 = len.parse().ok()?;
    if usize::from(len) > FINGERPRINT_BYTES || hex.len() != 2 * N {
        return None;
    }
    let mut bytes = [0u8; N];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some((len, bytes))
}

/// The bytes a file held right before an offset (up to
/// [`FINGERPRINT_BYTES`]), as kept for files no longer read and in the
/// checkpoint: their length and the first 8 bytes of their SHA-256. A new
/// file that took a freed inode and starts like the old one (the same
/// banner) is told apart by these bytes, unless it holds the same there too.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BeforeHash {
    len: u16,
    sha256: [u8; 8],
}

impl BeforeHash {
    pub fn of(bytes: &[u8]) -> Self {
        use sha2::Digest;
        let digest: [u8; 32] = sha2::Sha256::digest(bytes).into();
        let mut sha256 = [0u8; 8];
        sha256.copy_from_slice(&digest[..8]);
        Self {
            len: u16::try_from(bytes.len()).unwrap_or(u16::MAX),
            sha256,
        }
    }

    /// The hash of the bytes of `file` right before `offset`.
    pub fn read(file: &File, offset: u64) -> io::Result<Self> {
        Ok(Self::of(Tail::read(file, offset)?.as_bytes()))
    }

    /// True when `file` holds the bytes hashed right before `offset`.
    pub fn matches_at(&self, file: &File, offset: u64) -> io::Result<bool> {
        let len = u64::from(self.len);
        if len > offset {
            return Ok(false);
        }
        let mut buf = [0u8; FINGERPRINT_BYTES];
        let buf = buf.get_mut(..usize::from(self.len)).unwrap_or_default();
        let got = read_full_at(file, buf, offset - len)?;
        Ok(got == buf.len() && Self::of(buf) == *self)
    }

    /// `<length>:<hex>`, as the checkpoint holds it.
    pub fn encode(&self) -> String {
        encode_len_hash(self.len, &self.sha256)
    }

    pub fn decode(text: &str) -> Option<Self> {
        let (len, hex) = text.split_once(':')?;
        let (len, sha256) = decode_len_hash(len, hex)?;
        Some(Self { len, sha256 })
    }
}

/// Content that was relayed up to byte `end`, told apart by its first bytes
/// and its last bytes before `end`: a copy of it that turns up later
/// (`copytruncate`) is relayed from `end`, not again from its start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadContent {
    head: Fingerprint,
    tail: Tail,
    end: u64,
}

impl ReadContent {
    /// `None` when there is too little to tell the content apart by.
    pub fn new(head: Fingerprint, tail: Tail, end: u64) -> Option<Self> {
        let enough = head.len() == FINGERPRINT_BYTES || head.len() as u64 == end;
        (enough && !head.is_empty() && tail.0.len() as u64 == end.min(FINGERPRINT_BYTES as u64))
            .then_some(Self { head, tail, end })
    }

    pub fn end(&self) -> u64 {
        self.end
    }

    /// True when `file` holds this content: the same first bytes, and the
    /// same bytes right before `end`.
    pub fn is_in(&self, file: &File) -> io::Result<bool> {
        if !self.head.matches(file)? {
            return Ok(false);
        }
        let mut buf = [0u8; FINGERPRINT_BYTES];
        let buf = &mut buf[..self.tail.0.len()];
        let got = read_full_at(file, buf, self.end - buf.len() as u64)?;
        Ok(got == buf.len() && buf[..] == self.tail.0[..])
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
    fn tail_keeps_the_last_bytes() {
        let mut t = Tail::default();
        t.push(b"abc");
        t.push(b"def");
        assert_eq!(t.0, b"abcdef");
        t.push(&[b'x'; FINGERPRINT_BYTES - 2]);
        assert_eq!(t.0.len(), FINGERPRINT_BYTES);
        assert_eq!(&t.0[..4], b"efxx");
        let mut long = vec![b'y'; 1000];
        long.push(b'z');
        t.push(&long);
        assert_eq!(t.0.len(), FINGERPRINT_BYTES);
        assert_eq!(t.0.last(), Some(&b'z'));
    }

    #[test]
    fn read_content_is_found_in_a_copy_and_only_there() {
        let dir = tempfile::tempdir().unwrap();
        let content: Vec<u8> = (0..2000u32)
            .flat_map(|n| format!("line {n}\n").into_bytes())
            .collect();
        let end = 5000u64;
        let mut tail = Tail::default();
        tail.push(&content[..end as usize]);
        let head = Fingerprint(content[..FINGERPRINT_BYTES].to_vec());
        let read = ReadContent::new(head.clone(), tail.clone(), end).unwrap();
        let write = |name: &str, bytes: &[u8]| {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            File::open(path).unwrap()
        };
        // A copy, whole or cut right at `end`: found.
        assert!(read.is_in(&write("copy", &content)).unwrap());
        assert!(read.is_in(&write("cut", &content[..end as usize])).unwrap());
        // Shorter than `end`, or other bytes before `end`: not found.
        assert!(!read.is_in(&write("short", &content[..4000])).unwrap());
        let mut other = content.clone();
        other[end as usize - 1] = b'#';
        assert!(!read.is_in(&write("other", &other)).unwrap());
        // Same start, other content further on (a banner): not found.
        let mut banner = content[..FINGERPRINT_BYTES].to_vec();
        banner.extend(std::iter::repeat_n(b'-', 10_000));
        assert!(!read.is_in(&write("banner", &banner)).unwrap());
        // Too little to tell contents apart by.
        assert!(ReadContent::new(Fingerprint(b"ab".to_vec()), tail, end).is_none());
        assert!(ReadContent::new(head, Tail::default(), end).is_none());
    }

    #[test]
    fn a_fingerprint_hash_matches_what_its_fingerprint_matches() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        std::fs::write(&path, [b'a'; 300]).unwrap();
        let f = File::open(&path).unwrap();
        let fp = Fingerprint::read(&f, 300).unwrap();
        let hash = FingerprintHash::of(&fp);
        assert_eq!(hash.len(), FINGERPRINT_BYTES);
        assert!(hash.matches(&f).unwrap());
        let text = hash.encode();
        assert_eq!(text.len(), 68);
        assert_eq!(FingerprintHash::decode(&text), Some(hash));
        // The old form (hex of the bytes) is read as the hash of those bytes.
        assert_eq!(FingerprintHash::decode(&fp.to_hex()), Some(hash));
        std::fs::write(&path, [b'b'; 300]).unwrap();
        assert!(!hash.matches(&f).unwrap());
        std::fs::write(&path, [b'a'; 100]).unwrap();
        assert!(!hash.matches(&f).unwrap(), "shorter than the bytes hashed");
        assert!(FingerprintHash::default().matches(&f).unwrap());
        assert_eq!(FingerprintHash::decode("257:00"), None);
        assert_eq!(FingerprintHash::decode("x:00"), None);
    }

    #[test]
    fn the_bytes_before_an_offset_tell_files_with_the_same_start_apart() {
        let dir = tempfile::tempdir().unwrap();
        let (old, new) = (dir.path().join("old"), dir.path().join("new"));
        std::fs::write(&old, b"BANNER\nline a\n").unwrap();
        std::fs::write(&new, b"BANNER\nline b\nmore\n").unwrap();
        let (old, new) = (File::open(&old).unwrap(), File::open(&new).unwrap());
        let before = BeforeHash::read(&old, 14).unwrap();
        assert!(before.matches_at(&old, 14).unwrap());
        assert!(!before.matches_at(&new, 14).unwrap());
        assert!(!before.matches_at(&old, 13).unwrap());
        assert_eq!(BeforeHash::decode(&before.encode()), Some(before));
        assert_eq!(BeforeHash::decode("300:0011223344556677"), None);
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
