//! `sidecar logs` under the faults a review with real rotation tools found:
//! a file that reuses a freed inode, a FIFO at a followed path, files
//! deleted before the relay could read them, short-lived files under a
//! glob, a truncation to a non-zero size. One test per fault, each named
//! after what it guards.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use common::logs::{assert_relayed, lines, metric, relay, stop};
use common::{Proc, append, file_with_inode, http_get, wait_until};

const LONG: Duration = Duration::from_secs(60);

#[test]
fn a_rotated_file_that_reuses_a_freed_inode_is_relayed() {
    let dir = tempfile::tempdir().unwrap();
    let (log, state) = (dir.path().join("app.log"), dir.path().join("state"));
    let args = [
        "--state-dir",
        state.to_str().unwrap(),
        "--rotate-wait",
        "50ms",
        log.to_str().unwrap(),
    ];
    // A is read, rotated away and let go (known to the relay).
    fs::write(&log, lines("a", 5)).unwrap();
    let mut first = relay(&args);
    first.wait_lines(5, LONG);
    let a_ino = fs::metadata(&log).unwrap().ino();
    fs::rename(&log, dir.path().join("app.log.1")).unwrap();
    fs::write(&log, lines("b", 5)).unwrap();
    first.wait_lines(10, LONG);
    wait_until("A let go", LONG, || {
        first.stderr_text().contains("done with the rotated file")
            || metric(&first, "sidecar_logs_files_open") <= 1.0
    });
    assert!(stop(&mut first).success());
    // A is deleted once the relay is down (its checkpoint written).
    fs::remove_file(dir.path().join("app.log.1")).unwrap();

    // While the relay is down: C takes A's inode, is rotated to app.log.1
    // beside a newer app.log (D).
    fs::rename(&log, dir.path().join("app.log.2")).unwrap();
    let c = file_with_inode(dir.path(), a_ino, &lines("c", 5));
    fs::rename(&c, &log).unwrap();
    fs::rename(&log, dir.path().join("app.log.1")).unwrap();
    fs::write(&log, lines("d", 5)).unwrap();

    let mut second = relay(&args);
    second.wait_lines(10, LONG);
    let want = format!("{}{}", lines("c", 5), lines("d", 5));
    assert_relayed(&mut second, &want, "the second relay");
}

#[test]
fn a_fifo_at_a_followed_path_freezes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (good, pipe) = (dir.path().join("good.log"), dir.path().join("pipe"));
    fs::write(&good, "1\n").unwrap();
    let mut p = relay(&[good.to_str().unwrap(), pipe.to_str().unwrap()]);
    p.wait_lines(1, LONG);
    nix::unistd::mkfifo(&pipe, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    // The watcher sees the FIFO appear; opening it must not block anything.
    for i in 2..=5 {
        append(&good, format!("{i}\n").as_bytes());
        p.wait_lines(i, Duration::from_secs(10));
    }
    p.wait_stderr("not a regular file", Duration::from_secs(10));
    assert_eq!(http_get(p.admin_addr(), "/ready").0, 200);
    let start = Instant::now();
    assert!(stop(&mut p).success(), "{}", p.stderr_text());
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "SIGTERM took {:?}",
        start.elapsed()
    );
    assert_eq!(p.stdout_bytes(), b"1\n2\n3\n4\n5\n");
}

#[test]
fn files_deleted_before_the_relay_could_read_them_are_counted_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    let rotated = dir.path().join("app.log.1");
    fs::write(&log, lines("f1", 3)).unwrap();
    let mut p = relay(&[log.to_str().unwrap()]);
    p.wait_lines(3, LONG);
    // The relay is starved (stopped) while the writer rotates three times
    // with `rotate 1`: F2 is overwritten (deleted) before anyone reads it.
    p.signal(nix::sys::signal::Signal::SIGSTOP);
    for name in ["f2", "f3", "f4"] {
        fs::rename(&log, &rotated).unwrap();
        fs::write(&log, lines(name, 3)).unwrap();
    }
    p.signal(nix::sys::signal::Signal::SIGCONT);
    p.wait_lines(9, LONG);
    let label = format!(
        "sidecar_logs_files_lost_total{{file=\"{}\"}}",
        log.display()
    );
    wait_until("the lost file counted", Duration::from_secs(10), || {
        metric(&p, &label) >= 1.0
    });
    assert_eq!(metric(&p, &label), 1.0);
    let warning = p.stderr_text();
    assert!(
        warning.contains("before the relay could read") && warning.contains(log.to_str().unwrap()),
        "{warning}"
    );
    assert!(stop(&mut p).success());
    let text = String::from_utf8_lossy(&p.stdout_bytes()).to_string();
    assert_eq!(
        text,
        format!("{}{}{}", lines("f1", 3), lines("f3", 3), lines("f4", 3))
    );
}

#[test]
fn short_lived_files_under_a_glob_are_relayed_whole() {
    let dir = tempfile::tempdir().unwrap();
    let pattern = format!("{}/*.log", dir.path().display());
    let mut p = relay(&[&pattern]);
    // 20 files of 25 lines, each living about 100 ms: far less than the
    // default glob interval (1s).
    for f in 0..20 {
        let path = dir.path().join(format!("job-{f}.log"));
        fs::write(&path, lines(&format!("job{f}"), 25)).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        fs::remove_file(&path).unwrap();
    }
    p.wait_lines(500, Duration::from_secs(20));
    assert!(stop(&mut p).success());
    let out = String::from_utf8_lossy(&p.stdout_bytes()).to_string();
    for f in 0..20 {
        let want = lines(&format!("job{f}"), 25);
        assert!(out.contains(&want), "job {f} missing in:\n{out}");
    }
    assert_eq!(out.lines().count(), 500);
}

#[test]
fn a_truncation_to_a_nonzero_size_repeats_nothing() {
    for (kept_lines, what) in [
        (40, "a kept part longer than the fingerprint"),
        (3, "a short file"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("app.log");
        let first = lines("kept", kept_lines);
        let dropped = lines("dropped", 10);
        fs::write(&log, format!("{first}{dropped}")).unwrap();
        let mut p = relay(&[log.to_str().unwrap()]);
        p.wait_lines(kept_lines + 10, LONG);
        // `truncate -s <part>`, at a line end, then more lines.
        let f = fs::OpenOptions::new().write(true).open(&log).unwrap();
        f.set_len(first.len() as u64).unwrap();
        drop(f);
        if kept_lines > 10 {
            // Past the fingerprint, the cut is where the file ends when the
            // relay looks: wait for that look (inotify makes it at once).
            p.wait_stderr("was truncated to", LONG);
        }
        append(&log, lines("new", 5).as_bytes());
        p.wait_lines(kept_lines + 15, LONG);
        assert!(
            p.stderr_text().contains("was truncated to"),
            "{what}: {}",
            p.stderr_text()
        );
        let want = format!("{first}{dropped}{}", lines("new", 5));
        assert_relayed(&mut p, &want, what);
    }
}

/// `truncate -s` past the first 256 bytes, and lines appended at once,
/// before the relay looks: fewer than were cut, or more. The appended lines
/// are relayed, and nothing twice: the relay finds where the file was cut
/// from the line ends it read.
#[test]
fn a_cut_past_the_first_bytes_followed_at_once_by_appends_loses_nothing() {
    for appended in [3, 40] {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("app.log");
        let (kept, dropped) = (lines("kept", 40), lines("dropped", 10));
        fs::write(&log, format!("{kept}{dropped}")).unwrap();
        let mut p = relay(&[log.to_str().unwrap()]);
        p.wait_lines(50, LONG);
        p.signal(nix::sys::signal::Signal::SIGSTOP);
        let f = fs::OpenOptions::new().write(true).open(&log).unwrap();
        f.set_len(kept.len() as u64).unwrap();
        drop(f);
        let new = lines("new", appended);
        append(&log, new.as_bytes());
        p.signal(nix::sys::signal::Signal::SIGCONT);
        p.wait_lines(50 + appended, LONG);
        let what = format!("{appended} appended");
        assert_relayed(&mut p, &format!("{kept}{dropped}{new}"), &what);
    }
}

#[test]
fn a_final_checkpoint_that_cannot_be_written_is_a_failed_exit() {
    let dir = tempfile::tempdir().unwrap();
    let (log, state) = (dir.path().join("app.log"), dir.path().join("state"));
    fs::write(&log, "1\n").unwrap();
    let mut p = relay(&[
        "--state-dir",
        state.to_str().unwrap(),
        log.to_str().unwrap(),
    ]);
    p.wait_lines(1, LONG);
    // The state directory becomes unusable (as a full disk would make it).
    fs::remove_dir_all(&state).unwrap();
    fs::write(&state, "not a directory").unwrap();
    append(&log, b"2\n");
    p.wait_lines(2, LONG);
    let status = stop(&mut p);
    assert!(!status.success(), "{}", p.stderr_text());
    assert!(
        p.stderr_text()
            .contains("final checkpoint could not be written"),
        "{}",
        p.stderr_text()
    );
    assert_eq!(p.stdout_bytes(), b"1\n2\n", "every line is still relayed");
}

/// A file rotated away twice before the relay opened it (found by name, as
/// `app.log.1`) is still written to by a writer holding it open: those
/// late lines are relayed too, for `--rotate-wait`, as for any rotated file.
#[test]
fn late_writes_to_a_file_the_relay_found_by_name_are_relayed() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let (log, state) = (dir.path().join("app.log"), dir.path().join("state"));
    fs::write(&log, lines("a", 5)).unwrap();
    let mut p = relay(&[
        "--state-dir",
        state.to_str().unwrap(),
        "--rotate-wait",
        "60s",
        log.to_str().unwrap(),
    ]);
    p.wait_lines(5, LONG);
    // Stopped, the relay misses B entirely: B is written, rotated to .1,
    // and C takes the path, while a writer still holds B open.
    p.signal(nix::sys::signal::Signal::SIGSTOP);
    let (one, two) = (dir.path().join("app.log.1"), dir.path().join("app.log.2"));
    fs::rename(&log, &one).unwrap();
    fs::write(&log, lines("b", 5)).unwrap();
    let mut writer_of_b = fs::OpenOptions::new().append(true).open(&log).unwrap();
    fs::rename(&one, &two).unwrap();
    fs::rename(&log, &one).unwrap();
    fs::write(&log, lines("c", 5)).unwrap();
    p.signal(nix::sys::signal::Signal::SIGCONT);
    p.wait_lines(15, LONG);
    p.wait_stderr("was rotated away before the relay could follow it", LONG);
    // The late lines, after the relay read B to its end.
    writer_of_b
        .write_all(lines("late-b", 5).as_bytes())
        .unwrap();
    p.wait_lines(20, Duration::from_secs(30));
    assert!(stop(&mut p).success());
    let out = String::from_utf8(p.stdout_bytes()).unwrap();
    let mut got: Vec<&str> = out.lines().collect();
    got.sort_unstable();
    let mut want: Vec<String> = ["a", "b", "c", "late-b"]
        .iter()
        .flat_map(|g| lines(g, 5).lines().map(str::to_string).collect::<Vec<_>>())
        .collect();
    want.sort();
    assert_eq!(got, want, "every line exactly once:\n{out}");
}

/// A file the relay follows but has not read yet is renamed away, and the
/// file after it too: the newer file comes after it, not before (it is not
/// taken for an older copy).
#[test]
fn a_newer_rotated_file_never_comes_before_one_not_read_yet() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    let mut p = relay(&["--rotate-wait", "60s", log.to_str().unwrap()]);
    p.wait_stderr("does not exist yet", LONG);
    // The app creates its log empty; the relay follows it from offset 0.
    fs::write(&log, "").unwrap();
    p.wait_stderr("following", LONG);
    p.signal(nix::sys::signal::Signal::SIGSTOP);
    append(&log, b"line 1\nline 2\n");
    let one = dir.path().join("app.log.1");
    fs::rename(&log, &one).unwrap();
    append(&log, b"line 3\nline 4\n");
    fs::rename(&log, &one).unwrap();
    append(&log, b"line 5\n");
    p.signal(nix::sys::signal::Signal::SIGCONT);
    p.wait_lines(5, LONG);
    let want = "line 1\nline 2\nline 3\nline 4\nline 5\n";
    assert_relayed(&mut p, want, "in order");
}

/// A file truncated and written again past the relay's offset, all within
/// one clock tick (its mtime does not move), is read from its start: the
/// first bytes are checked before every read.
#[test]
fn a_rewrite_that_keeps_the_mtime_is_read_from_its_start() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    fs::write(&log, lines("old", 5)).unwrap();
    let mut p = relay(&[log.to_str().unwrap()]);
    p.wait_lines(5, LONG);
    p.signal(nix::sys::signal::Signal::SIGSTOP);
    let mtime = fs::metadata(&log).unwrap().modified().unwrap();
    // Truncated and rewritten longer, with other first bytes; the mtime set
    // back to what the relay saw, as a rewrite within one tick leaves it.
    let file = fs::OpenOptions::new().write(true).open(&log).unwrap();
    file.set_len(0).unwrap();
    drop(file);
    append(&log, lines("NEW", 8).as_bytes());
    fs::File::options()
        .write(true)
        .open(&log)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    p.signal(nix::sys::signal::Signal::SIGCONT);
    p.wait_lines(13, LONG);
    let want = lines("old", 5) + &lines("NEW", 8);
    assert_relayed(&mut p, &want, "read again from its start");
}

/// `copytruncate` while the writer appends: the relay read past the end of
/// what the copy holds before the truncation. The copy starts like the file
/// followed and is shorter than what was relayed: it was relayed in full,
/// and nothing of it is relayed again (live, and after a restart).
#[test]
fn a_copy_shorter_than_what_was_relayed_is_not_relayed_again() {
    for restart in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let (log, copy) = (dir.path().join("app.log"), dir.path().join("app.log.1"));
        let state = dir.path().join("state");
        let args = [
            "--state-dir",
            state.to_str().unwrap(),
            log.to_str().unwrap(),
        ];
        fs::write(&log, lines("before-copy", 50)).unwrap();
        let mut p = relay(&args);
        p.wait_lines(50, LONG);
        fs::copy(&log, &copy).unwrap();
        append(&log, lines("after-copy", 20).as_bytes());
        p.wait_lines(70, LONG);
        if restart {
            assert!(stop(&mut p).success());
        }
        // The copy was finished after the writer's append (a slow copy, or
        // the same clock tick): it counts as changed since that append.
        fs::File::options()
            .write(true)
            .open(&copy)
            .unwrap()
            .set_modified(std::time::SystemTime::now())
            .unwrap();
        fs::OpenOptions::new()
            .write(true)
            .open(&log)
            .unwrap()
            .set_len(0)
            .unwrap();
        let mut q = if restart {
            relay(&args)
        } else {
            p.wait_stderr("was truncated", LONG);
            p
        };
        append(&log, lines("new", 10).as_bytes());
        let before = if restart { 0 } else { 70 };
        q.wait_lines(before + 10, LONG);
        let lost = format!(
            "sidecar_logs_bytes_lost_total{{file=\"{}\"}}",
            log.display()
        );
        assert_eq!(metric(&q, &lost), 0.0, "{}", q.stderr_text());
        let want = if restart {
            lines("new", 10)
        } else {
            format!(
                "{}{}{}",
                lines("before-copy", 50),
                lines("after-copy", 20),
                lines("new", 10)
            )
        };
        assert_relayed(&mut q, &want, &format!("restart: {restart}"));
    }
}

/// `copytruncate` while the writer appends: of the lines written after the
/// copy, those the relay read are relayed once; those it saw (by the file's
/// size) but had not read when the file was truncated are in no file any
/// more, and counted in `sidecar_logs_bytes_lost_total`.
#[test]
fn bytes_written_after_a_copy_and_not_read_before_the_truncation_are_counted_lost() {
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().unwrap();
    let (log, copy) = (dir.path().join("app.log"), dir.path().join("app.log.1"));
    // The copy holds the first lines; the file, 16 MiB more when the relay
    // starts. Its stdout is not read: it reads until the pipe is full, and
    // is still far from the end when the file is truncated.
    fs::write(&copy, lines("before-copy", 50)).unwrap();
    let head = lines("before-copy", 50) + &lines("after-copy", 20);
    let unread = lines("unread", 1_200_000);
    fs::write(&log, head.clone() + &unread).unwrap();
    let mut p = Proc::start_paused(&["logs", "--admin", "127.0.0.1:0", log.to_str().unwrap()]);
    let relayed = format!("sidecar_logs_bytes_total{{file=\"{}\"}}", log.display());
    wait_until("the relay reading past the copy's end", LONG, || {
        metric(&p, &relayed) > head.len() as f64
    });
    fs::OpenOptions::new()
        .write(true)
        .open(&log)
        .unwrap()
        .set_len(0)
        .unwrap();
    // The copy was finished after the writer's last append (a slow copy, or
    // the same clock tick): it counts as changed since.
    fs::File::options()
        .write(true)
        .open(&copy)
        .unwrap()
        .set_modified(std::time::SystemTime::now())
        .unwrap();
    p.stdout_paused.store(false, Ordering::SeqCst);
    p.wait_stderr("are lost", LONG);
    append(&log, lines("new", 10).as_bytes());
    wait_until("the new lines", LONG, || {
        p.stdout_bytes().ends_with(lines("new", 10).as_bytes())
    });
    let lost = format!(
        "sidecar_logs_bytes_lost_total{{file=\"{}\"}}",
        log.display()
    );
    let lost = metric(&p, &lost) as usize;
    assert!(stop(&mut p).success());
    let out = p.stdout_bytes();
    let stderr = p.stderr_text();
    assert!(lost > 0 && lost <= unread.len(), "{lost}: {stderr}");
    assert!(out.starts_with(head.as_bytes()), "{stderr}");
    let mid = &out[head.len()..out.len() - lines("new", 10).len()];
    // What was read is relayed, and the rest counted lost; the last line
    // read may be partial, relayed with a newline added.
    let read = unread.len() - lost;
    assert!(read < unread.len() / 2, "read {read} bytes: {stderr}");
    assert_eq!(&mid[..read], &unread.as_bytes()[..read], "{stderr}");
    assert!(
        mid.len() == read || (mid.len() == read + 1 && mid[read] == b'\n'),
        "{} bytes relayed, {read} read: {stderr}",
        mid.len()
    );
}

/// SIGTERM while the relay reads a rotated file with hundreds of MiB left
/// (live, and after a restart, finishing it as an orphan): it stops within
/// `--drain-timeout`, exits 0, counts and reports what it left unread, and
/// a restart goes on exactly where it stopped.
#[test]
fn sigterm_while_a_huge_rotated_file_is_read_stops_within_the_drain_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let (log, state) = (dir.path().join("app.log"), dir.path().join("state"));
    let args = [
        "--state-dir",
        state.to_str().unwrap(),
        "--drain-timeout",
        "100ms",
        log.to_str().unwrap(),
    ];
    fs::write(&log, "first\n").unwrap();
    let mut a = relay(&args);
    a.wait_lines(1, LONG);
    a.signal(nix::sys::signal::Signal::SIGSTOP);
    // 200 MiB more, then the file is rotated away and a new one created.
    let line = format!("{:>99}\n", "x");
    let chunk = line.repeat(10_000);
    let mut big = fs::OpenOptions::new().append(true).open(&log).unwrap();
    for _ in 0..210 {
        std::io::Write::write_all(&mut big, chunk.as_bytes()).unwrap();
    }
    drop(big);
    let total = 6 + 210 * chunk.len();
    fs::rename(&log, dir.path().join("app.log.1")).unwrap();
    fs::write(&log, "after\n").unwrap();
    a.signal(nix::sys::signal::Signal::SIGCONT);
    a.wait_stderr("was rotated", LONG);
    let asked = Instant::now();
    a.terminate();
    let status = a.wait(LONG);
    let took = asked.elapsed();
    let stderr = a.stderr_text();
    assert!(status.success(), "{status}: {stderr}");
    assert!(took < Duration::from_secs(3), "took {took:?}: {stderr}");
    let relayed = a.stdout_bytes().len();
    assert!(
        relayed < total,
        "read on past the drain timeout: {relayed} of {total} bytes: {stderr}"
    );
    assert_eq!(relayed % line.len(), 6 % line.len(), "whole lines only");
    // Unread: the rest of the rotated file, and the new file's line.
    let left = total - relayed + 6;
    assert!(
        stderr.contains(&format!(
            "stopping with {left} bytes of 2 file(s) not relayed"
        )),
        "{stderr}"
    );
    // Stopped again while it finishes that file after the restart.
    let mut all = vec!["logs", "--admin", "127.0.0.1:0"];
    all.extend_from_slice(&args);
    let mut b = Proc::start(&all);
    b.wait_stderr("rotated while the relay was down", LONG);
    let asked = Instant::now();
    b.terminate();
    let status = b.wait(LONG);
    let took = asked.elapsed();
    assert!(status.success(), "{status}: {}", b.stderr_text());
    assert!(
        took < Duration::from_secs(3),
        "took {took:?}: {}",
        b.stderr_text()
    );
    let mut c = relay(&args);
    wait_until("the rest relayed", LONG, || {
        c.stdout.lock().unwrap().ends_with(b"after\n")
    });
    assert!(stop(&mut c).success());
    let mut out = a.stdout_bytes();
    out.extend_from_slice(&b.stdout_bytes());
    out.extend_from_slice(&c.stdout_bytes());
    assert_eq!(
        out.len(),
        total + 6,
        "{}\n{}",
        b.stderr_text(),
        c.stderr_text()
    );
    assert!(out.starts_with(b"first\n") && out.ends_with(b"after\n"));
    assert!(
        out[6..total]
            .chunks(line.len())
            .all(|l| l == line.as_bytes()),
        "each line once, whole"
    );
}

/// The followed path is a symlink into another directory (as Kubernetes'
/// /var/log/containers links are): the writer rotates the target there,
/// once and then twice while the relay is stopped, then while it is down.
/// Every line comes out once, in order: the target's directory is watched
/// and searched too.
#[test]
fn a_symlinked_path_whose_target_rotates_in_another_directory_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    fs::create_dir(&a).unwrap();
    fs::create_dir(&b).unwrap();
    let (link, real) = (a.join("app.log"), b.join("real.log"));
    let (one, two) = (b.join("real.log.1"), b.join("real.log.2"));
    std::os::unix::fs::symlink(&real, &link).unwrap();
    fs::write(&real, lines("f1", 3)).unwrap();
    let state = dir.path().join("state");
    let args = [
        "--state-dir",
        state.to_str().unwrap(),
        link.to_str().unwrap(),
    ];
    let mut p = relay(&args);
    p.wait_lines(3, LONG);
    let rotate = |content: String| {
        if one.exists() {
            fs::rename(&one, &two).unwrap();
        }
        fs::rename(&real, &one).unwrap();
        fs::write(&real, content).unwrap();
    };
    p.signal(nix::sys::signal::Signal::SIGSTOP);
    append(&real, lines("f1-unread", 2).as_bytes());
    rotate(lines("f2", 3));
    p.signal(nix::sys::signal::Signal::SIGCONT);
    p.wait_lines(8, LONG);
    // Twice: the file in between is only beside the target.
    p.signal(nix::sys::signal::Signal::SIGSTOP);
    append(&real, lines("f2-unread", 2).as_bytes());
    rotate(lines("f3", 3));
    rotate(lines("f4", 3));
    p.signal(nix::sys::signal::Signal::SIGCONT);
    // New lines are seen without a poll: the target's directory is watched.
    append(&real, lines("f4-more", 2).as_bytes());
    let want = ["f1", "f1-unread", "f2", "f2-unread", "f3", "f4", "f4-more"]
        .iter()
        .map(|g| lines(g, if g.contains('-') { 2 } else { 3 }))
        .collect::<String>();
    wait_until("every line", Duration::from_secs(20), || {
        p.stdout_bytes().len() >= want.len()
    });
    assert_relayed(&mut p, &want, "live");
    // Rotated while no relay runs: the restarted one finds the old file
    // beside the target, and goes on from where the first one stopped.
    append(&real, lines("f4-down", 2).as_bytes());
    rotate(lines("f5", 3));
    let mut q = relay(&args);
    let want = lines("f4-down", 2) + &lines("f5", 3);
    wait_until(
        "the lines written while down",
        Duration::from_secs(20),
        || q.stdout_bytes().len() >= want.len(),
    );
    assert_relayed(&mut q, &want, "after the restart");
}

/// A burst of short-lived files under a glob while the relay is stopped:
/// 150 files appear, half of them are deleted before it could open them.
/// Those that stayed (more than it holds open ahead of their turn) are
/// relayed whole; the others are counted lost, under the glob, with a
/// warning, never silently.
#[test]
fn short_lived_files_under_a_glob_that_could_not_be_read_are_counted_lost() {
    let dir = tempfile::tempdir().unwrap();
    let pattern = format!("{}/*.log", dir.path().display());
    let mut p = relay(&[&pattern]);
    p.signal(nix::sys::signal::Signal::SIGSTOP);
    for f in 0..150 {
        let path = dir.path().join(format!("job-{f}.log"));
        fs::write(&path, lines(&format!("job{f}"), 3)).unwrap();
        if f % 2 == 1 {
            fs::remove_file(&path).unwrap();
        }
    }
    p.signal(nix::sys::signal::Signal::SIGCONT);
    p.wait_lines(75 * 3, LONG);
    let lost = format!("sidecar_logs_files_lost_total{{file=\"{pattern}\"}}");
    wait_until("the lost files counted", Duration::from_secs(10), || {
        metric(&p, &lost) >= 75.0
    });
    assert_eq!(metric(&p, &lost), 75.0);
    assert!(stop(&mut p).success());
    let stderr = p.stderr_text();
    assert!(
        stderr.contains(&format!("appeared under {pattern}")),
        "{stderr}"
    );
    let out = String::from_utf8_lossy(&p.stdout_bytes()).to_string();
    for f in (0..150).step_by(2) {
        let want = lines(&format!("job{f}"), 3);
        assert!(out.contains(&want), "job {f} missing: {stderr}");
    }
    assert_eq!(out.lines().count(), 75 * 3);
}

/// A checkpoint written before the compact format (version 1: pretty JSON,
/// the first bytes in hex) is read: the relay resumes where it says, if the
/// file still starts with those bytes, and else reads it from its start.
#[test]
fn a_checkpoint_in_the_version_1_format_is_resumed() {
    for same_start in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let (log, state) = (dir.path().join("app.log"), dir.path().join("state"));
        let (done, rest) = (lines("relayed before", 40), lines("not yet", 5));
        fs::write(&log, format!("{done}{rest}")).unwrap();
        let meta = fs::metadata(&log).unwrap();
        let first = if same_start {
            done.clone()
        } else {
            done.replace("relayed", "RELAYED")
        };
        let hex: String = first.as_bytes()[..256]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let entry = format!(
            r#"{{"label": {log:?}, "path": {log:?}, "dev": {}, "ino": {}, "fingerprint": "{hex}", "offset": {}, "open": true}}"#,
            meta.dev(),
            meta.ino(),
            done.len()
        );
        fs::create_dir(&state).unwrap();
        let v1 = format!("{{\n  \"version\": 1,\n  \"files\": [\n    {entry}\n  ]\n}}");
        fs::write(state.join("sidecar-logs.state.json"), v1).unwrap();
        let mut p = relay(&[
            "--state-dir",
            state.to_str().unwrap(),
            log.to_str().unwrap(),
        ]);
        let want = if same_start {
            rest
        } else {
            format!("{done}{rest}")
        };
        p.wait_lines(want.lines().count(), LONG);
        assert_relayed(&mut p, &want, &format!("same first bytes: {same_start}"));
    }
}
