//! The collectors: one SQL query (or a few) each, adapted to the server
//! version, mapped to upstream postgres_exporter's family names and labels.
//!
//! [`COLLECTORS`] is the one table of them: name, default, scope,
//! description and the function that runs it, side by side, so a collector
//! cannot be listed without a way to run it (or the reverse). The exporter
//! works from a copy of the enabled entries, which collectors defined at run
//! time (custom queries) can join through [`Run::Defined`].
//!
//! Modules by what they watch: [`activity`] (sessions, locks, transactions,
//! statements), [`databases`] (sizes, limits, per-database statistics, roles),
//! [`replication`] (replicas, slots, WAL, archiver), [`processes`] (background
//! writer, checkpointer, vacuum progress, postmaster), [`tables`] (per-table
//! statistics), [`settings`] (pg_settings); [`spec`] maps rows to families;
//! [`custom`] reads a custom queries file into entries of the table.

use std::borrow::Cow;
use std::sync::Arc;

use futures_util::future::BoxFuture;

use crate::exposition::{Families, Kind};
use crate::session::Session;
use spec::Spec;

mod activity;
pub mod custom;
mod databases;
mod processes;
mod replication;
mod settings;
mod spec;
mod tables;

/// Where a collector runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Once per server, on the main session.
    Server,
    /// Once per server, on a second session to the main database, in
    /// parallel with the others: the queries that cost the server most. Their
    /// results are reused for `--collector.database.interval`.
    Side,
    /// On every collected database (per-table statistics).
    Database,
}

/// What a collector run comes to: its samples are in the `Families` it was given.
pub(crate) type Pending<'a> = BoxFuture<'a, Result<(), tokio_postgres::Error>>;

/// A built-in collector's function.
pub(crate) type RunFn = for<'a> fn(&'a Session, &'a Ctx, &'a mut Families) -> Pending<'a>;

/// Why a collector run failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Failure {
    /// A query failed (or the session did).
    #[error("{0}")]
    Query(#[from] tokio_postgres::Error),
    /// The rows do not read as the collector defines them (a custom query's
    /// histogram column that holds no array, say); the text says what to fix.
    #[error("{0}")]
    Rows(String),
}

/// What a defined collector's run comes to.
pub(crate) type DefinedPending<'a> = BoxFuture<'a, Result<(), Failure>>;

/// A collector defined at run time (custom queries): it holds its queries.
pub(crate) trait Defined: Send + Sync {
    fn run<'a>(
        &'a self,
        session: &'a Session,
        ctx: &'a Ctx,
        out: &'a mut Families,
    ) -> DefinedPending<'a>;
}

/// How a collector runs.
#[derive(Clone)]
pub(crate) enum Run {
    Builtin(RunFn),
    /// A namespace of the custom-queries file (`--extend.query-path`).
    Defined(Arc<dyn Defined>),
}

/// One entry of the table: a collector as `--collector.<name>` names it.
#[derive(Clone)]
pub struct Collector {
    pub name: Cow<'static, str>,
    pub default_on: bool,
    pub scope: Scope,
    pub about: Cow<'static, str>,
    pub(crate) run: Run,
    /// The families a built-in collector writes (`spec::Spec`s); none for
    /// a defined one, whose names are checked against these at start.
    pub(crate) specs: &'static [&'static Spec],
}

impl std::fmt::Debug for Collector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collector")
            .field("name", &self.name)
            .field("default_on", &self.default_on)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

impl Collector {
    /// Runs the collector on `session`, adding its samples to `out`.
    pub(crate) async fn run(
        &self,
        session: &Session,
        ctx: &Ctx,
        out: &mut Families,
    ) -> Result<(), Failure> {
        match &self.run {
            Run::Builtin(run) => run(session, ctx, out).await.map_err(Failure::Query),
            Run::Defined(defined) => defined.run(session, ctx, out).await,
        }
    }

    /// Whether it is defined at run time (a custom query).
    pub(crate) fn is_defined(&self) -> bool {
        matches!(self.run, Run::Defined(_))
    }

    /// Whether this collector writes the family `name` (with metric prefix
    /// `prefix`): one of its specs' names, or any name under a spec without
    /// a metric list (`<prefix>_settings_*`).
    pub fn writes(&self, prefix: &str, name: &str) -> bool {
        self.specs.iter().any(|spec| {
            let family = format!("{prefix}_{}", spec.family);
            if spec.metrics.is_empty() {
                return name
                    .strip_prefix(&family)
                    .is_some_and(|rest| rest.starts_with('_'));
            }
            spec.metrics.iter().any(|m| match m.name {
                "" => name == family,
                metric => {
                    name.strip_prefix(&family).and_then(|r| r.strip_prefix('_')) == Some(metric)
                }
            })
        })
    }
}

/// A built-in entry.
const fn builtin(
    name: &'static str,
    default_on: bool,
    scope: Scope,
    about: &'static str,
    run: RunFn,
    specs: &'static [&'static Spec],
) -> Collector {
    Collector {
        name: Cow::Borrowed(name),
        default_on,
        scope,
        about: Cow::Borrowed(about),
        run: Run::Builtin(run),
        specs,
    }
}

const ON: bool = true;
const OFF: bool = false;

/// Every built-in collector, in upstream's names. Default-on ones match upstream v0.20.
pub static COLLECTORS: &[Collector] = &[
    builtin(
        "database",
        ON,
        Scope::Side,
        "database sizes and connection limits",
        databases::database,
        &[&databases::DATABASE],
    ),
    builtin(
        "locks",
        ON,
        Scope::Server,
        "locks by database and mode",
        activity::locks,
        &[&activity::LOCKS],
    ),
    builtin(
        "replication",
        ON,
        Scope::Server,
        "replica lag",
        replication::replication,
        &[&replication::REPLICATION],
    ),
    builtin(
        "replication_slots",
        ON,
        Scope::Server,
        "replication slot positions and state",
        replication::slots,
        &[
            &replication::SLOTS_LEGACY,
            &replication::SLOTS,
            &replication::SLOTS_STATUS,
        ],
    ),
    builtin(
        "roles",
        ON,
        Scope::Server,
        "role connection limits",
        databases::roles,
        &[&databases::ROLES],
    ),
    builtin(
        "settings",
        ON,
        Scope::Server,
        "pg_settings as the server configures them, units converted to seconds and bytes",
        settings::settings,
        &[&settings::SETTINGS],
    ),
    builtin(
        "stat_activity",
        ON,
        Scope::Server,
        "client sessions by database, state, user, application and wait event",
        activity::stat_activity,
        &[&activity::ACTIVITY],
    ),
    builtin(
        "stat_archiver",
        ON,
        Scope::Server,
        "WAL archiver",
        replication::archiver,
        &[&replication::ARCHIVER],
    ),
    builtin(
        "stat_bgwriter",
        ON,
        Scope::Server,
        "background writer (and checkpoints before PostgreSQL 17)",
        processes::bgwriter,
        &[&processes::BGWRITER, &processes::BGWRITER_17],
    ),
    builtin(
        "stat_database",
        ON,
        Scope::Server,
        "per-database transactions, blocks, tuples, conflicts",
        databases::stat_database,
        &[&databases::STAT_DATABASE, &databases::CONFLICTS],
    ),
    builtin(
        "stat_progress_vacuum",
        ON,
        Scope::Server,
        "running vacuums",
        processes::progress_vacuum,
        &[&processes::VACUUM, &processes::VACUUM_PHASE],
    ),
    builtin(
        "stat_replication",
        ON,
        Scope::Server,
        "connected replicas",
        replication::stat_replication,
        &[&replication::STAT_REPLICATION],
    ),
    builtin(
        "stat_user_tables",
        ON,
        Scope::Database,
        "per-table scans, tuples, vacuum and sizes",
        tables::user_tables,
        &[&tables::USER_TABLES],
    ),
    builtin(
        "statio_user_tables",
        ON,
        Scope::Database,
        "per-table block reads and hits",
        tables::statio,
        &[&tables::STATIO],
    ),
    builtin(
        "wal",
        ON,
        Scope::Server,
        "WAL segments and size",
        replication::wal,
        &[&replication::WAL],
    ),
    builtin(
        "database_wraparound",
        OFF,
        Scope::Server,
        "transaction ID age per database",
        databases::wraparound,
        &[&databases::WRAPAROUND],
    ),
    builtin(
        "long_running_transactions",
        OFF,
        Scope::Server,
        "open transactions and the oldest one's age",
        activity::long_running_transactions,
        &[&activity::LONG_TX],
    ),
    builtin(
        "postmaster",
        OFF,
        Scope::Server,
        "server start time",
        processes::postmaster,
        &[&processes::POSTMASTER],
    ),
    builtin(
        "stat_checkpointer",
        OFF,
        Scope::Server,
        "checkpoints on PostgreSQL 17 and later",
        processes::checkpointer,
        &[&processes::CHECKPOINTER],
    ),
    builtin(
        "stat_statements",
        OFF,
        Scope::Server,
        "top statements by total time (needs pg_stat_statements)",
        activity::statements,
        &[&activity::STATEMENTS],
    ),
];

/// What a collector needs to know about the server.
#[derive(Debug, Clone)]
pub(crate) struct Ctx {
    /// Metric name prefix (`pg` unless `--metric-prefix`).
    pub prefix: String,
    /// `server_version_num`, e.g. 150018.
    pub version: u32,
    /// `host:port`, the `server` label of upstream's legacy families.
    pub server: String,
    /// Rows kept by the stat_statements collector.
    pub statements_limit: u32,
}

/// Upstream's `pg_static{server, version, short_version} 1`.
pub(crate) async fn static_info(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_default_collector_matches_upstream_v0_20() {
        let on: Vec<&str> = COLLECTORS
            .iter()
            .filter(|c| c.default_on)
            .map(|c| c.name.as_ref())
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
    fn collector_names_are_unique() {
        let mut names: Vec<&str> = COLLECTORS.iter().map(|c| c.name.as_ref()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), COLLECTORS.len());
    }

    #[test]
    fn builtin_entries_say_which_families_they_write() {
        let by = |n: &str| COLLECTORS.iter().find(|c| c.name == n).unwrap();
        assert!(by("database").writes("pg", "pg_database_size_bytes"));
        assert!(by("database").writes("pg", "pg_database_connection_limit"));
        assert!(!by("database").writes("pg", "pg_database_size"));
        assert!(!by("database").writes("pg", "pg_database_wraparound_age_datfrozenxid_seconds"));
        assert!(by("settings").writes("pg", "pg_settings_max_connections"));
        assert!(!by("settings").writes("pg", "pg_settingsx"));
        assert!(by("long_running_transactions").writes("pg", "pg_long_running_transactions"));
        assert!(by("wal").writes("my", "my_wal_segments"));
        assert!(!by("wal").writes("pg", "my_wal_segments"));
    }

    /// A collector defined at run time, as custom queries are.
    struct Fixed;

    impl Defined for Fixed {
        fn run<'a>(
            &'a self,
            _: &'a Session,
            ctx: &'a Ctx,
            out: &'a mut Families,
        ) -> DefinedPending<'a> {
            Box::pin(async move {
                out.add(
                    &format!("{}_fixed", ctx.prefix),
                    "A fixed value",
                    Kind::Gauge,
                    Vec::new(),
                    1.0,
                );
                Ok(())
            })
        }
    }

    #[test]
    fn a_runtime_collector_is_an_entry_like_the_builtin_ones() {
        let entry = Collector {
            name: Cow::Owned("custom".to_string()),
            default_on: true,
            scope: Scope::Database,
            about: Cow::Owned("from a file".to_string()),
            run: Run::Defined(Arc::new(Fixed)),
            specs: &[],
        };
        let mut table: Vec<Collector> = COLLECTORS.to_vec();
        table.push(entry);
        assert!(
            table
                .iter()
                .any(|c| c.name == "custom" && c.scope == Scope::Database)
        );
    }
}
