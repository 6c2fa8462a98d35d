//! tokio-postgres' `MakeTlsConnect` over tokio-rustls, and the TLS stream
//! with `tls-server-end-point` channel binding (SCRAM-SHA-256-PLUS).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};

use super::verify::Hints;
use super::{Tls, TlsError};

type Prepared = Result<Arc<ClientConfig>, TlsError>;

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
}
