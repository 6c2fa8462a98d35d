//! A database session with its prepared statements kept: each collector
//! query is parsed and planned once per connection, not on every scrape.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

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
}

impl Session {
    pub fn new(client: Client) -> Self {
        Self {
            client,
            statements: Mutex::new(HashMap::new()),
            cached: Mutex::new(HashMap::new()),
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

    /// Runs `sql` (no parameters) through its prepared statement.
    pub async fn query(&self, sql: &str) -> Result<Vec<Row>, tokio_postgres::Error> {
        let cached = lock(&self.statements).get(sql).cloned();
        let statement = match cached {
            Some(s) => s,
            None => {
                let s = self.client.prepare(sql).await?;
                let mut statements = lock(&self.statements);
                // The SQL texts are a fixed set; the bound only guards against surprises.
                if statements.len() > 256 {
                    statements.clear();
                }
                statements.insert(sql.to_string(), s.clone());
                s
            }
        };
        self.client.query(&statement, &[]).await
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }
}
