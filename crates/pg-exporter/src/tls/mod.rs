//! TLS to PostgreSQL in libpq's terms, with rustls (no OpenSSL: the image
//! stays one static file).
//!
//! - [`TlsSettings`]: `sslmode`, `sslrootcert`, `sslcert`, `sslkey`, `sslsni` as
//!   libpq reads them.
//! - [`Tls`]: those settings and the rustls client configuration built from
//!   the files they name, rebuilt when a file changes (certificates rotate
//!   under a running Pod).
//! - [`MakeConnector`] (`stream.rs`): tokio-postgres' `MakeTlsConnect` over
//!   tokio-rustls, with `tls-server-end-point` channel binding
//!   (SCRAM-SHA-256-PLUS).
//! - `verify.rs`: the server certificate check, and the explanations of failures.
//!
//! Server certificates are checked as libpq checks them: the chain against
//! `sslrootcert` when it is set (also under `require`, `prefer` and `allow`),
//! the host name only under `verify-full`. `sslrootcert=system` is the Mozilla
//! CA set compiled into this binary (webpki-roots): a `FROM scratch` image has
//! no /etc/ssl. Every failure says which setting to change.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

use crate::session::lock;

mod stream;
mod verify;

pub(crate) use stream::{MakeConnector, TlsStream};
use verify::{Hints, Verifier};

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

#[cfg(test)]
mod tests {
    use super::*;

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
