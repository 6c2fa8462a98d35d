//! Regression tests for what a second adversarial review of `sidecar
//! proxy` found after the rules were unified: each on both paths (the fast
//! path, and the general path with `--no-fast-path`), each named after what
//! it guards.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::peers::{H11Checker, H11Upstream, exchange};
use common::proxy::{Proxy, both_paths, statuses, targets};

/// An upstream that answers each request head (and skips a chunked or
/// sized body) with `response`, and records every byte it receives.
fn recording_upstream(response: &'static [u8]) -> (SocketAddr, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let store = Arc::clone(&seen);
    std::thread::spawn(move || {
        for mut c in listener.incoming().flatten() {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    // Answer once per complete head (and its body, if sized
                    // or chunked and already here).
                    while let Some(end) = find(&buf, b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                        let mut used = end + 4;
                        if head.contains("transfer-encoding: chunked") {
                            match find(&buf[used..], b"0\r\n\r\n") {
                                Some(e) => used += e + 5,
                                None => break,
                            }
                        }
                        buf.drain(..used);
                        if c.write_all(response).is_err() {
                            return;
                        }
                    }
                    match c.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            store.lock().unwrap().extend_from_slice(&chunk[..n]);
                            buf.extend_from_slice(&chunk[..n]);
                        }
                    }
                }
            });
        }
    });
    (addr, seen)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[test]
fn a_bare_lf_in_chunked_trailers_cannot_shift_the_guards_verdicts() {
    let up = H11Upstream::start();
    let mut checker = H11Checker::start();
    // hyper reads `\nGET /fake ...` as trailer lines; a framer that ended the
    // body at the bare LF would see a request hyper never does, and give
    // the CL+TE request after it that request's verdict.
    let raw = b"POST /1 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\n\
GET /fake HTTP/1.1\r\nHost: x\r\n\r\n\
POST /3 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
    for (path, proxy) in both_paths(up.addr, &[]) {
        let got = exchange(proxy.addr(), raw);
        assert_eq!(
            statuses(&mut checker, &["POST", "POST"], &got),
            [200, 400],
            "{path}: {}",
            String::from_utf8_lossy(&got)
        );
        assert_eq!(targets(&up.take_batch()), ["/1"], "{path}");
    }
}

#[test]
fn an_http10_upstream_answer_never_downgrades_the_next_request_on_its_connection() {
    let (up, seen) = recording_upstream(
        b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok",
    );
    for (path, proxy) in both_paths(up, &[]) {
        seen.lock().unwrap().clear();
        exchange(proxy.addr(), b"GET /first HTTP/1.1\r\nHost: a\r\n\r\n");
        let got = exchange(
            proxy.addr(),
            b"POST /second HTTP/1.1\r\nHost: b\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        );
        assert!(
            got.starts_with(b"HTTP/1.1 200"),
            "{path}: {}",
            String::from_utf8_lossy(&got)
        );
        let bytes = String::from_utf8_lossy(&seen.lock().unwrap()).to_string();
        assert!(
            bytes.contains("POST /second HTTP/1.1\r\n"),
            "{path}: {bytes}"
        );
        assert!(
            bytes.contains("hello"),
            "{path}: the body was dropped: {bytes}"
        );
    }
}

#[test]
fn both_paths_take_response_heads_of_the_same_size() {
    // 70 fields, and a 70 KiB field: within hyper's client limits (100
    // fields, ~400 KiB), which the fast path now shares.
    let mut many = String::from("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n");
    for i in 0..70 {
        many.push_str(&format!("X-F{i}: v\r\n"));
    }
    many.push_str("\r\nok");
    let big = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Big: {}\r\n\r\nok",
        "b".repeat(70 * 1024)
    );
    let mut checker = H11Checker::start();
    for response in [many, big] {
        let response: &'static [u8] = Box::leak(response.into_bytes().into_boxed_slice());
        let (up, _) = recording_upstream(response);
        for (path, proxy) in both_paths(up, &[]) {
            let got = exchange(proxy.addr(), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
            assert_eq!(statuses(&mut checker, &["GET"], &got), [200], "{path}");
        }
    }
}

#[test]
fn both_paths_refuse_odd_statuses_alike_and_drop_the_length_of_a_204() {
    let mut checker = H11Checker::start();
    for (what, response, status) in [
        (
            "status under 100",
            &b"HTTP/1.1 050 X\r\nContent-Length: 2\r\n\r\nok"[..],
            502,
        ),
        (
            "101 unasked",
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n",
            502,
        ),
        (
            "HTTP/1.0 chunked",
            b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
            502,
        ),
        (
            "204 with a length",
            b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
            204,
        ),
    ] {
        let (up, _) = recording_upstream(response);
        for (path, proxy) in both_paths(up, &[]) {
            let got = exchange(proxy.addr(), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
            assert_eq!(
                statuses(&mut checker, &["GET"], &got),
                [status],
                "{path}: {what}"
            );
            let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
            if status == 204 {
                assert!(!text.contains("content-length"), "{path}: {text}");
            }
        }
    }
}

#[test]
fn a_response_body_that_stalls_is_given_up_after_the_stream_idle_timeout() {
    let (up, _) = recording_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc");
    let dir = tempfile::tempdir().unwrap();
    for (path, fast) in [("fast path", true), ("general path", false)] {
        let yaml = format!(
            "service: svc\nfast_path: {fast}\ntimeouts:\n  stream_idle: 500ms\nlisteners:\n  - name: inbound\n    listen: 127.0.0.1:0\n    routes:\n      - upstream: {up}\n"
        );
        let file = dir.path().join(format!("{fast}.yaml"));
        std::fs::write(&file, yaml).unwrap();
        let proxy = Proxy::start(&[
            "proxy",
            "--config",
            file.to_str().unwrap(),
            "--admin",
            "127.0.0.1:0",
        ]);
        let start = Instant::now();
        let mut s = TcpStream::connect(proxy.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_millis(400) && waited < Duration::from_secs(10),
            "{path}: closed after {waited:?}"
        );
        assert!(
            got.ends_with(b"abc"),
            "{path}: {}",
            String::from_utf8_lossy(&got)
        );
    }
}

#[test]
fn an_http2_preface_after_http1_requests_is_not_a_new_protocol() {
    let up = H11Upstream::start();
    for (path, proxy) in both_paths(up.addr, &[]) {
        let mut s = TcpStream::connect(proxy.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\nPRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            .unwrap();
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 200"), "{path}: {text}");
        // No HTTP/2 SETTINGS frame after the response: the connection ends
        // (or gets an HTTP/1.1 error).
        let end = got.windows(9).position(|w| w == b"ok:GET:/a").unwrap() + 9;
        let after = &got[end..];
        assert!(
            after.is_empty() || after.starts_with(b"HTTP/1.1 4"),
            "{path}: {:?}",
            String::from_utf8_lossy(after)
        );
    }
}

#[test]
fn both_paths_treat_odd_request_targets_alike() {
    let up = H11Upstream::start();
    let mut checker = H11Checker::start();
    let [(_, fast), (_, general)] = both_paths(up.addr, &[]);
    for target in [
        "/a`b",
        "/a<b>",
        "/a?x=\"y\"",
        "/p#frag",
        "/a{b}",
        "/ok/%41?q=1&r=@:",
    ] {
        let raw = format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let mut outcomes = Vec::new();
        for proxy in [&fast, &general] {
            let got = exchange(proxy.addr(), raw.as_bytes());
            outcomes.push((
                statuses(&mut checker, &["GET"], &got),
                targets(&up.take_batch()),
            ));
        }
        assert_eq!(
            outcomes[0], outcomes[1],
            "{target}: fast path, then general path"
        );
    }
}

#[test]
fn a_declined_upgrade_leaves_the_connection_usable() {
    let up = H11Upstream::start();
    let mut checker = H11Checker::start();
    for (path, proxy) in both_paths(up.addr, &[]) {
        let got = exchange(
            proxy.addr(),
            b"GET /u HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n\
GET /next HTTP/1.1\r\nHost: x\r\n\r\n",
        );
        assert_eq!(
            statuses(&mut checker, &["GET", "GET"], &got),
            [200, 200],
            "{path}"
        );
        assert_eq!(targets(&up.take_batch()), ["/u", "/next"], "{path}");
    }
}

#[test]
fn a_long_pipeline_is_served_whole() {
    let up = H11Upstream::start();
    let one = b"GET /p HTTP/1.1\r\nHost: x\r\n\r\n";
    for (path, proxy) in both_paths(up.addr, &[]) {
        // A chunked request first hands the connection to the general path.
        let mut raw =
            b"POST /h HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec();
        raw.extend(one.repeat(3000));
        let got = exchange(proxy.addr(), &raw);
        let oks = String::from_utf8_lossy(&got)
            .matches("HTTP/1.1 200")
            .count();
        assert_eq!(oks, 3001, "{path}");
        assert_eq!(up.take_batch().len(), 3001, "{path}");
    }
}

#[test]
fn underscore_lookalikes_of_proxy_fields_never_reach_the_upstream() {
    let up = H11Upstream::start();
    for (path, proxy) in both_paths(up.addr, &[]) {
        exchange(
            proxy.addr(),
            b"GET /u HTTP/1.1\r\nHost: x\r\nX_Forwarded_For: 6.6.6.6\r\nx_request_id: forged\r\n\
Trace_Parent: 1\r\nX_Custom: kept\r\n\r\n",
        );
        let batch = up.take_batch();
        let names: Vec<&str> = batch[0]["headers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h[0].as_str().unwrap())
            .collect();
        for forged in ["x_forwarded_for", "x_request_id"] {
            assert!(!names.contains(&forged), "{path}: {names:?}");
        }
        assert!(names.contains(&"x_custom"), "{path}: {names:?}");
    }
}
