//! The `--state-dir` checkpoint: which files were read up to which offset.
//!
//! Written atomically (temporary file, fsync, rename, fsync of the directory)
//! so a crash leaves either the old or the new checkpoint, never a torn one.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::identity::{BeforeHash, FileId, FingerprintHash};

const STATE_FILE: &str = "sidecar-logs.state.json";
const VERSION: u32 = 2;

/// Most bytes a checkpoint takes: files still open are always kept; of the
/// files let go, the most recent ones that fit (see [`Store::save`]).
pub const MAX_BYTES: usize = 352 * 1024;

/// One file the relay has read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The followed path this file was found at (its label in output and metrics).
    pub label: String,
    /// Where the file was last seen (differs from the label after a rename).
    pub path: PathBuf,
    #[serde(flatten)]
    pub id: FileId,
    /// The file's first bytes, as [`FingerprintHash::encode`] writes them
    /// (version 1 held their hex).
    pub fingerprint: String,
    /// Every byte before this offset has been written to stdout.
    pub offset: u64,
    /// The bytes right before `offset`, as [`BeforeHash::encode`] writes
    /// them (absent in older checkpoints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<String>,
    /// When the file was made (statx birth time), in nanoseconds since the
    /// epoch, where the filesystem tells.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub born: Option<u64>,
    /// False once the file was read to its end and let go.
    pub open: bool,
    /// Open, but rotated away from its label (another file had taken its
    /// place) and relayed to its end: nothing is known to be missing from
    /// it, should it be gone after a restart.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ended: bool,
}

impl Entry {
    pub fn fingerprint(&self) -> FingerprintHash {
        FingerprintHash::decode(&self.fingerprint).unwrap_or_default()
    }

    pub fn before(&self) -> Option<BeforeHash> {
        self.before.as_deref().and_then(BeforeHash::decode)
    }

    pub fn born(&self) -> Option<SystemTime> {
        self.born
            .map(|n| SystemTime::UNIX_EPOCH + std::time::Duration::from_nanos(n))
    }
}

/// `t` in nanoseconds since the epoch (as [`Entry::born`] keeps it).
pub fn nanos(t: SystemTime) -> Option<u64> {
    let since = t.duration_since(SystemTime::UNIX_EPOCH).ok()?;
    u64::try_from(since.as_nanos()).ok()
}

#[derive(Deserialize)]
struct Version {
    version: u32,
}

/// Version 1: one pretty-printed object per file, label and path in full.
#[derive(Deserialize)]
struct StateV1 {
    files: Vec<Entry>,
}

/// Version 2, compact: each label once; where a file still open was last
/// seen only when not at its label: its name when beside it, else its path.
#[derive(Debug, Serialize, Deserialize)]
struct State {
    version: u32,
    labels: Vec<String>,
    files: Vec<Compact>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Compact {
    /// Index in `labels`.
    l: usize,
    /// Name of the file beside its label (`app.log.1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    n: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    p: Option<PathBuf>,
    d: u64,
    i: u64,
    f: String,
    o: u64,
    /// [`Entry::before`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    b: Option<String>,
    /// [`Entry::born`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    t: Option<u64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    open: bool,
    /// [`Entry::ended`].
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    e: bool,
}

/// Builds a [`State`], label by label.
#[derive(Default)]
struct Builder {
    labels: Vec<String>,
    index: HashMap<String, usize>,
    files: Vec<Compact>,
}

impl Builder {
    /// Adds `e`; returns about how many bytes that adds to the JSON.
    fn add(&mut self, e: Entry) -> usize {
        let mut bytes = 0;
        let l = match self.index.get(&e.label) {
            Some(&l) => l,
            None => {
                bytes += json_len(&e.label) + 1;
                self.labels.push(e.label.clone());
                self.index.insert(e.label.clone(), self.labels.len() - 1);
                self.labels.len() - 1
            }
        };
        let label = Path::new(&e.label);
        let (n, p) = if !e.open || e.path == label {
            (None, None)
        } else if let Some(name) = e
            .path
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|_| e.path.parent() == label.parent())
        {
            (Some(name.to_string()), None)
        } else {
            (None, Some(e.path))
        };
        let c = Compact {
            l,
            n,
            p,
            d: e.id.dev,
            i: e.id.ino,
            f: e.fingerprint,
            o: e.offset,
            b: e.before,
            t: e.born,
            open: e.open,
            e: e.ended,
        };
        bytes += json_len(&c) + 1;
        self.files.push(c);
        bytes
    }
}

fn json_len(value: &impl Serialize) -> usize {
    serde_json::to_vec(value).map_or(0, |v| v.len())
}

/// Errors reading or writing the checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error(
        "cannot use state directory {dir}: {source}; create it and make it writable, or drop --state-dir"
    )]
    Dir { dir: PathBuf, source: io::Error },
    #[error("cannot read checkpoint {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("checkpoint {path} is not valid ({source}); move it away to start over from --from")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error(
        "checkpoint {path} is of version {version}, newer than this relay reads; move it away to start over from --from, or run the newer relay"
    )]
    Version { path: PathBuf, version: u32 },
    #[error("cannot write checkpoint {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
}

/// The checkpoint file in a state directory.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
    path: PathBuf,
}

impl Store {
    /// Opens (creating if needed) the state directory.
    pub fn open(dir: &Path) -> Result<Self, CheckpointError> {
        fs::create_dir_all(dir).map_err(|source| CheckpointError::Dir {
            dir: dir.to_path_buf(),
            source,
        })?;
        Ok(Self {
            dir: dir.to_path_buf(),
            path: dir.join(STATE_FILE),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// When the checkpoint was last written, if it exists.
    pub fn modified(&self) -> Option<std::time::SystemTime> {
        fs::metadata(&self.path).and_then(|m| m.modified()).ok()
    }

    /// The saved entries; none when no checkpoint exists yet.
    pub fn load(&self) -> Result<Vec<Entry>, CheckpointError> {
        let text = match fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(CheckpointError::Read {
                    path: self.path.clone(),
                    source,
                });
            }
        };
        let parse = |source| CheckpointError::Parse {
            path: self.path.clone(),
            source,
        };
        let Version { version } = serde_json::from_str(&text).map_err(parse)?;
        match version {
            1 => Ok(serde_json::from_str::<StateV1>(&text).map_err(parse)?.files),
            2 => {
                let state: State = serde_json::from_str(&text).map_err(parse)?;
                state
                    .files
                    .into_iter()
                    .map(|c| {
                        let label = state.labels.get(c.l).ok_or_else(|| {
                            parse(serde::de::Error::custom(format!(
                                "label {} of {} does not exist",
                                c.l,
                                state.labels.len()
                            )))
                        })?;
                        let path = match (c.n, c.p) {
                            (Some(name), _) => Path::new(label).with_file_name(name),
                            (None, Some(path)) => path,
                            (None, None) => PathBuf::from(label),
                        };
                        Ok(Entry {
                            label: label.clone(),
                            path,
                            id: FileId { dev: c.d, ino: c.i },
                            fingerprint: c.f,
                            offset: c.o,
                            before: c.b,
                            born: c.t,
                            open: c.open,
                            ended: c.e,
                        })
                    })
                    .collect()
            }
            other => Err(CheckpointError::Version {
                path: self.path.clone(),
                version: other,
            }),
        }
    }

    /// Replaces the checkpoint with `files` (the files let go oldest first),
    /// atomically, in at most about [`MAX_BYTES`]: every open file is kept,
    /// and the files let go most recently, as many as fit. Returns how many
    /// files let go did not fit.
    pub fn save(&self, files: Vec<Entry>) -> Result<usize, CheckpointError> {
        let (open, closed): (Vec<Entry>, Vec<Entry>) = files.into_iter().partition(|e| e.open);
        let mut b = Builder::default();
        let mut size = 64;
        for e in open {
            size += b.add(e);
        }
        let mut dropped = closed.len();
        let first_closed = b.files.len();
        for e in closed.into_iter().rev() {
            let labels = b.labels.len();
            size += b.add(e);
            if size > MAX_BYTES {
                b.files.pop();
                for label in b.labels.drain(labels..) {
                    b.index.remove(&label);
                }
                break;
            }
            dropped -= 1;
        }
        // Oldest first again.
        b.files[first_closed..].reverse();
        let state = State {
            version: VERSION,
            labels: b.labels,
            files: b.files,
        };
        let err = |source| CheckpointError::Write {
            path: self.path.clone(),
            source,
        };
        let tmp = self.dir.join(format!(".{STATE_FILE}.tmp"));
        let mut f = File::create(&tmp).map_err(err)?;
        let body = serde_json::to_vec(&state).map_err(|e| err(io::Error::other(e)))?;
        f.write_all(&body).map_err(err)?;
        f.sync_data().map_err(err)?;
        drop(f);
        fs::rename(&tmp, &self.path).map_err(err)?;
        // Make the rename itself durable.
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(err)?;
        Ok(dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_then_load() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state")).unwrap();
        assert!(store.load().unwrap().is_empty());
        let entry = Entry {
            label: "/logs/app.log".into(),
            path: "/logs/app.log.1".into(),
            id: FileId { dev: 1, ino: 2 },
            fingerprint: "6869".into(),
            offset: 42,
            before: Some("4:0123456789abcdef".into()),
            born: Some(1_780_000_000_123_456_789),
            open: true,
            ended: true,
        };
        let elsewhere = Entry {
            path: "/archive/app.log.1".into(),
            id: FileId { dev: 1, ino: 3 },
            ..entry.clone()
        };
        let closed = Entry {
            path: "/logs/app.log".into(),
            id: FileId { dev: 1, ino: 4 },
            open: false,
            ended: false,
            ..entry.clone()
        };
        let all = vec![entry, elsewhere, closed];
        assert_eq!(store.save(all.clone()).unwrap(), 0);
        assert_eq!(store.load().unwrap(), all);
    }

    /// A checkpoint written before version 2 (pretty-printed, the
    /// fingerprint as the hex of the bytes) is read, its fingerprints too.
    #[test]
    fn a_version_1_checkpoint_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let old = r#"{
  "version": 1,
  "files": [
    {
      "label": "/logs/app.log",
      "path": "/logs/app.log.1",
      "dev": 65024,
      "ino": 77,
      "fingerprint": "6869",
      "offset": 3,
      "open": true
    }
  ]
}"#;
        fs::write(store.path(), old).unwrap();
        let entries = store.load().unwrap();
        assert_eq!(entries.len(), 1);
        let e = &entries[0];
        assert_eq!(e.path, Path::new("/logs/app.log.1"));
        assert_eq!(
            e.id,
            FileId {
                dev: 65024,
                ino: 77
            }
        );
        assert_eq!((e.offset, e.open), (3, true));
        let file = dir.path().join("f");
        fs::write(&file, "hi there").unwrap();
        assert!(
            e.fingerprint()
                .matches(&File::open(&file).unwrap())
                .unwrap()
        );
        assert_eq!(e.fingerprint().len(), 2);
    }

    /// The worst case: every file let go the relay remembers
    /// (`KNOWN_FILES`), each under a label of its own as long as Linux
    /// allows (PATH_MAX), with the largest numbers; and files open with
    /// labels as long, rotated beside them. The checkpoint stays far under
    /// a 1 MiB emptyDir, keeping every open file and the most recent ones
    /// let go; with labels of a usual length it keeps them all.
    #[test]
    fn the_checkpoint_stays_far_under_1_mib_with_every_file_remembered() {
        use crate::identity::{FINGERPRINT_BYTES, Fingerprint, FingerprintHash};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let fp =
            FingerprintHash::of(&Fingerprint::from_hex(&"ab".repeat(FINGERPRINT_BYTES)).unwrap())
                .encode();
        let before = crate::identity::BeforeHash::of(&[0xab; FINGERPRINT_BYTES]).encode();
        let entry = |label: String, n: u64, open: bool| Entry {
            path: PathBuf::from(format!("{label}.{}", u64::MAX - n)),
            label,
            id: FileId {
                dev: u64::MAX,
                ino: u64::MAX - n,
            },
            fingerprint: fp.clone(),
            offset: u64::MAX,
            before: Some(before.clone()),
            born: Some(u64::MAX),
            open,
            ended: open,
        };
        let known_files = crate::relay::KNOWN_FILES as u64;
        let files = |label_len: usize, open: u64| -> Vec<Entry> {
            let label = |n: u64| {
                let name = format!("/{n:020}");
                format!("/{}{name}", "d".repeat(label_len - name.len() - 1))
            };
            let known = (0..known_files).map(|n| entry(label(n), n, false));
            let open = (0..open).map(|n| entry(label(known_files + n), known_files + n, true));
            open.chain(known).collect()
        };
        // PATH_MAX (4096 with its NUL) labels, 16 files open.
        let dropped = store.save(files(4095, 16)).unwrap();
        let size = fs::metadata(store.path()).unwrap().len();
        assert!(size <= MAX_BYTES as u64, "{size} bytes");
        let kept = store.load().unwrap();
        assert_eq!(kept.iter().filter(|e| e.open).count(), 16);
        assert_eq!(kept.len() - 16 + dropped, crate::relay::KNOWN_FILES);
        assert!(
            kept.last()
                .is_some_and(|e| e.id.ino == u64::MAX - (known_files - 1)),
            "the most recent kept"
        );
        // As many open as the relay pins ahead of their turn: open files
        // are all kept, still far under 1 MiB.
        store.save(files(4095, 64)).unwrap();
        let size = fs::metadata(store.path()).unwrap().len();
        assert!(size <= MAX_BYTES as u64, "{size} bytes");
        assert_eq!(store.load().unwrap().iter().filter(|e| e.open).count(), 64);
        // Labels of 100 bytes: every file kept.
        assert_eq!(store.save(files(100, 16)).unwrap(), 0);
        let size = fs::metadata(store.path()).unwrap().len();
        assert!(size <= MAX_BYTES as u64, "{size} bytes");
        assert_eq!(store.load().unwrap().len(), 16 + crate::relay::KNOWN_FILES);
    }

    #[test]
    fn a_corrupt_checkpoint_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        fs::write(store.path(), "{not json").unwrap();
        let err = store.load().unwrap_err().to_string();
        assert!(err.contains("move it away"), "{err}");
    }
}
