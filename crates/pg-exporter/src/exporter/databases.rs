//! The long-lived session per database, and the collectors run on them:
//! server scope on the main database's session, database scope on every
//! collected database's (`--auto-discover-databases`).

use std::sync::Arc;

use futures_util::future::join_all;
use tokio::time::timeout_at;

use super::Exporter;
use super::conn::{LoginFailure, db_error_text, open, version_text};
use super::runs::{Timed, timed_all};
use crate::collectors::{self, Collector, Ctx, Scope};
use crate::connect::Source;
use crate::dsn;
use crate::exposition::Families;
use crate::session::{Session, lock};

/// Where collectors run: a database, with what reaching it takes.
struct Place<'a> {
    /// The main database's session.
    session: &'a Arc<Session>,
    base: &'a Source,
    main_db: &'a str,
    db: String,
    ctx: &'a Ctx,
    deadline: tokio::time::Instant,
}

impl Exporter {
    /// Runs the enabled collectors of [`Scope::Server`] and
    /// [`Scope::Database`]: server scope on the main session (pipelined),
    /// database scope on each collected database's session. The built-in
    /// collectors first, all at once; then the custom queries, all at once:
    /// a session runs its queries in turn, and a slow custom query must not
    /// hold up a built-in collector queued behind it. Adds `pg_static` to
    /// `out`; returns the runs with where they ran.
    pub(super) async fn run_collectors(
        &self,
        session: &Arc<Session>,
        ctx: &Ctx,
        base: &Source,
        deadline: tokio::time::Instant,
        out: &mut Families,
    ) -> Vec<(String, Timed)> {
        let [server_builtin, server_custom] = self.enabled_by_kind(Scope::Server);
        let [db_builtin, db_custom] = self.enabled_by_kind(Scope::Database);
        let main_db = dsn::database(&base.config);
        let at = |db: &str| Place {
            session,
            base,
            main_db: &main_db,
            db: db.to_string(),
            ctx,
            deadline,
        };

        let server_runs = timed_all(&server_builtin, session, ctx, deadline);
        let static_info = async {
            let mut fam = Families::new();
            let r = timeout_at(deadline, collectors::static_info(session, ctx, &mut fam)).await;
            (r, fam)
        };
        let database_runs = async {
            if db_builtin.is_empty() && db_custom.is_empty() {
                return Vec::new();
            }
            let databases = if self.opts.auto_discover {
                timeout_at(deadline, self.discover(session, &main_db))
                    .await
                    .unwrap_or_else(|_| vec![main_db.clone()])
            } else {
                vec![main_db.clone()]
            };
            join_all(databases.iter().map(|db| self.run_at(at(db), &db_builtin))).await
        };
        let (server_results, (static_result, static_fam), database_results) =
            tokio::join!(server_runs, static_info, database_runs);
        if let Ok(Ok(())) = static_result {
            out.merge(static_fam);
        }
        // The custom queries, on the sessions the built-in collectors used
        // (a database that could not be reached counts them as failed).
        let (server_custom_results, database_custom_results) = tokio::join!(
            timed_all(&server_custom, session, ctx, deadline),
            join_all(database_results.iter().map(|(db, reached, _)| async {
                if *reached {
                    self.run_at(at(db), &db_custom).await
                } else {
                    let runs = db_custom.iter().map(|c| Timed::not_connected(c)).collect();
                    (db.clone(), false, runs)
                }
            }))
        );
        let mut runs: Vec<(String, Timed)> = server_results
            .into_iter()
            .chain(server_custom_results)
            .map(|r| (self.server.clone(), r))
            .collect();
        for (db, _, results) in database_results.into_iter().chain(database_custom_results) {
            runs.extend(results.into_iter().map(|r| (db.clone(), r)));
        }
        runs
    }

    /// Runs `collectors` on the session of `place.db` (opened if needed):
    /// the database, whether it was reached, the runs.
    async fn run_at(
        &self,
        place: Place<'_>,
        collectors: &[&Collector],
    ) -> (String, bool, Vec<Timed>) {
        let Place {
            session,
            base,
            main_db,
            db,
            ctx,
            deadline,
        } = place;
        if collectors.is_empty() {
            return (db, true, Vec::new());
        }
        let session = if db == main_db {
            Some(Arc::clone(session))
        } else {
            self.database_connection(base, &db, &db, deadline)
                .await
                .map_err(|e| {
                    self.warn_connect(
                        &e.text,
                        "its per-database collectors count as failed until it can",
                    )
                })
                .ok()
                .map(|(s, _)| s)
        };
        match session {
            Some(session) => {
                let runs = timed_all(collectors, &session, ctx, deadline).await;
                (db, true, runs)
            }
            // Could not connect (already logged): the collectors count as failed.
            None => (
                db,
                false,
                collectors.iter().map(|c| Timed::not_connected(c)).collect(),
            ),
        }
    }

    /// The enabled collectors of `scope`: the built-in ones, then the
    /// defined ones (custom queries).
    fn enabled_by_kind(&self, scope: Scope) -> [Vec<&Collector>; 2] {
        let (defined, builtin) = self
            .enabled(scope)
            .into_iter()
            .partition(|c| c.is_defined());
        [builtin, defined]
    }

    /// The enabled collectors of `scope`.
    pub(super) fn enabled(&self, scope: Scope) -> Vec<&Collector> {
        self.collectors
            .iter()
            .filter(|c| c.scope == scope)
            .collect()
    }

    async fn discover(&self, session: &Session, main_db: &str) -> Vec<String> {
        let rows = match session
            .query("SELECT datname::text FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY 1")
            .await
        {
            Ok(rows) => rows,
            Err(e) => {
                self.warn_once(
                    "discover".into(),
                    format!("cannot list databases: {}", db_error_text(&e)),
                );
                return vec![main_db.to_string()];
            }
        };
        let mut dbs: Vec<String> = rows
            .iter()
            .filter_map(|r| r.get::<_, Option<String>>(0))
            .filter(|d| {
                (self.opts.include_databases.is_empty() || self.opts.include_databases.contains(d))
                    && !self.opts.exclude_databases.contains(d)
            })
            .collect();
        if !dbs.iter().any(|d| d == main_db)
            && !self.opts.exclude_databases.iter().any(|d| d == main_db)
        {
            dbs.insert(0, main_db.to_string());
        }
        dbs
    }

    /// The long-lived session to `db` stored under `key`, opened (again) if
    /// needed. The error says which server could not be reached and why; the
    /// caller warns, since what follows from it depends on the session.
    pub(super) async fn database_connection(
        &self,
        base: &Source,
        db: &str,
        key: &str,
        deadline: tokio::time::Instant,
    ) -> Result<(Arc<Session>, u32), LoginFailure> {
        {
            let conns = self.conns.lock().await;
            if let Some(c) = conns.get(key) {
                if !c.session.is_closed() {
                    return Ok((Arc::clone(&c.session), c.version));
                }
            }
        }
        let mut source = base.clone();
        source.config.dbname(db);
        let conn = open(&source, deadline, self.collecting())
            .await
            .map_err(|e| {
                e.context(&format!(
                    "cannot connect to {}",
                    dsn::describe(&source.config)
                ))
            })?;
        if key == dsn::database(&base.config) {
            self.check_privileges(&conn.session).await;
        }
        let out = (Arc::clone(&conn.session), conn.version);
        if key == db {
            tracing::info!(
                "connected to {} (PostgreSQL {})",
                dsn::describe(&source.config),
                version_text(conn.version)
            );
        }
        self.conns.lock().await.insert(key.to_string(), conn);
        Ok(out)
    }

    /// Warns once when the role cannot see other sessions' statistics.
    async fn check_privileges(&self, session: &Session) {
        let rows = session
            .query(
                "SELECT current_user::text, COALESCE((SELECT rolsuper FROM pg_roles WHERE rolname = current_user), false) \
                 OR pg_has_role(current_user, 'pg_monitor', 'MEMBER')",
            )
            .await;
        let Some(row) = rows.ok().and_then(|r| r.into_iter().next()) else {
            return;
        };
        let (role, monitored): (String, bool) = (row.get(0), row.get(1));
        let mut stats = lock(&self.stats);
        if monitored {
            stats.missing_monitor = None;
        } else {
            stats.missing_monitor = Some(role.clone());
            drop(stats);
            self.warn_once(
                format!("pg_monitor:{role}"),
                format!(
                    "role \"{role}\" is not a member of pg_monitor, so PostgreSQL hides other sessions' activity and some \
                     statistics from it (they would read as zeros); grant it with: GRANT pg_monitor TO \"{role}\";"
                ),
            );
        }
    }
}
