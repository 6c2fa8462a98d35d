//! A request's state, whichever path serves it: the listener and route it
//! came through, its span (started by [`begin`]) and metrics (recorded when
//! the [`Pending`] ends, or is dropped because the client went away), and
//! the answers the proxy gives itself ([`Failure`], [`Reject`]).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::header::{self, HeaderValue};
use http::uri::Authority;
use http::{Response, StatusCode};
use sidecar_telemetry::trace::{self, Outgoing, TraceId};

use crate::body::{ProxyBody, full};
use crate::config::{Direction, Timeouts};
use crate::export::SpanSink;
use crate::metrics::{Metrics, RejectLabels, RouteLabels, RouteStats, method_index, method_name};
use crate::pool::Pool;
use crate::rules::Reject;
use crate::span::{HttpTags, Kind, Span, Text};

/// A route, ready to use.
#[derive(Debug)]
pub(crate) struct RouteRt {
    pub prefix: String,
    pub upstream: Arc<str>,
    pub authority: Authority,
    /// Lower-case span name, when configured.
    pub operation: Option<Arc<str>>,
    pub http2: bool,
    /// Connections to the upstream (HTTP/1.1 kept alive, or one h2c).
    pub pool: Arc<Pool>,
    pub stats: RouteStats,
}

/// A listener, ready to use.
#[derive(Debug)]
pub(crate) struct ListenerRt {
    pub name: String,
    pub direction: Direction,
    pub generate_request_id: bool,
    pub routes: Vec<RouteRt>,
    pub port: u16,
    /// Requests that matched no route.
    pub unrouted: RouteStats,
}

impl ListenerRt {
    /// The first route whose prefix the path starts with.
    pub(crate) fn route(&self, path: &str) -> Option<usize> {
        self.routes.iter().position(|r| path.starts_with(&r.prefix))
    }

    /// Counts a request refused before routing.
    pub(crate) fn count_rejected(&self, metrics: &Metrics, reason: &str) {
        metrics
            .rejected
            .get_or_create(&RejectLabels {
                listener: self.name.clone(),
                reason: reason.to_string(),
            })
            .inc();
    }
}

/// What every request needs.
pub(crate) struct Shared {
    pub service: Arc<str>,
    pub sample_rate: f64,
    pub timeouts: Timeouts,
    pub metrics: Metrics,
    pub spans: SpanSink,
}

pub(crate) fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// A short plain-text answer with an `x-sidecar-error` code.
pub(crate) fn error_response(
    status: StatusCode,
    code: &'static str,
    message: &str,
) -> Response<ProxyBody> {
    let mut resp = Response::new(full(format!("{message}\n")));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp.headers_mut()
        .insert("x-sidecar-error", HeaderValue::from_static(code));
    resp
}

/// The answer to a refused request: its status, code and message, and the
/// connection closes (what follows it cannot be trusted to be framed).
pub(crate) fn reject_response(reject: Reject) -> Response<ProxyBody> {
    let mut resp = error_response(
        StatusCode::from_u16(reject.status()).unwrap_or(StatusCode::BAD_REQUEST),
        reject.code(),
        reject.message(),
    );
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// Why the proxy answers a request itself, with the status, `x-sidecar-error`
/// code and body it answers with.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Failure {
    NoRoute,
    BadRequest,
    /// The client's body ended (its connection closed) before the length it declared.
    IncompleteRequest,
    UpstreamConnect,
    UpstreamTimeout,
    BadUpstreamResponse,
}

impl Failure {
    fn parts(self) -> (StatusCode, &'static str, &'static str) {
        match self {
            Failure::NoRoute => (StatusCode::NOT_FOUND, "no_route", "no route for this path"),
            Failure::BadRequest => (
                StatusCode::BAD_REQUEST,
                "bad_request",
                "the request path is not valid",
            ),
            Failure::IncompleteRequest => (
                StatusCode::BAD_REQUEST,
                "incomplete_request",
                "the request body ended before its declared length",
            ),
            Failure::UpstreamConnect => (
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream_connect_error",
                "cannot connect to the upstream",
            ),
            Failure::UpstreamTimeout => (
                StatusCode::GATEWAY_TIMEOUT,
                "upstream_timeout",
                "the upstream did not answer in time",
            ),
            Failure::BadUpstreamResponse => (
                StatusCode::BAD_GATEWAY,
                "bad_upstream_response",
                "the upstream sent no valid response",
            ),
        }
    }

    pub(crate) fn response(self) -> Response<ProxyBody> {
        let (status, code, message) = self.parts();
        error_response(status, code, message)
    }

    /// The same answer as raw HTTP/1.1 bytes (the fast path's form).
    pub(crate) fn raw(self, close: bool) -> Vec<u8> {
        let (status, code, message) = self.parts();
        format!(
            "HTTP/1.1 {} {}\r\ncontent-type: text/plain; charset=utf-8\r\nx-sidecar-error: {code}\r\ncontent-length: {}\r\n{}\r\n{message}\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
            message.len() + 1,
            if close { "connection: close\r\n" } else { "" },
        )
        .into_bytes()
    }
}

/// A gRPC call: what its outcome is read from.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Grpc {
    /// The call's deadline (`grpc-timeout`), to tell a deadline from a cancel.
    pub timeout: Option<Duration>,
    /// `grpc-status`, from the response head (trailers-only) or its trailers.
    pub status: Option<u8>,
}

impl Grpc {
    /// A call, if `content_type` is gRPC's.
    pub(crate) fn detect(content_type: Option<&[u8]>, timeout: Option<&[u8]>) -> Option<Self> {
        let ct = content_type?;
        let grpc = ct.len() >= 16 && ct[..16].eq_ignore_ascii_case(b"application/grpc");
        grpc.then(|| Grpc {
            timeout: timeout.and_then(parse_grpc_timeout),
            status: None,
        })
    }
}

/// `grpc-timeout`: up to 8 digits and a unit (H, M, S, m, u, n).
fn parse_grpc_timeout(v: &[u8]) -> Option<Duration> {
    let (unit, digits) = v.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The status a gRPC client gives a response without `grpc-status`
/// (grpc/doc/http-grpc-status-mapping.md).
fn grpc_status_of_http(status: u16) -> u8 {
    match status {
        400 => 13,             // INTERNAL
        401 => 16,             // UNAUTHENTICATED
        403 => 7,              // PERMISSION_DENIED
        404 => 12,             // UNIMPLEMENTED
        429 | 502..=504 => 14, // UNAVAILABLE
        _ => 2,                // UNKNOWN (a 200 without a status included)
    }
}

/// `grpc-status`: a decimal code.
pub(crate) fn parse_grpc_status(v: &[u8]) -> Option<u8> {
    std::str::from_utf8(v).ok()?.trim().parse().ok()
}

/// Everything needed to finish a request's span and metrics, whenever its
/// response ends. Dropped without [`Pending::finish`] (the client went
/// away, a future was cancelled), it still records the request, as cancelled.
pub(crate) struct Pending {
    shared: Arc<Shared>,
    listener: Arc<ListenerRt>,
    /// Index of the route in the listener (None: no route matched).
    route: Option<usize>,
    method: usize,
    started: Instant,
    span: Option<Span>,
    pub(crate) request_bytes: Arc<AtomicU64>,
    pub(crate) response_bytes: u64,
    pub(crate) status: u16,
    pub(crate) grpc: Option<Grpc>,
    done: bool,
}

impl Pending {
    /// Answers the request with `failure` and finishes its span and metrics.
    pub(crate) fn fail(self, failure: Failure) -> Response<ProxyBody> {
        self.settle(failure);
        failure.response()
    }

    /// Finishes the span and metrics of a request answered with `failure`.
    pub(crate) fn settle(mut self, failure: Failure) {
        if let (Failure::UpstreamConnect, Some(i)) = (failure, self.route) {
            self.shared
                .metrics
                .upstream_connect_errors
                .get_or_create(&RouteLabels {
                    listener: self.listener.name.clone(),
                    route: self.listener.routes[i].prefix.clone(),
                })
                .inc();
        }
        self.status = failure.parts().0.as_u16();
        self.finish();
    }

    /// The response ended: records the request.
    pub(crate) fn finish(mut self) {
        self.record(false);
    }

    /// Forgets the request without recording it: the general path serves it.
    pub(crate) fn discard(mut self) {
        self.done = true;
    }

    fn record(&mut self, cancelled: bool) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let elapsed = self.started.elapsed();
        let stats = match self.route {
            Some(i) => &self.listener.routes[i].stats,
            None => &self.listener.unrouted,
        };
        stats.record(self.method, self.status, elapsed.as_secs_f64());
        // A call the client cancelled has no status from the server: the
        // client sees CANCELLED, or DEADLINE_EXCEEDED once its deadline passed.
        let status = self.status;
        let grpc_status = self.grpc.map(|g| match g.status {
            Some(code) => code,
            None if cancelled && g.timeout.is_some_and(|t| elapsed >= t) => 4,
            None if cancelled => 1,
            None => grpc_status_of_http(status),
        });
        if let Some(code) = grpc_status {
            stats.record_grpc(code);
        }
        if let Some(mut span) = self.span.take() {
            span.duration_us = (elapsed.as_micros() as u64).max(1);
            span.error =
                self.status == 0 || self.status >= 500 || grpc_status.is_some_and(|c| c != 0);
            span.tags.status_code = self.status;
            span.tags.request_size = self.request_bytes.load(Ordering::Relaxed);
            span.tags.response_size = self.response_bytes;
            span.tags.grpc_status = grpc_status;
            span.tags.response_flags = cancelled.then_some("DC");
            self.shared.spans.send(span);
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.record(true);
    }
}

/// What a request's span is made of, whichever path parsed it.
pub(crate) struct RequestInfo<'a> {
    pub method: &'a str,
    pub host: &'a str,
    pub path_and_query: &'a str,
    pub protocol: &'static str,
    pub request_id: Option<&'a str>,
    /// The client's address as text (the fast path makes it once per connection).
    pub peer_ip: Arc<str>,
    pub local: SocketAddr,
}

/// Starts a request: decides sampling, makes our span (a child of the
/// caller's, or the root of a new trace) and the context to send on.
pub(crate) fn begin(
    shared: &Arc<Shared>,
    listener: &Arc<ListenerRt>,
    route_index: Option<usize>,
    incoming: Option<trace::Incoming>,
    info: RequestInfo<'_>,
    started: Instant,
    start_us: u64,
) -> (Outgoing, Pending) {
    let route = route_index.map(|i| &listener.routes[i]);
    let sampled = incoming
        .as_ref()
        .and_then(|c| c.sampled)
        .unwrap_or_else(|| fastrand::f64() < shared.sample_rate);
    let (trace_id, parent_id, tracestate) = match incoming {
        Some(c) => (c.trace_id, Some(c.span_id), c.tracestate),
        None => (TraceId::random(), None, None),
    };
    let outgoing = Outgoing {
        trace_id,
        span_id: trace::nonzero_random(),
        parent_id,
        sampled,
        tracestate,
    };
    let method = method_index(info.method);
    let span = (sampled && shared.spans.enabled()).then(|| {
        let name = match route.and_then(|r| r.operation.as_ref()) {
            Some(op) => Text::Shared(Arc::clone(op)),
            None => Text::Owned(info.host.to_ascii_lowercase()),
        };
        let mut url = String::with_capacity(7 + info.host.len() + info.path_and_query.len());
        url.push_str("http://");
        url.push_str(info.host);
        url.push_str(info.path_and_query);
        if url.len() > 256 {
            let mut end = 256;
            while !url.is_char_boundary(end) {
                end -= 1;
            }
            url.truncate(end);
        }
        let tags = HttpTags {
            method: match method_name(method) {
                Some(m) => Text::Static(m),
                None => Text::Owned(info.method.to_string()),
            },
            url,
            protocol: info.protocol,
            peer_address: Some(info.peer_ip),
            upstream_cluster: match route {
                Some(r) => Text::Shared(Arc::clone(&r.upstream)),
                None => Text::Static("-"),
            },
            request_id: info.request_id.map(str::to_string),
            ..HttpTags::default()
        };
        Span {
            trace_id: outgoing.trace_id,
            id: outgoing.span_id,
            parent_id: outgoing.parent_id,
            name,
            kind: match listener.direction {
                Direction::Inbound => Kind::Server,
                Direction::Outbound => Kind::Client,
            },
            start_us,
            duration_us: 0,
            service: Arc::clone(&shared.service),
            local_ip: Some(info.local.ip()).filter(|ip: &IpAddr| !ip.is_unspecified()),
            local_port: Some(listener.port),
            tags,
            error: false,
        }
    });
    let pending = Pending {
        shared: Arc::clone(shared),
        listener: Arc::clone(listener),
        route: route_index,
        method,
        started,
        span,
        request_bytes: Arc::new(AtomicU64::new(0)),
        response_bytes: 0,
        status: 0,
        grpc: None,
        done: false,
    };
    (outgoing, pending)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_calls_are_told_by_content_type_and_their_timeouts_read() {
        let g = Grpc::detect(Some(b"application/grpc+proto"), Some(b"250m")).unwrap();
        assert_eq!(g.timeout, Some(Duration::from_millis(250)));
        assert!(Grpc::detect(Some(b"Application/GRPC"), None).is_some());
        assert!(Grpc::detect(Some(b"application/json"), None).is_none());
        assert!(Grpc::detect(None, Some(b"1S")).is_none());
        for (v, d) in [
            (&b"1H"[..], Some(Duration::from_secs(3600))),
            (b"2M", Some(Duration::from_secs(120))),
            (b"99999999n", Some(Duration::from_nanos(99_999_999))),
            (b"123456789S", None),
            (b"5x", None),
            (b"S", None),
            (b"-1S", None),
        ] {
            assert_eq!(parse_grpc_timeout(v), d, "{:?}", String::from_utf8_lossy(v));
        }
        assert_eq!(parse_grpc_status(b"14"), Some(14));
        assert_eq!(parse_grpc_status(b"x"), None);
    }
}
