//! `sidecar postgres-exporter` end to end against real PostgreSQL servers
//! started by the test (every version this machine has, see common::pg).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use common::exporter::{scrape, value};
use common::pg::{self, PgServer, SUPERUSER, SUPERUSER_PASSWORD};
use common::prom::{self, Family};
use common::{Proc, http_get, wait_until};

fn exporter(env: &[(&str, &str)], args: &[&str]) -> (Proc, SocketAddr) {
    common::exporter::start(env, args)
}

fn superuser_env(server: &PgServer, db: &str) -> Vec<(&'static str, String)> {
    role_env(server, db, SUPERUSER, SUPERUSER_PASSWORD)
}

/// The seed's way to configure the exporter: URI, user and password apart.
fn role_env(
    server: &PgServer,
    db: &str,
    user: &str,
    password: &str,
) -> Vec<(&'static str, String)> {
    vec![
        ("DATA_SOURCE_URI", server.uri(db)),
        ("DATA_SOURCE_USER", user.to_string()),
        ("DATA_SOURCE_PASS", password.to_string()),
    ]
}

fn env_refs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// Families every default scrape must carry, with their type and labels
/// (upstream postgres_exporter v0.20 default collectors and legacy families).
fn expected_families(major: u32) -> Vec<(String, &'static str, Vec<&'static str>)> {
    let mut e: Vec<(String, &'static str, Vec<&'static str>)> = Vec::new();
    let mut add = |name: &str, kind: &'static str, labels: &[&'static str]| {
        e.push((name.to_string(), kind, labels.to_vec()))
    };
    add("pg_up", "gauge", &[]);
    add(
        "pg_static",
        "untyped",
        &["server", "short_version", "version"],
    );
    add("pg_exporter_last_scrape_duration_seconds", "gauge", &[]);
    add("pg_exporter_scrapes_total", "counter", &[]);
    add("pg_exporter_last_scrape_error", "gauge", &[]);
    add(
        "pg_scrape_collector_duration_seconds",
        "gauge",
        &["collector"],
    );
    add("pg_scrape_collector_success", "gauge", &["collector"]);
    add("pg_database_size_bytes", "gauge", &["datname"]);
    add("pg_database_connection_limit", "gauge", &["datname"]);
    add("pg_locks_count", "gauge", &["datname", "mode"]);
    for m in ["lag_seconds", "is_replica", "last_replay_seconds"] {
        add(&format!("pg_replication_{m}"), "gauge", &[]);
    }
    for m in ["active", "pg_wal_lsn_diff"] {
        add(
            &format!("pg_replication_slots_{m}"),
            "gauge",
            &["database", "slot_name"],
        );
    }
    for m in [
        "slot_current_wal_lsn",
        "slot_confirmed_flush_lsn",
        "slot_is_active",
        "safe_wal_size_bytes",
    ] {
        add(
            &format!("pg_replication_slots_{m}"),
            "gauge",
            &["slot_name", "slot_type"],
        );
    }
    add(
        "pg_replication_slots_wal_status",
        "gauge",
        &["slot_name", "slot_type", "wal_status"],
    );
    add("pg_roles_connection_limit", "gauge", &["rolname"]);
    for s in [
        "pg_settings_max_connections",
        "pg_settings_shared_buffers_bytes",
        "pg_settings_statement_timeout_seconds",
        "pg_settings_fsync",
    ] {
        add(s, "gauge", &[]);
    }
    for m in ["count", "max_tx_duration"] {
        add(
            &format!("pg_stat_activity_{m}"),
            "gauge",
            &[
                "application_name",
                "backend_type",
                "datname",
                "state",
                "usename",
                "wait_event",
                "wait_event_type",
            ],
        );
    }
    add("pg_stat_archiver_archived_count", "counter", &[]);
    add("pg_stat_archiver_failed_count", "counter", &[]);
    add("pg_stat_archiver_last_archive_age", "gauge", &[]);
    let bgwriter: &[&str] = if major >= 17 {
        &["buffers_clean", "maxwritten_clean", "buffers_alloc"]
    } else {
        &[
            "checkpoints_timed",
            "checkpoints_req",
            "checkpoint_write_time",
            "checkpoint_sync_time",
            "buffers_checkpoint",
            "buffers_clean",
            "maxwritten_clean",
            "buffers_backend",
            "buffers_backend_fsync",
            "buffers_alloc",
        ]
    };
    for m in bgwriter {
        add(&format!("pg_stat_bgwriter_{m}_total"), "counter", &[]);
    }
    add(
        "pg_stat_database_numbackends",
        "gauge",
        &["datid", "datname"],
    );
    for m in [
        "xact_commit",
        "xact_rollback",
        "blks_read",
        "blks_hit",
        "tup_returned",
        "tup_fetched",
        "tup_inserted",
        "tup_updated",
        "tup_deleted",
        "conflicts",
        "temp_files",
        "temp_bytes",
        "deadlocks",
        "blk_read_time",
        "blk_write_time",
    ] {
        add(
            &format!("pg_stat_database_{m}"),
            "counter",
            &["datid", "datname"],
        );
    }
    if major >= 14 {
        add(
            "pg_stat_database_active_time_seconds_total",
            "counter",
            &["datid", "datname"],
        );
    }
    for m in ["tablespace", "lock", "snapshot", "bufferpin", "deadlock"] {
        add(
            &format!("pg_stat_database_conflicts_confl_{m}"),
            "counter",
            &["datid", "datname", "server"],
        );
    }
    let table = &["datname", "relname", "schemaname"];
    for m in [
        "seq_scan",
        "seq_tup_read",
        "idx_scan",
        "idx_tup_fetch",
        "n_tup_ins",
        "n_tup_upd",
        "n_tup_del",
        "n_tup_hot_upd",
        "vacuum_count",
        "autovacuum_count",
        "analyze_count",
        "autoanalyze_count",
    ] {
        add(&format!("pg_stat_user_tables_{m}"), "counter", table);
    }
    for m in [
        "n_live_tup",
        "n_dead_tup",
        "n_mod_since_analyze",
        "last_vacuum",
        "last_autovacuum",
        "last_analyze",
        "last_autoanalyze",
        "index_size_bytes",
        "table_size_bytes",
    ] {
        add(&format!("pg_stat_user_tables_{m}"), "gauge", table);
    }
    for m in ["heap", "idx", "toast", "tidx"] {
        for k in ["read", "hit"] {
            add(
                &format!("pg_statio_user_tables_{m}_blocks_{k}"),
                "counter",
                table,
            );
        }
    }
    add("pg_wal_segments", "gauge", &[]);
    add("pg_wal_size_bytes", "gauge", &[]);
    add("process_cpu_seconds_total", "counter", &[]);
    for g in [
        "process_resident_memory_bytes",
        "process_virtual_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
    ] {
        add(g, "gauge", &[]);
    }
    e
}

/// Creates what makes every default family show up: a table with an index, a
/// logical replication slot.
fn prepare(server: &PgServer) {
    let mut c = pg::client(server, "postgres");
    c.batch_execute(
        "CREATE TABLE IF NOT EXISTS products (id serial PRIMARY KEY, name text);
         INSERT INTO products (name) SELECT 'p' || g FROM generate_series(1, 100) g;
         ANALYZE products;",
    )
    .unwrap();
    c.batch_execute("SELECT pg_create_logical_replication_slot('test_slot', 'pgoutput')")
        .unwrap();
}

fn every_default_family_on(server: &PgServer) {
    prepare(server);
    let env = superuser_env(server, "postgres");
    let (mut p, addr) = exporter(&env_refs(&env), &[]);
    let (status, head, body) = http_get(addr, "/metrics");
    assert_eq!(status, 200);
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    let families = prom::parse(&body);
    prom::promtool_check(&body);
    let mut problems = Vec::new();
    for (name, kind, labels) in expected_families(server.major()) {
        match families.get(&name) {
            None => problems.push(format!("{name}: missing")),
            Some(f) if f.samples.is_empty() => problems.push(format!("{name}: no series")),
            Some(f) => {
                if f.kind != kind {
                    problems.push(format!("{name}: type {} instead of {kind}", f.kind));
                }
                let keys: Vec<String> = f.label_keys().into_iter().collect();
                if keys != labels {
                    problems.push(format!("{name}: labels {keys:?} instead of {labels:?}"));
                }
            }
        }
    }
    for (labels, v) in &families["pg_scrape_collector_success"].samples {
        if *v != 1.0 {
            problems.push(format!("collector {} failed", labels["collector"]));
        }
    }
    assert!(
        problems.is_empty(),
        "{} ({}):\n{}\nexporter said:\n{}",
        server.version,
        server.bin.display(),
        problems.join("\n"),
        p.stderr_text()
    );
    assert_eq!(value(&families, "pg_up", &[]), Some(1.0));
    // No config file (upstream's default name absent): upstream v0.20 says 0.
    assert_eq!(
        value(
            &families,
            "postgres_exporter_config_last_reload_successful",
            &[]
        ),
        Some(0.0)
    );
    assert_eq!(
        value(
            &families,
            "postgres_exporter_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );
    let short = &families["pg_static"].samples[0].0["short_version"];
    assert!(
        short.starts_with(&format!("{}.", server.major())),
        "{short}"
    );
    p.terminate();
    assert!(p.wait(Duration::from_secs(10)).success());
}

#[test]
fn every_default_family_with_type_and_labels_on_every_available_version() {
    pg::each_version(|server| {
        every_default_family_on(server);
    });
}

#[test]
fn values_move_when_the_database_works() {
    let server = pg::start(&pg::default_bin_dir());
    prepare(&server);
    let env = superuser_env(&server, "postgres");
    let (_p, addr) = exporter(&env_refs(&env), &[]);
    let before = scrape(addr);
    let ins = |f: &BTreeMap<String, Family>| {
        value(
            f,
            "pg_stat_database_tup_inserted",
            &[("datname", "postgres")],
        )
        .unwrap_or(0.0)
    };
    let table_ins = |f: &BTreeMap<String, Family>| {
        value(
            f,
            "pg_stat_user_tables_n_tup_ins",
            &[("relname", "products")],
        )
        .unwrap_or(0.0)
    };

    // Work: insert rows, keep extra sessions open, hold a lock in an open transaction.
    let mut worker = pg::client(&server, "postgres");
    worker
        .batch_execute("INSERT INTO products (name) SELECT 'q' || g FROM generate_series(1, 500) g")
        .unwrap();
    let idle: Vec<postgres::Client> = (0..3).map(|_| pg::client(&server, "postgres")).collect();
    let mut locker = pg::client(&server, "postgres");
    let mut tx = locker.transaction().unwrap();
    tx.batch_execute("LOCK TABLE products IN ACCESS EXCLUSIVE MODE")
        .unwrap();

    // Statistics reach the views asynchronously: poll with a deadline.
    let mut after = scrape(addr);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(ins(&after) >= ins(&before) + 500.0 && table_ins(&after) >= table_ins(&before) + 500.0)
    {
        assert!(
            Instant::now() < deadline,
            "statistics did not move: before {} {}, after {} {}; {:?}; {:?}",
            ins(&before),
            table_ins(&before),
            ins(&after),
            table_ins(&after),
            after
                .get("pg_stat_user_tables_n_tup_ins")
                .map(|f| &f.samples),
            after["pg_scrape_collector_success"].samples
        );
        std::thread::sleep(Duration::from_millis(100));
        after = scrape(addr);
    }
    assert!(
        value(
            &after,
            "pg_locks_count",
            &[("datname", "postgres"), ("mode", "accessexclusivelock")]
        )
        .unwrap()
            >= 1.0
    );
    let sessions: f64 = after["pg_stat_activity_count"]
        .samples
        .iter()
        .filter(|(l, _)| l["datname"] == "postgres" && l["backend_type"] == "client backend")
        .map(|(_, v)| v)
        .sum();
    assert!(sessions >= 5.0, "sessions seen: {sessions}");
    assert!(
        value(
            &after,
            "pg_stat_activity_count",
            &[("state", "idle in transaction")]
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{:?}",
        after["pg_stat_activity_count"].samples
    );
    assert!(
        value(&after, "pg_exporter_scrapes_total", &[]).unwrap()
            > value(&before, "pg_exporter_scrapes_total", &[]).unwrap()
    );
    tx.rollback().unwrap();
    drop(idle);
}

#[test]
fn database_sizes_are_reused_for_the_interval_and_read_each_scrape_with_0s() {
    let server = pg::start(&pg::default_bin_dir());
    let env = superuser_env(&server, "postgres");
    let (_reusing, reusing) = exporter(&env_refs(&env), &["--collector.database.interval", "1h"]);
    let (_reading, reading) = exporter(&env_refs(&env), &["--collector.database.interval", "0s"]);
    let size = |f: &BTreeMap<String, Family>, db: &str| {
        value(f, "pg_database_size_bytes", &[("datname", db)])
    };
    for addr in [reusing, reading] {
        assert!(size(&scrape(addr), "postgres").is_some());
    }
    pg::client(&server, "postgres")
        .batch_execute("CREATE DATABASE later")
        .unwrap();
    assert!(size(&scrape(reading), "later").is_some());
    let reused = scrape(reusing);
    assert_eq!(
        size(&reused, "later"),
        None,
        "read again within the interval"
    );
    assert!(size(&reused, "postgres").is_some());
    assert_eq!(
        value(
            &reused,
            "pg_scrape_collector_success",
            &[("collector", "database")]
        ),
        Some(1.0)
    );
}

#[test]
fn database_down_answers_fast_with_pg_up_0_and_recovers() {
    let mut server = pg::start(&pg::default_bin_dir());
    let env = superuser_env(&server, "postgres");
    let (p, addr) = exporter(&env_refs(&env), &[]);
    assert_eq!(value(&scrape(addr), "pg_up", &[]), Some(1.0));

    server.stop();
    let t0 = Instant::now();
    let down = scrape(addr);
    let took = t0.elapsed();
    assert_eq!(value(&down, "pg_up", &[]), Some(0.0));
    assert!(down.contains_key("process_resident_memory_bytes"));
    assert_eq!(
        value(&down, "pg_exporter_last_scrape_error", &[]),
        Some(1.0)
    );
    // Refused connections answer at once (bench/pg-exporter.sh measures it; this only catches hangs).
    assert!(took < Duration::from_secs(2), "took {took:?}");

    server.restart().unwrap();
    wait_until("pg_up back to 1", Duration::from_secs(30), || {
        value(&scrape(addr), "pg_up", &[]) == Some(1.0)
    });
    let up = scrape(addr);
    assert!(up.contains_key("pg_stat_database_xact_commit"));
    assert_eq!(
        p.stderr_text().matches("cannot connect to").count(),
        1,
        "one warning per distinct failure:\n{}",
        p.stderr_text()
    );
}

#[test]
fn a_server_that_accepts_and_never_answers_times_out_at_the_connect_timeout() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let held = std::thread::spawn(move || {
        let mut conns = Vec::new();
        for conn in silent.incoming().take(10) {
            conns.push(conn);
        }
    });
    let uri = format!("127.0.0.1:{port}/postgres?sslmode=disable");
    let (_p, addr) = exporter(
        &[("DATA_SOURCE_URI", &uri), ("DATA_SOURCE_USER", "postgres")],
        &["--connect-timeout", "1s"],
    );
    let t0 = Instant::now();
    let families = scrape(addr);
    let took = t0.elapsed();
    assert_eq!(value(&families, "pg_up", &[]), Some(0.0));
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "took {took:?}"
    );
    drop(held);
}

#[test]
fn passwords_with_special_characters_work() {
    let server = pg::start(&pg::default_bin_dir());
    let password = "#=%{!@:/ x";
    pg::client(&server, "postgres")
        .batch_execute(&format!(
            "CREATE ROLE \"mon itor\" LOGIN PASSWORD '{}'; GRANT pg_monitor TO \"mon itor\";",
            password.replace('\'', "''")
        ))
        .unwrap();
    let uri = server.uri("postgres");
    let env = role_env(&server, "postgres", "mon itor", password);
    let (p, addr) = exporter(&env_refs(&env), &[]);
    assert_eq!(
        value(&scrape(addr), "pg_up", &[]),
        Some(1.0),
        "{}",
        p.stderr_text()
    );
    // The same password through a _FILE variable.
    let dir = tempfile::tempdir().unwrap();
    let pass_file = dir.path().join("pass");
    std::fs::write(&pass_file, format!("{password}\n")).unwrap();
    let (p2, addr2) = exporter(
        &[
            ("DATA_SOURCE_URI", &uri),
            ("DATA_SOURCE_USER", "mon itor"),
            ("DATA_SOURCE_PASS_FILE", pass_file.to_str().unwrap()),
        ],
        &[],
    );
    assert_eq!(
        value(&scrape(addr2), "pg_up", &[]),
        Some(1.0),
        "{}",
        p2.stderr_text()
    );
    assert!(
        !p.stderr_text().contains("pg_monitor"),
        "{}",
        p.stderr_text()
    );
}

#[test]
fn a_role_limited_to_two_connections_still_reports_pg_up_1() {
    // The main session plus the fresh login behind pg_up are two; the side
    // session must give way, or every fresh login fails and pg_up stays 0.
    let server = pg::start(&pg::default_bin_dir());
    let mut admin = pg::client(&server, "postgres");
    admin
        .batch_execute("CREATE ROLE lim LOGIN PASSWORD 'lim-pw'; GRANT pg_monitor TO lim;")
        .unwrap();
    let env = role_env(&server, "postgres", "lim", "lim-pw");
    let (p, addr) = exporter(&env_refs(&env), &[]);
    // A first scrape opens the main and the side session (and reads the
    // sizes, which later scrapes reuse); then the limit comes.
    assert!(
        value(
            &scrape(addr),
            "pg_database_size_bytes",
            &[("datname", "postgres")]
        )
        .is_some()
    );
    admin
        .batch_execute("ALTER ROLE lim CONNECTION LIMIT 2")
        .unwrap();
    // Main and side session hold the two slots, so a fresh login fails; the
    // side session then gives way (before, pg_up stayed 0 for good), also
    // when this scrape had no use for it.
    wait_until(
        "the side session gives way",
        Duration::from_secs(30),
        || {
            scrape(addr);
            p.stderr_text()
                .contains("no connection to spare for a second session")
        },
    );
    // Scrapes back to back may still find the last fresh login's slot not
    // yet freed by the server, so this waits for a good scrape rather than
    // asserting that every one is.
    wait_until(
        "pg_up 1 with database sizes",
        Duration::from_secs(30),
        || {
            let families = scrape(addr);
            value(&families, "pg_up", &[]) == Some(1.0)
                && value(
                    &families,
                    "pg_database_size_bytes",
                    &[("datname", "postgres")],
                )
                .is_some()
        },
    );
}

/// pg_up means "a new session can log in", also while the long-lived
/// sessions still work: a role that may no longer log in shows as pg_up 0
/// by the second scrape after the change (the login behind pg_up runs
/// beside the collection, and one still running when the collection ends
/// counts for the next scrape), with one warning; and pg_up is 1 again as
/// soon as a login works.
#[test]
fn pg_up_turns_0_within_two_scrapes_when_new_logins_fail_while_the_held_session_works() {
    let server = pg::start(&pg::default_bin_dir());
    let mut admin = pg::client(&server, "postgres");
    admin
        .batch_execute("CREATE ROLE nolog LOGIN PASSWORD 'nolog-pw'; GRANT pg_monitor TO nolog;")
        .unwrap();
    let env = role_env(&server, "postgres", "nolog", "nolog-pw");
    let (p, addr) = exporter(&env_refs(&env), &[]);
    for _ in 0..3 {
        assert_eq!(value(&scrape(addr), "pg_up", &[]), Some(1.0));
    }
    admin.batch_execute("ALTER ROLE nolog NOLOGIN").unwrap();
    let first = scrape(addr);
    let second = scrape(addr);
    assert_eq!(
        value(&second, "pg_up", &[]),
        Some(0.0),
        "{}",
        p.stderr_text()
    );
    // The held session still works: the families are there.
    assert!(second.contains_key("pg_stat_database_xact_commit"));
    assert!(first.contains_key("pg_stat_database_xact_commit"));
    for _ in 0..3 {
        assert_eq!(value(&scrape(addr), "pg_up", &[]), Some(0.0));
    }
    let log = p.stderr_text();
    assert_eq!(
        log.matches("is not permitted to log in").count(),
        1,
        "{log}"
    );
    // A failed last login makes the next scrape wait for its own: back at once.
    admin.batch_execute("ALTER ROLE nolog LOGIN").unwrap();
    assert_eq!(
        value(&scrape(addr), "pg_up", &[]),
        Some(1.0),
        "{}",
        p.stderr_text()
    );
}

#[test]
fn a_role_without_pg_monitor_gets_one_clear_warning_and_a_metric() {
    let server = pg::start(&pg::default_bin_dir());
    pg::client(&server, "postgres")
        .batch_execute("CREATE ROLE plain LOGIN PASSWORD 'plain-pw'")
        .unwrap();
    let env = role_env(&server, "postgres", "plain", "plain-pw");
    let (p, addr) = exporter(&env_refs(&env), &[]);
    for _ in 0..3 {
        let families = scrape(addr);
        assert_eq!(value(&families, "pg_up", &[]), Some(1.0));
        assert_eq!(
            value(
                &families,
                "pg_exporter_missing_pg_monitor",
                &[("role", "plain")]
            ),
            Some(1.0)
        );
    }
    let log = p.stderr_text();
    assert_eq!(
        log.matches("GRANT pg_monitor TO \"plain\"").count(),
        1,
        "{log}"
    );
}

#[test]
fn auto_discovery_labels_every_database_without_duplicates_and_probe_works() {
    let server = pg::start(&pg::default_bin_dir());
    let mut admin = pg::client(&server, "postgres");
    admin.batch_execute("CREATE DATABASE app1").unwrap();
    admin.batch_execute("CREATE DATABASE app2").unwrap();
    for db in ["app1", "app2"] {
        pg::client(&server, db)
            .batch_execute(
                "CREATE TABLE orders (id int); INSERT INTO orders SELECT generate_series(1, 10)",
            )
            .unwrap();
    }
    let env = superuser_env(&server, "postgres");
    let (p, addr) = exporter(
        &env_refs(&env),
        &["--auto-discover-databases", "--exclude-databases", "app2"],
    );
    let mut families = scrape(addr);
    wait_until("per-table statistics", Duration::from_secs(30), || {
        families = scrape(addr);
        value(
            &families,
            "pg_stat_user_tables_n_tup_ins",
            &[("datname", "app1"), ("relname", "orders")],
        ) == Some(10.0)
    });
    // prom::parse already failed on any duplicate series.
    assert!(
        value(
            &families,
            "pg_stat_user_tables_n_tup_ins",
            &[("datname", "app2")]
        )
        .is_none()
    );
    assert!(
        value(
            &families,
            "pg_statio_user_tables_heap_blocks_hit",
            &[("datname", "app1")]
        )
        .is_some()
    );
    drop(p);

    let (p, addr) = exporter(&env_refs(&env), &["--auto-discover-databases"]);
    wait_until("both databases", Duration::from_secs(30), || {
        families = scrape(addr);
        ["app1", "app2"].iter().all(|db| {
            value(
                &families,
                "pg_stat_user_tables_n_tup_ins",
                &[("datname", db), ("relname", "orders")],
            ) == Some(10.0)
        })
    });
    assert_eq!(
        families["pg_database_size_bytes"]
            .samples
            .iter()
            .filter(|(l, _)| l["datname"] == "app1")
            .count(),
        1
    );

    // /probe: another target, credentials from the exporter's environment.
    let target = format!("127.0.0.1:{}/app2?sslmode=disable", server.port);
    let probed = common::exporter::probe(addr, &target);
    assert_eq!(value(&probed, "pg_up", &[]), Some(1.0));
    assert!(
        value(
            &probed,
            "pg_stat_user_tables_n_tup_ins",
            &[("datname", "app2"), ("relname", "orders")]
        )
        .is_some()
    );
    let (status, _, body) = http_get(addr, "/probe?target=127.0.0.1:1%2Fnope");
    assert_eq!(status, 200);
    assert_eq!(value(&prom::parse(&body), "pg_up", &[]), Some(0.0));
    assert_eq!(http_get(addr, "/probe").0, 400);
    let (status, _, landing) = http_get(addr, "/");
    assert_eq!(status, 200);
    assert!(landing.contains("/metrics"));
    assert_eq!(http_get(addr, "/live").0, 200);
    assert_eq!(http_get(addr, "/ready").0, 200);
    drop(p);
}

#[test]
fn sessions_are_named_and_few_and_concurrent_scrapes_share_collections() {
    let server = pg::start(&pg::default_bin_dir());
    let env = superuser_env(&server, "postgres");
    let (_p, addr) = exporter(&env_refs(&env), &[]);
    // Many concurrent scrapes share collections instead of piling up connections.
    let handles: Vec<_> = (0..20)
        .map(|_| std::thread::spawn(move || scrape(addr)))
        .collect();
    for h in handles {
        assert_eq!(value(&h.join().unwrap(), "pg_up", &[]), Some(1.0));
    }
    let mut c = pg::client(&server, "postgres");
    let row = c
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'sidecar-postgres-exporter'",
            &[],
        )
        .unwrap();
    let sessions: i64 = row.get(0);
    // The main and the side session; a scrape's fresh session may still be closing.
    assert!((2..=3).contains(&sessions), "{sessions} exporter sessions");
    let families = scrape(addr);
    assert!(value(&families, "pg_exporter_scrapes_total", &[]).unwrap() < 22.0);
}

/// `--admin` (the spelling every subcommand shares) and
/// PG_EXPORTER_WEB_LISTEN_ADDRESS set the listen address as
/// --web.listen-address does; no database is needed to serve /live.
#[test]
fn listen_address_spellings() {
    for by_env in [false, true] {
        let mut cmd = Command::new(common::BIN);
        cmd.arg("postgres-exporter")
            .env_remove("PG_EXPORTER_WEB_LISTEN_ADDRESS")
            .env_remove("DATA_SOURCE_NAME")
            .env_remove("DATA_SOURCE_URI");
        if by_env {
            cmd.env("PG_EXPORTER_WEB_LISTEN_ADDRESS", "127.0.0.1:0");
        } else {
            cmd.args(["--admin", "127.0.0.1:0"]);
        }
        let mut p = Proc::start_with(&mut cmd);
        let addr = p.logged_addr(" on http://");
        assert_eq!(addr.ip().to_string(), "127.0.0.1", "by_env {by_env}");
        assert_eq!(http_get(addr, "/live").0, 200);
        p.terminate();
        let status = p.wait(Duration::from_secs(10));
        assert!(status.success(), "{}", p.stderr_text());
    }
}

#[test]
fn configuration_mistakes_are_explained() {
    let out = Command::new(common::BIN)
        .args(["postgres-exporter", "--web.listen-address", "127.0.0.1:0"])
        .env("DATA_SOURCE_URI", "localhost?sslmode=verify-full")
        .env("DATA_SOURCE_USER", "u")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("sslrootcert"), "{err}");
    let out = Command::new(common::BIN)
        .args(["postgres-exporter", "--web.listen-address", "127.0.0.1:0"])
        .env("DATA_SOURCE_PASS", "x")
        .env("DATA_SOURCE_PASS_FILE", "/y")
        .env("DATA_SOURCE_URI", "localhost")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("not both"));
}

/// The six states upstream v0.20's stat_activity query fills in for every database.
const ACTIVITY_STATES: [&str; 6] = [
    "active",
    "idle",
    "idle in transaction",
    "idle in transaction (aborted)",
    "fastpath function call",
    "disabled",
];

#[test]
fn stat_activity_has_a_zero_series_for_every_state_of_a_database_without_sessions() {
    let server = pg::start(&pg::default_bin_dir());
    pg::client(&server, "postgres")
        .batch_execute("CREATE DATABASE quiet")
        .unwrap();
    let env = superuser_env(&server, "postgres");
    let (p, addr) = exporter(&env_refs(&env), &[]);
    let families = scrape(addr);
    for family in ["pg_stat_activity_count", "pg_stat_activity_max_tx_duration"] {
        for state in ACTIVITY_STATES {
            // Upstream's zero rows carry datname and state, the other labels empty.
            let labels = [
                ("datname", "quiet"),
                ("state", state),
                ("usename", ""),
                ("application_name", ""),
                ("backend_type", ""),
                ("wait_event_type", ""),
                ("wait_event", ""),
            ];
            assert_eq!(
                value(&families, family, &labels),
                Some(0.0),
                "{family} {state}: {:?}\n{}",
                families.get(family).map(|f| &f.samples),
                p.stderr_text()
            );
        }
    }
    // Every database has every state, template databases included (v0.20 joins pg_database).
    for db in ["postgres", "template0", "template1"] {
        for state in ACTIVITY_STATES {
            assert!(
                value(
                    &families,
                    "pg_stat_activity_count",
                    &[("datname", db), ("state", state)]
                )
                .is_some(),
                "{db} {state}"
            );
        }
    }
}

#[test]
fn stat_activity_counts_no_background_process() {
    let server = pg::start(&pg::default_bin_dir());
    let env = superuser_env(&server, "postgres");
    let (_p, addr) = exporter(&env_refs(&env), &[]);
    let mut admin = pg::client(&server, "postgres");
    // The server's own processes (checkpointer, background writer, walwriter,
    // launchers) have no database: they are what must be left out.
    let background: Vec<String> = admin
        .query(
            "SELECT DISTINCT backend_type FROM pg_stat_activity WHERE datname IS NULL",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(!background.is_empty(), "no background process to leave out");
    let families = scrape(addr);
    let samples = &families["pg_stat_activity_count"].samples;
    let counted: Vec<_> = samples
        .iter()
        .filter(|(l, _)| l["datname"].is_empty() || background.contains(&l["backend_type"]))
        .collect();
    assert!(
        counted.is_empty(),
        "background processes counted: {counted:?}"
    );
    // What is left: client sessions (this test's; the exporter's own other
    // sessions but the one collecting).
    let clients: f64 = samples
        .iter()
        .filter(|(l, _)| l["backend_type"] == "client backend")
        .map(|(_, v)| v)
        .sum();
    assert!(clients >= 1.0, "{samples:?}");
}

#[test]
fn pg_settings_show_what_the_server_configures_not_the_exporters_session_overrides() {
    let server = pg::start(&pg::default_bin_dir());
    pg::client(&server, "postgres")
        .batch_execute(
            "CREATE ROLE mon LOGIN PASSWORD 'mon-pw'; GRANT pg_monitor TO mon;
             ALTER ROLE mon SET lock_timeout = '3s';
             ALTER ROLE mon SET log_statement = 'all';
             ALTER ROLE mon IN DATABASE postgres SET default_transaction_read_only = on;
             ALTER DATABASE postgres SET extra_float_digits = 2;",
        )
        .unwrap();
    let setting =
        |f: &BTreeMap<String, Family>, name: &str| value(f, &format!("pg_settings_{name}"), &[]);
    // The exporter sets statement_timeout (the collection timeout), lock_timeout
    // and default_transaction_read_only for its own sessions; none of that may show.
    let env = superuser_env(&server, "postgres");
    let (p, addr) = exporter(&env_refs(&env), &["--collection-timeout", "7s"]);
    let plain = scrape(addr);
    for (name, want) in [
        ("statement_timeout_seconds", 0.0),
        ("lock_timeout_seconds", 0.0),
        ("default_transaction_read_only", 0.0),
        ("transaction_read_only", 0.0),
        ("extra_float_digits", 2.0),
    ] {
        assert_eq!(
            setting(&plain, name),
            Some(want),
            "{name}\n{}",
            p.stderr_text()
        );
    }
    // A role and database that configure these: their values show.
    let env = role_env(&server, "postgres", "mon", "mon-pw");
    let (p, addr) = exporter(&env_refs(&env), &["--collection-timeout", "7s"]);
    let configured = scrape(addr);
    // ...while the exporter's sessions still run read-only and bounded.
    assert!(
        server.log().contains(
            "SET default_transaction_read_only = on; SET statement_timeout = 7000; SET lock_timeout = 1750"
        ),
        "{}",
        server.log()
    );
    for (name, want) in [
        ("statement_timeout_seconds", 0.0),
        ("lock_timeout_seconds", 3.0),
        ("default_transaction_read_only", 1.0),
        ("transaction_read_only", 1.0),
        ("extra_float_digits", 2.0),
    ] {
        assert_eq!(
            setting(&configured, name),
            Some(want),
            "{name}\n{}",
            p.stderr_text()
        );
    }
}
