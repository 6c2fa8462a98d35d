//! Part 3 of the demo: the seed's Jaeger demo topology on loopback, with an
//! in-process span receiver instead of Jaeger, and each trace printed as a tree.
//!
//! ```text
//! client -> front proxy (starts the trace) -> sidecar 1 inbound -> service1
//!   service1 -> sidecar 1 outbound (/svc/2, h2c) -> sidecar 2 inbound -> service2
//! ```

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tokio::sync::watch;

use crate::pgserver::free_port;
use crate::{DemoError, DemoOptions, cancelled, terminate};

/// What the traces part showed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TracesOutcome {
    pub requests: usize,
    /// Traces that arrived as the full four-span chain.
    pub complete: usize,
}

impl TracesOutcome {
    pub fn ok(&self) -> bool {
        self.requests > 0 && self.complete == self.requests
    }
}

type Spans = Arc<Mutex<Vec<serde_json::Value>>>;

/// A Zipkin v2 receiver: POST /api/v2/spans, answers 202.
async fn receiver(listener: TcpListener, spans: Spans) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let spans = Arc::clone(&spans);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let spans = Arc::clone(&spans);
                async move {
                    let body = req
                        .into_body()
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    if let Ok(serde_json::Value::Array(list)) = serde_json::from_slice(&body) {
                        if let Ok(mut s) = spans.lock() {
                            s.extend(list);
                        }
                    }
                    let mut resp = Response::new(Full::new(Bytes::new()));
                    *resp.status_mut() = StatusCode::ACCEPTED;
                    Ok::<_, Infallible>(resp)
                }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn addr() -> Result<SocketAddr, DemoError> {
    Ok(SocketAddr::from(([127, 0, 0, 1], free_port()?)))
}

pub(crate) async fn run(
    opts: &DemoOptions,
    cancel: watch::Receiver<bool>,
) -> Result<TracesOutcome, DemoError> {
    println!("== Part 3 of 3: traces ==");
    let dir = tempfile::Builder::new()
        .prefix("sidecar-demo-traces-")
        .tempdir()?;
    let spans: Spans = Arc::new(Mutex::new(Vec::new()));
    let collector = TcpListener::bind("127.0.0.1:0").await?;
    let zipkin = format!("http://{}/api/v2/spans", collector.local_addr()?);
    let receiver_task = tokio::spawn(receiver(collector, Arc::clone(&spans)));

    let (s1, s2, p1_in, p1_out, p2_in, front) =
        (addr()?, addr()?, addr()?, addr()?, addr()?, addr()?);
    let configs = [
        (
            "service2.yaml",
            format!(
                "service: service2\ntracing: {{zipkin: \"{zipkin}\"}}\nadmin: \"off\"\nlisteners:\n  - {{name: inbound, listen: \"{p2_in}\", direction: inbound, routes: [{{prefix: /, upstream: \"{s2}\"}}]}}\n"
            ),
        ),
        (
            "service1.yaml",
            format!(
                "service: service1\ntracing: {{zipkin: \"{zipkin}\"}}\nadmin: \"off\"\nlisteners:\n  - {{name: inbound, listen: \"{p1_in}\", direction: inbound, routes: [{{prefix: /, upstream: \"{s1}\", operation: checkAvailability}}]}}\n  - {{name: outbound, listen: \"{p1_out}\", direction: outbound, routes: [{{prefix: /svc/2, upstream: \"{p2_in}\", http2: true, operation: checkStock}}]}}\n"
            ),
        ),
        (
            "front.yaml",
            format!(
                "service: front-proxy\ntracing: {{zipkin: \"{zipkin}\"}}\nadmin: \"off\"\nlisteners:\n  - {{name: front, listen: \"{front}\", direction: outbound, generate_request_id: true, routes: [{{prefix: /, upstream: \"{p1_in}\"}}]}}\n"
            ),
        ),
    ];
    let mut children: Vec<Child> = Vec::new();
    let spawn = |args: Vec<String>| -> Result<Child, DemoError> {
        Command::new(&opts.exe)
            .args(args)
            .args(["--log-level", "warn"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| DemoError::Spawn {
                what: "a demo process",
                exe: opts.exe.display().to_string(),
                source,
            })
    };
    children.push(spawn(vec![
        "demo-service".into(),
        "--listen".into(),
        s2.to_string(),
        "--name".into(),
        "service2".into(),
    ])?);
    children.push(spawn(vec![
        "demo-service".into(),
        "--listen".into(),
        s1.to_string(),
        "--name".into(),
        "service1".into(),
        "--call".into(),
        format!("http://{p1_out}/svc/2"),
    ])?);
    for (name, yaml) in &configs {
        let path = dir.path().join(name);
        std::fs::write(&path, yaml)?;
        children.push(spawn(vec![
            "proxy".into(),
            "--config".into(),
            path.display().to_string(),
        ])?);
    }
    println!(
        "Two demo services, each with a `sidecar proxy` beside it, and a front proxy that starts\n\
         each trace, as in the seed's Jaeger demo. The services only copy trace headers from the\n\
         request they get to the request they make. Spans go to a Zipkin receiver inside the demo:\n\n  \
         client -> front proxy {front} -> sidecar {p1_in} -> service1 {s1}\n  \
         service1 -> sidecar {p1_out}/svc/2 (h2c) -> sidecar {p2_in} -> service2 {s2}\n"
    );

    let deadline = Instant::now() + Duration::from_secs(10);
    for port in [s1, s2, p1_in, p1_out, p2_in, front] {
        while tokio::net::TcpStream::connect(port).await.is_err() {
            if Instant::now() > deadline {
                println!("The demo processes did not start listening in time.\n");
                return Ok(TracesOutcome::default());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    let mut outcome = TracesOutcome::default();
    let mut trace_ids = Vec::new();
    for i in 1..=3 {
        if *cancel.borrow() {
            break;
        }
        let (status, body) = get(front, &format!("/order/{i}")).await?;
        println!(
            "GET http://{front}/order/{i} -> {status}: {}",
            body.lines().collect::<Vec<_>>().join(" / ")
        );
        outcome.requests += 1;
        trace_ids.push(i);
    }
    println!();
    // Spans leave the proxies in batches, at most a second later.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let count = spans.lock().map(|s| s.len()).unwrap_or(0);
        if count >= outcome.requests * 4 || Instant::now() > deadline {
            break;
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
            () = cancelled(cancel.clone()) => break,
        }
    }
    let all = spans.lock().map(|s| s.clone()).unwrap_or_default();
    let mut by_trace: Vec<(String, Vec<serde_json::Value>)> = Vec::new();
    for span in all {
        let id = span["traceId"].as_str().unwrap_or("").to_string();
        match by_trace.iter_mut().find(|(t, _)| *t == id) {
            Some((_, list)) => list.push(span),
            None => by_trace.push((id, vec![span])),
        }
    }
    for (trace_id, list) in &by_trace {
        if is_chain(list) {
            outcome.complete += 1;
        }
        print_tree(trace_id, list);
    }
    println!(
        "Result: {} requests, {} traces with all four spans (front proxy -> service1 -> service1's call -> service2).\n\
         On a cluster the same spans go to Jaeger (its Zipkin endpoint :9411 or OTLP :4318).\n",
        outcome.requests, outcome.complete
    );
    for child in &children {
        terminate(child);
    }
    for mut child in children {
        let _ = child.wait().await;
    }
    receiver_task.abort();
    Ok(outcome)
}

fn is_chain(spans: &[serde_json::Value]) -> bool {
    if spans.len() != 4 {
        return false;
    }
    let ids: HashMap<&str, &serde_json::Value> = spans
        .iter()
        .filter_map(|s| Some((s["id"].as_str()?, s)))
        .collect();
    let roots = spans.iter().filter(|s| s.get("parentId").is_none()).count();
    let linked = spans
        .iter()
        .filter(|s| {
            s.get("parentId")
                .and_then(|p| p.as_str())
                .is_some_and(|p| ids.contains_key(p))
        })
        .count();
    roots == 1 && linked == 3
}

fn print_tree(trace_id: &str, spans: &[serde_json::Value]) {
    let request_id = spans
        .iter()
        .find_map(|s| s["tags"]["guid:x-request-id"].as_str())
        .unwrap_or("-");
    println!("trace {trace_id}  (x-request-id {request_id})");
    let ids: Vec<&str> = spans.iter().filter_map(|s| s["id"].as_str()).collect();
    let roots: Vec<&serde_json::Value> = spans
        .iter()
        .filter(|s| {
            s.get("parentId")
                .and_then(|p| p.as_str())
                .is_none_or(|p| !ids.contains(&p))
        })
        .collect();
    for root in roots {
        print_span(root, spans, 1);
    }
    println!();
}

fn print_span(span: &serde_json::Value, all: &[serde_json::Value], depth: usize) {
    let ms = span["duration"].as_f64().unwrap_or(0.0) / 1000.0;
    println!(
        "{}{:<12} {:<6} {:<24} {:>8.2} ms  HTTP {}",
        "  ".repeat(depth),
        span["localEndpoint"]["serviceName"].as_str().unwrap_or("?"),
        span["kind"].as_str().unwrap_or("?"),
        span["name"].as_str().unwrap_or("?"),
        ms,
        span["tags"]["http.status_code"].as_str().unwrap_or("?"),
    );
    let id = span["id"].as_str();
    let mut children: Vec<&serde_json::Value> = all
        .iter()
        .filter(|s| s["parentId"].as_str() == id)
        .collect();
    children.sort_by_key(|s| s["timestamp"].as_u64());
    for child in children {
        print_span(child, all, depth + 1);
    }
}

/// A plain HTTP/1.0 GET on loopback: (status, body).
async fn get(addr: SocketAddr, path: &str) -> Result<(u16, String), DemoError> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: shop.local\r\n\r\n").as_bytes())
        .await?;
    let mut resp = String::new();
    stream.read_to_string(&mut resp).await?;
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_string()))
}
