//! Opening a connection with libpq's `sslmode` semantics.
//!
//! tokio-postgres knows `disable`, `prefer` and `require`; this adds:
//! - `allow`: without TLS first, with TLS if the server refuses that;
//! - `prefer`: TLS if the server offers it, and without TLS when the TLS
//!   handshake fails (as libpq retries);
//! - `verify-ca` / `verify-full`, and `require` checking the CA when
//!   `sslrootcert` is set: in the verifier ([`crate::tls`]).
//!
//! A data source's TLS settings are not part of `tokio_postgres::Config`
//! (which has no room for them): a [`Source`] carries both, so each data
//! source and each `/probe` target connects with its own settings.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::config::Host;
use tokio_postgres::{Client, Config, Connection, Socket};

use crate::tls::{Fail, MakeConnector, SslMode, Tls, TlsError, TlsSettings, TlsStream};

/// A connection and the future that drives it.
pub type Connected = (Client, Connection<Socket, TlsStream<Socket>>);

/// Where and how to log in: the connection config and the TLS settings
/// that go with it (what [`crate::dsn`] parses a connection string into).
#[derive(Debug, Clone)]
pub struct Source {
    pub config: Config,
    pub tls: Arc<Tls>,
}

impl Source {
    pub fn new(config: Config, settings: TlsSettings) -> Self {
        Self {
            config,
            tls: Arc::new(Tls::new(settings)),
        }
    }

    /// A source with only what the config says (its `sslmode`, no files).
    pub fn plain(config: Config) -> Self {
        let settings = TlsSettings::from_tokio(config.get_ssl_mode());
        Self::new(config, settings)
    }

    /// The TLS settings.
    pub fn tls_settings(&self) -> &TlsSettings {
        &self.tls.settings
    }
}

/// Opens a connection as libpq would with the config's TLS settings.
pub async fn connect(source: &Source) -> Result<Connected, tokio_postgres::Error> {
    let config = &source.config;
    let tls = &source.tls;
    // libpq never uses TLS over Unix-domain sockets, whatever sslmode says.
    let unix_only = config.get_hostaddrs().is_empty()
        && !config.get_hosts().is_empty()
        && config
            .get_hosts()
            .iter()
            .all(|h| matches!(h, Host::Unix(_)));
    let mode = if unix_only {
        SslMode::Disable
    } else {
        tls.settings.mode
    };
    let result = match mode {
        SslMode::Disable => plain(config).await,
        SslMode::Allow => match plain(config).await {
            // The server refused a connection without TLS: try with it.
            Err(e) if e.as_db_error().is_some() => encrypted(config, tls, SslMode::Require).await,
            done => done,
        },
        SslMode::Prefer => match encrypted(config, tls, SslMode::Prefer).await {
            Err(e) if handshake_failure(&e).is_some() => match plain(config).await {
                Ok(connected) => {
                    tracing::debug!("TLS failed ({e}); connected without TLS (sslmode=prefer)");
                    Ok(connected)
                }
                // The TLS failure says more than the refusal of a plain connection.
                Err(_) => Err(e),
            },
            done => done,
        },
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
            encrypted(config, tls, SslMode::Require).await
        }
    };
    match result {
        Err(e) => match refusal_hint(&e, &tls.settings) {
            Some(hint) => Err(error(Fake::Server(hint), e).await),
            None => Err(e),
        },
        done => done,
    }
}

/// The server's refusal of a login for TLS reasons, with the setting to
/// change (PostgreSQL's own words name none).
fn refusal_hint(e: &tokio_postgres::Error, tls: &TlsSettings) -> Option<String> {
    let db = e.as_db_error()?;
    if db.code() != &tokio_postgres::error::SqlState::INVALID_AUTHORIZATION_SPECIFICATION {
        return None;
    }
    let m = db.message();
    let hint = if m.contains("pg_hba.conf") && m.ends_with("no encryption") {
        format!(
            "the server accepts this login only over TLS: set sslmode=require (verify-full with sslrootcert \
             to check the server too) instead of sslmode={}",
            tls.mode
        )
    } else if m.contains("pg_hba.conf") && m.ends_with("SSL encryption") {
        "the server accepts this login only without TLS: set sslmode=disable (or allow)".to_string()
    } else if m.contains("requires a valid client certificate") {
        "set sslcert and sslkey to a client certificate (and its key) signed by a CA in the server's \
         ssl_ca_file, whose CN is the user name"
            .to_string()
    } else if m.contains("certificate authentication failed") {
        "the client certificate's CN must be the user name: set user to the certificate's CN, or sslcert \
         and sslkey to a certificate for this user"
            .to_string()
    } else {
        return None;
    };
    Some(format!("{}: {m}; {hint}", db.severity()))
}

async fn plain(config: &Config) -> Result<Connected, tokio_postgres::Error> {
    let mut config = config.clone();
    config.ssl_mode(tokio_postgres::config::SslMode::Disable);
    config.connect(MakeConnector::unused()).await
}

async fn encrypted(
    config: &Config,
    tls: &Arc<Tls>,
    mode: SslMode,
) -> Result<Connected, tokio_postgres::Error> {
    let mut c = config.clone();
    c.ssl_mode(mode.tokio());
    match c.connect(MakeConnector::new(tls)).await {
        // tokio-postgres' own words for a server without TLS name no setting.
        Err(e) if without_tls(&e) => {
            let why = TlsError::Refused(format!(
                "the server does not accept TLS (ssl is off in its postgresql.conf) and sslmode={} requires it: \
                 turn ssl on in the server, or set sslmode=prefer (TLS when offered) or sslmode=disable",
                tls.settings.mode
            ));
            Err(error(Fake::Handshake(why), e).await)
        }
        done => done,
    }
}

/// The server answered the TLS request with "no" (tokio-postgres' words).
fn without_tls(e: &tokio_postgres::Error) -> bool {
    std::error::Error::source(e).is_some_and(|s| s.to_string() == "server does not support TLS")
}

/// Our explanation of a TLS failure, if `e` is one.
fn handshake_failure(e: &tokio_postgres::Error) -> Option<&TlsError> {
    std::error::Error::source(e)?.downcast_ref::<TlsError>()
}

/// A made-up failure, for [`error`].
enum Fake {
    /// Fails the TLS handshake: "error performing TLS handshake: ...".
    Handshake(TlsError),
    /// Fails talking to the server: "error communicating with the server: ...".
    Server(String),
}

/// A `tokio_postgres::Error` saying what `fake` says (its errors have no
/// public constructor): a connection over an in-memory stream that answers
/// "S" to the TLS request, with a connector that fails (`Handshake`), or
/// that fails every write (`Server`). `otherwise` is returned should that
/// ever connect.
async fn error(fake: Fake, otherwise: tokio_postgres::Error) -> tokio_postgres::Error {
    let mut c = Config::new();
    c.user("-");
    let connected = match fake {
        Fake::Handshake(why) => {
            c.ssl_mode(tokio_postgres::config::SslMode::Require);
            c.connect_raw(Stream::AnswersS(true), Fail(why)).await
        }
        Fake::Server(why) => {
            c.ssl_mode(tokio_postgres::config::SslMode::Disable);
            c.connect_raw(Stream::Fails(why), Fail(TlsError::Refused(String::new())))
                .await
        }
    };
    match connected {
        Err(e) => e,
        Ok(_) => otherwise,
    }
}

/// An in-memory stream: answers "S" once and takes any writes, or fails writes.
enum Stream {
    AnswersS(bool),
    Fails(String),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Stream::AnswersS(answer) = self.get_mut() {
            if *answer && buf.remaining() > 0 {
                buf.put_slice(b"S");
                *answer = false;
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::AnswersS(_) => Poll::Ready(Ok(buf.len())),
            Stream::Fails(why) => {
                Poll::Ready(Err(io::Error::other(TlsError::Refused(why.clone()))))
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::AnswersS(_) => Poll::Ready(Ok(())),
            Stream::Fails(why) => {
                Poll::Ready(Err(io::Error::other(TlsError::Refused(why.clone()))))
            }
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
