//! Replication (lag, replicas, slots), WAL and the archiver.

use crate::exposition::Families;
use crate::session::Session;

use super::spec::{C, CURRENT_LSN, G, Metric, Null, Spec, m, run, run_all};
use super::{Ctx, Pending};

pub(super) fn replication<'a>(s: &'a Session, ctx: &'a Ctx, out: &'a mut Families) -> Pending<'a> {
    Box::pin(run(s, ctx, out, &REPLICATION, REPLICATION_SQL))
}

pub(super) fn slots<'a>(s: &'a Session, ctx: &'a Ctx, out: &'a mut Families) -> Pending<'a> {
    Box::pin(async move {
        let legacy = format!(
            "SELECT slot_name::text, COALESCE(database, '')::text, active::int::float8, \
             ({CURRENT_LSN} - restart_lsn)::float8 FROM pg_replication_slots"
        );
        let slots = format!(
            "SELECT slot_name::text, slot_type::text, ({CURRENT_LSN} - '0/0')::float8, \
             (confirmed_flush_lsn - '0/0')::float8, active::int::float8, safe_wal_size::float8 \
             FROM pg_replication_slots"
        );
        run_all(
            s,
            ctx,
            out,
            &[
                (&SLOTS_LEGACY, &legacy),
                (&SLOTS, &slots),
                (
                    &SLOTS_STATUS,
                    "SELECT slot_name::text, slot_type::text, \
             COALESCE(wal_status, '')::text, 1::float8 FROM pg_replication_slots",
                ),
            ],
        )
        .await
    })
}

pub(super) fn stat_replication<'a>(
    s: &'a Session,
    ctx: &'a Ctx,
    out: &'a mut Families,
) -> Pending<'a> {
    Box::pin(async move {
        let sql = format!(
            "SELECT COALESCE(r.application_name, '')::text, COALESCE(host(r.client_addr), '')::text, \
             COALESCE(r.state, '')::text, COALESCE(s.slot_name, '')::text, \
             ({CURRENT_LSN} - '0/0')::float8, ({CURRENT_LSN} - r.replay_lsn)::float8 \
             FROM pg_stat_replication r LEFT JOIN pg_replication_slots s ON s.active_pid = r.pid"
        );
        run(s, ctx, out, &STAT_REPLICATION, &sql).await
    })
}

pub(super) fn archiver<'a>(s: &'a Session, ctx: &'a Ctx, out: &'a mut Families) -> Pending<'a> {
    Box::pin(run(
        s,
        ctx,
        out,
        &ARCHIVER,
        "SELECT archived_count::float8, failed_count::float8, \
         EXTRACT(EPOCH FROM now() - last_archived_time)::float8 FROM pg_stat_archiver",
    ))
}

pub(super) fn wal<'a>(s: &'a Session, ctx: &'a Ctx, out: &'a mut Families) -> Pending<'a> {
    Box::pin(run(
        s,
        ctx,
        out,
        &WAL,
        "SELECT count(*)::float8, COALESCE(sum(size), 0)::float8 \
         FROM pg_ls_waldir() WHERE name ~ '^[0-9A-F]{24}$'",
    ))
}

pub(super) const REPLICATION: Spec = Spec {
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

pub(super) const SLOTS_LEGACY: Spec = Spec {
    family: "replication_slots",
    labels: &["slot_name", "database"],
    metrics: &[
        m("active", G, "Flag indicating if the slot is active"),
        m("pg_wal_lsn_diff", G, "Replication lag in bytes"),
    ],
};

pub(super) const SLOTS: Spec = Spec {
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

pub(super) const SLOTS_STATUS: Spec = Spec {
    family: "replication_slots",
    labels: &["slot_name", "slot_type", "wal_status"],
    metrics: &[m(
        "wal_status",
        G,
        "Availability of WAL files claimed by this slot",
    )],
};

pub(super) const STAT_REPLICATION: Spec = Spec {
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

pub(super) const ARCHIVER: Spec = Spec {
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

pub(super) const WAL: Spec = Spec {
    family: "wal",
    labels: &[],
    metrics: &[
        m("segments", G, "Number of WAL segments"),
        m("size_bytes", G, "Total size of WAL segments"),
    ],
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::spec::assert_columns;

    #[test]
    fn specs_have_one_sql_column_per_label_and_metric() {
        assert_columns(&REPLICATION, REPLICATION_SQL);
    }
}
