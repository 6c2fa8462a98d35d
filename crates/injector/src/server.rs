//! The HTTPS server: TLS handshakes (bounded in time and in concurrent
//! connections, in all and per client address), HTTP/1.1 or HTTP/2 by ALPN,
//! `POST /mutate` to the reviewer; on shutdown it stops accepting and lets
//! in-flight reviews end.
//!
//! Bounded against a hostile client (any Pod can reach the Service): a
//! connection must send its first request within [`FIRST_REQUEST`] of being
//! accepted and is closed after [`IDLE`] without one; one address holds at
//! most [`MAX_PER_PEER`] of the [`MAX_CONNECTIONS`]; bodies being read hold
//! at most [`BUFFERED`] bytes in all, and reviews being worked on at most
//! [`WORKING`] bytes of body (a large one runs alone), and what each
//! connection may have in flight beside them is one [`WINDOW`], so memory
//! stays bounded whatever arrives.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::review::{self, Reviewer};

/// The largest AdmissionReview read: the API server refuses requests over
/// 3 MiB, so an object it admits fits.
pub const MAX_BODY: usize = 4 << 20;
/// How much of a too large body is read (and dropped) before answering.
const DRAIN_LIMIT: usize = 4 * MAX_BODY;
/// A request body must arrive within this time (the webhook's own timeout
/// is 5 s: a later answer is not waited for).
const BODY_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more wait to be accepted.
const MAX_CONNECTIONS: usize = 256;
/// Connections from one client address at once; more are closed at once.
pub(crate) const MAX_PER_PEER: usize = 64;
/// A connection must finish its TLS handshake and send its first request
/// header within this time of being accepted.
pub(crate) const FIRST_REQUEST: Duration = Duration::from_secs(5);
/// A connection with no request for this long is closed.
pub(crate) const IDLE: Duration = Duration::from_secs(60);
/// Bytes of request bodies held while they are read, in all.
pub(crate) const BUFFERED: usize = 32 << 20;
/// ... and from one client address: one address cannot spend the budget
/// of all.
pub(crate) const BUFFERED_PER_PEER: usize = 8 << 20;
/// Bytes of request bodies whose reviews are worked on at once (a review
/// takes several times its body in memory while it runs).
pub(crate) const WORKING: usize = MAX_BODY;
/// HTTP/2 flow-control windows (per stream and per connection) and the
/// HTTP/1.1 read buffer: data a connection may have in the server's
/// buffers beside the body budget. A usual review (10-50 KiB) fits.
pub(crate) const WINDOW: u32 = 128 << 10;
/// How long in-flight reviews may run after the shutdown signal.
const GRACE: Duration = Duration::from_secs(10);

pub const PATH: &str = "/mutate";

type Body = Full<Bytes>;

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// What every connection shares: the reviewer and the memory budgets.
struct Shared {
    reviewer: Arc<Reviewer>,
    /// Permits are KiB of request bodies being read ([`BUFFERED`]).
    buffered: Arc<Semaphore>,
    /// Permits are KiB of request bodies being reviewed ([`WORKING`]).
    working: Arc<Semaphore>,
}

impl Shared {
    /// Sets the buffered-bytes gauge from what the body budget has lent.
    fn show_buffered(&self) {
        let lent = kib(BUFFERED) as usize - self.buffered.available_permits();
        self.reviewer
            .metrics
            .body_buffered
            .set(i64::try_from(lent * 1024).unwrap_or(i64::MAX));
    }
}

fn kib(bytes: usize) -> u32 {
    u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX)
}

async fn handle(
    shared: Arc<Shared>,
    peer_budget: Arc<Semaphore>,
    req: Request<Incoming>,
) -> Response<Body> {
    if req.uri().path() != PATH {
        return text(
            StatusCode::NOT_FOUND,
            "not found; the webhook answers POST /mutate\n",
        );
    }
    if req.method() != Method::POST {
        let mut r = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed; POST an AdmissionReview to /mutate\n",
        );
        r.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("POST"));
        return r;
    }
    let started = Instant::now();
    let reviewer = &shared.reviewer;
    let read = read_body(req.into_body(), [&peer_budget, &shared.buffered], || {
        shared.show_buffered();
    });
    let answer = match tokio::time::timeout(BODY_TIMEOUT, read).await {
        Ok(Ok((body, held))) => {
            // The larger the body, the fewer reviews beside it (one of
            // WORKING bytes runs alone; the share is taken once the
            // Namespace is read); the body stays counted as buffered until
            // the answer is made.
            let weight = kib(body.len()).min(kib(WORKING)).max(1);
            let answer = reviewer
                .review(&body, started, &shared.working, weight)
                .await;
            drop(held);
            shared.show_buffered();
            answer
        }
        Ok(Err(why)) => reviewer.count(review::malformed("", &why), started),
        Err(_) => reviewer.count(
            review::malformed(
                "",
                &format!("the body did not arrive within {BODY_TIMEOUT:?}"),
            ),
            started,
        ),
    };
    shared.show_buffered();
    tracing::debug!("review: {}", answer.outcome.as_str());
    let body = serde_json::to_vec(&answer.body).unwrap_or_default();
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

/// Reads a request body of at most [`MAX_BODY`] bytes, holding a share of
/// each of `budgets` (KiB: the client address's, then the server's) for
/// what it keeps; it waits while one is spent. A larger body is read on
/// (and dropped) up to [`DRAIN_LIMIT`], so that the client, which is still
/// sending it, gets the answer rather than a reset connection.
async fn read_body(
    mut body: Incoming,
    budgets: [&Arc<Semaphore>; 2],
    lent: impl Fn(),
) -> Result<(Vec<u8>, Vec<OwnedSemaphorePermit>), String> {
    let too_large = || format!("the body is larger than {} MiB", MAX_BODY >> 20);
    let mut buf = Vec::new();
    let mut held: Vec<OwnedSemaphorePermit> = Vec::new();
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("the body could not be read: {e}"))?;
        if let Ok(data) = frame.into_data() {
            total = total.saturating_add(data.len());
            if total <= MAX_BODY {
                let have = held.first().map_or(0, |h| h.num_permits() as u32);
                let more = kib(total) - have;
                if more > 0 {
                    for (i, budget) in budgets.iter().enumerate() {
                        let permit = Arc::clone(budget)
                            .acquire_many_owned(more)
                            .await
                            .map_err(|_| "the injector is stopping".to_string())?;
                        match held.get_mut(i) {
                            Some(h) => h.merge(permit),
                            None => held.push(permit),
                        }
                    }
                    lent();
                }
                buf.extend_from_slice(&data);
            } else {
                // Not kept: what was held goes back at once.
                held.clear();
                buf = Vec::new();
                if total > DRAIN_LIMIT {
                    return Err(too_large());
                }
            }
        }
    }
    if total > MAX_BODY {
        return Err(too_large());
    }
    Ok((buf, held))
}

/// Connections open per client address, and its body budget (KiB).
#[derive(Default)]
struct Peers(Mutex<HashMap<IpAddr, (usize, Arc<Semaphore>)>>);

impl Peers {
    /// Counts a connection from `ip`, unless it already has [`MAX_PER_PEER`].
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<PeerSlot> {
        let mut open = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (n, budget) = open
            .entry(ip)
            .or_insert_with(|| (0, Arc::new(Semaphore::new(kib(BUFFERED_PER_PEER) as usize))));
        if *n >= MAX_PER_PEER {
            return None;
        }
        *n += 1;
        Some(PeerSlot(Arc::clone(self), ip, Arc::clone(budget)))
    }
}

/// One connection's place in [`Peers`] (given back when dropped), and its
/// address's body budget.
struct PeerSlot(Arc<Peers>, IpAddr, Arc<Semaphore>);

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut open = (self.0)
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((n, _)) = open.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.1);
            }
        }
    }
}

/// When a connection last started or ended a request, and how many run.
struct Activity {
    since: Instant,
    /// Milliseconds since `since` of the last request's start or end.
    last_ms: AtomicUsize,
    requests: AtomicUsize,
    running: AtomicUsize,
}

impl Activity {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            since: Instant::now(),
            last_ms: AtomicUsize::new(0),
            requests: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
        })
    }

    fn touch(&self) {
        let ms = usize::try_from(self.since.elapsed().as_millis()).unwrap_or(usize::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// When the connection is to be closed if nothing happens before then
    /// (`None` while a request runs).
    fn deadline(&self) -> Option<tokio::time::Instant> {
        if self.running.load(Ordering::Acquire) > 0 {
            return None;
        }
        let wait = if self.requests.load(Ordering::Acquire) == 0 {
            FIRST_REQUEST
        } else {
            IDLE
        };
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed) as u64);
        Some(tokio::time::Instant::from_std(self.since + last + wait))
    }
}

/// A request in progress on a connection ([`Activity::running`]).
struct Running(Arc<Activity>);

impl Running {
    fn start(a: &Arc<Activity>) -> Self {
        a.requests.fetch_add(1, Ordering::AcqRel);
        a.running.fetch_add(1, Ordering::AcqRel);
        a.touch();
        Self(Arc::clone(a))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.touch();
        self.0.running.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serves until `shutdown` resolves, then waits (up to [`GRACE`]) for open
/// connections to finish their reviews.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    reviewer: Arc<Reviewer>,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let peers = Arc::new(Peers::default());
    let shared = Arc::new(Shared {
        reviewer,
        buffered: Arc::new(Semaphore::new(kib(BUFFERED) as usize)),
        working: Arc::new(Semaphore::new(kib(WORKING) as usize)),
    });
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = Arc::clone(&slots).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!("could not accept a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Some(peer_slot) = peers.admit(peer.ip()) else {
            tracing::debug!(
                "{} has {MAX_PER_PEER} connections open already; closing another",
                peer.ip()
            );
            continue;
        };
        let _ = stream.set_nodelay(true);
        let acceptor = acceptor.clone();
        let shared = Arc::clone(&shared);
        let mut stopping = stopped.clone();
        tokio::spawn(async move {
            let permits = (permit, peer_slot);
            let activity = Activity::new();
            let tls = match tokio::time::timeout(FIRST_REQUEST, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!("TLS handshake failed: {e}");
                    return;
                }
                Err(_) => {
                    tracing::debug!("TLS handshake timed out");
                    return;
                }
            };
            let service = {
                let activity = Arc::clone(&activity);
                let peer_budget = Arc::clone(&permits.1.2);
                service_fn(move |req| {
                    let shared = Arc::clone(&shared);
                    let peer_budget = Arc::clone(&peer_budget);
                    let running = Running::start(&activity);
                    async move {
                        let r = handle(shared, peer_budget, req).await;
                        drop(running);
                        Ok::<_, Infallible>(r)
                    }
                })
            };
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            // hyper's header timer also runs between requests of a kept-alive
            // HTTP/1.1 connection: IDLE, like the loop below (which bounds
            // the first request by FIRST_REQUEST). Its read buffer, and
            // HTTP/2's flow-control windows, are small: what a client can
            // make the server hold beyond the body budget is bounded by them
            // (256 connections x WINDOW).
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(IDLE)
                .max_buf_size(WINDOW as usize);
            builder
                .http2()
                .timer(TokioTimer::new())
                .max_concurrent_streams(16)
                .initial_stream_window_size(WINDOW)
                .initial_connection_window_size(WINDOW);
            let conn = builder.serve_connection(TokioIo::new(tls), service);
            tokio::pin!(conn);
            // Closed politely (HTTP/2: GOAWAY) when it sends no request in
            // time (idle, or never asking anything: it would hold a slot)
            // or when the injector stops; dropped if it is not gone
            // [`FIRST_REQUEST`] after that.
            let mut closing: Option<tokio::time::Instant> = None;
            loop {
                let wake = closing.or_else(|| activity.deadline());
                tokio::select! {
                    ended = conn.as_mut() => {
                        if let Err(e) = ended {
                            tracing::debug!("webhook connection ended with an error: {e}");
                        }
                        break;
                    }
                    _ = stopping.changed(), if closing.is_none() => {
                        conn.as_mut().graceful_shutdown();
                        closing = Some(tokio::time::Instant::now() + GRACE);
                    }
                    () = async {
                        match wake {
                            Some(at) => tokio::time::sleep_until(at).await,
                            None => tokio::time::sleep(Duration::from_millis(500)).await,
                        }
                    } => {
                        let now = tokio::time::Instant::now();
                        if closing.is_some_and(|at| at <= now) {
                            tracing::debug!("dropping a webhook connection that did not close in time");
                            break;
                        }
                        if closing.is_none() && activity.deadline().is_some_and(|at| at <= now) {
                            tracing::debug!("closing a webhook connection with no request in time");
                            conn.as_mut().graceful_shutdown();
                            closing = Some(now + FIRST_REQUEST);
                        }
                    }
                }
            }
        });
    }
    drop(listener);
    let _ = stop.send(true);
    // Every connection's slot back: all of them have ended.
    let all = u32::try_from(MAX_CONNECTIONS).unwrap_or(u32::MAX);
    if tokio::time::timeout(GRACE + Duration::from_secs(1), slots.acquire_many(all))
        .await
        .is_err()
    {
        tracing::info!("some connections were still open after {GRACE:?}; closing them");
    }
}
