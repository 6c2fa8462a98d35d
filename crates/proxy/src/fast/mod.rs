//! The HTTP/1.1 fast path.
//!
//! The common request (HTTP/1.1, a Host, no body or a small one of known
//! length, a route to an HTTP/1.1 upstream) is proxied straight between the
//! two sockets: its head is parsed once (httparse), checked and rewritten
//! once by the shared rules (`rules`: hop-by-hop fields out; trace context,
//! X-Forwarded-* in; `head.rs` writes the bytes) and written to a pooled
//! upstream connection together with its body; the response head is parsed,
//! checked and rewritten the same way and its body copied back as it comes,
//! framed by its Content-Length, chunked encoding or the end of the
//! connection (`relay.rs`). No task, channel or body object is made per
//! request, which is what makes the proxy as cheap per request as nginx.
//!
//! Anything else (h2c, upgrades, `Expect`, chunked or large request bodies,
//! HTTP/1.0, malformed, refused or oversized heads, paths no route takes) is
//! handed, with the bytes read so far, to the general path (`forward` on
//! hyper) for the rest of the connection: the fast path never has to get an
//! unusual request right, and it never answers one differently.

mod head;
mod relay;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::{Buf, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant as TokioInstant;

use self::head::{Framing, HeadError, ResponseHead, read_response_head};
pub(crate) use self::relay::Rewind;
use self::relay::{Deadline, End, read_more, relay_body};
use crate::request::{Failure, ListenerRt, Pending, RouteRt, Shared};

/// Most header fields in a request head the fast path parses (more: the
/// general path).
const MAX_HEADERS: usize = 64;
/// Most header fields, and bytes, in a response head: hyper's client
/// defaults, so both paths take the same responses.
const MAX_RESPONSE_FIELDS: usize = 100;
const MAX_RESPONSE_HEAD: usize = 8192 + 4096 * 100;
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
                // An HTTP/2 preface after HTTP/1.1 requests is no new protocol
                // (hyper would switch to it, since it starts reading afresh):
                // the connection ends, as when hyper reads it mid-connection.
                Err(()) if !first && buf.starts_with(b"PRI * HTTP/2") => return Outcome::Closed,
                Err(()) => return Outcome::Handoff(buf),
            };
            first = false;
            // The body, read whole (it is small).
            if buf.len() < plan.len {
                deadline.set(TokioInstant::now() + self.shared.timeouts.idle);
            }
            while buf.len() < plan.len {
                if !read_more(client, &mut buf, &mut deadline).await {
                    // The body ended before its length (or the idle
                    // timeout passed): answered as the general path does,
                    // if the client still reads; nothing went upstream.
                    self.answer_failure(client, plan, Failure::IncompleteRequest, true)
                        .await;
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
            Err(failure) => return self.answer_failure(client, plan, failure, false).await,
        };
        plan.pending.status = head.status;
        let close =
            plan.close || *self.stop.borrow() || matches!(head.framing, Framing::UntilClose);
        if close {
            out.extend_from_slice(b"connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        let relayed = relay_body(
            client,
            &mut upstream,
            head.framing,
            out,
            rbuf,
            deadline,
            self.shared.timeouts.stream_idle,
        )
        .await;
        plan.pending.response_bytes = relayed.bytes;
        match relayed.end {
            // Dropped unfinished: recorded as cancelled (the client went away).
            End::ClientGone => return false,
            End::Exact if head.reusable => {
                plan.pending.finish();
                route.pool.checkin_stream(upstream);
            }
            End::Exact | End::Extra => plan.pending.finish(),
            End::Broken => {
                plan.pending.finish();
                return false;
            }
        }
        !close
    }

    /// Answers the client with `failure` (and its span and metrics); false
    /// when the connection must end (`close`, or the client asked).
    async fn answer_failure(
        &self,
        client: &mut TcpStream,
        plan: Plan,
        failure: Failure,
        close: bool,
    ) -> bool {
        let close = close || plan.close || *self.stop.borrow();
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
        route: &RouteRt,
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
                Ok(()) => read_response_head(&mut upstream, rbuf, out, plan.head_method).await,
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
