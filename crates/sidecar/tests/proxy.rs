//! `sidecar proxy` end to end on loopback: the seed's demo topology (front
//! proxy, two services with sidecars), a span receiver, and the edge cases.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use common::proxy::{Proxy, demo_service};
use common::receiver::Receiver;
use common::{Proc, http_get, raw_request as request, wait_until};
use serde_json::Value;

const ZIPKIN_SPEC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/zipkin2-api.yaml");

fn python() -> String {
    std::env::var("SIDECAR_TEST_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// An address that refuses connections for as long as the socket is kept: it
/// is bound but not listening, so no other test can start a server on it.
fn refusing_addr() -> (socket2::Socket, SocketAddr) {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    (socket, addr)
}

fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, String, String) {
    let mut raw = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        raw.push_str(&format!("{k}: {v}\r\n"));
    }
    raw.push_str("\r\n");
    request(addr, &raw)
}

/// The seed's topology: front proxy -> [sidecar1 -> service1 -> sidecar1 outbound (h2c)] -> [sidecar2 -> service2].
struct Topology {
    front: SocketAddr,
    receiver: Receiver,
    procs: Vec<Proc>,
    _dirs: Vec<tempfile::TempDir>,
}

fn topology(otlp: bool) -> Topology {
    let receiver = Receiver::start();
    let (zipkin, otlp_url) = (receiver.zipkin_url(), receiver.otlp_url());
    let tracing = if otlp {
        format!("tracing:\n  zipkin: {zipkin}\n  otlp: {otlp_url}\n")
    } else {
        format!("tracing:\n  zipkin: {zipkin}\n")
    };
    // service2 and its sidecar (inbound).
    let (s2, s2_addr) = demo_service("service2", None);
    let (p2, d2) = Proxy::with_config(
        &format!(
            "service: service2\n{tracing}listeners:\n  - name: inbound\n    listen: 127.0.0.1:0\n    direction: inbound\n    routes:\n      - prefix: /\n        upstream: {s2_addr}\n"
        ),
        &[],
    );
    let p2_in = p2.listener("inbound");
    // service1's sidecar is two processes here (same service, one listener
    // each): service1 needs the outbound listener's address (--call) and the
    // inbound listener needs service1's, and with ports picked at run time
    // neither is known before the other is bound. So the outbound listener
    // (to service2's sidecar over h2c) starts first, then service1, then the
    // inbound listener.
    let (p1_out, d1_out) = Proxy::with_config(
        &format!(
            "service: service1\n{tracing}listeners:\n  - name: outbound\n    listen: 127.0.0.1:0\n    direction: outbound\n    routes:\n      - prefix: /svc/2\n        upstream: {p2_in}\n        http2: true\n        operation: checkStock\n"
        ),
        &[],
    );
    let p1_out_addr = p1_out.listener("outbound");
    let (s1, s1_addr) = demo_service("service1", Some(&format!("http://{p1_out_addr}/svc/2")));
    let (p1_in, d1_in) = Proxy::with_config(
        &format!(
            "service: service1\n{tracing}listeners:\n  - name: inbound\n    listen: 127.0.0.1:0\n    direction: inbound\n    routes:\n      - prefix: /\n        upstream: {s1_addr}\n        operation: checkAvailability\n"
        ),
        &[],
    );
    let p1_in_addr = p1_in.listener("inbound");
    // The front proxy starts traces.
    let (f, d3) = Proxy::with_config(
        &format!(
            "service: front-proxy\n{tracing}listeners:\n  - name: front\n    listen: 127.0.0.1:0\n    direction: outbound\n    generate_request_id: true\n    routes:\n      - prefix: /\n        upstream: {p1_in_addr}\n"
        ),
        &[],
    );
    let front = f.listener("front");
    Topology {
        front,
        receiver,
        procs: vec![s2, p2.proc, p1_out.proc, s1, p1_in.proc, f.proc],
        _dirs: vec![d1_out, d1_in, d2, d3],
    }
}

/// The spans of one trace, once all `n` arrived.
fn trace_spans(receiver: &Receiver, trace_id: Option<&str>, n: usize) -> Vec<Value> {
    let mut spans = Vec::new();
    wait_until(&format!("{n} spans"), Duration::from_secs(30), || {
        let all = receiver.zipkin_spans();
        let id = trace_id.map(str::to_string).or_else(|| {
            all.first()
                .map(|s| s["traceId"].as_str().unwrap().to_string())
        });
        spans = all
            .into_iter()
            .filter(|s| Some(s["traceId"].as_str().unwrap().to_string()) == id)
            .collect();
        spans.len() >= n
    });
    spans
}

fn find<'a>(spans: &'a [Value], service: &str, kind: &str) -> &'a Value {
    spans
        .iter()
        .find(|s| s["localEndpoint"]["serviceName"] == service && s["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} span of {service} in {spans:#?}"))
}

fn validate_zipkin(spans: &[Value]) {
    let out = common::run_with_input(
        Command::new(python())
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/py/validate_zipkin.py"
            ))
            .arg(ZIPKIN_SPEC),
        &serde_json::to_vec(spans).unwrap(),
        "python3 (./scripts/test installs it with jsonschema and pyyaml)",
    );
    assert!(
        out.status.success(),
        "Zipkin JSON does not validate against zipkin2-api.yaml:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Checks the four-span chain: front CLIENT -> service1 SERVER -> service1 CLIENT -> service2 SERVER.
fn assert_chain(spans: &[Value], parent_of_front: Option<&str>) -> String {
    assert_eq!(spans.len(), 4, "{spans:#?}");
    let front = find(spans, "front-proxy", "CLIENT");
    let s1_in = find(spans, "service1", "SERVER");
    let s1_out = find(spans, "service1", "CLIENT");
    let s2_in = find(spans, "service2", "SERVER");
    assert_eq!(
        front.get("parentId").and_then(Value::as_str),
        parent_of_front,
        "front parent"
    );
    assert_eq!(s1_in["parentId"], front["id"]);
    assert_eq!(s1_out["parentId"], s1_in["id"]);
    assert_eq!(s2_in["parentId"], s1_out["id"]);
    let ids: std::collections::HashSet<&str> =
        spans.iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 4, "span ids are unique");
    assert_eq!(s1_in["name"], "checkavailability");
    assert_eq!(s1_out["name"], "checkstock");
    let request_id = front["tags"]["guid:x-request-id"]
        .as_str()
        .unwrap()
        .to_string();
    for s in spans {
        let tags = &s["tags"];
        assert_eq!(tags["guid:x-request-id"], request_id.as_str(), "{s}");
        assert_eq!(tags["component"], "proxy");
        assert_eq!(tags["http.method"], "GET");
        assert_eq!(tags["http.status_code"], "200");
        assert!(tags.get("error").is_none(), "{s}");
        assert!(
            tags["upstream_cluster"]
                .as_str()
                .unwrap()
                .contains("127.0.0.1:")
        );
        for t in ["http.url", "http.protocol", "request_size", "response_size"] {
            assert!(tags.get(t).is_some(), "tag {t} missing in {s}");
        }
        assert!(s["duration"].as_u64().unwrap() >= 1);
        assert!(s["timestamp"].as_u64().unwrap() > 1_600_000_000_000_000);
    }
    // Children start after and end before their parents (same clock, loopback).
    assert!(s2_in["timestamp"].as_u64() >= s1_out["timestamp"].as_u64());
    assert_eq!(
        s2_in["tags"]["http.protocol"], "HTTP/2",
        "the outbound route speaks h2c"
    );
    assert!(
        front["tags"]["response_size"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > 20,
        "{front}"
    );
    validate_zipkin(spans);
    request_id
}

#[test]
fn one_request_one_trace_with_four_spans_in_a_chain() {
    let t = topology(false);
    let (status, head, body) = get(t.front, "/", &[]);
    assert_eq!(status, 200, "{head}\n{body}");
    assert!(
        body.contains("Hello from service1") && body.contains("Hello from service2"),
        "{body}"
    );
    let spans = trace_spans(&t.receiver, None, 4);
    assert_chain(&spans, None);
    // A root trace id from the front proxy is 64-bit, like Envoy's.
    assert_eq!(spans[0]["traceId"].as_str().unwrap().len(), 16);
    drop(t.procs);
}

#[test]
fn w3c_only_and_b3_single_only_incoming_headers_keep_the_trace() {
    let t = topology(false);
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let (status, _, _) = get(
        t.front,
        "/",
        &[("traceparent", &format!("00-{trace}-00f067aa0ba902b7-01"))],
    );
    assert_eq!(status, 200);
    let spans = trace_spans(&t.receiver, Some(trace), 4);
    assert_chain(&spans, Some("00f067aa0ba902b7"));

    let b3_trace = "80f198ee56343ba864fe8b2a57d3eff7";
    let (status, _, _) = get(
        t.front,
        "/",
        &[
            (
                "b3",
                &format!("{b3_trace}-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90"),
            ),
            ("x-request-id", "given-id"),
        ],
    );
    assert_eq!(status, 200);
    let spans = trace_spans(&t.receiver, Some(b3_trace), 4);
    let id = assert_chain(&spans, Some("e457b5a2e4d86bd1"));
    assert_eq!(id, "given-id", "an existing x-request-id is kept");

    // An incoming "not sampled" decision is honoured: no spans for that trace.
    let unsampled = "11111111111111112222222222222222";
    assert_eq!(
        get(
            t.front,
            "/",
            &[(
                "traceparent",
                &format!("00-{unsampled}-00f067aa0ba902b7-00")
            )]
        )
        .0,
        200
    );
    // Another sampled request after it: once its spans arrive, the unsampled one would have too.
    assert_eq!(
        get(
            t.front,
            "/",
            &[(
                "traceparent",
                "00-33333333333333334444444444444444-00f067aa0ba902b7-01"
            )]
        )
        .0,
        200
    );
    trace_spans(&t.receiver, Some("33333333333333334444444444444444"), 4);
    assert!(
        t.receiver
            .zipkin_spans()
            .iter()
            .all(|s| s["traceId"] != unsampled)
    );
    drop(t.procs);
}

#[test]
fn otlp_export_decodes_with_the_reference_protobuf_package() {
    let t = topology(true);
    assert_eq!(get(t.front, "/", &[]).0, 200);
    let zipkin = trace_spans(&t.receiver, None, 4);
    let trace_id = zipkin[0]["traceId"].as_str().unwrap().to_string();
    let mut decoded: Vec<Value> = Vec::new();
    wait_until("4 OTLP spans", Duration::from_secs(30), || {
        decoded.clear();
        for post in t.receiver.bodies("/v1/traces") {
            assert_eq!(post.content_type, "application/x-protobuf");
            let file = tempfile::NamedTempFile::new().unwrap();
            std::fs::write(file.path(), &post.body).unwrap();
            let out = Command::new(python())
                .arg(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/tests/py/decode_otlp.py"
                ))
                .arg(file.path())
                .output()
                .expect("python3 with opentelemetry-proto (./scripts/test installs it)");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                decoded.push(serde_json::from_str(line).unwrap());
            }
        }
        decoded.len() >= 4
    });
    for span in &decoded {
        assert!(
            span["trace_id"].as_str().unwrap().ends_with(&trace_id),
            "{span}"
        );
        let z = zipkin.iter().find(|z| z["id"] == span["span_id"]).unwrap();
        assert_eq!(span["name"], z["name"]);
        assert_eq!(span["service"], z["localEndpoint"]["serviceName"]);
        assert_eq!(
            span["kind"].as_i64().unwrap(),
            if z["kind"] == "SERVER" { 2 } else { 3 }
        );
        assert!(span["end"].as_u64() > span["start"].as_u64());
        assert_eq!(span["attributes"]["component"], "proxy");
    }
    drop(t.procs);
}

#[test]
fn collector_down_never_fails_or_slows_requests() {
    let (_s, s_addr) = demo_service("service1", None);
    let (_refusing, dead) = refusing_addr();
    let p = Proxy::single(
        s_addr,
        "service1",
        &["--zipkin", &format!("http://{dead}/api/v2/spans")],
    );
    let listen = p.addr();
    let admin = p.admin;
    for _ in 0..50 {
        assert_eq!(get(listen, "/", &[]).0, 200);
    }
    let mut metrics = String::new();
    wait_until("export errors counted", Duration::from_secs(30), || {
        metrics = http_get(admin, "/metrics").2;
        metrics.contains("sidecar_proxy_span_export_errors_total{collector=\"zipkin\"}")
    });
    assert!(
        metrics.contains("sidecar_proxy_spans_dropped_total "),
        "{metrics}"
    );
    assert!(metrics.contains("sidecar_proxy_requests_total{listener=\"inbound\",route=\"/\",method=\"GET\",status_class=\"2xx\"} 50"), "{metrics}");
}

#[test]
fn upstream_down_timeout_and_bad_response_map_to_503_504_502_with_error_spans() {
    let receiver = Receiver::start();
    let zipkin = receiver.zipkin_url();
    // Refused.
    let (_refusing, refused) = refusing_addr();
    let p = Proxy::single(refused, "svc", &["--zipkin", &zipkin]);
    let listen = p.addr();
    let admin = p.admin;
    let (status, head, _) = get(listen, "/", &[]);
    assert_eq!(status, 503, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("x-sidecar-error: upstream_connect_error"),
        "{head}"
    );
    let spans = trace_spans(&receiver, None, 1);
    assert_eq!(spans[0]["tags"]["error"], "true");
    assert_eq!(spans[0]["tags"]["http.status_code"], "503");
    assert!(http_get(admin, "/metrics").2.contains(
        "sidecar_proxy_upstream_connect_errors_total{listener=\"inbound\",route=\"/\"} 1"
    ));
    // An upgrade (WebSocket) to the refused upstream: answered and counted the same.
    let (status, head, _) = request(
        listen,
        &format!(
            "GET /ws HTTP/1.1\r\nHost: {listen}\r\nConnection: Upgrade, close\r\nUpgrade: websocket\r\n\r\n"
        ),
    );
    assert_eq!(status, 503, "{head}");
    assert!(http_get(admin, "/metrics").2.contains(
        "sidecar_proxy_upstream_connect_errors_total{listener=\"inbound\",route=\"/\"} 2"
    ));

    // Accepts and never answers: 504 after the request timeout.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let hold = std::thread::spawn(move || silent.incoming().take(1).collect::<Vec<_>>());
    let yaml = format!(
        "service: svc\ntimeouts:\n  request: 500ms\nlisteners:\n  - name: inbound\n    listen: 127.0.0.1:0\n    routes:\n      - upstream: {silent_addr}\n"
    );
    let (p2, _d) = Proxy::with_config(&yaml, &[]);
    let listen2 = p2.listener("inbound");
    let (status, head, _) = get(listen2, "/", &[]);
    assert_eq!(status, 504, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("x-sidecar-error: upstream_timeout")
    );
    drop(hold);

    // Answers garbage: 502.
    let bad = TcpListener::bind("127.0.0.1:0").unwrap();
    let bad_addr = bad.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut c in bad.incoming().flatten() {
            let mut buf = [0u8; 1024];
            let _ = c.read(&mut buf);
            let _ = c.write_all(b"NOT HTTP AT ALL\r\n\r\n");
        }
    });
    let p3 = Proxy::single(bad_addr, "svc", &[]);
    let listen3 = p3.addr();
    let (status, head, _) = get(listen3, "/", &[]);
    assert_eq!(status, 502, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("x-sidecar-error: bad_upstream_response")
    );
}

#[test]
fn sigterm_under_load_finishes_in_flight_requests() {
    let (_s, s_addr) = demo_service("service1", None);
    let mut p = Proxy::single(s_addr, "service1", &[]);
    let listen = p.addr();
    let admin = p.admin;
    // Slow-ish downloads in flight when SIGTERM arrives.
    let workers: Vec<_> = (0..8)
        .map(|_| {
            std::thread::spawn(move || {
                let (status, _, body) = get(listen, "/bytes/20000000", &[]);
                (status, body.len())
            })
        })
        .collect();
    wait_until("requests in flight", Duration::from_secs(10), || {
        http_get(admin, "/metrics")
            .2
            .contains("sidecar_proxy_active_connections{listener=\"inbound\"} 8")
    });
    // And one idle keep-alive connection: closed at once by the drain.
    let mut idle = TcpStream::connect(listen).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    idle.write_all(format!("GET / HTTP/1.1\r\nHost: {listen}\r\n\r\n").as_bytes())
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = idle.read(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    p.proc.terminate();
    let terminated = Instant::now();
    while idle.read(&mut buf).is_ok_and(|n| n > 0) {}
    assert!(
        terminated.elapsed() < Duration::from_secs(5),
        "an idle connection held the drain for {:?}",
        terminated.elapsed()
    );
    wait_until("not ready while draining", Duration::from_secs(5), || {
        std::net::TcpStream::connect(admin).is_err() || http_get(admin, "/ready").0 == 503
    });
    for w in workers {
        let (status, len) = w.join().unwrap();
        assert_eq!(status, 200);
        assert!(len >= 20_000_000, "a response was cut: {len} bytes");
    }
    let status = p.proc.wait(Duration::from_secs(20));
    assert!(status.success(), "{status}: {}", p.proc.stderr_text());
    // New connections are refused once it stopped accepting.
    assert!(TcpStream::connect(listen).is_err());
}

#[test]
fn h2c_upstream_and_h2c_clients() {
    let (_s, s_addr) = demo_service("service2", None);
    let p = Proxy::single(s_addr, "svc", &["--http2-upstream"]);
    let listen = p.addr();
    let (status, _, body) = get(listen, "/x", &[]);
    assert_eq!(status, 200);
    assert!(body.contains("Hello from service2 (/x)"), "{body}");
    // An h2c (prior knowledge) client on the listener, detected per connection.
    let mut s = TcpStream::connect(listen).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .unwrap();
    let mut buf = [0u8; 9];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(
        buf[3], 0x04,
        "the server answers with an HTTP/2 SETTINGS frame"
    );
}

#[test]
fn websocket_upgrade_passes_through() {
    // An upstream that accepts the upgrade and echoes bytes.
    let ws = TcpListener::bind("127.0.0.1:0").unwrap();
    let ws_addr = ws.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut c in ws.incoming().flatten() {
            std::thread::spawn(move || {
                let Some(head) = read_head(&mut c) else {
                    return;
                };
                let head = head.to_ascii_lowercase();
                assert!(head.contains("upgrade: websocket"), "{head}");
                c.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n").unwrap();
                let mut buf = [0u8; 1024];
                while let Ok(n) = c.read(&mut buf) {
                    if n == 0 || c.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    let p = Proxy::single(ws_addr, "svc", &[]);
    let listen = p.addr();
    let mut s = TcpStream::connect(listen).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(format!("GET /chat HTTP/1.1\r\nHost: {listen}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").as_bytes()).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    for msg in ["hello", "through the proxy"] {
        s.write_all(msg.as_bytes()).unwrap();
        let mut buf = vec![0u8; msg.len()];
        s.read_exact(&mut buf).unwrap();
        assert_eq!(buf, msg.as_bytes());
    }
}

#[test]
fn a_1_gib_body_streams_without_growing_memory() {
    let (_s, s_addr) = demo_service("sink", None);
    let p = Proxy::single(s_addr, "svc", &[]);
    let listen = p.addr();
    let mut s = TcpStream::connect(listen).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(300))).unwrap();
    const TOTAL: u64 = 1 << 30;
    s.write_all(format!("POST /upload HTTP/1.1\r\nHost: {listen}\r\nContent-Length: {TOTAL}\r\nConnection: close\r\n\r\n").as_bytes())
        .unwrap();
    let chunk = vec![b'z'; 1 << 20];
    for _ in 0..(TOTAL >> 20) {
        s.write_all(&chunk).unwrap();
    }
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.trim_end().ends_with(&TOTAL.to_string()), "{resp}");
    let status = std::fs::read_to_string(format!("/proc/{}/status", p.proc.pid())).unwrap();
    let hwm: u64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(hwm < 64 * 1024, "peak RSS {hwm} KiB while streaming 1 GiB");
}

#[test]
fn request_smuggling_attempts_and_oversized_headers_are_rejected() {
    let (_s, s_addr) = demo_service("svc", None);
    let p = Proxy::single(s_addr, "svc", &[]);
    let listen = p.addr();
    let admin = p.admin;
    let (status, _, _) = request(
        listen,
        "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    assert_eq!(status, 400, "CL + TE together");
    let (status, _, _) = request(
        listen,
        "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    );
    assert_eq!(status, 400, "conflicting Content-Length");
    let big = "a".repeat(100 * 1024);
    let (status, _, _) = request(
        listen,
        &format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n"),
    );
    assert_eq!(status, 431, "oversized header");
    let mut metrics = String::new();
    wait_until("rejections counted", Duration::from_secs(10), || {
        metrics = http_get(admin, "/metrics").2;
        metrics.contains("reason=\"header_too_large\"} 1")
            && metrics.contains("reason=\"malformed\"} 2")
    });
    // Nothing reached the service.
    assert!(!metrics.contains("status_class"), "{metrics}");
}

/// Reads one message head byte by byte (None: the connection ended first).
fn read_head(c: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if c.read(&mut byte).unwrap_or(0) == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

/// An upstream speaking raw HTTP/1 from a script: `answer(request line, n)`
/// (n: how often that line came before) gives the bytes to send back, or None
/// to close the connection without answering. Records every request head and
/// counts the connections it accepted.
struct Scripted {
    addr: SocketAddr,
    heads: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Scripted {
    /// How many request heads starting with `line` it received.
    fn count(&self, line: &str) -> usize {
        count_heads(&self.heads.lock().unwrap(), line)
    }
}

fn count_heads(heads: &[String], line: &str) -> usize {
    heads.iter().filter(|h| h.starts_with(line)).count()
}

fn scripted_upstream(answer: fn(&str, usize) -> Option<&'static str>) -> Scripted {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = Arc::new(Mutex::new(Vec::<String>::new()));
    let accepted = Arc::new(AtomicUsize::new(0));
    let (h, a) = (Arc::clone(&heads), Arc::clone(&accepted));
    std::thread::spawn(move || {
        for mut c in listener.incoming().flatten() {
            a.fetch_add(1, Ordering::SeqCst);
            let heads = Arc::clone(&h);
            std::thread::spawn(move || {
                loop {
                    let Some(head) = read_head(&mut c) else {
                        return;
                    };
                    let length = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap())
                        })
                        .unwrap_or(0);
                    let mut body = vec![0u8; length];
                    if c.read_exact(&mut body).is_err() {
                        return;
                    }
                    let line = head.lines().next().unwrap_or("").to_string();
                    let seen = {
                        let mut heads = heads.lock().unwrap();
                        let seen = count_heads(&heads, &line);
                        heads.push(head);
                        seen
                    };
                    let Some(response) = answer(&line, seen) else {
                        return;
                    };
                    if c.write_all(response.as_bytes()).is_err() || response.starts_with("HTTP/1.0")
                    {
                        return;
                    }
                }
            });
        }
    });
    Scripted {
        addr,
        heads,
        accepted,
    }
}

#[test]
fn http1_framing_and_headers_pass_through_exactly() {
    let up = scripted_upstream(|line, _| {
        Some(
            match line.split_whitespace().take(2).collect::<Vec<_>>()[..] {
                ["GET", "/cl"] => {
                    "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive, x-hop\r\nX-Hop: secret\r\nKeep-Alive: timeout=5\r\n\r\nhello"
                }
                ["HEAD", "/cl"] => "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
                ["GET", "/chunked"] => {
                    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
                }
                ["GET", "/hints"] => {
                    "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n"
                }
                ["POST", "/echo"] => "HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
                ["GET", "/eof"] => "HTTP/1.0 200 OK\r\n\r\nuntil the end",
                _ => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
            },
        )
    });
    let p = Proxy::single(up.addr, "svc", &[]);
    let listen = p.addr();
    let admin = p.admin;
    // Pipelined on one connection; the last response ends it.
    let mut s = TcpStream::connect(listen).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(
        format!(
            "GET /cl HTTP/1.1\r\nHost: {listen}\r\nConnection: x-drop\r\nX-Drop: 1\r\nX-Forwarded-For: 10.1.1.1\r\nTE: trailers\r\n\r\n\
             HEAD /cl HTTP/1.1\r\nHost: {listen}\r\n\r\n\
             GET /chunked HTTP/1.1\r\nHost: {listen}\r\n\r\n\
             GET /hints HTTP/1.1\r\nHost: {listen}\r\n\r\n\
             POST /echo HTTP/1.1\r\nHost: {listen}\r\nContent-Length: 4\r\n\r\nbody\
             GET /odd HTTP/1.1\r\nHost: {listen}\r\nX-A:1\nX-B:\t2 \r\nX-C:\r\n\r\n\
             GET /eof HTTP/1.1\r\nHost: {listen}\r\n\r\n"
        )
        .as_bytes(),
    )
    .unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got); // (a timeout shows what came in the assertion)
    assert_eq!(
        String::from_utf8_lossy(&got),
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello\
         HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n\
         HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n\
         HTTP/1.1 204 No Content\r\n\r\n\
         HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n\
         HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n\
         HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil the end"
    );
    // One upstream connection served them all.
    assert_eq!(up.accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
    let heads = up.heads.lock().unwrap().clone();
    assert_eq!(heads.len(), 7, "{heads:?}");
    let first = heads[0].to_ascii_lowercase();
    for expected in [
        "get /cl http/1.1\r\n",
        &format!("host: {listen}\r\n"),
        "x-forwarded-for: 10.1.1.1, 127.0.0.1\r\n",
        "x-forwarded-proto: http\r\n",
        "traceparent: 00-",
        "x-b3-sampled: 1\r\n",
    ] {
        assert!(first.contains(expected), "{expected:?} missing in {first}");
    }
    for hop in ["x-drop", "connection:", "te:"] {
        assert!(!first.contains(hop), "{hop} was forwarded: {first}");
    }
    assert!(heads[4].ends_with("\r\n\r\n") && heads[4].contains("Content-Length: 4"));
    // Header lines go on as they came when plain, and are written anew
    // when not (a bare LF, trailing whitespace): never a bare LF upstream.
    assert!(
        heads[5].starts_with(&format!(
            "GET /odd HTTP/1.1\r\nHost: {listen}\r\nX-A: 1\r\nX-B: 2\r\nX-C:\r\n"
        )),
        "{:?}",
        heads[5]
    );
    assert!(
        !heads[5].replace("\r\n", "").contains('\n'),
        "{:?}",
        heads[5]
    );
    let metrics = http_get(admin, "/metrics").2;
    assert!(
        metrics.contains(
            "sidecar_proxy_requests_total{listener=\"inbound\",route=\"/\",method=\"GET\",status_class=\"2xx\"} 4"
        ),
        "{metrics}"
    );
}

#[test]
fn a_pooled_connection_the_upstream_closed_is_replaced_without_an_error() {
    let up = scripted_upstream(|line, seen| match (line, seen) {
        // The first /b arrives on the pooled connection, which the upstream then
        // closes without answering (as a keep-alive timeout racing the request does).
        (l, 0) if l.starts_with("GET /b ") => None,
        (l, _) if l.starts_with("GET /never ") || l.starts_with("POST /never ") => None,
        _ => Some("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
    });
    let p = Proxy::single(up.addr, "svc", &[]);
    let listen = p.addr();
    let mut s = TcpStream::connect(listen).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    for path in ["/a", "/b"] {
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .unwrap();
        let mut buf = [0u8; 40];
        let n = s.read(&mut buf).unwrap();
        assert_eq!(
            &buf[..n],
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            "{path}"
        );
    }
    assert_eq!(up.accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
    // An upstream that never answers is tried once more, not forever: 502.
    let (status, head, _) = request(
        listen,
        "GET /never HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 502, "{head}");
    let tries = up.count("GET /never ");
    assert_eq!(tries, 2);
    // A POST is not sent twice (the upstream may have acted on it): 502 at once.
    let mut s = TcpStream::connect(listen).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut buf = [0u8; 40];
    let n = s.read(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    s.write_all(b"POST /never HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi")
        .unwrap();
    let n = s.read(&mut buf).unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 502"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    let posts = up.count("POST /never ");
    assert_eq!(posts, 1);
}

#[test]
fn requests_the_fast_path_leaves_go_to_the_general_path_mid_connection() {
    let (_s, s_addr) = demo_service("svc", None);
    let p = Proxy::single(s_addr, "svc", &[]);
    let listen = p.addr();
    let mut s = TcpStream::connect(listen).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // A plain GET, a chunked upload (general path from here on), a GET again.
    s.write_all(
        format!(
            "GET /one HTTP/1.1\r\nHost: {listen}\r\n\r\n\
             POST /upload HTTP/1.1\r\nHost: {listen}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n\
             GET /two HTTP/1.1\r\nHost: {listen}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .unwrap();
    let mut got = String::new();
    s.read_to_string(&mut got).unwrap();
    let statuses = got.matches("HTTP/1.1 200 OK").count();
    assert_eq!(statuses, 3, "{got}");
    let one = got.find("Hello from svc (/one)").unwrap();
    let five = got.find("\r\n\r\n5\n").unwrap();
    let two = got.find("Hello from svc (/two)").unwrap();
    assert!(one < five && five < two, "{got}");
}

#[test]
fn slow_heads_and_idle_keep_alive_connections_are_closed_on_time() {
    let (_s, s_addr) = demo_service("svc", None);
    let yaml = format!(
        "service: svc\ntimeouts:\n  header_read: 300ms\n  idle: 600ms\nlisteners:\n  - name: inbound\n    listen: 127.0.0.1:0\n    routes:\n      - upstream: {s_addr}\n"
    );
    let (p, _d) = Proxy::with_config(&yaml, &[]);
    let listen = p.listener("inbound");
    let closed_within = |s: &mut TcpStream| {
        let start = Instant::now();
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return start.elapsed(),
                Ok(_) => {}
            }
        }
    };
    // Half a head, then nothing: closed after the header-read timeout.
    let mut s = TcpStream::connect(listen).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHo").unwrap();
    let waited = closed_within(&mut s);
    assert!(
        waited >= Duration::from_millis(200) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    // A keep-alive connection after its response: closed after the idle timeout.
    let mut s = TcpStream::connect(listen).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(format!("GET / HTTP/1.1\r\nHost: {listen}\r\n\r\n").as_bytes())
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    let waited = closed_within(&mut s);
    assert!(
        waited >= Duration::from_millis(400) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
}

#[test]
fn admin_serves_config_metrics_and_probes() {
    let (_s, s_addr) = demo_service("svc", None);
    let p = Proxy::single(s_addr, "svc", &["--sample-rate", "0.5"]);
    let listen = p.addr();
    let admin = p.admin;
    assert_eq!(get(listen, "/", &[]).0, 200);
    let (status, _, config) = http_get(admin, "/config");
    assert_eq!(status, 200);
    assert!(
        config.contains("service: svc") && config.contains("sample_rate: 0.5"),
        "{config}"
    );
    let metrics = http_get(admin, "/metrics").2;
    for m in [
        "sidecar_proxy_request_duration_seconds_bucket{",
        "sidecar_proxy_active_connections{",
        "process_resident_memory_bytes",
    ] {
        assert!(metrics.contains(m), "{m} missing:\n{metrics}");
    }
    assert_eq!(http_get(admin, "/live").0, 200);
}

#[test]
fn bad_configuration_is_explained() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, "service: x\nlisteners:\n  - name: a\n    listen: 127.0.0.1:0\n    routes:\n      - prefix: /\n        upstrem: x:1\n").unwrap();
    let out = Command::new(common::BIN)
        .args(["proxy", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("upstrem") && err.contains("line 7"), "{err}");
    let out = Command::new(common::BIN)
        .args(["proxy", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("--upstream"));
    let _ = Instant::now();
}
