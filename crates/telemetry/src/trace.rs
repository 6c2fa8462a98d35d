//! Trace context: read W3C `traceparent`/`tracestate`, B3 single (`b3`) and
//! multi (`x-b3-*`) headers; write W3C and B3 multi headers for the next hop.

use http::{HeaderMap, HeaderValue};

/// A trace id: 64-bit (`hi == 0`, written as 16 hex in B3/Zipkin) or 128-bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceId {
    pub hi: u64,
    pub lo: u64,
}

impl TraceId {
    /// A new random 64-bit trace id (what Envoy's Zipkin tracer makes by default).
    pub fn random() -> Self {
        Self {
            hi: 0,
            lo: nonzero_random(),
        }
    }

    /// 16 hex for 64-bit ids, 32 for 128-bit ones (B3, Zipkin).
    pub fn to_b3(self) -> String {
        if self.hi == 0 {
            format!("{:016x}", self.lo)
        } else {
            self.to_w3c()
        }
    }

    /// Always 32 hex (W3C), zero-padded.
    pub fn to_w3c(self) -> String {
        format!("{:016x}{:016x}", self.hi, self.lo)
    }

    pub fn to_bytes(self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.hi.to_be_bytes());
        b[8..].copy_from_slice(&self.lo.to_be_bytes());
        b
    }

    /// Parses 16 or 32 lowercase (or uppercase) hex; all-zero is invalid.
    pub fn parse(s: &str) -> Option<Self> {
        // Hex only (and so ASCII only) before slicing by byte offsets.
        if !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let id = match s.len() {
            16 => Self {
                hi: 0,
                lo: hex_u64(s)?,
            },
            32 => Self {
                hi: hex_u64(&s[..16])?,
                lo: hex_u64(&s[16..])?,
            },
            _ => return None,
        };
        (id.hi != 0 || id.lo != 0).then_some(id)
    }
}

/// A 64-bit span id, never zero.
pub fn parse_span_id(s: &str) -> Option<u64> {
    if s.len() != 16 {
        return None;
    }
    hex_u64(s).filter(|v| *v != 0)
}

pub fn span_id_hex(id: u64) -> String {
    format!("{id:016x}")
}

/// A random non-zero 64-bit id.
pub fn nonzero_random() -> u64 {
    loop {
        let v = fastrand::u64(..);
        if v != 0 {
            return v;
        }
    }
}

fn hex_u64(s: &str) -> Option<u64> {
    if !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(s, 16).ok()
}

/// The trace context a request arrived with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incoming {
    pub trace_id: TraceId,
    /// The caller's span: the parent of ours.
    pub span_id: u64,
    /// The caller's decision, if it made one.
    pub sampled: Option<bool>,
    /// W3C `tracestate`, forwarded unchanged.
    pub tracestate: Option<String>,
}

/// Which header carried the incoming context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    W3c,
    B3Single,
    B3Multi,
}

/// Where trace headers are read from: an `http::HeaderMap`, or the raw
/// header list of the proxy's HTTP/1.1 fast path.
pub trait HeaderSource {
    /// The first value of header `name` (lower-case), trimmed, if it is text.
    fn first(&self, name: &str) -> Option<&str>;
    /// Every value of `name`, joined with `,` (empty when there is none).
    fn joined(&self, name: &str) -> String;
}

impl HeaderSource for HeaderMap {
    fn first(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|v| v.to_str().ok()).map(str::trim)
    }

    fn joined(&self, name: &str) -> String {
        self.get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Reads the incoming context: W3C first, then B3 single, then B3 multi.
/// Malformed headers are ignored (a new trace starts), as the specs ask.
pub fn extract(headers: &(impl HeaderSource + ?Sized)) -> Option<(Incoming, Format)> {
    if let Some(tp) = headers.first("traceparent").and_then(parse_traceparent) {
        let tracestate = headers.joined("tracestate");
        let incoming = Incoming {
            tracestate: (!tracestate.is_empty()).then_some(tracestate),
            ..tp
        };
        return Some((incoming, Format::W3c));
    }
    if let Some(single) = headers.first("b3").and_then(parse_b3_single) {
        return Some((single, Format::B3Single));
    }
    let trace_id = headers.first("x-b3-traceid").and_then(TraceId::parse)?;
    let span_id = headers.first("x-b3-spanid").and_then(parse_span_id)?;
    let sampled = if headers.first("x-b3-flags") == Some("1") {
        Some(true)
    } else {
        match headers.first("x-b3-sampled") {
            Some("1") | Some("true") => Some(true),
            Some("0") | Some("false") => Some(false),
            _ => None,
        }
    };
    Some((
        Incoming {
            trace_id,
            span_id,
            sampled,
            tracestate: None,
        },
        Format::B3Multi,
    ))
}

/// `00-<32 hex trace>-<16 hex parent>-<2 hex flags>` (higher versions: first fields).
pub fn parse_traceparent(v: &str) -> Option<Incoming> {
    let parts: Vec<&str> = v.split('-').collect();
    if parts.len() < 4 {
        return None;
    }
    let (version, trace, parent, flags) = (parts[0], parts[1], parts[2], parts[3]);
    if version.len() != 2 || version == "ff" || hex_u64(version).is_none() {
        return None;
    }
    if version == "00" && (parts.len() != 4 || v.len() != 55) {
        return None;
    }
    if trace.len() != 32 || flags.len() != 2 || trace.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    let trace_id = TraceId::parse(trace)?;
    let span_id = parse_span_id(parent)?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some(Incoming {
        trace_id,
        span_id,
        sampled: Some(flags & 1 == 1),
        tracestate: None,
    })
}

/// `{trace}-{span}[-{sampled}[-{parent}]]`; `0`, `1`, `d` alone are sampling-only (no context).
pub fn parse_b3_single(v: &str) -> Option<Incoming> {
    let parts: Vec<&str> = v.split('-').collect();
    if parts.len() < 2 || parts.len() > 4 {
        return None;
    }
    let trace_id = TraceId::parse(parts[0])?;
    let span_id = parse_span_id(parts[1])?;
    let sampled = match parts.get(2) {
        None => None,
        Some(&"1") | Some(&"d") => Some(true),
        Some(&"0") => Some(false),
        Some(_) => return None,
    };
    if let Some(parent) = parts.get(3) {
        parse_span_id(parent)?;
    }
    Some(Incoming {
        trace_id,
        span_id,
        sampled,
        tracestate: None,
    })
}

/// The context a hop sends on: our span becomes the next hop's parent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub trace_id: TraceId,
    /// Our span id.
    pub span_id: u64,
    /// Our parent (the incoming span), if any.
    pub parent_id: Option<u64>,
    pub sampled: bool,
    pub tracestate: Option<String>,
}

/// Every header [`inject`] replaces: the caller's trace headers never go on.
pub const TRACE_HEADERS: [&str; 8] = [
    "traceparent",
    "tracestate",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
];

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Writes `v` as 16 lower-case hex digits into `out[..16]`.
pub fn hex16(v: u64, out: &mut [u8]) {
    for (i, b) in out[..16].iter_mut().enumerate() {
        *b = HEX[((v >> (60 - 4 * i)) & 0xf) as usize];
    }
}

/// Calls `put(name, value)` for each header that carries `ctx` to the next
/// hop: W3C `traceparent` (and `tracestate` as received) and B3 multi.
/// The general path's form ([`inject`]); the fast path writes the same
/// headers as lines with [`write_outgoing_headers`].
pub fn outgoing_headers(ctx: &Outgoing, mut put: impl FnMut(&'static str, &str)) {
    let tp = traceparent(ctx);
    put("traceparent", std::str::from_utf8(&tp).unwrap_or_default());
    let trace = if ctx.trace_id.hi == 0 {
        &tp[19..35]
    } else {
        &tp[3..35]
    };
    put(
        "x-b3-traceid",
        std::str::from_utf8(trace).unwrap_or_default(),
    );
    put(
        "x-b3-spanid",
        std::str::from_utf8(&tp[36..52]).unwrap_or_default(),
    );
    if let Some(parent) = ctx.parent_id {
        let mut p = [0u8; 16];
        hex16(parent, &mut p);
        put(
            "x-b3-parentspanid",
            std::str::from_utf8(&p).unwrap_or_default(),
        );
    }
    put("x-b3-sampled", if ctx.sampled { "1" } else { "0" });
    if let Some(ts) = &ctx.tracestate {
        put("tracestate", ts);
    }
}

/// `traceparent`'s value for `ctx`: "00-" trace(32) "-" span(16) "-" flags(2).
fn traceparent(ctx: &Outgoing) -> [u8; 55] {
    let mut tp = *b"00-00000000000000000000000000000000-0000000000000000-00";
    hex16(ctx.trace_id.hi, &mut tp[3..]);
    hex16(ctx.trace_id.lo, &mut tp[19..]);
    hex16(ctx.span_id, &mut tp[36..]);
    if ctx.sampled {
        tp[54] = b'1';
    }
    tp
}

/// The header lines of [`outgoing_headers`] for an HTTP/1 head, appended to
/// `out` (each ending in CRLF). The proxy's fast path writes these for every
/// request: all pieces but `tracestate` have a fixed size, so they are
/// copied with a few moves each.
pub fn write_outgoing_headers(ctx: &Outgoing, out: &mut Vec<u8>) {
    let tp = traceparent(ctx);
    out.reserve(256);
    out.extend_from_slice(b"traceparent: ");
    out.extend_from_slice(&tp);
    out.extend_from_slice(b"\r\nx-b3-traceid: ");
    if ctx.trace_id.hi == 0 {
        out.extend_from_slice(&tp[19..35]);
    } else {
        out.extend_from_slice(&tp[3..35]);
    }
    out.extend_from_slice(b"\r\nx-b3-spanid: ");
    out.extend_from_slice(&tp[36..52]);
    if let Some(parent) = ctx.parent_id {
        let mut p = [0u8; 16];
        hex16(parent, &mut p);
        out.extend_from_slice(b"\r\nx-b3-parentspanid: ");
        out.extend_from_slice(&p);
    }
    if ctx.sampled {
        out.extend_from_slice(b"\r\nx-b3-sampled: 1\r\n");
    } else {
        out.extend_from_slice(b"\r\nx-b3-sampled: 0\r\n");
    }
    if let Some(ts) = &ctx.tracestate {
        out.extend_from_slice(b"tracestate: ");
        out.extend_from_slice(ts.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// Replaces every trace header with our context: W3C `traceparent` (and
/// `tracestate` as received) and B3 multi. A stale `b3` single header is
/// removed, since B3 readers prefer it over the multi headers.
pub fn inject(headers: &mut HeaderMap, ctx: &Outgoing) {
    for name in TRACE_HEADERS {
        headers.remove(name);
    }
    outgoing_headers(ctx, |name, value| {
        if let Ok(v) = HeaderValue::from_str(value) {
            headers.insert(name, v);
        }
    });
}

/// A new random UUIDv4 for `x-request-id`.
pub fn new_request_id() -> String {
    let hi = fastrand::u64(..);
    let lo = fastrand::u64(..);
    let hi = (hi & 0xffff_ffff_ffff_0fff) | 0x0000_0000_0000_4000; // version 4
    let lo = (lo & 0x3fff_ffff_ffff_ffff) | 0x8000_0000_0000_0000; // variant 10
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        hi >> 32,
        (hi >> 16) & 0xffff,
        hi & 0xffff,
        lo >> 48,
        lo & 0xffff_ffff_ffff
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn reads_w3c_with_tracestate() {
        let h = headers(&[
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            ("tracestate", "congo=t61rcWkgMzE"),
            ("tracestate", "rojo=00f067aa0ba902b7"),
        ]);
        let (c, f) = extract(&h).unwrap();
        assert_eq!(f, Format::W3c);
        assert_eq!(c.trace_id.to_w3c(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(c.span_id, 0x00f0_67aa_0ba9_02b7);
        assert_eq!(c.sampled, Some(true));
        assert_eq!(
            c.tracestate.as_deref(),
            Some("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7")
        );
    }

    #[test]
    fn invalid_w3c_falls_back_to_b3() {
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "garbage",
        ] {
            let h = headers(&[
                ("traceparent", bad),
                ("x-b3-traceid", "463ac35c9f6413ad"),
                ("x-b3-spanid", "a2fb4a1d1a96d312"),
            ]);
            let (c, f) = extract(&h).unwrap();
            assert_eq!(f, Format::B3Multi, "{bad}");
            assert_eq!(c.trace_id.to_b3(), "463ac35c9f6413ad");
            assert_eq!(c.sampled, None);
        }
        // A higher version with extra fields is read.
        assert!(
            parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what")
                .is_some()
        );
    }

    #[test]
    fn reads_b3_single_before_multi() {
        let h = headers(&[
            (
                "b3",
                "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90",
            ),
            ("x-b3-traceid", "463ac35c9f6413ad"),
            ("x-b3-spanid", "a2fb4a1d1a96d312"),
        ]);
        let (c, f) = extract(&h).unwrap();
        assert_eq!(f, Format::B3Single);
        assert_eq!(c.trace_id.to_b3(), "80f198ee56343ba864fe8b2a57d3eff7");
        assert_eq!(c.span_id, 0xe457_b5a2_e4d8_6bd1);
        assert_eq!(c.sampled, Some(true));
        assert_eq!(parse_b3_single("0"), None);
        assert_eq!(
            parse_b3_single("80f198ee56343ba8-e457b5a2e4d86bd1-d")
                .unwrap()
                .sampled,
            Some(true)
        );
        assert_eq!(parse_b3_single("80f198ee56343ba8-e457b5a2e4d86bd1-x"), None);
    }

    #[test]
    fn b3_multi_sampling_and_debug() {
        let base = [
            ("x-b3-traceid", "463ac35c9f6413ad"),
            ("x-b3-spanid", "a2fb4a1d1a96d312"),
        ];
        let with = |extra: &[(&'static str, &str)]| {
            let mut all = base.to_vec();
            all.extend_from_slice(extra);
            extract(&headers(&all)).unwrap().0.sampled
        };
        assert_eq!(with(&[("x-b3-sampled", "0")]), Some(false));
        assert_eq!(with(&[("x-b3-sampled", "true")]), Some(true));
        assert_eq!(with(&[("x-b3-flags", "1")]), Some(true));
        assert!(extract(&headers(&[("x-b3-traceid", "463ac35c9f6413ad")])).is_none());
    }

    #[test]
    fn inject_writes_w3c_and_b3_and_drops_stale_single() {
        let mut h = headers(&[
            ("b3", "80f198ee56343ba8-e457b5a2e4d86bd1-1"),
            ("x-b3-flags", "1"),
        ]);
        let ctx = Outgoing {
            trace_id: TraceId {
                hi: 0,
                lo: 0x463a_c35c_9f64_13ad,
            },
            span_id: 0x1111_2222_3333_4444,
            parent_id: Some(0xa2fb_4a1d_1a96_d312),
            sampled: true,
            tracestate: Some("a=b".into()),
        };
        inject(&mut h, &ctx);
        assert_eq!(
            h["traceparent"],
            "00-0000000000000000463ac35c9f6413ad-1111222233334444-01"
        );
        assert_eq!(h["x-b3-traceid"], "463ac35c9f6413ad");
        assert_eq!(h["x-b3-spanid"], "1111222233334444");
        assert_eq!(h["x-b3-parentspanid"], "a2fb4a1d1a96d312");
        assert_eq!(h["x-b3-sampled"], "1");
        assert_eq!(h["tracestate"], "a=b");
        assert!(h.get("b3").is_none() && h.get("x-b3-flags").is_none());
        // What we wrote reads back as our span.
        let (back, _) = extract(&h).unwrap();
        assert_eq!(
            (back.trace_id, back.span_id, back.sampled),
            (ctx.trace_id, ctx.span_id, Some(true))
        );
    }

    #[test]
    fn request_ids_are_uuid_v4() {
        let id = new_request_id();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"), "{id}");
        assert_ne!(new_request_id(), id);
    }

    proptest! {
        /// The fast path's header lines say what the general path's headers say.
        #[test]
        fn header_lines_match_the_headers(
            hi: u64, lo: u64, span in 1u64.., parent: Option<u64>, sampled: bool,
            tracestate in proptest::option::of("[a-z0-9=,]{1,20}"),
        ) {
            let ctx = Outgoing { trace_id: TraceId { hi, lo }, span_id: span, parent_id: parent, sampled, tracestate };
            let mut expected = Vec::new();
            outgoing_headers(&ctx, |name, value| {
                expected.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
            });
            let mut lines = b"x: y\r\n".to_vec();
            write_outgoing_headers(&ctx, &mut lines);
            prop_assert_eq!(String::from_utf8(lines).unwrap(), format!("x: y\r\n{}", String::from_utf8(expected).unwrap()));
        }

        #[test]
        fn parsers_never_panic(s in "\\PC{0,80}|[0-9a-f\u{e9}\u{2603}-]{0,70}") {
            let _ = parse_traceparent(&s);
            let _ = parse_b3_single(&s);
            let _ = TraceId::parse(&s);
        }

        #[test]
        fn inject_then_extract_round_trips(hi in any::<u64>(), lo in 1u64.., span in 1u64.., sampled in any::<bool>()) {
            let ctx = Outgoing { trace_id: TraceId { hi, lo }, span_id: span, parent_id: None, sampled, tracestate: None };
            let mut h = HeaderMap::new();
            inject(&mut h, &ctx);
            let (back, f) = extract(&h).unwrap();
            prop_assert_eq!(f, Format::W3c);
            prop_assert_eq!(back.trace_id, ctx.trace_id);
            prop_assert_eq!(back.span_id, span);
            prop_assert_eq!(back.sampled, Some(sampled));
            h.remove("traceparent");
            let (back, _) = extract(&h).unwrap();
            prop_assert_eq!(back.trace_id, ctx.trace_id);
        }
    }
}
