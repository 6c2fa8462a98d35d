//! `sidecar postgres-exporter` over TLS, against real PostgreSQL servers with
//! `ssl = on` and certificates made by the test (common::tls), on every
//! version this machine has that was built with TLS.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::pg::{self, PgServer};
use common::prom::{self, Family};
use common::tls::{self, CERT_USER, MONITOR, MONITOR_PASSWORD, Pki};
use common::{Proc, http_get};

fn exporter(env: &[(&str, String)]) -> (Proc, SocketAddr) {
    common::exporter::start(env, &[])
}

fn scrape(addr: SocketAddr) -> BTreeMap<String, Family> {
    let (status, _, body) = http_get(addr, "/metrics");
    assert_eq!(status, 200, "{body}");
    prom::parse(&body)
}

fn pg_up(addr: SocketAddr) -> Option<f64> {
    scrape(addr).get("pg_up")?.samples.first().map(|(_, v)| *v)
}

fn name(dsn: String) -> Vec<(&'static str, String)> {
    vec![("DATA_SOURCE_NAME", dsn)]
}

/// The exporter with `env` reaches the server: pg_up 1, no warning.
fn connects(what: &str, env: &[(&str, String)]) -> Proc {
    let (p, addr) = exporter(env);
    // The first scrape opens the connections; no fixed wait, a deadline.
    let deadline = Instant::now() + Duration::from_secs(20);
    while pg_up(addr) != Some(1.0) {
        assert!(
            Instant::now() < deadline,
            "{what}: pg_up not 1 within 20s:\n{}",
            p.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !p.stderr_text().contains("cannot connect"),
        "{what}: {}",
        p.stderr_text()
    );
    p
}

/// The exporter with `env` cannot connect: pg_up 0 on every scrape, and one
/// warning that says `says`.
fn fails(what: &str, env: &[(&str, String)], says: &[&str]) -> String {
    let (p, addr) = exporter(env);
    for _ in 0..3 {
        assert_eq!(pg_up(addr), Some(0.0), "{what}: {}", p.stderr_text());
    }
    let log = p.stderr_text();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("cannot connect to"))
        .collect();
    assert_eq!(warnings.len(), 1, "{what}: one warning, got:\n{log}");
    for s in says {
        assert!(
            warnings[0].contains(s),
            "{what}: `{s}` missing in: {}",
            warnings[0]
        );
    }
    eprintln!("{what}: {}", warnings[0]);
    warnings[0].to_string()
}

/// The exporter's sessions on `server` that use TLS.
fn tls_sessions(server: &PgServer) -> i64 {
    let mut c = pg::client(server, "postgres");
    c.query_one(
        "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.application_name = 'sidecar-postgres-exporter' AND s.ssl",
        &[],
    )
    .unwrap()
    .get(0)
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// Every scenario against one server with `ssl = on`.
fn tls_scenarios(bin: &Path) {
    let pki = Pki::new();
    let server = tls::start(bin, &pki);
    let port = server.port;
    let v = &server.version;
    let ca = path(&pki.ca);
    let kv = |extra: &str| {
        format!(
            "host=localhost port={port} user={MONITOR} password={MONITOR_PASSWORD} dbname=postgres {extra}"
        )
    };

    // require: encrypted, nothing checked (the server's CA is unknown to us).
    // The role may only log in over TLS (pg_hba.conf), so pg_up 1 proves it.
    let p = connects(&format!("{v}: require"), &name(kv("sslmode=require")));
    assert!(
        tls_sessions(&server) >= 1,
        "{v}: the exporter's sessions use TLS"
    );
    drop(p);

    // verify-ca: the chain, not the name (the certificate does not name this host).
    connects(
        &format!("{v}: verify-ca"),
        &name(format!(
            "host=db.wrong.test hostaddr=127.0.0.1 port={port} user={MONITOR} password={MONITOR_PASSWORD} \
             dbname=postgres sslmode=verify-ca sslrootcert={ca}"
        )),
    );

    // verify-full by name (URI) and by address (DATA_SOURCE_URI, IP SAN),
    // with SCRAM channel binding required: the tls-server-end-point hash
    // the exporter sends must match the server's.
    connects(
        &format!("{v}: verify-full by name"),
        &name(format!(
            "postgresql://{MONITOR}:{MONITOR_PASSWORD}@localhost:{port}/postgres?sslmode=verify-full&sslrootcert={ca}"
        )),
    );
    connects(
        &format!("{v}: verify-full by address, channel binding"),
        &[
            (
                "DATA_SOURCE_URI",
                format!(
                    "127.0.0.1:{port}/postgres?sslmode=verify-full&sslrootcert={ca}&channel_binding=require"
                ),
            ),
            ("DATA_SOURCE_USER", MONITOR.to_string()),
            ("DATA_SOURCE_PASS", MONITOR_PASSWORD.to_string()),
        ],
    );
    connects(
        &format!("{v}: verify-full without SNI"),
        &name(kv(&format!(
            "sslmode=verify-full sslrootcert={ca} sslsni=0"
        ))),
    );

    // A wrong CA fails verify-full, and require too once sslrootcert is set (libpq).
    let other = path(&pki.other_ca);
    for mode in ["verify-full", "verify-ca", "require"] {
        fails(
            &format!("{v}: {mode} with the wrong CA"),
            &name(kv(&format!("sslmode={mode} sslrootcert={other}"))),
            &[
                "not signed by a CA in sslrootcert=",
                "set sslrootcert",
                "pg_up stays 0",
            ],
        );
    }

    // verify-full to a name the certificate does not have.
    fails(
        &format!("{v}: verify-full with a wrong host name"),
        &name(format!(
            "host=db.wrong.test hostaddr=127.0.0.1 port={port} user={MONITOR} password={MONITOR_PASSWORD} \
             dbname=postgres sslmode=verify-full sslrootcert={ca}"
        )),
        &[
            "not valid for the host name db.wrong.test",
            "it names localhost, 127.0.0.1",
            "sslmode=verify-ca",
        ],
    );

    // Client certificates: `hostssl ... cert`, key as PKCS#8 and as SEC1.
    for key in [&pki.client_key, &pki.client_key_sec1] {
        connects(
            &format!("{v}: client certificate, key {}", key.display()),
            &name(format!(
                "host=localhost port={port} user={CERT_USER} dbname=postgres sslmode=verify-full \
                 sslrootcert={ca} sslcert={} sslkey={}",
                path(&pki.client_cert),
                path(key)
            )),
        );
    }
    // No certificate: the server says so.
    fails(
        &format!("{v}: cert login without a certificate"),
        &name(format!(
            "host=localhost port={port} user={CERT_USER} dbname=postgres sslmode=verify-full sslrootcert={ca}"
        )),
        &[
            "requires a valid client certificate",
            "set sslcert and sslkey",
        ],
    );
    // A certificate from a CA the server does not trust.
    fails(
        &format!("{v}: client certificate from another CA"),
        &name(format!(
            "host=localhost port={port} user={CERT_USER} dbname=postgres sslmode=require sslcert={} sslkey={}",
            path(&pki.rogue_cert),
            path(&pki.rogue_key)
        )),
        &["sslcert"],
    );
    // A client key file that is not there.
    fails(
        &format!("{v}: missing sslkey file"),
        &name(kv(&format!(
            "sslmode=require sslcert={} sslkey=/nonexistent/client.key",
            path(&pki.client_cert)
        ))),
        &[
            "cannot read sslkey file /nonexistent/client.key",
            "set sslkey",
        ],
    );

    // allow: plain first, which pg_hba.conf refuses for this role, then TLS.
    connects(&format!("{v}: allow"), &name(kv("sslmode=allow")));
    // prefer (also libpq's default): TLS when the server offers it.
    connects(&format!("{v}: prefer"), &name(kv("")));
    // disable: plain only, refused by the server.
    fails(
        &format!("{v}: disable"),
        &name(kv("sslmode=disable")),
        &["no encryption", "set sslmode=require"],
    );
}

#[test]
fn tls_modes_certificates_and_failures_on_every_version_with_tls() {
    let mut tested = Vec::new();
    for bin in pg::bin_dirs() {
        if !tls::has_ssl(&bin) {
            eprintln!(
                "skipping {}: this PostgreSQL build has no TLS support (pg_config --configure has no --with-openssl)",
                bin.display()
            );
            continue;
        }
        tls_scenarios(&bin);
        tested.push(bin.display().to_string());
    }
    eprintln!("TLS tested against: {tested:?}");
    assert!(
        !tested.is_empty(),
        "no PostgreSQL built with TLS found; run ./scripts/test (it installs them) or set SIDECAR_TEST_PG_BINDIRS"
    );
}

#[test]
fn a_server_without_tls() {
    let server = pg::start(&pg::default_bin_dir());
    let port = server.port;
    let su = |extra: &str| {
        name(format!(
            "host=127.0.0.1 port={port} user={} password={} dbname=postgres {extra}",
            pg::SUPERUSER,
            pg::SUPERUSER_PASSWORD
        ))
    };
    fails(
        "require against ssl = off",
        &su("sslmode=require"),
        &["does not accept TLS", "set sslmode=prefer"],
    );
    // prefer and allow fall back to a plain connection, as libpq.
    connects("prefer against ssl = off", &su("sslmode=prefer"));
    connects("allow against ssl = off", &su("sslmode=allow"));
    connects("no sslmode against ssl = off", &su(""));
}

#[test]
fn tls_mistakes_are_refused_at_start_naming_the_setting() {
    for (dsn, says) in [
        (
            "host=localhost user=u sslmode=verify-full",
            "needs sslrootcert",
        ),
        (
            "host=localhost user=u sslmode=require sslrootcert=system",
            "set sslmode=verify-full",
        ),
        (
            "host=localhost user=u sslmode=bogus",
            "set sslmode to one of",
        ),
    ] {
        let mut p = Proc::start_with(
            Command::new(common::BIN)
                .arg("postgres-exporter")
                .args(["--web.listen-address", "127.0.0.1:0"])
                .env_remove("DATA_SOURCE_URI")
                .env("DATA_SOURCE_NAME", dsn),
        );
        let status = p.wait(Duration::from_secs(10));
        assert!(!status.success(), "{dsn}");
        assert!(p.stderr_text().contains(says), "{dsn}: {}", p.stderr_text());
    }
}
