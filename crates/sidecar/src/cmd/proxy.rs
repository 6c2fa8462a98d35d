//! `sidecar proxy`: the tracing proxy sidecar.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::builder::FalseyValueParser;
use sidecar_proxy::config::{Direction, Listener, Route};
use sidecar_proxy::{Config, Metrics};
use sidecar_telemetry::admin::AdminAddr;
use sidecar_telemetry::duration;
use sidecar_telemetry::http::{self, Body, BoxFuture, Handler, parse_listen_addr};
use sidecar_telemetry::serve::{Runtime, Serve};

const EXAMPLES: &str = "\
Examples:
  # A sidecar beside service1: inbound 8000 -> app 8080, spans to Jaeger's Zipkin endpoint
  sidecar proxy --listen 0.0.0.0:8000 --upstream 127.0.0.1:8080 --service service1 \\
      --zipkin http://jaeger-collector:9411/api/v2/spans

  # A front proxy that starts each trace (new x-request-id when missing)
  sidecar proxy --listen 0.0.0.0:80 --upstream service1:8000 --service front-proxy \\
      --direction outbound --generate-request-id --zipkin http://jaeger-collector:9411/api/v2/spans

  # Several listeners and routes (inbound and outbound), from a file
  sidecar proxy --config /etc/sidecar/proxy.yaml

Config file (YAML; unknown keys are errors that name the line):
  service: service1
  tracing: {zipkin: http://jaeger-collector:9411/api/v2/spans, sample_rate: 1.0}
  listeners:
    - {name: inbound, listen: 0.0.0.0:8000, direction: inbound,
       routes: [{prefix: /, upstream: 127.0.0.1:8080, operation: checkAvailability}]}
    - {name: outbound, listen: 127.0.0.1:9000, direction: outbound,
       routes: [{prefix: /svc/2, upstream: service2:8000, http2: true, operation: checkStock}]}
  admin: 0.0.0.0:9901
  timeouts: {connect: 2s, request: 15s, header_read: 10s, idle: 60s, stream_idle: 5m}
  drain_timeout: 10s
  fast_path: true        # false (or --no-fast-path): every request on the general path";

/// Proxy HTTP traffic to or from a service and report a span per request.
///
/// Replaces Envoy in the seed's Jaeger demo: reads and writes W3C and B3
/// trace headers and x-request-id, reports spans to Zipkin (v2 JSON) and/or
/// OTLP/HTTP collectors without ever slowing requests, and serves request
/// metrics on the admin port. HTTP/1.1 and h2c on listeners; HTTP/1.1 or h2c
/// to upstreams; WebSocket upgrades pass through.
#[derive(Debug, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct ProxyArgs {
    /// YAML config file (listeners, routes, tracing, timeouts). Flags override it.
    #[arg(long, env = "SIDECAR_PROXY_CONFIG")]
    config: Option<PathBuf>,

    /// Single-route mode: address to listen on.
    #[arg(long, env = "SIDECAR_PROXY_LISTEN", value_parser = parse_listen_addr)]
    listen: Option<SocketAddr>,

    /// Single-route mode: where requests go (host:port).
    #[arg(long, env = "SIDECAR_PROXY_UPSTREAM")]
    upstream: Option<String>,

    /// Single-route mode: `inbound` (SERVER spans) or `outbound` (CLIENT spans).
    #[arg(long, env = "SIDECAR_PROXY_DIRECTION", value_enum)]
    direction: Option<DirectionArg>,

    /// Single-route mode: span name (else the Host header).
    #[arg(long, env = "SIDECAR_PROXY_OPERATION")]
    operation: Option<String>,

    /// Single-route mode: add x-request-id (and start a trace) when missing, as a front proxy does.
    #[arg(long, env = "SIDECAR_PROXY_GENERATE_REQUEST_ID", value_parser = FalseyValueParser::new())]
    generate_request_id: bool,

    /// Single-route mode: talk h2c (HTTP/2 without TLS) to the upstream.
    #[arg(long, env = "SIDECAR_PROXY_HTTP2_UPSTREAM", value_parser = FalseyValueParser::new())]
    http2_upstream: bool,

    /// Service name in spans.
    #[arg(long, env = "SIDECAR_PROXY_SERVICE")]
    service: Option<String>,

    /// Zipkin v2 collector URL (e.g. http://jaeger-collector:9411/api/v2/spans).
    #[arg(long, env = "SIDECAR_PROXY_ZIPKIN")]
    zipkin: Option<String>,

    /// OTLP/HTTP collector URL (e.g. http://jaeger-collector:4318/v1/traces).
    #[arg(long, env = "SIDECAR_PROXY_OTLP")]
    otlp: Option<String>,

    /// Fraction (0 to 1) of new traces sampled; an incoming decision always wins.
    #[arg(long, env = "SIDECAR_PROXY_SAMPLE_RATE")]
    sample_rate: Option<f64>,

    /// Admin server address (/live, /ready, /metrics, /config), or `off`. Default 0.0.0.0:9901.
    #[arg(long, env = "SIDECAR_PROXY_ADMIN")]
    admin: Option<AdminAddr>,

    /// On SIGTERM, wait this long at most for in-flight requests. Default 10s.
    #[arg(long, env = "SIDECAR_PROXY_DRAIN_TIMEOUT", value_parser = duration::parse)]
    drain_timeout: Option<Duration>,

    /// Threads serving requests (default: the CPUs this process may use); the span exporter has one more.
    #[arg(long, env = "SIDECAR_PROXY_WORKERS")]
    workers: Option<usize>,

    /// Serve every request on the general (hyper) path: a safety valve should the
    /// HTTP/1.1 fast path ever misbehave. Same rules, more CPU per request.
    #[arg(long, env = "SIDECAR_PROXY_NO_FAST_PATH", value_parser = FalseyValueParser::new())]
    no_fast_path: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum DirectionArg {
    Inbound,
    Outbound,
}

impl ProxyArgs {
    fn config(&self) -> anyhow::Result<Config> {
        let mut cfg = match &self.config {
            Some(path) => Config::from_file(&path.display().to_string())?,
            None => Config::default(),
        };
        if let Some(s) = &self.service {
            cfg.service = s.clone();
        }
        if let Some(z) = &self.zipkin {
            cfg.tracing.zipkin = Some(z.clone());
        }
        if let Some(o) = &self.otlp {
            cfg.tracing.otlp = Some(o.clone());
        }
        if let Some(r) = self.sample_rate {
            cfg.tracing.sample_rate = r;
        }
        if let Some(a) = self.admin {
            cfg.admin = a.to_string();
        }
        if let Some(d) = self.drain_timeout {
            cfg.drain_timeout = d;
        }
        if self.no_fast_path {
            cfg.fast_path = false;
        }
        match (self.listen, &self.upstream) {
            (Some(listen), Some(upstream)) => {
                if !cfg.listeners.is_empty() {
                    anyhow::bail!(
                        "the config file already defines listeners; drop --listen/--upstream or the file's `listeners:`"
                    );
                }
                let direction = match self.direction {
                    Some(DirectionArg::Outbound) => Direction::Outbound,
                    _ => Direction::Inbound,
                };
                cfg.listeners.push(Listener {
                    name: match direction {
                        Direction::Inbound => "inbound".into(),
                        Direction::Outbound => "outbound".into(),
                    },
                    listen,
                    direction,
                    generate_request_id: self.generate_request_id,
                    routes: vec![Route {
                        prefix: "/".into(),
                        upstream: upstream.clone(),
                        operation: self.operation.clone(),
                        http2: self.http2_upstream,
                    }],
                });
            }
            (None, None) => {}
            _ => anyhow::bail!(
                "give both --listen and --upstream for a single route, or use --config"
            ),
        }
        cfg.validate()?;
        Ok(cfg)
    }
}

/// Serves `/config`: the effective configuration as YAML.
struct ConfigEndpoint(String);

impl Handler for ConfigEndpoint {
    fn call(&self, req: hyper::Request<hyper::body::Incoming>) -> BoxFuture<hyper::Response<Body>> {
        let resp = if req.uri().path() == "/config" {
            http::response(
                hyper::StatusCode::OK,
                "application/yaml; charset=utf-8",
                self.0.clone(),
            )
        } else {
            http::text(
                hyper::StatusCode::NOT_FOUND,
                "not found; this admin port serves /live, /ready, /metrics and /config\n",
            )
        };
        Box::pin(async move { resp })
    }
}

pub fn run(args: ProxyArgs) -> anyhow::Result<ExitCode> {
    let cfg = Arc::new(args.config()?);
    let admin: AdminAddr = cfg
        .admin
        .parse()
        .map_err(|e: String| anyhow::anyhow!("admin address in the config: {e}"))?;
    let workers = args
        .workers
        .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
        .unwrap_or(1)
        .max(1);
    let yaml = serde_norway::to_string(&*cfg).unwrap_or_default();
    let summary = Serve::new(Runtime::with_workers(workers))
        .admin(admin)
        .admin_fallback(Arc::new(ConfigEndpoint(yaml)))
        .run(
            // Listeners are bound first: a port conflict fails before anything runs.
            async |registry| -> anyhow::Result<_> {
                let listeners = sidecar_proxy::bind(&cfg).await?;
                Ok((listeners, Metrics::register(registry)))
            },
            async |(listeners, metrics), app| {
                for (l, bound) in cfg.listeners.iter().zip(&listeners) {
                    let addr = bound.local_addr()?;
                    for r in &l.routes {
                        tracing::info!(
                            "listener {} on http://{addr}: {}* -> {}{} ({:?})",
                            l.name,
                            r.prefix,
                            r.upstream,
                            if r.http2 { " (h2c)" } else { "" },
                            l.direction
                        );
                    }
                }
                app.health.set_ready(true);
                let shutdown = async move {
                    let sig = app.shutdown.await;
                    tracing::info!("{sig} received; finishing in-flight requests");
                };
                Ok(sidecar_proxy::run(Arc::clone(&cfg), listeners, metrics, shutdown).await)
            },
        )?;
    tracing::info!(
        "stopped{}",
        if summary.drain_timed_out {
            " (drain timed out)"
        } else {
            ""
        }
    );
    Ok(ExitCode::SUCCESS)
}
