//! Part 1 of the demo: a log file relayed to stdout through rotation.

use std::collections::HashSet;
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::sync::watch;

use crate::applog::parse_seq;
use crate::{DemoError, DemoOptions, cancelled, terminate};

/// What the logs part counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogsOutcome {
    pub written: u64,
    pub rotations: u64,
    pub relayed: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
}

impl LogsOutcome {
    pub fn ok(&self) -> bool {
        self.written > 0
            && self.relayed == self.written
            && self.lost == 0
            && self.duplicated == 0
            && self.out_of_order == 0
    }

    /// Compares the sequence numbers relayed with the `written` lines.
    pub fn tally(written: u64, rotations: u64, relayed_seqs: &[Option<u64>]) -> Self {
        let mut seen = HashSet::new();
        let mut duplicated = 0;
        let mut out_of_order = 0;
        let mut last = 0;
        for seq in relayed_seqs.iter().flatten() {
            if !seen.insert(*seq) {
                duplicated += 1;
            } else if *seq < last {
                out_of_order += 1;
            }
            last = last.max(*seq);
        }
        let lost = (1..=written).filter(|s| !seen.contains(s)).count() as u64;
        Self {
            written,
            rotations,
            relayed: relayed_seqs.len() as u64,
            lost,
            duplicated,
            out_of_order,
        }
    }
}

pub(crate) async fn run(
    opts: &DemoOptions,
    cancel: watch::Receiver<bool>,
) -> Result<LogsOutcome, DemoError> {
    let dir = tempfile::Builder::new().prefix("sidecar-demo-").tempdir()?;
    let log = dir.path().join("app.log");
    let exe = opts.exe.display().to_string();
    println!("== Part 1 of 3: logs ==");
    println!(
        "The demo app writes {} lines to {} and rotates it every {} bytes",
        opts.lines,
        log.display(),
        opts.rotate_bytes
    );
    println!("(rename and create, like Python's RotatingFileHandler and logrotate).");
    println!(
        "`sidecar logs {}` follows the file and relays each line to its stdout, shown here:\n",
        log.display()
    );

    // Both children get their own process group: Ctrl-C reaches only the
    // demo, which then stops them in order (app first, then the relay drains).
    let mut relay = Command::new(&opts.exe)
        .arg("logs")
        .arg(&log)
        .args(["--admin-addr", "off", "--log-level", "info"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| DemoError::Spawn {
            what: "sidecar logs",
            exe: exe.clone(),
            source,
        })?;
    let relay_out = relay
        .stdout
        .take()
        .ok_or_else(|| std::io::Error::other("no relay stdout"))?;
    let relay_err = relay
        .stderr
        .take()
        .ok_or_else(|| std::io::Error::other("no relay stderr"))?;
    let shown = tokio::spawn(async move {
        let mut lines = BufReader::new(relay_out).split(b'\n');
        let mut seqs = Vec::new();
        while let Ok(Some(line)) = lines.next_segment().await {
            println!("  relayed | {}", String::from_utf8_lossy(&line));
            seqs.push(parse_seq(&line));
        }
        seqs
    });
    let notes = tokio::spawn(async move {
        let mut lines = BufReader::new(relay_err).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            println!("  sidecar | {}", strip_log_prefix(&line));
        }
    });

    let mut app = Command::new(&opts.exe)
        .arg("demo-app")
        .arg("--file")
        .arg(&log)
        .args([
            "--lines",
            &opts.lines.to_string(),
            "--rate",
            &opts.rate.to_string(),
            "--rotate-bytes",
            &opts.rotate_bytes.to_string(),
        ])
        .stdout(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| DemoError::Spawn {
            what: "sidecar demo-app",
            exe: exe.clone(),
            source,
        })?;
    let app_out = app
        .stdout
        .take()
        .ok_or_else(|| std::io::Error::other("no app stdout"))?;
    let report = tokio::spawn(async move {
        let mut lines = BufReader::new(app_out).lines();
        let mut last = String::new();
        while let Ok(Some(line)) = lines.next_line().await {
            last = line;
        }
        last
    });

    tokio::select! {
        _ = app.wait() => {}
        () = cancelled(cancel) => {
            terminate(&app);
            app.wait().await?;
        }
    }
    let (written, rotations) = parse_app_report(&report.await.unwrap_or_default());
    // The app is done: SIGTERM the relay, which relays what is left and exits.
    terminate(&relay);
    let status = relay.wait().await?;
    let seqs = shown.await.unwrap_or_default();
    let _ = notes.await;
    let outcome = LogsOutcome::tally(written, rotations, &seqs);
    println!();
    println!(
        "Result: {} lines written, {} relayed, {} lost, {} duplicated ({} rotations{}; relay exit: {})",
        outcome.written,
        outcome.relayed,
        outcome.lost,
        outcome.duplicated,
        outcome.rotations,
        if outcome.out_of_order > 0 {
            format!(", {} out of order", outcome.out_of_order)
        } else {
            String::new()
        },
        status
    );
    println!(
        "With `tail -f`, lines written while the file is being rotated can be lost; here none are.\n"
    );
    Ok(outcome)
}

/// "written N rotations M" from the demo app.
fn parse_app_report(line: &str) -> (u64, u64) {
    let mut it = line.split_whitespace();
    let mut written = 0;
    let mut rotations = 0;
    while let Some(word) = it.next() {
        match word {
            "written" => written = it.next().and_then(|n| n.parse().ok()).unwrap_or(0),
            "rotations" => rotations = it.next().and_then(|n| n.parse().ok()).unwrap_or(0),
            _ => {}
        }
    }
    (written, rotations)
}

/// Drops the timestamp of a tracing line, keeping level and message.
fn strip_log_prefix(line: &str) -> &str {
    match line.split_once(' ') {
        Some((ts, rest)) if ts.len() > 20 && ts.contains('T') => rest.trim_start(),
        _ => line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tally_counts_loss_duplicates_and_order() {
        let o = LogsOutcome::tally(5, 1, &[Some(1), Some(2), Some(2), Some(4), Some(3), None]);
        assert_eq!(o.lost, 1);
        assert_eq!(o.duplicated, 1);
        assert_eq!(o.out_of_order, 1);
        assert_eq!(o.relayed, 6);
        assert!(!o.ok());
        let o = LogsOutcome::tally(3, 0, &[Some(1), Some(2), Some(3)]);
        assert!(o.ok());
    }

    #[test]
    fn app_report() {
        assert_eq!(parse_app_report("written 600 rotations 7"), (600, 7));
        assert_eq!(parse_app_report(""), (0, 0));
    }
}
