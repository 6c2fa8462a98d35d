//! The HTTPS server: TLS handshakes (bounded in time and in concurrent
//! connections), HTTP/1.1 or HTTP/2 by ALPN, `POST /mutate` to the
//! reviewer; on shutdown it stops accepting and lets in-flight reviews end.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::review::{self, Reviewer};

/// The largest AdmissionReview read (the API server's own limit is 3 MiB objects).
pub const MAX_BODY: usize = 8 << 20;
/// How much of a too large body is read (and dropped) before answering.
const DRAIN_LIMIT: usize = 4 * MAX_BODY;
/// A request body must arrive within this time.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more wait to be accepted.
const MAX_CONNECTIONS: usize = 256;
/// A client that does not finish the TLS handshake or send a request header in this time is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
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

async fn handle(reviewer: Arc<Reviewer>, req: Request<Incoming>) -> Response<Body> {
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
    let answer = match tokio::time::timeout(BODY_TIMEOUT, read_body(req.into_body())).await {
        Ok(Ok(body)) => reviewer.review(&body, started).await,
        Ok(Err(why)) => reviewer.count(review::malformed("", &why)),
        Err(_) => reviewer.count(review::malformed(
            "",
            &format!("the body did not arrive within {BODY_TIMEOUT:?}"),
        )),
    };
    tracing::debug!("review: {}", answer.outcome.as_str());
    let body = serde_json::to_vec(&answer.body).unwrap_or_default();
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

/// Reads a request body of at most [`MAX_BODY`] bytes. A larger one is
/// read on (and dropped) up to [`DRAIN_LIMIT`], so that the client, which
/// is still sending it, gets the answer rather than a reset connection.
async fn read_body(mut body: Incoming) -> Result<Vec<u8>, String> {
    let too_large = || format!("the body is larger than {} MiB", MAX_BODY >> 20);
    let mut buf = Vec::new();
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("the body could not be read: {e}"))?;
        if let Ok(data) = frame.into_data() {
            total = total.saturating_add(data.len());
            if total <= MAX_BODY {
                buf.extend_from_slice(&data);
            } else if total > DRAIN_LIMIT {
                return Err(too_large());
            }
        }
    }
    if total > MAX_BODY {
        return Err(too_large());
    }
    Ok(buf)
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
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = Arc::clone(&slots).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!("could not accept a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let acceptor = acceptor.clone();
        let reviewer = Arc::clone(&reviewer);
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _permit = permit;
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
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
            let service = service_fn(move |req| {
                let reviewer = Arc::clone(&reviewer);
                async move { Ok::<_, Infallible>(handle(reviewer, req).await) }
            });
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(HANDSHAKE_TIMEOUT);
            builder
                .http2()
                .timer(TokioTimer::new())
                .max_concurrent_streams(64);
            let conn = builder.serve_connection(TokioIo::new(tls), service);
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!("webhook connection ended with an error: {e}");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::info!("some connections were still open after {GRACE:?}; closing them");
    }
}
