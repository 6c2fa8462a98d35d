//! `sidecar demo`: the three sidecars working on this machine, no cluster needed.
//!
//! Data flow of the logs part: the demo starts two child processes of the
//! same binary: the demo app (`sidecar demo-app`, see [`applog`]) writing
//! numbered lines to a log file in a temporary directory and rotating it, and
//! `sidecar logs` following that file. The demo reads the relay's stdout,
//! shows each relayed line, and at the end compares the sequence numbers
//! relayed with the lines written: lost, duplicated, out of order.
//!
//! The metrics part starts a throwaway PostgreSQL server ([`pgserver`]) when
//! server binaries are installed (or uses `--postgres-url`), runs
//! `sidecar postgres-exporter` on it as a child, adds some load, and prints a
//! few `pg_*` values before and after.
//!
//! The traces part runs the seed's Jaeger demo on loopback: two demo services
//! ([`service`]) with `sidecar proxy` beside each, a front proxy, and a Zipkin
//! receiver inside the demo; it sends a few requests and prints each trace as
//! a tree.

#![forbid(unsafe_code)]

pub mod applog;
mod logs_part;
mod metrics_part;
pub mod pgserver;
pub mod service;
mod traces_part;

use std::path::PathBuf;

pub use logs_part::LogsOutcome;
pub use metrics_part::MetricsOutcome;
pub use traces_part::TracesOutcome;

/// Options of `sidecar demo`.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// The `sidecar` executable to start as children.
    pub exe: PathBuf,
    /// Log lines the demo app writes.
    pub lines: u64,
    /// Lines per second.
    pub rate: u64,
    /// The demo app rotates its log file at this size.
    pub rotate_bytes: u64,
    /// A PostgreSQL server to export instead of a throwaway one.
    pub postgres_url: Option<String>,
}

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot start `{what}` ({source}); is {exe} still there?")]
    Spawn {
        what: &'static str,
        exe: String,
        source: std::io::Error,
    },
    #[error("demo I/O failed: {0}")]
    Io(#[from] std::io::Error),
}

/// What the whole demo showed.
#[derive(Debug, Clone)]
pub struct Report {
    pub logs: LogsOutcome,
    pub metrics: MetricsOutcome,
    pub traces: TracesOutcome,
}

impl Report {
    /// True when every part did what it promises.
    pub fn ok(&self) -> bool {
        self.logs.ok() && self.metrics.ok() && self.traces.ok()
    }
}

/// Runs the demo, printing to stdout. Ctrl-C (SIGINT) or SIGTERM stops it early.
pub async fn run(opts: DemoOptions) -> Result<Report, DemoError> {
    let (cancel_tx, cancel) = tokio::sync::watch::channel(false);
    let signals = tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            return;
        };
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        println!("\n  (stopping the demo)");
        let _ = cancel_tx.send(true);
    });
    let logs = logs_part::run(&opts, cancel.clone()).await?;
    let metrics = if *cancel.borrow() {
        MetricsOutcome::default()
    } else {
        metrics_part::run(&opts, cancel.clone()).await?
    };
    let traces = if *cancel.borrow() {
        TracesOutcome::default()
    } else {
        traces_part::run(&opts, cancel.clone()).await?
    };
    signals.abort();
    let report = Report {
        logs,
        metrics,
        traces,
    };
    println!();
    if report.ok() {
        println!("All parts of the demo did what they promise.");
    } else {
        println!("Some part of the demo did not do what it promises; see above.");
    }
    Ok(report)
}

/// Sends SIGTERM to a child process.
pub(crate) fn terminate(child: &tokio::process::Child) {
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
}

/// Resolves when the demo is cancelled (never, if the sender is gone).
pub(crate) async fn cancelled(mut cancel: tokio::sync::watch::Receiver<bool>) {
    if cancel.wait_for(|c| *c).await.is_err() {
        std::future::pending::<()>().await;
    }
}
