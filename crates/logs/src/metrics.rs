//! The relay's own metrics, registered under `sidecar_logs_*`.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FileLabel {
    pub file: String,
}

/// How a followed file was replaced.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum RotationKind {
    /// The path now names a new file; the old one still exists elsewhere.
    Rename,
    /// The followed file was deleted.
    Delete,
    /// The file was truncated in place (copytruncate).
    Truncate,
}

impl EncodeLabelValue for RotationKind {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        encoder.write_str(match self {
            Self::Rename => "rename",
            Self::Delete => "delete",
            Self::Truncate => "truncate",
        })
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RotationLabel {
    pub file: String,
    pub kind: RotationKind,
}

/// Metric families of the relay.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    pub lines: Family<FileLabel, Counter>,
    pub bytes: Family<FileLabel, Counter>,
    pub rotations: Family<RotationLabel, Counter>,
    pub lines_split: Family<FileLabel, Counter>,
    pub read_errors: Family<FileLabel, Counter>,
    pub bytes_lost: Family<FileLabel, Counter>,
    pub files_lost: Family<FileLabel, Counter>,
    pub lag: Family<FileLabel, Gauge>,
    pub files_open: Gauge,
    pub checkpoints: Counter,
    pub checkpoint_errors: Counter,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        let r = registry.sub_registry_with_prefix("sidecar_logs");
        r.register(
            "lines",
            "Records (lines, or multiline events) written to stdout, by followed file",
            m.lines.clone(),
        );
        r.register(
            "bytes",
            "Bytes of the followed file relayed to stdout",
            m.bytes.clone(),
        );
        r.register(
            "rotations",
            "Rotations seen, by followed file and kind (rename, delete, truncate)",
            m.rotations.clone(),
        );
        r.register(
            "lines_split",
            "Lines longer than --max-line-bytes that were split into pieces",
            m.lines_split.clone(),
        );
        r.register(
            "read_errors",
            "Errors opening or reading a followed file",
            m.read_errors.clone(),
        );
        r.register(
            "bytes_lost",
            "Bytes known to be lost: truncated away before they could be read (copytruncate) and \
             in no copy, or in a file rotated away and deleted before it could be read (where its \
             size was seen), or left unread when the drain timeout passed at shutdown",
            m.bytes_lost.clone(),
        );
        r.register(
            "files_lost",
            "Files that appeared at a followed path and were rotated away and deleted before the \
             relay could open them, or under a glob (labelled with the glob) and were gone before \
             it could read them",
            m.files_lost.clone(),
        );
        r.register(
            "lag_bytes",
            "Bytes written to the followed file that are not relayed yet",
            m.lag.clone(),
        );
        r.register(
            "files_open",
            "Files held open, including rotated files still being finished",
            m.files_open.clone(),
        );
        r.register(
            "checkpoints",
            "Checkpoints written to --state-dir",
            m.checkpoints.clone(),
        );
        r.register(
            "checkpoint_errors",
            "Checkpoints that could not be written",
            m.checkpoint_errors.clone(),
        );
        m
    }

    /// Counters of one followed file, looked up once and kept by the reader.
    pub fn for_file(&self, file: &str) -> FileMetrics {
        let label = FileLabel {
            file: file.to_string(),
        };
        FileMetrics {
            lines: self.lines.get_or_create(&label).clone(),
            bytes: self.bytes.get_or_create(&label).clone(),
            lines_split: self.lines_split.get_or_create(&label).clone(),
            read_errors: self.read_errors.get_or_create(&label).clone(),
            bytes_lost: self.bytes_lost.get_or_create(&label).clone(),
            lag: self.lag.get_or_create(&label).clone(),
        }
    }

    /// Drops the series of a file that is no longer followed (keeps memory bounded).
    pub fn forget_file(&self, file: &str) {
        let label = FileLabel {
            file: file.to_string(),
        };
        self.lines.remove(&label);
        self.bytes.remove(&label);
        self.lines_split.remove(&label);
        self.read_errors.remove(&label);
        self.bytes_lost.remove(&label);
        self.lag.remove(&label);
        for kind in [
            RotationKind::Rename,
            RotationKind::Delete,
            RotationKind::Truncate,
        ] {
            self.rotations.remove(&RotationLabel {
                file: file.to_string(),
                kind,
            });
        }
    }

    pub fn rotation(&self, file: &str, kind: RotationKind) {
        self.rotations
            .get_or_create(&RotationLabel {
                file: file.to_string(),
                kind,
            })
            .inc();
    }
}

/// Handles to the series of one followed file.
#[derive(Debug, Clone)]
pub struct FileMetrics {
    pub lines: Counter,
    pub bytes: Counter,
    pub lines_split: Counter,
    pub read_errors: Counter,
    pub bytes_lost: Counter,
    pub lag: Gauge,
}
