//! Databases (sizes, connection limits, statistics, transaction ID age) and roles.

use crate::exposition::Families;
use crate::session::Session;

use super::spec::{C, G, Metric, Null, Spec, U, literal, m, run, run_all};
use super::{Ctx, Pending};

/// Sizes and connection limits; sizes only of databases the role may see
/// (pg_database_size fails on the others).
pub(super) fn database<'a>(s: &'a Session, ctx: &'a Ctx, out: &'a mut Families) -> Pending<'a> {
    Box::pin(run(
        s,
        ctx,
        out,
        &DATABASE,
        "SELECT datname::text, \
         CASE WHEN has_database_privilege(oid, 'CONNECT') OR pg_has_role('pg_read_all_stats', 'MEMBER') \
              THEN pg_database_size(oid)::float8 END, \
         datconnlimit::float8 FROM pg_database",
    ))
}

pub(super) fn roles<'a>(s: &'a Session, ctx: &'a Ctx, out: &'a mut Families) -> Pending<'a> {
    Box::pin(run(
        s,
        ctx,
        out,
        &ROLES,
        "SELECT rolname::text, rolconnlimit::float8 FROM pg_roles",
    ))
}

pub(super) fn stat_database<'a>(
    s: &'a Session,
    ctx: &'a Ctx,
    out: &'a mut Families,
) -> Pending<'a> {
    Box::pin(async move {
        // PG 14+ columns: upstream 0.11 exported them untyped under their own
        // names (dashboards use them); v0.20 renamed active_time. Both are kept.
        let active = if ctx.version >= 140_000 {
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
             FROM pg_stat_database WHERE datname IS NOT NULL"
        );
        // Upstream's legacy families, with its `server` label.
        let conflicts = format!(
            "SELECT datid::text, datname::text, {} AS server, confl_tablespace::float8, confl_lock::float8, \
             confl_snapshot::float8, confl_bufferpin::float8, confl_deadlock::float8 \
             FROM pg_stat_database_conflicts WHERE datname IS NOT NULL",
            literal(&ctx.server)
        );
        run_all(
            s,
            ctx,
            out,
            &[(&STAT_DATABASE, &stats), (&CONFLICTS, &conflicts)],
        )
        .await
    })
}

pub(super) fn wraparound<'a>(s: &'a Session, ctx: &'a Ctx, out: &'a mut Families) -> Pending<'a> {
    Box::pin(run(
        s,
        ctx,
        out,
        &WRAPAROUND,
        "SELECT datname::text, \
         age(datfrozenxid)::float8, mxid_age(datminmxid)::float8 FROM pg_database WHERE datallowconn",
    ))
}

pub(super) const DATABASE: Spec = Spec {
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

pub(super) const ROLES: Spec = Spec {
    family: "roles",
    labels: &["rolname"],
    metrics: &[m(
        "connection_limit",
        G,
        "Connection limit set for the role",
    )],
};

pub(super) const STAT_DATABASE: Spec = Spec {
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

pub(super) const CONFLICTS: Spec = Spec {
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

pub(super) const WRAPAROUND: Spec = Spec {
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
