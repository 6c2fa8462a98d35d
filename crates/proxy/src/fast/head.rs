//! Heads on the fast path: a request head planned and written for the
//! upstream, a response head checked and written for the client. What is
//! accepted and which fields go on is decided by the shared [`rules`]; this
//! module only writes their decisions as bytes ([`BytesSink`]), copying the
//! received lines that go on unchanged in runs ([`Lines`]).

use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, BytesMut};
use sidecar_telemetry::trace::{self, Outgoing};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use super::{Conn, MAX_RESPONSE_FIELDS, MAX_RESPONSE_HEAD, Plan, UPSTREAM_BUF};
use crate::h1::ChunkedEnd;
use crate::request::{self, RequestInfo};
use crate::rules::{self, Body, Declared, Ours, ResponseBody, Sink, TraceSource, Version};

/// Largest request body the fast path takes: it is read whole before the
/// request goes upstream, so the request can be sent again on a new
/// connection if a pooled one turns out closed.
const MAX_FAST_BODY: u64 = 64 * 1024;

/// How a response body ends.
pub(super) enum Framing {
    /// No body (HEAD, 1xx, 204, 304).
    Empty,
    Length(u64),
    Chunked(ChunkedEnd),
    /// At the end of the connection.
    UntilClose,
}

/// A response head, rewritten into the client's buffer.
pub(super) struct ResponseHead {
    pub status: u16,
    len: usize,
    pub framing: Framing,
    /// The upstream may keep the connection for another request.
    pub reusable: bool,
}

/// Why no response head came.
pub(super) enum HeadError {
    /// The connection ended (or failed) before a single byte of it.
    Closed,
    /// Something came that is not a usable response.
    Bad(String),
}

impl Conn {
    /// Decides whether the parsed head `req` (the bytes `head`) is for the
    /// fast path; if so, starts its span and writes the upstream head into
    /// `out`. Anything the rules refuse, or the fast path does not do, is
    /// left to the general path (None), which answers it.
    pub(super) fn plan(
        &self,
        req: &httparse::Request<'_, '_>,
        head: &[u8],
        out: &mut Vec<u8>,
    ) -> Option<Plan> {
        let (method, path) = (req.method?, req.path?);
        if req.version != Some(1) || !origin_form(path) || method == "CONNECT" {
            return None;
        }
        let path_only = path.split('?').next().unwrap_or(path);
        let listener = &self.listener;
        let route_index = listener.route(path_only)?;
        let route = &listener.routes[route_index];
        if route.http2 {
            return None;
        }
        let facts = rules::analyze_request(Version::Http11, None, req.headers).ok()?;
        if facts.upgrade || facts.expect {
            return None;
        }
        let body = match facts.body {
            Body::Length(n) if n > MAX_FAST_BODY => return None,
            Body::Chunked => return None,
            b => b,
        };
        let body_len = match body {
            Body::Length(n) => n as usize,
            _ => 0,
        };

        let incoming = facts
            .traced
            .then(|| trace::extract(&TraceSource(req.headers)).map(|(c, _)| c))
            .flatten();
        let generated = (listener.generate_request_id && facts.request_id.is_none())
            .then(trace::new_request_id);
        let (outgoing, pending) = request::begin(
            &self.shared,
            listener,
            Some(route_index),
            incoming,
            RequestInfo {
                method,
                host: facts.host.unwrap_or_default(),
                path_and_query: path,
                protocol: "HTTP/1.1",
                request_id: facts.request_id.or(generated.as_deref()),
                peer_ip: Arc::clone(&self.peer_ip),
                local: self.local,
            },
            Instant::now(),
            request::now_us(),
        );

        out.clear();
        let mut sink = BytesSink::new(out, head);
        match request_line(method, path, head) {
            // It goes on as it came (with the field lines after it, in one run).
            Some(line) => sink.lines.run = line,
            None => {
                sink.out.extend_from_slice(method.as_bytes());
                sink.out.push(b' ');
                sink.out.extend_from_slice(path.as_bytes());
                sink.out.extend_from_slice(b" HTTP/1.1\r\n");
            }
        }
        let ours = Ours {
            trace: &outgoing,
            generated_id: generated.as_deref(),
            peer_ip: &self.peer_ip,
            http2_upstream: false,
            default_host: route.authority.as_str(),
        };
        rules::write_request(req.headers, &facts, &ours, &mut sink);
        let declared = sink.finish();
        // The head must frame exactly the body that follows it.
        if !declared.frames(body) {
            tracing::error!(
                "the fast path wrote a request head that does not frame its {body_len}-byte body \
                 ({declared:?}); the general path serves it instead"
            );
            pending.discard();
            return None;
        }
        out.extend_from_slice(b"\r\n");
        Some(Plan {
            len: head.len() + body_len,
            body_len,
            route: route_index,
            close: facts.close,
            head_method: method == "HEAD",
            idempotent: matches!(
                method,
                "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
            ),
            pending,
        })
    }
}

/// Reads a response head into `rbuf` and writes its rewritten form for the
/// client into `out`: informational (1xx) heads are skipped and the next
/// head read; the body's framing decided.
pub(super) async fn read_response_head(
    upstream: &mut TcpStream,
    rbuf: &mut BytesMut,
    out: &mut Vec<u8>,
    head_method: bool,
) -> Result<ResponseHead, HeadError> {
    let max_head = MAX_RESPONSE_HEAD;
    out.clear();
    let mut skipped = false;
    loop {
        let parsed = {
            let mut headers = [const { std::mem::MaybeUninit::uninit() }; MAX_RESPONSE_FIELDS];
            let mut resp = httparse::Response::new(&mut []);
            match httparse::ParserConfig::default().parse_response_with_uninit_headers(
                &mut resp,
                rbuf,
                &mut headers,
            ) {
                Ok(httparse::Status::Complete(len)) => {
                    Some(rewrite_response(&resp, &rbuf[..len], head_method, out)?)
                }
                Ok(httparse::Status::Partial) if rbuf.len() < max_head => None,
                Ok(httparse::Status::Partial) => {
                    return Err(HeadError::Bad("response head too large".into()));
                }
                Err(e) => return Err(HeadError::Bad(format!("unparsable response: {e}"))),
            }
        };
        if let Some(head) = parsed {
            rbuf.advance(head.len);
            if (100..200).contains(&head.status) {
                // Informational heads (103 Early Hints...) are not passed
                // on: the general path cannot send them (hyper), and the
                // two paths answer alike. (100 Continue never comes here:
                // `Expect` requests take the general path.)
                out.clear();
                skipped = true;
                continue;
            }
            return Ok(head);
        }
        rbuf.reserve(UPSTREAM_BUF.min(max_head));
        match upstream.read_buf(rbuf).await {
            Ok(n) if n > 0 => {}
            Ok(_) | Err(_) if rbuf.is_empty() && !skipped => return Err(HeadError::Closed),
            Ok(_) => return Err(HeadError::Bad("the connection ended mid-head".into())),
            Err(e) => return Err(HeadError::Bad(e.to_string())),
        }
    }
}

/// Appends the client's form of a parsed response head (the bytes `head`) to
/// `out` (without the final empty line) and decides how its body is framed.
pub(super) fn rewrite_response(
    resp: &httparse::Response<'_, '_>,
    head: &[u8],
    head_method: bool,
    out: &mut Vec<u8>,
) -> Result<ResponseHead, HeadError> {
    let status = resp
        .code
        .ok_or_else(|| HeadError::Bad("no status".into()))?;
    if status == 101 {
        return Err(HeadError::Bad(
            "101 Switching Protocols to a request that asked for no upgrade".into(),
        ));
    }
    let facts = rules::analyze_response(status, resp.version == Some(0), resp.headers)
        .map_err(|e| HeadError::Bad(e.to_string()))?;
    let mut reusable = !facts.close && (resp.version == Some(1) || facts.keep_alive);
    let framing = match rules::response_body(status, head_method, &facts) {
        ResponseBody::Empty => Framing::Empty,
        ResponseBody::Length(n) => Framing::Length(n),
        ResponseBody::Chunked => Framing::Chunked(ChunkedEnd::default()),
        ResponseBody::UntilClose => Framing::UntilClose,
    };
    if matches!(framing, Framing::UntilClose) {
        reusable = false;
    }

    let at = out.len();
    let mut sink = BytesSink::new(out, head);
    match status_line(resp, head) {
        // An HTTP/1.1 status line goes on as it came (and, in the same run,
        // the field lines after it).
        Some(line) => sink.lines.run = line,
        None => {
            sink.out.extend_from_slice(b"HTTP/1.1 ");
            sink.out.extend_from_slice(&[
                b'0' + (status / 100 % 10) as u8,
                b'0' + (status / 10 % 10) as u8,
                b'0' + (status % 10) as u8,
                b' ',
            ]);
            sink.out
                .extend_from_slice(resp.reason.unwrap_or("").as_bytes());
            sink.out.extend_from_slice(b"\r\n");
        }
    }
    rules::write_response(status, resp.headers, &facts, &mut sink);
    // The body goes on byte for byte, so its transfer coding goes with it.
    if matches!(framing, Framing::Chunked(_)) {
        sink.add("transfer-encoding", b"chunked");
    }
    let declared = sink.finish();
    // The head must frame exactly the body that follows it (a body framed
    // by the end of the connection: no length, no coding).
    let frames = match &framing {
        Framing::Empty => true,
        Framing::Length(n) => declared.frames(Body::Length(*n)),
        Framing::Chunked(_) => declared.frames(Body::Chunked),
        Framing::UntilClose => declared.frames(Body::Empty),
    };
    if !frames {
        out.truncate(at);
        return Err(HeadError::Bad(format!(
            "the rewritten head would not frame the body ({declared:?})"
        )));
    }
    Ok(ResponseHead {
        status,
        len: head.len(),
        framing,
        reusable,
    })
}

/// A head written as bytes: received lines that go on are copied in runs,
/// the proxy's fields written anew; what it declares about the body is
/// noted as it goes ([`Declared`]).
struct BytesSink<'o, 'h> {
    out: &'o mut Vec<u8>,
    lines: Lines<'h>,
    declared: Declared,
}

impl<'o, 'h> BytesSink<'o, 'h> {
    fn new(out: &'o mut Vec<u8>, head: &'h [u8]) -> Self {
        Self {
            out,
            lines: Lines::new(head),
            declared: Declared::default(),
        }
    }

    /// Copies what is pending; what the head declares.
    fn finish(mut self) -> Declared {
        self.lines.flush(self.out);
        self.declared
    }
}

impl Sink for BytesSink<'_, '_> {
    fn keep(&mut self, name: &str, value: &[u8]) {
        self.declared.note(name, value);
        self.lines.keep(self.out, name, value);
    }

    fn add_with(&mut self, name: &'static str, value: impl FnOnce(&mut Vec<u8>)) {
        self.lines.flush(self.out);
        self.out.extend_from_slice(name.as_bytes());
        self.out.extend_from_slice(b": ");
        let at = self.out.len();
        value(self.out);
        self.declared.note_ours(name, &self.out[at..]);
        self.out.extend_from_slice(b"\r\n");
    }

    fn trace(&mut self, ctx: &Outgoing) {
        self.lines.flush(self.out);
        trace::write_outgoing_headers(ctx, self.out);
    }
}

/// An origin-form target of RFC 3986 characters only (path and query, no
/// fragment): any other is the general path's to judge, as hyper does.
fn origin_form(target: &str) -> bool {
    target.starts_with('/') && target.bytes().all(|b| TARGET_BYTES[usize::from(b)])
}

/// pchar (unreserved, pct-encoded, sub-delims, `:`, `@`), `/` and `?`.
static TARGET_BYTES: [bool; 256] = crate::h1::uri_bytes(b":@/?");

/// Where the request line of `method` and `path` is in `head`, if it can go
/// on unchanged: `METHOD path HTTP/1.1` and CRLF, from the head's first byte.
fn request_line(method: &str, path: &str, head: &[u8]) -> Option<std::ops::Range<usize>> {
    let offset = |s: &str| (s.as_ptr() as usize).wrapping_sub(head.as_ptr() as usize);
    let end = method.len() + 1 + path.len();
    let plain = offset(method) == 0
        && offset(path) == method.len() + 1
        && head.get(end..end + 11) == Some(b" HTTP/1.1\r\n");
    plain.then_some(0..end + 11)
}

/// Where the status line of `resp` is in `head`, if it can go on unchanged:
/// `HTTP/1.1`, the three digits, a reason phrase and CRLF.
fn status_line(resp: &httparse::Response<'_, '_>, head: &[u8]) -> Option<std::ops::Range<usize>> {
    let reason = resp.reason.filter(|r| !r.is_empty())?;
    let start = (reason.as_ptr() as usize).checked_sub(head.as_ptr() as usize)?;
    let end = start.checked_add(reason.len())?;
    let plain = resp.version == Some(1)
        && start == 13
        && head.get(..9) == Some(b"HTTP/1.1 ")
        && head.get(9..12)?.iter().all(u8::is_ascii_digit)
        && head.get(12) == Some(&b' ')
        && head.get(end..end + 2) == Some(b"\r\n");
    plain.then_some(0..end + 2)
}

fn put_header(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Copies the field lines a rewritten head keeps, in runs: kept fields
/// that follow each other in the parsed head are one slice of it, copied at
/// once (most heads keep all their fields, so this is one copy instead of
/// four per field). A line is copied as received only when it is exactly
/// `name:`, optional spaces or tabs, the value and CRLF; any other (a bare
/// LF ending) is written anew by [`put_header`].
struct Lines<'h> {
    head: &'h [u8],
    /// The run of kept lines not yet copied.
    run: std::ops::Range<usize>,
}

impl<'h> Lines<'h> {
    fn new(head: &'h [u8]) -> Self {
        Self { head, run: 0..0 }
    }

    /// Where the line of field `name: value` (slices of the head) is, if it
    /// is in the plain form.
    fn line(&self, name: &str, value: &[u8]) -> Option<std::ops::Range<usize>> {
        let base = self.head.as_ptr() as usize;
        let start = (name.as_ptr() as usize).checked_sub(base)?;
        let colon = start.checked_add(name.len())?;
        let value_at = (value.as_ptr() as usize).checked_sub(base)?;
        let end = value_at.checked_add(value.len())?;
        let plain = end <= self.head.len()
            && self.head.get(colon) == Some(&b':')
            && value_at > colon
            && self
                .head
                .get(colon + 1..value_at)?
                .iter()
                .all(|b| *b == b' ' || *b == b'\t')
            && self.head.get(end..end + 2) == Some(b"\r\n");
        plain.then_some(start..end + 2)
    }

    /// Adds the line of a kept field to what `out` gets.
    fn keep(&mut self, out: &mut Vec<u8>, name: &str, value: &[u8]) {
        match self.line(name, value) {
            Some(line) if line.start == self.run.end && !self.run.is_empty() => {
                self.run.end = line.end;
            }
            Some(line) => {
                self.flush(out);
                self.run = line;
            }
            None => {
                self.flush(out);
                put_header(out, name, value);
            }
        }
    }

    /// Copies the pending run to `out`; call before writing anything else.
    fn flush(&mut self, out: &mut Vec<u8>) {
        if let Some(run) = self.head.get(self.run.clone()) {
            out.extend_from_slice(run);
        }
        self.run = 0..0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::HOP_BY_HOP;
    use proptest::prelude::*;

    /// The lines of `head` (a response) that `rewrite_response` keeps, as it writes them.
    fn rewritten(head: &[u8]) -> Vec<u8> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_RESPONSE_FIELDS];
        let mut resp = httparse::Response::new(&mut headers);
        let len = match resp.parse(head).unwrap() {
            httparse::Status::Complete(len) => len,
            httparse::Status::Partial => panic!("partial head"),
        };
        let mut out = Vec::new();
        rewrite_response(&resp, &head[..len], false, &mut out)
            .ok()
            .unwrap();
        out
    }

    #[test]
    fn kept_header_lines_go_on_as_they_came_and_odd_ones_are_rewritten() {
        // Plain lines (any optional whitespace after the colon, an empty
        // value) are copied; hop-by-hop ones dropped; a bare LF ending and
        // trailing whitespace give a line written anew.
        let head = b"HTTP/1.1 200 OK\r\nServer: x\r\nA:b\r\nC:\t d\r\nE:\r\n\
            Connection: keep-alive, x-hop\r\nX-Hop: 1\r\nF: g\nH: i  \r\nContent-Length: 0\r\n\r\n";
        assert_eq!(
            String::from_utf8(rewritten(head)).unwrap(),
            "HTTP/1.1 200 OK\r\nServer: x\r\nA:b\r\nC:\t d\r\nE:\r\n\
             F: g\r\nH: i\r\nContent-Length: 0\r\n"
        );
        // Not HTTP/1.1, or no reason phrase: the status line is written anew.
        assert_eq!(
            rewritten(b"HTTP/1.0 404 Not Found\r\nA: b\r\n\r\n"),
            b"HTTP/1.1 404 Not Found\r\nA: b\r\n"
        );
        assert_eq!(rewritten(b"HTTP/1.1 204 \r\n\r\n"), b"HTTP/1.1 204 \r\n");
        assert_eq!(rewritten(b"HTTP/1.1 200 OK\n\n"), b"HTTP/1.1 200 OK\r\n");
    }

    proptest! {
        /// Whatever the header lines look like, the rewritten head has each
        /// kept header once, in order, with its value, every line ending in
        /// CRLF (never a bare LF passed on).
        #[test]
        fn rewritten_heads_keep_every_header_and_end_lines_in_crlf(
            lines in proptest::collection::vec(
                ("[A-Za-z][A-Za-z0-9-]{0,8}", "[ -~]{0,12}", 0usize..3, 0usize..2),
                0..10,
            ),
            reason in "[A-Za-z ]{0,6}",
        ) {
            let mut head = format!("HTTP/1.1 200 {reason}\r\n").into_bytes();
            for (name, value, sep, crlf) in &lines {
                head.extend_from_slice(name.as_bytes());
                head.extend_from_slice([": ", ":", ":\t"][*sep].as_bytes());
                head.extend_from_slice(value.as_bytes());
                head.extend_from_slice(if *crlf == 1 { b"\r\n" } else { b"\n" });
            }
            head.extend_from_slice(b"\r\n");
            let mut headers = [httparse::EMPTY_HEADER; MAX_RESPONSE_FIELDS];
            let mut resp = httparse::Response::new(&mut headers);
            let Ok(httparse::Status::Complete(len)) = resp.parse(&head) else {
                return Ok(()); // not a head httparse takes
            };
            let expected: Vec<(String, Vec<u8>)> = resp
                .headers
                .iter()
                .filter(|h| {
                    !HOP_BY_HOP.iter().any(|n| h.name.eq_ignore_ascii_case(n))
                        && !h.name.eq_ignore_ascii_case("content-length")
                })
                .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
                .collect();
            let expected_reason = resp.reason.map(str::to_owned);
            let mut out = Vec::new();
            if rewrite_response(&resp, &head[..len], false, &mut out).is_err() {
                return Ok(()); // e.g. a Content-Length that is not a number
            }
            let bare_lf = out
                .iter()
                .enumerate()
                .any(|(i, b)| *b == b'\n' && (i == 0 || out[i - 1] != b'\r'));
            prop_assert!(!bare_lf, "a bare LF in {:?}", String::from_utf8_lossy(&out));
            out.extend_from_slice(b"\r\n");
            let mut back = [httparse::EMPTY_HEADER; MAX_RESPONSE_FIELDS];
            let mut again = httparse::Response::new(&mut back);
            prop_assert!(matches!(again.parse(&out), Ok(httparse::Status::Complete(n)) if n == out.len()));
            let got: Vec<(String, Vec<u8>)> = again
                .headers
                .iter()
                .filter(|h| !h.name.eq_ignore_ascii_case("content-length"))
                .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
                .collect();
            prop_assert_eq!(got, expected);
            prop_assert_eq!(again.reason.map(str::to_owned), expected_reason);
        }
    }
}
