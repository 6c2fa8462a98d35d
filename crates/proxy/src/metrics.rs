//! The proxy's own metrics, registered under `sidecar_proxy_*`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub listener: String,
    pub route: String,
    pub method: String,
    pub status_class: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GrpcLabels {
    pub listener: String,
    pub route: String,
    pub grpc_code: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub listener: String,
    pub route: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    pub listener: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectLabels {
    pub listener: String,
    pub reason: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CollectorLabels {
    pub collector: String,
}

fn latency_histogram() -> Histogram {
    Histogram::new([
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ])
}

#[derive(Debug, Clone)]
pub struct Metrics {
    pub requests: Family<RequestLabels, Counter>,
    pub grpc_requests: Family<GrpcLabels, Counter>,
    pub duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
    pub upstream_connect_errors: Family<RouteLabels, Counter>,
    pub active_connections: Family<ListenerLabels, Gauge>,
    pub rejected: Family<RejectLabels, Counter>,
    pub spans_exported: Family<CollectorLabels, Counter>,
    pub span_export_errors: Family<CollectorLabels, Counter>,
    pub spans_dropped: Counter,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            requests: Family::default(),
            grpc_requests: Family::default(),
            duration: Family::new_with_constructor(latency_histogram),
            upstream_connect_errors: Family::default(),
            active_connections: Family::default(),
            rejected: Family::default(),
            spans_exported: Family::default(),
            span_export_errors: Family::default(),
            spans_dropped: Counter::default(),
        };
        let r = registry.sub_registry_with_prefix("sidecar_proxy");
        r.register(
            "requests",
            "Requests served, by listener, route, method and status class (1xx..5xx; \
             `cancelled`: the client went away before a response)",
            m.requests.clone(),
        );
        r.register(
            "grpc_requests",
            "gRPC calls (content-type application/grpc), by listener, route and gRPC status \
             (OK, Canceled, DeadlineExceeded, ...: from grpc-status, or deduced for calls the \
             client cancelled)",
            m.grpc_requests.clone(),
        );
        r.register(
            "request_duration_seconds",
            "Time from a request's arrival to the end of its response body",
            m.duration.clone(),
        );
        r.register(
            "upstream_connect_errors",
            "Upstream connections that could not be opened",
            m.upstream_connect_errors.clone(),
        );
        r.register(
            "active_connections",
            "Client connections open now",
            m.active_connections.clone(),
        );
        r.register(
            "rejected_requests",
            "Requests refused before routing (reason: malformed, header_too_large, bad_host, \
             bad_connection_header)",
            m.rejected.clone(),
        );
        r.register(
            "spans_exported",
            "Spans accepted by a collector",
            m.spans_exported.clone(),
        );
        r.register(
            "span_export_errors",
            "Span batches a collector did not accept (its spans are dropped)",
            m.span_export_errors.clone(),
        );
        r.register(
            "spans_dropped",
            "Spans dropped because the export queue was full or the collector failed",
            m.spans_dropped.clone(),
        );
        m
    }
}

const METHODS: [&str; 10] = [
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE", "OTHER",
];
const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "cancelled"];

/// gRPC status codes by number (grpc/doc/statuscodes.md), named as
/// go-grpc-prometheus names them.
pub const GRPC_CODES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

/// A method's index in the bounded label set (`OTHER` for the rest).
pub fn method_index(method: &str) -> usize {
    METHODS[..9].iter().position(|m| *m == method).unwrap_or(9)
}

/// The name of a known method's index (None for `OTHER`).
pub fn method_name(index: usize) -> Option<&'static str> {
    METHODS[..9].get(index).copied()
}

/// The status class of a response; status 0 (no response: the client went
/// away first) is `cancelled`.
fn class_index(status: u16) -> usize {
    match status {
        0 => 5,
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    }
}

/// The series of one route, looked up once: recording a request allocates nothing.
#[derive(Debug)]
pub struct RouteStats {
    listener: String,
    route: String,
    requests: Family<RequestLabels, Counter>,
    by_method_and_class: [[std::sync::OnceLock<Counter>; 6]; 10],
    /// By gRPC code (index 17: a code outside 0..=16, `Other`).
    grpc: [std::sync::OnceLock<Counter>; 18],
    grpc_requests: Family<GrpcLabels, Counter>,
    duration: Histogram,
}

impl RouteStats {
    pub fn new(metrics: &Metrics, listener: &str, route: &str) -> Self {
        Self {
            listener: listener.to_string(),
            route: route.to_string(),
            requests: metrics.requests.clone(),
            by_method_and_class: Default::default(),
            grpc: Default::default(),
            grpc_requests: metrics.grpc_requests.clone(),
            duration: metrics
                .duration
                .get_or_create(&RouteLabels {
                    listener: listener.to_string(),
                    route: route.to_string(),
                })
                .clone(),
        }
    }

    pub fn record(&self, method: usize, status: u16, seconds: f64) {
        let (m, c) = (method.min(9), class_index(status));
        self.by_method_and_class[m][c]
            .get_or_init(|| {
                self.requests
                    .get_or_create(&RequestLabels {
                        listener: self.listener.clone(),
                        route: self.route.clone(),
                        method: METHODS[m].to_string(),
                        status_class: CLASSES[c].to_string(),
                    })
                    .clone()
            })
            .inc();
        self.duration.observe(seconds);
    }

    /// Counts a gRPC call's outcome.
    pub fn record_grpc(&self, code: u8) {
        let i = usize::from(code).min(GRPC_CODES.len());
        self.grpc[i]
            .get_or_init(|| {
                self.grpc_requests
                    .get_or_create(&GrpcLabels {
                        listener: self.listener.clone(),
                        route: self.route.clone(),
                        grpc_code: GRPC_CODES.get(i).copied().unwrap_or("Other").to_string(),
                    })
                    .clone()
            })
            .inc();
    }
}
