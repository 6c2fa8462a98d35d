//! The webhook's certificate: loaded from PEM files at start (a clear error
//! naming the flag when they are missing or wrong), served through a
//! resolver whose key is swapped when the files change. Kubernetes updates
//! a mounted Secret by swapping a symlink (`..data`), which inotify on the
//! file paths does not see, so the files are read every [`POLL`] and
//! compared by content. A pair that does not load (half written, key not
//! matching the certificate) keeps the previous one in service, counts an
//! error and warns once until a pair loads again. The served certificate's
//! expiry is exported, and a warning is logged (once per episode) when it
//! has expired or expires within [`EXPIRY_WARNING`]: the API server then
//! refuses the webhook, and with `failurePolicy: Ignore` Pods start
//! without sidecars, which nobody would otherwise notice.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::metrics::Metrics;

/// How often the certificate and key files are read for changes.
pub const POLL: Duration = Duration::from_secs(2);
/// A served certificate this close to its end is warned about.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(7 * 24 * 3600);

/// When a DER certificate stops being valid (`notAfter`), read with yasna
/// (the DER reader rcgen already builds on); `None` if it does not parse.
pub(crate) fn not_after(der: &[u8]) -> Option<time::OffsetDateTime> {
    use yasna::{ASN1Result, BERReader, Tag, tags};
    fn time_of(r: BERReader) -> ASN1Result<time::OffsetDateTime> {
        if r.lookahead_tag()? == tags::TAG_UTCTIME {
            Ok(*r.read_utctime()?.datetime())
        } else {
            Ok(*r.read_generalized_time()?.datetime())
        }
    }
    yasna::parse_der(der, |r| {
        r.read_sequence(|r| {
            let end = r.next().read_sequence(|r| {
                // TBSCertificate: [0] version, serial, signature, issuer,
                // validity, subject, key, then up to three [n] extras.
                r.read_optional(|r| r.read_tagged(Tag::context(0), |r| r.read_der()))?;
                for _ in 0..3 {
                    r.next().read_der()?;
                }
                let end = r.next().read_sequence(|r| {
                    time_of(r.next())?;
                    time_of(r.next())
                })?;
                r.next().read_der()?;
                r.next().read_der()?;
                for _ in 0..3 {
                    r.read_optional(|r| r.read_der())?;
                }
                Ok(end)
            })?;
            r.next().read_der()?;
            r.next().read_der()?;
            Ok(end)
        })
    })
    .ok()
}

/// When a chain stops being valid: the earliest `notAfter` of its
/// certificates (an expired intermediate fails it as well).
fn chain_end(ck: &CertifiedKey) -> Option<time::OffsetDateTime> {
    ck.cert.iter().filter_map(|c| not_after(c)).min()
}

/// Seconds since the Unix epoch.
fn unix(t: time::OffsetDateTime) -> f64 {
    t.unix_timestamp() as f64
}

const HOW_TO_FIX: &str = "create the Secret with `sidecar injector --generate-cert > tls.yaml` and `kubectl apply -f tls.yaml` (the file also holds the caBundle patch), or with cert-manager, and mount it there";

/// Why the certificate and key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path} ({flag}): {source}; {HOW_TO_FIX}")]
    Read {
        path: String,
        flag: &'static str,
        source: std::io::Error,
    },
    #[error("{path} ({flag}) {problem}; {HOW_TO_FIX}")]
    Invalid {
        path: String,
        flag: &'static str,
        problem: String,
    },
    #[error(
        "the key {key} (--tls-key) does not belong to the certificate {cert} (--tls-cert): {reason}; give the pair from the same Secret"
    )]
    Mismatch {
        cert: String,
        key: String,
        reason: String,
    },
    #[error("cannot set up TLS: {0}")]
    Config(String),
}

/// Where the certificate chain and its key are.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path, flag: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        flag,
        source,
    })
}

/// The pair as a rustls key, from the files' contents.
fn certified(files: &TlsFiles, cert: &[u8], key: &[u8]) -> Result<CertifiedKey, TlsError> {
    let invalid = |path: &Path, flag, problem: String| TlsError::Invalid {
        path: path.display().to_string(),
        flag,
        problem,
    };
    let chain = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            invalid(
                &files.cert,
                "--tls-cert",
                format!("is not a PEM certificate chain ({e})"),
            )
        })?;
    if chain.is_empty() {
        return Err(invalid(
            &files.cert,
            "--tls-cert",
            "holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| {
        invalid(
            &files.key,
            "--tls-key",
            format!("is not a PEM private key ({e})"),
        )
    })?;
    CertifiedKey::from_der(chain, key, &provider()).map_err(|e| TlsError::Mismatch {
        cert: files.cert.display().to_string(),
        key: files.key.display().to_string(),
        reason: e.to_string(),
    })
}

/// The certificate the server presents, swapped on reload.
#[derive(Debug)]
pub(crate) struct Resolver {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(
            &self.current.read().unwrap_or_else(|p| p.into_inner()),
        ))
    }
}

/// The loaded certificate, its resolver and the files it came from.
pub struct Certificate {
    files: TlsFiles,
    resolver: Arc<Resolver>,
    /// The contents last tried (loaded or not): a pair is tried once.
    seen: (Vec<u8>, Vec<u8>),
    /// When the served chain stops being valid (read when it is loaded).
    end: Option<time::OffsetDateTime>,
}

impl Certificate {
    /// Loads the pair, or says which flag to fix.
    pub fn load(files: TlsFiles) -> Result<Self, TlsError> {
        let cert = read(&files.cert, "--tls-cert")?;
        let key = read(&files.key, "--tls-key")?;
        let ck = certified(&files, &cert, &key)?;
        Ok(Self {
            end: chain_end(&ck),
            files,
            resolver: Arc::new(Resolver {
                current: RwLock::new(Arc::new(ck)),
            }),
            seen: (cert, key),
        })
    }

    /// Exports the served certificate's end, and warns (once per episode,
    /// `warned`) when it has expired or soon will.
    pub(crate) fn check_expiry(&self, metrics: &Metrics, warned: &mut bool) {
        let Some(end) = self.end else {
            return;
        };
        metrics.tls_not_after.set(unix(end) as i64);
        let left = end - time::OffsetDateTime::now_utc();
        let soon = left < time::Duration::try_from(EXPIRY_WARNING).unwrap_or(time::Duration::ZERO);
        if soon && !*warned {
            let when = if left.is_negative() {
                format!("expired {} hours ago", -left.whole_hours())
            } else {
                format!("expires in {} hours", left.whole_hours())
            };
            tracing::warn!(
                "the webhook's certificate chain {} {when} ({end}): the API server refuses an expired one, and Pods are then created without sidecars; renew the Secret (cert-manager renews it by itself; else `sidecar injector --generate-cert` again)",
                self.files.cert.display()
            );
        }
        *warned = soon;
    }

    /// A rustls server configuration that serves the current pair (h2 and http/1.1).
    pub(crate) fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&self.resolver) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// Reads the files once: loads a changed pair. `Ok(true)`: reloaded.
    fn poll(&mut self) -> Result<bool, TlsError> {
        let cert = read(&self.files.cert, "--tls-cert")?;
        let key = read(&self.files.key, "--tls-key")?;
        if (&cert, &key) == (&self.seen.0, &self.seen.1) {
            return Ok(false);
        }
        let tried = certified(&self.files, &cert, &key);
        self.seen = (cert, key);
        let ck = tried?;
        self.end = chain_end(&ck);
        *self
            .resolver
            .current
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Arc::new(ck);
        Ok(true)
    }

    /// Reads the files every `every` and serves a changed pair, forever.
    /// Read errors are retried (and counted once per episode): a Secret
    /// update may remove the files for a moment.
    pub(crate) async fn watch(mut self, every: Duration, metrics: Metrics) {
        let mut failing = false;
        let mut expiring = false;
        self.check_expiry(&metrics, &mut expiring);
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            let polled = self.poll();
            if matches!(polled, Ok(true)) {
                expiring = false;
            }
            self.check_expiry(&metrics, &mut expiring);
            match polled {
                Ok(false) => {}
                Ok(true) => {
                    failing = false;
                    metrics.tls_reloads.inc();
                    tracing::info!(
                        "serving the new certificate from {} and {}",
                        self.files.cert.display(),
                        self.files.key.display()
                    );
                }
                Err(e) => {
                    // Each bad pair counts once (it is tried once); a file
                    // that cannot be read counts once per episode.
                    if !failing || !matches!(e, TlsError::Read { .. }) {
                        metrics.tls_reload_errors.inc();
                    }
                    if !failing {
                        tracing::warn!(
                            "the certificate files changed but cannot be loaded; still serving the previous certificate: {e}"
                        );
                    }
                    failing = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn pair(name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn served(c: &Certificate) -> Vec<u8> {
        c.resolver.current.read().unwrap().cert[0].to_vec()
    }

    #[test]
    fn load_reload_and_keep_the_old_pair_on_errors() {
        let dir = std::env::temp_dir().join(format!("injector-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let files = TlsFiles {
            cert: dir.join("tls.crt"),
            key: dir.join("tls.key"),
        };
        let err = Certificate::load(files.clone()).err().unwrap().to_string();
        assert!(
            err.contains("--tls-cert") && err.contains("--generate-cert"),
            "{err}"
        );
        let (c1, k1) = pair("one");
        std::fs::write(&files.cert, &c1).unwrap();
        std::fs::write(&files.key, &k1).unwrap();
        let mut c = Certificate::load(files.clone()).unwrap();
        let first = served(&c);
        assert!(!c.poll().unwrap());
        // A new certificate with the old key: mismatch, the old pair stays.
        let (c2, k2) = pair("two");
        std::fs::write(&files.cert, &c2).unwrap();
        let err = c.poll().unwrap_err().to_string();
        assert!(err.contains("does not belong"), "{err}");
        assert_eq!(served(&c), first);
        // Tried once: the same contents are not an error again.
        assert!(!c.poll().unwrap());
        std::fs::write(&files.key, &k2).unwrap();
        assert!(c.poll().unwrap());
        assert_ne!(served(&c), first);
        std::fs::write(&files.key, "garbage").unwrap();
        assert!(c.poll().unwrap_err().to_string().contains("--tls-key"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn not_after_is_read_from_utc_and_generalized_times() {
        for year in [2031, 2077] {
            // rcgen writes UTCTime before 2050, GeneralizedTime from 2050 on.
            let key = rcgen::KeyPair::generate().unwrap();
            let mut params = rcgen::CertificateParams::new(vec!["x".to_string()]).unwrap();
            params.not_after = rcgen::date_time_ymd(year, 3, 4);
            let cert = params.self_signed(&key).unwrap();
            let end = not_after(cert.der()).unwrap();
            assert_eq!((end.year(), end.month() as u8, end.day()), (year, 3, 4));
        }
        assert!(not_after(b"not DER").is_none());
    }
}
