//! A small HTTP/1.1 server loop on hyper 1.x: bound listener in, shutdown future in.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, header};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

/// Response body used by the small servers in this crate.
pub type Body = Full<Bytes>;

/// A boxed, sendable future.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Something that answers HTTP requests.
pub trait Handler: Send + Sync + 'static {
    fn call(&self, req: Request<Incoming>) -> BoxFuture<Response<Body>>;
}

/// How long in-flight requests may run after the shutdown future resolves.
const GRACE: Duration = Duration::from_secs(5);
/// A client that sends no complete request header in this time is dropped.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `handler` on `listener` until `shutdown` resolves, then lets
/// in-flight requests finish (up to a few seconds) and returns.
pub async fn serve<H, F>(listener: TcpListener, handler: Arc<H>, shutdown: F)
where
    H: Handler + ?Sized,
    F: Future<Output = ()>,
{
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    let _ = stream.set_nodelay(true);
                    let handler = Arc::clone(&handler);
                    let service = service_fn(move |req| {
                        let fut = handler.call(req);
                        async move { Ok::<_, Infallible>(fut.await) }
                    });
                    let conn = http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(HEADER_READ_TIMEOUT)
                        .serve_connection(TokioIo::new(stream), service);
                    let conn = graceful.watch(conn);
                    tokio::spawn(async move {
                        if let Err(e) = conn.await {
                            tracing::debug!("admin connection ended with an error: {e}");
                        }
                    });
                }
                Err(e) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    tracing::warn!("could not accept a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::debug!("some HTTP connections were still open after {GRACE:?}; closing them");
    }
}

/// A plain-text response.
pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    response(status, "text/plain; charset=utf-8", body)
}

/// A response with the given content type.
pub fn response(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    if let Ok(value) = header::HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    resp
}

/// Parses a listen address: `0.0.0.0:9464`, `[::]:8000`, or `:9187` (all interfaces).
pub fn parse_listen_addr(s: &str) -> Result<std::net::SocketAddr, String> {
    let s = s.trim();
    let full = if s.starts_with(':') {
        format!("0.0.0.0{s}")
    } else {
        s.to_string()
    };
    full.parse().map_err(|_| {
        format!(
            "`{s}` is not a listen address; write it like 0.0.0.0:9464, 127.0.0.1:9464 or :9464"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses() {
        assert_eq!(
            parse_listen_addr(":9187").unwrap().to_string(),
            "0.0.0.0:9187"
        );
        assert_eq!(parse_listen_addr("127.0.0.1:1").unwrap().port(), 1);
        assert!(parse_listen_addr("[::]:80").is_ok());
        assert!(
            parse_listen_addr("localhost")
                .unwrap_err()
                .contains("0.0.0.0:9464")
        );
    }
}
