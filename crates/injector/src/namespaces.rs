//! A Namespace's `sidecar.dev/*` annotations (defaults for its Pods), read
//! with `GET /api/v1/namespaces/{name}` when a review needs them and cached
//! per namespace for [`TTL`] (found or not found; a failure for
//! [`FAILED_TTL`]), in a bounded map. Concurrent reviews of one namespace
//! share one lookup, and at most [`CONCURRENT`] lookups run at once.
//!
//! Why not a watch (kube-rs): this needs only `get` on namespaces (no
//! cluster-wide list/watch, no copy of every Namespace in memory), no
//! kube/k8s-openapi dependency in the one static binary every sidecar ships
//! in, and a change to a Namespace applies within the TTL. The service
//! account's token is read from its file for every lookup (bound tokens
//! rotate), and so is `ca.crt`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty, Limited};
use hyper::Request;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

use crate::metrics::Metrics;

/// How long an answer is used before the Namespace is read again.
pub const TTL: Duration = Duration::from_secs(10);
/// How long a failed lookup is remembered: a blip (a 429 from API priority
/// and fairness, a 503 while etcd elects a leader) costs about a second,
/// and a failing API server is still asked at most once a second per
/// namespace.
pub const FAILED_TTL: Duration = Duration::from_secs(1);
/// Lookups in flight at most, whatever the namespaces: reviews naming many
/// namespaces (a client making them up) cannot flood the API server; a
/// lookup that waits here past [`BUDGET`] fails.
const CONCURRENT: usize = 4;
/// The longest a lookup may take: well under the webhook's timeout (5 s in the shipped configuration).
pub const BUDGET: Duration = Duration::from_secs(2);
/// Namespaces remembered at most.
const CAPACITY: usize = 4096;
/// The largest Namespace object read.
const MAX_BODY: usize = 1 << 20;

pub type Defaults = Arc<BTreeMap<String, String>>;

/// Where the Kubernetes API is, and the service account that reads it.
#[derive(Debug, Clone)]
pub struct KubeApi {
    /// `https://host:port`.
    pub url: String,
    /// Holds `token` and `ca.crt`.
    pub service_account_dir: PathBuf,
}

#[derive(Debug)]
struct Api {
    host: String,
    port: u16,
    sa_dir: PathBuf,
}

impl Api {
    fn new(api: &KubeApi) -> Result<Self, String> {
        let bad = || {
            format!(
                "--kube-api `{}` is not an https://HOST:PORT URL (or `off`)",
                api.url
            )
        };
        let uri: http::Uri = api.url.parse().map_err(|_| bad())?;
        if uri.scheme_str() != Some("https") {
            return Err(bad());
        }
        let host = uri.host().ok_or_else(bad)?;
        Ok(Self {
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port: uri.port_u16().unwrap_or(443),
            sa_dir: api.service_account_dir.clone(),
        })
    }

    async fn get(&self, namespace: &str) -> Result<BTreeMap<String, String>, String> {
        let read = |name: &str| {
            let path = self.sa_dir.join(name);
            std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))
        };
        let token = String::from_utf8_lossy(&read("token")?).trim().to_string();
        let ca = read("ca.crt")?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&ca) {
            let cert = cert.map_err(|e| format!("ca.crt is not PEM: {e}"))?;
            roots
                .add(cert)
                .map_err(|e| format!("ca.crt holds a certificate rustls refuses: {e}"))?;
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let name = ServerName::try_from(self.host.clone())
            .map_err(|e| format!("`{}` is not a server name: {e}", self.host))?;
        let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| format!("cannot connect to {}:{}: {e}", self.host, self.port))?;
        let _ = tcp.set_nodelay(true);
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS with the API server failed: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let authority = if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        };
        let req = Request::get(format!("/api/v1/namespaces/{namespace}"))
            .header(http::header::HOST, authority)
            .header(http::header::ACCEPT, "application/json")
            .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Empty::<bytes::Bytes>::new())
            .map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| format!("cannot read the answer: {e}"))?
            .to_bytes();
        if status == http::StatusCode::NOT_FOUND {
            return Ok(BTreeMap::new());
        }
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body);
            let reason = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("message")?.as_str().map(str::to_string))
                .unwrap_or_else(|| text.chars().take(200).collect());
            return Err(format!("the API server answered {status}: {reason}"));
        }
        let ns: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| format!("the API server's answer is not JSON: {e}"))?;
        Ok(ns
            .pointer("/metadata/annotations")
            .and_then(serde_json::Value::as_object)
            .into_iter()
            .flatten()
            .filter(|(k, _)| k.starts_with("sidecar.dev/"))
            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
            .collect())
    }
}

/// A lookup's answer, and when it came.
type Answer = (Instant, Result<Defaults, String>);

/// One namespace's lookup: in flight until its cell is set, then its
/// answer until it is older than [`TTL`] (or [`FAILED_TTL`] for a failure).
/// Reviews that need it meanwhile wait on the same cell: one `GET` per
/// namespace at a time.
type Slot = Arc<tokio::sync::OnceCell<Answer>>;

/// Whether an answer may still be used at `now`.
fn fresh((at, answer): &Answer, now: Instant) -> bool {
    let ttl = if answer.is_ok() { TTL } else { FAILED_TTL };
    now.duration_since(*at) < ttl
}

/// Namespace defaults for reviews: off, or looked up and cached.
#[derive(Debug)]
pub(crate) struct Namespaces {
    api: Option<Api>,
    cache: Mutex<HashMap<String, Slot>>,
    /// At most [`CONCURRENT`] lookups at once, whatever the namespaces.
    lookups: tokio::sync::Semaphore,
    /// Namespaces whose last lookup failed. An episode lasts while any is
    /// in it: one warning when the first fails, one line when the last
    /// can be read again (one namespace that keeps failing is not logged
    /// again each time another one is read).
    failing: Mutex<HashSet<String>>,
    metrics: Metrics,
}

/// A namespace name as Kubernetes allows it (a DNS label), so it is safe in a path.
fn valid_name(ns: &str) -> bool {
    !ns.is_empty()
        && ns.len() <= 63
        && ns
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

impl Namespaces {
    pub(crate) fn new(api: Option<&KubeApi>, metrics: Metrics) -> Result<Self, String> {
        Ok(Self {
            api: api.map(Api::new).transpose()?,
            cache: Mutex::new(HashMap::new()),
            lookups: tokio::sync::Semaphore::new(CONCURRENT),
            failing: Mutex::new(HashSet::new()),
            metrics,
        })
    }

    /// The `sidecar.dev/*` annotations of `namespace` (none when lookups
    /// are off), or why they could not be read.
    pub(crate) async fn defaults(&self, namespace: Option<&str>) -> Result<Defaults, String> {
        let (Some(api), Some(ns)) = (&self.api, namespace) else {
            return Ok(Defaults::default());
        };
        if !valid_name(ns) {
            return Ok(Defaults::default());
        }
        let slot = self.slot(ns);
        let lookup = slot.get_or_init(|| self.lookup(api, ns));
        // The lookup is bounded by BUDGET; this bounds the wait of a review
        // that took over a lookup whose first caller went away.
        match tokio::time::timeout(BUDGET * 2, lookup).await {
            Ok((_, answer)) => answer.clone(),
            Err(_) => Err(format!(
                "cannot read Namespace {ns} from the API server (no answer within {BUDGET:?})"
            )),
        }
    }

    /// The slot of `ns`: its fresh answer, the lookup in flight, or a new one.
    fn slot(&self, ns: &str) -> Slot {
        let now = Instant::now();
        let usable = |slot: &Slot| slot.get().is_none_or(|a| fresh(a, now));
        let mut cache = self.lock();
        if let Some(slot) = cache.get(ns).filter(|s| usable(s)) {
            return Arc::clone(slot);
        }
        if cache.len() >= CAPACITY {
            cache.retain(|_, slot| usable(slot));
            if cache.len() >= CAPACITY {
                cache.clear();
            }
        }
        let slot = Slot::default();
        cache.insert(ns.to_string(), Arc::clone(&slot));
        slot
    }

    /// One `GET` of `ns`, within [`BUDGET`] (waiting for a free lookup included).
    async fn lookup(&self, api: &Api, ns: &str) -> Answer {
        let get = async {
            let _permit = self
                .lookups
                .acquire()
                .await
                .map_err(|_| "the injector is stopping".to_string())?;
            api.get(ns).await
        };
        let answer = match tokio::time::timeout(BUDGET, get).await {
            Ok(Ok(map)) => Ok(Arc::new(map)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(format!("no answer within {BUDGET:?}")),
        };
        let answer =
            answer.map_err(|e| format!("cannot read Namespace {ns} from the API server ({e})"));
        self.report(ns, &answer);
        (Instant::now(), answer)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a failed lookup; logs once when lookups start failing (the
    /// first namespace) and once when every namespace can be read again.
    fn report(&self, ns: &str, answer: &Result<Defaults, String>) {
        let mut failing = self.failing.lock().unwrap_or_else(|p| p.into_inner());
        match answer {
            Ok(_) => {
                if failing.remove(ns) && failing.is_empty() {
                    tracing::info!("Namespace lookups work again");
                }
            }
            Err(e) => {
                self.metrics.namespace_lookup_errors.inc();
                if failing.len() >= CAPACITY {
                    failing.clear();
                }
                let first = failing.is_empty();
                if failing.insert(ns.to_string()) && first {
                    tracing::warn!(
                        "{e}; until lookups work again, Pods get only the sidecars their own annotations ask for (the service account needs `get` on namespaces)"
                    );
                }
            }
        }
    }
}
