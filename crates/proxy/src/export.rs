//! Span export off the request path: a bounded queue, batches of up to 512
//! spans or one second, POSTed to Zipkin (JSON) and/or OTLP (protobuf).
//! When a collector is slow or down, spans are dropped and counted; requests
//! never wait for it. A request writes its span's Zipkin JSON straight into
//! the queued batch (while the span is still in the CPU's cache; the span
//! itself is queued only for OTLP); the exporter wakes when a batch is full
//! or a second has passed, not per span, and only frames and sends what is
//! queued.

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
use crate::span::{Span, otlp_request, zipkin_span_into};

const BATCH: usize = 512;
const QUEUE: usize = 8192;
const FLUSH_EVERY: Duration = Duration::from_secs(1);
const POST_TIMEOUT: Duration = Duration::from_secs(5);

/// Finished spans waiting for export (at most `QUEUE`).
struct Queue {
    pending: Mutex<Pending>,
    /// Wakes the exporter when a batch is full.
    batch_full: Notify,
    zipkin: bool,
    otlp: bool,
}

/// The queued spans, in the forms the collectors take.
#[derive(Default)]
struct Pending {
    count: usize,
    /// Their Zipkin JSON objects; within a batch of `BATCH`, comma-separated.
    zipkin: Vec<u8>,
    /// Where each full batch ends in `zipkin`.
    cuts: Vec<usize>,
    /// The spans themselves, for OTLP.
    spans: Vec<Span>,
}

impl Pending {
    /// Queues a span: its Zipkin JSON object (written here, straight into
    /// the batch), and itself for OTLP.
    fn push(&mut self, span: Span, zipkin: bool, otlp: bool) {
        if zipkin {
            if self.count % BATCH != 0 {
                self.zipkin.push(b',');
            }
            zipkin_span_into(&span, &mut self.zipkin);
            if (self.count + 1) % BATCH == 0 {
                self.cuts.push(self.zipkin.len());
            }
        }
        if otlp {
            self.spans.push(span);
        }
        self.count += 1;
    }

    fn clear(&mut self) {
        self.count = 0;
        self.zipkin.clear();
        self.cuts.clear();
        self.spans.clear();
    }

    /// The batches of up to `BATCH` spans: each one's Zipkin objects and spans.
    fn batches(&self) -> impl Iterator<Item = (&[u8], &[Span], usize)> {
        (0..self.count.div_ceil(BATCH)).map(move |b| {
            let from = if b == 0 { 0 } else { self.cuts[b - 1] };
            let to = self.cuts.get(b).copied().unwrap_or(self.zipkin.len());
            let n = BATCH.min(self.count - b * BATCH);
            let spans = self.spans.get(b * BATCH..b * BATCH + n).unwrap_or(&[]);
            (&self.zipkin[from..to], spans, n)
        })
    }
}

impl Queue {
    /// The queued spans; `spare` (empty) takes their place, so the queue
    /// keeps allocations of its own instead of growing new ones.
    fn take(&self, spare: Pending) -> Pending {
        std::mem::replace(
            &mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()),
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
        let mut pending = queue.pending.lock().unwrap_or_else(|e| e.into_inner());
        if pending.count >= QUEUE {
            drop(pending);
            self.metrics.spans_dropped.inc();
            return;
        }
        pending.push(span, queue.zipkin, queue.otlp);
        let full = pending.count == BATCH;
        drop(pending);
        if full {
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
        pending: Mutex::new(Pending::default()),
        batch_full: Notify::new(),
        zipkin: zipkin.is_some(),
        otlp: otlp.is_some(),
    });
    // The exporter has a thread of its own: framing and sending batches
    // (and OTLP encoding) never hold up requests.
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
        let mut spare = Pending::default();
        let mut buffers = Buffers::default();
        loop {
            let stopping = tokio::select! {
                _ = queue.batch_full.notified() => false,
                _ = tick.tick() => false,
                // Shutting down (or the proxy is gone): send what is queued, then stop.
                _ = stop.changed() => true,
            };
            let mut pending = queue.take(std::mem::take(&mut spare));
            for (zipkin, spans, count) in pending.batches() {
                self.flush(zipkin, spans, count, &mut buffers).await;
            }
            pending.clear();
            // A backlog's larger buffers are not kept: memory stays bounded.
            spare = if pending.zipkin.capacity() <= 2 * BATCH * 1024
                && pending.spans.capacity() <= 2 * BATCH
            {
                pending
            } else {
                Pending::default()
            };
            if stopping {
                return;
            }
        }
    }

    /// Sends one batch of `count` spans: `objects` (their Zipkin JSON,
    /// comma-separated) and `spans` (for OTLP).
    async fn flush(&self, objects: &[u8], spans: &[Span], count: usize, buffers: &mut Buffers) {
        if count == 0 {
            return;
        }
        let Buffers { zipkin, otlp } = buffers;
        let to_zipkin = async {
            if let Some(url) = &self.zipkin {
                zipkin.clear();
                zipkin.reserve(objects.len() + 2);
                zipkin.push(b'[');
                zipkin.extend_from_slice(objects);
                zipkin.push(b']');
                self.post("zipkin", url, "application/json", zipkin, count)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::span::{HttpTags, Kind, Text};
    use sidecar_telemetry::trace::TraceId;

    fn span(id: u64) -> Span {
        Span {
            trace_id: TraceId { hi: 0, lo: 1 },
            id,
            parent_id: None,
            name: Text::Static("op"),
            kind: Kind::Client,
            start_us: 1,
            duration_us: 1,
            service: Arc::from("s"),
            local_ip: None,
            local_port: None,
            tags: HttpTags {
                url: format!("http://h/{id}"),
                ..HttpTags::default()
            },
            error: false,
        }
    }

    /// Each batch framed as the exporter sends it: the span ids in it.
    fn zipkin_batches(pending: &Pending) -> Vec<Vec<String>> {
        pending
            .batches()
            .map(|(objects, spans, count)| {
                let body = [b"[", objects, b"]"].concat();
                let list: Vec<serde_json::Value> = serde_json::from_slice(&body).unwrap();
                assert_eq!(list.len(), count);
                assert!(spans.is_empty() || spans.len() == count);
                list.iter()
                    .map(|s| s["id"].as_str().unwrap().to_string())
                    .collect()
            })
            .collect()
    }

    #[test]
    fn queued_json_splits_into_batches_of_valid_lists_in_order() {
        for total in [0, 1, BATCH - 1, BATCH, BATCH + 1, 2 * BATCH, 2 * BATCH + 76] {
            let mut pending = Pending::default();
            for id in 1..=total as u64 {
                pending.push(span(id), true, true);
            }
            let batches = zipkin_batches(&pending);
            assert_eq!(batches.len(), total.div_ceil(BATCH), "{total} spans");
            assert!(batches.iter().all(|b| b.len() <= BATCH));
            let ids: Vec<String> = batches.concat();
            let expected: Vec<String> = (1..=total as u64).map(|id| format!("{id:016x}")).collect();
            assert_eq!(ids, expected, "{total} spans");
            for (b, (_, spans, count)) in pending.batches().enumerate() {
                assert_eq!(spans.len(), count);
                assert_eq!(spans[0].id, (b * BATCH + 1) as u64);
            }
            pending.clear();
            assert_eq!(pending.batches().count(), 0);
        }
    }

    #[test]
    fn without_otlp_no_span_is_kept() {
        let mut pending = Pending::default();
        pending.push(span(7), true, false);
        assert!(pending.spans.is_empty());
        assert_eq!(zipkin_batches(&pending), vec![vec![format!("{:016x}", 7)]]);
    }
}
