//! What the user should know about a document that is not an error: a
//! [`Note`] (a Service retargeted, the pod's own `prometheus.io/*` kept) or a
//! warning (annotations that do nothing, an `emptyDir` that hides the
//! image's files). The modules that find them push `(Level, String)`; the
//! crate root names the document and returns them to the binary for stderr.

use std::fmt;

/// How much a [`Note`] matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// A change `inject` made outside the workload (a Service retargeted),
    /// or something worth knowing.
    Note,
    /// Probably not what the user wants: something to fix.
    Warning,
}

/// Something about one document that the user should know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// 1-based position of the document in the input.
    pub index: usize,
    /// As in [`InjectError::what`](crate::InjectError::what).
    pub what: String,
    pub level: Level,
    pub message: String,
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "document {} ({}): {}",
            self.index, self.what, self.message
        )
    }
}
