//! Connections and scrapes: one long-lived connection per database, all
//! collectors of a scrape at once, the whole scrape bounded, concurrent
//! scrapes sharing one collection.
//!
//! Modules: `login` the fresh login behind `pg_up`, `conn` opens and
//! closes connections (and says why a login failed), `databases` holds the long-lived sessions and runs the
//! collectors on them, `side` the second session for the costly collectors,
//! `runs` times collector runs and writes their results.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio::time::timeout_at;

use crate::auth::AuthModules;
use crate::collectors::custom::Queries;
use crate::collectors::{self, COLLECTORS, Collector, Ctx, Scope};
use crate::connect::Source;
use crate::dsn;
use crate::exposition::Families;
use crate::session::lock;

mod conn;
mod databases;
mod login;
mod runs;
mod side;

use conn::{Conn, LoginFailure, Purpose, open};
use login::{Logins, Warned};
use runs::{add_collector_result, add_up, timed_all};
use side::{Kept, SideRun};

/// What a failed login means for the main database.
const PG_UP_ZERO: &str = "pg_up stays 0 until it can";

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
    /// The custom queries file (`--extend.query-path`): its namespaces run
    /// as collectors beside the enabled built-in ones.
    pub queries: Option<Queries>,
    /// `--config.file`'s auth modules, for `/probe?auth_module=`.
    pub auth_modules: AuthModules,
    /// When the config file (`--config.file`) was read; `None` when there
    /// was none to read (`postgres_exporter_config_last_reload_*`).
    pub config_loaded: Option<std::time::SystemTime>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            collection_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            collectors: COLLECTORS
                .iter()
                .filter(|c| c.default_on)
                .map(|c| c.name.as_ref())
                .collect(),
            prefix: "pg".into(),
            auto_discover: false,
            include_databases: Vec::new(),
            exclude_databases: Vec::new(),
            statements_limit: 100,
            max_probes: 4,
            database_interval: Duration::from_secs(60),
            queries: None,
            auth_modules: AuthModules::default(),
            config_loaded: None,
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
    #[error(
        "auth_module {name:?} is not in the config file (--config.file); {}",
        match known.as_slice() {
            [] => "it defines none: add it under auth_modules".to_string(),
            names => format!("use one of: {}", names.join(", ")),
        }
    )]
    UnknownModule { name: String, known: Vec<String> },
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
    /// The enabled collectors.
    collectors: Vec<Collector>,
    /// The data source, hardened; `None` when only `/probe` is used.
    base: Option<Source>,
    server: String,
    conns: tokio::sync::Mutex<HashMap<String, Conn>>,
    last: tokio::sync::Mutex<Option<Collected>>,
    stats: Mutex<Stats>,
    warned: Warned,
    probes: Semaphore,
    /// Set once the server or role turned out to have no connection to spare
    /// for the side session: the side collectors run on the main one.
    side_off: AtomicBool,
    /// The fresh logins behind `pg_up`.
    logins: Logins,
    /// The last successful runs of the side-session collectors, and when they ran.
    side_cache: Mutex<Option<(Instant, Vec<Kept>)>>,
}

impl Exporter {
    pub fn new(opts: Options, base: Option<Source>) -> Self {
        let base = base.map(|mut s| {
            dsn::harden(&mut s.config, opts.connect_timeout);
            s
        });
        let server = base
            .as_ref()
            .map(|s| dsn::server_label(&s.config))
            .unwrap_or_default();
        let probes = Semaphore::new(opts.max_probes.max(1));
        let custom = opts.queries.iter().flat_map(|q| q.entries());
        let collectors = COLLECTORS
            .iter()
            .filter(|c| opts.collectors.iter().any(|name| *name == c.name))
            .chain(custom)
            .cloned()
            .collect();
        Self {
            opts,
            collectors,
            base,
            server,
            conns: tokio::sync::Mutex::new(HashMap::new()),
            last: tokio::sync::Mutex::new(None),
            stats: Mutex::new(Stats::default()),
            warned: Warned::default(),
            probes,
            side_off: AtomicBool::new(false),
            logins: Logins::default(),
            side_cache: Mutex::new(None),
        }
    }

    /// What is being watched, for the startup message.
    pub fn describe(&self) -> String {
        self.base
            .as_ref()
            .map(|s| dsn::describe(&s.config))
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
        let ok = match &self.base {
            Some(base) => self.collect_source(base, deadline, &mut out).await,
            None => true,
        };
        let elapsed = start.elapsed().as_secs_f64();
        let mut stats = lock(&self.stats);
        stats.scrapes += 1;
        stats.last_duration = elapsed;
        stats.last_error = !ok;
        self.exporter_families(&stats, &mut out);
        drop(stats);
        out.render(text);
    }

    /// Collects from the data source into `out`, with `pg_up`. True when
    /// every collector succeeded.
    async fn collect_source(
        &self,
        base: &Source,
        deadline: tokio::time::Instant,
        out: &mut Families,
    ) -> bool {
        let main_db = dsn::database(&base.config);
        let side_collectors = self.enabled(Scope::Side);
        // Recent enough results are reused: nothing to run for them.
        let reused = self.reusable_side_runs();
        // The side session is held while it is on, also between the
        // scrapes that reuse its results.
        let side_held = !side_collectors.is_empty() && !self.side_off.load(Ordering::Relaxed);
        let side = async {
            if !side_held || reused.is_some() {
                return SideRun::Unused;
            }
            self.run_side(base, &main_db, &side_collectors, deadline)
                .await
        };
        let main = async {
            let (session, version) = self
                .database_connection(base, &main_db, &main_db, deadline)
                .await
                .inspect_err(|e| self.warn_connect(&e.text, PG_UP_ZERO))?;
            let ctx = self.ctx(version);
            let runs = self
                .run_collectors(&session, &ctx, base, deadline, out)
                .await;
            Ok::<_, LoginFailure>((session, ctx, runs))
        };
        let (fresh, (side_run, main)) = self
            .logins
            .beside(
                base,
                self.opts.collection_timeout,
                deadline,
                &self.warned,
                async { tokio::join!(side, main) },
            )
            .await;
        let up = fresh.is_ok() && main.is_ok();
        // At a connection limit, the side session must not take the slots
        // the fresh login behind pg_up and the main session need: it is
        // given up for good.
        let at_limit = fresh
            .as_ref()
            .err()
            .is_some_and(LoginFailure::at_connection_limit)
            || main
                .as_ref()
                .err()
                .is_some_and(LoginFailure::at_connection_limit)
            || side_run.at_connection_limit();
        if side_held && at_limit {
            self.give_up_side_session(base, &main_db).await;
        }
        let ok = match main {
            Ok((session, ctx, mut runs)) => {
                let side_runs = match reused {
                    Some(runs) => runs,
                    None => {
                        let ran = match side_run {
                            SideRun::Ran(runs) => runs,
                            // No side session: run them on the main one after all.
                            SideRun::Unused | SideRun::NoSession(_) => {
                                if let SideRun::NoSession(e) = &side_run {
                                    if !e.at_connection_limit() {
                                        self.warn_connect(
                                            &e.text,
                                            "the database sizes are read on the main session until it can",
                                        );
                                    }
                                }
                                timed_all(&side_collectors, &session, &ctx, deadline).await
                            }
                        };
                        self.keep_side_runs(&ran);
                        ran
                    }
                };
                runs.extend(side_runs.into_iter().map(|r| (self.server.clone(), r)));
                self.record(runs, out).await
            }
            Err(_) => false,
        };
        add_up(out, &self.opts.prefix, up);
        ok
    }

    /// How sessions that run collectors are opened.
    fn collecting(&self) -> Purpose {
        Purpose::Collect {
            statement_timeout: self.opts.collection_timeout,
        }
    }

    fn ctx(&self, version: u32) -> Ctx {
        Ctx {
            prefix: self.opts.prefix.clone(),
            version,
            server: self.server.clone(),
            statements_limit: self.opts.statements_limit,
        }
    }

    fn warn_connect(&self, error: &str, then: &str) {
        login::warn_connect(&self.warned, error, then);
    }

    fn warn_once(&self, key: String, message: String) {
        login::warn_once(&self.warned, key, message);
    }

    /// Collects once from another server (`/probe?target=`, with the
    /// credentials and options of `auth_module` when given), on a connection
    /// opened for this request and closed after it.
    pub async fn probe(
        &self,
        target: &str,
        auth_module: Option<&str>,
    ) -> Result<String, ProbeError> {
        let module = match auth_module {
            Some(name) => Some(self.opts.auth_modules.get(name).ok_or_else(|| {
                ProbeError::UnknownModule {
                    name: name.to_string(),
                    known: self
                        .opts
                        .auth_modules
                        .names()
                        .into_iter()
                        .map(String::from)
                        .collect(),
                }
            })?),
            None => None,
        };
        let mut source = dsn::probe_target(target, module, self.base.as_ref())?;
        dsn::harden(&mut source.config, self.opts.connect_timeout);
        let _permit = tokio::time::timeout(self.opts.collection_timeout, self.probes.acquire())
            .await
            .map_err(|_| ProbeError::Busy)?
            .map_err(|_| ProbeError::Busy)?;
        let deadline = tokio::time::Instant::now() + self.opts.collection_timeout;
        let mut out = Families::new();
        let p = &self.opts.prefix;
        let up = match open(&source, deadline, self.collecting()).await {
            Ok(conn) => {
                let ctx = Ctx {
                    server: dsn::server_label(&source.config),
                    ..self.ctx(conn.version)
                };
                let all: Vec<&Collector> = self.collectors.iter().collect();
                for run in runs::timed_phased(&all, &conn.session, &ctx, deadline).await {
                    add_collector_result(
                        &mut out,
                        p,
                        &run.name,
                        Some(run.elapsed),
                        run.result.is_ok(),
                    );
                    out.merge(run.families);
                }
                let _ = timeout_at(
                    deadline,
                    collectors::static_info(&conn.session, &ctx, &mut out),
                )
                .await;
                true
            }
            Err(e) => {
                tracing::debug!("probe of {} failed: {e}", dsn::describe(&source.config));
                false
            }
        };
        add_up(&mut out, p, up);
        if let Some(queries) = &self.opts.queries {
            queries.add_load_status(&mut out, p);
        }
        let mut text = String::new();
        out.render(&mut text);
        Ok(text)
    }

    /// Closes the long-lived connections, and lets the last fresh one finish (at shutdown).
    pub async fn close(&self) {
        self.conns.lock().await.clear();
        self.logins.close(Duration::from_secs(1)).await;
    }
}
