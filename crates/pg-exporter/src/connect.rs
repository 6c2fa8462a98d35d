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
//! (which has no room for them), so [`crate::dsn`] registers them here when
//! it parses a connection string, under the config's identity: everything
//! but the database name, `options`, `application_name` and the connect
//! timeout, which the exporter sets per session. [`connect`] finds them again
//! from the config alone. Registrations are never replaced (a second data
//! source for the same server, user and password must ask for the same TLS
//! settings), so a connection never gets weaker settings than its own.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io;
use std::pin::Pin;
use std::sync::{Arc, LazyLock, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::config::Host;
use tokio_postgres::{Client, Config, Connection, Socket};

use crate::dsn::DsnError;
use crate::session::lock;
use crate::tls::{Fail, MakeConnector, SslMode, Tls, TlsError, TlsSettings, TlsStream};

/// How many distinct data sources with TLS settings of their own are kept
/// (each `/probe` target with its own settings is one).
const MAX_SOURCES: usize = 1024;

static SOURCES: LazyLock<Mutex<HashMap<String, Arc<Tls>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// A connection and the future that drives it.
pub type Connected = (Client, Connection<Socket, TlsStream<Socket>>);

/// The identity the TLS settings are kept under (see the module docs).
fn identity(config: &Config) -> String {
    let mut c = config.clone();
    c.dbname("")
        .options("")
        .application_name("")
        .connect_timeout(Duration::ZERO);
    // Debug leaves the password out; a hash of it stands in.
    let mut h = DefaultHasher::new();
    config.get_password().hash(&mut h);
    format!("{c:?} {:x}", h.finish())
}

/// Keeps `settings` for connections made with `config`.
pub fn register(config: &Config, settings: TlsSettings, what: &str) -> Result<(), DsnError> {
    let key = identity(config);
    let mut sources = lock(&SOURCES);
    let implied = TlsSettings::from_tokio(config.get_ssl_mode());
    match sources.get(&key) {
        Some(kept) if kept.settings == settings => Ok(()),
        Some(kept) => Err(DsnError::Tls(format!(
            "{what} asks for TLS settings ({}) other than those of another data source for the same \
             server, user and password ({}); this exporter keeps one set per server, user and password: \
             give both the same sslmode, sslrootcert, sslcert, sslkey and sslsni",
            settings.describe(),
            kept.settings.describe()
        ))),
        // What the config says on its own needs no entry.
        None if settings == implied => Ok(()),
        None if sources.len() >= MAX_SOURCES => Err(DsnError::Tls(format!(
            "{what} would be data source number {} with TLS settings of its own; this exporter keeps \
             at most {MAX_SOURCES}: use fewer distinct TLS settings",
            MAX_SOURCES + 1
        ))),
        None => {
            sources.insert(key, Arc::new(Tls::new(settings)));
            Ok(())
        }
    }
}

/// The TLS settings for `config`: registered ones, or what its `sslmode` says.
pub fn settings(config: &Config) -> Arc<Tls> {
    if let Some(tls) = lock(&SOURCES).get(&identity(config)) {
        return Arc::clone(tls);
    }
    Arc::new(Tls::new(TlsSettings::from_tokio(config.get_ssl_mode())))
}

/// Opens a connection as libpq would with the config's TLS settings.
pub async fn connect(config: &Config) -> Result<Connected, tokio_postgres::Error> {
    let tls = settings(config);
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
    match mode {
        SslMode::Disable => plain(config).await,
        SslMode::Allow => match plain(config).await {
            // The server refused a connection without TLS: try with it.
            Err(e) if e.as_db_error().is_some() => encrypted(config, &tls, SslMode::Require).await,
            done => done,
        },
        SslMode::Prefer => match encrypted(config, &tls, SslMode::Prefer).await {
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
            encrypted(config, &tls, SslMode::Require).await
        }
    }
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
        Err(e)
            if handshake_failure(&e).is_none()
                && e.to_string().ends_with("server does not support TLS") =>
        {
            let why = TlsError::Refused(format!(
                "the server does not accept TLS (ssl is off in its postgresql.conf) and sslmode={} requires it: \
                 turn ssl on in the server, or set sslmode=prefer (TLS when offered) or sslmode=disable",
                tls.settings.mode
            ));
            Err(error(why, e).await)
        }
        done => done,
    }
}

/// Our explanation of a TLS failure, if `e` is one.
fn handshake_failure(e: &tokio_postgres::Error) -> Option<&TlsError> {
    std::error::Error::source(e)?.downcast_ref::<TlsError>()
}

/// A `tokio_postgres::Error` saying `why` (its errors have no public
/// constructor): a handshake with a stream that answers "S" to the TLS
/// request and a connector that fails with `why`. `otherwise` is returned
/// should that ever connect.
async fn error(why: TlsError, otherwise: tokio_postgres::Error) -> tokio_postgres::Error {
    let mut c = Config::new();
    c.user("-")
        .ssl_mode(tokio_postgres::config::SslMode::Require);
    match c.connect_raw(AnswersS(true), Fail(why)).await {
        Err(e) => e,
        Ok(_) => otherwise,
    }
}

/// An in-memory stream that answers "S" once and takes any writes.
struct AnswersS(bool);

impl AsyncRead for AnswersS {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.0 && buf.remaining() > 0 {
            buf.put_slice(b"S");
            this.0 = false;
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for AnswersS {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
