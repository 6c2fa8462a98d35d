//! Connections to one upstream, reused across requests: keep-alive HTTP/1.1
//! connections (plain TCP streams for the fast path (`fast`), hyper
//! connections for the general path (`forward`)), or for an h2c upstream one
//! HTTP/2 connection that carries every request at once.
//!
//! A connection is taken out of the pool for one request and put back when
//! that request's response has been read exactly to its end (see
//! `forward::Tracked` and `fast::relay_body`), so a connection is never
//! shared by two requests in flight. Most recently used first; connections
//! idle longer than the idle timeout, or closed by the upstream, are dropped.
//! The upstream's host name is resolved again for every new connection
//! (Kubernetes Services move).

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::client::conn::http1::{self, SendRequest};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use crate::body::ProxyBody;

/// Most idle connections kept per upstream.
const MAX_IDLE: usize = 256;

/// Why no connection could be had.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot connect to {upstream}: {source}")]
    Io { upstream: String, source: io::Error },
    #[error("no connection to {upstream} within {timeout:?}")]
    Timeout { upstream: String, timeout: Duration },
    #[error("HTTP handshake with {upstream} failed: {source}")]
    Handshake {
        upstream: String,
        source: hyper::Error,
    },
}

pub(crate) struct Pool {
    upstream: String,
    connect_timeout: Duration,
    idle_timeout: Duration,
    /// hyper's HTTP/1.1 connections, for requests on the general path.
    idle: Idle<SendRequest<ProxyBody>>,
    /// Plain connections for the HTTP/1.1 fast path (`fast`).
    streams: Idle<TcpStream>,
    /// The HTTP/2 connection (h2c routes), made on first use and again
    /// once it closes; the lock also makes concurrent first requests share
    /// one handshake.
    h2: tokio::sync::Mutex<Option<http2::SendRequest<ProxyBody>>>,
}

/// Idle connections: oldest at the front; taken from and returned to the back.
struct Idle<T>(Mutex<VecDeque<(T, Instant)>>);

impl<T> Idle<T> {
    fn new() -> Self {
        Self(Mutex::new(VecDeque::new()))
    }

    fn push(&self, conn: T, idle_timeout: Duration) {
        let now = Instant::now();
        let mut idle = self.0.lock().unwrap_or_else(|e| e.into_inner());
        while idle
            .front()
            .is_some_and(|(_, since)| now.duration_since(*since) >= idle_timeout)
        {
            idle.pop_front();
        }
        if idle.len() < MAX_IDLE {
            idle.push_back((conn, now));
        }
    }

    /// The most recently used connection that is younger than `idle_timeout`
    /// and still `usable`; the others on the way are dropped.
    fn pop(&self, idle_timeout: Duration, usable: impl Fn(&mut T) -> bool) -> Option<T> {
        let mut idle = self.0.lock().unwrap_or_else(|e| e.into_inner());
        while let Some((mut conn, since)) = idle.pop_back() {
            if since.elapsed() < idle_timeout && usable(&mut conn) {
                return Some(conn);
            }
        }
        None
    }
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("upstream", &self.upstream)
            .finish_non_exhaustive()
    }
}

impl Pool {
    pub fn new(upstream: &str, connect_timeout: Duration, idle_timeout: Duration) -> Self {
        Self {
            upstream: upstream.to_string(),
            connect_timeout,
            idle_timeout,
            idle: Idle::new(),
            streams: Idle::new(),
            h2: tokio::sync::Mutex::new(None),
        }
    }

    /// A handle on the HTTP/2 connection to the upstream (h2c), opened if
    /// there is none or the last one closed. Requests on it run at once, up
    /// to the upstream's stream limit.
    pub async fn h2(&self) -> Result<http2::SendRequest<ProxyBody>, ConnectError> {
        let mut conn = self.h2.lock().await;
        if let Some(sender) = conn.as_ref().filter(|s| !s.is_closed()) {
            return Ok(sender.clone());
        }
        let stream = self.open_stream().await?;
        let handshake = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(TokioIo::new(stream))
            .await;
        let sender = self.run_connection(handshake)?;
        *conn = Some(sender.clone());
        Ok(sender)
    }

    /// A connection ready for one request: an idle one if any still works,
    /// else a new one.
    pub async fn checkout(&self) -> Result<SendRequest<ProxyBody>, ConnectError> {
        if let Some(sender) = self.pop_idle() {
            return Ok(sender);
        }
        self.connect().await
    }

    /// Returns a connection whose response was read to its end. One still
    /// busy (its request body still streaming, or the connection task not
    /// yet through the response) joins the idle ones only once it is ready,
    /// so no request ever waits behind another on a pooled connection.
    pub fn checkin(self: &Arc<Self>, mut sender: SendRequest<ProxyBody>) {
        if sender.is_closed() {
            return;
        }
        if !sender.is_ready() {
            let pool = Arc::clone(self);
            tokio::spawn(async move {
                let ready = tokio::time::timeout(pool.idle_timeout, sender.ready()).await;
                if matches!(ready, Ok(Ok(()))) {
                    pool.push_idle(sender);
                }
            });
            return;
        }
        self.push_idle(sender);
    }

    fn push_idle(&self, sender: SendRequest<ProxyBody>) {
        self.idle.push(sender, self.idle_timeout);
    }

    fn pop_idle(&self) -> Option<SendRequest<ProxyBody>> {
        self.idle.pop(self.idle_timeout, |sender| sender.is_ready())
    }

    /// A plain connection for one request of the fast path (an idle one if
    /// `may_reuse` and one still works, else a new one), and whether it was
    /// used before (then the upstream may have closed it just now).
    pub async fn checkout_stream(
        &self,
        may_reuse: bool,
    ) -> Result<(TcpStream, bool), ConnectError> {
        let alive = |s: &mut TcpStream| {
            // Nothing to read and no end of stream: the upstream keeps it open.
            matches!(s.try_read(&mut [0u8; 1]), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
        };
        if let Some(stream) = may_reuse
            .then(|| self.streams.pop(self.idle_timeout, alive))
            .flatten()
        {
            return Ok((stream, true));
        }
        Ok((self.open_stream().await?, false))
    }

    /// Returns a plain connection whose response was read exactly to its end.
    pub fn checkin_stream(&self, stream: TcpStream) {
        self.streams.push(stream, self.idle_timeout);
    }

    /// A new TCP connection to the upstream (its name resolved afresh),
    /// within the connect timeout: for the pool, and for upgrades, which
    /// take a connection of their own.
    pub async fn open_stream(&self) -> Result<TcpStream, ConnectError> {
        let stream =
            tokio::time::timeout(self.connect_timeout, TcpStream::connect(&*self.upstream))
                .await
                .map_err(|_| ConnectError::Timeout {
                    upstream: self.upstream.clone(),
                    timeout: self.connect_timeout,
                })?
                .map_err(|source| ConnectError::Io {
                    upstream: self.upstream.clone(),
                    source,
                })?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    async fn connect(&self) -> Result<SendRequest<ProxyBody>, ConnectError> {
        let stream = self.open_stream().await?;
        let handshake = http1::Builder::new().handshake(TokioIo::new(stream)).await;
        self.run_connection(handshake)
    }

    /// After a handshake: the connection runs on a task of its own; its
    /// sender is returned.
    fn run_connection<S, C>(&self, handshake: hyper::Result<(S, C)>) -> Result<S, ConnectError>
    where
        C: std::future::Future<Output = hyper::Result<()>> + Send + 'static,
    {
        let (sender, connection) = handshake.map_err(|source| ConnectError::Handshake {
            upstream: self.upstream.clone(),
            source,
        })?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("upstream connection ended: {e}");
            }
        });
        Ok(sender)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http::{Request, Response};
    use http_body_util::{BodyExt, Empty};
    use hyper::service::service_fn;
    use tokio::net::TcpListener;

    use super::*;

    /// An upstream answering `ok` on keep-alive connections (or closing each
    /// after one response), counting the connections it accepted.
    async fn upstream(keep_alive: bool) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let service = service_fn(|_req| async {
                        Ok::<_, std::convert::Infallible>(Response::new(http_body_util::Full::new(
                            bytes::Bytes::from_static(b"ok"),
                        )))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(keep_alive)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (addr, accepted)
    }

    async fn get(pool: &Arc<Pool>) -> String {
        let mut sender = pool.checkout().await.unwrap();
        let req = Request::get("/")
            .header("host", "upstream")
            .body(Empty::new().map_err(|never| match never {}).boxed())
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        pool.checkin(sender);
        String::from_utf8(body.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn one_connection_serves_requests_one_after_another() {
        let (addr, accepted) = upstream(true).await;
        let pool = Arc::new(Pool::new(
            &addr,
            Duration::from_secs(2),
            Duration::from_secs(60),
        ));
        for _ in 0..5 {
            assert_eq!(get(&pool).await, "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn connections_the_upstream_closes_are_replaced() {
        let (addr, accepted) = upstream(false).await;
        let pool = Arc::new(Pool::new(
            &addr,
            Duration::from_secs(2),
            Duration::from_secs(60),
        ));
        for _ in 0..3 {
            assert_eq!(get(&pool).await, "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn idle_connections_expire() {
        let (addr, accepted) = upstream(true).await;
        let pool = Arc::new(Pool::new(&addr, Duration::from_secs(2), Duration::ZERO));
        get(&pool).await;
        get(&pool).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let pool = Pool::new(
            &format!("127.0.0.1:{port}"),
            Duration::from_secs(2),
            Duration::from_secs(60),
        );
        let err = pool.checkout().await.unwrap_err();
        assert!(matches!(err, ConnectError::Io { .. }), "{err}");
        assert!(err.to_string().starts_with("cannot connect to 127.0.0.1:"));
    }
}
