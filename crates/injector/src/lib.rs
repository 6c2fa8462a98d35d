//! `sidecar injector`: a mutating admission webhook that adds the sidecars
//! to Pods (and workloads) asking for them, so an annotation on a Pod or on
//! its Namespace is enough: no `sidecar inject` before `kubectl apply`.
//!
//! Data flow: the API server POSTs an `admission.k8s.io/v1` AdmissionReview
//! to `/mutate` over HTTPS (`server`, TLS from `tls`, whose certificate is
//! reloaded when its files change). `review` reads it, asks `namespaces`
//! for the Namespace's `sidecar.dev/*` annotations (a cached
//! `GET /api/v1/namespaces/{ns}`), and hands the object and those defaults
//! to [`sidecar_inject::admit`]: the same rules as `sidecar inject`. The
//! answer allows the object, with a JSONPatch from the object as sent to
//! the injected one (none when nothing changes: a second review is a no-op)
//! and inject's notes as warnings. Nothing here ever refuses a Pod: errors
//! become warnings, and are counted (`metrics`). `certgen` writes the
//! Secret for `--generate-cert`.

#![forbid(unsafe_code)]

mod certgen;
mod metrics;
mod namespaces;
mod review;
mod server;
mod tls;

use std::net::SocketAddr;
use std::sync::Arc;

pub use certgen::{CertGenError, CertRequest, WEBHOOK_CONFIGURATION, dns_names, generate};
pub use metrics::{Metrics, Outcome};
pub use namespaces::{BUDGET, FAILED_TTL, KubeApi, TTL};
pub use server::{MAX_BODY, PATH};
pub use tls::{Certificate, POLL, TlsError, TlsFiles};

/// What the webhook needs to start.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub tls: TlsFiles,
    /// The sidecar image (as `sidecar inject --image`).
    pub image: String,
    /// Where Namespaces are read, or `None`: no namespace defaults.
    pub kube_api: Option<KubeApi>,
}

/// Why the webhook cannot start.
#[derive(Debug, thiserror::Error)]
pub enum InjectorError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(
        "cannot listen on {addr} for the webhook ({source}); choose a free address with --listen"
    )]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    KubeApi(String),
}

/// The webhook, bound and with its certificate loaded, not yet serving.
pub struct Injector {
    listener: tokio::net::TcpListener,
    certificate: Certificate,
    reviewer: Arc<review::Reviewer>,
}

impl Injector {
    /// Loads the certificate and binds the listener: a problem with either
    /// is reported before anything is served.
    pub async fn bind(config: &Config, metrics: Metrics) -> Result<Self, InjectorError> {
        let certificate = Certificate::load(config.tls.clone())?;
        let namespaces = namespaces::Namespaces::new(config.kube_api.as_ref(), metrics.clone())
            .map_err(InjectorError::KubeApi)?;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| InjectorError::Bind {
                addr: config.listen,
                source,
            })?;
        Ok(Self {
            listener,
            certificate,
            reviewer: Arc::new(review::Reviewer {
                opts: sidecar_inject::Options {
                    image: config.image.clone(),
                },
                namespaces,
                metrics,
            }),
        })
    }

    /// Where the webhook listens (a port 0 resolved).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves reviews until `shutdown` resolves, then lets in-flight ones
    /// finish. The certificate files are watched meanwhile.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), InjectorError> {
        let tls = self.certificate.server_config()?;
        let metrics = self.reviewer.metrics.clone();
        let watch = tokio::spawn(self.certificate.watch(POLL, metrics));
        server::serve(self.listener, tls, self.reviewer, shutdown).await;
        watch.abort();
        Ok(())
    }
}
