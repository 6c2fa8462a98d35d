//! Helpers for integration tests: run the real `sidecar` binary, read what it prints.
#![allow(dead_code, clippy::unwrap_used)]

pub mod cluster;
pub mod exporter;
pub mod injector;
pub mod kube;
pub mod logs;
pub mod peers;
pub mod pg;
pub mod prom;
pub mod proxy;
pub mod receiver;
pub mod tls;
pub mod workloads;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_sidecar");

/// Runs `cmd` to its end with `input` on its stdin (written from a thread
/// of its own, so a large output cannot block it), stdout and stderr
/// captured. `what` says what is missing when it cannot start.
pub fn run_with_input(cmd: &mut Command, input: &[u8], what: &str) -> std::process::Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let mut stdin = child.stdin.take().unwrap();
    std::thread::scope(|s| {
        s.spawn(move || stdin.write_all(input).unwrap());
        child.wait_with_output().unwrap()
    })
}

/// Polls `cond` until it holds or `timeout` passes; panics with `what` on timeout.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A running `sidecar` child whose stdout and stderr are collected.
pub struct Proc {
    pub child: Child,
    pub stdout: Arc<Mutex<Vec<u8>>>,
    newlines: Arc<std::sync::atomic::AtomicUsize>,
    pub stderr: Arc<Mutex<String>>,
    /// While set, stdout is not read: the relay's writes block once the pipe is full.
    pub stdout_paused: Arc<std::sync::atomic::AtomicBool>,
    readers: Vec<JoinHandle<()>>,
}

impl Proc {
    pub fn start(args: &[&str]) -> Self {
        Self::start_with(Command::new(BIN).args(args))
    }

    pub fn start_with(cmd: &mut Command) -> Self {
        Self::start_reading(cmd, false)
    }

    /// Starts with stdout not read (see [`Proc::stdout_paused`]).
    pub fn start_paused(args: &[&str]) -> Self {
        Self::start_reading(Command::new(BIN).args(args), true)
    }

    fn start_reading(cmd: &mut Command, paused: bool) -> Self {
        let mut child = cmd
            // SIDECAR_TEST_LOG=debug shows more of what the binary does.
            .env(
                "SIDECAR_LOG",
                std::env::var("SIDECAR_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start sidecar");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        let newlines = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let stdout_paused = Arc::new(std::sync::atomic::AtomicBool::new(paused));
        let (o, e, nl, paused) = (
            Arc::clone(&stdout),
            Arc::clone(&stderr),
            Arc::clone(&newlines),
            Arc::clone(&stdout_paused),
        );
        let readers = vec![
            std::thread::spawn(move || {
                let mut buf = vec![0; 256 * 1024];
                loop {
                    while paused.load(std::sync::atomic::Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    match out.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            let count = buf[..n].iter().filter(|b| **b == b'\n').count();
                            o.lock().unwrap().extend_from_slice(&buf[..n]);
                            nl.fetch_add(count, std::sync::atomic::Ordering::SeqCst);
                        }
                    }
                }
            }),
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines() {
                    let Ok(line) = line else { break };
                    let mut e = e.lock().unwrap();
                    e.push_str(&line);
                    e.push('\n');
                }
            }),
        ];
        Self {
            child,
            stdout,
            newlines,
            stderr,
            stdout_paused,
            readers,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn stdout_bytes(&self) -> Vec<u8> {
        self.stdout.lock().unwrap().clone()
    }

    pub fn stdout_lines(&self) -> Vec<Vec<u8>> {
        let out = self.stdout.lock().unwrap();
        let mut lines: Vec<Vec<u8>> = out.split(|b| *b == b'\n').map(<[u8]>::to_vec).collect();
        if lines.last().is_some_and(Vec::is_empty) {
            lines.pop();
        }
        lines
    }

    pub fn count_newlines(&self) -> usize {
        self.newlines.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits until stdout holds at least `n` lines; on timeout, shows what the process said.
    pub fn wait_lines(&self, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.count_newlines() < n {
            if Instant::now() > deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {n} lines, got {}; stderr:\n{}",
                    self.count_newlines(),
                    self.stderr_text()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    pub fn wait_stderr(&self, needle: &str, timeout: Duration) {
        wait_until(&format!("`{needle}` on stderr"), timeout, || {
            self.stderr_text().contains(needle)
        });
    }

    /// The admin address the process logged ("admin server on http://ADDR").
    pub fn admin_addr(&self) -> SocketAddr {
        self.logged_addr("admin server on http://")
    }

    /// The address after `marker` in the process's log, once it appears.
    pub fn logged_addr(&self, marker: &str) -> SocketAddr {
        self.wait_stderr(marker, Duration::from_secs(10));
        let text = self.stderr_text();
        let start = text.find(marker).unwrap() + marker.len();
        let rest = &text[start..];
        let end = rest.find([' ', '\n', '/']).unwrap();
        rest[..end].parse().unwrap()
    }

    /// Sends `sig`. For SIGSTOP, also waits until every thread of the
    /// process has stopped: the kill is asynchronous, and a test that writes
    /// "while the relay is stopped" must not race a relay still running.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig).unwrap();
        if sig == nix::sys::signal::Signal::SIGSTOP {
            let tasks = format!("/proc/{}/task", self.pid());
            wait_until("the process to stop", Duration::from_secs(10), || {
                std::fs::read_dir(&tasks).unwrap().all(|t| {
                    let stat =
                        std::fs::read_to_string(t.unwrap().path().join("stat")).unwrap_or_default();
                    // The state follows the parenthesised command name.
                    stat.rsplit_once(") ")
                        .is_some_and(|(_, rest)| rest.starts_with('T') || rest.starts_with('t'))
                })
            });
        }
    }

    pub fn terminate(&self) {
        self.signal(nix::sys::signal::Signal::SIGTERM);
    }

    /// Waits for exit (with a deadline) and for the output readers to finish.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                for r in self.readers.drain(..) {
                    r.join().unwrap();
                }
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "process did not exit within {timeout:?}; stderr:\n{}",
                    self.stderr_text()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP/1.1 GET; returns (status, headers, body).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    raw_request(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"),
    )
}

/// Sends `raw` bytes and reads the answer until the server closes;
/// returns (status, headers, body). Invalid UTF-8 in the answer is replaced.
pub fn raw_request(addr: SocketAddr, raw: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(raw.as_bytes()).unwrap();
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let resp = String::from_utf8_lossy(&resp).into_owned();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, head.to_string(), body.to_string())
}

/// Appends bytes to a file (creating it).
pub fn append(path: &Path, bytes: &[u8]) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(bytes).unwrap();
}

/// Creates files in `dir` until one gets inode `ino` (ext4 and most disk
/// filesystems hand a freed inode out again at once); returns its path.
pub fn file_with_inode(dir: &Path, ino: u64, content: &str) -> std::path::PathBuf {
    let mut extra = Vec::new();
    for i in 0..2000 {
        let p = dir.join(format!("reuse-{i}"));
        std::fs::write(&p, content).unwrap();
        if std::fs::metadata(&p).unwrap().ino() == ino {
            for e in extra {
                std::fs::remove_file(e).unwrap();
            }
            return p;
        }
        extra.push(p);
    }
    panic!("this filesystem did not reuse inode {ino}; the test needs one that does (ext4)");
}
