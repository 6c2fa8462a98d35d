//! The admin endpoints every long-running subcommand serves: `/live`, `/ready`, `/metrics`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use prometheus_client::encoding::prometheus_text;
use prometheus_client::registry::Registry;

use crate::http::{self, Body, BoxFuture, Handler};

/// Readiness shared between a subcommand and its admin server.
///
/// Starts not ready; the subcommand calls [`Health::set_ready`] once it does
/// its job, and [`Health::set_draining`] when it starts shutting down, which
/// turns `/ready` to 503 so Kubernetes stops sending it traffic.
#[derive(Debug, Clone, Default)]
pub struct Health {
    inner: Arc<HealthInner>,
}

#[derive(Debug, Default)]
struct HealthInner {
    ready: AtomicBool,
    draining: AtomicBool,
}

impl Health {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn set_ready(&self, ready: bool) {
        self.inner.ready.store(ready, Ordering::SeqCst);
    }

    pub fn set_draining(&self) {
        self.inner.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::SeqCst) && !self.is_draining()
    }

    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::SeqCst)
    }
}

/// Encodes a registry in the Prometheus text format 0.0.4.
pub fn encode_metrics(registry: &Registry) -> String {
    let mut out = String::with_capacity(4096);
    // Writing into a String cannot fail; an Err here would be a bug in a collector.
    if let Err(e) = prometheus_text::encode(&mut out, registry) {
        tracing::error!("could not encode metrics: {e}");
    }
    out
}

/// The answer to `/live` (`/healthz`) and `/ready` (`/readyz`), `None` for
/// other paths. Servers that serve these beside their own endpoints (the
/// postgres exporter, on its one port) answer with it too.
pub fn health_answer(health: &Health, path: &str) -> Option<Response<Body>> {
    Some(match path {
        "/live" | "/healthz" => http::text(StatusCode::OK, "ok\n"),
        "/ready" | "/readyz" => {
            if health.is_ready() {
                http::text(StatusCode::OK, "ready\n")
            } else if health.is_draining() {
                http::text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            } else {
                http::text(StatusCode::SERVICE_UNAVAILABLE, "starting\n")
            }
        }
        _ => return None,
    })
}

/// The admin HTTP handler. Requests it does not know go to `fallback`, if any.
pub struct Admin {
    registry: Arc<Registry>,
    health: Health,
    fallback: Option<Arc<dyn Handler>>,
}

impl Admin {
    pub fn new(registry: Arc<Registry>, health: Health) -> Self {
        Self {
            registry,
            health,
            fallback: None,
        }
    }

    /// Routes requests for other paths to `fallback` (for example `/config`).
    pub fn with_fallback(mut self, fallback: Arc<dyn Handler>) -> Self {
        self.fallback = Some(fallback);
        self
    }

    fn answer(&self, method: &Method, path: &str) -> Option<Response<Body>> {
        if method != Method::GET && method != Method::HEAD {
            return None;
        }
        if let Some(resp) = health_answer(&self.health, path) {
            return Some(resp);
        }
        Some(match path {
            "/metrics" => http::response(
                StatusCode::OK,
                prometheus_text::CONTENT_TYPE,
                encode_metrics(&self.registry),
            ),
            _ => return None,
        })
    }
}

impl Handler for Admin {
    fn call(&self, req: Request<Incoming>) -> BoxFuture<Response<Body>> {
        if let Some(resp) = self.answer(req.method(), req.uri().path()) {
            return Box::pin(async move { resp });
        }
        match &self.fallback {
            Some(fallback) => fallback.call(req),
            None => Box::pin(async move {
                http::text(
                    StatusCode::NOT_FOUND,
                    "not found; this admin port serves /live, /ready and /metrics\n",
                )
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;

    #[test]
    fn metrics_are_prometheus_text_004() {
        let mut registry = Registry::default();
        let c: Counter = Counter::default();
        registry.register("sidecar_things", "Things seen", c.clone());
        c.inc_by(3);
        let admin = Admin::new(Arc::new(registry), Health::new());
        let resp = admin.answer(&Method::GET, "/metrics").unwrap();
        assert_eq!(
            resp.headers()[hyper::header::CONTENT_TYPE],
            "text/plain; version=0.0.4; charset=utf-8"
        );
        let text = encode_metrics(&admin.registry);
        assert!(
            text.contains("# TYPE sidecar_things_total counter\n"),
            "{text}"
        );
        assert!(text.contains("sidecar_things_total 3\n"), "{text}");
        assert!(!text.contains("# EOF"));
    }

    #[test]
    fn readiness_follows_health() {
        let health = Health::new();
        let admin = Admin::new(Arc::new(Registry::default()), health.clone());
        let status = |a: &Admin, p| a.answer(&Method::GET, p).unwrap().status();
        assert_eq!(status(&admin, "/live"), StatusCode::OK);
        assert_eq!(status(&admin, "/ready"), StatusCode::SERVICE_UNAVAILABLE);
        health.set_ready(true);
        assert_eq!(status(&admin, "/ready"), StatusCode::OK);
        health.set_draining();
        assert_eq!(status(&admin, "/ready"), StatusCode::SERVICE_UNAVAILABLE);
        assert!(admin.answer(&Method::POST, "/ready").is_none());
        assert!(admin.answer(&Method::GET, "/nope").is_none());
    }
}

/// Where the admin server listens, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminAddr {
    Off,
    At(std::net::SocketAddr),
}

impl std::str::FromStr for AdminAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim().eq_ignore_ascii_case("off") {
            return Ok(Self::Off);
        }
        crate::http::parse_listen_addr(s).map(Self::At)
    }
}

impl std::fmt::Display for AdminAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Off => f.write_str("off"),
            Self::At(a) => a.fmt(f),
        }
    }
}

/// A running admin server; [`AdminHandle::stop`] shuts it down.
pub struct AdminHandle {
    pub addr: std::net::SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

/// Binds `addr` and serves `admin` on it in a background task.
pub async fn start(addr: std::net::SocketAddr, admin: Admin) -> std::io::Result<AdminHandle> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!(
                "cannot listen on {addr} for the admin server ({e}); choose a free address with --admin, or `off`"
            ),
        )
    })?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(http::serve(listener, Arc::new(admin), async move {
        let _ = stopped.await;
    }));
    tracing::info!("admin server on http://{addr} (/live, /ready, /metrics)");
    Ok(AdminHandle { addr, stop, task })
}

impl AdminHandle {
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}
