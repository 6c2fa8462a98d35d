//! Connections and scrapes: one long-lived connection per database, all
//! collectors of a scrape at once, the whole scrape bounded, concurrent
//! scrapes sharing one collection.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio::time::timeout_at;
use tokio_postgres::{Client, Config, NoTls};

use crate::collectors::{self, COLLECTORS, Ctx, Scope};
use crate::dsn;
use crate::exposition::{Families, Kind};

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
    client: Arc<Client>,
    version: u32,
    task: JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.task.abort();
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
        }
    }

    /// What is being watched, for the startup message.
    pub fn describe(&self) -> String {
        self.base
            .as_ref()
            .map(dsn::describe)
            .unwrap_or_else(|| "no data source (only /probe)".into())
    }

    /// The `pg_*` exposition of a scrape. Scrapes that arrive while one is
    /// collecting wait for the next collection that starts after they
    /// arrived, and share it: a slow database never piles up connections.
    pub async fn scrape(&self) -> Arc<String> {
        let arrived = Instant::now();
        let mut last = self.last.lock().await;
        if let Some(done) = last.as_ref() {
            if done.started >= arrived {
                return Arc::clone(&done.text);
            }
        }
        let started = Instant::now();
        let text = Arc::new(self.collect_once().await);
        *last = Some(Collected {
            started,
            text: Arc::clone(&text),
        });
        text
    }

    async fn collect_once(&self) -> String {
        let start = Instant::now();
        let deadline = tokio::time::Instant::now() + self.opts.collection_timeout;
        let mut out = Families::new();
        let mut ok = true;
        let prefix = &self.opts.prefix;
        if let Some(base) = self.base.clone() {
            let (fresh, main) = tokio::join!(
                self.check_fresh(&base, deadline),
                self.main_connection(&base, deadline)
            );
            let up = fresh && main.is_some();
            if let Some((client, version)) = main {
                let ctx = self.ctx(version);
                ok &= self
                    .run_collectors(&client, &ctx, &base, deadline, &mut out)
                    .await;
            } else {
                ok = false;
            }
            out.add(
                &format!("{prefix}_up"),
                "Whether the last scrape of metrics from PostgreSQL was able to connect to the server (1 for yes, 0 for no).",
                Kind::Gauge,
                Vec::new(),
                if up { 1.0 } else { 0.0 },
            );
        }
        let elapsed = start.elapsed().as_secs_f64();
        let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        stats.scrapes += 1;
        stats.last_duration = elapsed;
        stats.last_error = !ok;
        self.exporter_families(&stats, &mut out);
        drop(stats);
        let mut text = String::with_capacity(64 * 1024);
        out.render(&mut text);
        text
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
        out.add(&format!("{p}_exporter_last_scrape_error"), "Whether the last scrape of metrics from PostgreSQL resulted in an error (1 for error, 0 for success).", Kind::Gauge, Vec::new(), if stats.last_error { 1.0 } else { 0.0 });
        if let Some(role) = &stats.missing_monitor {
            out.add(&format!("{p}_exporter_missing_pg_monitor"), "1 when the exporter's role is not a member of pg_monitor (statistics of other sessions are hidden from it).", Kind::Gauge, vec![("role".into(), role.clone())], 1.0);
        } else {
            out.declare(&format!("{p}_exporter_missing_pg_monitor"), "1 when the exporter's role is not a member of pg_monitor (statistics of other sessions are hidden from it).", Kind::Gauge);
        }
    }

    /// Runs the enabled collectors on `client` (server scope) and on every
    /// collected database (database scope). True when all succeeded.
    async fn run_collectors(
        &self,
        client: &Arc<Client>,
        ctx: &Ctx,
        base: &Config,
        deadline: tokio::time::Instant,
        out: &mut Families,
    ) -> bool {
        let server_scope: Vec<&'static str> = self.enabled(Scope::Server);
        let db_scope: Vec<&'static str> = self.enabled(Scope::Database);
        let main_db = dsn::database(base);

        // Server-scope collectors, all at once on the main connection (pipelined).
        let runs = server_scope.iter().map(|name| {
            let client = Arc::clone(client);
            async move {
                let mut fam = Families::new();
                let t0 = Instant::now();
                let result =
                    timeout_at(deadline, collectors::collect(name, &client, ctx, &mut fam)).await;
                (*name, result, t0.elapsed(), fam)
            }
        });
        let static_info = async {
            let mut fam = Families::new();
            let r = timeout_at(deadline, collectors::static_info(client, ctx, &mut fam)).await;
            (r, fam)
        };
        let databases = async {
            if self.opts.auto_discover {
                timeout_at(deadline, self.discover(client, &main_db))
                    .await
                    .unwrap_or_else(|_| vec![main_db.clone()])
            } else {
                vec![main_db.clone()]
            }
        };
        let (results, (static_result, static_fam), databases) =
            tokio::join!(join_all(runs), static_info, databases);

        let mut ok = true;
        let mut timed_out = false;
        let mut durations: HashMap<&'static str, (Duration, bool)> = HashMap::new();
        for (name, result, elapsed, fam) in results {
            let success = self.outcome(name, &self.server, result, &mut timed_out);
            ok &= success;
            durations.insert(name, (elapsed, success));
            out.merge(fam);
        }
        if let Ok(Ok(())) = static_result {
            out.merge(static_fam);
        }

        // Database-scope collectors: on each database's own connection.
        if !db_scope.is_empty() {
            let per_db = databases.iter().map(|db| {
                let db_scope = &db_scope;
                let main = Arc::clone(client);
                let main_db = &main_db;
                async move {
                    let client = if db == main_db {
                        Some(main)
                    } else {
                        self.database_connection(base, db, deadline)
                            .await
                            .map(|(c, _)| c)
                    };
                    let mut results = Vec::new();
                    let Some(client) = client else {
                        return (db.clone(), results, false);
                    };
                    for name in db_scope.iter() {
                        let mut fam = Families::new();
                        let t0 = Instant::now();
                        let r =
                            timeout_at(deadline, collectors::collect(name, &client, ctx, &mut fam))
                                .await;
                        results.push((*name, r, t0.elapsed(), fam));
                    }
                    (db.clone(), results, true)
                }
            });
            for (db, results, connected) in join_all(per_db).await {
                if !connected {
                    ok = false;
                    for name in &db_scope {
                        durations.entry(name).or_insert((Duration::ZERO, false)).1 = false;
                    }
                    continue;
                }
                for (name, result, elapsed, fam) in results {
                    let success = self.outcome(name, &db, result, &mut timed_out);
                    ok &= success;
                    let entry = durations.entry(name).or_insert((Duration::ZERO, true));
                    entry.0 += elapsed;
                    entry.1 &= success;
                    out.merge(fam);
                }
            }
        }
        let p = &self.opts.prefix;
        for (name, (elapsed, success)) in durations {
            let labels = vec![("collector".to_string(), name.to_string())];
            out.add(
                &format!("{p}_scrape_collector_duration_seconds"),
                "postgres_exporter: Duration of a collector scrape.",
                Kind::Gauge,
                labels.clone(),
                elapsed.as_secs_f64(),
            );
            out.add(
                &format!("{p}_scrape_collector_success"),
                "postgres_exporter: Whether a collector succeeded.",
                Kind::Gauge,
                labels,
                if success { 1.0 } else { 0.0 },
            );
        }
        if timed_out {
            // Queries may still run on the server: cancel them and start afresh next time.
            let mut conns = self.conns.lock().await;
            for (_, conn) in conns.drain() {
                let _ = conn.client.cancel_token().cancel_query(NoTls).await;
            }
        }
        ok
    }

    /// Logs a collector failure (once per collector and message) and says whether it succeeded.
    fn outcome(
        &self,
        name: &str,
        where_: &str,
        result: Result<Result<(), tokio_postgres::Error>, tokio::time::error::Elapsed>,
        timed_out: &mut bool,
    ) -> bool {
        match result {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                let msg = db_error_text(&e);
                self.warn_once(
                    format!("{name}:{msg}"),
                    format!("collector {name} failed on {where_}: {msg}"),
                );
                false
            }
            Err(_) => {
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

    async fn discover(&self, client: &Client, main_db: &str) -> Vec<String> {
        let rows = match client
            .query("SELECT datname::text FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY 1", &[])
            .await
        {
            Ok(rows) => rows,
            Err(e) => {
                self.warn_once("discover".into(), format!("cannot list databases: {}", db_error_text(&e)));
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

    /// A new connection, opened and closed: can the exporter still log in?
    async fn check_fresh(&self, base: &Config, deadline: tokio::time::Instant) -> bool {
        match open(base, deadline).await {
            Ok(conn) => {
                drop(conn);
                // A later outage is worth a new warning.
                let mut warned = self.warned.lock().unwrap_or_else(|e| e.into_inner());
                warned.retain(|k| !k.starts_with("connect:"));
                true
            }
            Err(e) => {
                self.warn_connect(base, &e);
                false
            }
        }
    }

    async fn main_connection(
        &self,
        base: &Config,
        deadline: tokio::time::Instant,
    ) -> Option<(Arc<Client>, u32)> {
        let db = dsn::database(base);
        let (client, version) = self.database_connection(base, &db, deadline).await?;
        Some((client, version))
    }

    /// The long-lived connection to `db`, opened (again) if needed.
    async fn database_connection(
        &self,
        base: &Config,
        db: &str,
        deadline: tokio::time::Instant,
    ) -> Option<(Arc<Client>, u32)> {
        {
            let conns = self.conns.lock().await;
            if let Some(c) = conns.get(db) {
                if !c.client.is_closed() {
                    return Some((Arc::clone(&c.client), c.version));
                }
            }
        }
        let mut config = base.clone();
        config.dbname(db);
        let conn = match open(&config, deadline).await {
            Ok(conn) => conn,
            Err(e) => {
                self.warn_connect(&config, &e);
                return None;
            }
        };
        if db == dsn::database(base) {
            self.check_privileges(&conn.client).await;
        }
        let out = (Arc::clone(&conn.client), conn.version);
        tracing::info!(
            "connected to {} (PostgreSQL {})",
            dsn::describe(&config),
            version_text(conn.version)
        );
        self.conns.lock().await.insert(db.to_string(), conn);
        Some(out)
    }

    /// Warns once when the role cannot see other sessions' statistics.
    async fn check_privileges(&self, client: &Client) {
        let row = client
            .query_one(
                "SELECT current_user::text, COALESCE((SELECT rolsuper FROM pg_roles WHERE rolname = current_user), false) \
                 OR pg_has_role(current_user, 'pg_monitor', 'MEMBER')",
                &[],
            )
            .await;
        let Ok(row) = row else { return };
        let (role, monitored): (String, bool) = (row.get(0), row.get(1));
        let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
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

    /// One warning per target and error until a connection succeeds again.
    fn warn_connect(&self, config: &Config, error: &str) {
        let target = dsn::describe(config);
        self.warn_once(
            format!("connect:{target}:{error}"),
            format!("cannot connect to {target}: {error}; pg_up stays 0 until it can"),
        );
    }

    fn warn_once(&self, key: String, message: String) {
        let mut warned = self.warned.lock().unwrap_or_else(|e| e.into_inner());
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
        let up = match open(&config, deadline).await {
            Ok(conn) => {
                let ctx = Ctx {
                    server: dsn::server_label(&config),
                    ..self.ctx(conn.version)
                };
                let names: Vec<&'static str> = COLLECTORS
                    .iter()
                    .filter(|c| self.opts.collectors.contains(&c.name))
                    .map(|c| c.name)
                    .collect();
                let runs = names.iter().map(|name| {
                    let client = Arc::clone(&conn.client);
                    let ctx = &ctx;
                    async move {
                        let mut fam = Families::new();
                        let r =
                            timeout_at(deadline, collectors::collect(name, &client, ctx, &mut fam))
                                .await;
                        (*name, r, fam)
                    }
                });
                for (name, r, fam) in join_all(runs).await {
                    let success = matches!(r, Ok(Ok(())));
                    out.add(
                        &format!("{p}_scrape_collector_success"),
                        "postgres_exporter: Whether a collector succeeded.",
                        Kind::Gauge,
                        vec![("collector".into(), name.into())],
                        if success { 1.0 } else { 0.0 },
                    );
                    out.merge(fam);
                }
                let _ = timeout_at(
                    deadline,
                    collectors::static_info(&conn.client, &ctx, &mut out),
                )
                .await;
                true
            }
            Err(e) => {
                tracing::debug!("probe of {} failed: {e}", dsn::describe(&config));
                false
            }
        };
        out.add(&format!("{p}_up"), "Whether the last scrape of metrics from PostgreSQL was able to connect to the server (1 for yes, 0 for no).", Kind::Gauge, Vec::new(), if up { 1.0 } else { 0.0 });
        let mut text = String::new();
        out.render(&mut text);
        Ok(text)
    }

    /// Closes the long-lived connections (at shutdown).
    pub async fn close(&self) {
        self.conns.lock().await.clear();
    }
}

/// Opens a connection and reads the server version, all before `deadline`.
async fn open(config: &Config, deadline: tokio::time::Instant) -> Result<Conn, String> {
    let limit = config
        .get_connect_timeout()
        .map(|t| tokio::time::Instant::now() + *t)
        .map_or(deadline, |t| t.min(deadline));
    let connecting = async {
        let (client, connection) = config.connect(NoTls).await.map_err(|e| db_error_text(&e))?;
        let task = tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("database connection ended: {e}");
            }
        });
        let version = client
            .query_one("SHOW server_version_num", &[])
            .await
            .map_err(|e| db_error_text(&e))?
            .get::<_, String>(0)
            .parse()
            .unwrap_or(0);
        Ok(Conn {
            client: Arc::new(client),
            version,
            task,
        })
    };
    match timeout_at(limit, connecting).await {
        Ok(result) => result,
        Err(_) => Err("the server did not answer in time (connect timeout)".into()),
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
