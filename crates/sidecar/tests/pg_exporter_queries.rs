//! `sidecar postgres-exporter --extend.query-path`: custom queries in
//! upstream's queries.yaml format, end to end against real PostgreSQL.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::exporter::{self, command, scrape, scrape_text, value};
use common::pg::{self, PgServer, SUPERUSER, SUPERUSER_PASSWORD};
use common::prom::{self, Family};
use common::{Proc, wait_until};

/// No data source: only the custom queries file is read.
const NO_ENV: &[(&str, &str)] = &[];

/// Upstream's example file (tests/data/queries.yaml, Apache-2.0).
const UPSTREAM_QUERIES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/queries.yaml");

/// The environment for the superuser on `server`'s `postgres` database.
fn env(server: &PgServer) -> Vec<(&'static str, String)> {
    vec![
        ("DATA_SOURCE_URI", server.uri("postgres")),
        ("DATA_SOURCE_USER", SUPERUSER.to_string()),
        ("DATA_SOURCE_PASS", SUPERUSER_PASSWORD.to_string()),
    ]
}

/// An exporter with the custom queries file `queries` (given by the
/// environment variable, as a Pod spec would).
fn exporter(server: &PgServer, queries: &Path, args: &[&str]) -> (Proc, SocketAddr) {
    let mut env = env(server);
    env.push((
        "PG_EXPORTER_EXTEND_QUERY_PATH",
        queries.display().to_string(),
    ));
    exporter::start(&env, args)
}

/// A queries file in a directory that lives as long as the returned guard.
fn queries_file(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("queries.yaml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

fn success(families: &BTreeMap<String, Family>, namespace: &str) -> Option<f64> {
    value(
        families,
        "pg_scrape_collector_success",
        &[("collector", namespace)],
    )
}

/// The label names of a family's series.
fn label_keys(families: &BTreeMap<String, Family>, name: &str) -> Vec<String> {
    let family = families
        .get(name)
        .unwrap_or_else(|| panic!("{name} missing"));
    family.label_keys().into_iter().collect()
}

fn kind<'a>(families: &'a BTreeMap<String, Family>, name: &str) -> (&'a str, &'a str) {
    let f = families
        .get(name)
        .unwrap_or_else(|| panic!("{name} missing"));
    (f.kind.as_str(), f.help.as_str())
}

const EVERY_USAGE: &str = r#"
pg_custom:
  query: |
    SELECT 'a' AS kind, 'x y' AS other, 7::bigint AS hits, 2.5::float8 AS level,
           NULL::float8 AS missing, 'on' AS mode, '1h30m' AS wait, 'dropped' AS junk,
           42 AS extra, 'abc' AS bad, now() AS started
    UNION ALL
    SELECT 'b', NULL, 9, -1.25, NULL, 'off', '250ms', 'dropped', 43, 'def', now()
  metrics:
    - kind:
        usage: "LABEL"
        description: "The kind"
    - other:
        usage: "LABEL"
        description: "Another label"
    - hits:
        usage: "COUNTER"
        description: "Hits so far"
    - level:
        usage: "GAUGE"
        description: "The level"
    - missing:
        usage: "GAUGE"
        description: "Always NULL"
    - mode:
        usage: "MAPPEDMETRIC"
        description: "The mode"
        metric_mapping:
          on: 1
          off: 0
    - wait:
        usage: "DURATION"
        description: "The wait"
    - junk:
        usage: "DISCARD"
        description: "Not exported"
    - bad:
        usage: "GAUGE"
        description: "Text, not a number"
    - started:
        usage: "GAUGE"
        description: "A timestamp, as seconds"
pg_hist:
  master: true
  query: |
    SELECT 'app' AS application_name, ARRAY[1, 2, 5] AS seconds,
           ARRAY[1, 3, 4]::bigint[] AS seconds_bucket, 9.5 AS seconds_sum, 6 AS seconds_count
  metrics:
    - application_name:
        usage: "LABEL"
        description: "Application"
    - seconds:
        usage: "HISTOGRAM"
        description: "Idle time"
"#;

#[test]
fn every_usage_kind_with_upstreams_names_labels_types_and_values() {
    let server = pg::start(&pg::default_bin_dir());
    let (_dir, path) = queries_file(EVERY_USAGE);
    let (mut p, addr) = exporter(&server, &path, &[]);
    let body = scrape_text(addr);
    prom::promtool_check(&body);
    let f = prom::parse(&body);
    let host = format!("127.0.0.1:{}", server.port);
    let labels = vec!["kind", "other", "server"];
    let a = [("kind", "a"), ("other", "x y"), ("server", host.as_str())];
    let b = [("kind", "b"), ("other", ""), ("server", host.as_str())];

    assert_eq!(kind(&f, "pg_custom_hits"), ("counter", "Hits so far"));
    assert_eq!(label_keys(&f, "pg_custom_hits"), labels);
    assert_eq!(value(&f, "pg_custom_hits", &a), Some(7.0));
    assert_eq!(value(&f, "pg_custom_hits", &b), Some(9.0));

    assert_eq!(kind(&f, "pg_custom_level"), ("gauge", "The level"));
    assert_eq!(value(&f, "pg_custom_level", &a), Some(2.5));
    assert_eq!(value(&f, "pg_custom_level", &b), Some(-1.25));
    // NULL reads NaN, as upstream's dbToFloat64 has it.
    assert!(value(&f, "pg_custom_missing", &a).unwrap().is_nan());

    assert_eq!(kind(&f, "pg_custom_mode"), ("gauge", "The mode"));
    assert_eq!(value(&f, "pg_custom_mode", &a), Some(1.0));
    assert_eq!(value(&f, "pg_custom_mode", &b), Some(0.0));

    assert_eq!(
        kind(&f, "pg_custom_wait_milliseconds"),
        ("gauge", "The wait")
    );
    assert_eq!(
        value(&f, "pg_custom_wait_milliseconds", &a),
        Some(5_400_000.0)
    );
    assert_eq!(value(&f, "pg_custom_wait_milliseconds", &b), Some(250.0));

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let started = value(&f, "pg_custom_started", &a).unwrap();
    assert!((now - started).abs() < 120.0, "{started} vs {now}");

    // Not listed, a number: untyped, as upstream.
    assert_eq!(
        kind(&f, "pg_custom_extra"),
        ("untyped", "Unknown metric from pg_custom")
    );
    assert_eq!(value(&f, "pg_custom_extra", &b), Some(43.0));
    for absent in [
        "pg_custom_junk",
        "pg_custom_kind",
        "pg_custom_other",
        "pg_custom_bad",
    ] {
        assert!(!f.contains_key(absent), "{absent}");
    }
    p.wait_stderr(
        "column bad: \"abc\" does not read as its usage says",
        Duration::from_secs(10),
    );

    assert_eq!(kind(&f, "pg_hist_seconds"), ("histogram", "Idle time"));
    let h = [("application_name", "app"), ("server", host.as_str())];
    let bucket = |le: &str| {
        let mut l = h.to_vec();
        l.extend([("__name__", "pg_hist_seconds_bucket"), ("le", le)]);
        value(&f, "pg_hist_seconds", &l)
    };
    assert_eq!(bucket("1"), Some(1.0));
    assert_eq!(bucket("2"), Some(3.0));
    assert_eq!(bucket("5"), Some(4.0));
    assert_eq!(bucket("+Inf"), Some(6.0));
    let part = |name: &str| {
        let mut l = h.to_vec();
        l.push(("__name__", name));
        value(&f, "pg_hist_seconds", &l)
    };
    assert_eq!(part("pg_hist_seconds_sum"), Some(9.5));
    assert_eq!(part("pg_hist_seconds_count"), Some(6.0));

    for ns in ["pg_custom", "pg_hist"] {
        assert_eq!(success(&f, ns), Some(1.0), "{ns}");
    }
    assert_eq!(value(&f, "pg_exporter_last_scrape_error", &[]), Some(0.0));
    let load = &f["pg_exporter_user_queries_load_error"].samples[0];
    assert_eq!(load.0["filename"], path.display().to_string());
    assert_eq!(load.0["hashsum"].len(), 64);
    assert_eq!(load.1, 0.0);
    // The built-in collectors still run beside them.
    assert_eq!(success(&f, "stat_database"), Some(1.0));

    // /probe runs them too, labelled with the probed server.
    let target = format!("127.0.0.1:{}/postgres?sslmode=disable", server.port);
    let probed = common::exporter::probe(addr, &target);
    assert_eq!(value(&probed, "pg_custom_hits", &a), Some(7.0));
    assert_eq!(
        value(&probed, "pg_exporter_user_queries_load_error", &[]),
        Some(0.0)
    );
    p.terminate();
    assert!(p.wait(Duration::from_secs(10)).success());
}

#[test]
fn master_namespaces_run_on_the_main_database_the_others_on_every_database() {
    let server = pg::start(&pg::default_bin_dir());
    let mut admin = pg::client(&server, "postgres");
    admin.batch_execute("CREATE DATABASE app1").unwrap();
    admin.batch_execute("CREATE DATABASE app2").unwrap();
    let (_dir, path) = queries_file(
        "pg_main:\n  master: true\n  query: SELECT current_database() AS db, 1 AS one\n  metrics:\n    - db:\n        usage: LABEL\n        description: Database\n    - one:\n        usage: GAUGE\n        description: One\n\
         pg_each:\n  query: SELECT current_database() AS db, 1 AS one\n  metrics:\n    - db:\n        usage: LABEL\n        description: Database\n    - one:\n        usage: GAUGE\n        description: One\n",
    );
    let dbs = |f: &BTreeMap<String, Family>, name: &str| -> BTreeSet<String> {
        f.get(name)
            .map(|fam| fam.samples.iter().map(|(l, _)| l["db"].clone()).collect())
            .unwrap_or_default()
    };
    let set =
        |names: &[&str]| -> BTreeSet<String> { names.iter().map(|s| s.to_string()).collect() };

    // Without auto-discovery, everything on the DSN's database.
    let (p, addr) = exporter(&server, &path, &[]);
    let f = scrape(addr);
    assert_eq!(dbs(&f, "pg_main_one"), set(&["postgres"]));
    assert_eq!(dbs(&f, "pg_each_one"), set(&["postgres"]));
    drop(p);

    let (p, addr) = exporter(&server, &path, &["--auto-discover-databases"]);
    let mut f = scrape(addr);
    wait_until("every database", Duration::from_secs(30), || {
        f = scrape(addr);
        dbs(&f, "pg_each_one") == set(&["app1", "app2", "postgres"])
    });
    assert_eq!(dbs(&f, "pg_main_one"), set(&["postgres"]));
    assert_eq!(success(&f, "pg_each"), Some(1.0));
    drop(p);
}

#[test]
fn cache_seconds_reuses_the_result_for_that_long() {
    let server = pg::start(&pg::default_bin_dir());
    let (_dir, path) = queries_file(
        "pg_clock:\n  cache_seconds: 2\n  query: SELECT extract(epoch FROM clock_timestamp())::float8 AS now\n  metrics:\n    - now:\n        usage: GAUGE\n        description: When the query ran\n\
         pg_fresh:\n  query: SELECT extract(epoch FROM clock_timestamp())::float8 AS now\n  metrics:\n    - now:\n        usage: GAUGE\n        description: When the query ran\n",
    );
    let (_p, addr) = exporter(&server, &path, &[]);
    let read = |f: &BTreeMap<String, Family>, name: &str| value(f, name, &[]).unwrap();
    let before_first = Instant::now();
    let first = scrape(addr);
    let cached = read(&first, "pg_clock_now");
    // The next scrape, well inside the window, reuses it; the uncached one moves.
    let second_start = Instant::now();
    let second = scrape(addr);
    if second_start.duration_since(before_first) < Duration::from_millis(1500) {
        assert_eq!(read(&second, "pg_clock_now"), cached);
    }
    assert!(read(&second, "pg_fresh_now") > read(&first, "pg_fresh_now"));
    // It changes once the window has passed, and not before.
    let mut changed = None;
    wait_until(
        "a fresh read after cache_seconds",
        Duration::from_secs(20),
        || {
            let f = scrape(addr);
            let v = read(&f, "pg_clock_now");
            if v != cached {
                changed = Some((v, before_first.elapsed()));
            }
            changed.is_some()
        },
    );
    let (fresh, after) = changed.unwrap();
    assert!(after > Duration::from_secs(2), "re-read after {after:?}");
    assert!(fresh - cached > 1.9, "{cached} then {fresh}");
}

/// One namespace per major version, each with a range for its own.
const BY_VERSION: &str = "\
v15:\n  runonserver: \">=15.0.0 <16.0.0\"\n  query: SELECT 1 AS x\n  metrics:\n    - x:\n        usage: GAUGE\n        description: x\n\
v16:\n  runonserver: \"16.x\"\n  query: SELECT 1 AS x\n  metrics:\n    - x:\n        usage: GAUGE\n        description: x\n\
v17:\n  runonserver: \">=17.0.0 <18.0.0 || =99.0.0\"\n  query: SELECT 1 AS x\n  metrics:\n    - x:\n        usage: GAUGE\n        description: x\n\
v18:\n  runonserver: \">= 18.0.0\"\n  query: SELECT 1 AS x\n  metrics:\n    - x:\n        usage: GAUGE\n        description: x\n";

/// Upstream's example file with its pg_stat_statements namespace
/// uncommented: its query reads `total_time`, gone since PostgreSQL 13.
fn with_statements(upstream: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for line in upstream.lines() {
        if line.starts_with("# pg_stat_statements:") {
            inside = true;
        }
        if inside && line.is_empty() {
            inside = false;
        }
        match line.strip_prefix("# ").or(line.strip_prefix("#")) {
            Some(rest) if inside => out.push_str(rest),
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// Every family the built-in collectors write is one they declare (the
/// names a custom query may not take): all collectors on, each family
/// claimed by its collector's table entry.
fn builtin_families_are_declared_on(server: &PgServer) {
    use sidecar_pg_exporter::collectors::COLLECTORS;
    let mut c = pg::client(server, "postgres");
    let _ = c.batch_execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements");
    let all: Vec<String> = COLLECTORS
        .iter()
        .map(|c| format!("--collector.{}", c.name))
        .collect();
    let args: Vec<&str> = all.iter().map(String::as_str).collect();
    let p = Proc::start_with(&mut command(&env(server), &args));
    let f = scrape(p.logged_addr(" on http://"));
    let own = ["pg_up", "pg_static"];
    let own_prefixes = [
        "pg_exporter_",
        "pg_scrape_collector_",
        "process_",
        "postgres_exporter_",
    ];
    let mut unclaimed = Vec::new();
    for name in f.keys() {
        if own.contains(&name.as_str()) || own_prefixes.iter().any(|p| name.starts_with(p)) {
            continue;
        }
        let owners: Vec<&str> = COLLECTORS
            .iter()
            .filter(|c| c.writes("pg", name))
            .map(|c| c.name.as_ref())
            .collect();
        if owners.len() != 1 {
            unclaimed.push(format!("{name}: {owners:?}"));
        }
    }
    assert!(
        unclaimed.is_empty(),
        "families without exactly one declaring collector:\n{}",
        unclaimed.join("\n")
    );
}

fn upstream_file_on(server: &PgServer) {
    let upstream = std::fs::read_to_string(UPSTREAM_QUERIES).unwrap();
    let host = format!("127.0.0.1:{}", server.port);
    let mut c = pg::client(server, "postgres");
    c.batch_execute(
        "CREATE TABLE IF NOT EXISTS products (id serial PRIMARY KEY, name text);
         INSERT INTO products (name) SELECT 'p' || g FROM generate_series(1, 10) g;",
    )
    .unwrap();
    // Its pg_stat_user_tables and pg_statio_user_tables are the built-in
    // collectors' names: refused while they are on, as upstream's registry
    // would refuse every scrape.
    let out = command(&env(server), &["--extend.query-path", UPSTREAM_QUERIES])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("line 63") && err.contains("built-in collector stat_user_tables"),
        "{err}"
    );

    let off = [
        "--no-collector.stat_user_tables",
        "--no-collector.statio_user_tables",
    ];
    let (mut p, addr) = exporter(server, Path::new(UPSTREAM_QUERIES), &off);
    let mut body = scrape_text(addr);
    // Its pg_process_idle counts idle sessions: this client's is one.
    wait_until("an idle session", Duration::from_secs(10), || {
        body = scrape_text(addr);
        body.contains("pg_process_idle_seconds_count")
    });
    prom::promtool_check(&body);
    let f = prom::parse(&body);
    let server_only = vec!["server".to_string()];
    assert_eq!(
        kind(&f, "pg_replication_lag"),
        ("gauge", "Replication lag behind master in seconds")
    );
    assert_eq!(
        value(&f, "pg_replication_lag", &[("server", &host)]),
        Some(0.0)
    );
    assert_eq!(
        label_keys(&f, "pg_postmaster_start_time_seconds"),
        server_only
    );
    assert_eq!(kind(&f, "pg_stat_user_tables_seq_scan").0, "counter");
    assert_eq!(kind(&f, "pg_stat_user_tables_n_live_tup").0, "gauge");
    assert_eq!(
        label_keys(&f, "pg_stat_user_tables_seq_scan"),
        vec!["datname", "relname", "schemaname", "server"]
    );
    assert!(
        value(
            &f,
            "pg_stat_user_tables_n_tup_ins",
            &[("relname", "products")]
        )
        .is_some()
    );
    assert!(
        value(
            &f,
            "pg_statio_user_tables_heap_blks_hit",
            &[("relname", "products")]
        )
        .is_some()
    );
    assert_eq!(kind(&f, "pg_process_idle_seconds").0, "histogram");
    for ns in [
        "pg_replication",
        "pg_postmaster",
        "pg_stat_user_tables",
        "pg_statio_user_tables",
        "pg_process_idle",
    ] {
        assert_eq!(success(&f, ns), Some(1.0), "{ns}: {}", p.stderr_text());
    }
    assert_eq!(value(&f, "pg_exporter_last_scrape_error", &[]), Some(0.0));
    p.terminate();
    assert!(p.wait(Duration::from_secs(10)).success());

    // Uncommented, its pg_stat_statements fails (no total_time since 13):
    // that namespace alone is marked failed, with one warning.
    let (_dir, path) = queries_file(&with_statements(&upstream));
    let (mut p, addr) = exporter(server, &path, &off);
    let f = scrape(addr);
    let f2 = scrape(addr);
    assert_eq!(success(&f, "pg_stat_statements"), Some(0.0));
    assert_eq!(success(&f2, "pg_stat_statements"), Some(0.0));
    assert_eq!(success(&f, "pg_replication"), Some(1.0));
    assert_eq!(success(&f, "stat_database"), Some(1.0));
    assert!(f.contains_key("pg_stat_user_tables_seq_scan"));
    assert_eq!(value(&f, "pg_exporter_last_scrape_error", &[]), Some(1.0));
    assert_eq!(value(&f, "pg_up", &[]), Some(1.0));
    p.wait_stderr(
        "collector pg_stat_statements failed",
        Duration::from_secs(10),
    );
    assert_eq!(
        p.stderr_text()
            .matches("collector pg_stat_statements failed")
            .count(),
        1,
        "{}",
        p.stderr_text()
    );
    p.terminate();
    assert!(p.wait(Duration::from_secs(10)).success());

    // runonserver: only the namespace whose range holds this version runs.
    let (_dir, path) = queries_file(BY_VERSION);
    let (_p, addr) = exporter(server, &path, &[]);
    let f = scrape(addr);
    let ran: Vec<&str> = ["v15", "v16", "v17", "v18"]
        .into_iter()
        .filter(|ns| f.contains_key(&format!("{ns}_x")))
        .collect();
    assert_eq!(ran, vec![format!("v{}", server.major()).as_str()]);
    drop(c);
}

#[test]
fn upstreams_example_file_runonserver_and_builtin_names_on_every_available_version() {
    pg::each_version(|server| {
        builtin_families_are_declared_on(server);
        upstream_file_on(server);
    });
}

#[test]
fn a_failing_query_fails_its_namespace_only_and_warns_once_per_episode() {
    let server = pg::start(&pg::default_bin_dir());
    let (_dir, path) = queries_file(
        "pg_flaky:\n  query: SELECT count(*) AS rows FROM flaky\n  metrics:\n    - rows:\n        usage: GAUGE\n        description: Rows\n\
         pg_steady:\n  query: SELECT 1 AS one\n  metrics:\n    - one:\n        usage: GAUGE\n        description: One\n\
         pg_notarray:\n  query: SELECT 1 AS h, '{1}'::int[] AS h_bucket, 1 AS h_sum, 1 AS h_count\n  metrics:\n    - h:\n        usage: HISTOGRAM\n        description: H\n\
         pg_twice:\n  query: SELECT 1 AS one; SELECT 2 AS one\n  metrics:\n    - one:\n        usage: GAUGE\n        description: One\n\
         pg_set:\n  query: SET default_transaction_read_only = off\n  metrics: []\n",
    );
    let (p, addr) = exporter(&server, &path, &[]);
    let warning = "collector pg_flaky failed";
    for _ in 0..3 {
        let f = scrape(addr);
        assert_eq!(success(&f, "pg_flaky"), Some(0.0));
        assert_eq!(success(&f, "pg_steady"), Some(1.0));
        assert_eq!(value(&f, "pg_steady_one", &[]), Some(1.0));
        // A histogram column that holds no array fails its namespace.
        assert_eq!(success(&f, "pg_notarray"), Some(0.0));
        assert_eq!(value(&f, "pg_up", &[]), Some(1.0));
    }
    p.wait_stderr(warning, Duration::from_secs(10));
    assert_eq!(p.stderr_text().matches(warning).count(), 1);
    let soon = Duration::from_secs(10);
    p.wait_stderr(
        "pg_notarray: column h must hold a one-dimensional array",
        soon,
    );
    // One statement per namespace, and one that returns rows: no SET
    // undoes the session's read-only default.
    p.wait_stderr("pg_twice: the query holds several statements", soon);
    p.wait_stderr("pg_set: the query returns no columns", soon);
    let f = scrape(addr);
    assert_eq!(success(&f, "pg_twice"), Some(0.0));
    assert_eq!(success(&f, "pg_set"), Some(0.0));

    let mut c = pg::client(&server, "postgres");
    c.batch_execute("CREATE TABLE flaky (id int); INSERT INTO flaky VALUES (1), (2)")
        .unwrap();
    let f = scrape(addr);
    assert_eq!(success(&f, "pg_flaky"), Some(1.0));
    assert_eq!(value(&f, "pg_flaky_rows", &[]), Some(2.0));
    c.batch_execute("DROP TABLE flaky").unwrap();
    // A new episode: a new warning.
    assert_eq!(success(&scrape(addr), "pg_flaky"), Some(0.0));
    wait_until("a second warning", Duration::from_secs(10), || {
        p.stderr_text().matches(warning).count() == 2
    });
}

/// Starts the exporter with `text` as its queries file; it must refuse to
/// start, and say so on stderr.
fn refused(text: &str) -> String {
    let (_dir, path) = queries_file(text);
    let out = command(
        &[] as &[(&str, &str)],
        &["--extend.query-path", path.to_str().unwrap()],
    )
    .output()
    .unwrap();
    assert!(!out.status.success(), "started with:\n{text}");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(err.contains(path.to_str().unwrap()), "{err}");
    err
}

const GOOD: &str = "\
pg_a:
  query: SELECT 'l' AS l, 1 AS x
  metrics:
    - l:
        usage: LABEL
        description: A label
    - x:
        usage: GAUGE
        description: An x
";

#[test]
fn bad_files_are_refused_at_start_naming_the_line_and_the_fix() {
    let cases: Vec<(String, &str, &str)> = vec![
        (
            GOOD.replace("usage: GAUGE", "usage: GAUG"),
            "line 8",
            "unknown usage \"GAUG\"",
        ),
        (
            GOOD.replace("  query: SELECT 'l' AS l, 1 AS x\n", ""),
            "line 1",
            "has no query",
        ),
        (
            GOOD.replace("usage: GAUGE", "usage: MAPPEDMETRIC"),
            "line 7",
            "needs metric_mapping",
        ),
        (
            GOOD.replace("  metrics:", "  runonserver: \">=10\"\n  metrics:"),
            "line 3",
            "is not a version like 10.0.0",
        ),
        (
            GOOD.replace("  metrics:\n", "  metrics: [\n"),
            "line ",
            "namespace pg_a",
        ),
        (
            GOOD.replace("pg_a:", "pg_database:")
                .replace("- x:", "- size_bytes:"),
            "line 7",
            "pg_database_size_bytes is also written by the built-in collector database",
        ),
        (
            format!(
                "{GOOD}{}",
                GOOD.replace("pg_a:", "pg:").replace("- x:", "- a_x:")
            ),
            "line 16",
            "also defined by namespace pg_a, column x (line 7)",
        ),
        (
            GOOD.replace("- l:", "- server:"),
            "line 4",
            "adds the label server",
        ),
        (
            GOOD.replace("pg_a:", "pg_exporter:")
                .replace("- x:", "- scrapes_total:"),
            "line 7",
            "the exporter's own families",
        ),
        (
            GOOD.replace("pg_a:", "pg-a:"),
            "line 7",
            "pg-a_x is not a valid metric name",
        ),
        (
            GOOD.replace("description: An x", "descripton: An x"),
            "line 9",
            "unknown field `descripton`",
        ),
    ];
    for (text, line, what) in cases {
        let err = refused(&text);
        assert!(
            err.contains(line) && err.contains(what),
            "expected {line}: {what}, got: {err}"
        );
    }
    let out = command(
        &[] as &[(&str, &str)],
        &["--extend.query-path", "/nonexistent/queries.yaml"],
    )
    .output()
    .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot read the custom queries file /nonexistent/queries.yaml"),
        "{err}"
    );
    // A built-in collector turned off frees its names.
    let (_dir, path) = queries_file(
        &GOOD
            .replace("pg_a:", "pg_database:")
            .replace("- x:", "- size_bytes:"),
    );
    let mut p = Proc::start_with(&mut command(
        NO_ENV,
        &[
            "--extend.query-path",
            path.to_str().unwrap(),
            "--no-collector.database",
        ],
    ));
    p.logged_addr(" on http://");
    p.terminate();
    assert!(p.wait(Duration::from_secs(10)).success());
}

#[test]
fn queries_run_read_only_and_within_the_collection_timeout() {
    let server = pg::start(&pg::default_bin_dir());
    let mut c = pg::client(&server, "postgres");
    c.batch_execute("CREATE TABLE audit (id int)").unwrap();
    let (_dir, path) = queries_file(
        "pg_write:\n  query: WITH w AS (INSERT INTO audit VALUES (1) RETURNING id) SELECT count(*) AS n FROM w\n  metrics:\n    - n:\n        usage: GAUGE\n        description: N\n\
         pg_quick:\n  query: SELECT 1 AS x\n  metrics:\n    - x:\n        usage: GAUGE\n        description: X\n\
         pg_slow:\n  query: SELECT 1 AS x FROM pg_sleep(5)\n  metrics:\n    - x:\n        usage: GAUGE\n        description: X\n",
    );
    let (p, addr) = exporter(&server, &path, &["--collection-timeout", "1s"]);
    let started = Instant::now();
    let f = scrape(addr);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(success(&f, "pg_write"), Some(0.0));
    assert_eq!(success(&f, "pg_slow"), Some(0.0));
    // A database's queries run in turn on its session (as upstream runs
    // them on its one connection): the built-in collectors go first, then
    // the namespaces in file order, so a slow one delays only those after it.
    assert_eq!(success(&f, "pg_quick"), Some(1.0));
    assert_eq!(value(&f, "pg_quick_x", &[]), Some(1.0));
    for builtin in ["stat_database", "settings", "stat_user_tables"] {
        assert_eq!(success(&f, builtin), Some(1.0), "{builtin}");
    }
    assert_eq!(value(&f, "pg_up", &[]), Some(1.0));
    let soon = Duration::from_secs(10);
    p.wait_stderr(
        "pg_write failed on postgres: ERROR: cannot execute SELECT in a read-only transaction",
        soon,
    );
    p.wait_stderr("collector pg_slow", soon);
    let rows: i64 = c
        .query_one("SELECT count(*) FROM audit", &[])
        .unwrap()
        .get(0);
    assert_eq!(rows, 0);
}
