//! Spans as the proxy records them, and their two wire forms: Zipkin v2 JSON
//! (what the seed's Envoy sent to Jaeger) and OTLP protobuf.

use std::net::IpAddr;
use std::sync::Arc;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Status, span, status};
use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};
use sidecar_telemetry::trace::{TraceId, hex16};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
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
    Number(u64),
}

impl std::fmt::Display for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Text::Static(s) => f.write_str(s),
            Text::Shared(s) => f.write_str(s),
            Text::Owned(s) => f.write_str(s),
            Text::Number(n) => write!(f, "{n}"),
        }
    }
}

impl Serialize for Text {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Text::Static(v) => s.serialize_str(v),
            Text::Shared(v) => s.serialize_str(v),
            Text::Owned(v) => s.serialize_str(v),
            Text::Number(n) => s.serialize_str(itoa::Buffer::new().format(*n)),
        }
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
    pub tags: Vec<(&'static str, Text)>,
    pub error: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ZipkinSpan<'a> {
    trace_id: Hex<32>,
    id: Hex<16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parent_id: Option<Hex<16>>,
    name: &'a Text,
    kind: Kind,
    timestamp: u64,
    duration: u64,
    local_endpoint: ZipkinEndpoint<'a>,
    tags: Tags<'a>,
}

/// Lower-case hex of an id, written without allocating.
struct Hex<const N: usize>([u8; N], usize);

impl Hex<16> {
    fn span(id: u64) -> Self {
        let mut b = [0u8; 16];
        hex16(id, &mut b);
        Self(b, 16)
    }
}

impl Hex<32> {
    /// 16 hex for 64-bit trace ids, 32 for 128-bit ones.
    fn trace(id: TraceId) -> Self {
        let mut b = [0u8; 32];
        if id.hi == 0 {
            hex16(id.lo, &mut b);
            Self(b, 16)
        } else {
            hex16(id.hi, &mut b);
            hex16(id.lo, &mut b[16..]);
            Self(b, 32)
        }
    }
}

impl<const N: usize> Serialize for Hex<N> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(std::str::from_utf8(&self.0[..self.1]).unwrap_or_default())
    }
}

/// An IPv4 address in dotted form, written without the formatting machinery
/// (one per span).
struct V4(std::net::Ipv4Addr);

impl Serialize for V4 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut text = [0u8; 15];
        let mut len = 0;
        for (i, octet) in self.0.octets().into_iter().enumerate() {
            if i > 0 {
                text[len] = b'.';
                len += 1;
            }
            let mut digits = itoa::Buffer::new();
            let digits = digits.format(octet).as_bytes();
            text[len..len + digits.len()].copy_from_slice(digits);
            len += digits.len();
        }
        s.serialize_str(std::str::from_utf8(&text[..len]).unwrap_or_default())
    }
}

/// A span's tags as a JSON object (plus `error` on failed requests).
struct Tags<'a>(&'a [(&'static str, Text)], bool);

impl Serialize for Tags<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len() + usize::from(self.1)))?;
        for (k, v) in self.0 {
            map.serialize_entry(k, v)?;
        }
        if self.1 {
            map.serialize_entry("error", "true")?;
        }
        map.end()
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ZipkinEndpoint<'a> {
    service_name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    ipv4: Option<V4>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ipv6: Option<std::net::Ipv6Addr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    port: Option<u16>,
}

/// A Zipkin v2 `ListOfSpans` (JSON array).
pub fn zipkin_json(spans: &[Span]) -> Vec<u8> {
    let mut out = Vec::with_capacity(spans.len() * 512);
    zipkin_json_into(spans, &mut out);
    out
}

/// Appends the Zipkin v2 `ListOfSpans` of `spans` to `out`, span by span
/// (no intermediate list), so a buffer kept by the caller serves every batch.
pub fn zipkin_json_into(spans: &[Span], out: &mut Vec<u8>) {
    out.push(b'[');
    let mut first = true;
    for span in spans {
        let start = out.len();
        if !first {
            out.push(b',');
        }
        if zipkin_span_into(span, out) {
            first = false;
        } else {
            out.truncate(start);
        }
    }
    out.push(b']');
}

/// Appends one span's Zipkin v2 JSON object to `out` (an element of a
/// `ListOfSpans`); false, with `out` as it was, if it could not be written
/// (writing to a Vec fails only on a serializer error, which these types do
/// not make).
pub fn zipkin_span_into(span: &Span, out: &mut Vec<u8>) -> bool {
    let start = out.len();
    let written = serde_json::to_writer(&mut *out, &zipkin_span(span)).is_ok();
    if !written {
        out.truncate(start);
    }
    written
}

fn zipkin_span(s: &Span) -> ZipkinSpan<'_> {
    let (ipv4, ipv6) = match s.local_ip {
        Some(IpAddr::V4(ip)) if !ip.is_unspecified() => (Some(V4(ip)), None),
        Some(IpAddr::V6(ip)) if !ip.is_unspecified() => (None, Some(ip)),
        _ => (None, None),
    };
    ZipkinSpan {
        trace_id: Hex::trace(s.trace_id),
        id: Hex::span(s.id),
        parent_id: s.parent_id.map(Hex::span),
        name: &s.name,
        kind: s.kind,
        timestamp: s.start_us,
        duration: s.duration_us.max(1),
        local_endpoint: ZipkinEndpoint {
            service_name: &s.service,
            ipv4,
            ipv6,
            port: s.local_port.filter(|p| *p != 0),
        },
        tags: Tags(&s.tags, s.error),
    }
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
        let mut attributes: Vec<KeyValue> =
            s.tags.iter().map(|(k, v)| kv(k, v.to_string())).collect();
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
            tags: vec![("http.method", "GET".into()), ("component", "proxy".into())],
            error: true,
        }
    }

    #[test]
    fn a_reused_buffer_holds_the_same_json_as_a_fresh_one() {
        let mut other = sample();
        other.id = 7;
        other.name = Text::Static("other");
        let mut buf = Vec::new();
        zipkin_json_into(&[sample(), other.clone(), sample()], &mut buf);
        buf.clear();
        zipkin_json_into(&[other.clone()], &mut buf);
        assert_eq!(buf, zipkin_json(&[other]));
        let list: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(list.as_array().map(Vec::len), Some(1));
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
        assert_eq!(s["tags"]["error"], "true");
        assert_eq!(s["tags"]["http.method"], "GET");
    }

    proptest::proptest! {
        #[test]
        fn ipv4_and_numbers_read_as_their_display_form(ip: u32, n: u64) {
            let ip = std::net::Ipv4Addr::from(ip);
            let json = serde_json::to_string(&(V4(ip), Text::Number(n))).unwrap();
            proptest::prop_assert_eq!(json, format!("[\"{ip}\",\"{n}\"]"));
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
