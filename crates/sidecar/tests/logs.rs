//! `sidecar logs` end to end: the real binary on temp files, asserting the exact
//! sequence of lines relayed (no loss, no repeat, in order per file).
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use common::{Proc, append, http_get, wait_until};
use sidecar_demo::applog::{Rotation, WriterOptions, parse_seq, write_logs};

const LONG: Duration = Duration::from_secs(120);

fn relay(args: &[&str]) -> Proc {
    let mut all = vec!["logs", "--admin", "127.0.0.1:0"];
    all.extend_from_slice(args);
    let p = Proc::start(&all);
    let addr = p.admin_addr();
    wait_until("relay ready", Duration::from_secs(10), || {
        http_get(addr, "/ready").0 == 200
    });
    p
}

/// Asserts the relayed lines are exactly seq `first..=last`, in order; on
/// failure shows `logs` (the relays' stderr) too.
fn assert_exact_sequence(lines: &[Vec<u8>], first: u64, last: u64, logs: &str) {
    let seqs: Vec<u64> = lines
        .iter()
        .map(|l| {
            parse_seq(l)
                .unwrap_or_else(|| panic!("not a demo line: {:?}", String::from_utf8_lossy(l)))
        })
        .collect();
    let expected: Vec<u64> = (first..=last).collect();
    if seqs != expected {
        let mut seen = std::collections::HashSet::new();
        let dups = seqs.iter().filter(|s| !seen.insert(**s)).count();
        let lost = expected.iter().filter(|s| !seen.contains(s)).count();
        let first_diff = seqs.iter().zip(&expected).position(|(a, b)| a != b);
        let missing: Vec<&u64> = expected
            .iter()
            .filter(|s| !seen.contains(s))
            .take(5)
            .collect();
        let around = first_diff.map(|i| &seqs[i.saturating_sub(2)..(i + 3).min(seqs.len())]);
        // The output as runs of consecutive lines: shows which file came when.
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for &s in &seqs {
            match runs.last_mut() {
                Some((_, end)) if *end + 1 == s => *end = s,
                _ => runs.push((s, s)),
            }
        }
        let runs: Vec<String> = runs
            .iter()
            .take(50)
            .map(|(a, b)| format!("{a}..={b}"))
            .collect();
        panic!(
            "relayed {} lines, expected {}: {lost} lost (first: {missing:?}), {dups} duplicated, first difference at index {first_diff:?}: {around:?}\nthe output in runs: {}\nwhat the relay logged:\n{logs}",
            seqs.len(),
            expected.len(),
            runs.join(" ")
        );
    }
}

fn terminate_ok(p: &mut Proc) {
    p.terminate();
    let status = p.wait(Duration::from_secs(30));
    assert!(
        status.success(),
        "relay exited with {status}; stderr:\n{}",
        p.stderr_text()
    );
}

fn rotation_at_full_speed(rotation: Rotation) {
    const LINES: u64 = 200_000;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    // The file does not exist yet when the relay starts.
    let mut p = relay(&[log.to_str().unwrap()]);
    let opts = WriterOptions {
        rotate_bytes: 3 * 1024 * 1024,
        rotation,
        backups: 100,
        ..WriterOptions::new(&log, LINES)
    };
    let written = write_logs(&opts, &AtomicBool::new(false)).unwrap();
    assert_eq!(written.lines, LINES);
    assert!(
        written.rotations >= 5,
        "only {} rotations",
        written.rotations
    );
    p.wait_lines(LINES as usize, LONG);
    terminate_ok(&mut p);
    assert_exact_sequence(&p.stdout_lines(), 1, LINES, &p.stderr_text());
    let kind = match rotation {
        Rotation::Rename => "renamed",
        Rotation::Delete => "deleted",
        Rotation::CopyTruncate => "truncated",
    };
    assert!(p.stderr_text().contains(kind), "{}", p.stderr_text());
}

#[test]
fn rename_and_create_rotation_at_full_speed() {
    rotation_at_full_speed(Rotation::Rename);
}

#[test]
fn copytruncate_rotation_at_full_speed() {
    rotation_at_full_speed(Rotation::CopyTruncate);
}

#[test]
fn delete_and_recreate_rotation_at_full_speed() {
    rotation_at_full_speed(Rotation::Delete);
}

/// Relay A stops; the file rotates while no relay runs; relay B resumes from
/// the checkpoint: A's output followed by B's is every line exactly once.
fn restart_with_rotation_while_down(rotation: Rotation) {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    let state = dir.path().join("state");
    let state_arg = state.to_str().unwrap();
    let write = |first: u64, lines: u64| {
        // Rotating every 512 KiB at full speed: several rotations per phase.
        let opts = WriterOptions {
            rotate_bytes: 512 * 1024,
            rotation,
            backups: 100,
            first_seq: first,
            ..WriterOptions::new(&log, lines)
        };
        write_logs(&opts, &AtomicBool::new(false)).unwrap()
    };

    let mut a = relay(&["--state-dir", state_arg, log.to_str().unwrap()]);
    write(1, 20_000);
    a.wait_lines(20_000, LONG);
    // More lines that A may or may not relay before it stops.
    write(20_001, 5_000);
    terminate_ok(&mut a);
    let mut lines = a.stdout_lines();

    // While no relay runs: enough lines to rotate several times.
    let down = write(25_001, 30_000);
    assert!(down.rotations >= 3, "{down:?}");

    let mut b = relay(&["--state-dir", state_arg, log.to_str().unwrap()]);
    write(55_001, 10_000);
    let caught_up = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_until("relay B caught up", Duration::from_secs(30), || {
            (lines.len() + b.count_newlines()) as u64 >= 65_000
        })
    }));
    if caught_up.is_err() {
        eprintln!(
            "relay A:\n{}\nrelay B:\n{}",
            a.stderr_text(),
            b.stderr_text()
        );
    }
    terminate_ok(&mut b);
    assert!(
        b.stderr_text().contains("rotated while the relay was down"),
        "{}",
        b.stderr_text()
    );
    lines.extend(b.stdout_lines());
    let logs = format!(
        "relay A:\n{}\nrelay B:\n{}",
        a.stderr_text(),
        b.stderr_text()
    );
    assert_exact_sequence(&lines, 1, 65_000, &logs);
}

#[test]
fn restart_resumes_after_rename_rotation_while_down() {
    restart_with_rotation_while_down(Rotation::Rename);
}

#[test]
fn restart_resumes_after_copytruncate_while_down() {
    restart_with_rotation_while_down(Rotation::CopyTruncate);
}

#[test]
fn restart_reads_a_replaced_file_from_its_start() {
    // The checkpoint names a file (inode + first bytes) that was replaced by a
    // new file while the relay was down; the new file may even reuse the inode.
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    let state = dir.path().join("state");
    fs::write(&log, "old 1\nold 2\nold 3\n").unwrap();
    let mut a = relay(&[
        "--state-dir",
        state.to_str().unwrap(),
        log.to_str().unwrap(),
    ]);
    a.wait_lines(3, LONG);
    terminate_ok(&mut a);
    fs::remove_file(&log).unwrap();
    fs::write(&log, "new 1 is longer than before\nnew 2\n").unwrap();
    let mut b = relay(&[
        "--state-dir",
        state.to_str().unwrap(),
        log.to_str().unwrap(),
    ]);
    b.wait_lines(2, LONG);
    terminate_ok(&mut b);
    assert_eq!(a.stdout_bytes(), b"old 1\nold 2\nold 3\n");
    assert_eq!(b.stdout_bytes(), b"new 1 is longer than before\nnew 2\n");
}

#[test]
fn sigterm_drains_lines_written_before_and_during_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    let mut p = relay(&[log.to_str().unwrap()]);
    // A burst the relay cannot have relayed yet when SIGTERM arrives...
    write_logs(&WriterOptions::new(&log, 100_000), &AtomicBool::new(false)).unwrap();
    p.terminate();
    // ...and the app's last lines, written while the relay is already draining.
    let opts = WriterOptions {
        first_seq: 100_001,
        rate: 2_000,
        ..WriterOptions::new(&log, 100)
    };
    write_logs(&opts, &AtomicBool::new(false)).unwrap();
    let status = p.wait(Duration::from_secs(30));
    assert!(status.success(), "{status}: {}", p.stderr_text());
    assert_exact_sequence(&p.stdout_lines(), 1, 100_100, &p.stderr_text());
}

#[test]
fn drain_timeout_bounds_the_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    let mut p = relay(&["--drain-timeout", "300ms", log.to_str().unwrap()]);
    // A writer that never goes quiet.
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let flag = std::sync::Arc::clone(&stop);
    let path = log.clone();
    let writer = std::thread::spawn(move || {
        let opts = WriterOptions {
            rate: 1000,
            ..WriterOptions::new(&path, 1_000_000)
        };
        write_logs(&opts, &flag).unwrap()
    });
    wait_until("some lines", LONG, || p.count_newlines() > 10);
    let started = std::time::Instant::now();
    p.terminate();
    let status = p.wait(Duration::from_secs(10));
    let took = started.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    assert!(status.success());
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(
        p.stderr_text().contains("drain timeout"),
        "{}",
        p.stderr_text()
    );
}

#[test]
fn late_file_in_a_late_directory_is_waited_for() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("later/app.log");
    let mut p = relay(&[log.to_str().unwrap()]);
    p.wait_stderr("does not exist yet", Duration::from_secs(10));
    fs::create_dir(dir.path().join("later")).unwrap();
    append(&log, b"hello\nworld\n");
    p.wait_lines(2, LONG);
    terminate_ok(&mut p);
    assert_eq!(p.stdout_bytes(), b"hello\nworld\n");
}

#[test]
fn glob_follows_files_added_later_with_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let pattern = format!("{}/*.log", dir.path().display());
    let mut p = relay(&["--prefix", "--glob-interval", "100ms", &pattern]);
    p.wait_stderr("no file matches", Duration::from_secs(10));
    append(&dir.path().join("a.log"), b"a1\na2\n");
    p.wait_lines(2, LONG);
    append(&dir.path().join("b.log"), b"b1\n");
    append(&dir.path().join("ignored.txt"), b"nope\n");
    append(&dir.path().join("a.log"), b"a3\n");
    p.wait_lines(4, LONG);
    terminate_ok(&mut p);
    let lines: Vec<String> = p
        .stdout_lines()
        .iter()
        .map(|l| String::from_utf8(l.clone()).unwrap())
        .collect();
    let a: Vec<&String> = lines.iter().filter(|l| l.starts_with("a.log: ")).collect();
    let b: Vec<&String> = lines.iter().filter(|l| l.starts_with("b.log: ")).collect();
    assert_eq!(a, ["a.log: a1", "a.log: a2", "a.log: a3"]);
    assert_eq!(b, ["b.log: b1"]);
    assert_eq!(lines.len(), 4, "{lines:?}");
}

#[test]
fn partial_last_line_is_held_then_completed_or_flushed_at_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    append(&log, b"one\ntw");
    let mut p = relay(&[log.to_str().unwrap()]);
    p.wait_lines(1, LONG);
    append(&log, b"o\nthr");
    p.wait_lines(2, LONG);
    assert_eq!(p.stdout_bytes(), b"one\ntwo\n");
    append(&log, b"ee");
    terminate_ok(&mut p);
    assert_eq!(p.stdout_bytes(), b"one\ntwo\nthree\n");
}

#[test]
fn multiline_events_in_json_with_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    let mut p = relay(&[
        "--format",
        "json",
        "--multiline-start",
        r"^\d{4}-",
        "--multiline-timeout",
        "300ms",
        log.to_str().unwrap(),
    ]);
    append(
        &log,
        b"2026-01-01 ERROR boom\njava.lang.IllegalStateException: x\n\tat a.b(C.java:1)\n\tat d.e(F.java:2)\n2026-01-01 INFO next\n",
    );
    // The second event has no successor: it is emitted after the timeout.
    p.wait_lines(2, LONG);
    terminate_ok(&mut p);
    let events: Vec<serde_json::Value> = p
        .stdout_lines()
        .iter()
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    assert_eq!(events.len(), 2);
    assert_eq!(
        events[0]["line"],
        "2026-01-01 ERROR boom\njava.lang.IllegalStateException: x\n\tat a.b(C.java:1)\n\tat d.e(F.java:2)"
    );
    assert_eq!(events[1]["line"], "2026-01-01 INFO next");
    assert_eq!(events[0]["file"], log.to_str().unwrap());
    let ts = events[0]["ts"].as_str().unwrap();
    assert!(humantime_like(ts), "{ts}");
}

fn humantime_like(ts: &str) -> bool {
    ts.len() >= 20 && ts.as_bytes()[4] == b'-' && ts.contains('T') && ts.ends_with('Z')
}

#[test]
fn multiline_in_raw_mode_keeps_lines_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    let input: &[u8] = b"E1 start\n  cont\nE2\nE3\n  more\n";
    append(&log, input);
    let mut p = relay(&["--multiline-start", "^E", log.to_str().unwrap()]);
    p.wait_lines(5, LONG);
    terminate_ok(&mut p);
    assert_eq!(p.stdout_bytes(), input);
}

#[test]
fn a_50_mib_line_is_split_not_dropped_and_memory_stays_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    let mut big = vec![b'x'; 50 * 1024 * 1024];
    big.push(b'\n');
    append(&log, b"before\n");
    append(&log, &big);
    append(&log, b"after\n");
    let mut p = relay(&[log.to_str().unwrap()]);
    let addr = p.admin_addr();
    wait_until("after line", LONG, || {
        p.stdout.lock().unwrap().ends_with(b"after\n")
    });
    let (_, _, metrics) = http_get(addr, "/metrics");
    let rss_kib = peak_rss_kib(p.pid());
    terminate_ok(&mut p);
    let lines = p.stdout_lines();
    assert_eq!(lines.len(), 52, "50 pieces of 1 MiB between two lines");
    assert_eq!(lines[0], b"before");
    assert_eq!(lines[51], b"after");
    assert!(
        lines[1..51]
            .iter()
            .all(|l| l.len() == 1024 * 1024 && l.iter().all(|b| *b == b'x'))
    );
    let split_line = metrics
        .lines()
        .find(|l| l.starts_with("sidecar_logs_lines_split_total{"))
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(
        split_line.ends_with(" 50") || split_line.ends_with(" 49"),
        "{split_line}"
    );
    // Debug build, 50 MiB line: memory must not follow the line length.
    assert!(rss_kib < 32 * 1024, "peak RSS {rss_kib} KiB");
}

fn peak_rss_kib(pid: i32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[test]
fn invalid_utf8_and_binary_data_pass_through_raw_and_are_replaced_in_json() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    let input: &[u8] = b"ok\n\xff\xfe bad \x00\x01 bytes\n\xe2\x82\n";
    append(&log, input);
    let mut raw = relay(&[log.to_str().unwrap()]);
    let mut json = relay(&["--format", "json", log.to_str().unwrap()]);
    raw.wait_lines(3, LONG);
    json.wait_lines(3, LONG);
    terminate_ok(&mut raw);
    terminate_ok(&mut json);
    assert_eq!(raw.stdout_bytes(), input);
    let lines: Vec<String> = json
        .stdout_lines()
        .iter()
        .map(|l| {
            serde_json::from_slice::<serde_json::Value>(l).unwrap()["line"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        lines,
        ["ok", "\u{fffd}\u{fffd} bad \u{0}\u{1} bytes", "\u{fffd}"]
    );
}

#[test]
fn directory_and_unmatched_glob_are_reported_once_and_the_relay_keeps_going() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("sub");
    fs::create_dir(&sub).unwrap();
    let pattern = format!("{}/*.nothing", dir.path().display());
    let log = dir.path().join("app.log");
    let mut p = relay(&[sub.to_str().unwrap(), &pattern, log.to_str().unwrap()]);
    p.wait_stderr("is a directory", Duration::from_secs(10));
    p.wait_stderr("no file matches", Duration::from_secs(10));
    append(&log, b"still working\n");
    p.wait_lines(1, LONG);
    terminate_ok(&mut p);
    assert_eq!(p.stderr_text().matches("is a directory").count(), 1);
    assert_eq!(p.stdout_bytes(), b"still working\n");
}

#[test]
fn a_file_deleted_while_followed_is_finished_and_a_new_one_picked_up() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    append(&log, b"1\n");
    let mut p = relay(&[log.to_str().unwrap()]);
    p.wait_lines(1, LONG);
    // Keep writing to the deleted file through an open handle, then recreate.
    let mut old = fs::OpenOptions::new().append(true).open(&log).unwrap();
    fs::remove_file(&log).unwrap();
    std::io::Write::write_all(&mut old, b"2\n").unwrap();
    append(&log, b"3\n");
    p.wait_lines(3, LONG);
    terminate_ok(&mut p);
    assert_eq!(p.stdout_bytes(), b"1\n2\n3\n");
}

#[test]
fn metrics_report_lines_bytes_rotations_and_lag() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    let mut p = relay(&[log.to_str().unwrap()]);
    let addr = p.admin_addr();
    let opts = WriterOptions {
        rotate_bytes: 10_000,
        ..WriterOptions::new(&log, 500)
    };
    let written = write_logs(&opts, &AtomicBool::new(false)).unwrap();
    p.wait_lines(500, LONG);
    let label = format!("{{file=\"{}\"}}", log.display());
    let mut text = String::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !text.contains(&format!("sidecar_logs_lines_total{label} 500")) {
        assert!(
            std::time::Instant::now() < deadline,
            "{text}\n{}",
            p.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(20));
        text = http_get(addr, "/metrics").2;
    }
    let (status, head, _) = http_get(addr, "/metrics");
    assert_eq!(status, 200);
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    let bytes: u64 = fs::metadata(&log).unwrap().len()
        + (1..=written.rotations)
            .map(|n| {
                fs::metadata(format!("{}.{n}", log.display()))
                    .map(|m| m.len())
                    .unwrap_or(0)
            })
            .sum::<u64>();
    assert!(
        text.contains(&format!("sidecar_logs_bytes_total{label} {bytes}")),
        "{bytes} bytes expected in\n{text}"
    );
    assert!(
        text.contains(&format!(
            "sidecar_logs_rotations_total{{file=\"{}\",kind=\"rename\"}} {}",
            log.display(),
            written.rotations
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("sidecar_logs_lag_bytes{label} 0")),
        "{text}"
    );
    assert!(text.contains("process_resident_memory_bytes "), "{text}");
    assert_eq!(http_get(addr, "/live").0, 200);
    terminate_ok(&mut p);
}

#[test]
fn closed_stdout_is_a_clear_error() {
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    append(&log, &b"line\n".repeat(1000));
    // Nobody reads the relay's output: the pipe's read end is closed before
    // the relay starts, so its first write fails, however soon it comes.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let child = Command::new(common::BIN)
        .args(["logs", "--admin-addr", "off", log.to_str().unwrap()])
        .stdout(writer)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot write to stdout"), "{err}");
}

#[test]
fn from_end_skips_existing_lines_but_reads_new_ones() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    append(&log, b"old\n");
    let mut p = relay(&["--from", "end", log.to_str().unwrap()]);
    append(&log, b"new\n");
    p.wait_lines(1, LONG);
    terminate_ok(&mut p);
    assert_eq!(p.stdout_bytes(), b"new\n");
}

#[test]
fn bad_arguments_are_explained() {
    let out = std::process::Command::new(common::BIN)
        .args(["logs", "--drain-timeout", "5", "/x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("5ms or 5s"));
    let out = std::process::Command::new(common::BIN)
        .args([
            "logs",
            "--admin-addr",
            "off",
            "--multiline-start",
            "(",
            "/x",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a valid regular expression"));
    let _ = Path::new("/");
}

/// Runs the relay on `log` with `args` and `env` (the admin variables
/// cleared first) and checks that it serves an admin server, or none.
fn check_admin(log: &Path, args: &[&str], env: &[(&str, &str)], serves: bool) {
    let mut cmd = std::process::Command::new(common::BIN);
    cmd.arg("logs")
        .args(args)
        .arg(log)
        .env_remove("SIDECAR_LOGS_ADMIN")
        .env_remove("SIDECAR_LOGS_ADMIN_ADDR")
        .envs(env.iter().copied());
    let mut p = Proc::start_with(&mut cmd);
    p.wait_lines(1, LONG);
    if serves {
        let addr = p.admin_addr();
        wait_until("relay ready", Duration::from_secs(10), || {
            http_get(addr, "/ready").0 == 200
        });
    }
    terminate_ok(&mut p);
    // The admin server starts before the relay, so before the line it relayed.
    let stderr = p.stderr_text();
    assert_eq!(
        stderr.contains("admin server on http://"),
        serves,
        "{args:?} {env:?}:\n{stderr}"
    );
}

/// `--admin` is the spelling; the old names `--admin-addr` and
/// SIDECAR_LOGS_ADMIN_ADDR keep working (SIDECAR_LOGS_ADMIN wins over the old
/// variable, a flag over both).
#[test]
fn admin_address_new_and_old_spellings() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    append(&log, b"one\n");
    let any = "127.0.0.1:0";
    check_admin(&log, &["--admin", any], &[], true);
    check_admin(&log, &["--admin-addr", any], &[], true);
    check_admin(&log, &[], &[("SIDECAR_LOGS_ADMIN", any)], true);
    check_admin(&log, &[], &[("SIDECAR_LOGS_ADMIN_ADDR", any)], true);
    let both = [
        ("SIDECAR_LOGS_ADMIN", "off"),
        ("SIDECAR_LOGS_ADMIN_ADDR", any),
    ];
    check_admin(&log, &[], &both, false);
    let new_off = [("SIDECAR_LOGS_ADMIN", "off")];
    check_admin(&log, &["--admin-addr", any], &new_off, true);
    let old_on = [("SIDECAR_LOGS_ADMIN_ADDR", any)];
    check_admin(&log, &["--admin", "off"], &old_on, false);
    // A bad value under the old name is a usage error, as it always was.
    let out = std::process::Command::new(common::BIN)
        .args(["logs", "/x"])
        .env_remove("SIDECAR_LOGS_ADMIN")
        .env("SIDECAR_LOGS_ADMIN_ADDR", "nowhere")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("SIDECAR_LOGS_ADMIN_ADDR") && err.contains("is not a listen address"),
        "{err}"
    );
}

/// Lines `seq=first..=last`, as the demo writer numbers them.
fn numbered(first: u64, last: u64) -> Vec<u8> {
    (first..=last)
        .flat_map(|n| format!("line seq={n:08}\n").into_bytes())
        .collect()
}

#[test]
fn files_rotated_through_a_vacated_path_are_relayed() {
    use nix::sys::signal::Signal;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    let rotated = |n: u32| dir.path().join(format!("app.log.{n}"));
    append(&log, &numbered(1, 10));
    let p = relay(&[log.to_str().unwrap()]);
    p.wait_lines(10, LONG);
    // The relay (watcher included) is stopped while the writer renames its
    // file away: it wakes to an empty path.
    p.signal(Signal::SIGSTOP);
    fs::rename(&log, rotated(1)).unwrap();
    p.signal(Signal::SIGCONT);
    p.wait_stderr("was rotated (renamed)", LONG);
    // Stopped again, it misses a whole file rotated through the path, then
    // finds the next one there: the missed file's lines come first.
    p.signal(Signal::SIGSTOP);
    append(&log, &numbered(11, 20));
    fs::rename(rotated(1), rotated(2)).unwrap();
    fs::rename(&log, rotated(1)).unwrap();
    append(&log, &numbered(21, 30));
    p.signal(Signal::SIGCONT);
    p.wait_lines(30, LONG);
    let mut p = p;
    terminate_ok(&mut p);
    assert_exact_sequence(&p.stdout_lines(), 1, 30, &p.stderr_text());
}

#[test]
fn a_stdout_pipe_is_widened_so_that_large_writes_do_not_stall() {
    use nix::fcntl::{FcntlArg, fcntl};
    use std::io::Read;
    use std::os::fd::AsFd;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    fs::write(&log, "one\n").unwrap();
    let (read_end, write_end) = nix::unistd::pipe().unwrap();
    let before = fcntl(read_end.as_fd(), FcntlArg::F_GETPIPE_SZ).unwrap();
    let mut child = std::process::Command::new(common::BIN)
        .args(["logs", "--admin-addr", "off", log.to_str().unwrap()])
        .stdout(std::process::Stdio::from(write_end))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut reader = fs::File::from(read_end);
    let mut first = [0u8; 4];
    reader.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"one\n");
    let after = fcntl(reader.as_fd(), FcntlArg::F_GETPIPE_SZ).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        before < 1024 * 1024 && after >= 1024 * 1024,
        "pipe capacity {before} -> {after}"
    );
}
