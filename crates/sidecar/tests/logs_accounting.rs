//! `sidecar logs` loss accounting and file identities: a loss counter or
//! warning that fires when nothing was lost is a defect too (operators
//! alert on it), and so is a new file taken for one read before. Each test makes the
//! relay do something that loses nothing, then one real loss (the relay
//! stopped while the writer rotates three times over `app.log.1`), which
//! is counted after everything before it was settled: the counter must
//! then read exactly 1.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::logs::{assert_relayed, lines, metric, relay};
use common::{Proc, append, file_with_inode};
use std::os::unix::fs::MetadataExt;

const LONG: Duration = Duration::from_secs(60);

fn lost_series(log: &Path) -> String {
    format!(
        "sidecar_logs_files_lost_total{{file=\"{}\"}}",
        log.display()
    )
}

/// One real loss: with the relay stopped, `log` is rotated three times
/// over `log.1` (`rotate 1`), so the first of the three files is deleted
/// unread. Waits until the relay relayed the two others (`before` lines
/// already out) and counted the loss, which must then be the only one
/// counted; returns the lines written.
fn one_real_loss(p: &Proc, log: &Path, before: usize) -> String {
    let rotated = log.with_extension("log.1");
    p.signal(nix::sys::signal::Signal::SIGSTOP);
    let mut kept = String::new();
    for name in ["lost", "kept1", "kept2"] {
        fs::rename(log, &rotated).unwrap();
        fs::write(log, lines(name, 3)).unwrap();
        if name != "lost" {
            kept.push_str(&lines(name, 3));
        }
    }
    p.signal(nix::sys::signal::Signal::SIGCONT);
    p.wait_lines(before + 6, LONG);
    common::wait_until("the real loss counted", LONG, || {
        metric(p, &lost_series(log)) >= 1.0
    });
    assert_eq!(
        metric(p, &lost_series(log)),
        1.0,
        "only the real loss counts: {}",
        p.stderr_text()
    );
    kept
}

#[test]
fn a_file_renamed_away_and_back_is_not_counted_lost() {
    let dir = tempfile::tempdir().unwrap();
    let (log, tmp) = (dir.path().join("app.log"), dir.path().join("app.log.tmp"));
    // The file appears while the relay runs (the watcher sees it come).
    let mut p = relay(&[log.to_str().unwrap()]);
    fs::write(&log, lines("a", 3)).unwrap();
    p.wait_lines(3, LONG);
    let mut want = lines("a", 3);
    // A writer that renames its file away and back, over and over.
    for i in 1..=5 {
        fs::rename(&log, &tmp).unwrap();
        fs::rename(&tmp, &log).unwrap();
        let line = format!("b {i}\n");
        append(&log, line.as_bytes());
        want.push_str(&line);
        p.wait_lines(3 + i, LONG);
    }
    want.push_str(&one_real_loss(&p, &log, 8));
    assert_relayed(&mut p, &want, "the relay");
}

#[test]
fn rotations_behind_a_backlog_of_other_files_events_are_not_counted_lost() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    fs::write(&log, lines("r0", 3)).unwrap();
    let mut p = relay(&[log.to_str().unwrap()]);
    p.wait_lines(3, LONG);
    // Hundreds of other files in the directory, with long names: their
    // events fill the relay's inotify reads (4 KiB, 18 events each).
    let mut others: Vec<fs::File> = (0..300)
        .map(|i| fs::File::create(dir.path().join(format!("{i:03}-{}", "x".repeat(200)))).unwrap())
        .collect();
    let mut want = lines("r0", 3);
    let mut n = 0;
    for round in 1..=3 {
        // While the relay is starved, the other files are written 3,900
        // times (a backlog of a second or more, 11,700 events in all: the
        // kernel queues 16,384), then app.log is rotated twice with
        // `rotate 2`: nothing is lost, every file is beside the path.
        p.signal(nix::sys::signal::Signal::SIGSTOP);
        for _ in 0..13 {
            for f in &mut others {
                f.write_all(b"x\n").unwrap();
            }
        }
        for i in 1..=2 {
            let older = log.with_extension("log.1");
            if older.exists() {
                fs::rename(&older, log.with_extension("log.2")).unwrap();
            }
            fs::rename(&log, &older).unwrap();
            let name = format!("r{round}.{i}");
            fs::write(&log, lines(&name, 3)).unwrap();
            want.push_str(&lines(&name, 3));
        }
        p.signal(nix::sys::signal::Signal::SIGCONT);
        n += 6;
        p.wait_lines(3 + n, LONG);
    }
    want.push_str(&one_real_loss(&p, &log, 3 + n));
    assert_relayed(&mut p, &want, "the relay");
}

#[test]
fn a_restart_after_everything_was_relayed_warns_of_no_loss() {
    let dir = tempfile::tempdir().unwrap();
    let (log, state) = (dir.path().join("app.log"), dir.path().join("state"));
    let rotated = dir.path().join("app.log.1");
    let args = [
        "--state-dir",
        state.to_str().unwrap(),
        log.to_str().unwrap(),
    ];
    fs::write(&log, lines("a", 3)).unwrap();
    let mut first = relay(&args);
    first.wait_lines(3, LONG);
    // Rotated and relayed to its end; the relay stops while it still holds
    // the rotated file (within --rotate-wait), so both files are open in
    // the checkpoint.
    fs::rename(&log, &rotated).unwrap();
    fs::write(&log, lines("b", 3)).unwrap();
    first.wait_lines(6, LONG);
    assert_relayed(
        &mut first,
        &format!("{}{}", lines("a", 3), lines("b", 3)),
        "first",
    );
    // While it is down, logrotate (`rotate 1`) rotates again: the first
    // file, relayed whole, is overwritten; the second is beside the path.
    fs::rename(&log, &rotated).unwrap();
    fs::write(&log, "").unwrap();
    let mut second = relay(&args);
    append(&log, b"c 1\n");
    second.wait_lines(1, LONG);
    assert_relayed(&mut second, "c 1\n", "the second relay");
    let said = second.stderr_text();
    assert!(!said.contains("may be lost"), "{said}");
    assert!(!said.contains("WARN"), "{said}");
}

/// The relay reads `old` at app.log and stops; while it is down the file
/// is deleted and `new` takes its inode. The restarted relay must relay
/// `new` whole, from its start.
fn restart_with_a_new_file_on_the_inode(old: &str, new: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (log, state) = (dir.path().join("app.log"), dir.path().join("state"));
    let args = [
        "--state-dir",
        state.to_str().unwrap(),
        log.to_str().unwrap(),
    ];
    fs::write(&log, old).unwrap();
    let mut first = relay(&args);
    first.wait_lines(old.lines().count(), LONG);
    assert_relayed(&mut first, old, "the first relay");
    let ino = fs::metadata(&log).unwrap().ino();
    fs::remove_file(&log).unwrap();
    let reused = file_with_inode(dir.path(), ino, new);
    fs::rename(&reused, &log).unwrap();
    let mut second = relay(&args);
    second.wait_lines(new.lines().count(), LONG);
    assert_relayed(&mut second, new, "the second relay");
}

#[test]
fn a_new_file_on_a_freed_inode_with_the_same_banner_is_read_from_its_start() {
    // Every file the writer starts begins with the same 300-byte banner;
    // the new one is longer, with other lines.
    let banner = format!("{}\n", "=".repeat(299));
    restart_with_a_new_file_on_the_inode(
        &format!("{banner}{}", lines("a", 3)),
        &format!("{banner}{}", lines("new", 20)),
    );
}

#[test]
fn a_new_file_on_a_freed_inode_with_the_same_first_lines_is_told_by_its_birth_time() {
    let dir = tempfile::tempdir().unwrap();
    let probe = dir.path().join("probe");
    fs::write(&probe, "").unwrap();
    if fs::metadata(&probe).and_then(|m| m.created()).is_err() {
        eprintln!("this filesystem keeps no birth times; nothing to check");
        return;
    }
    // The new file starts with the very same lines: only its birth time
    // tells it apart.
    let start = lines("started", 3);
    restart_with_a_new_file_on_the_inode(&start, &format!("{start}{}", lines("then", 4)));
}

#[test]
fn rotations_in_a_busy_directory_are_not_counted_lost() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    fs::write(&log, lines("r0", 3)).unwrap();
    let mut p = relay(&[log.to_str().unwrap()]);
    p.wait_lines(3, LONG);
    // Hundreds of other files written, and short-lived ones made and
    // deleted, all the time: most of the relay's inotify events are about
    // them, and they come in many 4 KiB reads.
    let stop = Arc::new(AtomicBool::new(false));
    let noise = {
        let (stop, dir) = (Arc::clone(&stop), dir.path().to_path_buf());
        std::thread::spawn(move || {
            let mut others: Vec<fs::File> = (0..400)
                .map(|i| fs::File::create(dir.join(format!("{i:03}-{}", "y".repeat(100)))).unwrap())
                .collect();
            let mut round = 0u64;
            while !stop.load(Ordering::SeqCst) {
                for f in &mut others {
                    f.write_all(b"x\n").unwrap();
                }
                for i in 0..20 {
                    let p = dir.join(format!("tmp-{round}-{i}.txt"));
                    fs::write(&p, b"y\n").unwrap();
                    fs::remove_file(&p).unwrap();
                }
                round += 1;
            }
        })
    };
    // app.log rotates normally (`rotate 1`), at the pace the relay keeps.
    let mut want = lines("r0", 3);
    let rotated = dir.path().join("app.log.1");
    for r in 1..=60 {
        fs::rename(&log, &rotated).unwrap();
        let name = format!("r{r}");
        fs::write(&log, lines(&name, 3)).unwrap();
        want.push_str(&lines(&name, 3));
        p.wait_lines(3 * (r + 1), LONG);
    }
    stop.store(true, Ordering::SeqCst);
    noise.join().unwrap();
    assert_eq!(metric(&p, &lost_series(&log)), 0.0, "{}", p.stderr_text());
    assert_relayed(&mut p, &want, "the relay");
    // Every loss counted comes with a warning, until the relay exits.
    let said = p.stderr_text();
    assert!(!said.contains("were rotated away and deleted"), "{said}");
}
