//! `sidecar logs`: follows log files and relays every line to stdout exactly once.
//!
//! Data flow: [`Relay`] resolves the configured paths and glob patterns to
//! files and opens one reader per file (identified by device + inode and a
//! fingerprint of its first bytes, see [`identity`]). inotify events (through
//! `notify`) and a short poll timer wake the relay; each wake it re-checks the
//! followed paths for rotation (rename, delete, truncate), reads new bytes of
//! every open file in order, frames them into records ([`framer`]) and writes
//! them through [`output`] to stdout. Rotated files are read to their end
//! before their successor. With `--state-dir`, the offset of the last byte
//! written is saved atomically ([`checkpoint`]) so a restarted relay resumes
//! exactly there, finishing files that were rotated while it was down.

#![forbid(unsafe_code)]

pub mod checkpoint;
pub mod framer;
pub mod identity;
pub mod metrics;
pub mod output;
mod relay;

pub use metrics::Metrics;
pub use output::{Format, Output};
pub use relay::{Config, Control, Relay, RelayError, StartAt, Summary};
