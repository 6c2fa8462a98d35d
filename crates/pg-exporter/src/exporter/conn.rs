//! Opening and closing connections, and why a login failed.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::timeout_at;
use tokio_postgres::SimpleQueryMessage;
use tokio_postgres::error::SqlState;

use crate::connect::Source;

use crate::connect::ConnectError;
use crate::session::Session;

/// An open connection: its session and the task that drives it.
pub(super) struct Conn {
    pub session: Arc<Session>,
    /// `server_version_num`, when it was asked for (else 0).
    pub version: u32,
    /// Drives the connection; aborted when the `Conn` is dropped.
    task: Option<JoinHandle<()>>,
    /// The TLS settings it was opened with (a cancel request needs them too).
    tls: Arc<crate::tls::Tls>,
}

impl Conn {
    /// Asks the server to cancel what this session runs, over a new
    /// connection made with the same TLS settings (a server that accepts
    /// only TLS refuses a plain cancel request).
    pub async fn cancel(&self) {
        let connector = crate::tls::MakeConnector::new(&self.tls);
        if let Err(e) = self
            .session
            .client()
            .cancel_token()
            .cancel_query(connector)
            .await
        {
            tracing::debug!("cancelling a running query failed: {e}");
        }
    }

    /// Ends the session politely (Terminate, then the socket closes) before
    /// `deadline`, so the server has let go of it when this returns: a
    /// role at its connection limit has the slot back for the next login.
    pub async fn close(mut self, deadline: tokio::time::Instant) {
        let task = self.task.take();
        drop(self); // the last client handle: the connection says goodbye and ends
        if let Some(task) = task {
            let _ = timeout_at(deadline, task).await;
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// What kept a session from logging in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The server or the role is at its connection limit (SQLSTATE 53300):
    /// another session of ours may be what takes the slot.
    ConnectionLimit,
    /// No answer before the connect timeout.
    Timeout,
    /// Anything else: refused, unknown host, authentication, a query failed.
    Other,
}

/// Why a session could not be opened, with the text to log.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{text}")]
pub(crate) struct LoginFailure {
    pub text: String,
    pub refusal: Refusal,
}

impl LoginFailure {
    fn connect(e: &ConnectError) -> Self {
        match e {
            ConnectError::Postgres(e) => Self::db(e),
            ConnectError::Explained { text, .. } => Self {
                text: text.clone(),
                refusal: Refusal::Other,
            },
        }
    }

    fn db(e: &tokio_postgres::Error) -> Self {
        let refusal = if e.code() == Some(&SqlState::TOO_MANY_CONNECTIONS) {
            Refusal::ConnectionLimit
        } else {
            Refusal::Other
        };
        Self {
            text: db_error_text(e),
            refusal,
        }
    }

    /// The same failure, its text prefixed with what was being done.
    pub fn context(self, doing: &str) -> Self {
        Self {
            text: format!("{doing}: {}", self.text),
            ..self
        }
    }

    /// No answer before the connect timeout.
    pub fn timeout() -> Self {
        Self {
            text: "the server did not answer in time (connect timeout)".into(),
            refusal: Refusal::Timeout,
        }
    }

    pub fn at_connection_limit(&self) -> bool {
        self.refusal == Refusal::ConnectionLimit
    }
}

/// What a connection is opened for.
#[derive(Debug, Clone, Copy)]
pub(super) enum Purpose {
    /// The login check behind `pg_up`: nothing runs on it.
    Login,
    /// Running collectors: the exporter's session settings are applied (see
    /// [`session_settings`]) and the server version is read.
    Collect { statement_timeout: Duration },
}

/// The exporter's own settings for a session that runs queries: read-only
/// transactions, `statement_timeout` (the collection timeout) and a
/// `lock_timeout` that leaves time for the other queries. They are SET after
/// login rather than sent in the startup packet: startup options become the
/// settings' reset values, while SET leaves `reset_val` in pg_settings at what
/// the server, database and role configure, which the settings collector
/// reports instead of these overrides.
pub(super) fn session_settings(statement_timeout: Duration) -> String {
    // A query waiting for a lock gives up early, leaving time for the others.
    let lock_timeout = (statement_timeout / 4).min(Duration::from_secs(2));
    format!(
        "SET default_transaction_read_only = on; SET statement_timeout = {}; SET lock_timeout = {}",
        statement_timeout.as_millis().max(1),
        lock_timeout.as_millis().max(1)
    )
}

/// Opens a connection for `purpose`, all before `deadline`.
pub(super) async fn open(
    source: &Source,
    deadline: tokio::time::Instant,
    purpose: Purpose,
) -> Result<Conn, LoginFailure> {
    let limit = source
        .config
        .get_connect_timeout()
        .map(|t| tokio::time::Instant::now() + *t)
        .map_or(deadline, |t| t.min(deadline));
    let connecting = async {
        let (client, connection) = crate::connect::connect(source)
            .await
            .map_err(|e| LoginFailure::connect(&e))?;
        let task = tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("database connection ended: {e}");
            }
        });
        let version = match purpose {
            Purpose::Login => 0,
            Purpose::Collect { statement_timeout } => {
                // One round trip: the settings, then the version.
                let sql = format!(
                    "{}; SHOW server_version_num",
                    session_settings(statement_timeout)
                );
                let messages = client
                    .simple_query(&sql)
                    .await
                    .map_err(|e| LoginFailure::db(&e))?;
                messages
                    .iter()
                    .find_map(|m| match m {
                        SimpleQueryMessage::Row(row) => row.get(0),
                        _ => None,
                    })
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0)
            }
        };
        Ok(Conn {
            session: Arc::new(Session::new(client)),
            version,
            task: Some(task),
            tls: Arc::clone(&source.tls),
        })
    };
    match timeout_at(limit, connecting).await {
        Ok(result) => result,
        Err(_) => Err(LoginFailure::timeout()),
    }
}

/// The most useful text of a database error (the server's message when there is one).
pub(super) fn db_error_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(cause) = source {
                let cause_text = cause.to_string();
                if !text.contains(&cause_text) {
                    text.push_str(": ");
                    text.push_str(&cause_text);
                }
                source = cause.source();
            }
            text
        }
    }
}

pub(super) fn version_text(num: u32) -> String {
    format!("{}.{}", num / 10_000, num % 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_settings_are_read_only_with_statement_and_lock_timeouts() {
        assert_eq!(
            session_settings(Duration::from_secs(10)),
            "SET default_transaction_read_only = on; SET statement_timeout = 10000; SET lock_timeout = 2000"
        );
        assert_eq!(
            session_settings(Duration::from_millis(400)),
            "SET default_transaction_read_only = on; SET statement_timeout = 400; SET lock_timeout = 100"
        );
    }
}
