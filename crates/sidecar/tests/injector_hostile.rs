//! `sidecar injector` against a hostile or unlucky cluster: reproducers
//! from the adversarial review (branch `injreview`). Every test here
//! FAILED on fabc787 when it was written; each says what it guards
//! and what it observed. They are `#[ignore]`d so that `cargo test` stays
//! green until the fix lands: run them with
//! `cargo test -p sidecar --test injector_hostile -- --ignored --test-threads 1`.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::injector::{Ca, FakeApi, Injector, SecretDir, client_config, patch_of};
use common::workloads::{template, workload};
use serde_json::{Value, json};

/// The Deployment's memory limit (deploy/injector/injector.yaml).
const LIMIT_KIB: u64 = 128 * 1024;

fn start(extra: &[&str]) -> (Injector, SecretDir, Ca) {
    let ca = Ca::new("injector test CA");
    let (cert, key, _) = ca.leaf();
    let tls = SecretDir::new(&cert, &key);
    (Injector::start(&tls, &ca.pem, extra), tls, ca)
}

/// `VmRSS` or `VmHWM` of the injector, in KiB.
fn status_kib(inj: &Injector, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{}/status", inj.proc.pid())).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// A TLS connection with the handshake done, offering `alpn`.
fn tls_conn(
    inj: &Injector,
    ca: &Ca,
    alpn: &[&[u8]],
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let tcp = TcpStream::connect(inj.addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(client_config(&ca.pem, alpn), name).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock).unwrap();
    }
    tls
}

fn logs_pod() -> Value {
    workload(
        "Pod",
        template(
            &json!({"sidecar.dev/logs": "/var/log/app/a.log"}),
            &json!({}),
        ),
    )
}

/// Whether one review on a new connection is answered within `within`.
fn answered_within(inj: &Injector, within: Duration) -> bool {
    let (addr, client) = (inj.addr, Arc::clone(&inj.client));
    let body = common::injector::review(&logs_pod(), "apps", false).to_string();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let ok = common::injector::Conn::try_open(addr, &client, "localhost")
            .map(|mut c| c.request("POST", "/mutate", body.as_bytes()).0 == 200)
            .unwrap_or(false);
        let _ = tx.send(ok);
    });
    rx.recv_timeout(within).unwrap_or(false)
}

/// FAILING (observed: no answer, even 60 s later). 256 HTTP/2 connections
/// that send the client preface and an empty SETTINGS frame, then nothing,
/// hold all 256 connection slots for ever: HANDSHAKE_TIMEOUT covers the
/// TLS handshake and HTTP/1 headers only, and an idle h2 connection has no
/// timeout. Any Pod in the cluster can reach the Service; with
/// failurePolicy Ignore every Pod is then created without its sidecars.
#[test]
#[ignore = "FAILING: idle HTTP/2 connections lock the webhook out"]
fn idle_http2_connections_cannot_lock_out_the_api_server() {
    let (inj, _tls, ca) = start(&["--kube-api", "off"]);
    let mut idle = Vec::new();
    for _ in 0..256 {
        let mut c = tls_conn(&inj, &ca, &[b"h2"]);
        assert_eq!(c.conn.alpn_protocol(), Some(&b"h2"[..]));
        c.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            .unwrap();
        c.flush().unwrap();
        idle.push(c);
    }
    // Past every timeout the server has (10 s).
    std::thread::sleep(Duration::from_secs(12));
    assert!(
        answered_within(&inj, Duration::from_secs(5)),
        "a review was not answered within the webhook's 5 s timeout while 256 idle h2 connections are open"
    );
    drop(idle);
}

/// FAILING (observed: VmRSS 230 MB with 24 connections; 256 would buffer
/// 2 GiB, and one HTTP/2 connection with 32 streams reached 221 MB).
/// Bodies are buffered up to 8 MiB each, per stream, with no global
/// budget; the Deployment's limit is 128 Mi, so the kernel kills it.
#[test]
#[ignore = "FAILING: concurrent 8 MiB bodies exceed the 128 Mi memory limit"]
fn concurrent_large_bodies_stay_under_the_memory_limit() {
    let (inj, _tls, ca) = start(&["--kube-api", "off"]);
    let size = 8 << 20;
    let mut open = Vec::new();
    for _ in 0..24 {
        let mut c = tls_conn(&inj, &ca, &[b"http/1.1"]);
        c.write_all(
            format!(
                "POST /mutate HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                size + 10
            )
            .as_bytes(),
        )
        .unwrap();
        let chunk = vec![b' '; 64 << 10];
        for _ in 0..size / chunk.len() {
            c.write_all(&chunk).unwrap();
        }
        c.flush().unwrap();
        open.push(c);
    }
    std::thread::sleep(Duration::from_millis(500));
    let rss = status_kib(&inj, "VmRSS");
    assert!(
        rss < LIMIT_KIB,
        "VmRSS {rss} KiB with 24 unfinished 8 MiB bodies; the limit is {LIMIT_KIB} KiB"
    );
    drop(open);
}

/// FAILING (observed: VmHWM 156 MB for a 3 MB review, 414 MB for 8 MB;
/// a 3.3 MB Pod with 4 x 15,000 env vars: 191 MB). The body is parsed to a
/// serde_json::Value, converted to serde_norway, injected, converted back
/// and diffed: about 50 bytes of heap per byte of small JSON values. The
/// API server accepts requests up to 3 MiB, so one valid Pod (container
/// args of 1,000,000 empty strings) from anyone who may create Pods in an
/// injected namespace OOM-kills the replica that reviews it.
#[test]
#[ignore = "FAILING: one 3 MB review peaks above the 128 Mi memory limit"]
fn one_3mb_pod_review_stays_under_the_memory_limit() {
    let (inj, _tls, _ca) = start(&["--kube-api", "off"]);
    let mut pod = logs_pod();
    pod["spec"]["containers"][0]["args"] = Value::Array(vec![json!(""); 1_000_000]);
    let r = inj.review(&pod, "apps", false);
    assert!(patch_of(&r).is_some(), "{}", r.to_string().len());
    let hwm = status_kib(&inj, "VmHWM");
    assert!(
        hwm < LIMIT_KIB,
        "VmHWM {hwm} KiB after one 3 MB review; the limit is {LIMIT_KIB} KiB"
    );
}

/// FIXED (was: Pods still admitted without sidecars 7 s after the
/// API works again; injected only after 10 s; failures are now cached
/// for FAILED_TTL, 1 s). A failed lookup (a 429 from
/// API priority and fairness, a 503 during an etcd leader change, a
/// rotated token read mid-write) is cached for the full TTL like a good
/// answer, so one blip leaves every Pod of that namespace created in the
/// next 10 s without sidecars, for their whole life.
#[test]
fn a_failed_namespace_lookup_is_retried_within_two_seconds() {
    let ca = Ca::new("injector test CA");
    let api = FakeApi::start(&ca, "good");
    api.set("apps", json!({"sidecar.dev/logs": "/var/log/ns/ns.log"}));
    let (cert, key, _) = ca.leaf();
    let tls = SecretDir::new(&cert, &key);
    let flags = api.flags();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let inj = Injector::start(&tls, &ca.pem, &flags);
    let pod = workload("Pod", template(&Value::Null, &json!({})));
    *api.token.lock().unwrap() = "rotated".into();
    let r = inj.review(&pod, "apps", false);
    assert!(patch_of(&r).is_none(), "{r}");
    *api.token.lock().unwrap() = "good".into();
    std::thread::sleep(Duration::from_secs(2));
    let r = inj.review(&pod, "apps", false);
    assert!(
        patch_of(&r).is_some(),
        "2 s after the API answers again the Pod is still admitted without sidecars: {r}"
    );
}

/// FIXED (was: 40 concurrent reviews, 40 GETs, each on a new TCP
/// and TLS connection; now one lookup per namespace in flight, and at
/// most 4 at once). Reviews of a namespace not in the cache each look
/// it up: a burst (a Deployment scaled to 200, a node drain) becomes as
/// many API requests, and an unauthenticated client of the webhook can
/// make the injector's service account hammer the API server.
#[test]
fn concurrent_reviews_of_one_namespace_share_one_lookup() {
    let ca = Ca::new("injector test CA");
    let api = FakeApi::start(&ca, "t");
    api.set("apps", json!({"sidecar.dev/logs": "/var/log/ns/ns.log"}));
    *api.delay.lock().unwrap() = Duration::from_millis(500);
    let (cert, key, _) = ca.leaf();
    let tls = SecretDir::new(&cert, &key);
    let flags = api.flags();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let inj = Arc::new(Injector::start(&tls, &ca.pem, &flags));
    let pod = workload("Pod", template(&Value::Null, &json!({})));
    let started = Instant::now();
    let threads: Vec<_> = (0..16)
        .map(|_| {
            let (inj, pod) = (Arc::clone(&inj), pod.clone());
            std::thread::spawn(move || patch_of(&inj.review(&pod, "apps", false)).is_some())
        })
        .collect();
    for t in threads {
        assert!(t.join().unwrap());
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    let gets = api.requests.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(
        gets, 1,
        "16 concurrent reviews of one namespace made {gets} lookups"
    );
}

/// FAILING (observed: a full injection patch for UPDATE, CONNECT and a
/// `binding` subresource). The binary never reads `request.operation` or
/// `subResource`: only the shipped rules (CREATE on pods) keep it from
/// patching a running Pod, where the added initContainers make the API
/// server refuse the update (pod spec is immutable), so a widened rule
/// (`operations: ["*"]`, `resources: ["pods/*"]`) would block `kubectl
/// label pod` on every Pod created before its namespace was labelled,
/// although "the webhook never blocks a Pod".
#[test]
#[ignore = "FAILING: UPDATE and subresource reviews get an injection patch"]
fn only_pod_creation_is_patched() {
    let (inj, _tls, _ca) = start(&["--kube-api", "off"]);
    let pod = logs_pod();
    for (operation, sub) in [
        ("UPDATE", None),
        ("CONNECT", None),
        ("CREATE", Some("binding")),
    ] {
        let mut r = common::injector::review(&pod, "apps", false);
        r["request"]["operation"] = json!(operation);
        if operation == "UPDATE" {
            r["request"]["oldObject"] = pod.clone();
        }
        if let Some(sub) = sub {
            r["request"]["subResource"] = json!(sub);
        }
        let answer = inj.post(r.to_string().as_bytes());
        assert!(
            patch_of(&answer["response"]).is_none(),
            "{operation} {sub:?}: {answer}"
        );
    }
}

/// Reviews naming many namespaces (a client making them up) run at most 4
/// lookups at once: 8 namespaces whose lookups take 300 ms each need two
/// rounds, and each is still read within the 2 s budget.
#[test]
fn lookups_of_many_namespaces_run_at_most_four_at_once() {
    let ca = Ca::new("injector test CA");
    let api = FakeApi::start(&ca, "t");
    let names: Vec<String> = (0..8).map(|i| format!("ns-{i}")).collect();
    for ns in &names {
        api.set(ns, json!({"sidecar.dev/logs": "/var/log/ns/ns.log"}));
    }
    *api.delay.lock().unwrap() = Duration::from_millis(300);
    let (cert, key, _) = ca.leaf();
    let tls = SecretDir::new(&cert, &key);
    let flags = api.flags();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let inj = Arc::new(Injector::start(&tls, &ca.pem, &flags));
    let pod = workload("Pod", template(&Value::Null, &json!({})));
    let started = Instant::now();
    let threads: Vec<_> = names
        .into_iter()
        .map(|ns| {
            let (inj, pod) = (Arc::clone(&inj), pod.clone());
            std::thread::spawn(move || patch_of(&inj.review(&pod, &ns, false)).is_some())
        })
        .collect();
    for t in threads {
        assert!(t.join().unwrap());
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(600),
        "8 lookups of 300 ms each took {took:?}: more than 4 ran at once"
    );
    assert_eq!(api.requests.load(std::sync::atomic::Ordering::SeqCst), 8);
}
