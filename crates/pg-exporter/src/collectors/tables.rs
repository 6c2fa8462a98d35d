//! Per-table statistics, run on every collected database.

use crate::exposition::Families;
use crate::session::Session;

use super::spec::{C, G, Spec, m, run, z};
use super::{Ctx, Pending};

pub(super) fn user_tables<'a>(s: &'a Session, ctx: &'a Ctx, out: &'a mut Families) -> Pending<'a> {
    Box::pin(run(s, ctx, out, &USER_TABLES, USER_TABLES_SQL))
}

pub(super) fn statio<'a>(s: &'a Session, ctx: &'a Ctx, out: &'a mut Families) -> Pending<'a> {
    Box::pin(run(
        s,
        ctx,
        out,
        &STATIO,
        "SELECT current_database()::text, schemaname::text, \
         relname::text, heap_blks_read::float8, heap_blks_hit::float8, idx_blks_read::float8, \
         idx_blks_hit::float8, toast_blks_read::float8, toast_blks_hit::float8, tidx_blks_read::float8, \
         tidx_blks_hit::float8 FROM pg_statio_user_tables",
    ))
}

pub(super) const USER_TABLES: Spec = Spec {
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

pub(super) const STATIO: Spec = Spec {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::spec::assert_columns;

    #[test]
    fn specs_have_one_sql_column_per_label_and_metric() {
        assert_columns(&USER_TABLES, USER_TABLES_SQL);
    }
}
