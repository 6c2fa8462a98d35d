//! gRPC through `sidecar proxy` (h2c both ways), with a real grpcio server
//! and client: unary, both stream directions, bidi, status in trailers,
//! trailers-only status, a deadline, a 4 MB message, 50 calls at once on one
//! channel. Every call gets a span and a count, with its gRPC status.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::peers::{GrpcServer, grpc_client};
use common::proxy::Proxy;
use common::receiver::Receiver;
use serde_json::Value;

fn tag<'a>(span: &'a Value, name: &str) -> Option<&'a str> {
    span["tags"][name].as_str()
}

/// The spans whose URL ends with `/test.Echo/<method>`.
fn spans_of<'a>(spans: &'a [Value], method: &str) -> Vec<&'a Value> {
    let suffix = format!("/test.Echo/{method}");
    spans
        .iter()
        .filter(|s| tag(s, "http.url").is_some_and(|u| u.ends_with(&suffix)))
        .collect()
}

#[test]
fn grpc_calls_pass_with_their_status_deadlines_and_a_span_each() {
    let server = GrpcServer::start();
    let receiver = Receiver::start();
    let zipkin = receiver.zipkin_url();
    let proxy = Proxy::single(
        server.addr,
        "grpc-sidecar",
        &["--http2-upstream", "--zipkin", &zipkin],
    );
    let results = grpc_client(proxy.addr(), None);
    for (name, result) in results.as_object().unwrap() {
        assert_eq!(
            result["ok"],
            true,
            "{name}: {}\nall results: {results:#}\nproxy log:\n{}\nserver log:\n{}",
            result["detail"],
            proxy.proc.stderr_text(),
            server.stderr_text()
        );
    }
    // The server saw the client's authority, and no Host that disagrees.
    let last_unary = &results["stats"]["last"]["Unary"];
    assert_eq!(
        last_unary["authority"].as_str(),
        Some(proxy.addr().to_string().as_str()),
        "{last_unary}"
    );
    let host_metadata = last_unary["metadata"]
        .as_array()
        .unwrap()
        .iter()
        .any(|kv| kv[0] == "host");
    assert!(
        !host_metadata,
        "a host field went on beside :authority: {last_unary}"
    );
    // The deadline reached the server: grpc-timeout, then the cancel.
    let deadline = &results["deadline"];
    assert!(deadline["cancelled"].as_u64().unwrap() >= 1, "{deadline}");

    // One span per call, with its gRPC status; failed calls are errors.
    let deadline_at = std::time::Instant::now() + Duration::from_secs(15);
    let spans = loop {
        let spans = receiver.zipkin_spans();
        if spans_of(&spans, "Unary").len() >= 54 && spans_of(&spans, "Slow").len() >= 2 {
            break spans;
        }
        let summary: Vec<String> = spans
            .iter()
            .map(|s| {
                format!(
                    "{} {:?}",
                    s["tags"]["http.url"], s["tags"]["grpc.status_code"]
                )
            })
            .collect();
        assert!(
            std::time::Instant::now() < deadline_at,
            "spans missing; got {}:\n{}",
            spans.len(),
            summary.join("\n")
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    for (method, code, error) in [
        ("ServerStream", "0", false),
        ("ClientStream", "0", false),
        ("Bidi", "0", false),
    ] {
        let s = spans_of(&spans, method);
        assert_eq!(s.len(), 1, "{method}: {s:?}");
        assert_eq!(
            tag(s[0], "grpc.status_code"),
            Some(code),
            "{method}: {}",
            s[0]
        );
        assert_eq!(tag(s[0], "error").is_some(), error, "{method}: {}", s[0]);
        assert_eq!(tag(s[0], "http.protocol"), Some("HTTP/2"));
    }
    let unary = spans_of(&spans, "Unary");
    let by_code = |code: &str| {
        unary
            .iter()
            .filter(|s| tag(s, "grpc.status_code") == Some(code))
            .count()
    };
    // unary, big, 50 concurrent: OK; `fail:` INVALID_ARGUMENT (3); trailers-only NOT_FOUND (5).
    assert_eq!(by_code("0"), 52, "{unary:?}");
    assert_eq!(by_code("3"), 1);
    assert_eq!(by_code("5"), 1);
    for s in &unary {
        let failed = tag(s, "grpc.status_code") != Some("0");
        assert_eq!(tag(s, "error").is_some(), failed, "{s}");
        assert_eq!(tag(s, "http.status_code"), Some("200"), "{s}");
    }
    // The call past its deadline: DEADLINE_EXCEEDED (the server's status,
    // or deduced from grpc-timeout when the client's cancel came first);
    // the call the client cancelled: CANCELLED, and the client went away (DC).
    let slow = spans_of(&spans, "Slow");
    assert_eq!(slow.len(), 2, "{slow:?}");
    let code_of = |code: &str| {
        slow.iter()
            .find(|s| tag(s, "grpc.status_code") == Some(code))
    };
    let deadline = code_of("4").unwrap_or_else(|| panic!("no DEADLINE_EXCEEDED span: {slow:?}"));
    assert_eq!(tag(deadline, "error"), Some("true"));
    let cancelled = code_of("1").unwrap_or_else(|| panic!("no CANCELLED span: {slow:?}"));
    assert_eq!(tag(cancelled, "response_flags"), Some("DC"), "{cancelled}");
    assert_eq!(tag(cancelled, "error"), Some("true"));

    let metrics = proxy.metrics();
    for series in [
        "sidecar_proxy_grpc_requests_total{listener=\"inbound\",route=\"/\",grpc_code=\"InvalidArgument\"} 1",
        "sidecar_proxy_grpc_requests_total{listener=\"inbound\",route=\"/\",grpc_code=\"NotFound\"} 1",
        "sidecar_proxy_grpc_requests_total{listener=\"inbound\",route=\"/\",grpc_code=\"DeadlineExceeded\"} 1",
        "sidecar_proxy_grpc_requests_total{listener=\"inbound\",route=\"/\",grpc_code=\"Canceled\"} 1",
    ] {
        assert!(metrics.contains(series), "{series} missing:\n{metrics}");
    }
}
