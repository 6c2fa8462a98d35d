//! Custom queries (`--extend.query-path`, upstream's deprecated but still
//! shipped queries.yaml): each namespace of the file becomes an entry of the
//! collector table ([`Run::Defined`]), named after the namespace, so it runs
//! with the others, under the same deadline, and reports
//! `pg_scrape_collector_success{collector="<namespace>"}`.
//!
//! A `master: true` namespace runs on the main database only
//! ([`Scope::Server`]); the others on every collected database
//! ([`Scope::Database`]: the main one, or each one with
//! `--auto-discover-databases`), as upstream runs them.
//!
//! Modules: `file` reads the YAML, `range` the `runonserver` ranges,
//! `values` the rows' text as upstream's driver reads it, `names` checks the
//! names a file defines, `rows` turns rows into families.

use std::borrow::Cow;
use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{Collector, Ctx, Defined, DefinedPending, Failure, Run, Scope};
use crate::exposition::{Families, Kind};
use crate::session::{Session, lock};

mod file;
mod names;
mod range;
mod rows;
mod values;

/// A custom queries file that could not be used; the text names the file,
/// the line when known, and what to change.
#[derive(Debug, thiserror::Error)]
pub enum QueriesError {
    #[error(
        "cannot read the custom queries file {path} (--extend.query-path): {source}; check the path and that the exporter may read it"
    )]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("custom queries file {path}{}: {problem}", line.map(|l| format!(", line {l}")).unwrap_or_default())]
    Invalid {
        path: String,
        line: Option<usize>,
        problem: String,
    },
}

/// The loaded file: one collector entry per namespace.
#[derive(Debug, Clone)]
pub struct Queries {
    path: String,
    hashsum: String,
    entries: Vec<Collector>,
}

impl Queries {
    /// Reads and checks the file at `path`. Metric names are built with
    /// `prefix` as upstream builds them; they must not collide with each
    /// other nor with the families of the `enabled` built-in collectors.
    pub fn load(path: &Path, prefix: &str, enabled: &[&str]) -> Result<Self, QueriesError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| QueriesError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::from_text(&shown, &text, prefix, enabled)
    }

    /// [`Self::load`] on text already read; `path` names it in errors.
    pub fn from_text(
        path: &str,
        text: &str,
        prefix: &str,
        enabled: &[&str],
    ) -> Result<Self, QueriesError> {
        let invalid = |line, problem| QueriesError::Invalid {
            path: path.to_string(),
            line,
            problem,
        };
        let namespaces = file::parse(text).map_err(|p| invalid(p.line, p.text))?;
        let checked = names::check(text, &namespaces, prefix, enabled)
            .map_err(|p| invalid(p.line, p.text))?;
        let hashsum = ring::digest::digest(&ring::digest::SHA256, text.as_bytes())
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let entries = namespaces
            .into_iter()
            .zip(checked)
            .map(|((name, ns), query)| Collector {
                name: Cow::Owned(name),
                default_on: true,
                scope: if ns.master {
                    Scope::Server
                } else {
                    Scope::Database
                },
                about: Cow::Owned(format!("custom query from {path}")),
                run: Run::Defined(Arc::new(query)),
                specs: &[],
            })
            .collect();
        Ok(Self {
            path: path.to_string(),
            hashsum,
            entries,
        })
    }

    /// The namespaces, as collector entries.
    pub fn entries(&self) -> &[Collector] {
        &self.entries
    }

    /// Upstream's `pg_exporter_user_queries_load_error{filename, hashsum}`:
    /// 0, since a file that does not load stops the exporter at start.
    pub(crate) fn add_load_status(&self, out: &mut Families, prefix: &str) {
        out.add(
            &format!("{prefix}_exporter_user_queries_load_error"),
            "Whether the user queries file was loaded and parsed successfully (1 for error, 0 for success).",
            Kind::Gauge,
            vec![
                ("filename".into(), self.path.clone()),
                ("hashsum".into(), self.hashsum.clone()),
            ],
            0.0,
        );
    }
}

/// How a result column is read.
#[derive(Debug, Clone)]
pub(crate) enum Use {
    /// DISCARD, LABEL (read apart), and a histogram's `_bucket`, `_sum`, `_count`.
    Skip,
    /// COUNTER, GAUGE, MAPPEDMETRIC, DURATION: one sample per row.
    Value {
        name: String,
        help: String,
        kind: Kind,
        read: Read,
    },
    /// HISTOGRAM: bounds here, counts in `<column>_bucket`, `_sum`, `_count`.
    Histogram { name: String, help: String },
}

/// How a value column's text becomes the sample value.
#[derive(Debug, Clone)]
pub(crate) enum Read {
    Number,
    Mapped(std::collections::BTreeMap<String, f64>),
    /// A Go duration ("1h2m"), in milliseconds.
    Duration,
}

/// One namespace, ready to run.
#[derive(Debug)]
pub(crate) struct Query {
    /// As the file names it: the collector label and the cache key.
    pub name: String,
    /// The namespace with upstream's prefix replacement: metric names start with it.
    pub family: String,
    pub sql: String,
    pub cache: Duration,
    pub runonserver: Option<range::Range>,
    /// By result column name.
    pub columns: std::collections::HashMap<String, Use>,
    /// The label names in the order they are written (sorted), `server` among them.
    pub labels: Vec<String>,
    /// Problems with values already logged (once each).
    pub warned: Mutex<HashSet<String>>,
}

impl Query {
    /// Logs `message` once per `key`.
    fn warn_once(&self, key: String, message: impl FnOnce() -> String) {
        let mut warned = lock(&self.warned);
        if warned.len() > 256 {
            warned.clear();
        }
        if warned.insert(key) {
            tracing::warn!("custom query {}: {}", self.name, message());
        }
    }
}

impl Query {
    /// Why the query could not be prepared; several statements are named
    /// as such (the server only says it cannot prepare them).
    fn prepare_failure(&self, e: tokio_postgres::Error) -> Failure {
        let several = e
            .as_db_error()
            .is_some_and(|db| db.message().contains("multiple commands"));
        if several {
            return Failure::Rows(format!(
                "custom query {}: the query holds several statements; keep one per namespace \
                 (a namespace per statement)",
                self.name
            ));
        }
        Failure::Query(e)
    }
}

impl Defined for Query {
    fn run<'a>(
        &'a self,
        session: &'a Session,
        ctx: &'a Ctx,
        out: &'a mut Families,
    ) -> DefinedPending<'a> {
        Box::pin(async move {
            if let Some(range) = &self.runonserver {
                if !range.matches(range::from_num(ctx.version)) {
                    return Ok(());
                }
            }
            if !self.cache.is_zero() {
                if let Some(kept) = session.recent(&self.name, self.cache) {
                    out.merge(kept);
                    return Ok(());
                }
            }
            let at = Instant::now();
            // Prepared once per session for the column types; run with the
            // simple protocol for the values as text, as upstream's driver
            // gets them. A file of several statements fails the prepare.
            let statement = session
                .prepared(&self.sql)
                .await
                .map_err(|e| self.prepare_failure(e))?;
            if statement.columns().is_empty() {
                return Err(Failure::Rows(format!(
                    "custom query {}: the query returns no columns; make it one SELECT (or \
                     another statement that returns rows)",
                    self.name
                )));
            }
            let messages = session.client().simple_query(&self.sql).await?;
            let mut fresh = Families::new();
            self.rows(statement.columns(), &messages, ctx, &mut fresh)?;
            if !self.cache.is_zero() {
                session.keep(&self.name, at, fresh.clone());
            }
            out.merge(fresh);
            Ok::<(), Failure>(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_file_and_line() {
        let e = Queries::from_text(
            "q.yaml",
            "pg_a:\n  query: SELECT 1\n  metrics:\n    - x:\n        usage: GAUG\n",
            "pg",
            &[],
        )
        .unwrap_err();
        let text = e.to_string();
        assert!(
            text.starts_with("custom queries file q.yaml, line 5: "),
            "{text}"
        );
        assert!(text.contains("unknown usage"), "{text}");
    }

    #[test]
    fn namespaces_become_entries_by_master() {
        let q = Queries::from_text(
            "q.yaml",
            "pg_a:\n  query: SELECT 1 AS x\n  master: true\n  metrics:\n    - x:\n        usage: GAUGE\n\
             pg_b:\n  query: SELECT 1 AS x\n  metrics:\n    - x:\n        usage: GAUGE\n",
            "pg",
            &[],
        )
        .unwrap();
        let scopes: Vec<(&str, Scope)> = q
            .entries()
            .iter()
            .map(|c| (c.name.as_ref(), c.scope))
            .collect();
        assert_eq!(
            scopes,
            vec![("pg_a", Scope::Server), ("pg_b", Scope::Database)]
        );
        assert_eq!(q.hashsum.len(), 64);
    }
}
