//! Graceful shutdown: a future that resolves on SIGTERM (Kubernetes) or SIGINT (Ctrl-C).

use tokio::signal::unix::{SignalKind, signal as unix_signal};

/// Which signal asked us to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Terminate,
    Interrupt,
}

impl std::fmt::Display for Signal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Signal::Terminate => "SIGTERM",
            Signal::Interrupt => "SIGINT",
        })
    }
}

/// Installs SIGTERM and SIGINT handlers now and returns a future that resolves
/// on the first of them. Install it early: a signal that arrives before the
/// handlers exist would kill the process with the default action.
pub fn signal() -> std::io::Result<impl Future<Output = Signal> + Send + 'static> {
    let mut term = unix_signal(SignalKind::terminate())?;
    let mut int = unix_signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => Signal::Terminate,
            _ = int.recv() => Signal::Interrupt,
        }
    })
}
