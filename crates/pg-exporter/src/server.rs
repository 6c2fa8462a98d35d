//! The exporter's HTTP endpoints: the telemetry path, `/probe`, `/`, `/live`, `/ready`.
//!
//! The exporter runs no admin server (`telemetry::admin`): like upstream it
//! serves everything on one port (`--web.listen-address`, alias `--admin`),
//! its metrics at the telemetry path with the `process_*` families appended,
//! and `/live` and `/ready` answered as the admin server answers them
//! ([`health_answer`]), from the `Health` that `telemetry::serve` hands it.

use std::sync::Arc;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use prometheus_client::registry::Registry;
use sidecar_telemetry::Health;
use sidecar_telemetry::admin::{encode_metrics, health_answer};
use sidecar_telemetry::http::{self, Body, BoxFuture, Handler};

use crate::exporter::{Exporter, ProbeError};

const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A scrape's text as a response body.
struct SharedText(Arc<String>);

impl AsRef<[u8]> for SharedText {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

/// Routes requests to the exporter.
pub struct Endpoints {
    pub exporter: Arc<Exporter>,
    /// The exporter's own metrics (`process_*`), appended to every scrape.
    pub registry: Arc<Registry>,
    pub health: Health,
    pub telemetry_path: String,
}

impl Handler for Endpoints {
    fn call(&self, req: Request<Incoming>) -> BoxFuture<Response<Body>> {
        let path = req.uri().path().to_string();
        let query = req.uri().query().unwrap_or("").to_string();
        let method = req.method().clone();
        let exporter = Arc::clone(&self.exporter);
        let registry = Arc::clone(&self.registry);
        let health = self.health.clone();
        let telemetry_path = self.telemetry_path.clone();
        Box::pin(async move {
            if method != Method::GET && method != Method::HEAD {
                return http::text(StatusCode::METHOD_NOT_ALLOWED, "only GET is served\n");
            }
            if path == telemetry_path {
                let text = exporter
                    .scrape(|text| text.push_str(&encode_metrics(&registry)))
                    .await;
                // Scrapes that share a collection share its text, uncopied.
                let body = Bytes::from_owner(SharedText(text));
                return http::response(StatusCode::OK, CONTENT_TYPE, body);
            }
            match path.as_str() {
                "/probe" => match query_param(&query, "target") {
                    None => http::text(
                        StatusCode::BAD_REQUEST,
                        "give the server to probe: /probe?target=host:5432/dbname?sslmode=disable\n",
                    ),
                    Some(target) => match exporter
                        .probe(
                            &target,
                            query_param(&query, "auth_module")
                                .filter(|m| !m.is_empty())
                                .as_deref(),
                        )
                        .await
                    {
                        Ok(body) => http::response(StatusCode::OK, CONTENT_TYPE, body),
                        Err(e @ ProbeError::Busy) => {
                            http::text(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n"))
                        }
                        Err(e) => http::text(StatusCode::BAD_REQUEST, format!("{e}\n")),
                    },
                },
                "/" => http::response(
                    StatusCode::OK,
                    "text/html; charset=utf-8",
                    landing(&telemetry_path, &exporter.describe()),
                ),
                _ => health_answer(&health, &path).unwrap_or_else(|| {
                    http::text(
                        StatusCode::NOT_FOUND,
                        format!("not found; metrics are at {telemetry_path}\n"),
                    )
                }),
            }
        })
    }
}

fn landing(telemetry_path: &str, source: &str) -> String {
    let source = source.replace('&', "&amp;").replace('<', "&lt;");
    format!(
        "<!doctype html><html><head><title>sidecar postgres-exporter</title></head><body>\
         <h1>sidecar postgres-exporter</h1><p>PostgreSQL: {source}</p><ul>\
         <li><a href=\"{telemetry_path}\">{telemetry_path}</a>: metrics</li>\
         <li><code>/probe?target=host:5432/db&amp;auth_module=NAME</code>: metrics of another server</li>\
         <li><a href=\"/live\">/live</a>, <a href=\"/ready\">/ready</a>: health</li></ul></body></html>\n"
    )
}

/// The decoded value of `key` in a query string.
pub fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k) == key).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                Some(b) => {
                    out.push(b);
                    i += 2;
                }
                None => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params_are_decoded() {
        assert_eq!(
            query_param("target=db%3A5432%2Fapp%3Fsslmode%3Ddisable&x=1", "target").as_deref(),
            Some("db:5432/app?sslmode=disable")
        );
        assert_eq!(
            query_param("a=1&target=h+1", "target").as_deref(),
            Some("h 1")
        );
        assert_eq!(query_param("a=1", "target"), None);
        assert_eq!(
            query_param("target=%zz%4", "target").as_deref(),
            Some("%zz%4")
        );
    }
}
