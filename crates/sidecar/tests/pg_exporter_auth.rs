//! `sidecar postgres-exporter --config.file`: upstream's auth modules for
//! `/probe?target=...&auth_module=NAME` (Prometheus' multi-target pattern),
//! against real PostgreSQL: two databases reachable only by their own roles,
//! a TLS server reached with a module's `sslmode=verify-full`, and no
//! password ever shown in logs, metrics, the landing page or a 400.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use common::pg::{self, PgServer};
use common::prom::{self, Family};
use common::tls::{self, MONITOR, MONITOR_PASSWORD, Pki};
use common::{Proc, http_get};

const PASS_A: &str = "pw-A:#@/?&'\"x";
const PASS_B: &str = "pw-B secret%20";
const WRONG: &str = "pw-wrong-7731";

/// The exporter with only `--config.file` (no data source: /probe only),
/// logging at debug level so that every message is seen.
fn exporter(config: &Path) -> (Proc, SocketAddr) {
    let no_env: [(&str, &str); 0] = [];
    common::exporter::start(
        &no_env,
        &[
            "--config.file",
            config.to_str().unwrap(),
            "--log-level",
            "debug",
        ],
    )
}

fn write_config(dir: &Path, text: &str) -> std::path::PathBuf {
    let path = dir.join("postgres_exporter.yml");
    std::fs::write(&path, text).unwrap();
    path
}

/// YAML's single-quoted scalar.
fn quoted(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// `/probe` of `target` with `module`: status and body.
fn probe(addr: SocketAddr, target: &str, module: &str) -> (u16, String) {
    let (status, _, body) = http_get(
        addr,
        &format!("/probe?target={}&auth_module={module}", encode(target)),
    );
    (status, body)
}

fn families(body: &str) -> BTreeMap<String, Family> {
    prom::parse(body)
}

fn pg_up(body: &str) -> Option<f64> {
    families(body)
        .get("pg_up")?
        .samples
        .first()
        .map(|(_, v)| *v)
}

/// The relations `pg_stat_user_tables_n_live_tup` reports.
fn tables(body: &str) -> Vec<String> {
    let fams = families(body);
    let Some(f) = fams.get("pg_stat_user_tables_n_live_tup") else {
        return Vec::new();
    };
    f.samples
        .iter()
        .filter_map(|(labels, _)| labels.get("relname").cloned())
        .collect()
}

fn assert_no_secret(what: &str, text: &str) {
    for secret in [PASS_A, PASS_B, WRONG, MONITOR_PASSWORD] {
        assert!(!text.contains(secret), "{what} shows a password:\n{text}");
    }
    // Nor its URL-encoded form.
    for secret in [PASS_A, PASS_B] {
        assert!(
            !text.contains(&encode(secret)),
            "{what} shows a password:\n{text}"
        );
    }
}

/// Two databases, each reachable only by its own role and password; one
/// exporter probes both with the module of each.
#[test]
fn two_databases_probed_with_their_own_auth_modules() {
    let server = PgServer::start(&pg::default_bin_dir(), &[]).unwrap();
    let mut c = pg::client(&server, "postgres");
    c.batch_execute(&format!(
        "CREATE ROLE mon_a LOGIN PASSWORD '{a}' IN ROLE pg_monitor;
         CREATE ROLE mon_b LOGIN PASSWORD '{b}' IN ROLE pg_monitor;",
        a = PASS_A.replace('\'', "''"),
        b = PASS_B.replace('\'', "''"),
    ))
    .unwrap();
    c.batch_execute("CREATE DATABASE app_a").unwrap();
    c.batch_execute("CREATE DATABASE app_b").unwrap();
    c.batch_execute(
        "REVOKE CONNECT ON DATABASE app_a, app_b FROM PUBLIC;
         GRANT CONNECT ON DATABASE app_a TO mon_a;
         GRANT CONNECT ON DATABASE app_b TO mon_b;",
    )
    .unwrap();
    pg::client(&server, "app_a")
        .batch_execute("CREATE TABLE table_of_a (x int); INSERT INTO table_of_a VALUES (1)")
        .unwrap();
    pg::client(&server, "app_b")
        .batch_execute("CREATE TABLE table_of_b (x int); INSERT INTO table_of_b VALUES (1)")
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "auth_modules:\n\
             \x20 mod_a:\n\
             \x20   type: userpass\n\
             \x20   userpass:\n\
             \x20     username: mon_a\n\
             \x20     password: {}\n\
             \x20   options:\n\
             \x20     sslmode: disable\n\
             \x20     connect_timeout: 5\n\
             \x20 mod_b:\n\
             \x20   type: userpass\n\
             \x20   userpass: {{username: mon_b, password: {}}}\n\
             \x20   options: {{sslmode: disable}}\n\
             \x20 wrong:\n\
             \x20   type: userpass\n\
             \x20   userpass: {{username: mon_a, password: {WRONG}}}\n",
            quoted(PASS_A),
            quoted(PASS_B)
        ),
    );
    let (p, addr) = exporter(&config);
    let port = server.port;
    let target_a = format!("127.0.0.1:{port}/app_a");
    let target_b = format!("127.0.0.1:{port}/app_b");

    let mut bodies = Vec::new();
    // Each database with its own module: up, and its own tables.
    let (status, body) = probe(addr, &target_a, "mod_a");
    assert_eq!(status, 200, "{body}");
    assert_eq!(pg_up(&body), Some(1.0), "{}", p.stderr_text());
    assert_eq!(tables(&body), ["table_of_a"]);
    bodies.push(body);
    let (status, body) = probe(addr, &target_b, "mod_b");
    assert_eq!(status, 200, "{body}");
    assert_eq!(pg_up(&body), Some(1.0), "{}", p.stderr_text());
    assert_eq!(tables(&body), ["table_of_b"]);
    bodies.push(body);
    // The module's credentials are what logs in: mod_a cannot reach app_b,
    // and a wrong password is pg_up 0.
    for (target, module) in [(&target_b, "mod_a"), (&target_a, "wrong")] {
        let (status, body) = probe(addr, target, module);
        assert_eq!(status, 200, "{body}");
        assert_eq!(pg_up(&body), Some(0.0), "{module} on {target}");
        bodies.push(body);
    }
    // A full URI as the target: the module's user and password replace the
    // target's, and its sslmode=disable replaces the target's require (this
    // server has no TLS, so require alone would fail).
    let uri = format!("postgresql://nobody:nothing@127.0.0.1:{port}/app_b?sslmode=require");
    let (status, body) = probe(addr, &uri, "mod_b");
    assert_eq!(status, 200, "{body}");
    assert_eq!(pg_up(&body), Some(1.0), "{}", p.stderr_text());
    bodies.push(body);
    // A key=value target, likewise.
    let kv = format!("host=127.0.0.1 port={port} dbname=app_a sslmode=require");
    let (_, body) = probe(addr, &kv, "mod_a");
    assert_eq!(pg_up(&body), Some(1.0), "{}", p.stderr_text());
    bodies.push(body);

    // An unknown module: 400 with the known names, nothing else.
    let (status, body) = probe(addr, &target_a, "nope");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("\"nope\""), "{body}");
    assert!(body.contains("mod_a, mod_b, wrong"), "{body}");
    assert!(!body.contains("mon_a"), "{body}");
    assert_no_secret("the 400", &body);

    // No password in the metrics, the landing page or the log.
    let (_, _, metrics) = http_get(addr, "/metrics");
    let (_, _, landing) = http_get(addr, "/");
    assert_no_secret("/metrics", &metrics);
    assert_no_secret("the landing page", &landing);
    // Upstream v0.20's families about its config file: read, and when.
    let own = families(&metrics);
    let sample = |name: &str| own[name].samples[0].1;
    assert_eq!(
        sample("postgres_exporter_config_last_reload_successful"),
        1.0
    );
    let read_at = sample("postgres_exporter_config_last_reload_success_timestamp_seconds");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(read_at > now - 600.0 && read_at <= now, "{read_at}");
    assert_eq!(sample("postgres_exporter_build_info"), 1.0);
    for body in &bodies {
        assert_no_secret("a /probe", body);
    }
    let log = p.stderr_text();
    assert!(log.contains("mod_a, mod_b, wrong"), "{log}");
    assert!(log.contains("probe of"), "debug logs are on: {log}");
    assert_no_secret("the log", &log);
}

/// A module's `sslmode=verify-full` and `sslrootcert` reach the connection
/// with the TLS semantics of a data source; the module's options win over
/// the target's.
#[test]
fn an_auth_module_with_verify_full_reaches_a_tls_server() {
    let Some(bin) = pg::bin_dirs().into_iter().find(|b| tls::has_ssl(b)) else {
        eprintln!("skipped: no PostgreSQL built with TLS here");
        return;
    };
    let pki = Pki::new();
    let server = tls::start(&bin, &pki);
    let dir = tempfile::tempdir().unwrap();
    let module = |name: &str, options: &str| {
        format!(
            "  {name}:\n    type: userpass\n    userpass: {{username: {MONITOR}, password: {MONITOR_PASSWORD}}}\n    options: {{{options}}}\n"
        )
    };
    let config = write_config(
        dir.path(),
        &format!(
            "auth_modules:\n{}{}{}",
            module(
                "verified",
                &format!("sslmode: verify-full, sslrootcert: {}", pki.ca.display())
            ),
            module(
                "other_ca",
                &format!(
                    "sslmode: verify-full, sslrootcert: {}",
                    pki.other_ca.display()
                )
            ),
            module("plain", "sslmode: disable"),
        ),
    );
    let (p, addr) = exporter(&config);
    let port = server.port;
    let cases = [
        (format!("localhost:{port}/postgres"), "verified", 1.0),
        // The target's own sslmode is replaced by the module's.
        (
            format!("localhost:{port}/postgres?sslmode=disable"),
            "verified",
            1.0,
        ),
        // The server's certificate is not signed by that CA.
        (format!("localhost:{port}/postgres"), "other_ca", 0.0),
        // pg_hba.conf accepts this role only over TLS.
        (format!("localhost:{port}/postgres"), "plain", 0.0),
    ];
    for (target, module, up) in cases {
        let (status, body) = probe(addr, &target, module);
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            pg_up(&body),
            Some(up),
            "{module} on {target} ({}):\n{}",
            server.version,
            p.stderr_text()
        );
        assert_no_secret("a /probe", &body);
    }
    let log = p.stderr_text();
    assert!(
        log.contains("not signed by a CA"),
        "the failure is explained: {log}"
    );
    assert_no_secret("the log", &log);
}

/// A config file that cannot be used stops the exporter at start, naming
/// the problem and its line, never the password.
#[test]
fn a_bad_config_file_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            format!(
                "auth_modules:\n  a:\n    type: userpass\n    userpass: {{username: u, password: {WRONG}}}\n    option: {{sslmode: disable}}\n"
            ),
            vec!["unknown field `option`".to_string(), "line 5".into()],
        ),
        (
            format!(
                "auth_modules:\n  a:\n    type: userpass\n    userpass: {{username: u, password: {WRONG}}}\n    options: {{sslmode: verify-ca}}\n"
            ),
            vec!["auth module \"a\"".into(), "set sslrootcert".into()],
        ),
        (
            "auth_modules:\n  a:\n    type: userpass\n    userpass: {username: u}\n".into(),
            vec!["set userpass.password".into()],
        ),
    ];
    for (text, says) in cases {
        let config = write_config(dir.path(), &text);
        let out = Command::new(common::BIN)
            .args(["postgres-exporter", "--web.listen-address", "127.0.0.1:0"])
            .arg("--config.file")
            .arg(&config)
            .env_remove("DATA_SOURCE_NAME")
            .env_remove("DATA_SOURCE_URI")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{text}: started:\n{err}");
        for s in &says {
            assert!(err.contains(s.as_str()), "{text}: `{s}` missing in:\n{err}");
        }
        assert!(err.contains("postgres_exporter.yml"), "{err}");
        assert_no_secret("the refusal", &err);
    }
    // A file named on the command line must exist.
    let out = Command::new(common::BIN)
        .args(["postgres-exporter", "--web.listen-address", "127.0.0.1:0"])
        .args(["--config.file", "/nonexistent/pe.yml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/pe.yml"), "{err}");
}
