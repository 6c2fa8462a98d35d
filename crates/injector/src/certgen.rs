//! `sidecar injector --generate-cert`: a CA and a server certificate for
//! the webhook's Service, written as a `kubernetes.io/tls` Secret (with the
//! CA as `ca.crt`) and, as YAML comments after it, the `caBundle` and the
//! `kubectl patch` command that gives it to the webhook configuration.

use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// The name of the MutatingWebhookConfiguration the manifests create.
pub const WEBHOOK_CONFIGURATION: &str = "sidecar-injector";

/// What the certificate is for.
#[derive(Debug, Clone)]
pub struct CertRequest {
    /// The webhook's Service.
    pub service: String,
    /// Its namespace (and the Secret's).
    pub namespace: String,
    /// The Secret's name.
    pub secret: String,
    /// Validity, from now.
    pub days: u32,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot generate the certificate: {0}")]
pub struct CertGenError(#[from] rcgen::Error);

fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// The DNS names the API server may use for the Service.
pub fn dns_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
        format!("{service}.{namespace}"),
        service.to_string(),
    ]
}

/// The Secret YAML and the comment lines, as printed.
pub fn generate(req: &CertRequest) -> Result<String, CertGenError> {
    let now = time::OffsetDateTime::now_utc();
    let not_after = now + time::Duration::days(i64::from(req.days));
    let not_before = now - time::Duration::hours(1);

    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name
        .push(DnType::CommonName, format!("{} webhook CA", req.service));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = not_before;
    ca.not_after = not_after;
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);

    let key = KeyPair::generate()?;
    let mut leaf = CertificateParams::new(dns_names(&req.service, &req.namespace))?;
    leaf.distinguished_name.push(
        DnType::CommonName,
        format!("{}.{}.svc", req.service, req.namespace),
    );
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.not_before = not_before;
    leaf.not_after = not_after;
    let cert = leaf.signed_by(&key, &issuer)?;

    let ca_pem = ca_cert.pem();
    let ca_bundle = b64(&ca_pem);
    let (name, ns) = (&req.secret, &req.namespace);
    Ok(format!(
        "\
# The webhook's serving certificate for {service}.{ns}.svc, valid {days} days,
# signed by a CA made for it alone (ca.crt). Apply with: kubectl apply -f -
apiVersion: v1
kind: Secret
metadata:
  name: {name}
  namespace: {ns}
  labels:
    app.kubernetes.io/name: sidecar-injector
type: kubernetes.io/tls
data:
  tls.crt: {crt}
  tls.key: {key}
  ca.crt: {ca_bundle}
# caBundle (base64 of ca.crt) for the MutatingWebhookConfiguration {WEBHOOK_CONFIGURATION}:
# caBundle: {ca_bundle}
# Give it to the webhook once the configuration exists:
# kubectl patch mutatingwebhookconfiguration {WEBHOOK_CONFIGURATION} --type=json -p '[{{\"op\":\"add\",\"path\":\"/webhooks/0/clientConfig/caBundle\",\"value\":\"{ca_bundle}\"}}]'
",
        service = req.service,
        days = req.days,
        crt = b64(&cert.pem()),
        key = b64(&key.serialize_pem()),
    ))
}
