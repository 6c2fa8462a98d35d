//! Helpers for the `sidecar logs` fault and accounting tests.

use std::time::Duration;

use super::{Proc, http_get, wait_until};

/// Starts `sidecar logs` with `args` and waits until it is ready.
pub fn relay(args: &[&str]) -> Proc {
    let mut all = vec!["logs", "--admin-addr", "127.0.0.1:0"];
    all.extend_from_slice(args);
    let p = Proc::start(&all);
    let addr = p.admin_addr();
    wait_until("relay ready", Duration::from_secs(10), || {
        http_get(addr, "/ready").0 == 200
    });
    p
}

/// `n` lines `{prefix} 1` to `{prefix} n`.
pub fn lines(prefix: &str, n: usize) -> String {
    (1..=n).map(|i| format!("{prefix} {i}\n")).collect()
}

/// Asks the relay to stop (SIGTERM) and waits for its exit.
pub fn stop(p: &mut Proc) -> std::process::ExitStatus {
    p.terminate();
    p.wait(Duration::from_secs(30))
}

/// Stops the relay, which must exit 0, and asserts it relayed exactly
/// `want`; on failure shows `what` and what the relay logged.
pub fn assert_relayed(p: &mut Proc, want: &str, what: &str) {
    let status = stop(p);
    assert!(status.success(), "{what}: {status}: {}", p.stderr_text());
    assert_eq!(
        String::from_utf8_lossy(&p.stdout_bytes()),
        want,
        "{what}: {}",
        p.stderr_text()
    );
}

/// The value of a metric series (0 when absent).
pub fn metric(p: &Proc, series: &str) -> f64 {
    http_get(p.admin_addr(), "/metrics")
        .2
        .lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}
