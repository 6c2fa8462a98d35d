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

use std::sync::Arc;

use tokio_postgres::config::Host;
use tokio_postgres::{Client, Config, Connection, Socket};

use crate::tls::{MakeConnector, SslMode, Tls, TlsError, TlsSettings, TlsStream};

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
pub async fn connect(source: &Source) -> Result<Connected, ConnectError> {
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
            Err(ConnectError::Postgres(e)) if e.as_db_error().is_some() => {
                encrypted(config, tls, SslMode::Require).await
            }
            done => done,
        },
        SslMode::Prefer => match encrypted(config, tls, SslMode::Prefer).await {
            Err(e) if e.is_handshake_failure() => match plain(config).await {
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
        Err(ConnectError::Postgres(e)) => match refusal_hint(&e, &tls.settings) {
            Some(hint) => Err(ConnectError::Explained {
                text: format!("error communicating with the server: {hint}"),
                handshake: false,
            }),
            None => Err(ConnectError::Postgres(e)),
        },
        done => done,
    }
}

/// Why a connection could not be opened.
#[derive(Debug)]
pub(crate) enum ConnectError {
    /// tokio-postgres' own error.
    Postgres(tokio_postgres::Error),
    /// A failure tokio-postgres would report without the setting to change,
    /// said with it (`text` in full); `handshake` if the TLS handshake failed.
    Explained { text: String, handshake: bool },
}

impl ConnectError {
    /// The TLS handshake failed (`prefer` then tries without TLS).
    fn is_handshake_failure(&self) -> bool {
        match self {
            Self::Postgres(e) => handshake_failure(e).is_some(),
            Self::Explained { handshake, .. } => *handshake,
        }
    }
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Postgres(e) => e.fmt(f),
            Self::Explained { text, .. } => f.write_str(text),
        }
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

async fn plain(config: &Config) -> Result<Connected, ConnectError> {
    let mut config = config.clone();
    config.ssl_mode(tokio_postgres::config::SslMode::Disable);
    config
        .connect(MakeConnector::unused())
        .await
        .map_err(ConnectError::Postgres)
}

async fn encrypted(
    config: &Config,
    tls: &Arc<Tls>,
    mode: SslMode,
) -> Result<Connected, ConnectError> {
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
            Err(ConnectError::Explained {
                text: format!("error performing TLS handshake: {why}"),
                handshake: true,
            })
        }
        done => done.map_err(ConnectError::Postgres),
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
