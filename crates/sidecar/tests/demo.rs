//! `sidecar demo` end to end: it runs by itself and reports a clean tally.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::Proc;

#[test]
fn demo_logs_part_relays_every_line() {
    let mut p = Proc::start(&[
        "demo",
        "--lines",
        "300",
        "--rate",
        "1000",
        "--rotate-bytes",
        "4KiB",
    ]);
    let status = p.wait(Duration::from_secs(120));
    let out = String::from_utf8_lossy(&p.stdout_bytes()).into_owned();
    assert!(status.success(), "{status}\n{out}\n{}", p.stderr_text());
    assert!(
        out.contains("300 lines written, 300 relayed, 0 lost, 0 duplicated"),
        "{out}"
    );
    assert!(
        out.contains("was rotated"),
        "the demo shows rotation:\n{out}"
    );
    assert_eq!(out.matches("  relayed | ").count(), 300);
    // Part 2: the exporter beside a throwaway PostgreSQL server, values moving with load.
    let rows = out
        .lines()
        .find(|l| l.contains("live rows in orders"))
        .unwrap_or_else(|| panic!("no metrics part in:\n{out}"));
    assert!(rows.split_whitespace().any(|w| w == "5000"), "{rows}");
    let up = out
        .lines()
        .find(|l| l.contains("database reachable"))
        .unwrap();
    assert!(
        up.split_whitespace().filter(|w| *w == "1").count() == 2,
        "{up}"
    );
    assert!(
        out.contains("All parts of the demo did what they promise."),
        "{out}"
    );
}

#[test]
fn demo_stops_cleanly_on_ctrl_c() {
    let mut p = Proc::start(&["demo", "--lines", "100000", "--rate", "200"]);
    p.wait_lines(20, Duration::from_secs(60));
    p.signal(nix::sys::signal::Signal::SIGINT);
    let _ = p.wait(Duration::from_secs(30));
    let out = String::from_utf8_lossy(&p.stdout_bytes()).into_owned();
    // Whatever was written before the stop was relayed: nothing lost or repeated.
    let tally = out
        .lines()
        .find(|l| l.starts_with("Result: "))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(tally.contains(" 0 lost, 0 duplicated"), "{tally}");
    let written: u64 = tally["Result: ".len()..]
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(written > 0 && written < 100_000, "{tally}");
}
