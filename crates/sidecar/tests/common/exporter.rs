//! `sidecar postgres-exporter` for tests: a command that sees only the
//! environment the test gives it, scrapes, and values of a scrape.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Command;

use super::prom::{self, Family};
use super::{Proc, http_get};

/// The exporter on a port chosen at run time, with `env` (and none of the
/// caller's data source, custom queries or config file variables) and `args`.
pub fn command<K: AsRef<str>, V: AsRef<str>>(env: &[(K, V)], args: &[&str]) -> Command {
    let mut cmd = Command::new(super::BIN);
    cmd.arg("postgres-exporter")
        .args(["--web.listen-address", "127.0.0.1:0"])
        .args(args);
    for var in [
        "DATA_SOURCE_NAME",
        "DATA_SOURCE_URI",
        "DATA_SOURCE_USER",
        "DATA_SOURCE_PASS",
        "PG_EXPORTER_EXTEND_QUERY_PATH",
        "PG_EXPORTER_CONFIG_FILE",
    ] {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k.as_ref(), v.as_ref());
    }
    cmd
}

/// [`command`] started, with the address it serves on.
pub fn start<K: AsRef<str>, V: AsRef<str>>(env: &[(K, V)], args: &[&str]) -> (Proc, SocketAddr) {
    let p = Proc::start_with(&mut command(env, args));
    let addr = p.logged_addr(" on http://");
    (p, addr)
}

/// The telemetry path's text (status 200).
pub fn scrape_text(addr: SocketAddr) -> String {
    let (status, _, body) = http_get(addr, "/metrics");
    assert_eq!(status, 200, "{body}");
    body
}

pub fn scrape(addr: SocketAddr) -> BTreeMap<String, Family> {
    prom::parse(&scrape_text(addr))
}

/// The value of the first series of `name` that has all of `labels`.
pub fn value(
    families: &BTreeMap<String, Family>,
    name: &str,
    labels: &[(&str, &str)],
) -> Option<f64> {
    families.get(name)?.samples.iter().find_map(|(l, v)| {
        labels
            .iter()
            .all(|(k, want)| l.get(*k).map(String::as_str) == Some(*want))
            .then_some(*v)
    })
}

/// `/probe?target=<target>` (status 200), parsed.
pub fn probe(addr: SocketAddr, target: &str) -> BTreeMap<String, Family> {
    let escaped = target
        .replace('/', "%2F")
        .replace('?', "%3F")
        .replace('=', "%3D");
    let (status, _, body) = http_get(addr, &format!("/probe?target={escaped}"));
    assert_eq!(status, 200, "{body}");
    prom::parse(&body)
}
