//! A database session with its prepared statements kept: each collector
//! query is parsed and planned once per connection, not on every scrape.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio_postgres::{Client, Row, Statement};

use crate::exposition::Families;

/// Locks `m`, also after a panic elsewhere poisoned it (the data stays usable).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub struct Session {
    client: Client,
    statements: Mutex<HashMap<String, Statement>>,
    /// Results that stay valid while a version stamp stays the same
    /// (pg_settings until the configuration is reloaded).
    cached: Mutex<HashMap<&'static str, (f64, Families)>>,
    /// Results reused for a while (custom queries' `cache_seconds`), by
    /// name, with when they were read.
    recent: Mutex<HashMap<String, (Instant, Families)>>,
}

impl Session {
    pub fn new(client: Client) -> Self {
        Self {
            client,
            statements: Mutex::new(HashMap::new()),
            cached: Mutex::new(HashMap::new()),
            recent: Mutex::new(HashMap::new()),
        }
    }

    /// The families stored under `key` if they were stored with `stamp`.
    pub fn cached(&self, key: &'static str, stamp: f64) -> Option<Families> {
        let cached = lock(&self.cached);
        cached
            .get(key)
            .filter(|(s, _)| *s == stamp)
            .map(|(_, f)| f.clone())
    }

    pub fn store(&self, key: &'static str, stamp: f64, families: Families) {
        let mut cached = lock(&self.cached);
        cached.insert(key, (stamp, families));
    }

    /// The families stored under `key` by [`Self::keep`] if they were read
    /// at most `max_age` ago.
    pub fn recent(&self, key: &str, max_age: Duration) -> Option<Families> {
        let recent = lock(&self.recent);
        recent
            .get(key)
            .filter(|(at, _)| at.elapsed() <= max_age)
            .map(|(_, f)| f.clone())
    }

    /// Keeps `families`, read at `at`, for [`Self::recent`].
    pub fn keep(&self, key: &str, at: Instant, families: Families) {
        lock(&self.recent).insert(key.to_string(), (at, families));
    }

    /// Runs `sql` (no parameters) through its prepared statement.
    pub async fn query(&self, sql: &str) -> Result<Vec<Row>, tokio_postgres::Error> {
        let statement = self.prepared(sql).await?;
        self.client.query(&statement, &[]).await
    }

    /// The prepared statement of `sql`, prepared on first use.
    pub async fn prepared(&self, sql: &str) -> Result<Statement, tokio_postgres::Error> {
        if let Some(s) = lock(&self.statements).get(sql) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(sql).await?;
        let mut statements = lock(&self.statements);
        // The SQL texts are a fixed set; the bound only guards against surprises.
        if statements.len() > 256 {
            statements.clear();
        }
        statements.insert(sql.to_string(), s.clone());
        Ok(s)
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }
}
