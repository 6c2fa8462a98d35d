//! Connections and scrapes: one long-lived connection per database, all
//! collectors of a scrape at once, the whole scrape bounded, concurrent
//! scrapes sharing one collection.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use std::sync::atomic::Ordering;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio::time::timeout_at;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Config, NoTls};

use crate::collectors::{self, COLLECTORS, Ctx, Scope};
use crate::dsn;
use crate::exposition::{Families, Kind};
use crate::session::{Session, lock};

/// Server-wide collectors that run on a second long-lived session to the
/// main database (the ones that cost the server most: `pg_database_size`
/// stats every file of every database), in parallel with the others on the
/// first. Two backends work at once, while the fresh session each scrape
/// opens for `pg_up` logs in. Their results are also reused for
/// [`Options::database_interval`].
const SIDE_SESSION_COLLECTORS: &[&str] = &["database"];

/// What a failed login means for the main database.
const PG_UP_ZERO: &str = "pg_up stays 0 until it can";

/// The key of the side session in `Exporter::conns` (database names cannot
/// hold a NUL).
fn side_key(db: &str) -> String {
    format!("{db}\0side")
}

/// Settings of the exporter (from the command line).
#[derive(Debug, Clone)]
pub struct Options {
    /// Bound on a whole scrape (and each statement).
    pub collection_timeout: Duration,
    /// Bound on opening a connection, when the DSN sets none lower.
    pub connect_timeout: Duration,
    /// Enabled collectors, by name.
    pub collectors: Vec<&'static str>,
    /// Metric name prefix (`pg`).
    pub prefix: String,
    /// Collect per-table families in every database, not just the DSN's.
    pub auto_discover: bool,
    pub include_databases: Vec<String>,
    pub exclude_databases: Vec<String>,
    /// Rows kept by the stat_statements collector.
    pub statements_limit: u32,
    /// Most `/probe` requests served at once.
    pub max_probes: usize,
    /// How long the `database` collector's results (sizes, connection
    /// limits) are reused before the next scrape reads them again; zero
    /// reads them on every scrape.
    pub database_interval: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            collection_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            collectors: COLLECTORS
                .iter()
                .filter(|c| c.default_on)
                .map(|c| c.name)
                .collect(),
            prefix: "pg".into(),
            auto_discover: false,
            include_databases: Vec::new(),
            exclude_databases: Vec::new(),
            statements_limit: 100,
            max_probes: 4,
            database_interval: Duration::from_secs(60),
        }
    }
}

/// Why a `/probe` could not run.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("{0}")]
    Target(#[from] dsn::DsnError),
    #[error("too many probes at once; try again")]
    Busy,
}

struct Conn {
    session: Arc<Session>,
    version: u32,
    /// Drives the connection; aborted when the `Conn` is dropped.
    task: Option<JoinHandle<()>>,
}

impl Conn {
    /// Ends the session politely (Terminate, then the socket closes) before
    /// `deadline`, so the server has let go of it when this returns: a
    /// role at its connection limit has the slot back for the next login.
    async fn close(mut self, deadline: tokio::time::Instant) {
        let task = self.task.take();
        drop(self); // the last client handle: the connection says goodbye and ends
        if let Some(task) = task {
            let _ = timeout_at(deadline, task).await;
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// A finished collection, shared by the scrapes that waited for it.
struct Collected {
    started: Instant,
    text: Arc<String>,
}

#[derive(Debug, Default)]
struct Stats {
    scrapes: u64,
    last_duration: f64,
    last_error: bool,
    missing_monitor: Option<String>,
}

/// The exporter: holds connections, runs scrapes.
pub struct Exporter {
    opts: Options,
    /// The data source, hardened; `None` when only `/probe` is used.
    base: Option<Config>,
    server: String,
    conns: tokio::sync::Mutex<HashMap<String, Conn>>,
    last: tokio::sync::Mutex<Option<Collected>>,
    stats: Mutex<Stats>,
    warned: Mutex<HashSet<String>>,
    probes: Semaphore,
    /// Set once the server or role turned out to have no connection to spare
    /// for the side session: the side collectors run on the main one.
    side_off: std::sync::atomic::AtomicBool,
    /// The last fresh session's goodbye, still finishing in the background.
    fresh_closing: Mutex<Option<JoinHandle<()>>>,
    /// The last successful runs of the side-session collectors, and when they ran.
    side_cache: Mutex<Option<(Instant, Vec<Kept>)>>,
}

impl Exporter {
    pub fn new(opts: Options, base: Option<Config>) -> Self {
        let base = base.map(|mut c| {
            dsn::harden(&mut c, opts.collection_timeout, opts.connect_timeout);
            c
        });
        let server = base.as_ref().map(dsn::server_label).unwrap_or_default();
        let probes = Semaphore::new(opts.max_probes.max(1));
        Self {
            opts,
            base,
            server,
            conns: tokio::sync::Mutex::new(HashMap::new()),
            last: tokio::sync::Mutex::new(None),
            stats: Mutex::new(Stats::default()),
            warned: Mutex::new(HashSet::new()),
            probes,
            side_off: std::sync::atomic::AtomicBool::new(false),
            fresh_closing: Mutex::new(None),
            side_cache: Mutex::new(None),
        }
    }

    /// What is being watched, for the startup message.
    pub fn describe(&self) -> String {
        self.base
            .as_ref()
            .map(dsn::describe)
            .unwrap_or_else(|| "no data source (only /probe)".into())
    }

    /// The `pg_*` exposition of a scrape, followed by what `append` writes
    /// (the caller's own metrics). Scrapes that arrive while one is
    /// collecting wait for the next collection that starts after they
    /// arrived, and share it: a slow database never piles up connections.
    pub async fn scrape(&self, append: impl FnOnce(&mut String)) -> Arc<String> {
        let arrived = Instant::now();
        let mut last = self.last.lock().await;
        let mut size = 64 * 1024;
        if let Some(done) = last.take() {
            if done.started >= arrived {
                let text = Arc::clone(&done.text);
                *last = Some(done);
                return text;
            }
            // The last text is let go before the next one is written (only
            // responses still being sent hold it), and its size sizes the next.
            size = done.text.len() + done.text.len() / 16 + 4096;
        }
        let started = Instant::now();
        let mut text = String::with_capacity(size);
        self.collect_once(&mut text).await;
        append(&mut text);
        let text = Arc::new(text);
        *last = Some(Collected {
            started,
            text: Arc::clone(&text),
        });
        text
    }

    async fn collect_once(&self, text: &mut String) {
        let start = Instant::now();
        let deadline = tokio::time::Instant::now() + self.opts.collection_timeout;
        let mut out = Families::new();
        let mut ok = true;
        if let Some(base) = self.base.clone() {
            let main_db = dsn::database(&base);
            // A fresh session tells whether the exporter can still log in
            // (pg_up); it runs nothing. Meanwhile the long-lived sessions collect.
            let fresh = async {
                // The last login's slot is free again before the next one is
                // taken (a role at its connection limit needs it back)...
                self.fresh_closed(deadline).await;
                match open(&base, deadline, false).await {
                    Ok(conn) => {
                        self.forget_connect_warnings();
                        // ...but this scrape does not wait for the goodbye.
                        let until = tokio::time::Instant::now() + self.opts.collection_timeout;
                        let closing = tokio::spawn(conn.close(until));
                        *lock(&self.fresh_closing) = Some(closing);
                        Ok(())
                    }
                    Err(e) => {
                        self.warn_connect(
                            &format!("cannot connect to {}: {e}", dsn::describe(&base)),
                            PG_UP_ZERO,
                        );
                        Err(e.too_many_connections)
                    }
                }
            };
            let side_names: Vec<&'static str> = SIDE_SESSION_COLLECTORS
                .iter()
                .copied()
                .filter(|c| self.opts.collectors.contains(c))
                .collect();
            // Recent enough results are reused: nothing to run for them.
            let reused = self.reusable_side_runs();
            let on_side: &[&'static str] = if reused.is_some() { &[] } else { &side_names };
            // The side session is held while it is on, also between the
            // scrapes that reuse its results.
            let side_held = !side_names.is_empty() && !self.side_off.load(Ordering::Relaxed);
            let use_side = side_held && !on_side.is_empty();
            let side = async {
                if !use_side {
                    return Err(None::<OpenError>);
                }
                let key = side_key(&main_db);
                let (session, version) = self
                    .database_connection(&base, &main_db, &key, deadline)
                    .await
                    .map_err(Some)?;
                let ctx = self.ctx(version);
                Ok(timed_all(on_side, &session, &ctx, deadline).await)
            };
            let main = async {
                let (session, version) = self
                    .database_connection(&base, &main_db, &main_db, deadline)
                    .await
                    .map_err(|e| {
                        self.warn_connect(&e.text, PG_UP_ZERO);
                        e.too_many_connections
                    })?;
                let ctx = self.ctx(version);
                let runs = self
                    .run_collectors(&session, &ctx, &base, deadline, &side_names, &mut out)
                    .await;
                Ok((session, ctx, runs))
            };
            let (fresh, side_runs, main) = tokio::join!(fresh, side, main);
            let up = fresh.is_ok() && main.is_ok();
            // At a connection limit, the side session must not take the slots
            // the fresh login behind pg_up and the main session need: it is
            // given up for good.
            let side_refused = matches!(&side_runs, Err(Some(e)) if e.too_many_connections);
            if side_held && (fresh == Err(true) || matches!(main, Err(true)) || side_refused) {
                self.give_up_side_session(&base, &main_db).await;
            }
            match main {
                Ok((session, ctx, mut runs)) => {
                    let side_runs = match side_runs {
                        Ok(runs) => runs,
                        // No side session: run them on the main one after all.
                        Err(e) => {
                            if let Some(e) = e.filter(|e| !e.too_many_connections) {
                                self.warn_connect(
                                    &e.text,
                                    "the database sizes are read on the main session until it can",
                                );
                            }
                            timed_all(on_side, &session, &ctx, deadline).await
                        }
                    };
                    let side_runs = match reused {
                        Some(runs) => runs,
                        None => {
                            self.keep_side_runs(&side_runs);
                            side_runs
                        }
                    };
                    runs.extend(side_runs.into_iter().map(|r| (self.server.clone(), r)));
                    ok &= self.record(runs, &mut out).await;
                }
                Err(_) => ok = false,
            }
            add_up(&mut out, &self.opts.prefix, up);
        }
        let elapsed = start.elapsed().as_secs_f64();
        let mut stats = lock(&self.stats);
        stats.scrapes += 1;
        stats.last_duration = elapsed;
        stats.last_error = !ok;
        self.exporter_families(&stats, &mut out);
        drop(stats);
        out.render(text);
    }

    /// Merges collector runs into `out` with their duration and success
    /// series; cancels queries left running by a timeout. True when all succeeded.
    async fn record(&self, runs: Vec<(String, Timed)>, out: &mut Families) -> bool {
        let mut ok = true;
        let mut timed_out = false;
        let mut durations: HashMap<&'static str, (Duration, bool)> = HashMap::new();
        for (place, (name, result, elapsed, fam)) in runs {
            let success = self.outcome(name, &place, result, &mut timed_out);
            ok &= success;
            let entry = durations.entry(name).or_insert((Duration::ZERO, true));
            entry.0 = entry.0.max(elapsed);
            entry.1 &= success;
            out.merge(fam);
        }
        for (name, (elapsed, success)) in durations {
            add_collector_result(out, &self.opts.prefix, name, Some(elapsed), success);
        }
        if timed_out {
            // Queries may still run on the server: cancel them and start afresh next time.
            let mut conns = self.conns.lock().await;
            for (_, conn) in conns.drain() {
                let _ = conn
                    .session
                    .client()
                    .cancel_token()
                    .cancel_query(NoTls)
                    .await;
            }
        }
        ok
    }

    fn ctx(&self, version: u32) -> Ctx {
        Ctx {
            prefix: self.opts.prefix.clone(),
            version,
            server: self.server.clone(),
            statements_limit: self.opts.statements_limit,
        }
    }

    fn exporter_families(&self, stats: &Stats, out: &mut Families) {
        let p = &self.opts.prefix;
        out.add(
            &format!("{p}_exporter_last_scrape_duration_seconds"),
            "Duration of the last scrape of metrics from PostgreSQL.",
            Kind::Gauge,
            Vec::new(),
            stats.last_duration,
        );
        out.add(
            &format!("{p}_exporter_scrapes_total"),
            "Total number of times PostgreSQL was scraped for metrics.",
            Kind::Counter,
            Vec::new(),
            stats.scrapes as f64,
        );
        out.add(
            &format!("{p}_exporter_last_scrape_error"),
            "Whether the last scrape of metrics from PostgreSQL resulted in an error (1 for error, 0 for success).",
            Kind::Gauge,
            Vec::new(),
            if stats.last_error { 1.0 } else { 0.0 },
        );
        let name = format!("{p}_exporter_missing_pg_monitor");
        let help = "1 when the exporter's role is not a member of pg_monitor (statistics of other sessions are hidden from it).";
        match &stats.missing_monitor {
            Some(role) => out.add(
                &name,
                help,
                Kind::Gauge,
                vec![("role".into(), role.clone())],
                1.0,
            ),
            None => out.declare(&name, help, Kind::Gauge),
        }
    }

    /// Runs the enabled collectors (but `skip`), all at once: server scope on
    /// the main session (pipelined), database scope on each collected
    /// database's session. Adds `pg_static` to `out`; returns the runs with
    /// where they ran.
    async fn run_collectors(
        &self,
        session: &Arc<Session>,
        ctx: &Ctx,
        base: &Config,
        deadline: tokio::time::Instant,
        skip: &[&str],
        out: &mut Families,
    ) -> Vec<(String, Timed)> {
        let server_scope: Vec<&'static str> = self
            .enabled(Scope::Server)
            .into_iter()
            .filter(|n| !skip.contains(n))
            .collect();
        let db_scope = self.enabled(Scope::Database);
        let main_db = dsn::database(base);

        let server_runs = timed_all(&server_scope, session, ctx, deadline);
        let static_info = async {
            let mut fam = Families::new();
            let r = timeout_at(deadline, collectors::static_info(session, ctx, &mut fam)).await;
            (r, fam)
        };
        let database_runs = async {
            if db_scope.is_empty() {
                return Vec::new();
            }
            let databases = if self.opts.auto_discover {
                timeout_at(deadline, self.discover(session, &main_db))
                    .await
                    .unwrap_or_else(|_| vec![main_db.clone()])
            } else {
                vec![main_db.clone()]
            };
            join_all(databases.into_iter().map(|db| {
                let db_scope = &db_scope;
                let main_db = &main_db;
                async move {
                    let session = if &db == main_db {
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
                    let runs = match session {
                        Some(session) => timed_all(db_scope, &session, ctx, deadline).await,
                        // Could not connect (already logged): the collectors count as failed.
                        None => db_scope
                            .iter()
                            .map(|name| {
                                (
                                    *name,
                                    Err(RunError::NotConnected),
                                    Duration::ZERO,
                                    Families::new(),
                                )
                            })
                            .collect(),
                    };
                    (db, runs)
                }
            }))
            .await
        };
        let (server_results, (static_result, static_fam), database_results) =
            tokio::join!(server_runs, static_info, database_runs);
        if let Ok(Ok(())) = static_result {
            out.merge(static_fam);
        }
        let mut runs: Vec<(String, Timed)> = server_results
            .into_iter()
            .map(|r| (self.server.clone(), r))
            .collect();
        for (db, results) in database_results {
            runs.extend(results.into_iter().map(|r| (db.clone(), r)));
        }
        runs
    }

    /// Logs a collector failure (once per collector and message) and says whether it succeeded.
    fn outcome(
        &self,
        name: &str,
        place: &str,
        result: Result<(), RunError>,
        timed_out: &mut bool,
    ) -> bool {
        match result {
            Ok(()) => true,
            Err(RunError::Query(e)) => {
                let msg = db_error_text(&e);
                self.warn_once(
                    format!("{name}:{msg}"),
                    format!("collector {name} failed on {place}: {msg}"),
                );
                false
            }
            Err(RunError::NotConnected) => false,
            Err(RunError::Timeout) => {
                *timed_out = true;
                self.warn_once(
                    format!("{name}:timeout"),
                    format!(
                        "collector {name} did not finish within --collection-timeout {}; its metrics are left out of this scrape",
                        sidecar_telemetry::duration::format(self.opts.collection_timeout)
                    ),
                );
                false
            }
        }
    }

    fn enabled(&self, scope: Scope) -> Vec<&'static str> {
        COLLECTORS
            .iter()
            .filter(|c| c.scope == scope && self.opts.collectors.contains(&c.name))
            .map(|c| c.name)
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

    /// A connection worked again: a later outage is worth a new warning.
    fn forget_connect_warnings(&self) {
        let mut warned = lock(&self.warned);
        warned.retain(|k| !k.starts_with("connect:"));
    }

    /// The long-lived session to `db` stored under `key`, opened (again) if
    /// needed. The error says which server could not be reached and why; the
    /// caller warns, since what follows from it depends on the session.
    async fn database_connection(
        &self,
        base: &Config,
        db: &str,
        key: &str,
        deadline: tokio::time::Instant,
    ) -> Result<(Arc<Session>, u32), OpenError> {
        {
            let conns = self.conns.lock().await;
            if let Some(c) = conns.get(key) {
                if !c.session.is_closed() {
                    return Ok((Arc::clone(&c.session), c.version));
                }
            }
        }
        let mut config = base.clone();
        config.dbname(db);
        let conn = open(&config, deadline, true).await.map_err(|e| OpenError {
            text: format!("cannot connect to {}: {e}", dsn::describe(&config)),
            ..e
        })?;
        if key == dsn::database(base) {
            self.check_privileges(&conn.session).await;
        }
        let out = (Arc::clone(&conn.session), conn.version);
        if key == db {
            tracing::info!(
                "connected to {} (PostgreSQL {})",
                dsn::describe(&config),
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

    /// Closes the side session and stops opening it (see `side_off`).
    async fn give_up_side_session(&self, base: &Config, main_db: &str) {
        if self.side_off.swap(true, Ordering::Relaxed) {
            return;
        }
        self.conns.lock().await.remove(&side_key(main_db));
        tracing::warn!(
            "{} has no connection to spare for a second session (connection limit); \
             the database sizes are read on the main session from now on",
            dsn::describe(base)
        );
    }

    /// One warning per target and error until a connection succeeds again.
    /// `error` names the target; `then` says what follows from it.
    fn warn_connect(&self, error: &str, then: &str) {
        self.warn_once(format!("connect:{error}"), format!("{error}; {then}"));
    }

    fn warn_once(&self, key: String, message: String) {
        let mut warned = lock(&self.warned);
        if warned.len() > 1000 {
            warned.clear();
        }
        if warned.insert(key) {
            tracing::warn!("{message}");
        }
    }

    /// Collects once from another server (`/probe?target=`), on a connection
    /// opened for this request and closed after it.
    pub async fn probe(&self, target: &str) -> Result<String, ProbeError> {
        let mut config = dsn::probe_target(target, self.base.as_ref())?;
        dsn::harden(
            &mut config,
            self.opts.collection_timeout,
            self.opts.connect_timeout,
        );
        let _permit = tokio::time::timeout(self.opts.collection_timeout, self.probes.acquire())
            .await
            .map_err(|_| ProbeError::Busy)?
            .map_err(|_| ProbeError::Busy)?;
        let deadline = tokio::time::Instant::now() + self.opts.collection_timeout;
        let mut out = Families::new();
        let p = &self.opts.prefix;
        let up = match open(&config, deadline, true).await {
            Ok(conn) => {
                let ctx = Ctx {
                    server: dsn::server_label(&config),
                    ..self.ctx(conn.version)
                };
                let runs = COLLECTORS
                    .iter()
                    .filter(|c| self.opts.collectors.contains(&c.name))
                    .map(|c| timed(c.name, &conn.session, &ctx, deadline));
                for (name, result, elapsed, fam) in join_all(runs).await {
                    add_collector_result(&mut out, p, name, Some(elapsed), result.is_ok());
                    out.merge(fam);
                }
                let _ = timeout_at(
                    deadline,
                    collectors::static_info(&conn.session, &ctx, &mut out),
                )
                .await;
                true
            }
            Err(e) => {
                tracing::debug!("probe of {} failed: {e}", dsn::describe(&config));
                false
            }
        };
        add_up(&mut out, p, up);
        let mut text = String::new();
        out.render(&mut text);
        Ok(text)
    }

    /// The side-session collectors' last results, as runs, if they are
    /// younger than `database_interval`.
    fn reusable_side_runs(&self) -> Option<Vec<Timed>> {
        let cache = lock(&self.side_cache);
        let (at, runs) = cache.as_ref()?;
        if at.elapsed() >= self.opts.database_interval {
            return None;
        }
        Some(
            runs.iter()
                .map(|(name, elapsed, fam)| (*name, Ok(()), *elapsed, fam.clone()))
                .collect(),
        )
    }

    /// Keeps the side-session runs for reuse when every one of them succeeded.
    fn keep_side_runs(&self, runs: &[Timed]) {
        if self.opts.database_interval.is_zero()
            || runs.is_empty()
            || runs.iter().any(|r| r.1.is_err())
        {
            return;
        }
        let kept = runs
            .iter()
            .map(|(name, _, elapsed, fam)| (*name, *elapsed, fam.clone()))
            .collect();
        *lock(&self.side_cache) = Some((Instant::now(), kept));
    }

    /// Waits (until `deadline`) for the last fresh session to have ended.
    async fn fresh_closed(&self, deadline: tokio::time::Instant) {
        let closing = lock(&self.fresh_closing).take();
        if let Some(closing) = closing {
            let _ = timeout_at(deadline, closing).await;
        }
    }

    /// Closes the long-lived connections, and lets the last fresh one finish (at shutdown).
    pub async fn close(&self) {
        self.conns.lock().await.clear();
        self.fresh_closed(tokio::time::Instant::now() + Duration::from_secs(1))
            .await;
    }
}

fn add_up(out: &mut Families, prefix: &str, up: bool) {
    out.add(
        &format!("{prefix}_up"),
        "Whether the last scrape of metrics from PostgreSQL was able to connect to the server (1 for yes, 0 for no).",
        Kind::Gauge,
        Vec::new(),
        if up { 1.0 } else { 0.0 },
    );
}

fn add_collector_result(
    out: &mut Families,
    prefix: &str,
    name: &str,
    elapsed: Option<Duration>,
    success: bool,
) {
    let labels = vec![("collector".to_string(), name.to_string())];
    if let Some(elapsed) = elapsed {
        out.add(
            &format!("{prefix}_scrape_collector_duration_seconds"),
            "postgres_exporter: Duration of a collector scrape.",
            Kind::Gauge,
            labels.clone(),
            elapsed.as_secs_f64(),
        );
    }
    out.add(
        &format!("{prefix}_scrape_collector_success"),
        "postgres_exporter: Whether a collector succeeded.",
        Kind::Gauge,
        labels,
        if success { 1.0 } else { 0.0 },
    );
}

/// Why a collector run produced nothing.
enum RunError {
    Query(tokio_postgres::Error),
    Timeout,
    NotConnected,
}

/// A successful collector run kept for reuse: its name, duration and families.
type Kept = (&'static str, Duration, Families);

/// A collector run: its name, outcome, duration and families.
type Timed = (&'static str, Result<(), RunError>, Duration, Families);

/// Runs one collector before `deadline`, timing it.
async fn timed(
    name: &'static str,
    session: &Session,
    ctx: &Ctx,
    deadline: tokio::time::Instant,
) -> Timed {
    let mut fam = Families::new();
    let t0 = Instant::now();
    let result = match timeout_at(deadline, collectors::collect(name, session, ctx, &mut fam)).await
    {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(RunError::Query(e)),
        Err(_) => Err(RunError::Timeout),
    };
    (name, result, t0.elapsed(), fam)
}

/// Runs the collectors `names` at once on `session` (pipelined).
async fn timed_all(
    names: &[&'static str],
    session: &Session,
    ctx: &Ctx,
    deadline: tokio::time::Instant,
) -> Vec<Timed> {
    join_all(names.iter().map(|name| timed(name, session, ctx, deadline))).await
}

/// Why a connection could not be opened.
#[derive(Debug)]
struct OpenError {
    text: String,
    /// The server or the role is at its connection limit (SQLSTATE 53300).
    too_many_connections: bool,
}

impl OpenError {
    fn db(e: &tokio_postgres::Error) -> Self {
        Self {
            text: db_error_text(e),
            too_many_connections: e.code() == Some(&SqlState::TOO_MANY_CONNECTIONS),
        }
    }
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// Opens a connection (reading the server version if `version`), all before `deadline`.
async fn open(
    config: &Config,
    deadline: tokio::time::Instant,
    version: bool,
) -> Result<Conn, OpenError> {
    let limit = config
        .get_connect_timeout()
        .map(|t| tokio::time::Instant::now() + *t)
        .map_or(deadline, |t| t.min(deadline));
    let connecting = async {
        let (client, connection) = crate::connect::connect(config)
            .await
            .map_err(|e| OpenError::db(&e))?;
        let task = tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("database connection ended: {e}");
            }
        });
        let version = if version {
            client
                .query_one("SHOW server_version_num", &[])
                .await
                .map_err(|e| OpenError::db(&e))?
                .get::<_, String>(0)
                .parse()
                .unwrap_or(0)
        } else {
            0
        };
        Ok(Conn {
            session: Arc::new(Session::new(client)),
            version,
            task: Some(task),
        })
    };
    match timeout_at(limit, connecting).await {
        Ok(result) => result,
        Err(_) => Err(OpenError {
            text: "the server did not answer in time (connect timeout)".into(),
            too_many_connections: false,
        }),
    }
}

/// The most useful text of a database error (the server's message when there is one).
fn db_error_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(cause) = source {
                let cause_text = cause.to_string();
                if !text.contains(&cause_text) {
                    text.push_str(": ");
                    text.push_str(&cause_text);
                }
                source = cause.source();
            }
            text
        }
    }
}

fn version_text(num: u32) -> String {
    format!("{}.{}", num / 10_000, num % 100)
}
