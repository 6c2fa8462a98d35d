//! TLS to PostgreSQL in libpq's terms, with rustls (no OpenSSL: the image
//! stays one static file).
//!
//! - [`TlsSettings`]: `sslmode`, `sslrootcert`, `sslcert`, `sslkey`, `sslsni` as
//!   libpq reads them.
//! - [`Tls`]: those settings and the rustls client configuration built from
//!   the files they name, rebuilt when a file changes (certificates rotate
//!   under a running Pod).
//! - [`MakeConnector`]: tokio-postgres' `MakeTlsConnect` over tokio-rustls,
//!   with `tls-server-end-point` channel binding (SCRAM-SHA-256-PLUS).
//!
//! Server certificates are checked as libpq checks them: the chain against
//! `sslrootcert` when it is set (also under `require`, `prefer` and `allow`),
//! the host name only under `verify-full`. `sslrootcert=system` is the Mozilla
//! CA set compiled into this binary (webpki-roots): a `FROM scratch` image has
//! no /etc/ssl. Every failure says which setting to change.

use std::fmt;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_cert_signed_by_trust_anchor, verify_server_name};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};

use crate::session::lock;

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub const NAMES: &'static str = "disable, allow, prefer, require, verify-ca, verify-full";

    pub fn parse(value: &str) -> Option<Self> {
        Some(match value {
            "disable" => Self::Disable,
            "allow" => Self::Allow,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Allow => "allow",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }

    /// The mode tokio-postgres is given (it knows only these three); the
    /// rest of libpq's meaning is in [`crate::connect`] and the verifier.
    pub fn tokio(self) -> tokio_postgres::config::SslMode {
        use tokio_postgres::config::SslMode as T;
        match self {
            Self::Disable => T::Disable,
            Self::Allow | Self::Prefer => T::Prefer,
            Self::Require | Self::VerifyCa | Self::VerifyFull => T::Require,
        }
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the CA certificates that sign the server's certificate come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCert {
    /// A PEM file (one or more certificates).
    File(PathBuf),
    /// `sslrootcert=system`: the Mozilla CA set compiled in (webpki-roots).
    System,
}

impl fmt::Display for RootCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(path) => write!(f, "sslrootcert={}", path.display()),
            Self::System => f.write_str("sslrootcert=system"),
        }
    }
}

/// The TLS settings of one data source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub mode: SslMode,
    pub root: Option<RootCert>,
    /// Client certificate (PEM, the chain after it) and its private key.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Send the host name in the TLS handshake (`sslsni=1`, the default).
    pub sni: bool,
}

impl TlsSettings {
    /// The settings a config carries on its own (no files): what
    /// tokio-postgres' `sslmode` says.
    pub fn from_tokio(mode: tokio_postgres::config::SslMode) -> Self {
        use tokio_postgres::config::SslMode as T;
        let mode = match mode {
            T::Disable => SslMode::Disable,
            T::Require => SslMode::Require,
            _ => SslMode::Prefer,
        };
        Self::new(mode)
    }

    pub fn new(mode: SslMode) -> Self {
        Self {
            mode,
            root: None,
            cert: None,
            key: None,
            sni: true,
        }
    }

    /// What the server's certificate is checked against, as libpq does: the
    /// chain whenever a root certificate is given, the name under verify-full.
    fn check(&self) -> Check {
        match (&self.root, self.mode) {
            (Some(_), SslMode::VerifyFull) => Check::ChainAndName,
            (Some(_), _) => Check::Chain,
            (None, _) => Check::Nothing,
        }
    }

    /// A short description for messages (paths, no secrets).
    pub fn describe(&self) -> String {
        let mut parts = vec![format!("sslmode={}", self.mode)];
        if let Some(root) = &self.root {
            parts.push(root.to_string());
        }
        if let Some(cert) = &self.cert {
            parts.push(format!("sslcert={}", cert.display()));
        }
        if let Some(key) = &self.key {
            parts.push(format!("sslkey={}", key.display()));
        }
        if !self.sni {
            parts.push("sslsni=0".into());
        }
        parts.join(" ")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    Nothing,
    Chain,
    ChainAndName,
}

/// Why TLS to the server failed; each message says which setting to change.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {setting} file {path}: {reason}; set {setting} to {wanted}")]
    Read {
        setting: &'static str,
        path: String,
        reason: String,
        wanted: &'static str,
    },
    #[error("{setting} file {path} holds no {what}; set {setting} to {wanted}")]
    Empty {
        setting: &'static str,
        path: String,
        what: &'static str,
        wanted: &'static str,
    },
    #[error(
        "sslkey file {0} is encrypted (a password-protected key), which this exporter cannot use: \
         decrypt it (openssl pkey -in encrypted.pem -out key.pem) and set sslkey to the result"
    )]
    EncryptedKey(String),
    #[error(
        "sslkey {key} cannot sign for the certificate in sslcert {cert} ({reason}); set sslkey to that certificate's private key"
    )]
    KeyMismatch {
        key: String,
        cert: String,
        reason: String,
    },
    /// A refusal during or right after the handshake, explained.
    #[error("{0}")]
    Refused(String),
}

impl TlsError {
    fn read(setting: &'static str, path: &Path, e: &io::Error, wanted: &'static str) -> Self {
        Self::Read {
            setting,
            path: path.display().to_string(),
            reason: e.to_string(),
            wanted,
        }
    }
}

const ROOT_WANTED: &str = "the CA certificate (PEM) that signed the server's certificate, or to system for the public CAs compiled into this binary";
const CERT_WANTED: &str = "the client certificate (PEM) the server's ssl_ca_file trusts";
const KEY_WANTED: &str = "the client certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1)";

type Built = (Vec<Vec<u8>>, Arc<ClientConfig>);

/// A data source's TLS settings with the rustls configuration built from
/// them, kept while the files it was built from stay the same.
#[derive(Debug)]
pub struct Tls {
    pub settings: TlsSettings,
    /// The files' contents and what was built from them.
    built: Mutex<Option<Built>>,
}

impl Tls {
    pub fn new(settings: TlsSettings) -> Self {
        Self {
            settings,
            built: Mutex::new(None),
        }
    }

    /// The rustls configuration, from the files as they are now (libpq
    /// reads them on every connection too).
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, TlsError> {
        let s = &self.settings;
        let mut files = Vec::new();
        if let Some(RootCert::File(path)) = &s.root {
            files.push(
                std::fs::read(path)
                    .map_err(|e| TlsError::read("sslrootcert", path, &e, ROOT_WANTED))?,
            );
        }
        if let (Some(cert), Some(key)) = (&s.cert, &s.key) {
            files.push(
                std::fs::read(cert)
                    .map_err(|e| TlsError::read("sslcert", cert, &e, CERT_WANTED))?,
            );
            files.push(
                std::fs::read(key).map_err(|e| TlsError::read("sslkey", key, &e, KEY_WANTED))?,
            );
        }
        let mut built = lock(&self.built);
        if let Some((was, config)) = built.as_ref() {
            if *was == files {
                return Ok(Arc::clone(config));
            }
        }
        let config = Arc::new(build(s, &files)?);
        *built = Some((files, Arc::clone(&config)));
        Ok(config)
    }

    /// What messages about this source need to know.
    fn hints(&self, host: &str) -> Arc<Hints> {
        Arc::new(Hints {
            mode: self.settings.mode,
            root: self.settings.root.clone(),
            cert: self.settings.cert.as_ref().map(|p| p.display().to_string()),
            host: host.to_string(),
        })
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the rustls configuration; `files` holds the contents of the root,
/// certificate and key files that `s` names, in that order.
fn build(s: &TlsSettings, files: &[Vec<u8>]) -> Result<ClientConfig, TlsError> {
    let provider = provider();
    let mut files = files.iter();
    let roots = match &s.root {
        None => None,
        Some(RootCert::System) => Some(RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        }),
        Some(RootCert::File(path)) => {
            let pem = files.next().map(Vec::as_slice).unwrap_or_default();
            Some(root_store(path, pem)?)
        }
    };
    let verifier = Verifier {
        roots: roots.map(Arc::new),
        name: s.check() == Check::ChainAndName,
        algs: provider.signature_verification_algorithms,
    };
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Refused(format!("TLS is not available in this build ({e})")))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let mut config = match (&s.cert, &s.key) {
        (Some(cert_path), Some(key_path)) => {
            let cert_pem = files.next().map(Vec::as_slice).unwrap_or_default();
            let key_pem = files.next().map(Vec::as_slice).unwrap_or_default();
            let chain = certificates(cert_pem).map_err(|e| TlsError::Read {
                setting: "sslcert",
                path: cert_path.display().to_string(),
                reason: e.to_string(),
                wanted: CERT_WANTED,
            })?;
            if chain.is_empty() {
                return Err(TlsError::Empty {
                    setting: "sslcert",
                    path: cert_path.display().to_string(),
                    what: "PEM certificate (-----BEGIN CERTIFICATE-----)",
                    wanted: CERT_WANTED,
                });
            }
            let key = private_key(key_path, key_pem)?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| TlsError::KeyMismatch {
                    key: key_path.display().to_string(),
                    cert: cert_path.display().to_string(),
                    reason: e.to_string(),
                })?
        }
        _ => builder.with_no_client_auth(),
    };
    config.enable_sni = s.sni;
    // PostgreSQL 17+ checks the protocol when a client names one; older ones ignore it.
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(config)
}

fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, pem::Error> {
    CertificateDer::pem_slice_iter(pem).collect()
}

fn root_store(path: &Path, pem: &[u8]) -> Result<RootCertStore, TlsError> {
    let shown = || path.display().to_string();
    let certs = certificates(pem).map_err(|e| TlsError::Read {
        setting: "sslrootcert",
        path: shown(),
        reason: e.to_string(),
        wanted: ROOT_WANTED,
    })?;
    let mut roots = RootCertStore::empty();
    let (_, unusable) = roots.add_parsable_certificates(certs);
    if roots.is_empty() {
        return Err(TlsError::Empty {
            setting: "sslrootcert",
            path: shown(),
            what: if unusable > 0 {
                "usable CA certificate (the certificates in it could not be parsed)"
            } else {
                "PEM certificate (-----BEGIN CERTIFICATE-----)"
            },
            wanted: ROOT_WANTED,
        });
    }
    Ok(roots)
}

fn private_key(path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    let shown = path.display().to_string();
    let text = String::from_utf8_lossy(pem);
    if text.contains("ENCRYPTED PRIVATE KEY") || text.contains("Proc-Type: 4,ENCRYPTED") {
        return Err(TlsError::EncryptedKey(shown));
    }
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        pem::Error::NoItemsFound => TlsError::Empty {
            setting: "sslkey",
            path: shown,
            what: "PEM private key (PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)",
            wanted: KEY_WANTED,
        },
        e => TlsError::Read {
            setting: "sslkey",
            path: shown,
            reason: e.to_string(),
            wanted: KEY_WANTED,
        },
    })
}

/// Checks the server's certificate as libpq does: nothing without a root
/// certificate (the handshake signature still proves the key), the chain
/// with one, and the host name too under verify-full.
#[derive(Debug)]
struct Verifier {
    roots: Option<Arc<RootCertStore>>,
    name: bool,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.roots {
            let cert = ParsedCertificate::try_from(end_entity)?;
            verify_server_cert_signed_by_trust_anchor(
                &cert,
                roots,
                intermediates,
                now,
                self.algs.all,
            )?;
            if self.name {
                verify_server_name(&cert, server_name)?;
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// What an explanation of a failure needs.
#[derive(Debug)]
struct Hints {
    mode: SslMode,
    root: Option<RootCert>,
    cert: Option<String>,
    host: String,
}

impl Hints {
    /// The sentence for a failed handshake (or a refusal read right after it).
    fn explain(&self, e: &io::Error) -> TlsError {
        let rustls_error = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>());
        let text = match rustls_error {
            Some(rustls::Error::InvalidCertificate(c)) => self.certificate(c),
            Some(rustls::Error::AlertReceived(alert)) => {
                let mut text = format!("the server refused the TLS connection (alert: {alert:?})");
                match &self.cert {
                    Some(cert) => text.push_str(&format!(
                        "; if it refused the client certificate, set sslcert (now {cert}) and sslkey \
                         to a certificate signed by a CA in the server's ssl_ca_file"
                    )),
                    None => text.push_str(
                        "; if it wants a client certificate, set sslcert and sslkey",
                    ),
                }
                text
            }
            Some(rustls::Error::PeerIncompatible(why)) => format!(
                "the server and this exporter share no TLS version or cipher ({why:?}); the exporter \
                 speaks TLS 1.2 and 1.3: check the server's ssl_min_protocol_version and ssl_ciphers, \
                 or set sslmode=disable to connect without TLS"
            ),
            Some(other) => format!(
                "the TLS handshake failed ({other}): check that host and port point at PostgreSQL, \
                 or set sslmode=disable to connect without TLS"
            ),
            None => {
                let mut text =
                    format!("the server closed the connection during the TLS handshake ({e})");
                if let Some(cert) = &self.cert {
                    text.push_str(&format!(
                        "; if it refused the client certificate, set sslcert (now {cert}) and sslkey \
                         to a certificate signed by a CA in the server's ssl_ca_file"
                    ));
                }
                text
            }
        };
        TlsError::Refused(text)
    }

    fn certificate(&self, c: &CertificateError) -> String {
        let root = self
            .root
            .as_ref()
            .map_or_else(|| "sslrootcert".to_string(), ToString::to_string);
        // Under require/prefer/allow the chain is checked only because
        // sslrootcert is set; without it nothing is checked.
        let or_skip = match self.mode {
            SslMode::VerifyCa | SslMode::VerifyFull => {
                ", or set sslmode=require and remove sslrootcert to encrypt without checking the certificate"
            }
            _ => ", or remove sslrootcert to encrypt without checking the certificate",
        };
        match c {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => format!(
                "the server's certificate is not signed by a CA in {root}: set sslrootcert to the CA \
                 certificate that signed it{or_skip}"
            ),
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                let names = match c {
                    CertificateError::NotValidForNameContext { presented, .. }
                        if !presented.is_empty() =>
                    {
                        let names: Vec<&str> =
                            presented.iter().map(|n| presented_name(n)).collect();
                        format!(" (it names {})", names.join(", "))
                    }
                    _ => String::new(),
                };
                format!(
                    "the server's certificate is not valid for the host name {}{names}, which \
                     sslmode=verify-full checks: set host to a name in the certificate (hostaddr can \
                     keep the address), or set sslmode=verify-ca to check the CA only",
                    self.host
                )
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => format!(
                "the server's certificate has expired ({c:?}): renew it on the server{or_skip}"
            ),
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => format!(
                "the server's certificate is not valid yet ({c:?}): check the clocks, or renew it on the server{or_skip}"
            ),
            other => format!(
                "the server's certificate was rejected ({other:?}) when checked against {root}: \
                 set sslrootcert to the CA certificate that signed it{or_skip}"
            ),
        }
    }
}

type Prepared = Result<Arc<ClientConfig>, TlsError>;

/// `localhost` for rustls' `DnsName("localhost")`, `127.0.0.1` for `IpAddress(127.0.0.1)`.
fn presented_name(name: &str) -> &str {
    let inner = name
        .split_once('(')
        .and_then(|(_, rest)| rest.strip_suffix(')'))
        .unwrap_or(name);
    inner.trim_matches('"')
}

/// Makes TLS connectors for tokio-postgres.
#[derive(Clone)]
pub struct MakeConnector {
    tls: Option<(Arc<Tls>, Prepared)>,
}

impl MakeConnector {
    /// A connector for `tls`; a configuration that cannot be built fails
    /// the handshake (so a mode that never gets that far still connects).
    pub fn new(tls: &Arc<Tls>) -> Self {
        let config = tls.client_config();
        Self {
            tls: Some((Arc::clone(tls), config)),
        }
    }

    /// A connector for connections that never use TLS (`sslmode=disable`).
    pub fn unused() -> Self {
        Self { tls: None }
    }
}

impl MakeTlsConnect<tokio_postgres::Socket> for MakeConnector {
    type Stream = TlsStream<tokio_postgres::Socket>;
    type TlsConnect = Connector;
    type Error = TlsError;

    fn make_tls_connect(&mut self, domain: &str) -> Result<Connector, TlsError> {
        let target = match &self.tls {
            None => Err(TlsError::Refused(
                "TLS was not to be used on this connection (sslmode=disable)".into(),
            )),
            Some((tls, config)) => config.clone().and_then(|config| {
                let name = ServerName::try_from(domain.to_string()).map_err(|_| {
                    TlsError::Refused(format!(
                        "the host {domain:?} is not a name or address TLS can check: set host to the \
                         server's DNS name or IP address"
                    ))
                })?;
                Ok((config, name, tls.hints(domain)))
            }),
        };
        Ok(Connector { target })
    }
}

/// Wraps one connection in TLS.
pub struct Connector {
    target: Result<(Arc<ClientConfig>, ServerName<'static>, Arc<Hints>), TlsError>,
}

type Handshake<S> = Pin<Box<dyn Future<Output = Result<TlsStream<S>, TlsError>> + Send>>;

impl<S> TlsConnect<S> for Connector
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = TlsStream<S>;
    type Error = TlsError;
    type Future = Handshake<S>;

    fn connect(self, stream: S) -> Handshake<S> {
        Box::pin(async move {
            let (config, name, hints) = self.target?;
            match tokio_rustls::TlsConnector::from(config)
                .connect(name, stream)
                .await
            {
                Ok(inner) => Ok(TlsStream { inner, hints }),
                Err(e) => Err(hints.explain(&e)),
            }
        })
    }
}

/// A connector that fails with a given error: how [`crate::connect`] turns
/// its own explanations into `tokio_postgres::Error`s.
pub(crate) struct Fail(pub TlsError);

impl<S> TlsConnect<S> for Fail
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    type Stream = TlsStream<S>;
    type Error = TlsError;
    type Future = std::future::Ready<Result<TlsStream<S>, TlsError>>;

    fn connect(self, _stream: S) -> Self::Future {
        std::future::ready(Err(self.0))
    }
}

/// A TLS connection to the server.
pub struct TlsStream<S> {
    inner: tokio_rustls::client::TlsStream<S>,
    hints: Arc<Hints>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for TlsStream<S> {
    /// `tls-server-end-point` (RFC 5929): the hash of the server's
    /// certificate, with the hash of its signature (SHA-256 for SHA-1).
    fn channel_binding(&self) -> ChannelBinding {
        let (_, conn) = self.inner.get_ref();
        let Some(cert) = conn.peer_certificates().and_then(|c| c.first()) else {
            return ChannelBinding::none();
        };
        match end_point_hash(cert.as_ref()) {
            Some(alg) => ChannelBinding::tls_server_end_point(
                ring::digest::digest(alg, cert.as_ref()).as_ref().to_vec(),
            ),
            None => ChannelBinding::none(),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            // Under TLS 1.3 the server's verdict on the client certificate
            // arrives after the client finished its handshake: explain it here.
            Poll::Ready(Err(e)) if is_alert(&e) => {
                Poll::Ready(Err(io::Error::new(e.kind(), this.hints.explain(&e))))
            }
            other => other,
        }
    }
}

fn is_alert(e: &io::Error) -> bool {
    matches!(
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>()),
        Some(rustls::Error::AlertReceived(_))
    )
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The hash `tls-server-end-point` uses for a certificate (DER): the one of
/// its signature algorithm, SHA-256 for MD5 and SHA-1, none for algorithms
/// without a hash of their own (Ed25519) or with it in parameters (RSA-PSS).
fn end_point_hash(cert: &[u8]) -> Option<&'static ring::digest::Algorithm> {
    // Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signature }
    let (0x30, body, _) = der(cert)? else {
        return None;
    };
    let (0x30, _tbs, rest) = der(body)? else {
        return None;
    };
    let (0x30, algorithm, _) = der(rest)? else {
        return None;
    };
    let (0x06, oid, _) = der(algorithm)? else {
        return None;
    };
    const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
    const ECDSA_SHA1: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01];
    const ECDSA_SHA2: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03];
    use ring::digest::{SHA256, SHA384, SHA512};
    match oid {
        o if o == ECDSA_SHA1 => Some(&SHA256),
        [p @ .., last] if p == RSA => match last {
            0x04 | 0x05 | 0x0b | 0x0e => Some(&SHA256), // md5, sha1, sha256, sha224
            0x0c => Some(&SHA384),
            0x0d => Some(&SHA512),
            _ => None,
        },
        [p @ .., last] if p == ECDSA_SHA2 => match last {
            0x01 | 0x02 => Some(&SHA256), // sha224, sha256
            0x03 => Some(&SHA384),
            0x04 => Some(&SHA512),
            _ => None,
        },
        _ => None,
    }
}

/// One DER element: tag, contents, what follows.
fn der(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    let (contents, after) = rest.split_at(len);
    Some((tag, contents, after))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(alg: &'static rcgen::SignatureAlgorithm) -> Vec<u8> {
        let key = rcgen::KeyPair::generate_for(alg).unwrap();
        let params = rcgen::CertificateParams::new(vec!["db.test".to_string()]).unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn channel_binding_hashes_follow_the_signature() {
        let sha256 = cert(&rcgen::PKCS_ECDSA_P256_SHA256);
        assert_eq!(end_point_hash(&sha256), Some(&ring::digest::SHA256));
        let sha384 = cert(&rcgen::PKCS_ECDSA_P384_SHA384);
        assert_eq!(end_point_hash(&sha384), Some(&ring::digest::SHA384));
        assert_eq!(end_point_hash(&cert(&rcgen::PKCS_ED25519)), None);
        assert_eq!(end_point_hash(&sha256[..sha256.len() / 2]), None);
        assert_eq!(end_point_hash(b"\x30\x84\xff\xff\xff\xff"), None);
    }

    #[test]
    fn client_keys_in_pkcs8_and_sec1_and_mistakes_explained() {
        let dir = tempfile_dir();
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        let cert = params.self_signed(&key).unwrap();
        let write = |name: &str, bytes: &[u8]| {
            let p = dir.join(name);
            std::fs::write(&p, bytes).unwrap();
            p
        };
        let cert_path = write("c.pem", cert.pem().as_bytes());
        let settings = |key: &Path| TlsSettings {
            cert: Some(cert_path.clone()),
            key: Some(key.to_path_buf()),
            ..TlsSettings::new(SslMode::Require)
        };
        let pkcs8 = write("k8.pem", key.serialize_pem().as_bytes());
        assert!(Tls::new(settings(&pkcs8)).client_config().is_ok());
        let encrypted = write(
            "enc.pem",
            b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n",
        );
        let err = Tls::new(settings(&encrypted)).client_config().unwrap_err();
        assert!(err.to_string().contains("set sslkey"), "{err}");
        let other = rcgen::KeyPair::generate().unwrap();
        let wrong = write("wrong.pem", other.serialize_pem().as_bytes());
        let err = Tls::new(settings(&wrong)).client_config().unwrap_err();
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err}");
        let empty = write("empty.pem", b"nothing here");
        let err = Tls::new(TlsSettings {
            root: Some(RootCert::File(empty)),
            ..TlsSettings::new(SslMode::VerifyFull)
        })
        .client_config()
        .unwrap_err();
        assert!(err.to_string().contains("set sslrootcert"), "{err}");
        let system = Tls::new(TlsSettings {
            root: Some(RootCert::System),
            sni: false,
            ..TlsSettings::new(SslMode::VerifyFull)
        });
        assert!(!system.client_config().unwrap().enable_sni);
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tls-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
