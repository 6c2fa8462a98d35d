//! Checking the server's certificate as libpq does, and explaining a
//! failed handshake with the setting to change.

use std::io;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_cert_signed_by_trust_anchor, verify_server_name};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::sync::Arc;

use super::{RootCert, SslMode, TlsError};

/// Checks the server's certificate as libpq does: nothing without a root
/// certificate (the handshake signature still proves the key), the chain
/// with one, and the host name too under verify-full.
#[derive(Debug)]
pub(super) struct Verifier {
    pub(super) roots: Option<Arc<RootCertStore>>,
    pub(super) name: bool,
    pub(super) algs: WebPkiSupportedAlgorithms,
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
pub(super) struct Hints {
    pub(super) mode: SslMode,
    pub(super) root: Option<RootCert>,
    pub(super) cert: Option<String>,
    pub(super) host: String,
}

impl Hints {
    /// The sentence for a failed handshake (or a refusal read right after it).
    pub(super) fn explain(&self, e: &io::Error) -> TlsError {
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

/// `localhost` for rustls' `DnsName("localhost")`, `127.0.0.1` for `IpAddress(127.0.0.1)`.
fn presented_name(name: &str) -> &str {
    let inner = name
        .split_once('(')
        .and_then(|(_, rest)| rest.strip_suffix(')'))
        .unwrap_or(name);
    inner.trim_matches('"')
}
