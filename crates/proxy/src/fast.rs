//! The HTTP/1.1 fast path.
//!
//! The common request (HTTP/1.1, a Host, no body or a small one of known
//! length, a route to an HTTP/1.1 upstream) is proxied straight between the
//! two sockets: its head is parsed once (httparse), rewritten once (hop-by-hop
//! headers out; trace context, X-Forwarded-* in) and written to a pooled
//! upstream connection together with its body; the response head is parsed
//! and rewritten the same way and its body copied back as it comes, framed by
//! its Content-Length, chunked encoding or the end of the connection. No task,
//! channel or body object is made per request, which is what makes the proxy
//! as cheap per request as nginx.
//!
//! Anything else (h2c, upgrades, `Expect`, chunked or large request bodies,
//! HTTP/1.0, malformed or oversized heads, paths no route takes) is handed,
//! with the bytes read so far, to the general path (`forward::handle` on
//! hyper) for the rest of the connection, so the fast path never has to get
//! an unusual request right.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use sidecar_telemetry::trace::{self, HeaderSource};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Instant as TokioInstant, Sleep};

use crate::forward::{self, Failure, HOP_BY_HOP, ListenerRt, Pending, RequestInfo, Shared};

/// Largest request body the fast path takes: it is read whole before the
/// request goes upstream, so the request can be sent again on a new
/// connection if a pooled one turns out closed.
const MAX_FAST_BODY: u64 = 64 * 1024;
/// Most headers in a head the fast path parses (more: the general path).
const MAX_HEADERS: usize = 64;
/// Most `Connection`-named headers the fast path strips (more: the general path).
const MAX_NAMED: usize = 8;
/// Size of one read of a response body.
const READ_CHUNK: usize = 64 * 1024;
/// Usual sizes of a connection's buffers (client bytes, upstream bytes,
/// rewritten heads); larger ones shrink back after the message that grew them.
const CLIENT_BUF: usize = 8 * 1024;
const UPSTREAM_BUF: usize = 16 * 1024;
const HEAD_BUF: usize = 1024;

/// How a connection left the fast path.
pub(crate) enum Outcome {
    /// It is done: closed by either side, timed out, or drained.
    Closed,
    /// The general path serves the rest; these bytes were read and not used.
    Handoff(BytesMut),
}

/// One client connection on the fast path.
pub(crate) struct Conn {
    pub shared: Arc<Shared>,
    pub listener: Arc<ListenerRt>,
    /// The client's address as text, for X-Forwarded-For and spans.
    pub peer_ip: Arc<str>,
    pub local: SocketAddr,
    /// Largest request or response head (then the general path answers 431).
    pub max_head: usize,
    /// Turns true when the proxy drains: finish the request in flight, then close.
    pub stop: watch::Receiver<bool>,
}

/// A request the fast path takes, ready to go upstream.
struct Plan {
    /// Head plus body length in the client buffer.
    len: usize,
    body_len: usize,
    route: usize,
    /// The client asked to close after this response.
    close: bool,
    /// A HEAD request: the response has no body whatever its headers say.
    head_method: bool,
    /// Safe to send twice (RFC 9110 §9.2.2): GET, HEAD, OPTIONS, TRACE, PUT, DELETE.
    idempotent: bool,
    pending: Pending,
}

/// How a response body ends.
enum Framing {
    /// No body (HEAD, 1xx, 204, 304).
    Empty,
    Length(u64),
    Chunked(ChunkedEnd),
    /// At the end of the connection.
    UntilClose,
}

/// A response head, rewritten into the client's buffer.
struct ResponseHead {
    status: u16,
    len: usize,
    framing: Framing,
    /// The upstream may keep the connection for another request.
    reusable: bool,
}

/// Why no response head came.
enum HeadError {
    /// The connection ended (or failed) before a single byte of it.
    Closed,
    /// Something came that is not a usable response.
    Bad(String),
}

impl Conn {
    /// Serves requests until the connection ends or one needs the general path.
    pub(crate) async fn serve(&mut self, client: &mut TcpStream) -> Outcome {
        let mut buf = BytesMut::with_capacity(CLIENT_BUF);
        let mut rbuf = BytesMut::with_capacity(UPSTREAM_BUF);
        let mut out = Vec::with_capacity(HEAD_BUF);
        let mut resp = Vec::with_capacity(HEAD_BUF);
        let mut deadline = Deadline::new(TokioInstant::now() + self.shared.timeouts.header_read);
        // Waits for the drain; made once, so an idle wait does not register
        // (and unregister) a waiter on the channel for every request. Once it
        // has resolved the connection ends, so it is never polled again.
        let mut stop = self.stop.clone();
        let mut draining = std::pin::pin!(async move {
            let _ = stop.changed().await;
        });
        let mut first = true;
        loop {
            let plan = match self
                .read_head(
                    client,
                    &mut buf,
                    &mut out,
                    first,
                    &mut deadline,
                    draining.as_mut(),
                )
                .await
            {
                Ok(Some(plan)) => plan,
                Ok(None) => return Outcome::Closed,
                Err(()) => return Outcome::Handoff(buf),
            };
            first = false;
            // The body, read whole (it is small).
            if buf.len() < plan.len {
                deadline.set(TokioInstant::now() + self.shared.timeouts.idle);
            }
            while buf.len() < plan.len {
                if !read_more(client, &mut buf, &mut deadline).await {
                    plan.pending.finish(); // the client went away mid-body
                    return Outcome::Closed;
                }
            }
            out.extend_from_slice(&buf[plan.len - plan.body_len..plan.len]);
            buf.advance(plan.len);
            plan.pending
                .request_bytes
                .store(plan.body_len as u64, Ordering::Relaxed);
            if !self
                .exchange(client, plan, &out, &mut resp, &mut rbuf, &mut deadline)
                .await
            {
                return Outcome::Closed;
            }
            // Keep-alive connections may idle for long: buffers a large
            // message grew go back to their usual size.
            if buf.is_empty() && buf.capacity() > 2 * CLIENT_BUF {
                buf = BytesMut::with_capacity(CLIENT_BUF);
            }
            if rbuf.capacity() > 2 * UPSTREAM_BUF {
                rbuf = BytesMut::with_capacity(UPSTREAM_BUF);
            }
            for v in [&mut out, &mut resp] {
                if v.capacity() > 64 * HEAD_BUF {
                    *v = Vec::with_capacity(HEAD_BUF);
                }
            }
        }
    }

    /// Waits for a complete request head in `buf` and plans it (see
    /// [`Conn::plan`]): Ok(None) when the connection should end (closed, idle
    /// or header-read timeout, drain), Err when the request is not for the
    /// fast path (too large, not parsable, or not the common case).
    async fn read_head(
        &mut self,
        client: &mut TcpStream,
        buf: &mut BytesMut,
        out: &mut Vec<u8>,
        first: bool,
        deadline: &mut Deadline,
        draining: Pin<&mut impl Future<Output = ()>>,
    ) -> Result<Option<Plan>, ()> {
        let timeouts = &self.shared.timeouts;
        if buf.is_empty() {
            if *self.stop.borrow() {
                return Ok(None);
            }
            // Keep-alive: wait up to the idle timeout for the next request
            // (the first one: the header-read timeout, set at accept).
            if !first {
                deadline.set(TokioInstant::now() + timeouts.idle);
            }
            let read = tokio::select! {
                read = read_more(client, buf, deadline) => read,
                () = draining => false,
            };
            if !read {
                return Ok(None);
            }
        }
        let mut started = first;
        loop {
            // Parsed once: a complete head is planned from this very parse.
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(buf) {
                Ok(httparse::Status::Complete(len)) => {
                    return self.plan(&req, &buf[..len], out).map(Some).ok_or(());
                }
                Ok(httparse::Status::Partial) if buf.len() < self.max_head => {}
                _ => return Err(()),
            }
            // A head in pieces: all of it within the header-read timeout.
            if !started {
                deadline.set(TokioInstant::now() + timeouts.header_read);
                started = true;
            }
            if !read_more(client, buf, deadline).await {
                return Ok(None);
            }
        }
    }

    /// Decides whether the parsed head `req` (the bytes `head`) is for the
    /// fast path; if so, starts its span and writes the upstream head into `out`.
    fn plan(
        &self,
        req: &httparse::Request<'_, '_>,
        head: &[u8],
        out: &mut Vec<u8>,
    ) -> Option<Plan> {
        let (method, path) = (req.method?, req.path?);
        if req.version != Some(1) || !path.starts_with('/') || method == "CONNECT" {
            return None;
        }
        let path_only = path.split('?').next().unwrap_or(path);
        let listener = &self.listener;
        let route_index = listener
            .routes
            .iter()
            .position(|r| path_only.starts_with(&r.prefix))?;
        let route = &listener.routes[route_index];
        if route.http2 {
            return None;
        }

        let mut content_length: Option<u64> = None;
        let mut host: Option<&str> = None;
        let mut request_id: Option<&str> = None;
        let mut has_proto = false;
        let mut close = false;
        let mut named: [&str; MAX_NAMED] = [""; MAX_NAMED];
        let mut n_named = 0;
        for h in req.headers.iter() {
            let name = h.name;
            if name.eq_ignore_ascii_case("content-length") {
                if content_length.is_some() {
                    return None;
                }
                content_length = Some(parse_length(h.value)?);
            } else if name.eq_ignore_ascii_case("transfer-encoding")
                || name.eq_ignore_ascii_case("expect")
                || name.eq_ignore_ascii_case("upgrade")
            {
                return None;
            } else if name.eq_ignore_ascii_case("host") {
                if host.is_some() {
                    return None;
                }
                host = Some(std::str::from_utf8(h.value).ok()?);
            } else if name.eq_ignore_ascii_case("connection") {
                for token in std::str::from_utf8(h.value).ok()?.split(',') {
                    let token = token.trim();
                    if token.eq_ignore_ascii_case("close") {
                        close = true;
                    } else if token.eq_ignore_ascii_case("upgrade") {
                        return None;
                    } else if !token.is_empty() && !token.eq_ignore_ascii_case("keep-alive") {
                        *named.get_mut(n_named)? = token;
                        n_named += 1;
                    }
                }
            } else if name.eq_ignore_ascii_case("x-request-id") && request_id.is_none() {
                request_id = std::str::from_utf8(h.value).ok().map(str::trim);
            } else if name.eq_ignore_ascii_case("x-forwarded-proto") {
                has_proto = true;
            }
        }
        let host = host?;
        let body_len = content_length.unwrap_or(0);
        if body_len > MAX_FAST_BODY {
            return None;
        }
        let named = &named[..n_named];

        let incoming = trace::extract(&RawHeaders(req.headers)).map(|(c, _)| c);
        let generated =
            (listener.generate_request_id && request_id.is_none()).then(trace::new_request_id);
        let (outgoing, pending) = forward::begin(
            &self.shared,
            listener,
            Some(route_index),
            incoming,
            RequestInfo {
                method,
                host,
                path_and_query: path,
                protocol: "HTTP/1.1",
                request_id: request_id.or(generated.as_deref()),
                peer_ip: Arc::clone(&self.peer_ip),
                local: self.local,
            },
            Instant::now(),
            forward::now_us(),
        );

        // The upstream head: Host kept, hop-by-hop headers dropped, our
        // trace context and X-Forwarded-* added.
        out.clear();
        let mut lines = Lines::new(head);
        match request_line(method, path, head) {
            // It goes on as it came (with the header lines after it, in one run).
            Some(line) => lines.run = line,
            None => {
                out.extend_from_slice(method.as_bytes());
                out.push(b' ');
                out.extend_from_slice(path.as_bytes());
                out.extend_from_slice(b" HTTP/1.1\r\n");
            }
        }
        let mut forwarded_for = Vec::new();
        for h in req.headers.iter() {
            let name = h.name;
            if name.eq_ignore_ascii_case("x-forwarded-for") {
                let prev = String::from_utf8_lossy(h.value);
                if !prev.trim().is_empty() {
                    forwarded_for.push(prev.trim().to_string());
                }
                continue;
            }
            let dropped = HOP_BY_HOP.iter().any(|n| name.eq_ignore_ascii_case(n))
                || named.iter().any(|n| name.eq_ignore_ascii_case(n))
                || trace::TRACE_HEADERS
                    .iter()
                    .any(|n| name.eq_ignore_ascii_case(n));
            if !dropped {
                lines.keep(out, h);
            }
        }
        lines.flush(out);
        trace::write_outgoing_headers(&outgoing, out);
        if let Some(id) = &generated {
            put_header(out, "x-request-id", id.as_bytes());
        }
        out.extend_from_slice(b"x-forwarded-for: ");
        for prev in &forwarded_for {
            out.extend_from_slice(prev.as_bytes());
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(self.peer_ip.as_bytes());
        out.extend_from_slice(b"\r\n");
        if !has_proto {
            out.extend_from_slice(b"x-forwarded-proto: http\r\n");
        }
        out.extend_from_slice(b"\r\n");
        Some(Plan {
            len: head.len() + body_len as usize,
            body_len: body_len as usize,
            route: route_index,
            close,
            head_method: method == "HEAD",
            idempotent: matches!(
                method,
                "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
            ),
            pending,
        })
    }

    /// Sends `request` upstream and relays the response (its head rewritten
    /// in `out`). False when the client connection must end.
    async fn exchange(
        &self,
        client: &mut TcpStream,
        mut plan: Plan,
        request: &[u8],
        out: &mut Vec<u8>,
        rbuf: &mut BytesMut,
        deadline: &mut Deadline,
    ) -> bool {
        let route = &self.listener.routes[plan.route];
        deadline.set(TokioInstant::now() + self.shared.timeouts.request);
        let sent = tokio::select! {
            sent = self.send(route, &plan, request, out, rbuf) => sent,
            _ = deadline.passed() => Err(Failure::UpstreamTimeout),
        };
        let (mut upstream, head) = match sent {
            Ok(ok) => ok,
            Err(failure) => return self.answer_failure(client, plan, failure).await,
        };
        plan.pending.status = head.status;
        let close =
            plan.close || *self.stop.borrow() || matches!(head.framing, Framing::UntilClose);
        if close {
            out.extend_from_slice(b"connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        let relayed = relay_body(client, &mut upstream, head.framing, out, rbuf).await;
        plan.pending.response_bytes = relayed.bytes;
        plan.pending.finish();
        match relayed.end {
            End::Exact if head.reusable => route.pool.checkin_stream(upstream),
            End::Exact | End::Extra => {}
            End::Broken => return false,
        }
        !close
    }

    /// Answers the client with `failure` (and its span and metrics).
    async fn answer_failure(&self, client: &mut TcpStream, plan: Plan, failure: Failure) -> bool {
        let close = plan.close || *self.stop.borrow();
        plan.pending.settle(failure);
        client.write_all(&failure.raw(close)).await.is_ok() && !close
    }

    /// Sends the request upstream on a pooled connection and reads the
    /// response head; the head for the client goes into `out` (without the
    /// empty line that ends it), the rest of what was read stays in `rbuf`.
    /// A pooled connection that ends without a byte of answer was most
    /// likely closed by the upstream as the request went out (its keep-alive
    /// timeout): an idempotent request is then sent once more, on a new
    /// connection; any other gets 502, since the upstream may have acted on it.
    async fn send(
        &self,
        route: &forward::RouteRt,
        plan: &Plan,
        request: &[u8],
        out: &mut Vec<u8>,
        rbuf: &mut BytesMut,
    ) -> Result<(TcpStream, ResponseHead), Failure> {
        let mut may_reuse = true;
        loop {
            let (mut upstream, reused) =
                route.pool.checkout_stream(may_reuse).await.map_err(|e| {
                    tracing::debug!("{e}");
                    Failure::UpstreamConnect
                })?;
            rbuf.clear();
            let head = match upstream.write_all(request).await {
                Ok(()) => {
                    read_response_head(&mut upstream, rbuf, out, plan.head_method, self.max_head)
                        .await
                }
                Err(_) => Err(HeadError::Closed),
            };
            match head {
                Ok(head) => return Ok((upstream, head)),
                Err(HeadError::Closed) if reused && plan.idempotent => may_reuse = false,
                Err(HeadError::Closed) => {
                    tracing::debug!("upstream {} closed without answering", route.upstream);
                    return Err(Failure::BadUpstreamResponse);
                }
                Err(HeadError::Bad(e)) => {
                    tracing::debug!("bad response from upstream {}: {e}", route.upstream);
                    return Err(Failure::BadUpstreamResponse);
                }
            }
        }
    }
}

/// Reads a response head into `rbuf` and writes its rewritten form for the
/// client into `out`: informational (1xx) heads are passed on and the next
/// head read; hop-by-hop headers are dropped; the body's framing decided.
async fn read_response_head(
    upstream: &mut TcpStream,
    rbuf: &mut BytesMut,
    out: &mut Vec<u8>,
    head_method: bool,
    max_head: usize,
) -> Result<ResponseHead, HeadError> {
    out.clear();
    loop {
        let parsed = {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut resp = httparse::Response::new(&mut headers);
            match resp.parse(rbuf) {
                Ok(httparse::Status::Complete(len)) => {
                    Some(rewrite_response(&resp, &rbuf[..len], head_method, out)?)
                }
                Ok(httparse::Status::Partial) if rbuf.len() < max_head => None,
                Ok(httparse::Status::Partial) => {
                    return Err(HeadError::Bad("response head too large".into()));
                }
                Err(e) => return Err(HeadError::Bad(format!("unparsable response: {e}"))),
            }
        };
        if let Some(head) = parsed {
            rbuf.advance(head.len);
            if (100..200).contains(&head.status) {
                out.extend_from_slice(b"\r\n"); // an informational head, then the real one
                continue;
            }
            return Ok(head);
        }
        rbuf.reserve(UPSTREAM_BUF.min(max_head));
        match upstream.read_buf(rbuf).await {
            Ok(n) if n > 0 => {}
            Ok(_) | Err(_) if rbuf.is_empty() && out.is_empty() => return Err(HeadError::Closed),
            Ok(_) => return Err(HeadError::Bad("the connection ended mid-head".into())),
            Err(e) => return Err(HeadError::Bad(e.to_string())),
        }
    }
}

/// Appends the client's form of a parsed response head (the bytes `head`) to
/// `out` (without the final empty line) and decides how its body is framed.
fn rewrite_response(
    resp: &httparse::Response<'_, '_>,
    head: &[u8],
    head_method: bool,
    out: &mut Vec<u8>,
) -> Result<ResponseHead, HeadError> {
    let status = resp
        .code
        .ok_or_else(|| HeadError::Bad("no status".into()))?;
    if status == 101 {
        return Err(HeadError::Bad(
            "101 Switching Protocols to a request that asked for no upgrade".into(),
        ));
    }
    let mut content_length: Option<u64> = None;
    let mut transfer_encoding: Option<&[u8]> = None;
    let (mut close, mut keep_alive, mut has_named) = (false, false, false);
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = parse_length(h.value)
                .ok_or_else(|| HeadError::Bad("invalid Content-Length".into()))?;
            if content_length.is_some_and(|c| c != n) {
                return Err(HeadError::Bad("conflicting Content-Length".into()));
            }
            content_length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            if transfer_encoding.is_some() {
                return Err(HeadError::Bad("Transfer-Encoding given twice".into()));
            }
            transfer_encoding = Some(h.value);
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in String::from_utf8_lossy(h.value).split(',') {
                let token = token.trim();
                if token.eq_ignore_ascii_case("close") {
                    close = true;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    keep_alive = true;
                } else if !token.is_empty() {
                    has_named = true;
                }
            }
        }
    }
    let mut reusable = !close && (resp.version == Some(1) || keep_alive);
    let framing = if head_method || status < 200 || status == 204 || status == 304 {
        Framing::Empty
    } else if let Some(te) = transfer_encoding {
        let chunked = String::from_utf8_lossy(te)
            .rsplit(',')
            .next()
            .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
        if chunked {
            Framing::Chunked(ChunkedEnd::default())
        } else {
            Framing::UntilClose
        }
    } else if let Some(n) = content_length {
        Framing::Length(n)
    } else {
        Framing::UntilClose
    };
    if matches!(framing, Framing::UntilClose) {
        reusable = false;
    }

    let mut lines = Lines::new(head);
    match status_line(resp, head) {
        // An HTTP/1.1 status line goes on as it came (and, in the same run,
        // the header lines after it).
        Some(line) => lines.run = line,
        None => {
            out.extend_from_slice(b"HTTP/1.1 ");
            out.extend_from_slice(&[
                b'0' + (status / 100 % 10) as u8,
                b'0' + (status / 10 % 10) as u8,
                b'0' + (status % 10) as u8,
                b' ',
            ]);
            out.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
    let connection_named = |name: &str| {
        resp.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("connection"))
            .flat_map(|h| std::str::from_utf8(h.value).unwrap_or("").split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(name))
    };
    for h in resp.headers.iter() {
        let name = h.name;
        if HOP_BY_HOP.iter().any(|n| name.eq_ignore_ascii_case(n))
            || (transfer_encoding.is_some() && name.eq_ignore_ascii_case("content-length"))
            || (has_named && connection_named(name))
        {
            continue;
        }
        lines.keep(out, h);
    }
    lines.flush(out);
    // The body goes on byte for byte, so its transfer coding goes with it.
    if let (Some(te), false) = (transfer_encoding, matches!(framing, Framing::Empty)) {
        put_header(out, "transfer-encoding", te);
    }
    Ok(ResponseHead {
        status,
        len: head.len(),
        framing,
        reusable,
    })
}

/// Where the request line of `method` and `path` is in `head`, if it can go
/// on unchanged: `METHOD path HTTP/1.1` and CRLF, from the head's first byte.
fn request_line(method: &str, path: &str, head: &[u8]) -> Option<std::ops::Range<usize>> {
    let offset = |s: &str| (s.as_ptr() as usize).wrapping_sub(head.as_ptr() as usize);
    let end = method.len() + 1 + path.len();
    let plain = offset(method) == 0
        && offset(path) == method.len() + 1
        && head.get(end..end + 11) == Some(b" HTTP/1.1\r\n");
    plain.then_some(0..end + 11)
}

/// Where the status line of `resp` is in `head`, if it can go on unchanged:
/// `HTTP/1.1`, the three digits, a reason phrase and CRLF.
fn status_line(resp: &httparse::Response<'_, '_>, head: &[u8]) -> Option<std::ops::Range<usize>> {
    let reason = resp.reason.filter(|r| !r.is_empty())?;
    let start = (reason.as_ptr() as usize).checked_sub(head.as_ptr() as usize)?;
    let end = start.checked_add(reason.len())?;
    let plain = resp.version == Some(1)
        && start == 13
        && head.get(..9) == Some(b"HTTP/1.1 ")
        && head.get(9..12)?.iter().all(u8::is_ascii_digit)
        && head.get(12) == Some(&b' ')
        && head.get(end..end + 2) == Some(b"\r\n");
    plain.then_some(0..end + 2)
}

/// Reads more of the client's bytes into `buf`: false when the client closed
/// the connection, it failed, or the deadline passed first.
async fn read_more(client: &mut TcpStream, buf: &mut BytesMut, deadline: &mut Deadline) -> bool {
    buf.reserve(4096);
    tokio::select! {
        r = client.read_buf(buf) => matches!(r, Ok(n) if n > 0),
        _ = deadline.passed() => false,
    }
}

/// One timer for all of a connection's deadlines, re-armed lazily: setting
/// a deadline only stores it, and tokio's timer wheel is touched when the
/// armed time passes or an earlier deadline is set, not for every read.
struct Deadline {
    sleep: Pin<Box<Sleep>>,
    armed: TokioInstant,
    at: TokioInstant,
}

impl Deadline {
    fn new(at: TokioInstant) -> Self {
        Self {
            sleep: Box::pin(tokio::time::sleep_until(at)),
            armed: at,
            at,
        }
    }

    fn set(&mut self, at: TokioInstant) {
        self.at = at;
        if at < self.armed {
            self.armed = at;
            self.sleep.as_mut().reset(at);
        }
    }

    /// Resolves once the deadline last set has passed.
    async fn passed(&mut self) {
        loop {
            self.sleep.as_mut().await;
            if TokioInstant::now() >= self.at {
                return;
            }
            self.armed = self.at;
            self.sleep.as_mut().reset(self.at);
        }
    }
}

/// How a relayed response body ended.
enum End {
    /// At its framed end, nothing read past it: the upstream connection may serve another request.
    Exact,
    /// Complete, but the connection cannot be reused (bytes past the end, or delimited by its close).
    Extra,
    /// Cut short (either side failed): the client connection must end too.
    Broken,
}

struct Relayed {
    /// Body bytes passed on (chunked: the data, without the framing).
    bytes: u64,
    end: End,
}

/// Writes the head in `out` and the response body to the client: what is
/// already in `rbuf`, then reads from the upstream until the body's end.
async fn relay_body(
    client: &mut TcpStream,
    upstream: &mut TcpStream,
    mut framing: Framing,
    out: &mut Vec<u8>,
    rbuf: &mut BytesMut,
) -> Relayed {
    let mut bytes = 0u64;
    let mut first = true;
    loop {
        // How much of `rbuf` belongs to the body, and whether that ends it.
        let (take, done) = match &mut framing {
            Framing::Empty => (0, true),
            Framing::Length(left) => {
                let take = (*left).min(rbuf.len() as u64);
                *left -= take;
                bytes += take;
                (take as usize, *left == 0)
            }
            Framing::Chunked(chunked) => {
                let before = chunked.data;
                let end = match chunked.feed(rbuf) {
                    Ok(end) => end,
                    Err(()) => {
                        tracing::debug!("malformed chunked body from the upstream");
                        let _ = client.write_all(out).await;
                        return Relayed {
                            bytes,
                            end: End::Broken,
                        };
                    }
                };
                bytes += chunked.data - before;
                match end {
                    Some(n) => (n, true),
                    None => (rbuf.len(), false),
                }
            }
            Framing::UntilClose => {
                bytes += rbuf.len() as u64;
                (rbuf.len(), false)
            }
        };
        let write = if first {
            // The head and the first part of the body in one write.
            out.extend_from_slice(&rbuf[..take]);
            client.write_all(out).await
        } else {
            client.write_all(&rbuf[..take]).await
        };
        first = false;
        rbuf.advance(take);
        if write.is_err() {
            return Relayed {
                bytes,
                end: End::Broken,
            };
        }
        if done {
            let end = if rbuf.is_empty() {
                End::Exact
            } else {
                End::Extra
            };
            return Relayed { bytes, end };
        }
        rbuf.clear();
        rbuf.reserve(READ_CHUNK);
        match upstream.read_buf(rbuf).await {
            Ok(n) if n > 0 => {}
            Ok(_) if matches!(framing, Framing::UntilClose) => {
                return Relayed {
                    bytes,
                    end: End::Extra,
                };
            }
            _ => {
                return Relayed {
                    bytes,
                    end: End::Broken,
                };
            }
        }
    }
}

/// A Content-Length value: digits only (no sign, no list).
fn parse_length(value: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(value).ok()?.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

fn put_header(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Copies the header lines a rewritten head keeps, in runs: kept headers
/// that follow each other in the parsed head are one slice of it, copied at
/// once (most heads keep all their headers, so this is one copy instead of
/// four per header). A line is copied as received only when it is exactly
/// `name:`, optional spaces or tabs, the value and CRLF; any other (a bare
/// LF ending) is written anew by [`put_header`].
struct Lines<'h> {
    head: &'h [u8],
    /// The run of kept lines not yet copied.
    run: std::ops::Range<usize>,
}

impl<'h> Lines<'h> {
    fn new(head: &'h [u8]) -> Self {
        Self { head, run: 0..0 }
    }

    /// Where the line of `h` is in the head, if it is in the plain form.
    fn line(&self, h: &httparse::Header<'_>) -> Option<std::ops::Range<usize>> {
        let base = self.head.as_ptr() as usize;
        let start = (h.name.as_ptr() as usize).checked_sub(base)?;
        let colon = start.checked_add(h.name.len())?;
        let value = (h.value.as_ptr() as usize).checked_sub(base)?;
        let end = value.checked_add(h.value.len())?;
        let plain = self.head.get(colon) == Some(&b':')
            && value > colon
            && self
                .head
                .get(colon + 1..value)?
                .iter()
                .all(|b| *b == b' ' || *b == b'\t')
            && self.head.get(end..end + 2) == Some(b"\r\n");
        plain.then_some(start..end + 2)
    }

    /// Adds the line of `h` to what `out` gets.
    fn keep(&mut self, out: &mut Vec<u8>, h: &httparse::Header<'_>) {
        match self.line(h) {
            Some(line) if line.start == self.run.end && !self.run.is_empty() => {
                self.run.end = line.end;
            }
            Some(line) => {
                self.flush(out);
                self.run = line;
            }
            None => {
                self.flush(out);
                put_header(out, h.name, h.value);
            }
        }
    }

    /// Copies the pending run to `out`; call before writing anything else.
    fn flush(&mut self, out: &mut Vec<u8>) {
        if let Some(run) = self.head.get(self.run.clone()) {
            out.extend_from_slice(run);
        }
        self.run = 0..0;
    }
}

/// The parsed header list, as a source of trace headers.
struct RawHeaders<'h, 'b>(&'h [httparse::Header<'b>]);

impl HeaderSource for RawHeaders<'_, '_> {
    fn first(&self, name: &str) -> Option<&str> {
        let h = self.0.iter().find(|h| h.name.eq_ignore_ascii_case(name))?;
        std::str::from_utf8(h.value).ok().map(str::trim)
    }

    fn joined(&self, name: &str) -> String {
        self.0
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .filter_map(|h| std::str::from_utf8(h.value).ok())
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Follows a chunked body (RFC 9112 §7.1) to find its end: after the last
/// (empty) chunk and the trailer section. Counts the data bytes on the way.
#[derive(Debug, Default)]
pub(crate) struct ChunkedEnd {
    state: Chunk,
    /// Size of the chunk whose size line is being read, or data left in the current one.
    size: u64,
    digits: u32,
    /// Bytes of the current size line's extension or trailer section.
    line: usize,
    /// Data bytes seen so far.
    pub(crate) data: u64,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    #[default]
    Size,
    /// After the size: an extension (skipped) up to the end of the line.
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// At the start of a trailer line (or the final empty line).
    TrailerStart,
    TrailerLine,
    EndLf,
    Done,
}

/// Longest size-line extension or trailer section accepted.
const MAX_CHUNK_META: usize = 16 * 1024;

impl ChunkedEnd {
    /// Feeds the next bytes: `Ok(Some(n))` when the body ends after `n` of
    /// them, `Ok(None)` when it goes on, `Err` when it is not chunked framing.
    pub(crate) fn feed(&mut self, bytes: &[u8]) -> Result<Option<usize>, ()> {
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            match self.state {
                Chunk::Size => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        let d = (b as char).to_digit(16).ok_or(())?;
                        if self.digits >= 15 {
                            return Err(()); // larger than any body we would relay
                        }
                        self.size = self.size * 16 + u64::from(d);
                        self.digits += 1;
                    }
                    b';' | b' ' | b'\t' if self.digits > 0 => {
                        self.state = Chunk::Extension;
                        self.line = 0;
                    }
                    b'\r' if self.digits > 0 => self.state = Chunk::SizeLf,
                    b'\n' if self.digits > 0 => self.end_size_line(),
                    _ => return Err(()),
                },
                Chunk::Extension => match b {
                    b'\r' => self.state = Chunk::SizeLf,
                    b'\n' => self.end_size_line(),
                    _ => {
                        self.line += 1;
                        if self.line > MAX_CHUNK_META {
                            return Err(());
                        }
                    }
                },
                Chunk::SizeLf => {
                    if b != b'\n' {
                        return Err(());
                    }
                    self.end_size_line();
                }
                Chunk::Data => {
                    let take = self.size.min((bytes.len() - i) as u64);
                    self.size -= take;
                    self.data += take;
                    i += take as usize;
                    if self.size == 0 {
                        self.state = Chunk::DataCr;
                    }
                    continue;
                }
                Chunk::DataCr => match b {
                    b'\r' => self.state = Chunk::DataLf,
                    b'\n' => self.state = Chunk::Size,
                    _ => return Err(()),
                },
                Chunk::DataLf => {
                    if b != b'\n' {
                        return Err(());
                    }
                    self.state = Chunk::Size;
                }
                Chunk::TrailerStart => match b {
                    b'\r' => self.state = Chunk::EndLf,
                    b'\n' => {
                        self.state = Chunk::Done;
                        return Ok(Some(i + 1));
                    }
                    _ => {
                        self.state = Chunk::TrailerLine;
                        self.line += 1;
                    }
                },
                Chunk::TrailerLine => {
                    self.line += 1;
                    if self.line > MAX_CHUNK_META {
                        return Err(());
                    }
                    if b == b'\n' {
                        self.state = Chunk::TrailerStart;
                    }
                }
                Chunk::EndLf => {
                    if b != b'\n' {
                        return Err(());
                    }
                    self.state = Chunk::Done;
                    return Ok(Some(i + 1));
                }
                Chunk::Done => return Ok(Some(i)),
            }
            i += 1;
        }
        Ok((self.state == Chunk::Done).then_some(i))
    }

    fn end_size_line(&mut self) {
        self.digits = 0;
        if self.size == 0 {
            self.state = Chunk::TrailerStart;
            self.line = 0;
        } else {
            self.state = Chunk::Data;
        }
    }
}

/// A connection whose first bytes were already read: they are read again
/// first (so the general path sees the whole stream).
pub(crate) struct Rewind<T> {
    prefix: Bytes,
    inner: T,
}

impl<T> Rewind<T> {
    pub(crate) fn new(prefix: Bytes, inner: T) -> Self {
        Self { prefix, inner }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

crate::guard::write_through!(Rewind);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const BODY: &[u8] =
        b"4\r\nwiki\r\n5;ext=1\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nExpires: never\r\n\r\n";

    fn end_of(stream: &[u8], cuts: &[usize]) -> (Option<usize>, u64) {
        let mut c = ChunkedEnd::default();
        let mut cuts: Vec<usize> = cuts.iter().map(|x| (*x).min(stream.len())).collect();
        cuts.push(stream.len());
        cuts.sort_unstable();
        let mut last = 0;
        for cut in cuts {
            if let Some(n) = c.feed(&stream[last..cut]).unwrap() {
                return (Some(last + n), c.data);
            }
            last = cut;
        }
        (None, c.data)
    }

    /// The lines of `head` (a response) that `rewrite_response` keeps, as it writes them.
    fn rewritten(head: &[u8]) -> Vec<u8> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut headers);
        let len = match resp.parse(head).unwrap() {
            httparse::Status::Complete(len) => len,
            httparse::Status::Partial => panic!("partial head"),
        };
        let mut out = Vec::new();
        rewrite_response(&resp, &head[..len], false, &mut out)
            .ok()
            .unwrap();
        out
    }

    #[test]
    fn kept_header_lines_go_on_as_they_came_and_odd_ones_are_rewritten() {
        // Plain lines (any optional whitespace after the colon, an empty
        // value) are copied; hop-by-hop ones dropped; a bare LF ending and
        // trailing whitespace give a line written anew.
        let head = b"HTTP/1.1 200 OK\r\nServer: x\r\nA:b\r\nC:\t d\r\nE:\r\n\
            Connection: keep-alive, x-hop\r\nX-Hop: 1\r\nF: g\nH: i  \r\nContent-Length: 0\r\n\r\n";
        assert_eq!(
            String::from_utf8(rewritten(head)).unwrap(),
            "HTTP/1.1 200 OK\r\nServer: x\r\nA:b\r\nC:\t d\r\nE:\r\n\
             F: g\r\nH: i\r\nContent-Length: 0\r\n"
        );
        // Not HTTP/1.1, or no reason phrase: the status line is written anew.
        assert_eq!(
            rewritten(b"HTTP/1.0 404 Not Found\r\nA: b\r\n\r\n"),
            b"HTTP/1.1 404 Not Found\r\nA: b\r\n"
        );
        assert_eq!(rewritten(b"HTTP/1.1 204 \r\n\r\n"), b"HTTP/1.1 204 \r\n");
        assert_eq!(rewritten(b"HTTP/1.1 200 OK\n\n"), b"HTTP/1.1 200 OK\r\n");
    }

    proptest! {
        /// Whatever the header lines look like, the rewritten head has each
        /// kept header once, in order, with its value, every line ending in
        /// CRLF (never a bare LF passed on).
        #[test]
        fn rewritten_heads_keep_every_header_and_end_lines_in_crlf(
            lines in proptest::collection::vec(
                ("[A-Za-z][A-Za-z0-9-]{0,8}", "[ -~]{0,12}", 0usize..3, 0usize..2),
                0..10,
            ),
            reason in "[A-Za-z ]{0,6}",
        ) {
            let mut head = format!("HTTP/1.1 200 {reason}\r\n").into_bytes();
            for (name, value, sep, crlf) in &lines {
                head.extend_from_slice(name.as_bytes());
                head.extend_from_slice([": ", ":", ":\t"][*sep].as_bytes());
                head.extend_from_slice(value.as_bytes());
                head.extend_from_slice(if *crlf == 1 { b"\r\n" } else { b"\n" });
            }
            head.extend_from_slice(b"\r\n");
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut resp = httparse::Response::new(&mut headers);
            let Ok(httparse::Status::Complete(len)) = resp.parse(&head) else {
                return Ok(()); // not a head httparse takes
            };
            let expected: Vec<(String, Vec<u8>)> = resp
                .headers
                .iter()
                .filter(|h| {
                    !HOP_BY_HOP.iter().any(|n| h.name.eq_ignore_ascii_case(n))
                        && !h.name.eq_ignore_ascii_case("content-length")
                })
                .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
                .collect();
            let expected_reason = resp.reason.map(str::to_owned);
            let mut out = Vec::new();
            if rewrite_response(&resp, &head[..len], false, &mut out).is_err() {
                return Ok(()); // e.g. a Content-Length that is not a number
            }
            let bare_lf = out
                .iter()
                .enumerate()
                .any(|(i, b)| *b == b'\n' && (i == 0 || out[i - 1] != b'\r'));
            prop_assert!(!bare_lf, "a bare LF in {:?}", String::from_utf8_lossy(&out));
            out.extend_from_slice(b"\r\n");
            let mut back = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut again = httparse::Response::new(&mut back);
            prop_assert!(matches!(again.parse(&out), Ok(httparse::Status::Complete(n)) if n == out.len()));
            let got: Vec<(String, Vec<u8>)> = again
                .headers
                .iter()
                .filter(|h| !h.name.eq_ignore_ascii_case("content-length"))
                .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
                .collect();
            prop_assert_eq!(got, expected);
            prop_assert_eq!(again.reason.map(str::to_owned), expected_reason);
        }
    }

    #[test]
    fn finds_the_end_of_a_chunked_body_and_counts_its_data() {
        let mut stream = BODY.to_vec();
        stream.extend_from_slice(b"HTTP/1.1 200 OK\r\n"); // the next response
        assert_eq!(end_of(&stream, &[]), (Some(BODY.len()), 23));
        assert_eq!(end_of(b"0\r\n\r\n", &[]), (Some(5), 0));
        assert_eq!(
            end_of(b"0\n\n", &[]),
            (Some(3), 0),
            "bare LF, as parsers accept"
        );
        assert_eq!(end_of(&BODY[..BODY.len() - 1], &[]).0, None);
    }

    #[test]
    fn rejects_what_is_not_chunked_framing() {
        for bad in [
            &b"x\r\n"[..],
            b"\r\n",
            b"4\r\nwikiXX",
            b"4\rX",
            b"fffffffffffffffff\r\n",
        ] {
            assert!(
                ChunkedEnd::default().feed(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[tokio::test]
    async fn a_deadline_moved_later_or_earlier_is_the_one_that_counts() {
        let start = TokioInstant::now();
        let mut d = Deadline::new(start + std::time::Duration::from_millis(30));
        d.set(start + std::time::Duration::from_millis(150));
        d.passed().await;
        assert!(start.elapsed() >= std::time::Duration::from_millis(150));

        let start = TokioInstant::now();
        let mut d = Deadline::new(start + std::time::Duration::from_secs(600));
        d.set(start + std::time::Duration::from_millis(20));
        tokio::time::timeout(std::time::Duration::from_secs(30), d.passed())
            .await
            .expect("an earlier deadline re-arms the timer");
    }

    #[test]
    fn content_length_is_digits_only() {
        assert_eq!(parse_length(b" 42 "), Some(42));
        for bad in [
            &b""[..],
            b"-1",
            b"+1",
            b"1,1",
            b"0x10",
            b"99999999999999999999999",
        ] {
            assert_eq!(parse_length(bad), None);
        }
    }

    proptest! {
        #[test]
        fn the_same_end_however_the_bytes_arrive(cuts in proptest::collection::vec(0usize..80, 0..10)) {
            prop_assert_eq!(end_of(BODY, &cuts), (Some(BODY.len()), 23));
        }

        #[test]
        fn any_chunk_sizes_frame_exactly(sizes in proptest::collection::vec(1usize..300, 0..8), cut in 0usize..3000) {
            let mut stream = Vec::new();
            for n in &sizes {
                stream.extend_from_slice(format!("{n:x}\r\n").as_bytes());
                stream.extend(std::iter::repeat_n(b'z', *n));
                stream.extend_from_slice(b"\r\n");
            }
            stream.extend_from_slice(b"0\r\n\r\n");
            let total: usize = sizes.iter().sum();
            prop_assert_eq!(end_of(&stream, &[cut]), (Some(stream.len()), total as u64));
        }
    }
}
