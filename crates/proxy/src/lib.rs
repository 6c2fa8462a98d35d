//! `sidecar proxy`: a tracing HTTP proxy sidecar that replaces Envoy in the
//! seed's Jaeger demo.
//!
//! Data flow: each configured listener accepts connections, which start on
//! the HTTP/1.1 fast path (`fast`): the common request is parsed once,
//! checked and rewritten once by the shared HTTP rules (`rules`: route by
//! first matching prefix; the incoming trace context (W3C, B3,
//! `x-request-id`) read and ours, a new span whose parent is the caller's,
//! written in W3C and B3 form; hop-by-hop fields out, X-Forwarded-* in) and
//! sent with its body on a pooled plain upstream connection; the response
//! is checked by the same rules and copied back as it comes. Any other
//! request (h2c, upgrades, chunked or large bodies, refused heads, ...)
//! hands the connection, with the bytes read so far, to the general path on
//! hyper (`forward`), behind a guard (`guard`) that applies the same rules
//! to the raw heads hyper parses; it forwards over pooled HTTP/1.1 or one
//! h2c connection per upstream (`pool`). With `fast_path: false` every
//! connection takes the general path. When a response ends (or the client
//! goes away), the request's metrics are recorded and its span goes to a
//! bounded queue that `export` batches, on a thread of its own, to Zipkin
//! (JSON) and/or OTLP (protobuf) collectors.

#![forbid(unsafe_code)]

mod body;
pub mod config;
mod export;
mod fast;
mod forward;
mod guard;
mod h1;
mod metrics;
mod pool;
mod request;
mod rules;
mod span;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use config::Config;
pub use metrics::Metrics;

use crate::metrics::{ListenerLabels, RejectLabels};
use crate::request::{ListenerRt, RouteRt, Shared};

/// What the proxy did, for the exit message.
#[derive(Debug, Default, Clone, Copy)]
pub struct Summary {
    /// Connections still open when the drain timeout passed.
    pub drain_timed_out: bool,
}

/// Binds every listener of `cfg` (so a port conflict fails before anything runs).
pub async fn bind(cfg: &Config) -> std::io::Result<Vec<TcpListener>> {
    let mut bound = Vec::new();
    for l in &cfg.listeners {
        let listener = TcpListener::bind(l.listen).await.map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!(
                    "cannot listen on {} for listener `{}` ({e}); choose a free address",
                    l.listen, l.name
                ),
            )
        })?;
        bound.push(listener);
    }
    Ok(bound)
}

/// Serves the listeners until `shutdown` resolves; then stops accepting,
/// lets in-flight requests finish (up to the drain timeout) and flushes spans.
/// `listeners` are in the order of `cfg.listeners`.
pub async fn run(
    cfg: Arc<Config>,
    listeners: Vec<TcpListener>,
    metrics: Metrics,
    shutdown: impl Future<Output = ()>,
) -> Summary {
    let (spans, exporter, stop_export) = export::start(
        cfg.tracing.zipkin.clone(),
        cfg.tracing.otlp.clone(),
        metrics.clone(),
    );
    let shared = Arc::new(Shared {
        service: Arc::from(cfg.service.as_str()),
        sample_rate: cfg.tracing.sample_rate,
        timeouts: cfg.timeouts.clone(),
        metrics: metrics.clone(),
        spans,
    });
    let graceful = Arc::new(GracefulShutdown::new());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut accept_loops = Vec::new();
    for (l, listener) in cfg.listeners.iter().zip(listeners) {
        let rt = Arc::new(ListenerRt {
            name: l.name.clone(),
            direction: l.direction,
            generate_request_id: l.generate_request_id,
            port: listener
                .local_addr()
                .map(|a| a.port())
                .unwrap_or(l.listen.port()),
            unrouted: metrics::RouteStats::new(&metrics, &l.name, "none"),
            routes: l
                .routes
                .iter()
                .filter_map(|r| {
                    Some(RouteRt {
                        prefix: r.prefix.clone(),
                        upstream: Arc::from(r.upstream.as_str()),
                        authority: config::upstream_authority(&r.upstream).ok()?,
                        operation: r
                            .operation
                            .as_ref()
                            .map(|o| Arc::from(o.to_ascii_lowercase())),
                        http2: r.http2,
                        pool: Arc::new(pool::Pool::new(
                            &r.upstream,
                            cfg.timeouts.connect,
                            cfg.timeouts.idle,
                        )),
                        stats: metrics::RouteStats::new(&metrics, &l.name, &r.prefix),
                    })
                })
                .collect(),
        });
        accept_loops.push(tokio::spawn(accept_loop(
            listener,
            rt,
            Arc::clone(&shared),
            Arc::clone(&graceful),
            cfg.clone(),
            stop_rx.clone(),
        )));
    }
    drop(shared);

    shutdown.await;
    let _ = stop_tx.send(true);
    for task in accept_loops {
        let _ = task.await;
    }
    let mut summary = Summary::default();
    let graceful = Arc::try_unwrap(graceful).unwrap_or_else(|_| GracefulShutdown::new());
    if tokio::time::timeout(cfg.drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        summary.drain_timed_out = true;
        tracing::warn!(
            "drain timeout of {} passed with requests still in flight; closing them",
            sidecar_telemetry::duration::format(cfg.drain_timeout)
        );
    }
    let _ = stop_export.send(true);
    if tokio::time::timeout(Duration::from_secs(5), exporter)
        .await
        .is_err()
    {
        tracing::warn!("could not flush the last spans within 5s");
    }
    summary
}

async fn accept_loop(
    listener: TcpListener,
    rt: Arc<ListenerRt>,
    shared: Arc<Shared>,
    graceful: Arc<GracefulShutdown>,
    cfg: Arc<Config>,
    mut stop: watch::Receiver<bool>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(cfg.timeouts.header_read)
        .max_buf_size(cfg.max_header_bytes.max(8192))
        .half_close(true)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(cfg.max_header_bytes).unwrap_or(u32::MAX));
    let builder = Arc::new(builder);
    let labels = ListenerLabels {
        listener: rt.name.clone(),
    };
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.changed() => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!("listener {}: cannot accept a connection: {e}", rt.name);
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr().unwrap_or(peer);
        let active = shared
            .metrics
            .active_connections
            .get_or_create(&labels)
            .clone();
        active.inc();
        let rejected = shared.metrics.rejected.clone();
        let listener_name = rt.name.clone();
        let (shared, rt2) = (Arc::clone(&shared), Arc::clone(&rt));
        let builder = Arc::clone(&builder);
        // Taken now, so a drain waits for this connection whichever path serves it.
        let watcher = graceful.watcher();
        // The client's address as text, made once for both paths.
        let peer_ip: Arc<str> = Arc::from(peer.ip().to_string());
        let mut fast = fast::Conn {
            shared: Arc::clone(&shared),
            listener: Arc::clone(&rt2),
            peer_ip: Arc::clone(&peer_ip),
            local,
            max_head: cfg.max_header_bytes,
            stop: stop.clone(),
        };
        let max_head = cfg.max_header_bytes;
        let fast_path = cfg.fast_path;
        let stream_idle = cfg.timeouts.stream_idle;
        tokio::spawn(async move {
            let mut stream = stream;
            let read = if fast_path {
                let fast::Outcome::Handoff(read) = fast.serve(&mut stream).await else {
                    active.dec();
                    return;
                };
                read
            } else {
                bytes::BytesMut::new()
            };
            drop(fast);
            let (io, verdicts) = guard::Guarded::new(
                fast::Rewind::new(read.freeze(), stream),
                max_head,
                stream_idle,
            );
            let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                // One verdict per HTTP/1 request, in order (HTTP/2 has none).
                let verdict = (req.version() != hyper::Version::HTTP_2)
                    .then(|| verdicts.next())
                    .flatten();
                let fut = forward::handle(
                    Arc::clone(&shared),
                    Arc::clone(&rt2),
                    Arc::clone(&peer_ip),
                    local,
                    verdict,
                    req,
                );
                async move { Ok::<_, std::convert::Infallible>(fut.await) }
            });
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
            if let Err(e) = watcher.watch(conn.into_owned()).await {
                if let Some(reason) = rejection_reason(&*e) {
                    rejected
                        .get_or_create(&RejectLabels {
                            listener: listener_name,
                            reason: reason.to_string(),
                        })
                        .inc();
                } else {
                    tracing::debug!("connection from {peer} ended: {e}");
                }
            }
            active.dec();
        });
    }
}

/// Why hyper refused a connection's request, if it was the client's fault.
fn rejection_reason(e: &(dyn std::error::Error + 'static)) -> Option<&'static str> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            if h.is_parse_too_large() {
                return Some("header_too_large");
            }
            if h.is_parse() {
                return Some("malformed");
            }
        }
        source = err.source();
    }
    None
}
