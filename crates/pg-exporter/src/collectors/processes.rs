//! The server's own processes: background writer, checkpointer, vacuums, postmaster.

use crate::exposition::Families;
use crate::session::Session;

use super::spec::{C, G, Spec, m, run, run_all};
use super::{Ctx, Pending};

pub(super) fn bgwriter<'a>(s: &'a Session, ctx: &'a Ctx, out: &'a mut Families) -> Pending<'a> {
    if ctx.version >= 170_000 {
        Box::pin(run(
            s,
            ctx,
            out,
            &BGWRITER_17,
            "SELECT buffers_clean::float8, maxwritten_clean::float8, \
             buffers_alloc::float8, EXTRACT(EPOCH FROM stats_reset)::float8 FROM pg_stat_bgwriter",
        ))
    } else {
        Box::pin(run(
            s,
            ctx,
            out,
            &BGWRITER,
            "SELECT checkpoints_timed::float8, checkpoints_req::float8, \
             checkpoint_write_time::float8, checkpoint_sync_time::float8, buffers_checkpoint::float8, \
             buffers_clean::float8, maxwritten_clean::float8, buffers_backend::float8, \
             buffers_backend_fsync::float8, buffers_alloc::float8, \
             EXTRACT(EPOCH FROM stats_reset)::float8 FROM pg_stat_bgwriter",
        ))
    }
}

pub(super) fn checkpointer<'a>(s: &'a Session, ctx: &'a Ctx, out: &'a mut Families) -> Pending<'a> {
    if ctx.version < 170_000 {
        // The view exists from PostgreSQL 17; stat_bgwriter covers older servers.
        return Box::pin(async { Ok(()) });
    }
    Box::pin(run(
        s,
        ctx,
        out,
        &CHECKPOINTER,
        "SELECT num_timed::float8, num_requested::float8, \
         restartpoints_timed::float8, restartpoints_req::float8, restartpoints_done::float8, \
         write_time::float8, sync_time::float8, buffers_written::float8, \
         EXTRACT(EPOCH FROM stats_reset)::float8 FROM pg_stat_checkpointer",
    ))
}

pub(super) fn progress_vacuum<'a>(
    s: &'a Session,
    ctx: &'a Ctx,
    out: &'a mut Families,
) -> Pending<'a> {
    Box::pin(async move {
        let (max_dead, num_dead) = if ctx.version >= 170_000 {
            ("max_dead_tuple_bytes", "num_dead_item_ids")
        } else {
            ("max_dead_tuples", "num_dead_tuples")
        };
        let progress = format!(
            "SELECT d.datname::text, COALESCE(c.relname, '')::text, p.heap_blks_total::float8, \
             p.heap_blks_scanned::float8, p.heap_blks_vacuumed::float8, p.index_vacuum_count::float8, \
             p.{max_dead}::float8, p.{num_dead}::float8 FROM pg_stat_progress_vacuum p \
             JOIN pg_database d ON d.oid = p.datid LEFT JOIN pg_class c ON c.oid = p.relid"
        );
        run_all(
            s,
            ctx,
            out,
            &[(&VACUUM, &progress), (&VACUUM_PHASE, VACUUM_PHASE_SQL)],
        )
        .await
    })
}

pub(super) fn postmaster<'a>(s: &'a Session, ctx: &'a Ctx, out: &'a mut Families) -> Pending<'a> {
    Box::pin(run(
        s,
        ctx,
        out,
        &POSTMASTER,
        "SELECT EXTRACT(EPOCH FROM pg_postmaster_start_time())::float8",
    ))
}

pub(super) const BGWRITER: Spec = Spec {
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

pub(super) const BGWRITER_17: Spec = Spec {
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

pub(super) const CHECKPOINTER: Spec = Spec {
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

pub(super) const VACUUM: Spec = Spec {
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

pub(super) const VACUUM_PHASE: Spec = Spec {
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

pub(super) const POSTMASTER: Spec = Spec {
    family: "postmaster",
    labels: &[],
    metrics: &[m(
        "start_time_seconds",
        G,
        "Time at which postmaster started",
    )],
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::spec::assert_columns;

    #[test]
    fn specs_have_one_sql_column_per_label_and_metric() {
        assert_columns(&VACUUM_PHASE, VACUUM_PHASE_SQL);
    }
}
