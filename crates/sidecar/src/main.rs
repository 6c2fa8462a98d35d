//! The `sidecar` binary: parses the command line and wires the capability crates.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;

const EXAMPLES: &str = "\
Examples:
  sidecar demo                          # see the sidecars work on this machine
  sidecar logs /logs/app.log            # relay a log file to stdout, through rotation
  sidecar logs --prefix '/logs/*.log'   # several files, lines prefixed with the file name
  DATA_SOURCE_URI='localhost?sslmode=disable' DATA_SOURCE_USER=postgres DATA_SOURCE_PASS=secret \
      sidecar postgres-exporter         # pg_* metrics on :9187/metrics
  sidecar proxy --listen 0.0.0.0:8000 --upstream 127.0.0.1:8080 --service service1 \
      --zipkin http://jaeger-collector:9411/api/v2/spans   # a tracing sidecar
  kubectl apply -f <(sidecar inject -f app.yaml)   # add sidecars to annotated workloads
  sidecar injector                      # the same as an admission webhook (deploy/injector/)

Every option can also be set with an environment variable, shown in each subcommand's --help.";

/// Logs, metrics and traces for any Kubernetes Pod, from one sidecar binary.
///
/// Run it as a sidecar container next to an unmodified application:
/// `logs` relays log files to stdout so `kubectl logs` and the node's log
/// collector see them; `postgres-exporter` serves PostgreSQL metrics for
/// Prometheus; `proxy` traces every request to or from a service and reports
/// spans to Jaeger/Zipkin or an OTLP collector.
#[derive(Debug, Parser)]
#[command(name = "sidecar", version, after_help = EXAMPLES)]
struct Cli {
    /// How much the sidecar itself logs to stderr: error, warn, info, debug, trace
    /// (or a tracing filter such as `info,sidecar_logs=debug`).
    #[arg(
        long,
        alias = "log.level",
        env = "SIDECAR_LOG",
        default_value = "info",
        global = true
    )]
    log_level: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Logs(cmd::logs::LogsArgs),
    PostgresExporter(cmd::pg_exporter::PgExporterArgs),
    Proxy(cmd::proxy::ProxyArgs),
    Inject(cmd::inject::InjectArgs),
    Injector(cmd::injector::InjectorArgs),
    Demo(cmd::demo::DemoArgs),
    /// The demo's log-writing app (started by `sidecar demo`).
    #[command(hide = true)]
    DemoApp(cmd::demo::DemoAppArgs),
    /// The demo's web service (started by `sidecar demo` and the tests).
    #[command(hide = true)]
    DemoService(cmd::demo::DemoServiceArgs),
}

/// musl's own allocator is slow for many small allocations (CPU per
/// scrape and per proxied request up by a third or more, measured); the
/// musl build, which the image ships, uses mimalloc instead.
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log_level);
    let result = match cli.command {
        Command::Logs(args) => cmd::logs::run(args),
        Command::PostgresExporter(args) => cmd::pg_exporter::run(args),
        Command::Proxy(args) => cmd::proxy::run(args),
        Command::Inject(args) => cmd::inject::run(args),
        Command::Injector(args) => cmd::injector::run(args),
        Command::Demo(args) => cmd::demo::run(args),
        Command::DemoApp(args) => cmd::demo::run_app(args),
        Command::DemoService(args) => cmd::demo::run_service(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("sidecar: {}", describe(&err));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, leaving out causes the message already quotes.
fn describe(err: &anyhow::Error) -> String {
    let mut text = err.to_string();
    for cause in err.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

fn init_logging(filter: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|e| {
        eprintln!("sidecar: --log-level `{filter}` is not a valid filter ({e}); using `info`");
        EnvFilter::new("info")
    });
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(filter)
        .with_target(false)
        .init();
}
