//! Spans as the proxy records them, and their two wire forms: Zipkin v2 JSON
//! (what the seed's Envoy sent to Jaeger) and OTLP protobuf.

use std::net::IpAddr;
use std::sync::Arc;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Status, span, status};
use sidecar_telemetry::trace::{TraceId, hex16};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Client,
    Server,
}

/// A span's name or tag value: most are shared or fixed, so a span costs
/// few allocations (the proxy makes one per request).
#[derive(Debug, Clone)]
pub enum Text {
    Static(&'static str),
    Shared(Arc<str>),
    Owned(String),
}

impl Text {
    pub fn as_str(&self) -> &str {
        match self {
            Text::Static(s) => s,
            Text::Shared(s) => s,
            Text::Owned(s) => s,
        }
    }
}

impl std::fmt::Display for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Default for Text {
    fn default() -> Self {
        Text::Static("")
    }
}

impl From<&'static str> for Text {
    fn from(s: &'static str) -> Self {
        Text::Static(s)
    }
}

impl From<String> for Text {
    fn from(s: String) -> Self {
        Text::Owned(s)
    }
}

/// One finished span.
#[derive(Debug, Clone)]
pub struct Span {
    pub trace_id: TraceId,
    pub id: u64,
    pub parent_id: Option<u64>,
    pub name: Text,
    pub kind: Kind,
    /// Epoch microseconds at the request's arrival.
    pub start_us: u64,
    /// Microseconds until the end of the response body (at least 1).
    pub duration_us: u64,
    pub service: Arc<str>,
    pub local_ip: Option<IpAddr>,
    pub local_port: Option<u16>,
    pub tags: HttpTags,
    pub error: bool,
}

/// The tags of one proxied request, with Envoy's names (`component` is
/// always `proxy`). Fields rather than a list of pairs: the tag names are
/// then constants in the JSON writer, which runs once per request.
#[derive(Debug, Clone, Default)]
pub struct HttpTags {
    /// `http.method`
    pub method: Text,
    /// `http.url`: scheme, Host and path, at most 256 bytes.
    pub url: String,
    /// `http.protocol`: `HTTP/1.1`, `HTTP/2`...
    pub protocol: &'static str,
    /// `peer.address`: the client's IP.
    pub peer_address: Option<Arc<str>>,
    /// `upstream_cluster`: the route's upstream (`-` when no route matched).
    pub upstream_cluster: Text,
    /// `guid:x-request-id`
    pub request_id: Option<String>,
    /// `http.status_code` (0: no response).
    pub status_code: u16,
    /// `request_size`: request body bytes.
    pub request_size: u64,
    /// `response_size`: response body bytes.
    pub response_size: u64,
    /// `grpc.status_code`: a gRPC call's status (from `grpc-status`, or
    /// deduced for a call the client cancelled: 1, or 4 past its deadline).
    pub grpc_status: Option<u8>,
    /// `response_flags`, as Envoy's: `DC` when the client went away first.
    pub response_flags: Option<&'static str>,
}

impl Span {
    /// The span's tags as (name, value) pairs, `error` included when set, in
    /// the order the Zipkin JSON has them.
    pub fn tag_list(&self) -> Vec<(&'static str, String)> {
        let t = &self.tags;
        let mut tags = vec![
            ("component", "proxy".to_string()),
            ("http.method", t.method.to_string()),
            ("http.url", t.url.clone()),
            ("http.protocol", t.protocol.to_string()),
        ];
        if let Some(peer) = &t.peer_address {
            tags.push(("peer.address", peer.to_string()));
        }
        tags.push(("upstream_cluster", t.upstream_cluster.to_string()));
        if let Some(id) = &t.request_id {
            tags.push(("guid:x-request-id", id.clone()));
        }
        tags.extend([
            ("http.status_code", t.status_code.to_string()),
            ("request_size", t.request_size.to_string()),
            ("response_size", t.response_size.to_string()),
        ]);
        if let Some(code) = t.grpc_status {
            tags.push(("grpc.status_code", code.to_string()));
        }
        if let Some(flags) = t.response_flags {
            tags.push(("response_flags", flags.to_string()));
        }
        if self.error {
            tags.push(("error", "true".to_string()));
        }
        tags
    }
}

/// Appends one span's Zipkin v2 JSON object to `out` (an element of a
/// `ListOfSpans`). Written directly rather than through serde: the proxy
/// writes one per request, on the request's thread, and serde_json's
/// byte-by-byte string escaping was a fifth of the proxy's instructions per
/// request. Strings that need no escaping (nearly all) are copied whole.
pub fn zipkin_span_into(s: &Span, out: &mut Vec<u8>) {
    out.reserve(512);
    out.extend_from_slice(b"{\"traceId\":\"");
    let mut hex = [0u8; 32];
    if s.trace_id.hi == 0 {
        hex16(s.trace_id.lo, &mut hex);
        out.extend_from_slice(&hex[..16]);
    } else {
        hex16(s.trace_id.hi, &mut hex);
        hex16(s.trace_id.lo, &mut hex[16..]);
        out.extend_from_slice(&hex);
    }
    out.extend_from_slice(b"\",\"id\":\"");
    hex16(s.id, &mut hex);
    out.extend_from_slice(&hex[..16]);
    if let Some(parent) = s.parent_id {
        out.extend_from_slice(b"\",\"parentId\":\"");
        hex16(parent, &mut hex);
        out.extend_from_slice(&hex[..16]);
    }
    out.extend_from_slice(b"\",\"name\":");
    json_str(out, s.name.as_str());
    out.extend_from_slice(match s.kind {
        Kind::Client => b",\"kind\":\"CLIENT\",\"timestamp\":",
        Kind::Server => b",\"kind\":\"SERVER\",\"timestamp\":",
    });
    decimal(out, s.start_us);
    out.extend_from_slice(b",\"duration\":");
    decimal(out, s.duration_us.max(1));
    out.extend_from_slice(b",\"localEndpoint\":{\"serviceName\":");
    json_str(out, &s.service);
    match s.local_ip {
        Some(IpAddr::V4(ip)) if !ip.is_unspecified() => {
            out.extend_from_slice(b",\"ipv4\":\"");
            for (i, octet) in ip.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                decimal(out, octet.into());
            }
            out.push(b'"');
        }
        Some(IpAddr::V6(ip)) if !ip.is_unspecified() => {
            out.extend_from_slice(b",\"ipv6\":");
            json_str(out, &ip.to_string());
        }
        _ => {}
    }
    if let Some(port) = s.local_port.filter(|p| *p != 0) {
        out.extend_from_slice(b",\"port\":");
        decimal(out, port.into());
    }
    let t = &s.tags;
    out.extend_from_slice(b"},\"tags\":{\"component\":\"proxy\",\"http.method\":");
    json_str(out, t.method.as_str());
    out.extend_from_slice(b",\"http.url\":");
    json_str(out, &t.url);
    out.extend_from_slice(b",\"http.protocol\":");
    json_str(out, t.protocol);
    if let Some(peer) = &t.peer_address {
        out.extend_from_slice(b",\"peer.address\":");
        json_str(out, peer);
    }
    out.extend_from_slice(b",\"upstream_cluster\":");
    json_str(out, t.upstream_cluster.as_str());
    if let Some(id) = &t.request_id {
        out.extend_from_slice(b",\"guid:x-request-id\":");
        json_str(out, id);
    }
    out.extend_from_slice(b",\"http.status_code\":\"");
    decimal(out, t.status_code.into());
    out.extend_from_slice(b"\",\"request_size\":\"");
    decimal(out, t.request_size);
    out.extend_from_slice(b"\",\"response_size\":\"");
    decimal(out, t.response_size);
    if let Some(code) = t.grpc_status {
        out.extend_from_slice(b"\",\"grpc.status_code\":\"");
        decimal(out, code.into());
    }
    if let Some(flags) = t.response_flags {
        // A fixed code of ASCII letters: nothing to escape.
        out.extend_from_slice(b"\",\"response_flags\":\"");
        out.extend_from_slice(flags.as_bytes());
    }
    if s.error {
        out.extend_from_slice(b"\",\"error\":\"true\"}}");
    } else {
        out.extend_from_slice(b"\"}}");
    }
}

/// Appends `n` in decimal. The digits are made in a fixed-size buffer that
/// is appended whole and then cut to length: a copy of constant size, which
/// the compiler does in a few moves instead of a call to `memcpy`.
fn decimal(out: &mut Vec<u8>, mut n: u64) {
    let len = n.checked_ilog10().unwrap_or(0) as usize + 1;
    let mut digits = [0u8; 20];
    for d in digits[..len].iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
    let at = out.len();
    out.extend_from_slice(&digits);
    out.truncate(at + len);
}

/// `v` as a JSON string. JSON requires escaping only `"`, `\` and control
/// characters; the check for them has no early exit, so it vectorizes, and a
/// string without them is copied whole.
fn json_str(out: &mut Vec<u8>, v: &str) {
    let bytes = v.as_bytes();
    out.push(b'"');
    if !bytes.iter().fold(false, |any, &b| any | needs_escape(b)) {
        out.extend_from_slice(bytes);
    } else {
        for &b in bytes {
            if !needs_escape(b) {
                out.push(b);
                continue;
            }
            match b {
                b'"' => out.extend_from_slice(b"\\\""),
                b'\\' => out.extend_from_slice(b"\\\\"),
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                b'\t' => out.extend_from_slice(b"\\t"),
                _ => {
                    const HEX: &[u8; 16] = b"0123456789abcdef";
                    out.extend_from_slice(b"\\u00");
                    out.push(HEX[usize::from(b >> 4)]);
                    out.push(HEX[usize::from(b & 0xf)]);
                }
            }
        }
    }
    out.push(b'"');
}

fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

fn kv(key: &str, value: String) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value)),
        }),
        ..Default::default()
    }
}

/// An OTLP `ExportTraceServiceRequest`, one resource per service name.
pub fn otlp_request(spans: &[Span]) -> ExportTraceServiceRequest {
    let mut by_service: Vec<(Arc<str>, Vec<opentelemetry_proto::tonic::trace::v1::Span>)> =
        Vec::new();
    for s in spans {
        let start_ns = s.start_us.saturating_mul(1000);
        let end_ns = start_ns.saturating_add(s.duration_us.max(1).saturating_mul(1000));
        let mut attributes: Vec<KeyValue> = s
            .tag_list()
            .into_iter()
            .filter(|(k, _)| *k != "error")
            .map(|(k, v)| kv(k, v))
            .collect();
        if let Some(ip) = s.local_ip.filter(|ip| !ip.is_unspecified()) {
            attributes.push(kv("net.host.ip", ip.to_string()));
        }
        let span = opentelemetry_proto::tonic::trace::v1::Span {
            trace_id: s.trace_id.to_bytes().to_vec(),
            span_id: s.id.to_be_bytes().to_vec(),
            parent_span_id: s
                .parent_id
                .map(|p| p.to_be_bytes().to_vec())
                .unwrap_or_default(),
            name: s.name.to_string(),
            kind: match s.kind {
                Kind::Client => span::SpanKind::Client as i32,
                Kind::Server => span::SpanKind::Server as i32,
            },
            start_time_unix_nano: start_ns,
            end_time_unix_nano: end_ns,
            attributes,
            status: Some(Status {
                code: if s.error {
                    status::StatusCode::Error as i32
                } else {
                    status::StatusCode::Unset as i32
                },
                ..Default::default()
            }),
            ..Default::default()
        };
        match by_service.iter_mut().find(|(name, _)| *name == s.service) {
            Some((_, list)) => list.push(span),
            None => by_service.push((Arc::clone(&s.service), vec![span])),
        }
    }
    ExportTraceServiceRequest {
        resource_spans: by_service
            .into_iter()
            .map(|(service, spans)| ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![kv("service.name", service.to_string())],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "sidecar-proxy".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                        ..Default::default()
                    }),
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn sample() -> Span {
        Span {
            trace_id: TraceId {
                hi: 0,
                lo: 0x463a_c35c_9f64_13ad,
            },
            id: 0x1111_2222_3333_4444,
            parent_id: Some(0xa2fb_4a1d_1a96_d312),
            name: "checkavailability".into(),
            kind: Kind::Server,
            start_us: 1_700_000_000_000_000,
            duration_us: 0,
            service: Arc::from("service1"),
            local_ip: Some("10.0.0.7".parse().unwrap()),
            local_port: Some(8000),
            tags: HttpTags {
                method: "GET".into(),
                url: "http://shop/check?item=1".into(),
                protocol: "HTTP/1.1",
                peer_address: Some(Arc::from("10.0.0.9")),
                upstream_cluster: "127.0.0.1:8080".into(),
                request_id: Some("d1f0c0a4-7c1e-4a47-9d2b-0f3e4b5a6c7d".into()),
                status_code: 503,
                request_size: 0,
                response_size: 19,
                grpc_status: None,
                response_flags: None,
            },
            error: true,
        }
    }

    /// A Zipkin v2 `ListOfSpans`, framed as the exporter frames a batch.
    fn zipkin_json(spans: &[Span]) -> Vec<u8> {
        let mut out = vec![b'['];
        for (i, span) in spans.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            zipkin_span_into(span, &mut out);
        }
        out.push(b']');
        out
    }

    #[test]
    fn zipkin_json_has_the_v2_shape() {
        let json: serde_json::Value = serde_json::from_slice(&zipkin_json(&[sample()])).unwrap();
        let s = &json[0];
        assert_eq!(s["traceId"], "463ac35c9f6413ad");
        assert_eq!(s["id"], "1111222233334444");
        assert_eq!(s["parentId"], "a2fb4a1d1a96d312");
        assert_eq!(s["kind"], "SERVER");
        assert_eq!(s["duration"], 1, "duration is at least 1 µs");
        assert_eq!(s["timestamp"], 1_700_000_000_000_000u64);
        assert_eq!(s["localEndpoint"]["serviceName"], "service1");
        assert_eq!(s["localEndpoint"]["ipv4"], "10.0.0.7");
        assert_eq!(s["localEndpoint"]["port"], 8000);
        let tags = serde_json::json!({
            "component": "proxy",
            "http.method": "GET",
            "http.url": "http://shop/check?item=1",
            "http.protocol": "HTTP/1.1",
            "peer.address": "10.0.0.9",
            "upstream_cluster": "127.0.0.1:8080",
            "guid:x-request-id": "d1f0c0a4-7c1e-4a47-9d2b-0f3e4b5a6c7d",
            "http.status_code": "503",
            "request_size": "0",
            "response_size": "19",
            "error": "true",
        });
        assert_eq!(s["tags"], tags);
    }

    #[test]
    fn strings_are_escaped_as_json_requires() {
        let mut s = sample();
        s.name = Text::Owned("a\"b\\c\n\r\t\u{1}\u{1f}\u{7f}é😀/".into());
        s.tags.request_id = Some("\u{0}\"".into());
        let json = String::from_utf8(zipkin_json(&[s])).unwrap();
        // DEL (0x7f) and non-ASCII need no escaping in JSON.
        let name = "\"name\":\"a\\\"b\\\\c\\n\\r\\t\\u0001\\u001f\u{7f}é😀/\"";
        assert!(json.contains(name), "{json}");
        assert!(json.contains(r#""guid:x-request-id":"\u0000\"""#), "{json}");
    }

    fn text(choice: u8, s: String) -> Text {
        match choice % 3 {
            0 => Text::Owned(s),
            1 => Text::Shared(Arc::from(s)),
            _ => Text::Static("static"),
        }
    }

    proptest::proptest! {
        /// Whatever the strings, ids and addresses, the span reads back, as
        /// JSON, as what was written.
        #[test]
        fn any_span_reads_back_as_written(
            hi: u64, lo: u64, id: u64, parent: Option<u64>, server: bool,
            name in ".*", choice: u8, service in ".*", ip: Option<(bool, u128)>, port: Option<u16>,
            start: u64, duration: u64, error: bool,
            tags in (
                (".*", 0u8..3, ".*", proptest::option::of(".*")),
                (".*", 0u8..3, proptest::option::of(".*")),
                (proptest::num::u16::ANY, proptest::num::u64::ANY, proptest::num::u64::ANY),
                (proptest::option::of(proptest::num::u8::ANY), proptest::bool::ANY),
            ),
        ) {
            let ((method, method_choice, url, peer), (cluster, cluster_choice, request_id), sizes, (grpc_status, dc)) = tags;
            let span = Span {
                trace_id: TraceId { hi, lo },
                id,
                parent_id: parent,
                name: text(choice, name),
                kind: if server { Kind::Server } else { Kind::Client },
                start_us: start,
                duration_us: duration,
                service: Arc::from(service.as_str()),
                local_ip: ip.map(|(v4, bits)| {
                    if v4 {
                        IpAddr::from(std::net::Ipv4Addr::from(bits as u32))
                    } else {
                        IpAddr::from(std::net::Ipv6Addr::from(bits))
                    }
                }),
                local_port: port,
                tags: HttpTags {
                    method: text(method_choice, method),
                    url,
                    protocol: "HTTP/1.1",
                    peer_address: peer.map(Arc::from),
                    upstream_cluster: text(cluster_choice, cluster),
                    request_id,
                    status_code: sizes.0,
                    request_size: sizes.1,
                    response_size: sizes.2,
                    grpc_status,
                    response_flags: dc.then_some("DC"),
                },
                error,
            };
            let list: serde_json::Value = serde_json::from_slice(&zipkin_json(&[span.clone(), span.clone()])).unwrap();
            proptest::prop_assert_eq!(list.as_array().map(Vec::len), Some(2));
            let v = &list[1];
            let trace = if hi == 0 { format!("{lo:016x}") } else { format!("{hi:016x}{lo:016x}") };
            proptest::prop_assert_eq!(v["traceId"].as_str().map(str::to_owned), Some(trace.to_string()));
            proptest::prop_assert_eq!(v["id"].as_str().map(str::to_owned), Some(format!("{id:016x}").to_string()));
            match parent {
                Some(p) => proptest::prop_assert_eq!(v["parentId"].as_str().map(str::to_owned), Some(format!("{p:016x}").to_string())),
                None => proptest::prop_assert!(v.get("parentId").is_none()),
            }
            proptest::prop_assert_eq!(v["name"].as_str().map(str::to_owned), Some(span.name.to_string().to_string()));
            proptest::prop_assert_eq!(v["kind"].as_str(), Some(if server { "SERVER" } else { "CLIENT" }));
            proptest::prop_assert_eq!(v["timestamp"].as_u64(), Some(start));
            proptest::prop_assert_eq!(v["duration"].as_u64(), Some(duration.max(1)));
            let endpoint = &v["localEndpoint"];
            proptest::prop_assert_eq!(endpoint["serviceName"].as_str().map(str::to_owned), Some(service.to_string()));
            match span.local_ip.filter(|ip| !ip.is_unspecified()) {
                Some(IpAddr::V4(ip)) => proptest::prop_assert_eq!(endpoint["ipv4"].as_str().map(str::to_owned), Some(ip.to_string().to_string())),
                Some(IpAddr::V6(ip)) => proptest::prop_assert_eq!(endpoint["ipv6"].as_str().map(str::to_owned), Some(ip.to_string().to_string())),
                None => proptest::prop_assert!(endpoint.get("ipv4").is_none() && endpoint.get("ipv6").is_none()),
            }
            proptest::prop_assert_eq!(endpoint["port"].as_u64(), port.filter(|p| *p != 0).map(u64::from));
            let mut expected = serde_json::Map::new();
            for (k, v) in span.tag_list() {
                expected.insert(k.to_string(), v.into());
            }
            proptest::prop_assert_eq!(expected.get("error").is_some(), error);
            proptest::prop_assert_eq!(&v["tags"], &serde_json::Value::Object(expected));
        }
    }

    #[test]
    fn otlp_round_trips_through_protobuf() {
        let req = otlp_request(&[sample()]);
        let bytes = req.encode_to_vec();
        let back = ExportTraceServiceRequest::decode(bytes.as_slice()).unwrap();
        let span = &back.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(span.trace_id.len(), 16);
        assert_eq!(span.span_id, 0x1111_2222_3333_4444u64.to_be_bytes());
        assert_eq!(span.kind, span::SpanKind::Server as i32);
        assert_eq!(span.end_time_unix_nano - span.start_time_unix_nano, 1000);
    }
}
