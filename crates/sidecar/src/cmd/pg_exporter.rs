//! `sidecar postgres-exporter`: PostgreSQL metrics for Prometheus.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Arg, ArgAction, ArgMatches, Args, FromArgMatches};
use sidecar_pg_exporter::auth::{AuthModules, DEFAULT_FILE};
use sidecar_pg_exporter::collectors::COLLECTORS;
use sidecar_pg_exporter::collectors::custom::Queries;
use sidecar_pg_exporter::dsn::SourceVars;
use sidecar_pg_exporter::server::Endpoints;
use sidecar_pg_exporter::{Exporter, Options};
use sidecar_telemetry::duration;
use sidecar_telemetry::http::parse_listen_addr;
use sidecar_telemetry::ports;
use sidecar_telemetry::serve::{Runtime, Serve};

const EXAMPLES: &str = "\
Where the database is (postgres_exporter's variables; each also as <NAME>_FILE):
  DATA_SOURCE_NAME   libpq URI or key=value: postgresql://user:pass@host:5432/db?sslmode=disable
  DATA_SOURCE_URI    host[:port][/db][?params], with
  DATA_SOURCE_USER   and DATA_SOURCE_PASS (any characters; never URL-parsed)

Examples:
  # The seed's Pod spec, unchanged:
  DATA_SOURCE_URI='localhost?sslmode=disable' DATA_SOURCE_USER=postgres \\
  DATA_SOURCE_PASS=secret sidecar postgres-exporter

  # Per-table metrics of every database, and the top 20 statements:
  sidecar postgres-exporter --auto-discover-databases --collector.stat_statements \\
      --collector.stat_statements.limit 20

The role needs pg_monitor (GRANT pg_monitor TO <role>); the exporter warns if it is missing.";

/// Export PostgreSQL metrics for Prometheus (a drop-in for postgres_exporter).
///
/// Serves `pg_*` metrics with postgres_exporter's names and labels on
/// --web.listen-address (:9187) at --web.telemetry-path (/metrics), plus
/// /probe?target=, /, /live and /ready. One long-lived read-only connection
/// per database; every scrape is bounded by --collection-timeout; a database
/// that is down gives `pg_up 0` at once instead of a hanging scrape.
#[derive(Debug, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct PgExporterArgs {
    /// Address to listen on for metrics.
    #[arg(long = "web.listen-address", visible_alias = "admin", default_value = format!(":{}", ports::POSTGRES_EXPORTER), env = "PG_EXPORTER_WEB_LISTEN_ADDRESS", value_parser = parse_listen_addr)]
    listen: SocketAddr,

    /// Path under which to expose metrics.
    #[arg(
        long = "web.telemetry-path",
        default_value = "/metrics",
        env = "PG_EXPORTER_WEB_TELEMETRY_PATH"
    )]
    telemetry_path: String,

    /// Longest a scrape (all its queries) may take; each statement also gets this as its statement_timeout.
    #[arg(long = "collection-timeout", default_value = "10s", value_parser = duration::parse, env = "PG_EXPORTER_COLLECTION_TIMEOUT")]
    collection_timeout: Duration,

    /// Longest wait to open a connection (a lower connect_timeout in the DSN wins).
    #[arg(long = "connect-timeout", default_value = "5s", value_parser = duration::parse, env = "PG_EXPORTER_CONNECT_TIMEOUT")]
    connect_timeout: Duration,

    /// Prefix of metric names (`pg_...`).
    #[arg(
        long = "metric-prefix",
        default_value = "pg",
        env = "PG_EXPORTER_METRIC_PREFIX"
    )]
    metric_prefix: String,

    /// Collect the per-database families (tables) of every database, each series labelled with datname.
    #[arg(long = "auto-discover-databases", env = "PG_EXPORTER_AUTO_DISCOVER_DATABASES", value_parser = clap::builder::FalseyValueParser::new())]
    auto_discover: bool,

    /// With --auto-discover-databases: only these databases (comma-separated).
    #[arg(
        long = "include-databases",
        value_delimiter = ',',
        env = "PG_EXPORTER_INCLUDE_DATABASES"
    )]
    include_databases: Vec<String>,

    /// With --auto-discover-databases: not these databases (comma-separated).
    #[arg(
        long = "exclude-databases",
        value_delimiter = ',',
        env = "PG_EXPORTER_EXCLUDE_DATABASES"
    )]
    exclude_databases: Vec<String>,

    /// Statements kept by the stat_statements collector (the top ones by total time).
    #[arg(long = "collector.stat_statements.limit", default_value_t = 100)]
    statements_limit: u32,

    /// How often the database collector reads database sizes (and connection limits) again; scrapes in between reuse the last values. Reading the sizes stats every file of every database, the costliest query of a scrape. 0s reads them on every scrape.
    #[arg(long = "collector.database.interval", default_value = "60s", value_parser = duration::parse, env = "PG_EXPORTER_COLLECTOR_DATABASE_INTERVAL")]
    database_interval: Duration,

    /// YAML file of custom queries, in postgres_exporter's queries.yaml format (each namespace also reports as a collector); a file that does not load stops the exporter at start.
    #[arg(long = "extend.query-path", env = "PG_EXPORTER_EXTEND_QUERY_PATH")]
    query_path: Option<PathBuf>,
    /// postgres_exporter's configuration file: auth modules (credentials and libpq options) for /probe?target=...&auth_module=NAME. Default: postgres_exporter.yml in the working directory, if there is one.
    #[arg(long = "config.file", env = "PG_EXPORTER_CONFIG_FILE")]
    config_file: Option<PathBuf>,

    #[command(flatten)]
    collectors: CollectorFlags,
}

/// `--collector.<name>` / `--no-collector.<name>` for every collector.
#[derive(Debug, Clone, Default)]
pub struct CollectorFlags {
    enabled: Vec<&'static str>,
}

impl FromArgMatches for CollectorFlags {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let mut enabled = Vec::new();
        for c in COLLECTORS {
            let on = m.get_flag(&format!("collector.{}", c.name));
            let off = m.get_flag(&format!("no-collector.{}", c.name));
            if on || (c.default_on && !off) {
                enabled.push(c.name.as_ref());
            }
        }
        Ok(Self { enabled })
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

impl Args for CollectorFlags {
    fn augment_args(mut cmd: clap::Command) -> clap::Command {
        for c in COLLECTORS {
            let on = format!("collector.{}", c.name);
            let off = format!("no-collector.{}", c.name);
            let state = if c.default_on { "on" } else { "off" };
            cmd = cmd
                .arg(
                    Arg::new(on.clone())
                        .long(on.clone())
                        .action(ArgAction::SetTrue)
                        .overrides_with(off.clone())
                        .help(format!(
                            "Enable the {} collector: {} (default {state})",
                            c.name, c.about
                        ))
                        .help_heading("Collectors"),
                )
                .arg(
                    Arg::new(off.clone())
                        .long(off)
                        .action(ArgAction::SetTrue)
                        .overrides_with(on)
                        .hide(true),
                );
        }
        cmd
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

pub fn run(args: PgExporterArgs) -> anyhow::Result<ExitCode> {
    let vars = SourceVars::from_env(|k| std::env::var(k).ok())?;
    let base = if vars.is_empty() {
        tracing::warn!(
            "neither DATA_SOURCE_NAME nor DATA_SOURCE_URI is set: only /probe?target= can collect"
        );
        None
    } else {
        Some(vars.source()?)
    };
    let config_file = match &args.config_file {
        Some(path) => AuthModules::load(path, true)?,
        None => AuthModules::load(std::path::Path::new(DEFAULT_FILE), false)?,
    };
    let config_loaded = config_file.is_some().then(std::time::SystemTime::now);
    let auth_modules = config_file.unwrap_or_default();
    if !auth_modules.is_empty() {
        tracing::info!(
            "auth modules for /probe: {}",
            auth_modules.names().join(", ")
        );
    }
    if !args.telemetry_path.starts_with('/') {
        anyhow::bail!("--web.telemetry-path must start with '/', like /metrics");
    }
    // An empty path is no file, as upstream reads it.
    let queries = match args.query_path.filter(|p| !p.as_os_str().is_empty()) {
        Some(path) => {
            let queries = Queries::load(&path, &args.metric_prefix, &args.collectors.enabled)?;
            tracing::info!(
                "custom queries from {}: {} namespaces",
                path.display(),
                queries.entries().len()
            );
            Some(queries)
        }
        None => None,
    };
    let opts = Options {
        collection_timeout: args.collection_timeout,
        connect_timeout: args.connect_timeout,
        collectors: args.collectors.enabled,
        prefix: args.metric_prefix,
        auto_discover: args.auto_discover,
        include_databases: args.include_databases,
        exclude_databases: args.exclude_databases,
        statements_limit: args.statements_limit,
        database_interval: args.database_interval,
        queries,
        auth_modules,
        config_loaded,
        ..Options::default()
    };
    let listen = args.listen;
    let telemetry_path = args.telemetry_path;
    // No admin server: the exporter serves /live and /ready beside its metrics.
    Serve::new(Runtime::CurrentThread).run(
        async |_registry| -> anyhow::Result<_> {
            tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| {
                    format!(
                        "cannot listen on {listen} (--web.listen-address); choose a free address"
                    )
                })
        },
        async |listener, app| {
            let exporter = Arc::new(Exporter::new(opts, base));
            let endpoints = Endpoints {
                exporter: Arc::clone(&exporter),
                registry: app.registry,
                health: app.health.clone(),
                telemetry_path: telemetry_path.clone(),
            };
            tracing::info!(
                "serving PostgreSQL metrics of {} on http://{}{}",
                exporter.describe(),
                listener.local_addr()?,
                telemetry_path
            );
            app.health.set_ready(true);
            let shutdown = async move {
                let sig = app.shutdown.await;
                tracing::info!("{sig} received; stopping");
            };
            sidecar_telemetry::http::serve(listener, Arc::new(endpoints), shutdown).await;
            exporter.close().await;
            Ok(())
        },
    )?;
    Ok(ExitCode::SUCCESS)
}
