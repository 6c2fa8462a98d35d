//! The proxy configuration: a short YAML file (the three Envoy files of the
//! seed's demo in a few lines each), or flags for the single-route case.

use sidecar_telemetry::yaml::describe_error as describe_yaml_error;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Whether a listener takes traffic into its service or out of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Requests to the local service: SERVER spans.
    #[default]
    Inbound,
    /// Requests from the local service (or a front proxy) to others: CLIENT spans.
    Outbound,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Path prefix this route takes (`/` for all).
    #[serde(default = "slash")]
    pub prefix: String,
    /// `host:port` of the upstream; host names are resolved for each new connection.
    pub upstream: String,
    /// Span name (Envoy's decorator operation); the Host header when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
    /// Talk to the upstream in HTTP/2 without TLS (h2c).
    #[serde(default)]
    pub http2: bool,
}

fn slash() -> String {
    "/".into()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    pub name: String,
    pub listen: SocketAddr,
    #[serde(default)]
    pub direction: Direction,
    /// A front proxy sets this: a new `x-request-id` (and trace) when missing.
    #[serde(default)]
    pub generate_request_id: bool,
    pub routes: Vec<Route>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Tracing {
    /// Zipkin v2 JSON endpoint, e.g. `http://jaeger-collector:9411/api/v2/spans`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zipkin: Option<String>,
    /// OTLP/HTTP protobuf endpoint, e.g. `http://jaeger-collector:4318/v1/traces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otlp: Option<String>,
    /// Fraction of new traces sampled (an incoming decision always wins).
    #[serde(default = "one")]
    pub sample_rate: f64,
}

fn one() -> f64 {
    1.0
}

/// Timeouts, written like `300ms`, `5s`, `1m`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    /// Opening a connection to an upstream (then 503).
    #[serde(with = "dur", default = "d_connect")]
    pub connect: Duration,
    /// From sending a request upstream to its response headers (then 504).
    #[serde(with = "dur", default = "d_request")]
    pub request: Duration,
    /// A client must send a complete request header within this (then the connection is closed).
    #[serde(with = "dur", default = "d_header")]
    pub header_read: Duration,
    /// Idle keep-alive connections (both sides) are closed after this.
    #[serde(with = "dur", default = "d_idle")]
    pub idle: Duration,
    /// A request whose body bytes stop moving, either way, for this long is
    /// abandoned: an upstream that stops sending, a client that stops
    /// reading or sending (Envoy's stream idle timeout; long gRPC streams
    /// that are quiet for longer need it raised).
    #[serde(with = "dur", default = "d_stream_idle")]
    pub stream_idle: Duration,
}

fn d_connect() -> Duration {
    Duration::from_secs(2)
}
fn d_request() -> Duration {
    Duration::from_secs(15)
}
fn d_header() -> Duration {
    Duration::from_secs(10)
}
fn d_idle() -> Duration {
    Duration::from_secs(60)
}
fn d_stream_idle() -> Duration {
    Duration::from_secs(300)
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: d_connect(),
            request: d_request(),
            header_read: d_header(),
            idle: d_idle(),
            stream_idle: d_stream_idle(),
        }
    }
}

mod dur {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&sidecar_telemetry::duration::format(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        sidecar_telemetry::duration::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// The whole configuration (file, then flags on top).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Service name in spans (`localEndpoint.serviceName`).
    pub service: String,
    #[serde(default)]
    pub tracing: Tracing,
    #[serde(default)]
    pub listeners: Vec<Listener>,
    /// Admin server: /live /ready /metrics /config; `off` to disable.
    #[serde(default = "admin_default")]
    pub admin: String,
    #[serde(default)]
    pub timeouts: Timeouts,
    /// Longest wait for in-flight requests on SIGTERM.
    #[serde(with = "dur", default = "d_drain")]
    pub drain_timeout: Duration,
    /// Largest request header block accepted (then 431).
    #[serde(default = "max_header_default")]
    pub max_header_bytes: usize,
    /// Serve common HTTP/1.1 requests on the fast path (false: every request
    /// takes the general path on hyper; the same rules apply, at more CPU
    /// per request). A safety valve, should the fast path ever misbehave.
    #[serde(default = "yes")]
    pub fast_path: bool,
}

fn yes() -> bool {
    true
}

fn admin_default() -> String {
    sidecar_telemetry::ports::all_interfaces(sidecar_telemetry::ports::PROXY)
}
fn d_drain() -> Duration {
    Duration::from_secs(10)
}
fn max_header_default() -> usize {
    64 * 1024
}

impl Default for Config {
    fn default() -> Self {
        Self {
            service: String::new(),
            tracing: Tracing {
                sample_rate: 1.0,
                ..Tracing::default()
            },
            listeners: Vec::new(),
            admin: admin_default(),
            timeouts: Timeouts::default(),
            drain_timeout: d_drain(),
            max_header_bytes: max_header_default(),
            fast_path: true,
        }
    }
}

/// A configuration mistake, said so the user can fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("{0}")]
    Invalid(String),
}

impl Config {
    /// Parses a YAML config; unknown keys and bad values name the line.
    pub fn from_yaml(text: &str, path: &str) -> Result<Self, ConfigError> {
        serde_norway::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_string(),
            message: describe_yaml_error(&e),
        })
    }

    pub fn from_file(path: &str) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_string(),
            source,
        })?;
        Self::from_yaml(&text, path)
    }

    /// Checks what serde cannot: names, prefixes, upstream addresses, rates.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.service.trim().is_empty() {
            return bad(
                "the service name is missing: set `service:` in the config or --service".into(),
            );
        }
        if self.listeners.is_empty() {
            return bad(
                "no listener: add `listeners:` to the config, or give --listen and --upstream"
                    .into(),
            );
        }
        if !(0.0..=1.0).contains(&self.tracing.sample_rate) {
            return bad(format!(
                "sample_rate {} is not between 0 and 1",
                self.tracing.sample_rate
            ));
        }
        for url in [&self.tracing.zipkin, &self.tracing.otlp]
            .into_iter()
            .flatten()
        {
            if !url.starts_with("http://") {
                return bad(format!(
                    "collector URL `{url}` must start with http:// (like http://jaeger-collector:9411/api/v2/spans)"
                ));
            }
            if url.parse::<http::Uri>().is_err() {
                return bad(format!("collector URL `{url}` is not a valid URL"));
            }
        }
        let mut addrs = std::collections::HashSet::new();
        for l in &self.listeners {
            if !addrs.insert(l.listen) {
                return bad(format!("two listeners use {}", l.listen));
            }
            if l.routes.is_empty() {
                return bad(format!("listener `{}` has no routes", l.name));
            }
            for r in &l.routes {
                if !r.prefix.starts_with('/') {
                    return bad(format!(
                        "route prefix `{}` of listener `{}` must start with /",
                        r.prefix, l.name
                    ));
                }
                upstream_authority(&r.upstream).map_err(ConfigError::Invalid)?;
            }
        }
        Ok(())
    }
}

/// Checks an upstream `host:port` and returns it as a URI authority.
pub fn upstream_authority(upstream: &str) -> Result<http::uri::Authority, String> {
    let (host, port) = upstream.rsplit_once(':').ok_or_else(|| {
        format!("upstream `{upstream}` needs a port, like 127.0.0.1:8080 or service2:8000")
    })?;
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(format!(
            "upstream `{upstream}` is not host:port, like 127.0.0.1:8080 or service2:8000"
        ));
    }
    upstream
        .parse()
        .map_err(|_| format!("upstream `{upstream}` is not a valid host:port"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEMO: &str = r#"
service: service1                 # service name in spans
tracing:
  zipkin: http://jaeger-collector:9411/api/v2/spans
  otlp: http://jaeger-collector:4318/v1/traces
  sample_rate: 1.0
listeners:
  - name: inbound
    listen: 0.0.0.0:8000
    direction: inbound
    generate_request_id: false
    routes:
      - prefix: /
        upstream: 127.0.0.1:8080
        operation: checkAvailability
  - name: outbound
    listen: 127.0.0.1:9000
    direction: outbound
    routes:
      - prefix: /svc/2
        upstream: service2:8000
        http2: true
        operation: checkStock
admin: 0.0.0.0:9901
"#;

    #[test]
    fn the_issue_example_parses() {
        let c = Config::from_yaml(DEMO, "demo.yaml").unwrap();
        c.validate().unwrap();
        assert_eq!(c.service, "service1");
        assert_eq!(c.listeners.len(), 2);
        assert_eq!(c.listeners[1].direction, Direction::Outbound);
        assert!(c.listeners[1].routes[0].http2);
        assert_eq!(
            c.listeners[0].routes[0].operation.as_deref(),
            Some("checkAvailability")
        );
        assert_eq!(c.timeouts, Timeouts::default());
        assert_eq!(c.drain_timeout, Duration::from_secs(10));
        assert!(c.fast_path);
        let off = Config::from_yaml(&format!("{DEMO}fast_path: false\n"), "d").unwrap();
        assert!(!off.fast_path);
    }

    #[test]
    fn unknown_keys_name_the_key_and_line() {
        let text = DEMO.replace(
            "        upstream: service2:8000",
            "        upstrem: service2:8000",
        );
        let err = Config::from_yaml(&text, "demo.yaml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("upstrem"), "{err}");
        assert!(err.contains("line 21"), "{err}");
        let err = Config::from_yaml("service: x\ncolour: blue\n", "c.yaml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("colour") && err.contains("line 2"), "{err}");
    }

    #[test]
    fn bad_values_are_explained() {
        let err = Config::from_yaml("service: x\ntimeouts:\n  connect: 5\n", "c.yaml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("5ms or 5s"), "{err}");
        let mut c = Config::from_yaml(DEMO, "d").unwrap();
        c.listeners[0].routes[0].upstream = "localhost".into();
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("needs a port")
        );
        let mut c = Config::from_yaml(DEMO, "d").unwrap();
        c.tracing.zipkin = Some("https://x/api/v2/spans".into());
        assert!(c.validate().unwrap_err().to_string().contains("http://"));
        let mut c = Config::from_yaml(DEMO, "d").unwrap();
        c.tracing.sample_rate = 2.0;
        assert!(c.validate().is_err());
        let c = Config {
            service: "s".into(),
            ..Config::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("--listen"));
    }

    #[test]
    fn round_trips_through_yaml() {
        let c = Config::from_yaml(DEMO, "d").unwrap();
        let text = serde_norway::to_string(&c).unwrap();
        assert_eq!(Config::from_yaml(&text, "again").unwrap(), c);
    }
}
