//! Rotations at exact moments of the relay's work, on the library: the
//! writer rotates from inside the relay's own `write` call, or between two
//! steps the test waits for, so the timing is the same on every run.
#![allow(clippy::unwrap_used)]

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use prometheus_client::registry::Registry;
use sidecar_logs::{Config, Control, Metrics, Relay, RelayError, Summary};

/// The relay's stdout. The first write waits for `go` (so the test can
/// rotate while the relay is between reads); a write that carries `trigger`
/// runs `on_trigger` before it returns (the writer rotates while the relay
/// drains a file).
struct Stdout {
    seen: Arc<Mutex<Vec<u8>>>,
    entered: Option<Sender<()>>,
    go: Option<Receiver<()>>,
    trigger: &'static [u8],
    on_trigger: Option<Box<dyn FnOnce() + Send>>,
}

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let (Some(entered), Some(go)) = (self.entered.take(), self.go.take()) {
            entered.send(()).unwrap();
            go.recv().unwrap();
        }
        if memchr_slice(buf, self.trigger) {
            if let Some(f) = self.on_trigger.take() {
                f();
            }
        }
        self.seen.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn memchr_slice(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// `lines` lines `"{name} {n:07} ..."`, padded so that they are long.
fn generation(name: &str, lines: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for n in 0..lines {
        writeln!(out, "{name} {n:07} {}", "x".repeat(100)).unwrap();
    }
    out
}

/// `app.log` → `app.log.1` (older copies shift up), then a new `app.log`
/// holding `content`.
fn rotate(log: &Path, content: &[u8]) {
    let backup = |n: u32| PathBuf::from(format!("{}.{n}", log.display()));
    for n in (1..10).rev() {
        if backup(n).exists() {
            fs::rename(backup(n), backup(n + 1)).unwrap();
        }
    }
    fs::rename(log, backup(1)).unwrap();
    let mut f = OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(log)
        .unwrap();
    f.write_all(content).unwrap();
}

/// logrotate's `copytruncate`: `log` is copied to `copy` and truncated;
/// then the writer writes `content` to it. The file's modification time is
/// set a second ahead: file systems keep it in clock ticks, and a rewrite
/// within the tick of the last write cannot be told from no change at all
/// (a later write shows it).
fn copy_truncate(log: &Path, copy: &Path, content: &[u8]) {
    fs::copy(log, copy).unwrap();
    let mut f = OpenOptions::new().append(true).open(log).unwrap();
    f.set_len(0).unwrap();
    f.write_all(content).unwrap();
    f.set_modified(SystemTime::now() + Duration::from_secs(1))
        .unwrap();
}

/// Runs a relay of `log` on its own thread, writing to `stdout`.
fn start_relay(log: &Path, stdout: Stdout) -> (JoinHandle<Result<Summary, RelayError>>, Control) {
    let cfg = Config {
        paths: vec![log.to_str().unwrap().to_string()],
        ..Config::default()
    };
    let metrics = Metrics::register(&mut Registry::default());
    let (relay, control) = Relay::new(cfg, metrics).unwrap();
    (
        std::thread::spawn(move || relay.run(stdout, || {})),
        control,
    )
}

/// The first word of each line, in runs: `["gen1", "gen2", ...]`.
fn runs(out: &[u8]) -> Vec<String> {
    let mut runs: Vec<String> = Vec::new();
    for line in out.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let name = String::from_utf8_lossy(line.split(|b| *b == b' ').next().unwrap()).into_owned();
        if runs.last() != Some(&name) {
            runs.push(name);
        }
    }
    runs
}

#[test]
fn files_rotated_while_an_old_file_drains_come_after_the_file_that_replaced_it() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    // Larger than one tick's read budget (1 MiB): the relay reads it over
    // several ticks and checks the path in between.
    fs::write(&log, generation("gen1", 30_000)).unwrap();

    let seen = Arc::new(Mutex::new(Vec::new()));
    let (entered_tx, entered_rx) = channel();
    let (go_tx, go_rx) = channel();
    let writer_log = log.clone();
    let stdout = Stdout {
        seen: Arc::clone(&seen),
        entered: Some(entered_tx),
        go: Some(go_rx),
        trigger: b"gen1 last\n",
        // While the relay drains gen1, the writer rotates twice more: gen2
        // and gen3 go to `app.log.2` and `app.log.1`, gen4 is at the path.
        on_trigger: Some(Box::new(move || {
            rotate(&writer_log, &generation("gen3", 100));
            rotate(&writer_log, &generation("gen4", 100));
        })),
    };
    let (handle, control) = start_relay(&log, stdout);

    // The relay holds gen1 open and is writing its first block: rotate now,
    // and finish gen1 through the handle the writer still has.
    entered_rx.recv_timeout(Duration::from_secs(30)).unwrap();
    rotate(&log, &generation("gen2", 100));
    let mut old = OpenOptions::new()
        .append(true)
        .open(dir.path().join("app.log.1"))
        .unwrap();
    old.write_all(b"gen1 last\n").unwrap();
    go_tx.send(()).unwrap();

    let deadline = Instant::now() + Duration::from_secs(60);
    let want = ["gen1", "gen2", "gen3", "gen4"];
    loop {
        // One snapshot for both: the relay goes on writing in between.
        let out = seen.lock().unwrap().clone();
        let (got, lines) = (runs(&out), out.iter().filter(|b| **b == b'\n').count());
        if lines >= 30_000 + 1 + 300 {
            assert_eq!(got, want, "files relayed out of order");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "relayed {lines} lines so far, in runs {got:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    control.stop();
    let summary = handle.join().unwrap().unwrap();
    assert_eq!(summary.records, 30_000 + 1 + 300);
}

/// Polls `seen` until `done` holds, for up to a minute.
fn wait_for(seen: &Mutex<Vec<u8>>, what: &str, done: impl Fn(&[u8]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done(&seen.lock().unwrap()) {
        assert!(
            Instant::now() < deadline,
            "{what}: not yet after a minute; relayed so far: {:?}",
            runs(&seen.lock().unwrap())
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn count_lines(out: &[u8]) -> usize {
    out.iter().filter(|b| **b == b'\n').count()
}

#[test]
fn a_copy_that_turns_up_after_its_truncation_was_handled_is_not_relayed_again() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    let aside = dir.path().join("aside");
    fs::create_dir(&aside).unwrap();
    fs::write(&log, generation("gen1", 100)).unwrap();

    let seen = Arc::new(Mutex::new(Vec::new()));
    let stdout = Stdout {
        seen: Arc::clone(&seen),
        entered: None,
        go: None,
        trigger: b"never",
        on_trigger: None,
    };
    let (handle, control) = start_relay(&log, stdout);
    wait_for(&seen, "gen1 relayed", |out| count_lines(out) == 100);

    // copytruncate whose copy is written somewhere the relay does not look;
    // the new content is as long as the old one.
    let late_copy = aside.join("app.log.1");
    copy_truncate(&log, &late_copy, &generation("gen2", 100));
    wait_for(&seen, "gen2 relayed", |out| count_lines(out) == 200);

    // The copy turns up beside the file, written after the last change the
    // relay saw (gen2's, a second ahead), and the next copytruncate makes
    // the relay look for missed copies.
    fs::rename(&late_copy, dir.path().join("app.log.2")).unwrap();
    OpenOptions::new()
        .write(true)
        .open(dir.path().join("app.log.2"))
        .unwrap()
        .set_modified(SystemTime::now() + Duration::from_secs(2))
        .unwrap();
    copy_truncate(
        &log,
        &dir.path().join("app.log.1"),
        &generation("gen3", 150),
    );
    wait_for(&seen, "gen3 relayed", |out| {
        runs(out).last().map(String::as_str) == Some("gen3") && count_lines(out) >= 350
    });
    control.stop();
    let summary = handle.join().unwrap().unwrap();
    let out = seen.lock().unwrap();
    assert_eq!(runs(&out), ["gen1", "gen2", "gen3"]);
    assert_eq!(count_lines(&out), 350, "some lines twice");
    assert_eq!(summary.records, 350);
}
