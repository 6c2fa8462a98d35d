//! Span export off the request path: a bounded queue, batches of up to 512
//! spans or one second, POSTed to Zipkin (JSON) and/or OTLP (protobuf).
//! When a collector is slow or down, spans are dropped and counted; requests
//! never wait for it. A request only pushes its span onto the queue; the
//! exporter wakes when a batch is full or a second has passed, not per span.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use prost::Message;
use tokio::sync::{Notify, watch};

use crate::metrics::{CollectorLabels, Metrics};
use crate::span::{Span, otlp_request, zipkin_json_into};

const BATCH: usize = 512;
const QUEUE: usize = 8192;
const FLUSH_EVERY: Duration = Duration::from_secs(1);
const POST_TIMEOUT: Duration = Duration::from_secs(5);

/// Finished spans waiting for export (at most `QUEUE`).
struct Queue {
    spans: Mutex<Vec<Span>>,
    /// Wakes the exporter when a batch is full.
    batch_full: Notify,
}

impl Queue {
    /// The queued spans; `spare` (empty) takes their place, so the queue
    /// keeps an allocation of its own instead of growing a new one.
    fn take(&self, spare: Vec<Span>) -> Vec<Span> {
        std::mem::replace(
            &mut *self.spans.lock().unwrap_or_else(|e| e.into_inner()),
            spare,
        )
    }
}

/// Request bodies being built: kept from batch to batch, so export does not
/// allocate (and, with musl, map and unmap) a fresh buffer every batch.
#[derive(Default)]
struct Buffers {
    zipkin: Vec<u8>,
    otlp: Vec<u8>,
}

/// Where finished spans go (cheap to clone; a full queue drops the span).
#[derive(Clone)]
pub struct SpanSink {
    queue: Option<Arc<Queue>>,
    metrics: Metrics,
}

impl SpanSink {
    /// A sink that records nothing (no collector configured).
    pub fn disabled(metrics: Metrics) -> Self {
        Self {
            queue: None,
            metrics,
        }
    }

    pub fn enabled(&self) -> bool {
        self.queue.is_some()
    }

    pub fn send(&self, span: Span) {
        let Some(queue) = &self.queue else {
            return;
        };
        let mut spans = queue.spans.lock().unwrap_or_else(|e| e.into_inner());
        if spans.len() >= QUEUE {
            drop(spans);
            self.metrics.spans_dropped.inc();
            return;
        }
        spans.push(span);
        if spans.len() == BATCH {
            queue.batch_full.notify_one();
        }
    }
}

/// Starts the exporter task. It ends after a last flush when `true` is sent
/// on the returned channel (or that sender is dropped).
pub fn start(
    zipkin: Option<String>,
    otlp: Option<String>,
    metrics: Metrics,
) -> (SpanSink, tokio::task::JoinHandle<()>, watch::Sender<bool>) {
    let (stop_tx, stop_rx) = watch::channel(false);
    if zipkin.is_none() && otlp.is_none() {
        return (SpanSink::disabled(metrics), tokio::spawn(async {}), stop_tx);
    }
    let queue = Arc::new(Queue {
        spans: Mutex::new(Vec::with_capacity(BATCH)),
        batch_full: Notify::new(),
    });
    // The exporter has a thread of its own: serializing a batch (about a
    // millisecond for 512 spans) never holds up requests.
    let exporter_metrics = metrics.clone();
    let exporter_queue = Arc::clone(&queue);
    let task = tokio::task::spawn_blocking(move || {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!("cannot start the span exporter ({e}); spans are dropped");
                return;
            }
        };
        runtime.block_on(async move {
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
                metrics: exporter_metrics,
                failing: std::sync::Mutex::new(std::collections::HashSet::new()),
            };
            exporter.run(exporter_queue, stop_rx).await;
        });
    });
    (
        SpanSink {
            queue: Some(queue),
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
    async fn run(self, queue: Arc<Queue>, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(FLUSH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut spare = Vec::with_capacity(BATCH);
        let mut buffers = Buffers::default();
        loop {
            let stopping = tokio::select! {
                _ = queue.batch_full.notified() => false,
                _ = tick.tick() => false,
                // Shutting down (or the proxy is gone): send what is queued, then stop.
                _ = stop.changed() => true,
            };
            let mut spans = queue.take(std::mem::take(&mut spare));
            for batch in spans.chunks(BATCH) {
                self.flush(batch, &mut buffers).await;
            }
            spans.clear();
            // A backlog's larger vector is not kept: memory stays bounded.
            spare = if spans.capacity() <= 2 * BATCH {
                spans
            } else {
                Vec::with_capacity(BATCH)
            };
            if stopping {
                return;
            }
        }
    }

    async fn flush(&self, spans: &[Span], buffers: &mut Buffers) {
        if spans.is_empty() {
            return;
        }
        let Buffers { zipkin, otlp } = buffers;
        let to_zipkin = async {
            if let Some(url) = &self.zipkin {
                zipkin.clear();
                zipkin_json_into(spans, zipkin);
                self.post("zipkin", url, "application/json", zipkin, spans.len())
                    .await;
            }
        };
        let to_otlp = async {
            if let Some(url) = &self.otlp {
                otlp.clear();
                // Encoding into a Vec cannot fail for want of space.
                let _ = otlp_request(spans).encode(otlp);
                self.post("otlp", url, "application/x-protobuf", otlp, spans.len())
                    .await;
            }
        };
        tokio::join!(to_zipkin, to_otlp);
    }

    /// POSTs `buf` (taken, and given back for the next batch once the
    /// client has let go of it) and counts the outcome.
    async fn post(
        &self,
        collector: &'static str,
        url: &str,
        content_type: &str,
        buf: &mut Vec<u8>,
        count: usize,
    ) {
        let body = Bytes::from(std::mem::take(buf));
        let kept = body.clone();
        self.send(collector, url, content_type, body, count).await;
        if let Ok(unique) = kept.try_into_mut() {
            *buf = unique.into();
        }
    }

    async fn send(
        &self,
        collector: &'static str,
        url: &str,
        content_type: &str,
        body: Bytes,
        count: usize,
    ) {
        let labels = CollectorLabels {
            collector: collector.to_string(),
        };
        let request = Request::post(url)
            .header(hyper::header::CONTENT_TYPE, content_type)
            .body(Full::new(body));
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
