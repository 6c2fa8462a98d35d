//! The demo's two services, standing in for the seed's Python apps: they
//! know nothing about tracing except copying trace headers from the request
//! they got to the request they make (what the seed's apps do).
//!
//! - `GET /...`: answers "Hello from NAME"; with a downstream URL it first
//!   calls it (through the proxy sidecar) and appends its answer.
//! - `POST /upload`: reads the body as it streams and answers its size.
//! - `GET /bytes/N`: streams N bytes.
//!
//! Served over HTTP/1.1 and h2c.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// Headers the seed's apps copy from inbound to outbound requests.
pub const TRACE_HEADERS: [&str; 11] = [
    "x-request-id",
    "traceparent",
    "tracestate",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "x-ot-span-context",
    "uber-trace-id",
];

type Body = BoxBody<Bytes, Infallible>;

struct Service {
    name: String,
    downstream: Option<String>,
    client: Client<HttpConnector, Full<Bytes>>,
}

/// Serves the demo service on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    name: String,
    downstream: Option<String>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let service = Arc::new(Service {
        name,
        downstream,
        client: Client::builder(TokioExecutor::new()).build_http(),
    });
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, _peer): (_, SocketAddr) = tokio::select! {
            a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
            () = &mut shutdown => break,
        };
        let svc = Arc::clone(&service);
        let conn = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
            .serve_connection(
                TokioIo::new(stream),
                hyper::service::service_fn(move |req| {
                    let svc = Arc::clone(&svc);
                    async move { Ok::<_, Infallible>(svc.handle(req).await) }
                }),
            )
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), graceful.shutdown()).await;
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(body)).boxed());
    *resp.status_mut() = status;
    resp
}

impl Service {
    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path().to_string();
        if path == "/upload" {
            let mut body = req.into_body();
            let mut total: u64 = 0;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => total += f.data_ref().map_or(0, |d| d.len() as u64),
                    Err(e) => return text(StatusCode::BAD_REQUEST, format!("body error: {e}\n")),
                }
            }
            return text(StatusCode::OK, format!("{total}\n"));
        }
        if let Some(n) = path
            .strip_prefix("/bytes/")
            .and_then(|n| n.parse::<u64>().ok())
        {
            const CHUNK: usize = 64 * 1024;
            let chunk = Bytes::from(vec![b'x'; CHUNK]);
            let stream = futures_util::stream::unfold(n, move |left| {
                let chunk = chunk.clone();
                async move {
                    if left == 0 {
                        return None;
                    }
                    let take = left.min(CHUNK as u64) as usize;
                    Some((
                        Ok::<_, Infallible>(Frame::data(chunk.slice(..take))),
                        left - take as u64,
                    ))
                }
            });
            return Response::new(BodyExt::boxed(StreamBody::new(stream)));
        }
        let mut answer = format!("Hello from {} ({path})\n", self.name);
        if let Some(url) = &self.downstream {
            let mut out = Request::get(url.as_str());
            for name in TRACE_HEADERS {
                for value in req.headers().get_all(name) {
                    out = out.header(name, value);
                }
            }
            let reply = match out.body(Full::new(Bytes::new())) {
                Ok(r) => self.client.request(r).await,
                Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
            };
            match reply {
                Ok(resp) => {
                    let status = resp.status();
                    let body = resp
                        .into_body()
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    answer.push_str(&String::from_utf8_lossy(&body));
                    if !status.is_success() {
                        return text(StatusCode::BAD_GATEWAY, answer);
                    }
                }
                Err(e) => {
                    return text(
                        StatusCode::BAD_GATEWAY,
                        format!("{answer}downstream failed: {e}\n"),
                    );
                }
            }
        }
        text(StatusCode::OK, answer)
    }
}
