//! The collectors: one SQL query (or a few) each, adapted to the server
//! version, mapped to upstream postgres_exporter's family names and labels.
//!
//! Queries cast label columns to `text` and value columns to `float8`, so
//! every row maps the same way: label columns first, then one column per metric.

use crate::session::Session;

use crate::exposition::{Families, Kind, Labels, sanitize_name};

/// Where a collector runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Once per server, on the main connection.
    Server,
    /// On every collected database (per-table statistics).
    Database,
}

/// A collector as `--collector.<name>` names it.
#[derive(Debug, Clone, Copy)]
pub struct Info {
    pub name: &'static str,
    pub default_on: bool,
    pub scope: Scope,
    pub about: &'static str,
}

/// Every collector, in upstream's names. Default-on ones match upstream v0.20.
pub const COLLECTORS: &[Info] = &[
    Info {
        name: "database",
        default_on: true,
        scope: Scope::Server,
        about: "database sizes and connection limits",
    },
    Info {
        name: "locks",
        default_on: true,
        scope: Scope::Server,
        about: "locks by database and mode",
    },
    Info {
        name: "replication",
        default_on: true,
        scope: Scope::Server,
        about: "replica lag",
    },
    Info {
        name: "replication_slots",
        default_on: true,
        scope: Scope::Server,
        about: "replication slot positions and state",
    },
    Info {
        name: "roles",
        default_on: true,
        scope: Scope::Server,
        about: "role connection limits",
    },
    Info {
        name: "settings",
        default_on: true,
        scope: Scope::Server,
        about: "pg_settings, units converted to seconds and bytes",
    },
    Info {
        name: "stat_activity",
        default_on: true,
        scope: Scope::Server,
        about: "sessions by database, state, user, application and wait event",
    },
    Info {
        name: "stat_archiver",
        default_on: true,
        scope: Scope::Server,
        about: "WAL archiver",
    },
    Info {
        name: "stat_bgwriter",
        default_on: true,
        scope: Scope::Server,
        about: "background writer (and checkpoints before PostgreSQL 17)",
    },
    Info {
        name: "stat_database",
        default_on: true,
        scope: Scope::Server,
        about: "per-database transactions, blocks, tuples, conflicts",
    },
    Info {
        name: "stat_progress_vacuum",
        default_on: true,
        scope: Scope::Server,
        about: "running vacuums",
    },
    Info {
        name: "stat_replication",
        default_on: true,
        scope: Scope::Server,
        about: "connected replicas",
    },
    Info {
        name: "stat_user_tables",
        default_on: true,
        scope: Scope::Database,
        about: "per-table scans, tuples, vacuum and sizes",
    },
    Info {
        name: "statio_user_tables",
        default_on: true,
        scope: Scope::Database,
        about: "per-table block reads and hits",
    },
    Info {
        name: "wal",
        default_on: true,
        scope: Scope::Server,
        about: "WAL segments and size",
    },
    Info {
        name: "database_wraparound",
        default_on: false,
        scope: Scope::Server,
        about: "transaction ID age per database",
    },
    Info {
        name: "long_running_transactions",
        default_on: false,
        scope: Scope::Server,
        about: "open transactions and the oldest one's age",
    },
    Info {
        name: "postmaster",
        default_on: false,
        scope: Scope::Server,
        about: "server start time",
    },
    Info {
        name: "stat_checkpointer",
        default_on: false,
        scope: Scope::Server,
        about: "checkpoints on PostgreSQL 17 and later",
    },
    Info {
        name: "stat_statements",
        default_on: false,
        scope: Scope::Server,
        about: "top statements by total time (needs pg_stat_statements)",
    },
];

/// What a collector needs to know about the server.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// Metric name prefix (`pg` unless `--metric-prefix`).
    pub prefix: String,
    /// `server_version_num`, e.g. 150018.
    pub version: u32,
    /// `host:port`, the `server` label of upstream's legacy families.
    pub server: String,
    /// Rows kept by the stat_statements collector.
    pub statements_limit: u32,
}

#[derive(Debug, Clone, Copy)]
enum Null {
    Skip,
    Zero,
    NaN,
}

struct Metric {
    name: &'static str,
    kind: Kind,
    help: &'static str,
    null: Null,
}

const fn m(name: &'static str, kind: Kind, help: &'static str) -> Metric {
    Metric {
        name,
        kind,
        help,
        null: Null::Skip,
    }
}

const fn z(name: &'static str, kind: Kind, help: &'static str) -> Metric {
    Metric {
        name,
        kind,
        help,
        null: Null::Zero,
    }
}

struct Spec {
    /// `<prefix>_<family>_<metric>`.
    family: &'static str,
    labels: &'static [&'static str],
    metrics: &'static [Metric],
}

use Kind::{Counter as C, Gauge as G, Untyped as U};

/// Runs collector `name` on `client`, adding its samples to `out`.
pub async fn collect(
    name: &str,
    client: &Session,
    ctx: &Ctx,
    out: &mut Families,
) -> Result<(), tokio_postgres::Error> {
    let v = ctx.version;
    match name {
        "database" => {
            run(client, ctx, out, &DATABASE, "SELECT datname::text, \
                 CASE WHEN has_database_privilege(oid, 'CONNECT') OR pg_has_role('pg_read_all_stats', 'MEMBER') \
                      THEN pg_database_size(oid)::float8 END, \
                 datconnlimit::float8 FROM pg_database").await
        }
        "locks" => run(client, ctx, out, &LOCKS, LOCKS_SQL).await,
        "replication" => run(client, ctx, out, &REPLICATION, REPLICATION_SQL).await,
        "replication_slots" => {
            let legacy = format!(
                "SELECT slot_name::text, COALESCE(database, '')::text, active::int::float8, \
                 ({CURRENT_LSN} - restart_lsn)::float8 FROM pg_replication_slots");
            let slots = format!(
                "SELECT slot_name::text, slot_type::text, ({CURRENT_LSN} - '0/0')::float8, \
                 (confirmed_flush_lsn - '0/0')::float8, active::int::float8, safe_wal_size::float8 \
                 FROM pg_replication_slots");
            run_all(client, ctx, out, &[
                (&SLOTS_LEGACY, &legacy),
                (&SLOTS, &slots),
                (&SLOTS_STATUS, "SELECT slot_name::text, slot_type::text, \
                 COALESCE(wal_status, '')::text, 1::float8 FROM pg_replication_slots"),
            ]).await
        }
        "roles" => run(client, ctx, out, &ROLES, "SELECT rolname::text, rolconnlimit::float8 FROM pg_roles").await,
        "settings" => settings(client, ctx, out).await,
        "stat_activity" => run(client, ctx, out, &ACTIVITY, ACTIVITY_SQL).await,
        "stat_archiver" => run(client, ctx, out, &ARCHIVER, "SELECT archived_count::float8, failed_count::float8, \
             EXTRACT(EPOCH FROM now() - last_archived_time)::float8 FROM pg_stat_archiver").await,
        "stat_bgwriter" => {
            if v >= 170_000 {
                run(client, ctx, out, &BGWRITER_17, "SELECT buffers_clean::float8, maxwritten_clean::float8, \
                     buffers_alloc::float8, EXTRACT(EPOCH FROM stats_reset)::float8 FROM pg_stat_bgwriter").await
            } else {
                run(client, ctx, out, &BGWRITER, "SELECT checkpoints_timed::float8, checkpoints_req::float8, \
                     checkpoint_write_time::float8, checkpoint_sync_time::float8, buffers_checkpoint::float8, \
                     buffers_clean::float8, maxwritten_clean::float8, buffers_backend::float8, \
                     buffers_backend_fsync::float8, buffers_alloc::float8, \
                     EXTRACT(EPOCH FROM stats_reset)::float8 FROM pg_stat_bgwriter").await
            }
        }
        "stat_checkpointer" => {
            if v < 170_000 {
                return Ok(()); // the view exists from PostgreSQL 17; stat_bgwriter covers older servers
            }
            run(client, ctx, out, &CHECKPOINTER, "SELECT num_timed::float8, num_requested::float8, \
                 restartpoints_timed::float8, restartpoints_req::float8, restartpoints_done::float8, \
                 write_time::float8, sync_time::float8, buffers_written::float8, \
                 EXTRACT(EPOCH FROM stats_reset)::float8 FROM pg_stat_checkpointer").await
        }
        "stat_database" => {
            // PG 14+ columns: upstream 0.11 exported them untyped under their own
            // names (dashboards use them); v0.20 renamed active_time. Both are kept.
            let active = if v >= 140_000 {
                ", (active_time / 1000)::float8, active_time::float8, session_time::float8, \
                 idle_in_transaction_time::float8, sessions::float8, sessions_abandoned::float8, \
                 sessions_fatal::float8, sessions_killed::float8"
            } else {
                ", NULL::float8, NULL::float8, NULL::float8, NULL::float8, NULL::float8, NULL::float8, \
                 NULL::float8, NULL::float8"
            };
            let stats = format!(
                "SELECT datid::text, datname::text, numbackends::float8, xact_commit::float8, \
                 xact_rollback::float8, blks_read::float8, blks_hit::float8, tup_returned::float8, \
                 tup_fetched::float8, tup_inserted::float8, tup_updated::float8, tup_deleted::float8, \
                 conflicts::float8, temp_files::float8, temp_bytes::float8, deadlocks::float8, \
                 blk_read_time::float8, blk_write_time::float8, EXTRACT(EPOCH FROM stats_reset)::float8{active}, \
                 checksum_failures::float8, EXTRACT(EPOCH FROM checksum_last_failure)::float8 \
                 FROM pg_stat_database WHERE datname IS NOT NULL");
            // Upstream's legacy families, with its `server` label.
            let conflicts = format!(
                "SELECT datid::text, datname::text, {} AS server, confl_tablespace::float8, confl_lock::float8, \
                 confl_snapshot::float8, confl_bufferpin::float8, confl_deadlock::float8 \
                 FROM pg_stat_database_conflicts WHERE datname IS NOT NULL", literal(&ctx.server));
            run_all(client, ctx, out, &[(&STAT_DATABASE, &stats), (&CONFLICTS, &conflicts)]).await
        }
        "stat_progress_vacuum" => {
            let (max_dead, num_dead) = if v >= 170_000 {
                ("max_dead_tuple_bytes", "num_dead_item_ids")
            } else {
                ("max_dead_tuples", "num_dead_tuples")
            };
            let progress = format!(
                "SELECT d.datname::text, COALESCE(c.relname, '')::text, p.heap_blks_total::float8, \
                 p.heap_blks_scanned::float8, p.heap_blks_vacuumed::float8, p.index_vacuum_count::float8, \
                 p.{max_dead}::float8, p.{num_dead}::float8 FROM pg_stat_progress_vacuum p \
                 JOIN pg_database d ON d.oid = p.datid LEFT JOIN pg_class c ON c.oid = p.relid");
            run_all(client, ctx, out, &[(&VACUUM, &progress), (&VACUUM_PHASE, VACUUM_PHASE_SQL)]).await
        }
        "stat_replication" => run(client, ctx, out, &STAT_REPLICATION, &format!(
            "SELECT COALESCE(r.application_name, '')::text, COALESCE(host(r.client_addr), '')::text, \
             COALESCE(r.state, '')::text, COALESCE(s.slot_name, '')::text, \
             ({CURRENT_LSN} - '0/0')::float8, ({CURRENT_LSN} - r.replay_lsn)::float8 \
             FROM pg_stat_replication r LEFT JOIN pg_replication_slots s ON s.active_pid = r.pid")).await,
        "stat_user_tables" => run(client, ctx, out, &USER_TABLES, USER_TABLES_SQL).await,
        "statio_user_tables" => run(client, ctx, out, &STATIO, "SELECT current_database()::text, schemaname::text, \
             relname::text, heap_blks_read::float8, heap_blks_hit::float8, idx_blks_read::float8, \
             idx_blks_hit::float8, toast_blks_read::float8, toast_blks_hit::float8, tidx_blks_read::float8, \
             tidx_blks_hit::float8 FROM pg_statio_user_tables").await,
        "wal" => run(client, ctx, out, &WAL, "SELECT count(*)::float8, COALESCE(sum(size), 0)::float8 \
             FROM pg_ls_waldir() WHERE name ~ '^[0-9A-F]{24}$'").await,
        "database_wraparound" => run(client, ctx, out, &WRAPAROUND, "SELECT datname::text, \
             age(datfrozenxid)::float8, mxid_age(datminmxid)::float8 FROM pg_database WHERE datallowconn").await,
        "long_running_transactions" => run(client, ctx, out, &LONG_TX, "SELECT count(*)::float8, \
             COALESCE(max(EXTRACT(EPOCH FROM clock_timestamp() - xact_start)), 0)::float8 \
             FROM pg_stat_activity WHERE state IS DISTINCT FROM 'idle' AND query NOT LIKE 'autovacuum:%' \
             AND xact_start IS NOT NULL AND pid <> pg_backend_pid()").await,
        "postmaster" => run(client, ctx, out, &POSTMASTER,
            "SELECT EXTRACT(EPOCH FROM pg_postmaster_start_time())::float8").await,
        "stat_statements" => {
            let (read, write) = if v >= 170_000 {
                ("shared_blk_read_time", "shared_blk_write_time")
            } else {
                ("blk_read_time", "blk_write_time")
            };
            run(client, ctx, out, &STATEMENTS, &format!(
                "SELECT pg_get_userbyid(s.userid)::text, d.datname::text, s.queryid::text, s.calls::float8, \
                 (s.total_exec_time / 1000)::float8, s.rows::float8, (s.{read} / 1000)::float8, \
                 (s.{write} / 1000)::float8 FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid \
                 ORDER BY s.total_exec_time DESC LIMIT {}", ctx.statements_limit)).await
        }
        _ => Ok(()),
    }
}

/// Upstream's `pg_static{server, version, short_version} 1`.
pub async fn static_info(
    client: &Session,
    ctx: &Ctx,
    out: &mut Families,
) -> Result<(), tokio_postgres::Error> {
    let rows = client.query("SELECT version()").await?;
    let version: String = rows.first().map(|r| r.get(0)).unwrap_or_default();
    let short = format!("{}.{}.0", ctx.version / 10_000, ctx.version % 100);
    out.add(
        &format!("{}_static", ctx.prefix),
        "Version string as reported by postgres",
        Kind::Untyped,
        vec![
            ("server".into(), ctx.server.clone()),
            ("short_version".into(), short),
            ("version".into(), version),
        ],
        1.0,
    );
    Ok(())
}

/// `'text'` as an SQL string literal.
fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

const CURRENT_LSN: &str =
    "CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn() ELSE pg_current_wal_lsn() END";

async fn run(
    client: &Session,
    ctx: &Ctx,
    out: &mut Families,
    spec: &Spec,
    sql: &str,
) -> Result<(), tokio_postgres::Error> {
    let rows = client.query(sql).await?;
    let names: Vec<String> = spec
        .metrics
        .iter()
        .map(|m| match m.name {
            "" => format!("{}_{}", ctx.prefix, spec.family),
            name => format!("{}_{}_{}", ctx.prefix, spec.family, name),
        })
        .collect();
    for row in rows {
        let labels: Labels = spec
            .labels
            .iter()
            .enumerate()
            .map(|(i, name)| {
                (
                    name.to_string(),
                    row.get::<_, Option<String>>(i).unwrap_or_default(),
                )
            })
            .collect();
        for (j, metric) in spec.metrics.iter().enumerate() {
            let value: Option<f64> = row.try_get(spec.labels.len() + j)?;
            let value = match (value, metric.null) {
                (Some(v), _) => v,
                (None, Null::Zero) => 0.0,
                (None, Null::NaN) => f64::NAN,
                (None, Null::Skip) => continue,
            };
            out.add(&names[j], metric.help, metric.kind, labels.clone(), value);
        }
    }
    Ok(())
}

/// Runs several queries of one collector at once (pipelined on the session:
/// one round trip, not one per query) and adds their rows in order.
async fn run_all(
    client: &Session,
    ctx: &Ctx,
    out: &mut Families,
    queries: &[(&Spec, &str)],
) -> Result<(), tokio_postgres::Error> {
    let results = futures_util::future::join_all(queries.iter().map(|(spec, sql)| async move {
        let mut fam = Families::new();
        run(client, ctx, &mut fam, spec, sql).await.map(|()| fam)
    }))
    .await;
    for result in results {
        out.merge(result?);
    }
    Ok(())
}

/// pg_settings only change when the configuration is reloaded (or the server
/// restarts, which means a new session): the rows are read again only when
/// `pg_conf_load_time()` moves.
async fn settings(
    client: &Session,
    ctx: &Ctx,
    out: &mut Families,
) -> Result<(), tokio_postgres::Error> {
    let stamp: f64 = client
        .query("SELECT EXTRACT(EPOCH FROM pg_conf_load_time())::float8")
        .await?
        .first()
        .and_then(|r| r.get::<_, Option<f64>>(0))
        .unwrap_or(f64::NAN);
    if let Some(cached) = client.cached("settings", stamp) {
        out.merge(cached);
        return Ok(());
    }
    let rows = client
        .query(
            "SELECT name, setting, COALESCE(unit, ''), short_desc, vartype FROM pg_settings \
             WHERE vartype IN ('bool', 'integer', 'real')",
        )
        .await?;
    let mut fresh = Families::new();
    for row in rows {
        let (name, setting, unit, desc, vartype): (String, String, String, String, String) =
            (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
        if let Some((suffix, value, help)) = setting_value(&setting, &unit, &vartype, &desc) {
            let family = format!("{}_settings_{}{}", ctx.prefix, sanitize_name(&name), suffix);
            fresh.add(&family, &help, Kind::Gauge, Vec::new(), value);
        }
    }
    client.store("settings", stamp, fresh.clone());
    out.merge(fresh);
    Ok(())
}

/// A setting as upstream shows it: booleans 1/0, times in seconds, sizes in
/// bytes (name suffix `_seconds`/`_bytes`), -1 kept as is. `None` for units
/// it does not know (skipped rather than shown wrong).
pub fn setting_value(
    setting: &str,
    unit: &str,
    vartype: &str,
    desc: &str,
) -> Option<(&'static str, f64, String)> {
    if vartype == "bool" {
        return Some((
            "",
            if setting == "on" { 1.0 } else { 0.0 },
            desc.to_string(),
        ));
    }
    let value: f64 = setting.parse().ok()?;
    let (suffix, factor) = match unit {
        "" => return Some(("", value, desc.to_string())),
        "ms" => ("_seconds", 0.001),
        "s" => ("_seconds", 1.0),
        "min" => ("_seconds", 60.0),
        "h" => ("_seconds", 3600.0),
        "d" => ("_seconds", 86400.0),
        "B" => ("_bytes", 1.0),
        "kB" => ("_bytes", 1024.0),
        "MB" => ("_bytes", 1024.0 * 1024.0),
        "GB" => ("_bytes", 1024.0 * 1024.0 * 1024.0),
        "TB" => ("_bytes", 1024.0 * 1024.0 * 1024.0 * 1024.0),
        "8kB" => ("_bytes", 8192.0),
        "16kB" => ("_bytes", 16384.0),
        "32kB" => ("_bytes", 32768.0),
        "16MB" => ("_bytes", 16.0 * 1024.0 * 1024.0),
        "32MB" => ("_bytes", 32.0 * 1024.0 * 1024.0),
        "64MB" => ("_bytes", 64.0 * 1024.0 * 1024.0),
        _ => return None,
    };
    let unit_word = &suffix[1..];
    let value = if value == -1.0 { value } else { value * factor };
    Some((
        suffix,
        value,
        format!("{desc} [Units converted to {unit_word}.]"),
    ))
}

const DATABASE: Spec = Spec {
    family: "database",
    labels: &["datname"],
    metrics: &[
        m("size_bytes", G, "Disk space used by the database"),
        m(
            "connection_limit",
            G,
            "Connection limit set for the database",
        ),
    ],
};

const LOCKS: Spec = Spec {
    family: "locks",
    labels: &["datname", "mode"],
    metrics: &[m("count", G, "Number of locks")],
};

const LOCKS_SQL: &str = "SELECT d.datname::text, tmp.mode::text, COALESCE(l.count, 0)::float8 \
    FROM (VALUES ('accesssharelock'), ('rowsharelock'), ('rowexclusivelock'), ('shareupdateexclusivelock'), \
    ('sharelock'), ('sharerowexclusivelock'), ('exclusivelock'), ('accessexclusivelock'), ('sireadlock')) AS tmp(mode) \
    CROSS JOIN pg_database d LEFT JOIN (SELECT database, lower(mode) AS mode, count(*) AS count FROM pg_locks \
    WHERE database IS NOT NULL GROUP BY database, lower(mode)) AS l ON tmp.mode = l.mode AND d.oid = l.database";

const REPLICATION: Spec = Spec {
    family: "replication",
    labels: &[],
    metrics: &[
        m("lag_seconds", G, "Replication lag behind master in seconds"),
        m("is_replica", G, "Indicates if the server is a replica"),
        m("last_replay_seconds", G, "Age of last replay in seconds"),
    ],
};

const REPLICATION_SQL: &str = "SELECT CASE WHEN NOT pg_is_in_recovery() THEN 0 \
    WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0 \
    ELSE GREATEST(0, EXTRACT(EPOCH FROM (now() - pg_last_xact_replay_timestamp()))) END::float8, \
    CASE WHEN pg_is_in_recovery() THEN 1 ELSE 0 END::float8, \
    GREATEST(0, EXTRACT(EPOCH FROM (now() - pg_last_xact_replay_timestamp())))::float8";

const SLOTS_LEGACY: Spec = Spec {
    family: "replication_slots",
    labels: &["slot_name", "database"],
    metrics: &[
        m("active", G, "Flag indicating if the slot is active"),
        m("pg_wal_lsn_diff", G, "Replication lag in bytes"),
    ],
};

const SLOTS: Spec = Spec {
    family: "replication_slots",
    labels: &["slot_name", "slot_type"],
    metrics: &[
        m(
            "slot_current_wal_lsn",
            G,
            "Current WAL location of the server",
        ),
        m(
            "slot_confirmed_flush_lsn",
            G,
            "LSN up to which the logical slot's consumer confirmed data",
        ),
        m("slot_is_active", G, "Whether the slot is active"),
        m(
            "safe_wal_size_bytes",
            G,
            "Bytes that can be written to WAL before this slot is in danger of being lost",
        ),
    ],
};

const SLOTS_STATUS: Spec = Spec {
    family: "replication_slots",
    labels: &["slot_name", "slot_type", "wal_status"],
    metrics: &[m(
        "wal_status",
        G,
        "Availability of WAL files claimed by this slot",
    )],
};

const ROLES: Spec = Spec {
    family: "roles",
    labels: &["rolname"],
    metrics: &[m(
        "connection_limit",
        G,
        "Connection limit set for the role",
    )],
};

const ACTIVITY: Spec = Spec {
    family: "stat_activity",
    labels: &[
        "datname",
        "state",
        "usename",
        "application_name",
        "backend_type",
        "wait_event_type",
        "wait_event",
    ],
    metrics: &[
        m("count", G, "number of connections in this state"),
        m(
            "max_tx_duration",
            G,
            "max duration in seconds any active transaction has been running",
        ),
    ],
};

const ACTIVITY_SQL: &str = "SELECT COALESCE(datname, '')::text, COALESCE(state, '')::text, \
    COALESCE(usename, '')::text, COALESCE(application_name, '')::text, COALESCE(backend_type, '')::text, \
    COALESCE(wait_event_type, '')::text, COALESCE(wait_event, '')::text, count(*)::float8, \
    COALESCE(max(EXTRACT(EPOCH FROM now() - xact_start)), 0)::float8 \
    FROM pg_stat_activity WHERE pid <> pg_backend_pid() GROUP BY 1, 2, 3, 4, 5, 6, 7";

const ARCHIVER: Spec = Spec {
    family: "stat_archiver",
    labels: &[],
    metrics: &[
        m(
            "archived_count",
            C,
            "Number of WAL files that have been successfully archived",
        ),
        m(
            "failed_count",
            C,
            "Number of failed attempts for archiving WAL files",
        ),
        Metric {
            name: "last_archive_age",
            kind: G,
            help: "Time in seconds since last WAL segment was successfully archived",
            null: Null::NaN,
        },
    ],
};

const BGWRITER: Spec = Spec {
    family: "stat_bgwriter",
    labels: &[],
    metrics: &[
        m(
            "checkpoints_timed_total",
            C,
            "Number of scheduled checkpoints that have been performed",
        ),
        m(
            "checkpoints_req_total",
            C,
            "Number of requested checkpoints that have been performed",
        ),
        m(
            "checkpoint_write_time_total",
            C,
            "Total amount of time that has been spent in the portion of checkpoint processing where files are written to disk, in milliseconds",
        ),
        m(
            "checkpoint_sync_time_total",
            C,
            "Total amount of time that has been spent in the portion of checkpoint processing where files are synchronized to disk, in milliseconds",
        ),
        m(
            "buffers_checkpoint_total",
            C,
            "Number of buffers written during checkpoints",
        ),
        m(
            "buffers_clean_total",
            C,
            "Number of buffers written by the background writer",
        ),
        m(
            "maxwritten_clean_total",
            C,
            "Number of times the background writer stopped a cleaning scan because it had written too many buffers",
        ),
        m(
            "buffers_backend_total",
            C,
            "Number of buffers written directly by a backend",
        ),
        m(
            "buffers_backend_fsync_total",
            C,
            "Number of times a backend had to execute its own fsync call",
        ),
        m("buffers_alloc_total", C, "Number of buffers allocated"),
        m(
            "stats_reset_total",
            C,
            "Time at which these statistics were last reset",
        ),
    ],
};

const BGWRITER_17: Spec = Spec {
    family: "stat_bgwriter",
    labels: &[],
    metrics: &[
        m(
            "buffers_clean_total",
            C,
            "Number of buffers written by the background writer",
        ),
        m(
            "maxwritten_clean_total",
            C,
            "Number of times the background writer stopped a cleaning scan because it had written too many buffers",
        ),
        m("buffers_alloc_total", C, "Number of buffers allocated"),
        m(
            "stats_reset_total",
            C,
            "Time at which these statistics were last reset",
        ),
    ],
};

const CHECKPOINTER: Spec = Spec {
    family: "stat_checkpointer",
    labels: &[],
    metrics: &[
        m(
            "num_timed_total",
            C,
            "Number of scheduled checkpoints due to timeout",
        ),
        m(
            "num_requested_total",
            C,
            "Number of requested checkpoints that have been performed",
        ),
        m(
            "restartpoints_timed_total",
            C,
            "Number of scheduled restartpoints due to timeout or after a failed attempt to perform it",
        ),
        m(
            "restartpoints_req_total",
            C,
            "Number of requested restartpoints",
        ),
        m(
            "restartpoints_done_total",
            C,
            "Number of restartpoints that have been performed",
        ),
        m(
            "write_time_total",
            C,
            "Time spent writing files during checkpoints and restartpoints, in milliseconds",
        ),
        m(
            "sync_time_total",
            C,
            "Time spent synchronizing files during checkpoints and restartpoints, in milliseconds",
        ),
        m(
            "buffers_written_total",
            C,
            "Number of buffers written during checkpoints and restartpoints",
        ),
        m(
            "stats_reset_total",
            C,
            "Time at which these statistics were last reset",
        ),
    ],
};

const STAT_DATABASE: Spec = Spec {
    family: "stat_database",
    labels: &["datid", "datname"],
    metrics: &[
        m(
            "numbackends",
            G,
            "Number of backends currently connected to this database",
        ),
        m(
            "xact_commit",
            C,
            "Number of transactions in this database that have been committed",
        ),
        m(
            "xact_rollback",
            C,
            "Number of transactions in this database that have been rolled back",
        ),
        m(
            "blks_read",
            C,
            "Number of disk blocks read in this database",
        ),
        m(
            "blks_hit",
            C,
            "Number of times disk blocks were found already in the buffer cache",
        ),
        m(
            "tup_returned",
            C,
            "Number of rows returned by queries in this database",
        ),
        m(
            "tup_fetched",
            C,
            "Number of rows fetched by queries in this database",
        ),
        m(
            "tup_inserted",
            C,
            "Number of rows inserted by queries in this database",
        ),
        m(
            "tup_updated",
            C,
            "Number of rows updated by queries in this database",
        ),
        m(
            "tup_deleted",
            C,
            "Number of rows deleted by queries in this database",
        ),
        m(
            "conflicts",
            C,
            "Number of queries canceled due to conflicts with recovery in this database",
        ),
        m(
            "temp_files",
            C,
            "Number of temporary files created by queries in this database",
        ),
        m(
            "temp_bytes",
            C,
            "Total amount of data written to temporary files by queries in this database",
        ),
        m(
            "deadlocks",
            C,
            "Number of deadlocks detected in this database",
        ),
        m(
            "blk_read_time",
            C,
            "Time spent reading data file blocks by backends in this database, in milliseconds",
        ),
        m(
            "blk_write_time",
            C,
            "Time spent writing data file blocks by backends in this database, in milliseconds",
        ),
        Metric {
            name: "stats_reset",
            kind: C,
            help: "Time at which these statistics were last reset",
            null: Null::NaN,
        },
        m(
            "active_time_seconds_total",
            C,
            "Time spent executing SQL statements in this database, in seconds",
        ),
        m(
            "active_time",
            U,
            "Time spent executing SQL statements in this database, in milliseconds (PostgreSQL 14+)",
        ),
        m(
            "session_time",
            U,
            "Time spent by database sessions in this database, in milliseconds (PostgreSQL 14+)",
        ),
        m(
            "idle_in_transaction_time",
            U,
            "Time spent idling while in a transaction in this database, in milliseconds (PostgreSQL 14+)",
        ),
        m(
            "sessions",
            U,
            "Total number of sessions established to this database (PostgreSQL 14+)",
        ),
        m(
            "sessions_abandoned",
            U,
            "Number of sessions to this database that were terminated because connection to the client was lost (PostgreSQL 14+)",
        ),
        m(
            "sessions_fatal",
            U,
            "Number of sessions to this database that were terminated by fatal errors (PostgreSQL 14+)",
        ),
        m(
            "sessions_killed",
            U,
            "Number of sessions to this database that were terminated by operator intervention (PostgreSQL 14+)",
        ),
        Metric {
            name: "checksum_failures",
            kind: U,
            help: "Number of data page checksum failures detected in this database",
            null: Null::NaN,
        },
        Metric {
            name: "checksum_last_failure",
            kind: U,
            help: "Time at which the last data page checksum failure was detected in this database",
            null: Null::NaN,
        },
    ],
};

const CONFLICTS: Spec = Spec {
    family: "stat_database_conflicts",
    labels: &["datid", "datname", "server"],
    metrics: &[
        m(
            "confl_tablespace",
            C,
            "Number of queries in this database that have been canceled due to dropped tablespaces",
        ),
        m(
            "confl_lock",
            C,
            "Number of queries in this database that have been canceled due to lock timeouts",
        ),
        m(
            "confl_snapshot",
            C,
            "Number of queries in this database that have been canceled due to old snapshots",
        ),
        m(
            "confl_bufferpin",
            C,
            "Number of queries in this database that have been canceled due to pinned buffers",
        ),
        m(
            "confl_deadlock",
            C,
            "Number of queries in this database that have been canceled due to deadlocks",
        ),
    ],
};

const VACUUM: Spec = Spec {
    family: "stat_progress_vacuum",
    labels: &["datname", "relname"],
    metrics: &[
        m("heap_blks", G, "Total number of heap blocks in the table"),
        m("heap_blks_scanned", G, "Number of heap blocks scanned"),
        m("heap_blks_vacuumed", G, "Number of heap blocks vacuumed"),
        m(
            "index_vacuums",
            G,
            "Number of completed index vacuum cycles",
        ),
        m(
            "max_dead_tuples",
            G,
            "Number of dead tuples that can be stored before an index vacuum cycle (bytes from PostgreSQL 17)",
        ),
        m(
            "num_dead_tuples",
            G,
            "Number of dead tuples collected since the last index vacuum cycle",
        ),
    ],
};

const VACUUM_PHASE: Spec = Spec {
    family: "stat_progress_vacuum",
    labels: &["datname", "relname", "phase"],
    metrics: &[m(
        "phase",
        G,
        "Current vacuum phase (1 for the phase it is in)",
    )],
};

const VACUUM_PHASE_SQL: &str = "SELECT d.datname::text, COALESCE(c.relname, '')::text, ph.phase::text, \
    (p.phase = ph.phase)::int::float8 FROM pg_stat_progress_vacuum p JOIN pg_database d ON d.oid = p.datid \
    LEFT JOIN pg_class c ON c.oid = p.relid CROSS JOIN (VALUES ('initializing'), ('scanning heap'), \
    ('vacuuming indexes'), ('vacuuming heap'), ('cleaning up indexes'), ('truncating heap'), \
    ('performing final cleanup')) AS ph(phase)";

const STAT_REPLICATION: Spec = Spec {
    family: "stat_replication",
    labels: &["application_name", "client_addr", "state", "slot_name"],
    metrics: &[
        m("pg_current_wal_lsn_bytes", G, "WAL position in bytes"),
        m(
            "pg_wal_lsn_diff",
            G,
            "Lag in bytes between master and slave",
        ),
    ],
};

const USER_TABLES: Spec = Spec {
    family: "stat_user_tables",
    labels: &["datname", "schemaname", "relname"],
    metrics: &[
        z(
            "seq_scan",
            C,
            "Number of sequential scans initiated on this table",
        ),
        z(
            "seq_tup_read",
            C,
            "Number of live rows fetched by sequential scans",
        ),
        z(
            "idx_scan",
            C,
            "Number of index scans initiated on this table",
        ),
        z(
            "idx_tup_fetch",
            C,
            "Number of live rows fetched by index scans",
        ),
        z("n_tup_ins", C, "Number of rows inserted"),
        z("n_tup_upd", C, "Number of rows updated"),
        z("n_tup_del", C, "Number of rows deleted"),
        z("n_tup_hot_upd", C, "Number of rows HOT updated"),
        z("n_live_tup", G, "Estimated number of live rows"),
        z("n_dead_tup", G, "Estimated number of dead rows"),
        z(
            "n_mod_since_analyze",
            G,
            "Estimated number of rows changed since last analyze",
        ),
        z(
            "last_vacuum",
            G,
            "Last time at which this table was manually vacuumed (not counting VACUUM FULL)",
        ),
        z(
            "last_autovacuum",
            G,
            "Last time at which this table was vacuumed by the autovacuum daemon",
        ),
        z(
            "last_analyze",
            G,
            "Last time at which this table was manually analyzed",
        ),
        z(
            "last_autoanalyze",
            G,
            "Last time at which this table was analyzed by the autovacuum daemon",
        ),
        z(
            "vacuum_count",
            C,
            "Number of times this table has been manually vacuumed (not counting VACUUM FULL)",
        ),
        z(
            "autovacuum_count",
            C,
            "Number of times this table has been vacuumed by the autovacuum daemon",
        ),
        z(
            "analyze_count",
            C,
            "Number of times this table has been manually analyzed",
        ),
        z(
            "autoanalyze_count",
            C,
            "Number of times this table has been analyzed by the autovacuum daemon",
        ),
        // Left out while another session holds an ACCESS EXCLUSIVE lock on the table
        // (measuring would wait for the lock and stall the whole scrape).
        m(
            "index_size_bytes",
            G,
            "Total disk space used by the indexes on this table, in bytes",
        ),
        m(
            "table_size_bytes",
            G,
            "Total disk space used by this table, in bytes",
        ),
    ],
};

const USER_TABLES_SQL: &str = "SELECT current_database()::text, schemaname::text, relname::text, \
    seq_scan::float8, seq_tup_read::float8, idx_scan::float8, idx_tup_fetch::float8, n_tup_ins::float8, \
    n_tup_upd::float8, n_tup_del::float8, n_tup_hot_upd::float8, n_live_tup::float8, n_dead_tup::float8, \
    n_mod_since_analyze::float8, EXTRACT(EPOCH FROM last_vacuum)::float8, \
    EXTRACT(EPOCH FROM last_autovacuum)::float8, EXTRACT(EPOCH FROM last_analyze)::float8, \
    EXTRACT(EPOCH FROM last_autoanalyze)::float8, vacuum_count::float8, autovacuum_count::float8, \
    analyze_count::float8, autoanalyze_count::float8, \
    CASE WHEN NOT locked THEN pg_indexes_size(relid)::float8 END, \
    CASE WHEN NOT locked THEN pg_table_size(relid)::float8 END \
    FROM (SELECT *, EXISTS (SELECT 1 FROM pg_locks l WHERE l.relation = t.relid \
    AND l.mode = 'AccessExclusiveLock' AND l.granted) AS locked FROM pg_stat_user_tables t) AS t";

const STATIO: Spec = Spec {
    family: "statio_user_tables",
    labels: &["datname", "schemaname", "relname"],
    metrics: &[
        z(
            "heap_blocks_read",
            C,
            "Number of disk blocks read from this table",
        ),
        z("heap_blocks_hit", C, "Number of buffer hits in this table"),
        z(
            "idx_blocks_read",
            C,
            "Number of disk blocks read from all indexes on this table",
        ),
        z(
            "idx_blocks_hit",
            C,
            "Number of buffer hits in all indexes on this table",
        ),
        z(
            "toast_blocks_read",
            C,
            "Number of disk blocks read from this table's TOAST table (if any)",
        ),
        z(
            "toast_blocks_hit",
            C,
            "Number of buffer hits in this table's TOAST table (if any)",
        ),
        z(
            "tidx_blocks_read",
            C,
            "Number of disk blocks read from this table's TOAST table indexes (if any)",
        ),
        z(
            "tidx_blocks_hit",
            C,
            "Number of buffer hits in this table's TOAST table indexes (if any)",
        ),
    ],
};

const WAL: Spec = Spec {
    family: "wal",
    labels: &[],
    metrics: &[
        m("segments", G, "Number of WAL segments"),
        m("size_bytes", G, "Total size of WAL segments"),
    ],
};

const WRAPAROUND: Spec = Spec {
    family: "database_wraparound",
    labels: &["datname"],
    metrics: &[
        m(
            "age_datfrozenxid_seconds",
            G,
            "Age of the oldest transaction ID that has not been frozen",
        ),
        m(
            "age_datminmxid_seconds",
            G,
            "Age of the oldest multi-transaction ID that has been replaced with a transaction ID",
        ),
    ],
};

const LONG_TX: Spec = Spec {
    family: "long_running_transactions",
    labels: &[],
    metrics: &[
        m("", G, "Current number of long running transactions"),
        m(
            "oldest_timestamp_seconds",
            G,
            "The current maximum transaction age in seconds",
        ),
    ],
};

const POSTMASTER: Spec = Spec {
    family: "postmaster",
    labels: &[],
    metrics: &[m(
        "start_time_seconds",
        G,
        "Time at which postmaster started",
    )],
};

const STATEMENTS: Spec = Spec {
    family: "stat_statements",
    labels: &["user", "datname", "queryid"],
    metrics: &[
        m("calls_total", C, "Number of times executed"),
        m(
            "seconds_total",
            C,
            "Total time spent in the statement, in seconds",
        ),
        m(
            "rows_total",
            C,
            "Total number of rows retrieved or affected by the statement",
        ),
        m(
            "block_read_seconds_total",
            C,
            "Total time the statement spent reading blocks, in seconds",
        ),
        m(
            "block_write_seconds_total",
            C,
            "Total time the statement spent writing blocks, in seconds",
        ),
    ],
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_convert_units_like_upstream() {
        let (suffix, v, help) = setting_value("200", "ms", "integer", "Delay").unwrap();
        assert_eq!((suffix, v), ("_seconds", 0.2));
        assert_eq!(help, "Delay [Units converted to seconds.]");
        assert_eq!(
            setting_value("16384", "8kB", "integer", "").unwrap().1,
            134_217_728.0
        );
        assert_eq!(
            setting_value("-1", "kB", "integer", "").unwrap(),
            ("_bytes", -1.0, " [Units converted to bytes.]".into())
        );
        assert_eq!(setting_value("5", "min", "integer", "").unwrap().1, 300.0);
        assert_eq!(setting_value("on", "", "bool", "x").unwrap().1, 1.0);
        assert_eq!(setting_value("off", "", "bool", "x").unwrap().1, 0.0);
        assert_eq!(
            setting_value("0.9", "", "real", "x").unwrap(),
            ("", 0.9, "x".into())
        );
        assert!(setting_value("1", "parsecs", "integer", "").is_none());
    }

    #[test]
    fn every_default_collector_matches_upstream_v0_20() {
        let on: Vec<&str> = COLLECTORS
            .iter()
            .filter(|c| c.default_on)
            .map(|c| c.name)
            .collect();
        assert_eq!(on.len(), 15);
        for off in [
            "stat_statements",
            "postmaster",
            "long_running_transactions",
            "stat_checkpointer",
        ] {
            assert!(COLLECTORS.iter().any(|c| c.name == off && !c.default_on));
        }
    }

    #[test]
    fn specs_have_one_sql_column_per_label_and_metric() {
        // Count the top-level select list items of the fixed queries.
        for (spec, sql) in [
            (&LOCKS, LOCKS_SQL),
            (&ACTIVITY, ACTIVITY_SQL),
            (&USER_TABLES, USER_TABLES_SQL),
            (&REPLICATION, REPLICATION_SQL),
            (&VACUUM_PHASE, VACUUM_PHASE_SQL),
        ] {
            let mut depth = 0;
            let mut columns = 1;
            for (i, c) in sql.char_indices().skip(6) {
                match c {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    ',' if depth == 0 => columns += 1,
                    ' ' if depth == 0 && sql[i..].starts_with(" FROM ") => break,
                    _ => {}
                }
            }
            assert_eq!(
                columns,
                spec.labels.len() + spec.metrics.len(),
                "{}",
                spec.family
            );
        }
    }

    #[test]
    fn literals_are_quoted() {
        assert_eq!(literal("a'b"), "'a''b'");
    }
}
