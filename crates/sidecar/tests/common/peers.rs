//! Independent peers in Python (tests/py): h11, a strict HTTP/1.1 parser,
//! as an upstream that records what the proxy sends and as a checker of
//! what the proxy answers; grpcio as a real gRPC server and client.
//! Each runs as a child process that exits when its stdin closes.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::Value;

use super::wait_until;

pub fn python() -> String {
    std::env::var("SIDECAR_TEST_PYTHON").unwrap_or_else(|_| "python3".into())
}

pub fn script(name: &str) -> String {
    format!("{}/tests/py/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// A Python peer: stdin kept open (closing it stops the peer).
pub struct Peer {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Option<BufReader<ChildStdout>>,
    stderr: Arc<Mutex<String>>,
}

impl Peer {
    pub fn start(script_name: &str, args: &[&str]) -> Self {
        let mut child = Command::new(python())
            .arg(script(script_name))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {} (set SIDECAR_TEST_PYTHON, or run ./scripts/test, which installs \
                     the test packages): {e}",
                    python()
                )
            });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err = child.stderr.take().unwrap();
        let sink = Arc::clone(&stderr);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Self {
            stdin: child.stdin.take(),
            stdout: child.stdout.take().map(BufReader::new),
            child,
            stderr,
        }
    }

    pub fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The next line the peer prints (panics with its stderr if it ends).
    pub fn line(&mut self) -> String {
        let mut line = String::new();
        let n = self.stdout.as_mut().unwrap().read_line(&mut line).unwrap();
        if n == 0 {
            std::thread::sleep(Duration::from_millis(200));
            panic!("the Python peer ended; its stderr:\n{}", self.stderr_text());
        }
        line
    }

    /// Reads `LISTENING <port>` and returns the address.
    pub fn listening(&mut self) -> SocketAddr {
        let line = self.line();
        let port: u16 = line
            .trim()
            .strip_prefix("LISTENING ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    pub fn send_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        stdin.write_all(line.as_bytes()).unwrap();
        stdin.write_all(b"\n").unwrap();
        stdin.flush().unwrap();
    }

    fn take_stdout(&mut self) -> BufReader<ChildStdout> {
        self.stdout.take().unwrap()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// h11 as an upstream: every request the proxy sends is parsed strictly
/// and recorded (or recorded as an error).
pub struct H11Upstream {
    pub addr: SocketAddr,
    records: Arc<Mutex<Vec<Value>>>,
    syncs: Mutex<usize>,
    peer: Peer,
}

impl H11Upstream {
    pub fn start() -> Self {
        let mut peer = Peer::start("h11_peer.py", &["upstream"]);
        let addr = peer.listening();
        let records = Arc::new(Mutex::new(Vec::new()));
        let store = Arc::clone(&records);
        let mut out = peer.take_stdout();
        std::thread::spawn(move || {
            let mut line = String::new();
            while out.read_line(&mut line).unwrap_or(0) > 0 {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    store.lock().unwrap().push(v);
                }
                line.clear();
            }
        });
        Self {
            addr,
            records,
            syncs: Mutex::new(0),
            peer,
        }
    }

    /// Every record so far (requests and errors).
    pub fn records(&self) -> Vec<Value> {
        self.records.lock().unwrap().clone()
    }

    /// The records of requests that came since the last call: a marker
    /// request sent straight to the upstream (it serves connections on
    /// threads) ends the batch once it is recorded.
    pub fn take_batch(&self) -> Vec<Value> {
        let n = {
            let mut syncs = self.syncs.lock().unwrap();
            *syncs += 1;
            *syncs
        };
        let marker = format!("/__sync__/{n}");
        let mut s = TcpStream::connect(self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(
            format!("GET {marker} HTTP/1.1\r\nHost: sync\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .unwrap();
        let _ = s.read_to_end(&mut Vec::new());
        let is_marker = |v: &Value| v["target"].as_str() == Some(marker.as_str());
        wait_until("the sync marker recorded", Duration::from_secs(10), || {
            self.records.lock().unwrap().iter().any(is_marker)
        });
        let mut records = self.records.lock().unwrap();
        let at = records.iter().position(is_marker).unwrap();
        let batch: Vec<Value> = records.drain(..=at).collect();
        batch[..batch.len() - 1]
            .iter()
            .filter(|v| !v["target"].as_str().unwrap_or("").starts_with("/__sync__/"))
            .cloned()
            .collect()
    }

    pub fn stderr_text(&self) -> String {
        self.peer.stderr_text()
    }
}

/// The body of an upstream record.
pub fn record_body(v: &Value) -> Vec<u8> {
    B64.decode(v["body_b64"].as_str().unwrap_or("")).unwrap()
}

/// h11 as a strict client: checks the bytes a client got on one connection.
pub struct H11Checker {
    peer: Peer,
}

impl H11Checker {
    pub fn start() -> Self {
        Self {
            peer: Peer::start("h11_peer.py", &["check-responses"]),
        }
    }

    /// The responses h11 reads in `data` for requests with these `methods`
    /// (in order): `{"responses": [...], "error": ..., "unused_bytes": n}`.
    pub fn check(&mut self, methods: &[&str], data: &[u8]) -> Value {
        let input = serde_json::json!({"methods": methods, "data_b64": B64.encode(data)});
        self.peer.send_line(&input.to_string());
        serde_json::from_str(&self.peer.line()).unwrap()
    }
}

/// A response body as h11 read it.
pub fn response_body(v: &Value) -> Vec<u8> {
    B64.decode(v["body_b64"].as_str().unwrap_or("")).unwrap()
}

/// Sends `raw` on a new connection to `addr`, closes the sending side, and
/// reads until the server closes (at most 10 s).
pub fn exchange(addr: SocketAddr, raw: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(raw);
    let _ = s.shutdown(Shutdown::Write);
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    got
}

/// The gRPC peer (grpcio): a server, and a client run once.
pub struct GrpcServer {
    pub addr: SocketAddr,
    peer: Peer,
}

impl GrpcServer {
    pub fn start() -> Self {
        let mut peer = Peer::start("grpc_peer.py", &["server"]);
        let addr = peer.listening();
        Self { addr, peer }
    }

    pub fn stderr_text(&self) -> String {
        self.peer.stderr_text()
    }
}

/// Runs the gRPC client's scenarios against `target` (`--only` a subset).
pub fn grpc_client(target: SocketAddr, only: Option<&str>) -> Value {
    let mut cmd = Command::new(python());
    cmd.arg(script("grpc_peer.py"))
        .arg("client")
        .arg(target.to_string());
    if let Some(only) = only {
        cmd.args(["--only", only]);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "gRPC client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "gRPC client output is not JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}
