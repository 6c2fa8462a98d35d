//! Part 2 of the demo: `sidecar postgres-exporter` next to a PostgreSQL server.

use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use tokio::sync::watch;

use crate::pgserver::{self, PgServer, SUPERUSER, SUPERUSER_PASSWORD};
use crate::{DemoError, DemoOptions, cancelled, terminate};

/// What the metrics part showed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MetricsOutcome {
    /// False when no server was available (the part explains how to get one).
    pub ran: bool,
    pub pg_up: bool,
    /// Counters moved with the load the demo ran.
    pub moved: bool,
}

impl MetricsOutcome {
    pub fn ok(&self) -> bool {
        !self.ran || (self.pg_up && self.moved)
    }
}

/// The series the demo prints: (label for humans, family, label filter).
const SHOWN: &[(&str, &str, &str)] = &[
    ("database reachable", "pg_up", ""),
    (
        "transactions committed",
        "pg_stat_database_xact_commit",
        "datname=\"demo\"",
    ),
    (
        "rows inserted",
        "pg_stat_database_tup_inserted",
        "datname=\"demo\"",
    ),
    (
        "live rows in orders",
        "pg_stat_user_tables_n_live_tup",
        "relname=\"orders\"",
    ),
    (
        "database size (bytes)",
        "pg_database_size_bytes",
        "datname=\"demo\"",
    ),
    ("locks held", "pg_locks_count", "datname=\"demo\""),
    ("sessions", "pg_stat_activity_count", "datname=\"demo\""),
    (
        "scrape time (s)",
        "pg_exporter_last_scrape_duration_seconds",
        "",
    ),
];

pub(crate) async fn run(
    opts: &DemoOptions,
    cancel: watch::Receiver<bool>,
) -> Result<MetricsOutcome, DemoError> {
    println!("== Part 2 of 3: metrics ==");
    let mut server = None;
    let env: Vec<(&str, String)> = match &opts.postgres_url {
        Some(url) => {
            println!(
                "Using the PostgreSQL server at --postgres-url (read only: the demo adds no load to it)."
            );
            vec![("DATA_SOURCE_NAME", url.clone())]
        }
        None => {
            let Some(bin) = pgserver::find_bin_dirs().into_iter().next() else {
                println!(
                    "No PostgreSQL server binaries found (looked in PATH and /usr/lib/postgresql/*/bin).\n\
                     Install them (Debian: apt install postgresql), or point the demo at a server:\n  \
                     sidecar demo --postgres-url 'postgresql://user:password@host:5432/db?sslmode=disable'\n"
                );
                return Ok(MetricsOutcome::default());
            };
            println!(
                "Starting a throwaway PostgreSQL server from {} ...",
                bin.display()
            );
            let started = tokio::task::spawn_blocking(move || PgServer::start(&bin, &[]))
                .await
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            let s = match started {
                Ok(s) => s,
                Err(e) => {
                    println!("Could not start it: {e}\n");
                    return Ok(MetricsOutcome::default());
                }
            };
            println!("{} on 127.0.0.1:{}", s.version, s.port);
            prepare(&s).await?;
            let env = vec![
                ("DATA_SOURCE_URI", s.uri("demo")),
                ("DATA_SOURCE_USER", SUPERUSER.to_string()),
                ("DATA_SOURCE_PASS", SUPERUSER_PASSWORD.to_string()),
            ];
            server = Some(s);
            env
        }
    };

    let port = pgserver::free_port()?;
    let listen = format!("127.0.0.1:{port}");
    println!(
        "`sidecar postgres-exporter --web.listen-address {listen} --collector.database.interval 0s`\n\
         exports it (sizes read on every scrape here; by default once a minute); Prometheus would find it\n\
         through the Pod annotations prometheus.io/scrape: \"true\" and prometheus.io/port: \"9187\".\n"
    );
    let mut cmd = Command::new(&opts.exe);
    // The demo's scrapes are seconds apart: sizes are read on each one, so
    // the table below shows the database growing (the default reuses them for a minute).
    cmd.args([
        "postgres-exporter",
        "--web.listen-address",
        &listen,
        "--collector.database.interval",
        "0s",
        "--log-level",
        "warn",
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::inherit())
    .process_group(0)
    .kill_on_drop(true);
    for var in [
        "DATA_SOURCE_NAME",
        "DATA_SOURCE_URI",
        "DATA_SOURCE_USER",
        "DATA_SOURCE_PASS",
    ] {
        cmd.env_remove(var);
    }
    for (k, v) in &env {
        cmd.env(k, v);
    }
    let mut exporter = cmd.spawn().map_err(|source| DemoError::Spawn {
        what: "sidecar postgres-exporter",
        exe: opts.exe.display().to_string(),
        source,
    })?;

    let deadline = Instant::now() + Duration::from_secs(10);
    let before = loop {
        match get(port, "/metrics").await {
            Ok(body) => break body,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => {
                terminate(&exporter);
                return Err(e.into());
            }
        }
    };
    let mut outcome = MetricsOutcome {
        ran: true,
        pg_up: value(&before, "pg_up", "") == Some(1.0),
        moved: false,
    };

    let after = match &server {
        Some(s) if outcome.pg_up => {
            println!(
                "Running some load: 5000 inserts in 50 transactions, 3 extra sessions, one holding a lock ...\n"
            );
            let load = load(s);
            tokio::select! {
                r = load => r?,
                () = cancelled(cancel.clone()) => {}
            }
            // The server publishes table statistics within a second or so.
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let body = get(port, "/metrics").await?;
                let moved = value(
                    &body,
                    "pg_stat_user_tables_n_live_tup",
                    "relname=\"orders\"",
                )
                .unwrap_or(0.0)
                    >= 5000.0;
                if moved || Instant::now() > deadline {
                    outcome.moved = moved;
                    break body;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        _ => {
            outcome.moved = true;
            get(port, "/metrics").await?
        }
    };

    println!("  {:<24} {:>16} {:>16}", "", "before", "after load");
    for (what, family, filter) in SHOWN {
        let show = |body: &str| {
            value(body, family, filter).map_or("-".to_string(), |v| {
                if v.fract() == 0.0 {
                    format!("{v:.0}")
                } else {
                    format!("{v:.4}")
                }
            })
        };
        println!(
            "  {what:<24} {:>16} {:>16}   {family}",
            show(&before),
            show(&after)
        );
    }
    let families = after.lines().filter(|l| l.starts_with("# TYPE ")).count();
    println!("\n  ... and {families} metric families in all, at http://{listen}/metrics\n");
    terminate(&exporter);
    let _ = exporter.wait().await;
    if let Some(mut s) = server {
        let _ = tokio::task::spawn_blocking(move || s.stop()).await;
    }
    Ok(outcome)
}

async fn connect(server: &PgServer, db: &str) -> Result<tokio_postgres::Client, DemoError> {
    let (client, connection) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(server.port)
        .user(SUPERUSER)
        .password(SUPERUSER_PASSWORD)
        .dbname(db)
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(connection);
    Ok(client)
}

async fn prepare(server: &PgServer) -> Result<(), DemoError> {
    let admin = connect(server, "postgres").await?;
    admin
        .batch_execute("CREATE DATABASE demo")
        .await
        .map_err(std::io::Error::other)?;
    let demo = connect(server, "demo").await?;
    demo.batch_execute("CREATE TABLE orders (id serial PRIMARY KEY, product text, qty int)")
        .await
        .map_err(std::io::Error::other)?;
    Ok(())
}

async fn load(server: &PgServer) -> Result<(), DemoError> {
    let db = connect(server, "demo").await?;
    for batch in 0..50 {
        db.batch_execute(&format!(
            "INSERT INTO orders (product, qty) SELECT 'widget-' || g, g % 7 FROM generate_series({}, {}) g",
            batch * 100,
            batch * 100 + 99
        ))
        .await
        .map_err(std::io::Error::other)?;
    }
    let mut others = Vec::new();
    for _ in 0..3 {
        others.push(connect(server, "demo").await?);
    }
    others[0]
        .batch_execute("BEGIN; LOCK TABLE orders IN SHARE MODE")
        .await
        .map_err(std::io::Error::other)?;
    // Keep the sessions (and the lock) while the exporter looks.
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(15)).await;
        drop(others);
    });
    Ok(())
}

/// A plain HTTP GET on 127.0.0.1.
async fn get(port: u16, path: &str) -> std::io::Result<String> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: demo\r\n\r\n").as_bytes())
        .await?;
    let mut resp = String::new();
    stream.read_to_string(&mut resp).await?;
    Ok(resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default())
}

/// The sum of a family's series whose labels contain `filter`.
fn value(body: &str, family: &str, filter: &str) -> Option<f64> {
    let mut sum = None;
    for line in body.lines() {
        let Some(rest) = line.strip_prefix(family) else {
            continue;
        };
        if !(rest.starts_with(' ') || rest.starts_with('{')) || !rest.contains(filter) {
            continue;
        }
        if let Some(v) = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
            *sum.get_or_insert(0.0) += v;
        }
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_summed_over_matching_series() {
        let body = "pg_up 1\npg_locks_count{datname=\"demo\",mode=\"a\"} 2\npg_locks_count{datname=\"demo\",mode=\"b\"} 3\n\
                    pg_locks_count{datname=\"x\",mode=\"a\"} 9\npg_up_extra 5\n";
        assert_eq!(value(body, "pg_up", ""), Some(1.0));
        assert_eq!(value(body, "pg_locks_count", "datname=\"demo\""), Some(5.0));
        assert_eq!(value(body, "pg_nothing", ""), None);
    }
}
