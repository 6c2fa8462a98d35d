//! Sessions, locks, open transactions and statements.

use crate::exposition::Families;
use crate::session::Session;

use super::spec::{C, G, Spec, m, run};
use super::{Ctx, Pending};

pub(super) fn stat_activity<'a>(
    s: &'a Session,
    ctx: &'a Ctx,
    out: &'a mut Families,
) -> Pending<'a> {
    Box::pin(run(s, ctx, out, &ACTIVITY, ACTIVITY_SQL))
}

pub(super) fn locks<'a>(s: &'a Session, ctx: &'a Ctx, out: &'a mut Families) -> Pending<'a> {
    Box::pin(run(s, ctx, out, &LOCKS, LOCKS_SQL))
}

pub(super) fn long_running_transactions<'a>(
    s: &'a Session,
    ctx: &'a Ctx,
    out: &'a mut Families,
) -> Pending<'a> {
    Box::pin(run(
        s,
        ctx,
        out,
        &LONG_TX,
        "SELECT count(*)::float8, \
         COALESCE(max(EXTRACT(EPOCH FROM clock_timestamp() - xact_start)), 0)::float8 \
         FROM pg_stat_activity WHERE state IS DISTINCT FROM 'idle' AND query NOT LIKE 'autovacuum:%' \
         AND xact_start IS NOT NULL AND pid <> pg_backend_pid()",
    ))
}

/// The top statements by total time (pg_stat_statements).
pub(super) fn statements<'a>(s: &'a Session, ctx: &'a Ctx, out: &'a mut Families) -> Pending<'a> {
    Box::pin(async move {
        let (read, write) = if ctx.version >= 170_000 {
            ("shared_blk_read_time", "shared_blk_write_time")
        } else {
            ("blk_read_time", "blk_write_time")
        };
        let sql = format!(
            "SELECT pg_get_userbyid(s.userid)::text, d.datname::text, s.queryid::text, s.calls::float8, \
             (s.total_exec_time / 1000)::float8, s.rows::float8, (s.{read} / 1000)::float8, \
             (s.{write} / 1000)::float8 FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid \
             ORDER BY s.total_exec_time DESC LIMIT {}",
            ctx.statements_limit
        );
        run(s, ctx, out, &STATEMENTS, &sql).await
    })
}

pub(super) const ACTIVITY: Spec = Spec {
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

/// Upstream v0.20's query: every database (templates too) times six states,
/// with the sessions of that database and state grouped by user,
/// application, backend type and wait event; a database and state without
/// sessions is one series of 0 with the other labels empty. Processes
/// without a database or state (checkpointer, background writer, walwriter,
/// launchers, WAL senders streaming) match no pair and are not counted.
const ACTIVITY_SQL: &str = "SELECT d.datname::text, s.state::text, COALESCE(a.usename, '')::text, \
    COALESCE(a.application_name, '')::text, COALESCE(a.backend_type, '')::text, \
    COALESCE(a.wait_event_type, '')::text, COALESCE(a.wait_event, '')::text, \
    COALESCE(a.count, 0)::float8, COALESCE(a.max_tx_duration, 0)::float8 \
    FROM (VALUES ('active'), ('idle'), ('idle in transaction'), ('idle in transaction (aborted)'), \
    ('fastpath function call'), ('disabled')) AS s(state) CROSS JOIN pg_database d \
    LEFT JOIN (SELECT datname, state, usename, application_name, backend_type, wait_event_type, wait_event, \
    count(*) AS count, max(EXTRACT(EPOCH FROM now() - xact_start)) AS max_tx_duration \
    FROM pg_stat_activity WHERE pid <> pg_backend_pid() \
    GROUP BY datname, state, usename, application_name, backend_type, wait_event_type, wait_event) AS a \
    ON a.state = s.state AND a.datname = d.datname";

pub(super) const LOCKS: Spec = Spec {
    family: "locks",
    labels: &["datname", "mode"],
    metrics: &[m("count", G, "Number of locks")],
};

const LOCKS_SQL: &str = "SELECT d.datname::text, tmp.mode::text, COALESCE(l.count, 0)::float8 \
    FROM (VALUES ('accesssharelock'), ('rowsharelock'), ('rowexclusivelock'), ('shareupdateexclusivelock'), \
    ('sharelock'), ('sharerowexclusivelock'), ('exclusivelock'), ('accessexclusivelock'), ('sireadlock')) AS tmp(mode) \
    CROSS JOIN pg_database d LEFT JOIN (SELECT database, lower(mode) AS mode, count(*) AS count FROM pg_locks \
    WHERE database IS NOT NULL GROUP BY database, lower(mode)) AS l ON tmp.mode = l.mode AND d.oid = l.database";

pub(super) const LONG_TX: Spec = Spec {
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

pub(super) const STATEMENTS: Spec = Spec {
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
    use crate::collectors::spec::assert_columns;

    #[test]
    fn specs_have_one_sql_column_per_label_and_metric() {
        assert_columns(&LOCKS, LOCKS_SQL);
        assert_columns(&ACTIVITY, ACTIVITY_SQL);
    }
}
