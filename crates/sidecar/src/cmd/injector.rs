//! `sidecar injector`: the mutating admission webhook (crate `sidecar-injector`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use sidecar_injector::{
    CertRequest, Config, Injector, KubeApi, Metrics, PATH, TlsFiles, WEBHOOK_CONFIGURATION,
};
use sidecar_telemetry::admin::AdminAddr;
use sidecar_telemetry::http::parse_listen_addr;
use sidecar_telemetry::ports;
use sidecar_telemetry::serve::{Runtime, Serve};

/// The default of `sidecar inject --image` too.
pub const DEFAULT_IMAGE: &str = "sidecar:0.1.0";
const DEFAULT_SA_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

fn after_help() -> String {
    format!(
        "\
How it decides (the same rules as `sidecar inject`, on one object per review):
  A Pod (or Deployment, StatefulSet, DaemonSet, ReplicaSet, Job, CronJob) gets the
  sidecars its pod template's sidecar.dev/* annotations ask for (see `sidecar inject
  --help`). The shipped webhook configuration sends Pods on CREATE only.
  Namespace opt-in: label the Namespace  sidecar.dev/injection=enabled  (read by the
    webhook configuration's namespaceSelector, not by this binary).
  Pod opt-out: label  sidecar.dev/inject: \"false\"  (the objectSelector skips it; the
    injector honours it too, and the same key as an annotation).
  Namespace defaults: sidecar.dev/* annotations on a Namespace apply to its Pods; a
    Pod's own annotation wins, key by key. They are read with GET on the Namespace
    (RBAC: get namespaces), cached {ttl}s (a failure {failed}s); when that fails the
    Pod gets only what its own annotations ask for, with a warning.
  Namespace opt-out: annotate the Namespace  sidecar.dev/inject: \"false\"  (a Pod's
    own annotations do not override it).
  Already injected: no patch (a second review changes nothing). Errors (a bad
  annotation, a port taken twice, an unreadable review) admit the Pod unchanged
  with a warning: the webhook never blocks a Pod.

Serving: HTTPS on --listen (POST {path}; h2 and http/1.1), certificate reloaded
within {poll}s of its files changing; /live, /ready, /metrics on --admin.
Metrics: sidecar_injector_reviews_total{{outcome=injected|dry_run|already_injected|
skipped|opted_out|malformed|error|namespace_unavailable}},
sidecar_injector_review_duration_seconds, sidecar_injector_tls_reloads_total,
sidecar_injector_tls_reload_errors_total, sidecar_injector_namespace_lookup_errors_total.

Examples:
  # A CA and a serving certificate as a Secret, with the caBundle patch as comments
  sidecar injector --generate-cert > injector-tls.yaml
  kubectl apply -f injector-tls.yaml
  sed -n 's/^# \\(kubectl patch .*\\)/\\1/p' injector-tls.yaml | sh   # once {webhook} exists
  sidecar injector --tls-cert /tls/tls.crt --tls-key /tls/tls.key
Manifests: deploy/injector/ (webhook configuration {webhook}).",
        ttl = sidecar_injector::TTL.as_secs(),
        failed = sidecar_injector::FAILED_TTL.as_secs(),
        poll = sidecar_injector::POLL.as_secs(),
        path = PATH,
        webhook = WEBHOOK_CONFIGURATION,
    )
}

/// Mutating admission webhook: adds the sidecars to Pods that ask for them.
///
/// Serves the Kubernetes admission.k8s.io/v1 AdmissionReview API over HTTPS
/// so that a sidecar.dev/* annotation on a Pod, or on its Namespace, is
/// enough: no `sidecar inject` step before `kubectl apply`.
#[derive(Debug, clap::Args)]
#[command(after_help = after_help())]
pub struct InjectorArgs {
    /// HTTPS address of the webhook (POST /mutate).
    #[arg(long, env = "SIDECAR_INJECTOR_LISTEN", default_value = "0.0.0.0:8443", value_parser = parse_listen_addr)]
    listen: SocketAddr,

    /// Admin server address (/live, /ready, /metrics; plain HTTP), or `off`.
    #[arg(long, env = "SIDECAR_INJECTOR_ADMIN", default_value_t = AdminAddr::At(SocketAddr::from(([0, 0, 0, 0], ports::INJECTOR))))]
    admin: AdminAddr,

    /// The serving certificate chain (PEM); reloaded when the file changes.
    #[arg(
        long,
        env = "SIDECAR_INJECTOR_TLS_CERT",
        default_value = "/tls/tls.crt"
    )]
    tls_cert: PathBuf,

    /// The certificate's private key (PEM); reloaded with it.
    #[arg(long, env = "SIDECAR_INJECTOR_TLS_KEY", default_value = "/tls/tls.key")]
    tls_key: PathBuf,

    /// The sidecar image the injected containers run.
    #[arg(long, env = "SIDECAR_INJECT_IMAGE", default_value = DEFAULT_IMAGE)]
    image: String,

    /// The Kubernetes API (https://HOST:PORT) for Namespace defaults, or `off`.
    /// Default: in the cluster, https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT;
    /// elsewhere off.
    #[arg(long, env = "SIDECAR_INJECTOR_KUBE_API")]
    kube_api: Option<String>,

    /// The service account's token and ca.crt (the token is read for every lookup: bound tokens rotate).
    #[arg(long, env = "SIDECAR_INJECTOR_SERVICE_ACCOUNT_DIR", default_value = DEFAULT_SA_DIR)]
    service_account_dir: PathBuf,

    /// Print a kubernetes.io/tls Secret (a new CA and a certificate for the
    /// Service) and the caBundle patch for the webhook configuration, then exit.
    #[arg(long)]
    generate_cert: bool,

    /// --generate-cert: the webhook's Service.
    #[arg(long, default_value = "sidecar-injector", requires = "generate_cert")]
    service: Option<String>,

    /// --generate-cert: the Service's (and the Secret's) namespace.
    #[arg(long, default_value = "sidecar-system", requires = "generate_cert")]
    namespace: Option<String>,

    /// --generate-cert: the Secret's name.
    #[arg(
        long,
        default_value = "sidecar-injector-tls",
        requires = "generate_cert"
    )]
    secret: Option<String>,

    /// --generate-cert: days the CA and the certificate are valid (825: the
    /// longest browsers accept for a server certificate; regenerate before).
    #[arg(long, default_value_t = 825, value_parser = clap::value_parser!(u32).range(1..=36500), requires = "generate_cert")]
    days: u32,
}

/// The Kubernetes API to read Namespaces from, or none.
fn kube_api(args: &InjectorArgs) -> Option<KubeApi> {
    let url = match args.kube_api.as_deref().map(str::trim) {
        Some(off) if off.eq_ignore_ascii_case("off") => {
            tracing::info!("--kube-api off: Namespace sidecar.dev/* defaults are not read");
            return None;
        }
        Some(url) => url.to_string(),
        None => match (
            std::env::var("KUBERNETES_SERVICE_HOST"),
            std::env::var("KUBERNETES_SERVICE_PORT"),
        ) {
            (Ok(host), Ok(port)) if !host.is_empty() && !port.is_empty() => {
                if host.contains(':') {
                    format!("https://[{host}]:{port}")
                } else {
                    format!("https://{host}:{port}")
                }
            }
            _ => {
                tracing::info!(
                    "not in a cluster (KUBERNETES_SERVICE_HOST unset) and no --kube-api: Namespace sidecar.dev/* defaults are not read"
                );
                return None;
            }
        },
    };
    Some(KubeApi {
        url,
        service_account_dir: args.service_account_dir.clone(),
    })
}

pub fn run(args: InjectorArgs) -> anyhow::Result<ExitCode> {
    if args.generate_cert {
        let text = sidecar_injector::generate(&CertRequest {
            service: args.service.clone().unwrap_or_default(),
            namespace: args.namespace.clone().unwrap_or_default(),
            secret: args.secret.clone().unwrap_or_default(),
            days: args.days,
        })?;
        use std::io::Write;
        std::io::stdout().write_all(text.as_bytes())?;
        return Ok(ExitCode::SUCCESS);
    }
    let config = Config {
        listen: args.listen,
        tls: TlsFiles {
            cert: args.tls_cert.clone(),
            key: args.tls_key.clone(),
        },
        image: args.image.clone(),
        kube_api: kube_api(&args),
    };
    Serve::new(Runtime::with_workers(2)).admin(args.admin).run(
        // The certificate and the listener first: a mistake stops here.
        async |registry| -> anyhow::Result<_> {
            let metrics = Metrics::register(registry);
            Ok(Injector::bind(&config, metrics).await?)
        },
        async |injector, app| {
            let addr = injector.local_addr()?;
            tracing::info!(
                "webhook on https://{addr}{PATH} (certificate {}, image {})",
                config.tls.cert.display(),
                config.image
            );
            app.health.set_ready(true);
            let shutdown = async move {
                let sig = app.shutdown.await;
                tracing::info!("{sig} received; finishing in-flight reviews");
            };
            injector.run(shutdown).await?;
            tracing::info!("stopped");
            Ok(ExitCode::SUCCESS)
        },
    )
}
