//! `sidecar proxy`'s HTTP rules, tried by an attacker on both paths (the
//! fast path, and the general path with `--no-fast-path`), with a strict
//! HTTP/1.1 parser (Python's h11) as the upstream: one regression test per
//! finding of the review that found request smuggling through `Connection`.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use common::peers::{self, H11Checker, H11Upstream, exchange, record_body};
use common::proxy::{Proxy, both_paths, statuses, targets};
use serde_json::Value;

fn header<'a>(record: &'a Value, name: &str) -> Vec<&'a str> {
    record["headers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h[0].as_str() == Some(name))
        .map(|h| h[1].as_str().unwrap())
        .collect()
}

/// The h11 upstream saw no request it could not parse strictly.
fn assert_no_upstream_errors(up: &H11Upstream) {
    let errors: Vec<Value> = up
        .records()
        .into_iter()
        .filter(|r| r.get("error").is_some())
        .collect();
    assert!(
        errors.is_empty(),
        "the upstream refused what the proxy sent: {errors:?}"
    );
}

/// An upstream that answers every request head with `response` (raw bytes).
fn raw_upstream(response: &'static [u8]) -> SocketAddr {
    slow_raw_upstream(response, Duration::ZERO)
}

/// The same, answering after `delay`.
fn slow_raw_upstream(response: &'static [u8], delay: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut c in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if c.read(&mut byte).unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                std::thread::sleep(delay);
                let _ = c.write_all(response);
                std::thread::sleep(Duration::from_millis(300));
            });
        }
    });
    addr
}

#[test]
fn connection_naming_content_length_cannot_smuggle_a_request() {
    let up = H11Upstream::start();
    let mut checker = H11Checker::start();
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n";
    for (path, proxy) in both_paths(up.addr, &[]) {
        for token in [
            "content-length",
            "Content-Length",
            "keep-alive, CONTENT-LENGTH",
        ] {
            let raw = format!(
                "POST /upload HTTP/1.1\r\nHost: x\r\nConnection: {token}\r\nContent-Length: {}\r\n\r\n{smuggled}",
                smuggled.len()
            );
            let got = exchange(proxy.addr(), raw.as_bytes());
            assert_eq!(
                statuses(&mut checker, &["POST"], &got),
                [400],
                "{path}, {token}"
            );
            let text = String::from_utf8_lossy(&got);
            assert!(text.contains("connection_names_protected_header"), "{text}");
            assert_eq!(
                targets(&up.take_batch()),
                Vec::<String>::new(),
                "{path}, {token}"
            );
        }
    }
    assert_no_upstream_errors(&up);
}

#[test]
fn an_upstream_response_naming_content_length_in_connection_is_502() {
    // Unframed, its body would be read as the next response on the client's connection.
    let up = raw_upstream(
        b"HTTP/1.1 200 OK\r\nConnection: content-length\r\nContent-Length: 42\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil",
    );
    let mut checker = H11Checker::start();
    for (path, proxy) in both_paths(up, &[]) {
        let got = exchange(
            proxy.addr(),
            b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        let text = String::from_utf8_lossy(&got);
        assert!(!text.contains("evil"), "{path}: {text}");
        assert_eq!(
            statuses(&mut checker, &["GET", "GET"], &got),
            [502, 502],
            "{path}: {text}"
        );
    }
}

#[test]
fn a_cl_te_request_after_a_bare_lf_head_is_refused() {
    let up = H11Upstream::start();
    let mut checker = H11Checker::start();
    // The first request goes to the general path (a chunked body), so the
    // guard in front of hyper sees the bare-LF head and the next one.
    let raw = b"POST /a HTTP/1.1\nHost: x\nTransfer-Encoding: chunked\n\n0\r\n\r\n\
POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n\
GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    for (path, proxy) in both_paths(up.addr, &[]) {
        let got = exchange(proxy.addr(), raw);
        assert_eq!(
            statuses(&mut checker, &["POST", "POST", "GET"], &got),
            [200, 400],
            "{path}: {}",
            String::from_utf8_lossy(&got)
        );
        assert_eq!(targets(&up.take_batch()), ["/a"], "{path}");
    }
    assert_no_upstream_errors(&up);
}

#[test]
fn connection_cannot_strip_the_trace_context_or_the_request_id() {
    let up = H11Upstream::start();
    let mut checker = H11Checker::start();
    for (path, proxy) in both_paths(up.addr, &["--generate-request-id"]) {
        for named in [
            "traceparent, x-b3-traceid, x-b3-spanid, x-b3-sampled",
            "x-request-id",
            "x-forwarded-for",
            "X-Forwarded-Proto",
            "host",
        ] {
            let raw = format!(
                "GET /t HTTP/1.1\r\nHost: x\r\nConnection: {named}\r\nX-Forwarded-Proto: https\r\n\r\n"
            );
            let got = exchange(proxy.addr(), raw.as_bytes());
            assert_eq!(
                statuses(&mut checker, &["GET"], &got),
                [400],
                "{path}, {named}"
            );
            assert!(up.take_batch().is_empty(), "{path}, {named}");
        }
        // Without such a Connection header, what the proxy writes arrives.
        let got = exchange(
            proxy.addr(),
            b"GET /t HTTP/1.1\r\nHost: x\r\nConnection: x-drop\r\nX-Drop: 1\r\n\r\n",
        );
        assert_eq!(statuses(&mut checker, &["GET"], &got), [200], "{path}");
        let batch = up.take_batch();
        assert_eq!(batch.len(), 1, "{path}");
        for name in ["traceparent", "x-b3-traceid", "x-b3-spanid", "x-request-id"] {
            assert_eq!(
                header(&batch[0], name).len(),
                1,
                "{path}: {name} in {}",
                batch[0]
            );
        }
        assert!(header(&batch[0], "x-drop").is_empty(), "{path}");
    }
    assert_no_upstream_errors(&up);
}

#[test]
fn upgrade_requests_get_forwarded_for_proto_and_trace_context() {
    let up = H11Upstream::start();
    for (path, proxy) in both_paths(up.addr, &[]) {
        // The upstream does not switch: the answer is an ordinary response.
        let got = exchange(
            proxy.addr(),
            b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
X-Forwarded-For: 6.6.6.6\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        );
        assert!(
            got.starts_with(b"HTTP/1.1 200"),
            "{path}: {}",
            String::from_utf8_lossy(&got)
        );
        let batch = up.take_batch();
        assert_eq!(batch.len(), 1, "{path}");
        let r = &batch[0];
        assert_eq!(
            header(r, "x-forwarded-for"),
            ["6.6.6.6, 127.0.0.1"],
            "{path}"
        );
        assert_eq!(header(r, "x-forwarded-proto"), ["http"], "{path}");
        assert_eq!(header(r, "upgrade"), ["websocket"], "{path}");
        assert_eq!(header(r, "traceparent").len(), 1, "{path}");
    }
    assert_no_upstream_errors(&up);
}

#[test]
fn an_h2c_upgrade_is_declined_and_served_over_http1() {
    let up = H11Upstream::start();
    let mut checker = H11Checker::start();
    for (path, proxy) in both_paths(up.addr, &[]) {
        let got = exchange(
            proxy.addr(),
            b"GET /h2c HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\
HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n\
GET /after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        assert_eq!(
            statuses(&mut checker, &["GET", "GET"], &got),
            [200, 200],
            "{path}"
        );
        let batch = up.take_batch();
        assert_eq!(targets(&batch), ["/h2c", "/after"], "{path}");
        for name in ["upgrade", "http2-settings", "connection"] {
            assert!(
                header(&batch[0], name).is_empty(),
                "{path}: {name} in {}",
                batch[0]
            );
        }
        assert_eq!(header(&batch[0], "x-forwarded-for"), ["6.6.6.6, 127.0.0.1"]);
    }
    assert_no_upstream_errors(&up);
}

#[test]
fn both_paths_keep_every_forwarded_for_value_and_append_the_peer() {
    let up = H11Upstream::start();
    for (path, proxy) in both_paths(up.addr, &[]) {
        exchange(
            proxy.addr(),
            b"GET /x HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 1.1.1.1\r\nx-forwarded-for: 2.2.2.2, 3.3.3.3\r\n\
X-Forwarded-For:\r\nConnection: close\r\n\r\n",
        );
        let batch = up.take_batch();
        assert_eq!(
            header(&batch[0], "x-forwarded-for"),
            ["1.1.1.1, 2.2.2.2, 3.3.3.3, 127.0.0.1"],
            "{path}"
        );
    }
}

#[test]
fn both_paths_refuse_a_content_length_padded_with_unicode_whitespace() {
    let up = H11Upstream::start();
    let mut checker = H11Checker::start();
    for (path, proxy) in both_paths(up.addr, &[]) {
        for value in ["5\u{a0}", "\u{a0}5", "5, 5", "+5", "٥"] {
            let raw =
                format!("POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: {value}\r\n\r\nhello");
            let got = exchange(proxy.addr(), raw.as_bytes());
            assert_eq!(
                statuses(&mut checker, &["POST"], &got),
                [400],
                "{path}: {value:?}"
            );
            assert!(up.take_batch().is_empty(), "{path}: {value:?}");
        }
        // SP and HTAB are trimmed.
        let got = exchange(
            proxy.addr(),
            b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: \t5 \r\nConnection: close\r\n\r\nhello",
        );
        assert_eq!(statuses(&mut checker, &["POST"], &got), [200], "{path}");
        assert_eq!(record_body(&up.take_batch()[0]), b"hello");
    }
    assert_no_upstream_errors(&up);
}

#[test]
fn both_paths_answer_502_to_a_response_with_two_transfer_encodings() {
    let up = raw_upstream(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    );
    let mut checker = H11Checker::start();
    for (path, proxy) in both_paths(up, &[]) {
        let got = exchange(proxy.addr(), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(statuses(&mut checker, &["GET"], &got), [502], "{path}");
    }
    let up = raw_upstream(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n5\r\nhello\r\n0\r\n\r\n");
    for (path, proxy) in both_paths(up, &[]) {
        let got = exchange(proxy.addr(), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(
            statuses(&mut checker, &["GET"], &got),
            [502],
            "{path}: CL + TE"
        );
    }
}

#[test]
fn http11_requests_without_host_or_with_two_hosts_are_refused() {
    let up = H11Upstream::start();
    let mut checker = H11Checker::start();
    for (path, proxy) in both_paths(up.addr, &[]) {
        for (what, raw) in [
            ("no Host", "GET /x HTTP/1.1\r\n\r\n"),
            (
                "two different",
                "GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            ),
            ("two equal", "GET /x HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n"),
            ("user info", "GET /x HTTP/1.1\r\nHost: user@a\r\n\r\n"),
            ("a path", "GET /x HTTP/1.1\r\nHost: a/b\r\n\r\n"),
        ] {
            let got = exchange(proxy.addr(), raw.as_bytes());
            assert_eq!(
                statuses(&mut checker, &["GET"], &got),
                [400],
                "{path}: {what}"
            );
            assert!(up.take_batch().is_empty(), "{path}: {what}");
        }
        // HTTP/1.0 may omit Host: the upstream gets the route's.
        let got = exchange(proxy.addr(), b"GET /old HTTP/1.0\r\n\r\n");
        assert_eq!(statuses(&mut checker, &["GET"], &got), [200], "{path}");
        let batch = up.take_batch();
        assert_eq!(
            header(&batch[0], "host"),
            [up.addr.to_string().as_str()],
            "{path}"
        );
        // An absolute-form target's authority wins over Host (RFC 9112 §3.2.2).
        exchange(
            proxy.addr(),
            b"GET http://target.example:81/abs?q=1 HTTP/1.1\r\nHost: other\r\nConnection: close\r\n\r\n",
        );
        let batch = up.take_batch();
        assert_eq!(targets(&batch), ["/abs?q=1"], "{path}");
        assert_eq!(header(&batch[0], "host"), ["target.example:81"], "{path}");
    }
    assert_no_upstream_errors(&up);
}

#[test]
fn refused_requests_are_counted_by_reason() {
    let up = H11Upstream::start();
    let proxy = Proxy::single(up.addr, "svc", &[]);
    exchange(proxy.addr(), b"GET / HTTP/1.1\r\n\r\n");
    exchange(
        proxy.addr(),
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: host\r\n\r\n",
    );
    exchange(
        proxy.addr(),
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    );
    let mut metrics = String::new();
    common::wait_until("refusals counted", Duration::from_secs(10), || {
        metrics = proxy.metrics();
        [
            "bad_host\"} 1",
            "bad_connection_header\"} 1",
            "malformed\"} 1",
        ]
        .iter()
        .all(|m| metrics.contains(m))
    });
    let _ = peers::python();
}

#[test]
fn a_request_body_cut_short_gets_400_not_502() {
    let up = H11Upstream::start();
    let mut checker = H11Checker::start();
    for (path, proxy) in both_paths(up.addr, &[]) {
        // The client sends 2 of 3 body bytes, then closes its sending side.
        let got = exchange(
            proxy.addr(),
            b"POST /short HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nab",
        );
        assert_eq!(statuses(&mut checker, &["POST"], &got), [400], "{path}");
        assert!(
            String::from_utf8_lossy(&got).contains("incomplete_request"),
            "{path}"
        );
        // The fast path holds small bodies whole, so nothing went upstream;
        // the general path streams bodies, so the upstream saw one cut short.
        let batch = up.take_batch();
        let complete: Vec<&Value> = batch.iter().filter(|r| r.get("error").is_none()).collect();
        assert!(complete.is_empty(), "{path}: {batch:?}");
        if path == "fast path" {
            assert!(batch.is_empty(), "{path}: {batch:?}");
        } else {
            assert!(
                batch.iter().all(|r| r["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("without sending complete message body"))),
                "{path}: {batch:?}"
            );
        }
    }
}

#[test]
fn a_response_framed_by_closing_ends_the_client_connection_on_both_paths() {
    let up = H11Upstream::start();
    let mut checker = H11Checker::start();
    for (path, proxy) in both_paths(up.addr, &[]) {
        let got = exchange(
            proxy.addr(),
            b"GET /a HTTP/1.1\r\nHost: x\r\nx-test-response: close\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n",
        );
        assert_eq!(
            statuses(&mut checker, &["GET", "GET"], &got),
            [200],
            "{path}"
        );
        assert_eq!(targets(&up.take_batch()), ["/a"], "{path}");
    }
}

#[test]
fn a_client_that_goes_away_is_counted_and_traced_as_cancelled() {
    let up = slow_raw_upstream(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
        Duration::from_millis(500),
    );
    let receiver = common::receiver::Receiver::start();
    let zipkin = receiver.zipkin_url();
    // The fast path only: hyper (the general path) serves half-closed
    // HTTP/1.1 connections, so it sees a reset client only when a write
    // fails, which its finished body no longer learns of. (HTTP/2 clients
    // cancel with RST_STREAM, which the gRPC test covers.)
    let [(path, proxy), _] = both_paths(up, &["--zipkin", &zipkin]);
    {
        // The client resets its connection while the upstream thinks.
        let s = std::net::TcpStream::connect(proxy.addr()).unwrap();
        (&s).write_all(b"GET /gone HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        std::thread::sleep(Duration::from_millis(100));
        socket2::SockRef::from(&s)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(s);
        let mut metrics = String::new();
        common::wait_until("the request counted", Duration::from_secs(10), || {
            metrics = proxy.metrics();
            metrics.contains("sidecar_proxy_requests_total{")
        });
        let mut spans = Vec::new();
        common::wait_until("its span", Duration::from_secs(10), || {
            spans = receiver.zipkin_spans();
            spans
                .iter()
                .any(|s| s["localEndpoint"]["port"] == proxy.addr().port())
        });
        let span = spans
            .iter()
            .find(|s| s["localEndpoint"]["port"] == proxy.addr().port())
            .unwrap();
        assert_eq!(span["tags"]["response_flags"], "DC", "{path}: {span}");
        // As Envoy: an error when no response came (status 0) or a 5xx.
        let answered = span["tags"]["http.status_code"] != "0";
        assert_eq!(span["tags"]["error"].is_null(), answered, "{path}: {span}");
        if !answered {
            assert!(
                metrics.contains("status_class=\"cancelled\"} 1"),
                "{path}: {metrics}"
            );
        }
    }
}

#[test]
fn an_h2c_client_reaches_an_http1_upstream_in_origin_form_with_a_host() {
    let up = H11Upstream::start();
    let proxy = Proxy::single(up.addr, "svc", &[]);
    let url = format!("http://{}/h2/path?q=1", proxy.addr());
    let out = std::process::Command::new("curl")
        .args(["-s", "--http2-prior-knowledge", "-H", "x-custom: yes", &url])
        .output()
        .expect("curl (installed by scripts/test) runs");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok:GET:/h2/path?q=1");
    let batch = up.take_batch();
    assert_eq!(targets(&batch), ["/h2/path?q=1"]);
    let r = &batch[0];
    assert_eq!(r["version"], "1.1");
    assert_eq!(header(r, "host"), [proxy.addr().to_string().as_str()]);
    assert_eq!(header(r, "x-custom"), ["yes"]);
    assert_eq!(header(r, "x-forwarded-for"), ["127.0.0.1"]);
    assert_no_upstream_errors(&up);
}

#[test]
fn a_client_that_half_closes_after_its_requests_gets_every_answer() {
    // Request sent, sending side shut: the answers still come (hyper closed
    // such connections unanswered on the general path).
    let up = H11Upstream::start();
    let mut checker = H11Checker::start();
    for (path, proxy) in both_paths(up.addr, &[]) {
        let got = exchange(
            proxy.addr(),
            b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\nPOST /2 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
        );
        assert_eq!(
            statuses(&mut checker, &["GET", "POST"], &got),
            [200, 200],
            "{path}"
        );
        assert_eq!(targets(&up.take_batch()), ["/1", "/2"], "{path}");
    }
}
