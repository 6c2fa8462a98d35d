//! Span export off the request path: a bounded queue, batches of up to 512
//! spans or one second, POSTed to Zipkin (JSON) and/or OTLP (protobuf).
//! When a collector is slow or down, spans are dropped and counted; requests
//! never wait for it.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use prost::Message;
use tokio::sync::{mpsc, watch};

use crate::metrics::{CollectorLabels, Metrics};
use crate::span::{Span, otlp_request, zipkin_json};

const BATCH: usize = 512;
const QUEUE: usize = 8192;
const FLUSH_EVERY: Duration = Duration::from_secs(1);
const POST_TIMEOUT: Duration = Duration::from_secs(5);

/// Where finished spans go (cheap to clone; a full queue drops the span).
#[derive(Clone)]
pub struct SpanSink {
    tx: Option<mpsc::Sender<Span>>,
    metrics: Metrics,
}

impl SpanSink {
    /// A sink that records nothing (no collector configured).
    pub fn disabled(metrics: Metrics) -> Self {
        Self { tx: None, metrics }
    }

    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    pub fn send(&self, span: Span) {
        if let Some(tx) = &self.tx {
            if tx.try_send(span).is_err() {
                self.metrics.spans_dropped.inc();
            }
        }
    }
}

/// Starts the exporter task. It ends after a last flush when `true` is sent
/// on the returned channel (or every [`SpanSink`] clone is dropped).
pub fn start(
    zipkin: Option<String>,
    otlp: Option<String>,
    metrics: Metrics,
) -> (SpanSink, tokio::task::JoinHandle<()>, watch::Sender<bool>) {
    let (stop_tx, stop_rx) = watch::channel(false);
    if zipkin.is_none() && otlp.is_none() {
        return (SpanSink::disabled(metrics), tokio::spawn(async {}), stop_tx);
    }
    let (tx, rx) = mpsc::channel(QUEUE);
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(Duration::from_secs(2)));
    connector.set_nodelay(true);
    let client = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector);
    let exporter = Exporter {
        client,
        zipkin,
        otlp,
        metrics: metrics.clone(),
        failing: std::sync::Mutex::new(std::collections::HashSet::new()),
    };
    let task = tokio::spawn(exporter.run(rx, stop_rx));
    (
        SpanSink {
            tx: Some(tx),
            metrics,
        },
        task,
        stop_tx,
    )
}

struct Exporter {
    client: Client<HttpConnector, Full<Bytes>>,
    zipkin: Option<String>,
    otlp: Option<String>,
    metrics: Metrics,
    /// Collectors failing now (warned once until they work again).
    failing: std::sync::Mutex<std::collections::HashSet<&'static str>>,
}

impl Exporter {
    async fn run(self, mut rx: mpsc::Receiver<Span>, mut stop: watch::Receiver<bool>) {
        let mut batch = Vec::with_capacity(BATCH);
        let mut tick = tokio::time::interval(FLUSH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                span = rx.recv() => match span {
                    Some(span) => {
                        batch.push(span);
                        if batch.len() >= BATCH {
                            self.flush(&mut batch).await;
                        }
                    }
                    None => {
                        self.flush(&mut batch).await;
                        return;
                    }
                },
                _ = tick.tick() => self.flush(&mut batch).await,
                _ = stop.changed() => {
                    // Shutting down: send what is queued, then stop.
                    while let Ok(span) = rx.try_recv() {
                        batch.push(span);
                        if batch.len() >= BATCH {
                            self.flush(&mut batch).await;
                        }
                    }
                    self.flush(&mut batch).await;
                    return;
                }
            }
        }
    }

    async fn flush(&self, batch: &mut Vec<Span>) {
        if batch.is_empty() {
            return;
        }
        let spans = std::mem::take(batch);
        let zipkin = async {
            if let Some(url) = &self.zipkin {
                self.post(
                    "zipkin",
                    url,
                    "application/json",
                    zipkin_json(&spans),
                    spans.len(),
                )
                .await;
            }
        };
        let otlp = async {
            if let Some(url) = &self.otlp {
                let body = otlp_request(&spans).encode_to_vec();
                self.post("otlp", url, "application/x-protobuf", body, spans.len())
                    .await;
            }
        };
        tokio::join!(zipkin, otlp);
    }

    async fn post(
        &self,
        collector: &'static str,
        url: &str,
        content_type: &str,
        body: Vec<u8>,
        count: usize,
    ) {
        let labels = CollectorLabels {
            collector: collector.to_string(),
        };
        let request = Request::post(url)
            .header(hyper::header::CONTENT_TYPE, content_type)
            .body(Full::new(Bytes::from(body)));
        let outcome = match request {
            Ok(req) => match tokio::time::timeout(POST_TIMEOUT, self.client.request(req)).await {
                Ok(Ok(resp)) if resp.status().is_success() => Ok(()),
                Ok(Ok(resp)) => Err(format!("it answered {}", resp.status())),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no answer within {POST_TIMEOUT:?}")),
            },
            Err(e) => Err(e.to_string()),
        };
        match outcome {
            Ok(()) => {
                self.metrics
                    .spans_exported
                    .get_or_create(&labels)
                    .inc_by(count as u64);
                if self.failing.lock().is_ok_and(|mut f| f.remove(collector)) {
                    tracing::info!("spans reach {url} again");
                }
            }
            Err(why) => {
                self.metrics.span_export_errors.get_or_create(&labels).inc();
                self.metrics.spans_dropped.inc_by(count as u64);
                if self.failing.lock().is_ok_and(|mut f| f.insert(collector)) {
                    tracing::warn!(
                        "cannot export spans to {url} ({why}); dropping them (counted in sidecar_proxy_spans_dropped_total) until it works again; requests are not affected"
                    );
                } else {
                    tracing::debug!("{count} spans not exported to {url}: {why}");
                }
            }
        }
    }
}
