//! One request through the proxy: route, trace headers, hop-by-hop headers,
//! streaming bodies both ways, upgrades, errors, and the span at the end.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, Scheme};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use sidecar_telemetry::trace::{self, Outgoing, TraceId};

use crate::config::{Direction, Timeouts};
use crate::export::SpanSink;
use crate::metrics::{Metrics, RejectLabels, RouteLabels, RouteStats, method_index, method_name};
use crate::pool::Pool;
use crate::span::{HttpTags, Kind, Span, Text};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type ProxyBody = BoxBody<Bytes, BoxError>;
pub type HttpClient = Client<HttpConnector, ProxyBody>;

/// A route, ready to use.
#[derive(Debug)]
pub struct RouteRt {
    pub prefix: String,
    pub upstream: Arc<str>,
    pub authority: Authority,
    /// Lower-case span name, when configured.
    pub operation: Option<Arc<str>>,
    pub http2: bool,
    /// Keep-alive HTTP/1.1 connections to the upstream.
    pub pool: Arc<Pool>,
    pub stats: RouteStats,
}

/// A listener, ready to use.
#[derive(Debug)]
pub struct ListenerRt {
    pub name: String,
    pub direction: Direction,
    pub generate_request_id: bool,
    pub routes: Vec<RouteRt>,
    pub port: u16,
    /// Requests that matched no route.
    pub unrouted: RouteStats,
}

/// What every request needs.
pub struct Shared {
    pub service: Arc<str>,
    pub sample_rate: f64,
    pub timeouts: Timeouts,
    pub h2: HttpClient,
    pub metrics: Metrics,
    pub spans: SpanSink,
}

/// Headers that belong to one connection (RFC 9110 §7.6.1), not to the message.
pub(crate) const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
];

/// Removes hop-by-hop headers, including those the Connection header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

pub(crate) fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// A short plain-text error with `x-sidecar-error`.
pub fn error_response(
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

pub fn full(body: impl Into<Bytes>) -> ProxyBody {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed()
}

/// Why the proxy answers a request itself, with the status, `x-sidecar-error`
/// code and body it answers with.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Failure {
    NoRoute,
    BadRequest,
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

    fn response(self) -> Response<ProxyBody> {
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

/// Everything needed to finish a request's span and metrics, whenever its
/// response body ends (or the client goes away).
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
}

impl Pending {
    /// Answers the request with `failure` and finishes its span and metrics.
    fn fail(self, failure: Failure) -> Response<ProxyBody> {
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

    pub(crate) fn finish(mut self) {
        let elapsed = self.started.elapsed();
        let stats = match self.route {
            Some(i) => &self.listener.routes[i].stats,
            None => &self.listener.unrouted,
        };
        stats.record(self.method, self.status, elapsed.as_secs_f64());
        if let Some(mut span) = self.span.take() {
            span.duration_us = (elapsed.as_micros() as u64).max(1);
            span.error = self.status == 0 || self.status >= 500;
            span.tags.status_code = self.status;
            span.tags.request_size = self.request_bytes.load(Ordering::Relaxed);
            span.tags.response_size = self.response_bytes;
            self.shared.spans.send(span);
        }
    }
}

/// A body that counts its bytes (requests) or finishes the span at its end
/// (responses), and then gives its upstream connection back to the pool.
struct Tracked<B> {
    inner: B,
    counter: Option<Arc<AtomicU64>>,
    pending: Option<Pending>,
    conn: Option<(Arc<Pool>, SendRequest<ProxyBody>)>,
}

impl<B> Tracked<B> {
    fn new(inner: B) -> Self {
        Self {
            inner,
            counter: None,
            pending: None,
            conn: None,
        }
    }

    /// The response was read to its end: the connection can serve another.
    fn release(&mut self) {
        if let Some((pool, sender)) = self.conn.take() {
            pool.checkin(sender);
        }
    }
}

impl<B> Body for Tracked<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    if let Some(c) = &this.counter {
                        c.fetch_add(n, Ordering::Relaxed);
                    }
                    if let Some(p) = &mut this.pending {
                        p.response_bytes += n;
                    }
                }
                // The last frame of a sized body: the reader may stop here
                // without polling for the end.
                if this.inner.is_end_stream() {
                    this.release();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                if let Some(p) = this.pending.take() {
                    p.finish();
                }
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                this.release();
                if let Some(p) = this.pending.take() {
                    p.finish();
                }
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for Tracked<B> {
    fn drop(&mut self) {
        // Dropped before its end: the connection is mid-response and goes
        // with it (`self.conn` is dropped, not returned).
        // The client went away before the end of the body: still account for the request.
        if let Some(p) = self.pending.take() {
            p.finish();
        }
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
    };
    (outgoing, pending)
}

/// Handles one request received on `listener` from the client at `peer_ip`
/// (accepted on `local`).
pub async fn handle(
    shared: Arc<Shared>,
    listener: Arc<ListenerRt>,
    peer_ip: Arc<str>,
    local: SocketAddr,
    ambiguous: bool,
    mut req: Request<Incoming>,
) -> Response<ProxyBody> {
    let started = Instant::now();
    let start_us = now_us();
    // Request smuggling: a body length given two ways (see `guard`) is
    // refused, and the connection closed, whatever the upstream would make of it.
    if ambiguous {
        shared
            .metrics
            .rejected
            .get_or_create(&RejectLabels {
                listener: listener.name.clone(),
                reason: "malformed".into(),
            })
            .inc();
        let mut resp = error_response(
            StatusCode::BAD_REQUEST,
            "malformed_request",
            "a request may not carry both Content-Length and Transfer-Encoding",
        );
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return resp;
    }
    let path_and_query = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let route_index = listener
        .routes
        .iter()
        .position(|r| req.uri().path().starts_with(&r.prefix));
    let route = route_index.map(|i| &listener.routes[i]);

    // Trace context: honour what came in, start a trace otherwise.
    let incoming = trace::extract(req.headers()).map(|(c, _)| c);
    if listener.generate_request_id && !req.headers().contains_key("x-request-id") {
        if let Ok(v) = HeaderValue::from_str(&trace::new_request_id()) {
            req.headers_mut().insert("x-request-id", v);
        }
    }
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let (outgoing, pending) = begin(
        &shared,
        &listener,
        route_index,
        incoming,
        RequestInfo {
            method: req.method().as_str(),
            host: &host,
            path_and_query: &path_and_query,
            protocol: match req.version() {
                Version::HTTP_2 => "HTTP/2",
                Version::HTTP_10 => "HTTP/1.0",
                _ => "HTTP/1.1",
            },
            request_id: req
                .headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok()),
            peer_ip: Arc::clone(&peer_ip),
            local,
        },
        started,
        start_us,
    );
    trace::inject(req.headers_mut(), &outgoing);
    let request_bytes = Arc::clone(&pending.request_bytes);

    let Some(route) = route else {
        return pending.fail(Failure::NoRoute);
    };
    let mut pending = pending;

    if is_upgrade(req.headers()) {
        return upgrade(shared, route, req, pending).await;
    }

    // Hop-by-hop headers stay on this hop; Host is kept; X-Forwarded-* added.
    strip_hop_by_hop(req.headers_mut());
    append_forwarded_for(req.headers_mut(), &peer_ip);
    if !req.headers().contains_key("x-forwarded-proto") {
        req.headers_mut()
            .insert("x-forwarded-proto", HeaderValue::from_static("http"));
    }
    if !req.headers().contains_key(header::HOST) {
        if let Ok(v) = HeaderValue::from_str(&host) {
            req.headers_mut().insert(header::HOST, v);
        }
    }
    let uri = Uri::builder()
        .scheme(Scheme::HTTP)
        .authority(route.authority.clone())
        .path_and_query(path_and_query.as_str())
        .build();
    let Ok(uri) = uri else {
        return pending.fail(Failure::BadRequest);
    };
    let (mut parts, body) = req.into_parts();
    parts.uri = uri;
    parts.version = if route.http2 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    let body = Tracked {
        inner: body,
        counter: Some(request_bytes),
        pending: None,
        conn: None,
    }
    .boxed();
    let upstream_req = Request::from_parts(parts, body);
    let sent = if route.http2 {
        tokio::time::timeout(shared.timeouts.request, async {
            shared.h2.request(upstream_req).await.map_err(|e| {
                if e.is_connect() {
                    UpstreamError::Connect(e.to_string())
                } else {
                    UpstreamError::Response(e.to_string())
                }
            })
        })
        .await
        .map(|r| r.map(|resp| (resp, None)))
    } else {
        tokio::time::timeout(
            shared.timeouts.request,
            send_pooled(&route.pool, upstream_req),
        )
        .await
    };

    match sent {
        Err(_) => pending.fail(Failure::UpstreamTimeout),
        Ok(Err(UpstreamError::Connect(e))) => {
            tracing::debug!("cannot connect to upstream {}: {e}", route.upstream);
            pending.fail(Failure::UpstreamConnect)
        }
        Ok(Err(UpstreamError::Response(e))) => {
            tracing::debug!("bad response from upstream {}: {e}", route.upstream);
            pending.fail(Failure::BadUpstreamResponse)
        }
        Ok(Ok((resp, sender))) => {
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            pending.status = parts.status.as_u16();
            // A body known to be complete (HEAD, 204, empty) may be dropped
            // unread: its connection can serve another request already.
            let sender = match sender {
                Some(s) if body.is_end_stream() => {
                    route.pool.checkin(s);
                    None
                }
                other => other,
            };
            let body = Tracked {
                inner: body,
                counter: None,
                pending: Some(pending),
                conn: sender.map(|s| (Arc::clone(&route.pool), s)),
            }
            .boxed();
            Response::from_parts(parts, body)
        }
    }
}

/// Why a request got no response from its upstream.
enum UpstreamError {
    /// No connection (503).
    Connect(String),
    /// The connection failed or the answer was not HTTP (502).
    Response(String),
}

/// Sends `req` on a pooled HTTP/1.1 connection; returns the response and the
/// connection, to go back to the pool once the response body is read. A
/// request that an idle connection could not take (the upstream closed it
/// meanwhile) is sent once more on another.
async fn send_pooled(
    pool: &Pool,
    req: Request<ProxyBody>,
) -> Result<(Response<Incoming>, Option<SendRequest<ProxyBody>>), UpstreamError> {
    let mut sender = pool
        .checkout()
        .await
        .map_err(|e| UpstreamError::Connect(e.to_string()))?;
    match sender.try_send_request(req).await {
        Ok(resp) => Ok((resp, Some(sender))),
        Err(mut e) => {
            let Some(req) = e.take_message() else {
                return Err(UpstreamError::Response(e.into_error().to_string()));
            };
            drop(sender);
            let mut sender = pool
                .checkout()
                .await
                .map_err(|e| UpstreamError::Connect(e.to_string()))?;
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| UpstreamError::Response(e.to_string()))?;
            Ok((resp, Some(sender)))
        }
    }
}

fn append_forwarded_for(headers: &mut HeaderMap, ip: &str) {
    let value = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.trim().is_empty() => format!("{prev}, {ip}"),
        _ => ip.to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert("x-forwarded-for", v);
    }
}

/// Upgrades (WebSocket): a dedicated HTTP/1.1 connection to the upstream;
/// on `101 Switching Protocols` both sides are joined byte for byte.
async fn upgrade(
    shared: Arc<Shared>,
    route: &RouteRt,
    mut req: Request<Incoming>,
    mut pending: Pending,
) -> Response<ProxyBody> {
    let upgrade_value = req.headers().get(header::UPGRADE).cloned();
    strip_hop_by_hop(req.headers_mut());
    if let Some(v) = upgrade_value {
        req.headers_mut().insert(header::UPGRADE, v);
        req.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    let client_side = hyper::upgrade::on(&mut req);
    let stream = match route.pool.open_stream().await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!("{e}");
            return pending.fail(Failure::UpstreamConnect);
        }
    };
    let Ok((mut sender, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
    else {
        return pending.fail(Failure::BadUpstreamResponse);
    };
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!("upgraded upstream connection ended: {e}");
        }
    });
    let (mut parts, body) = req.into_parts();
    parts.version = Version::HTTP_11;
    parts.uri = parts
        .uri
        .path_and_query()
        .and_then(|p| p.as_str().parse().ok())
        .unwrap_or_else(|| Uri::from_static("/"));
    let body = Tracked::new(body).boxed();
    let mut resp = match tokio::time::timeout(
        shared.timeouts.request,
        sender.send_request(Request::from_parts(parts, body)),
    )
    .await
    {
        Ok(Ok(resp)) => resp,
        Ok(Err(_)) => {
            return pending.fail(Failure::BadUpstreamResponse);
        }
        Err(_) => {
            return pending.fail(Failure::UpstreamTimeout);
        }
    };
    pending.status = resp.status().as_u16();
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let upstream_side = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            match tokio::try_join!(client_side, upstream_side) {
                Ok((client, upstream)) => {
                    let mut client = TokioIo::new(client);
                    let mut upstream = TokioIo::new(upstream);
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                }
                Err(e) => tracing::debug!("upgrade failed: {e}"),
            }
            pending.finish();
        });
        let (parts, _) = resp.into_parts();
        return Response::from_parts(parts, full(Bytes::new()));
    }
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let body = Tracked {
        inner: body,
        counter: None,
        pending: Some(pending),
        conn: None,
    }
    .boxed();
    Response::from_parts(parts, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_removed_including_named_ones() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("x-keep", HeaderValue::from_static("yes"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert_eq!(h["x-keep"], "yes");
    }

    #[test]
    fn upgrade_detection_and_forwarded_for() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        assert!(is_upgrade(&h));
        h.remove("upgrade");
        assert!(!is_upgrade(&h));
        append_forwarded_for(&mut h, "10.0.0.1");
        append_forwarded_for(&mut h, "10.0.0.2");
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 10.0.0.2");
    }
}
