//! Starting `sidecar proxy` and demo services for tests, on ports the
//! system picks (`127.0.0.1:0`): the bound addresses are read from what the
//! processes log, so no port is ever probed and bound again.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;

use super::peers::H11Checker;
use super::{Proc, http_get, wait_until};

/// A running proxy and its admin address.
pub struct Proxy {
    pub proc: Proc,
    pub admin: SocketAddr,
}

impl Proxy {
    /// Starts `sidecar` with `args` (which give `--admin 127.0.0.1:0`) and waits for /ready.
    pub fn start(args: &[&str]) -> Self {
        let proc = Proc::start(args);
        let admin = proc.admin_addr();
        wait_until("proxy ready", Duration::from_secs(10), || {
            http_get(admin, "/ready").0 == 200
        });
        Self { proc, admin }
    }

    /// A single-route proxy listening on a port the system picks.
    pub fn single(upstream: SocketAddr, service: &str, extra: &[&str]) -> Self {
        let up = upstream.to_string();
        let mut args = vec![
            "proxy",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            &up,
            "--service",
            service,
            "--admin",
            "127.0.0.1:0",
        ];
        args.extend_from_slice(extra);
        Self::start(&args)
    }

    /// A proxy from a YAML config (its listeners may use `127.0.0.1:0`).
    pub fn with_config(yaml: &str, extra: &[&str]) -> (Self, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy.yaml");
        std::fs::write(&path, yaml).unwrap();
        let mut args = vec![
            "proxy",
            "--config",
            path.to_str().unwrap(),
            "--admin",
            "127.0.0.1:0",
        ];
        args.extend_from_slice(extra);
        (Self::start(&args), dir)
    }

    /// The address listener `name` is bound to (from the proxy's log).
    pub fn listener(&self, name: &str) -> SocketAddr {
        logged(&self.proc, &format!("listener {name} on http://"))
    }

    /// The address of a single-route proxy's listener.
    pub fn addr(&self) -> SocketAddr {
        let text = self.proc.stderr_text();
        let name = if text.contains("listener outbound on") {
            "outbound"
        } else {
            "inbound"
        };
        self.listener(name)
    }

    pub fn metrics(&self) -> String {
        http_get(self.admin, "/metrics").2
    }
}

/// The socket address logged right after `marker` (an `ip:port` or
/// `[ip6]:port`, possibly followed by `:` or `/`).
pub fn logged(proc: &Proc, marker: &str) -> SocketAddr {
    proc.wait_stderr(marker, Duration::from_secs(10));
    let text = proc.stderr_text();
    let start = text.find(marker).unwrap() + marker.len();
    let rest = &text[start..];
    let end = rest
        .find(|c: char| !(c.is_ascii_hexdigit() || matches!(c, '.' | ':' | '[' | ']')))
        .unwrap_or(rest.len());
    rest[..end].trim_end_matches(':').parse().unwrap()
}

/// A demo service on a port the system picks (optionally calling `call`).
pub fn demo_service(name: &str, call: Option<&str>) -> (Proc, SocketAddr) {
    let mut args = vec![
        "demo-service".to_string(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--name".into(),
        name.into(),
    ];
    if let Some(url) = call {
        args.extend(["--call".into(), url.into()]);
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let p = Proc::start(&refs);
    let addr = logged(&p, &format!("demo service {name} on http://"));
    (p, addr)
}

/// The same proxy twice: fast path on, and off (`--no-fast-path`).
pub fn both_paths(upstream: SocketAddr, extra: &[&str]) -> [(&'static str, Proxy); 2] {
    let mut slow = vec!["--no-fast-path"];
    slow.extend_from_slice(extra);
    [
        ("fast path", Proxy::single(upstream, "svc", extra)),
        ("general path", Proxy::single(upstream, "svc", &slow)),
    ]
}

/// The status codes of the responses in `data` (one connection's answers to
/// requests with `methods`), as h11 reads them; panics if h11 cannot read
/// them or bytes are left over.
pub fn statuses(checker: &mut H11Checker, methods: &[&str], data: &[u8]) -> Vec<u64> {
    let v = checker.check(methods, data);
    assert!(
        v["error"].is_null() && v["unused_bytes"] == 0,
        "h11 refused the proxy's responses: {v}\n{}",
        String::from_utf8_lossy(data)
    );
    v["responses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_u64().unwrap())
        .collect()
}

/// The targets of the requests an upstream recorded.
pub fn targets(batch: &[Value]) -> Vec<String> {
    batch
        .iter()
        .map(|r| r["target"].as_str().unwrap_or("<error>").to_string())
        .collect()
}
