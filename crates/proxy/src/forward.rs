//! The general path, on hyper: any request the fast path leaves (h2c,
//! upgrades, chunked or large bodies, `Expect`, HTTP/1.0, odd heads), and
//! every request when the fast path is off. The same rules as the fast path
//! ([`rules`]) accept the request and decide its fields; bodies stream both
//! ways; the span and metrics end with the response body ([`Tracked`]).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::Scheme;
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use sidecar_telemetry::trace::{self, Outgoing};
use tokio::time::Sleep;

use crate::body::{BoxError, ProxyBody, full};
use crate::guard::Verdict;
use crate::pool::Pool;
use crate::request::{
    Failure, Grpc, ListenerRt, Pending, RequestInfo, RouteRt, Shared, begin, now_us,
    parse_grpc_status, reject_response,
};
use crate::rules::{self, Ours, Reject, Sink, TraceSource};

/// A body that counts its bytes (requests), or (responses) reads a gRPC
/// call's status from its trailers and finishes the request's span and
/// metrics at its end, then gives its upstream connection back to the pool.
pub(crate) struct Tracked<B> {
    inner: B,
    counter: Option<Arc<AtomicU64>>,
    /// Set when a request body fails (the client's connection ended early).
    failed: Option<Arc<AtomicBool>>,
    pending: Option<Pending>,
    conn: Option<(Arc<Pool>, SendRequest<ProxyBody>)>,
    /// The body is at its end (its reader may drop it without polling on).
    ended: bool,
    /// No frame for this long: the body fails (the stream idle timeout).
    idle: Duration,
    /// Armed while a frame is awaited.
    stall: Option<Pin<Box<Sleep>>>,
}

impl<B: Body> Tracked<B> {
    /// A request body whose bytes are added to `counter`; `failed` is set
    /// if it fails.
    fn counting(
        inner: B,
        counter: Arc<AtomicU64>,
        failed: Arc<AtomicBool>,
        idle: Duration,
    ) -> Self {
        Self {
            ended: inner.is_end_stream(),
            inner,
            counter: Some(counter),
            failed: Some(failed),
            pending: None,
            conn: None,
            idle,
            stall: None,
        }
    }

    /// A response body that finishes `pending` at its end and then returns
    /// `conn` to its pool.
    fn ending(
        inner: B,
        pending: Pending,
        conn: Option<(Arc<Pool>, SendRequest<ProxyBody>)>,
        idle: Duration,
    ) -> Self {
        Self {
            ended: inner.is_end_stream(),
            inner,
            counter: None,
            failed: None,
            pending: Some(pending),
            conn,
            idle,
            stall: None,
        }
    }
}

impl<B> Tracked<B> {
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
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if polled.is_ready() {
            this.stall = None;
        }
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    if let Some(c) = &this.counter {
                        c.fetch_add(n, Ordering::Relaxed);
                    }
                    if let Some(p) = &mut this.pending {
                        p.response_bytes += n;
                    }
                } else if let (Some(trailers), Some(p)) = (frame.trailers_ref(), &mut this.pending)
                {
                    note_grpc_status(p, trailers);
                }
                // The last frame of a sized body: the reader may stop here
                // without polling for the end.
                if this.inner.is_end_stream() {
                    this.ended = true;
                    this.release();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                if let Some(f) = &this.failed {
                    f.store(true, Ordering::Relaxed);
                }
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
            Poll::Pending => {
                // Armed at the first wait after a frame, checked on each wait.
                let idle = this.idle;
                let stall = this
                    .stall
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                if stall.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.stall = None;
                let error: BoxError =
                    format!("no body bytes for the stream idle timeout ({idle:?})").into();
                if let Some(f) = &this.failed {
                    f.store(true, Ordering::Relaxed);
                }
                if let Some(p) = this.pending.take() {
                    p.finish();
                }
                Poll::Ready(Some(Err(error)))
            }
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
        // with it (`self.conn` is dropped, not returned), and the client
        // went away first (the request is recorded as cancelled when its
        // `Pending` drops here). A body at its end (HEAD, 204, the last
        // frame of a sized body) may be dropped unpolled: it is complete.
        if let (Some(p), true) = (self.pending.take(), self.ended) {
            p.finish();
        }
    }
}

/// Records `grpc-status` from a response head (trailers-only) or trailers.
fn note_grpc_status(pending: &mut Pending, fields: &HeaderMap) {
    if let (Some(g), Some(v)) = (pending.grpc.as_mut(), fields.get("grpc-status")) {
        g.status = parse_grpc_status(v.as_bytes());
    }
}

/// A rewritten head as hyper's `HeaderMap`.
#[derive(Default)]
struct MapSink(HeaderMap);

impl Sink for MapSink {
    fn keep(&mut self, name: &str, value: &[u8]) {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(value),
        ) {
            self.0.append(n, v);
        }
    }

    fn add_with(&mut self, name: &'static str, value: impl FnOnce(&mut Vec<u8>)) {
        let mut v = Vec::new();
        value(&mut v);
        if let Ok(v) = HeaderValue::from_bytes(&v) {
            self.0.append(HeaderName::from_static(name), v);
        }
    }

    fn trace(&mut self, ctx: &Outgoing) {
        trace::outgoing_headers(ctx, |name, value| {
            if let Ok(v) = HeaderValue::from_str(value) {
                self.0.append(HeaderName::from_static(name), v);
            }
        });
    }
}

/// Handles one request received on `listener` from the client at `peer_ip`
/// (accepted on `local`). `verdict` is the guard's on an HTTP/1 request
/// (None: it had none, or the request is HTTP/2).
pub(crate) async fn handle(
    shared: Arc<Shared>,
    listener: Arc<ListenerRt>,
    peer_ip: Arc<str>,
    local: SocketAddr,
    verdict: Option<Verdict>,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let started = Instant::now();
    let start_us = now_us();
    let version = match req.version() {
        Version::HTTP_2 => rules::Version::Http2,
        Version::HTTP_11 => rules::Version::Http11,
        _ => rules::Version::Http10,
    };
    // HTTP/1: the guard's verdict on the raw head; without one, refused.
    if version != rules::Version::Http2 {
        match verdict {
            Some(Ok(())) => {}
            Some(Err(reject)) => return refuse(&shared, &listener, reject),
            None => return refuse(&shared, &listener, Reject::Unverified),
        }
    }
    let authority = req.uri().authority().map(|a| a.as_str());
    let facts = match rules::analyze_request(version, authority, req.headers()) {
        Ok(f) => f,
        Err(reject) => return refuse(&shared, &listener, reject),
    };
    let path_and_query = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .filter(|p| p.starts_with('/'))
        .unwrap_or("/")
        .to_string();
    let route_index = listener.route(req.uri().path());
    let route = route_index.map(|i| &listener.routes[i]);

    // Trace context: honour what came in, start a trace otherwise.
    let incoming = facts
        .traced
        .then(|| trace::extract(&TraceSource(req.headers())).map(|(c, _)| c))
        .flatten();
    let generated =
        (listener.generate_request_id && facts.request_id.is_none()).then(trace::new_request_id);
    let host = facts.host.unwrap_or_default().to_string();
    let (outgoing, mut pending) = begin(
        &shared,
        &listener,
        route_index,
        incoming,
        RequestInfo {
            method: req.method().as_str(),
            host: &host,
            path_and_query: &path_and_query,
            protocol: match version {
                rules::Version::Http2 => "HTTP/2",
                rules::Version::Http10 => "HTTP/1.0",
                rules::Version::Http11 => "HTTP/1.1",
            },
            request_id: facts.request_id.or(generated.as_deref()),
            peer_ip: Arc::clone(&peer_ip),
            local,
        },
        started,
        start_us,
    );
    pending.grpc = Grpc::detect(
        req.headers()
            .get(header::CONTENT_TYPE)
            .map(HeaderValue::as_bytes),
        req.headers().get("grpc-timeout").map(HeaderValue::as_bytes),
    );
    let Some(route) = route else {
        return pending.fail(Failure::NoRoute);
    };
    // Upgrades take a dedicated HTTP/1.1 connection, whatever the route speaks.
    let http2 = route.http2 && !facts.upgrade;
    let ours = Ours {
        trace: &outgoing,
        generated_id: generated.as_deref(),
        peer_ip: &peer_ip,
        http2_upstream: http2,
        default_host: route.authority.as_str(),
    };
    let mut sink = MapSink::default();
    rules::write_request(req.headers(), &facts, &ours, &mut sink);
    let upstream_host = rules::upstream_host(&facts, &ours).to_string();
    let upgrade = facts.upgrade;
    let head_request = req.method() == http::Method::HEAD;
    let client_version = req.version();

    // HTTP/1.1 upstreams get the origin form; HTTP/2 ones `:authority`
    // equal to what Host would be (RFC 9113 §8.3.1).
    let uri = if http2 {
        Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(upstream_host.as_str())
            .path_and_query(path_and_query.as_str())
            .build()
            .or_else(|_| {
                Uri::builder()
                    .scheme(Scheme::HTTP)
                    .authority(route.authority.clone())
                    .path_and_query(path_and_query.as_str())
                    .build()
            })
    } else {
        path_and_query.parse::<Uri>().map_err(http::Error::from)
    };
    let Ok(uri) = uri else {
        return pending.fail(Failure::BadRequest);
    };
    let (mut parts, body) = req.into_parts();
    parts.uri = uri;
    parts.headers = sink.0;
    parts.version = if http2 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    let request_bytes = Arc::clone(&pending.request_bytes);
    let body_failed = Arc::new(AtomicBool::new(false));
    let body = Tracked::counting(
        body,
        request_bytes,
        Arc::clone(&body_failed),
        shared.timeouts.stream_idle,
    );
    let upstream_req = Request::from_parts(parts, body.boxed());
    if upgrade {
        return self::upgrade(shared, route, upstream_req, pending).await;
    }
    let sent = tokio::time::timeout(shared.timeouts.request, async {
        if http2 {
            let mut sender = route
                .pool
                .h2()
                .await
                .map_err(|e| UpstreamError::Connect(e.to_string()))?;
            let resp = sender
                .send_request(upstream_req)
                .await
                .map_err(|e| UpstreamError::Response(e.to_string()))?;
            Ok((resp, None))
        } else {
            send_pooled(&route.pool, upstream_req).await
        }
    })
    .await;
    let (resp, sender) = match sent {
        Err(_) => return pending.fail(Failure::UpstreamTimeout),
        Ok(Err(UpstreamError::Connect(e))) => {
            tracing::debug!("cannot connect to upstream {}: {e}", route.upstream);
            return pending.fail(Failure::UpstreamConnect);
        }
        // The client's body ended early: its fault, not the upstream's.
        Ok(Err(UpstreamError::Response(_))) if body_failed.load(Ordering::Relaxed) => {
            return pending.fail(Failure::IncompleteRequest);
        }
        Ok(Err(UpstreamError::Response(e))) => {
            tracing::debug!("bad response from upstream {}: {e}", route.upstream);
            return pending.fail(Failure::BadUpstreamResponse);
        }
        Ok(Ok(sent)) => sent,
    };
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        tracing::debug!(
            "upstream {} switched protocols unasked; refused",
            route.upstream
        );
        return pending.fail(Failure::BadUpstreamResponse);
    }
    respond(
        route,
        shared.timeouts.stream_idle,
        client_version,
        head_request,
        resp,
        sender,
        pending,
    )
}

/// Answers a request the rules refuse (and counts it).
fn refuse(shared: &Shared, listener: &ListenerRt, reject: Reject) -> Response<ProxyBody> {
    listener.count_rejected(&shared.metrics, reject.reason());
    reject_response(reject)
}

/// The client's response from the upstream's: checked and rewritten by the
/// rules, its body tracked to its end.
fn respond(
    route: &RouteRt,
    stream_idle: Duration,
    client_version: Version,
    head_request: bool,
    resp: Response<Incoming>,
    sender: Option<SendRequest<ProxyBody>>,
    mut pending: Pending,
) -> Response<ProxyBody> {
    let (mut parts, body) = resp.into_parts();
    let status = parts.status.as_u16();
    let facts =
        match rules::analyze_response(status, parts.version == Version::HTTP_10, &parts.headers) {
            Ok(f) => f,
            Err(e) => {
                // The connection goes with the response (`sender` dropped).
                tracing::debug!("bad response from upstream {}: {e}", route.upstream);
                return pending.fail(Failure::BadUpstreamResponse);
            }
        };
    let mut sink = MapSink::default();
    rules::write_response(status, &parts.headers, &facts, &mut sink);
    note_grpc_status(&mut pending, &parts.headers);
    let close_delimited = parts.version < Version::HTTP_2
        && rules::response_body(parts.status.as_u16(), head_request, &facts)
            == rules::ResponseBody::UntilClose;
    if close_delimited {
        sink.add("connection", b"close");
    }
    parts.headers = sink.0;
    // The client's protocol, whatever the upstream's (hyper writes it).
    let upstream_http11 = parts.version == Version::HTTP_11;
    parts.version = client_version;
    pending.status = parts.status.as_u16();
    // An upstream that answered in HTTP/1.0 gets no other request on this
    // connection: hyper would send it HTTP/1.0 requests, dropping chunked
    // bodies. A body known to be complete (HEAD, 204, empty) may be
    // dropped unread: its connection can serve another request already.
    let sender = sender.filter(|_| upstream_http11);
    let sender = match sender {
        Some(s) if body.is_end_stream() => {
            route.pool.checkin(s);
            None
        }
        other => other,
    };
    let body = Tracked::ending(
        body,
        pending,
        sender.map(|s| (Arc::clone(&route.pool), s)),
        stream_idle,
    );
    Response::from_parts(parts, body.boxed())
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

/// Upgrades (WebSocket): a dedicated HTTP/1.1 connection to the upstream;
/// on `101 Switching Protocols` both sides are joined byte for byte.
async fn upgrade(
    shared: Arc<Shared>,
    route: &RouteRt,
    mut req: Request<ProxyBody>,
    mut pending: Pending,
) -> Response<ProxyBody> {
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
    let mut resp =
        match tokio::time::timeout(shared.timeouts.request, sender.send_request(req)).await {
            Ok(Ok(resp)) => resp,
            Ok(Err(_)) => return pending.fail(Failure::BadUpstreamResponse),
            Err(_) => return pending.fail(Failure::UpstreamTimeout),
        };
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        return respond(
            route,
            shared.timeouts.stream_idle,
            Version::HTTP_11,
            false,
            resp,
            None,
            pending,
        );
    }
    pending.status = 101;
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
    Response::from_parts(parts, full(Bytes::new()))
}
