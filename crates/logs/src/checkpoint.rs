//! The `--state-dir` checkpoint: which files were read up to which offset.
//!
//! Written atomically (temporary file, fsync, rename, fsync of the directory)
//! so a crash leaves either the old or the new checkpoint, never a torn one.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::identity::{FileId, Fingerprint};

const STATE_FILE: &str = "sidecar-logs.state.json";
const VERSION: u32 = 1;

/// One file the relay has read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The followed path this file was found at (its label in output and metrics).
    pub label: String,
    /// Where the file was last seen (differs from the label after a rename).
    pub path: PathBuf,
    #[serde(flatten)]
    pub id: FileId,
    /// Hex of the file's first bytes.
    pub fingerprint: String,
    /// Every byte before this offset has been written to stdout.
    pub offset: u64,
    /// False once the file was read to its end and let go.
    pub open: bool,
}

impl Entry {
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::from_hex(&self.fingerprint).unwrap_or_default()
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct State {
    version: u32,
    files: Vec<Entry>,
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
        let state: State =
            serde_json::from_str(&text).map_err(|source| CheckpointError::Parse {
                path: self.path.clone(),
                source,
            })?;
        Ok(state.files)
    }

    /// Replaces the checkpoint with `files`, atomically.
    pub fn save(&self, files: Vec<Entry>) -> Result<(), CheckpointError> {
        let state = State {
            version: VERSION,
            files,
        };
        let err = |source| CheckpointError::Write {
            path: self.path.clone(),
            source,
        };
        let tmp = self.dir.join(format!(".{STATE_FILE}.tmp"));
        let mut f = File::create(&tmp).map_err(err)?;
        let body = serde_json::to_vec_pretty(&state).map_err(|e| err(io::Error::other(e)))?;
        f.write_all(&body).map_err(err)?;
        f.sync_data().map_err(err)?;
        drop(f);
        fs::rename(&tmp, &self.path).map_err(err)?;
        // Make the rename itself durable.
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(err)?;
        Ok(())
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
            open: true,
        };
        store.save(vec![entry.clone()]).unwrap();
        assert_eq!(store.load().unwrap(), vec![entry]);
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
