//! The one set of HTTP rules both request paths apply: what a request or
//! response may carry, which of its fields go on, and what the proxy adds.
//!
//! The fast path (`fast`, on the raw fields httparse found), the smuggling
//! guard in front of hyper (`guard`, on the same raw fields) and the general
//! path (`forward`, on hyper's `HeaderMap`) all call [`analyze_request`] /
//! [`analyze_response`] to accept or refuse a message, and
//! [`write_request`] / [`write_response`] to decide its outgoing fields into
//! a [`Sink`] (bytes for the fast path, a `HeaderMap` for hyper). So:
//! - `Connection` can never remove framing (`Content-Length`,
//!   `Transfer-Encoding`), `Host`, or a field the proxy writes: a message
//!   whose `Connection` names one is refused (400; 502 from an upstream);
//! - what the proxy writes (trace context, `x-request-id`, `X-Forwarded-*`,
//!   `Host` where it must) is written after every removal;
//! - `Content-Length` is ASCII digits, one value; `Transfer-Encoding` is
//!   `chunked` alone, never beside `Content-Length`;
//! - `Host` follows RFC 9112 §3.2 (one, valid; absolute-form targets win);
//! - `Upgrade: h2c` is declined (the request is served over HTTP/1.1);
//! - `te: trailers` goes on to HTTP/2 upstreams (gRPC needs it).

use http::HeaderMap;
use sidecar_telemetry::trace::{HeaderSource, Outgoing};

use crate::h1::{has_token, parse_length, tokens, trim_ows};

/// Header fields in the order they came, as (name, value).
pub(crate) trait Fields {
    fn each(&self) -> impl Iterator<Item = (&str, &[u8])>;
}

impl Fields for [httparse::Header<'_>] {
    fn each(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.iter().map(|h| (h.name, h.value))
    }
}

impl Fields for HeaderMap {
    fn each(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.iter().map(|(n, v)| (n.as_str(), v.as_bytes()))
    }
}

/// Any [`Fields`] as a source of trace headers (`trace::extract`).
pub(crate) struct TraceSource<'a, F: ?Sized>(pub &'a F);

impl<F: Fields + ?Sized> HeaderSource for TraceSource<'_, F> {
    fn first(&self, name: &str) -> Option<&str> {
        let (_, v) = self.0.each().find(|(n, _)| n.eq_ignore_ascii_case(name))?;
        std::str::from_utf8(trim_ows(v)).ok()
    }

    fn joined(&self, name: &str) -> String {
        let mut out = String::new();
        for (_, v) in self.0.each().filter(|(n, _)| n.eq_ignore_ascii_case(name)) {
            if let Ok(v) = std::str::from_utf8(v) {
                if !out.is_empty() {
                    out.push(',');
                }
                out.push_str(v);
            }
        }
        out
    }
}

/// Fields that belong to one connection (RFC 9110 §7.6.1 and §7.8, RFC 9113
/// §3.2.1), never passed on as received ([`Name::hop_by_hop`]).
#[cfg(test)]
pub(crate) const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
    "http2-settings",
];

/// What a field name means to the rules. Every rule asks this once per
/// field (a name is compared with the few known names of its length only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Name {
    ContentLength,
    TransferEncoding,
    Host,
    Connection,
    Upgrade,
    Te,
    Expect,
    XRequestId,
    XForwardedFor,
    XForwardedProto,
    /// Another hop-by-hop field: keep-alive, proxy-connection,
    /// proxy-authorization, http2-settings.
    HopByHop,
    /// A trace header the proxy replaces (`trace::TRACE_HEADERS`).
    Trace,
    Other,
}

/// A known field name, compared a word at a time: `(input | mask) == word`,
/// where `mask` has 0x20 on the letters (either case matches) and 0 on the
/// other bytes (only themselves match), so the comparison is exact.
struct Known {
    words: [u64; 3],
    masks: [u64; 3],
    class: Name,
}

impl Known {
    /// `name` (lower case, 2 to 24 bytes) read as its words: at 0, 8, 16,
    /// and the last one (overlapping) at `len - 8`; names under 8 bytes are
    /// one word, zero-padded.
    const fn new(name: &str, class: Name) -> Known {
        let b = name.as_bytes();
        let mut words = [0u64; 3];
        let mut masks = [0u64; 3];
        let mut w = 0;
        while w < 3 {
            let start = word_start(b.len(), w);
            let mut i = 0;
            while i < 8 && start + i < b.len() {
                let c = b[start + i];
                words[w] |= (c as u64) << (8 * i);
                if c.is_ascii_lowercase() {
                    masks[w] |= 0x20 << (8 * i);
                }
                i += 1;
            }
            w += 1;
        }
        Known {
            words,
            masks,
            class,
        }
    }

    #[inline]
    fn class_of(&self, name: &[u8]) -> Name {
        let len = name.len();
        let same = if len >= 8 {
            // Every word is whole (the last overlaps): plain 8-byte loads.
            (0..words_of(len)).all(|w| {
                let start = word_start(len, w);
                let word = name
                    .get(start..start + 8)
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .map_or(0, u64::from_le_bytes);
                word | self.masks[w] == self.words[w]
            })
        } else {
            let mut x = [0u8; 8];
            for (to, from) in x.iter_mut().zip(name) {
                *to = *from;
            }
            u64::from_le_bytes(x) | self.masks[0] == self.words[0]
        };
        if same { self.class } else { Name::Other }
    }
}

/// Where word `w` of a name of `len` bytes starts (the last one overlaps
/// the one before it, so every word is full once `len` >= 8).
const fn word_start(len: usize, w: usize) -> usize {
    if len <= 8 {
        0
    } else if (w + 1) * 8 >= len {
        len - 8
    } else {
        w * 8
    }
}

/// How many words a name of `len` bytes is read in.
const fn words_of(len: usize) -> usize {
    if len <= 8 { 1 } else { len.div_ceil(8) }
}

static TE: Known = Known::new("te", Name::Te);
static B3: Known = Known::new("b3", Name::Trace);
static HOST: Known = Known::new("host", Name::Host);
static EXPECT: Known = Known::new("expect", Name::Expect);
static UPGRADE: Known = Known::new("upgrade", Name::Upgrade);
static CONNECTION: Known = Known::new("connection", Name::Connection);
static KEEP_ALIVE: Known = Known::new("keep-alive", Name::HopByHop);
static TRACESTATE: Known = Known::new("tracestate", Name::Trace);
static B3_FLAGS: Known = Known::new("x-b3-flags", Name::Trace);
static TRACEPARENT: Known = Known::new("traceparent", Name::Trace);
static B3_SPANID: Known = Known::new("x-b3-spanid", Name::Trace);
static REQUEST_ID: Known = Known::new("x-request-id", Name::XRequestId);
static B3_TRACEID: Known = Known::new("x-b3-traceid", Name::Trace);
static B3_SAMPLED: Known = Known::new("x-b3-sampled", Name::Trace);
static CONTENT_LENGTH: Known = Known::new("content-length", Name::ContentLength);
static HTTP2_SETTINGS: Known = Known::new("http2-settings", Name::HopByHop);
static FORWARDED_FOR: Known = Known::new("x-forwarded-for", Name::XForwardedFor);
static PROXY_CONNECTION: Known = Known::new("proxy-connection", Name::HopByHop);
static TRANSFER_ENCODING: Known = Known::new("transfer-encoding", Name::TransferEncoding);
static FORWARDED_PROTO: Known = Known::new("x-forwarded-proto", Name::XForwardedProto);
static B3_PARENT: Known = Known::new("x-b3-parentspanid", Name::Trace);
static PROXY_AUTHORIZATION: Known = Known::new("proxy-authorization", Name::HopByHop);

impl Name {
    /// Classifies a field name. Runs for every field several times per
    /// request, so the length and first letter pick the one known name it
    /// can be, which is then compared a word at a time ([`Known`]); most
    /// fields (Date, Server, Content-Type...) are `Other` at once.
    #[inline]
    pub(crate) fn of(name: &[u8]) -> Name {
        let Some(first) = name.first() else {
            return Name::Other;
        };
        let at = |i: usize| name.get(i).map_or(0, |b| b | 0x20);
        let known = match (name.len(), first | 0x20) {
            (2, b't') => &TE,
            (2, b'b') => &B3,
            (4, b'h') => &HOST,
            (6, b'e') => &EXPECT,
            (7, b'u') => &UPGRADE,
            (10, b'c') => &CONNECTION,
            (10, b'k') => &KEEP_ALIVE,
            (10, b't') => &TRACESTATE,
            (10, b'x') => &B3_FLAGS,
            (11, b't') => &TRACEPARENT,
            (11, b'x') => &B3_SPANID,
            (12, b'x') => match (at(2), at(5)) {
                (b'r', _) => &REQUEST_ID,
                (b'b', b't') => &B3_TRACEID,
                _ => &B3_SAMPLED,
            },
            (14, b'c') => &CONTENT_LENGTH,
            (14, b'h') => &HTTP2_SETTINGS,
            (15, b'x') => &FORWARDED_FOR,
            (16, b'p') => &PROXY_CONNECTION,
            (17, b't') => &TRANSFER_ENCODING,
            (17, b'x') if at(2) == b'f' => &FORWARDED_PROTO,
            (17, b'x') => &B3_PARENT,
            (19, b'p') => &PROXY_AUTHORIZATION,
            _ => return Name::Other,
        };
        known.class_of(name)
    }

    /// A field that belongs to one connection ([`HOP_BY_HOP`]).
    pub(crate) fn hop_by_hop(self) -> bool {
        matches!(
            self,
            Name::Connection | Name::Upgrade | Name::Te | Name::TransferEncoding | Name::HopByHop
        )
    }

    /// A field a `Connection` header may not name: framing, the target, and
    /// everything the proxy writes on a request.
    fn protected(self) -> bool {
        matches!(
            self,
            Name::ContentLength
                | Name::TransferEncoding
                | Name::Host
                | Name::XRequestId
                | Name::XForwardedFor
                | Name::XForwardedProto
                | Name::Trace
        )
    }
}

/// The classes of a message's first fields, as its analysis found them, so
/// that writing it does not classify them again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Names([Name; 32]);

impl Default for Names {
    fn default() -> Self {
        Names([Name::Other; 32])
    }
}

impl Names {
    fn set(&mut self, i: usize, class: Name) {
        if let Some(slot) = self.0.get_mut(i) {
            *slot = class;
        }
    }

    /// The class of field `i`, `name`.
    fn of(&self, i: usize, name: &str) -> Name {
        match self.0.get(i) {
            Some(class) => *class,
            None => Name::of(name.as_bytes()),
        }
    }
}

/// The HTTP version a request came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Version {
    Http10,
    Http11,
    Http2,
}

/// How a request's body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Body {
    /// No body (no Content-Length, no Transfer-Encoding).
    Empty,
    Length(u64),
    Chunked,
}

/// Why a request is refused before it goes anywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reject {
    BadContentLength,
    ConflictingContentLength,
    /// Both Content-Length and Transfer-Encoding: request smuggling.
    LengthTwice,
    /// A transfer coding other than `chunked` alone (501).
    UnsupportedTransferEncoding,
    TransferEncodingOnHttp10,
    MissingHost,
    DuplicateHost,
    InvalidHost,
    /// `Connection` names a framing field, Host, or a field the proxy writes.
    ConnectionNamesProtected,
    /// The guard in front of the general path could not follow the
    /// connection's framing up to this request (fail closed).
    Unverified,
}

impl Reject {
    pub(crate) fn status(self) -> u16 {
        match self {
            Reject::UnsupportedTransferEncoding => 501,
            _ => 400,
        }
    }

    /// The `x-sidecar-error` code.
    pub(crate) fn code(self) -> &'static str {
        match self {
            Reject::BadContentLength => "bad_content_length",
            Reject::ConflictingContentLength => "conflicting_content_length",
            Reject::LengthTwice => "malformed_request",
            Reject::UnsupportedTransferEncoding => "unsupported_transfer_encoding",
            Reject::TransferEncodingOnHttp10 => "malformed_request",
            Reject::MissingHost => "missing_host",
            Reject::DuplicateHost => "duplicate_host",
            Reject::InvalidHost => "invalid_host",
            Reject::ConnectionNamesProtected => "connection_names_protected_header",
            Reject::Unverified => "unverified_framing",
        }
    }

    /// The `reason` label of `sidecar_proxy_rejected_requests_total`.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Reject::MissingHost | Reject::DuplicateHost | Reject::InvalidHost => "bad_host",
            Reject::ConnectionNamesProtected => "bad_connection_header",
            _ => "malformed",
        }
    }

    pub(crate) fn message(self) -> &'static str {
        match self {
            Reject::BadContentLength => "Content-Length must be ASCII digits",
            Reject::ConflictingContentLength => {
                "the request carries Content-Length values that differ"
            }
            Reject::LengthTwice => {
                "a request may not carry both Content-Length and Transfer-Encoding"
            }
            Reject::UnsupportedTransferEncoding => {
                "the only transfer coding accepted is `Transfer-Encoding: chunked`, once"
            }
            Reject::TransferEncodingOnHttp10 => "HTTP/1.0 requests cannot use Transfer-Encoding",
            Reject::MissingHost => "an HTTP/1.1 request needs a Host header",
            Reject::DuplicateHost => "a request may carry one Host header only",
            Reject::InvalidHost => "the Host header is not a valid host[:port]",
            Reject::ConnectionNamesProtected => {
                "the Connection header may not name Content-Length, Transfer-Encoding, Host, \
                 X-Forwarded-*, x-request-id or trace headers"
            }
            Reject::Unverified => {
                "the proxy could not follow this connection's message framing; send the \
                 request again on a new connection"
            }
        }
    }
}

/// What the rules found in an acceptable request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RequestFacts<'a> {
    pub body: Body,
    /// The authority the request is for: an absolute-form target's (or
    /// HTTP/2's `:authority`), else the Host field's; None for HTTP/1.0
    /// without one.
    pub host: Option<&'a str>,
    /// The received Host field goes on as it came (else the proxy writes
    /// `host`, or for an HTTP/2 upstream `:authority`).
    pub host_field_kept: bool,
    /// The client asked to close after this response.
    pub close: bool,
    /// An upgrade (other than h2c) was asked for: `Connection: upgrade` and `Upgrade`.
    pub upgrade: bool,
    pub expect: bool,
    /// The client's `x-request-id`, if any.
    pub request_id: Option<&'a str>,
    pub forwarded_proto: bool,
    /// `TE` lists `trailers` (gRPC).
    pub te_trailers: bool,
    /// `Connection` names fields (besides close, keep-alive, upgrade), which are dropped.
    pub named: bool,
    /// The request carries a trace header (else there is no context to read).
    pub traced: bool,
    names: Names,
}

/// Checks a request's fields; `target_authority` is the authority of an
/// absolute-form target, or HTTP/2's `:authority`.
pub(crate) fn analyze_request<'a, F: Fields + ?Sized>(
    version: Version,
    target_authority: Option<&'a str>,
    fields: &'a F,
) -> Result<RequestFacts<'a>, Reject> {
    let mut length: Option<u64> = None;
    let (mut te_fields, mut te_chunked) = (0u32, false);
    let (mut hosts, mut host_value): (u32, Option<&[u8]>) = (0, None);
    let (mut close, mut keep_alive, mut conn_upgrade) = (false, false, false);
    let (mut named, mut protected) = (false, false);
    let (mut upgrade_field, mut h2c) = (false, false);
    let mut facts = RequestFacts {
        body: Body::Empty,
        host: None,
        host_field_kept: false,
        close: false,
        upgrade: false,
        expect: false,
        request_id: None,
        forwarded_proto: false,
        te_trailers: false,
        named: false,
        traced: false,
        names: Names::default(),
    };
    let mut bad_length = false;
    for (i, (name, value)) in fields.each().enumerate() {
        let class = Name::of(name.as_bytes());
        facts.names.set(i, class);
        match class {
            Name::ContentLength => match parse_length(value) {
                Some(v) if length.is_some_and(|l| l != v) => {
                    return Err(Reject::ConflictingContentLength);
                }
                Some(v) => length = Some(v),
                None => bad_length = true,
            },
            Name::TransferEncoding => {
                te_fields += 1;
                te_chunked = trim_ows(value).eq_ignore_ascii_case(b"chunked");
            }
            Name::Host => {
                hosts += 1;
                host_value = Some(value);
            }
            Name::Connection => {
                for t in tokens(value) {
                    if t.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if t.eq_ignore_ascii_case(b"keep-alive") {
                        keep_alive = true;
                    } else if t.eq_ignore_ascii_case(b"upgrade") {
                        conn_upgrade = true;
                    } else {
                        named = true;
                        protected |= Name::of(t).protected();
                    }
                }
            }
            Name::Upgrade => {
                upgrade_field = true;
                h2c |= tokens(value).any(|t| t.len() >= 3 && t[..3].eq_ignore_ascii_case(b"h2c"));
            }
            Name::Expect => facts.expect = true,
            Name::XRequestId if facts.request_id.is_none() => {
                facts.request_id = std::str::from_utf8(trim_ows(value)).ok();
            }
            Name::XForwardedProto => facts.forwarded_proto = true,
            Name::Te => facts.te_trailers |= has_token(value, "trailers"),
            Name::Trace => facts.traced = true,
            _ => {}
        }
    }
    // Checked in a fixed order, so the verdict never depends on field order.
    if protected {
        return Err(Reject::ConnectionNamesProtected);
    }
    if te_fields > 0 {
        if length.is_some() || bad_length {
            return Err(Reject::LengthTwice);
        }
        if version == Version::Http10 {
            return Err(Reject::TransferEncodingOnHttp10);
        }
        if te_fields > 1 || !te_chunked {
            return Err(Reject::UnsupportedTransferEncoding);
        }
    }
    if bad_length {
        return Err(Reject::BadContentLength);
    }
    if hosts > 1 {
        return Err(Reject::DuplicateHost);
    }
    let host_field = match host_value {
        Some(v) if valid_host(v) => std::str::from_utf8(v).ok(),
        Some(_) => return Err(Reject::InvalidHost),
        None => None,
    };
    match version {
        Version::Http11 if hosts == 0 => return Err(Reject::MissingHost),
        Version::Http2 => {
            if let (Some(a), Some(h)) = (target_authority, host_field) {
                if !a.eq_ignore_ascii_case(h) {
                    return Err(Reject::DuplicateHost);
                }
            }
        }
        _ => {}
    }
    if target_authority.is_some_and(|a| !valid_host(a.as_bytes())) {
        return Err(Reject::InvalidHost);
    }
    facts.host = target_authority.or(host_field);
    facts.host_field_kept = target_authority.is_none() && host_field.is_some();
    facts.body = match (te_fields, length) {
        (0, Some(n)) => Body::Length(n),
        (0, None) => Body::Empty,
        _ => Body::Chunked,
    };
    facts.close = match version {
        Version::Http10 => !keep_alive || close,
        _ => close,
    };
    facts.upgrade = conn_upgrade && upgrade_field && !h2c && version == Version::Http11;
    facts.named = named;
    Ok(facts)
}

/// The authority of an absolute-form request target
/// (`http://host:port/path`), if the target is one.
pub(crate) fn target_authority(target: &str) -> Option<&str> {
    let (scheme, rest) = target.split_once("://")?;
    let scheme_ok = !scheme.is_empty()
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    if !scheme_ok {
        return None;
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    Some(&rest[..end])
}

/// A Host value (RFC 9110 §7.2): `uri-host [ ":" port ]`, no user info, no
/// path; empty is allowed (a target without authority).
fn valid_host(v: &[u8]) -> bool {
    v.iter().all(|b| HOST_BYTES[usize::from(*b)])
}

/// The bytes of a reg-name, IPv4 or IP-literal host and a port: unreserved,
/// pct-encoded, sub-delims, `:`, `[`, `]` (a table: checked per byte).
static HOST_BYTES: [bool; 256] = crate::h1::uri_bytes(b":[]");

/// A name that reads as a framing field, Host or one the proxy writes
/// once `_` is taken for `-` (`X_Forwarded_For`): CGI-style upstreams
/// (`HTTP_X_FORWARDED_FOR`) cannot tell it from the real one, so it never
/// goes on (nginx drops every name with `_` by default).
fn underscored_lookalike(name: &str) -> bool {
    if !name.contains('_') || name.len() > 24 {
        return false;
    }
    let mut dashed = [0u8; 24];
    for (to, from) in dashed.iter_mut().zip(name.bytes()) {
        *to = if from == b'_' { b'-' } else { from };
    }
    Name::of(&dashed[..name.len()]).protected()
}

/// True when a `Connection` field of `fields` names `name`.
fn connection_names<F: Fields + ?Sized>(fields: &F, name: &str) -> bool {
    fields
        .each()
        .filter(|(n, _)| n.eq_ignore_ascii_case("connection"))
        .any(|(_, v)| has_token(v, name))
}

/// Where a rewritten head goes: the fast path's bytes, or hyper's map.
pub(crate) trait Sink {
    /// A received field that goes on as it came.
    fn keep(&mut self, name: &str, value: &[u8]);
    /// A field the proxy writes; `value` is written by the closure.
    fn add_with(&mut self, name: &'static str, value: impl FnOnce(&mut Vec<u8>));
    /// The trace context for the next hop (W3C `traceparent`/`tracestate`, B3 multi).
    fn trace(&mut self, ctx: &Outgoing);

    fn add(&mut self, name: &'static str, value: &[u8]) {
        self.add_with(name, |v| v.extend_from_slice(value));
    }
}

/// What the proxy adds to a request, besides what the rules decide.
pub(crate) struct Ours<'a> {
    pub trace: &'a Outgoing,
    /// A request id the proxy made (the client sent none).
    pub generated_id: Option<&'a str>,
    /// The client's address, appended to X-Forwarded-For.
    pub peer_ip: &'a str,
    /// The upstream talks HTTP/2: `Host` becomes `:authority` (set by the
    /// caller from [`upstream_host`]), `te: trailers` goes on.
    pub http2_upstream: bool,
    /// The route's upstream `host:port`, the Host of a request that has none (HTTP/1.0).
    pub default_host: &'a str,
}

/// The authority an upstream request is for: `Host` (HTTP/1.1 upstream) or
/// `:authority` (HTTP/2), which the rules keep equal.
pub(crate) fn upstream_host<'a>(facts: &RequestFacts<'a>, ours: &Ours<'a>) -> &'a str {
    facts.host.unwrap_or(ours.default_host)
}

/// Writes the fields of the upstream request into `sink`: the received ones
/// that go on (in order), then the proxy's own. `fields` are those `facts`
/// were found in (their classes are reused).
pub(crate) fn write_request<F: Fields + ?Sized>(
    fields: &F,
    facts: &RequestFacts<'_>,
    ours: &Ours<'_>,
    sink: &mut impl Sink,
) {
    let mut length_kept = false;
    for (i, (name, value)) in fields.each().enumerate() {
        let goes_on = match facts.names.of(i, name) {
            // An upgrade's protocols go on with it; `Connection: upgrade` is written below.
            Name::Upgrade => facts.upgrade,
            n if n.hop_by_hop() => false,
            // Equal repeats are one value: sent once.
            Name::ContentLength => !std::mem::replace(&mut length_kept, true),
            Name::Host => facts.host_field_kept && !ours.http2_upstream,
            Name::Trace | Name::XForwardedFor => false,
            _ => !(underscored_lookalike(name) || facts.named && connection_names(fields, name)),
        };
        if goes_on {
            sink.keep(name, value);
        }
    }
    // What the proxy writes comes after every removal: nothing the client
    // sent can take it away.
    if !ours.http2_upstream && !(facts.host_field_kept) {
        sink.add("host", upstream_host(facts, ours).as_bytes());
    }
    if facts.upgrade {
        sink.add("connection", b"upgrade");
    }
    if ours.http2_upstream && facts.te_trailers {
        sink.add("te", b"trailers");
    }
    sink.trace(ours.trace);
    if let Some(id) = ours.generated_id {
        sink.add("x-request-id", id.as_bytes());
    }
    sink.add_with("x-forwarded-for", |v| {
        for (_, value) in fields
            .each()
            .filter(|(n, _)| n.eq_ignore_ascii_case("x-forwarded-for"))
        {
            let value = trim_ows(value);
            if !value.is_empty() {
                v.extend_from_slice(value);
                v.extend_from_slice(b", ");
            }
        }
        v.extend_from_slice(ours.peer_ip.as_bytes());
    });
    if !facts.forwarded_proto {
        sink.add("x-forwarded-proto", b"http");
    }
}

/// Why an upstream's response is refused (502).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BadResponse {
    /// A status outside 100-999.
    Status,
    TransferEncodingOnHttp10,
    BadContentLength,
    ConflictingContentLength,
    LengthTwice,
    UnsupportedTransferEncoding,
    ConnectionNamesFraming,
}

impl std::fmt::Display for BadResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BadResponse::Status => "a status code outside 100-999",
            BadResponse::TransferEncodingOnHttp10 => "Transfer-Encoding in an HTTP/1.0 response",
            BadResponse::BadContentLength => "invalid Content-Length",
            BadResponse::ConflictingContentLength => "conflicting Content-Length",
            BadResponse::LengthTwice => "both Content-Length and Transfer-Encoding",
            BadResponse::UnsupportedTransferEncoding => {
                "a Transfer-Encoding other than `chunked` once"
            }
            BadResponse::ConnectionNamesFraming => {
                "a Connection header naming Content-Length or Transfer-Encoding"
            }
        })
    }
}

/// What the rules found in an acceptable response head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ResponseFacts {
    pub length: Option<u64>,
    pub chunked: bool,
    pub close: bool,
    pub keep_alive: bool,
    pub named: bool,
    names: Names,
}

/// Checks a response's status and fields (the same rules as a request's
/// framing); `http10`: the upstream answered in HTTP/1.0.
pub(crate) fn analyze_response<F: Fields + ?Sized>(
    status: u16,
    http10: bool,
    fields: &F,
) -> Result<ResponseFacts, BadResponse> {
    if !(100..=999).contains(&status) {
        return Err(BadResponse::Status);
    }
    let mut facts = ResponseFacts {
        length: None,
        chunked: false,
        close: false,
        keep_alive: false,
        named: false,
        names: Names::default(),
    };
    let (mut te_fields, mut bad_length, mut names_framing) = (0u32, false, false);
    for (i, (name, value)) in fields.each().enumerate() {
        let class = Name::of(name.as_bytes());
        facts.names.set(i, class);
        match class {
            Name::ContentLength => match parse_length(value) {
                Some(v) if facts.length.is_some_and(|l| l != v) => {
                    return Err(BadResponse::ConflictingContentLength);
                }
                Some(v) => facts.length = Some(v),
                None => bad_length = true,
            },
            Name::TransferEncoding => {
                te_fields += 1;
                facts.chunked = trim_ows(value).eq_ignore_ascii_case(b"chunked");
            }
            Name::Connection => {
                for t in tokens(value) {
                    if t.eq_ignore_ascii_case(b"close") {
                        facts.close = true;
                    } else if t.eq_ignore_ascii_case(b"keep-alive") {
                        facts.keep_alive = true;
                    } else {
                        facts.named = true;
                        names_framing |=
                            matches!(Name::of(t), Name::ContentLength | Name::TransferEncoding);
                    }
                }
            }
            _ => {}
        }
    }
    if names_framing {
        return Err(BadResponse::ConnectionNamesFraming);
    }
    if te_fields > 0 && (facts.length.is_some() || bad_length) {
        return Err(BadResponse::LengthTwice);
    }
    if te_fields > 0 && http10 {
        return Err(BadResponse::TransferEncodingOnHttp10);
    }
    if te_fields > 1 || (te_fields == 1 && !facts.chunked) {
        return Err(BadResponse::UnsupportedTransferEncoding);
    }
    if bad_length {
        return Err(BadResponse::BadContentLength);
    }
    Ok(facts)
}

/// How a response's body is framed (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ResponseBody {
    /// None: a response to HEAD, or 1xx, 204, 304.
    Empty,
    Length(u64),
    Chunked,
    /// Until the upstream closes its connection: the client's connection
    /// then ends after this response too, on both paths (a body framed by
    /// closing cannot be followed by another response).
    UntilClose,
}

/// How the body of an HTTP/1 response with `status` and `facts` is framed.
pub(crate) fn response_body(
    status: u16,
    head_request: bool,
    facts: &ResponseFacts,
) -> ResponseBody {
    if head_request || status < 200 || status == 204 || status == 304 {
        ResponseBody::Empty
    } else if facts.chunked {
        ResponseBody::Chunked
    } else if let Some(n) = facts.length {
        ResponseBody::Length(n)
    } else {
        ResponseBody::UntilClose
    }
}

/// Writes the fields of a response with `status` that go on to the
/// client: hop-by-hop ones and those `Connection` names out, repeated
/// Content-Length once, and none on a 1xx or 204 (RFC 9110 §8.6). The path
/// adds its own framing (`transfer-encoding`, `connection: close`).
pub(crate) fn write_response<F: Fields + ?Sized>(
    status: u16,
    fields: &F,
    facts: &ResponseFacts,
    sink: &mut impl Sink,
) {
    let no_length = status < 200 || status == 204;
    let mut length_kept = false;
    for (i, (name, value)) in fields.each().enumerate() {
        let goes_on = match facts.names.of(i, name) {
            n if n.hop_by_hop() => false,
            Name::ContentLength => !no_length && !std::mem::replace(&mut length_kept, true),
            _ => !(facts.named && connection_names(fields, name)),
        };
        if goes_on {
            sink.keep(name, value);
        }
    }
}

/// What a written head declares about the body after it, noted field by
/// field as a sink writes them. Checked against the body that follows just
/// before the head goes out, so a rule that dropped or doubled a framing
/// field can never send a body the far side reads differently.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Declared {
    lengths: u32,
    length: Option<u64>,
    chunked: u32,
    other_codings: u32,
}

impl Declared {
    pub(crate) fn note(&mut self, name: &str, value: &[u8]) {
        // Only two names matter, of lengths 14 and 17.
        if matches!(name.len(), 14 | 17) {
            self.note_as(Name::of(name.as_bytes()), value);
        }
    }

    /// [`Declared::note`] for a name the proxy writes (lower case).
    pub(crate) fn note_ours(&mut self, name: &'static str, value: &[u8]) {
        match name {
            "content-length" => self.note_as(Name::ContentLength, value),
            "transfer-encoding" => self.note_as(Name::TransferEncoding, value),
            _ => {}
        }
    }

    fn note_as(&mut self, name: Name, value: &[u8]) {
        match name {
            Name::ContentLength => {
                self.lengths += 1;
                self.length = parse_length(value);
            }
            Name::TransferEncoding if trim_ows(value).eq_ignore_ascii_case(b"chunked") => {
                self.chunked += 1;
            }
            Name::TransferEncoding => self.other_codings += 1,
            _ => {}
        }
    }

    /// True when the head frames `body` exactly: `Empty` with no framing
    /// field (or `Content-Length: 0`), `Length(n)` with one Content-Length
    /// of n, `Chunked` with one `Transfer-Encoding: chunked`.
    pub(crate) fn frames(&self, body: Body) -> bool {
        let no_coding = self.chunked == 0 && self.other_codings == 0;
        match body {
            Body::Empty => {
                no_coding && (self.lengths == 0 || (self.lengths == 1 && self.length == Some(0)))
            }
            Body::Length(n) => no_coding && self.lengths == 1 && self.length == Some(n),
            Body::Chunked => self.chunked == 1 && self.other_codings == 0 && self.lengths == 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sidecar_telemetry::trace;

    #[test]
    fn names_are_classified_whatever_their_case() {
        for n in HOP_BY_HOP {
            for v in [n.to_string(), n.to_ascii_uppercase()] {
                assert!(Name::of(v.as_bytes()).hop_by_hop(), "{v}");
            }
        }
        for n in trace::TRACE_HEADERS {
            assert_eq!(
                Name::of(n.to_ascii_uppercase().as_bytes()),
                Name::Trace,
                "{n}"
            );
        }
        for (n, expected) in [
            ("Content-Length", Name::ContentLength),
            ("HOST", Name::Host),
            ("x-Request-ID", Name::XRequestId),
            ("X-Forwarded-For", Name::XForwardedFor),
            ("x-forwarded-proto", Name::XForwardedProto),
            ("Expect", Name::Expect),
            ("hosts", Name::Other),
            ("content-lengths", Name::Other),
            ("", Name::Other),
            ("x-b3-traceie", Name::Other),
            ("x-b3-sampler", Name::Other),
            ("x-forwarded-prot0", Name::Other),
            ("HOST\u{0}", Name::Other),
            ("Date", Name::Other),
            ("Content-Type", Name::Other),
        ] {
            assert_eq!(Name::of(n.as_bytes()), expected, "{n}");
        }
        assert!(!Name::Other.hop_by_hop() && !Name::ContentLength.hop_by_hop());
    }

    /// The plain form of [`Name::of`]: lower-case, then look up.
    fn naive(name: &str) -> Name {
        let known = [
            ("te", Name::Te),
            ("host", Name::Host),
            ("expect", Name::Expect),
            ("upgrade", Name::Upgrade),
            ("connection", Name::Connection),
            ("keep-alive", Name::HopByHop),
            ("proxy-connection", Name::HopByHop),
            ("proxy-authorization", Name::HopByHop),
            ("http2-settings", Name::HopByHop),
            ("x-request-id", Name::XRequestId),
            ("content-length", Name::ContentLength),
            ("transfer-encoding", Name::TransferEncoding),
            ("x-forwarded-for", Name::XForwardedFor),
            ("x-forwarded-proto", Name::XForwardedProto),
        ];
        let lower = name.to_ascii_lowercase();
        if trace::TRACE_HEADERS.contains(&lower.as_str()) {
            return Name::Trace;
        }
        known
            .iter()
            .find(|(n, _)| *n == lower)
            .map_or(Name::Other, |(_, c)| *c)
    }

    proptest::proptest! {
        #[test]
        fn the_quick_classifier_agrees_with_the_plain_one(
            pick in 0usize..30,
            flips in proptest::collection::vec(proptest::bool::ANY, 20),
            tweak in proptest::option::of((0usize..20, 0u8..128)),
            random in "[a-zA-Z0-9-]{0,20}",
        ) {
            let names = [
                "te", "host", "expect", "upgrade", "connection", "keep-alive",
                "proxy-connection", "proxy-authorization", "http2-settings", "x-request-id",
                "content-length", "transfer-encoding", "x-forwarded-for", "x-forwarded-proto",
                "traceparent", "tracestate", "b3", "x-b3-traceid", "x-b3-spanid",
                "x-b3-parentspanid", "x-b3-sampled", "x-b3-flags",
            ];
            let base = names.get(pick).map_or(random.clone(), |n| n.to_string());
            let mut bytes: Vec<u8> = base
                .bytes()
                .zip(flips.iter().cycle())
                .map(|(b, up)| if *up { b.to_ascii_uppercase() } else { b })
                .collect();
            if let Some((i, b)) = tweak {
                if i < bytes.len() {
                    bytes[i] = b;
                }
            }
            let name = String::from_utf8_lossy(&bytes).to_string();
            proptest::prop_assert_eq!(Name::of(name.as_bytes()), naive(&name), "{:?}", name);
        }
    }

    fn fields(pairs: &[(&'static str, &'static str)]) -> Vec<httparse::Header<'static>> {
        pairs
            .iter()
            .map(|(n, v)| httparse::Header {
                name: n,
                value: v.as_bytes(),
            })
            .collect()
    }

    fn request(pairs: &[(&'static str, &'static str)]) -> Result<RequestFacts<'static>, Reject> {
        let f: &'static [httparse::Header<'static>] = Box::leak(fields(pairs).into_boxed_slice());
        analyze_request(Version::Http11, None, f)
    }

    /// A sink that records what it is given, as lines.
    #[derive(Default)]
    struct Lines(Vec<String>);

    impl Sink for Lines {
        fn keep(&mut self, name: &str, value: &[u8]) {
            self.0
                .push(format!("{name}: {}", String::from_utf8_lossy(value)));
        }
        fn add_with(&mut self, name: &'static str, value: impl FnOnce(&mut Vec<u8>)) {
            let mut v = Vec::new();
            value(&mut v);
            self.0
                .push(format!("+{name}: {}", String::from_utf8_lossy(&v)));
        }
        fn trace(&mut self, _ctx: &Outgoing) {
            self.0.push("+trace".into());
        }
    }

    fn outgoing() -> Outgoing {
        Outgoing {
            trace_id: trace::TraceId { hi: 0, lo: 1 },
            span_id: 2,
            parent_id: None,
            sampled: true,
            tracestate: None,
        }
    }

    fn written(pairs: &[(&'static str, &'static str)], h2: bool) -> Vec<String> {
        let f = fields(pairs);
        let facts = analyze_request(Version::Http11, None, &f[..]).unwrap();
        let ctx = outgoing();
        let ours = Ours {
            trace: &ctx,
            generated_id: None,
            peer_ip: "10.0.0.9",
            http2_upstream: h2,
            default_host: "up:80",
        };
        let mut sink = Lines::default();
        write_request(&f[..], &facts, &ours, &mut sink);
        sink.0
    }

    #[test]
    fn connection_may_not_name_framing_host_or_what_the_proxy_writes() {
        for named in [
            "content-length",
            "Content-Length",
            "keep-alive, TRANSFER-ENCODING",
            "host",
            "x-request-id",
            "X-Forwarded-For",
            "x-forwarded-proto",
            "traceparent",
            "x-b3-traceid, x-b3-spanid",
            "b3",
        ] {
            let named: &'static str = Box::leak(named.to_string().into_boxed_str());
            assert_eq!(
                request(&[
                    ("Host", "a"),
                    ("Connection", named),
                    ("Content-Length", "3")
                ]),
                Err(Reject::ConnectionNamesProtected),
                "{named}"
            );
        }
        let f = request(&[("Host", "a"), ("Connection", "x-drop, close")]).unwrap();
        assert!(f.named && f.close);
    }

    #[test]
    fn framing_is_one_content_length_or_chunked_alone() {
        let ok = |p: &[(&'static str, &'static str)]| request(p).map(|f| f.body);
        assert_eq!(ok(&[("Host", "a")]), Ok(Body::Empty));
        assert_eq!(
            ok(&[("Host", "a"), ("Content-Length", "5")]),
            Ok(Body::Length(5))
        );
        assert_eq!(
            ok(&[
                ("Host", "a"),
                ("Content-Length", "5"),
                ("content-length", " 5")
            ]),
            Ok(Body::Length(5))
        );
        assert_eq!(
            ok(&[("Host", "a"), ("Transfer-Encoding", "chunked")]),
            Ok(Body::Chunked)
        );
        for (pairs, reject) in [
            (
                vec![("Content-Length", "5"), ("Content-Length", "6")],
                Reject::ConflictingContentLength,
            ),
            (
                vec![("Content-Length", "5\u{a0}")],
                Reject::BadContentLength,
            ),
            (vec![("Content-Length", "5, 5")], Reject::BadContentLength),
            (
                vec![("Transfer-Encoding", "chunked"), ("Content-Length", "5")],
                Reject::LengthTwice,
            ),
            (
                vec![("Content-Length", "x"), ("Transfer-Encoding", "chunked")],
                Reject::LengthTwice,
            ),
            (
                vec![("Transfer-Encoding", "gzip, chunked")],
                Reject::UnsupportedTransferEncoding,
            ),
            (
                vec![
                    ("Transfer-Encoding", "chunked"),
                    ("Transfer-Encoding", "chunked"),
                ],
                Reject::UnsupportedTransferEncoding,
            ),
        ] {
            let mut all = vec![("Host", "a")];
            all.extend(pairs.iter().copied());
            assert_eq!(ok(&all), Err(reject), "{pairs:?}");
        }
    }

    #[test]
    fn host_follows_rfc_9112_section_3_2() {
        assert_eq!(request(&[]), Err(Reject::MissingHost));
        assert_eq!(
            request(&[("Host", "a"), ("Host", "a")]),
            Err(Reject::DuplicateHost)
        );
        assert_eq!(request(&[("Host", "a b")]), Err(Reject::InvalidHost));
        assert_eq!(request(&[("Host", "u@a")]), Err(Reject::InvalidHost));
        assert_eq!(request(&[("Host", "a/b")]), Err(Reject::InvalidHost));
        assert_eq!(
            request(&[("Host", "[::1]:80")]).unwrap().host,
            Some("[::1]:80")
        );
        let f = fields(&[("Host", "ignored")]);
        let facts = analyze_request(Version::Http11, Some("target:81"), &f[..]).unwrap();
        assert_eq!(facts.host, Some("target:81"));
        assert!(!facts.host_field_kept);
        let none: [httparse::Header<'_>; 0] = [];
        let facts = analyze_request(Version::Http10, None, &none[..]).unwrap();
        assert_eq!(facts.host, None);
        assert!(facts.close, "HTTP/1.0 closes unless keep-alive");
        let f = fields(&[("host", "b")]);
        assert_eq!(
            analyze_request(Version::Http2, Some("a"), &f[..]),
            Err(Reject::DuplicateHost)
        );
        assert_eq!(target_authority("http://a:1/x?y"), Some("a:1"));
        assert_eq!(target_authority("HTTP://a"), Some("a"));
        assert_eq!(target_authority("/p://q"), None);
        assert_eq!(target_authority("/x"), None);
    }

    #[test]
    fn h2c_upgrades_are_declined_and_others_kept() {
        let f = request(&[
            ("Host", "a"),
            ("Connection", "Upgrade, HTTP2-Settings"),
            ("Upgrade", "h2c"),
        ])
        .unwrap();
        assert!(!f.upgrade);
        let f = request(&[
            ("Host", "a"),
            ("Connection", "upgrade"),
            ("Upgrade", "websocket"),
        ])
        .unwrap();
        assert!(f.upgrade);
        let f = request(&[("Host", "a"), ("Upgrade", "websocket")]).unwrap();
        assert!(!f.upgrade, "Upgrade without Connection: upgrade");
    }

    #[test]
    fn the_proxy_writes_its_fields_after_every_removal() {
        let lines = written(
            &[
                ("Host", "a"),
                ("Connection", "keep-alive, x-drop"),
                ("X-Drop", "1"),
                ("X-Forwarded-For", "1.1.1.1"),
                ("traceparent", "00-stale"),
                ("x-forwarded-for", " 2.2.2.2 "),
                ("TE", "trailers"),
                ("Keep-Alive", "timeout=5"),
                ("Content-Length", "2"),
                ("content-length", "2"),
                ("X-Keep", "yes"),
            ],
            false,
        );
        assert_eq!(
            lines,
            [
                "Host: a",
                "Content-Length: 2",
                "X-Keep: yes",
                "+trace",
                "+x-forwarded-for: 1.1.1.1, 2.2.2.2, 10.0.0.9",
                "+x-forwarded-proto: http",
            ]
        );
        // HTTP/2 upstream: the Host becomes :authority; te: trailers goes on.
        let lines = written(
            &[
                ("Host", "a"),
                ("TE", "trailers"),
                ("X-Forwarded-Proto", "https"),
            ],
            true,
        );
        assert_eq!(
            lines,
            [
                "X-Forwarded-Proto: https",
                "+te: trailers",
                "+trace",
                "+x-forwarded-for: 10.0.0.9"
            ]
        );
    }

    #[test]
    fn underscore_lookalikes_of_what_the_proxy_writes_never_go_on() {
        let lines = written(
            &[
                ("Host", "a"),
                ("X_Forwarded_For", "6.6.6.6"),
                ("x_request_id", "forged"),
                ("Transfer_Encoding", "chunked"),
                ("X_B3_TraceId", "1"),
                ("x_custom", "kept"),
            ],
            false,
        );
        assert_eq!(
            lines,
            [
                "Host: a",
                "x_custom: kept",
                "+trace",
                "+x-forwarded-for: 10.0.0.9",
                "+x-forwarded-proto: http",
            ]
        );
    }

    #[test]
    fn no_length_goes_on_with_a_1xx_or_204() {
        let f = fields(&[("Content-Length", "5"), ("X", "y")]);
        let facts = analyze_response(204, false, &f[..]).unwrap();
        let mut sink = Lines::default();
        write_response(204, &f[..], &facts, &mut sink);
        assert_eq!(sink.0, ["X: y"]);
        let mut sink = Lines::default();
        write_response(304, &f[..], &facts, &mut sink);
        assert_eq!(
            sink.0,
            ["Content-Length: 5", "X: y"],
            "304 keeps its length"
        );
    }

    #[test]
    fn responses_frame_like_requests_and_refuse_connection_tricks() {
        let resp =
            |p: &[(&'static str, &'static str)]| analyze_response(200, false, &fields(p)[..]);
        assert_eq!(
            resp(&[("Connection", "content-length"), ("Content-Length", "2")]),
            Err(BadResponse::ConnectionNamesFraming)
        );
        assert_eq!(
            resp(&[
                ("Transfer-Encoding", "chunked"),
                ("Transfer-Encoding", "chunked")
            ]),
            Err(BadResponse::UnsupportedTransferEncoding)
        );
        assert_eq!(
            resp(&[("Transfer-Encoding", "chunked"), ("Content-Length", "2")]),
            Err(BadResponse::LengthTwice)
        );
        assert_eq!(
            resp(&[("Content-Length", "2"), ("Content-Length", "3")]),
            Err(BadResponse::ConflictingContentLength)
        );
        let f = resp(&[("Content-Length", "2"), ("Connection", "x-a")]).unwrap();
        assert_eq!((f.length, f.named), (Some(2), true));
        let chunked = fields(&[("Transfer-Encoding", "chunked")]);
        assert_eq!(
            analyze_response(200, true, &chunked[..]),
            Err(BadResponse::TransferEncodingOnHttp10)
        );
        assert_eq!(
            analyze_response(99, false, &chunked[..]),
            Err(BadResponse::Status)
        );
    }

    #[test]
    fn declared_framing_must_match_the_body() {
        let declared = |pairs: &[(&str, &str)]| {
            let mut d = Declared::default();
            for (n, v) in pairs {
                d.note(n, v.as_bytes());
            }
            d
        };
        assert!(declared(&[]).frames(Body::Empty));
        assert!(declared(&[("Content-Length", "0")]).frames(Body::Empty));
        assert!(
            !declared(&[]).frames(Body::Length(3)),
            "a dropped Content-Length"
        );
        assert!(declared(&[("content-length", "3")]).frames(Body::Length(3)));
        assert!(
            !declared(&[("content-length", "3"), ("content-length", "3")]).frames(Body::Length(3))
        );
        assert!(!declared(&[("content-length", "4")]).frames(Body::Length(3)));
        assert!(declared(&[("transfer-encoding", "chunked")]).frames(Body::Chunked));
        assert!(
            !declared(&[("transfer-encoding", "chunked"), ("content-length", "3")])
                .frames(Body::Chunked)
        );
    }
}
