//! The webhook's own metrics, registered under `sidecar_injector_*`.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// What a review decided (the `outcome` label).
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Outcome {
    /// A patch adding the sidecars.
    Injected,
    /// A `dryRun: true` review (answered like any other; counted apart).
    DryRun,
    /// Asked for sidecars, but they are already there: no patch.
    AlreadyInjected,
    /// Not a workload, or nothing asked for (neither the pod nor its Namespace).
    Skipped,
    /// `sidecar.dev/inject: "false"` on the Pod (label or annotation), or
    /// as an annotation on its Namespace.
    OptedOut,
    /// The request was not an AdmissionReview we can read.
    Malformed,
    /// `inject` refused the object (a bad annotation, a port taken twice).
    Error,
    /// The Namespace's defaults could not be read: the Pod gets what its own
    /// annotations ask for (a patch, with a warning), or is left alone.
    NamespaceUnavailable,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Injected => "injected",
            Self::DryRun => "dry_run",
            Self::AlreadyInjected => "already_injected",
            Self::Skipped => "skipped",
            Self::OptedOut => "opted_out",
            Self::Malformed => "malformed",
            Self::Error => "error",
            Self::NamespaceUnavailable => "namespace_unavailable",
        }
    }
}

impl EncodeLabelValue for Outcome {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        encoder.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: Outcome,
}

/// The metric families of the webhook.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub reviews: Family<OutcomeLabel, Counter>,
    pub duration: Histogram,
    pub tls_reloads: Counter,
    pub tls_reload_errors: Counter,
    pub namespace_lookup_errors: Counter,
    /// When the served certificate expires (Unix seconds).
    pub tls_not_after: Gauge,
    /// Bytes of request bodies held while they are read.
    pub body_buffered: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            reviews: Family::default(),
            duration: Histogram::new([
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            tls_reloads: Counter::default(),
            tls_reload_errors: Counter::default(),
            namespace_lookup_errors: Counter::default(),
            tls_not_after: Gauge::default(),
            body_buffered: Gauge::default(),
        }
    }
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        let r = registry.sub_registry_with_prefix("sidecar_injector");
        r.register(
            "reviews",
            "AdmissionReviews answered, by outcome (every answer allows the Pod)",
            m.reviews.clone(),
        );
        r.register(
            "review_duration_seconds",
            "Time from a review's request to its answer (namespace lookup included)",
            m.duration.clone(),
        );
        r.register(
            "tls_reloads",
            "Times a changed certificate and key were loaded and served",
            m.tls_reloads.clone(),
        );
        r.register(
            "tls_reload_errors",
            "Changed certificate/key files that could not be loaded (the previous pair is still served)",
            m.tls_reload_errors.clone(),
        );
        r.register(
            "namespace_lookup_errors",
            "Namespace lookups (for sidecar.dev/* defaults) that failed or timed out",
            m.namespace_lookup_errors.clone(),
        );
        r.register(
            "tls_not_after_timestamp_seconds",
            "When the served certificate expires (Unix time); alert well before it",
            m.tls_not_after.clone(),
        );
        r.register(
            "body_buffered_bytes",
            "Bytes of request bodies held in memory while they are read or reviewed (bounded by the body budget)",
            m.body_buffered.clone(),
        );
        for outcome in [
            Outcome::Injected,
            Outcome::DryRun,
            Outcome::AlreadyInjected,
            Outcome::Skipped,
            Outcome::OptedOut,
            Outcome::Malformed,
            Outcome::Error,
            Outcome::NamespaceUnavailable,
        ] {
            // Every outcome shows from the start, at 0.
            let _ = m.reviews.get_or_create(&OutcomeLabel { outcome });
        }
        m
    }

    pub(crate) fn count(&self, outcome: Outcome) {
        self.reviews.get_or_create(&OutcomeLabel { outcome }).inc();
    }
}
