//! The side session: a second long-lived session to the main database for
//! the collectors of [`Scope::Side`] (the ones that cost the server most:
//! `pg_database_size` stats every file of every database), run in parallel
//! with the others on the main session. Two backends work at once, while the
//! fresh session each scrape opens for `pg_up` logs in. Their results are
//! reused for [`Options::database_interval`](super::Options::database_interval).
//!
//! [`Scope::Side`]: crate::collectors::Scope::Side

use std::borrow::Cow;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::Exporter;
use super::conn::LoginFailure;
use super::runs::{Timed, timed_all};
use crate::collectors::Collector;
use crate::connect::Source;
use crate::dsn;
use crate::exposition::Families;
use crate::session::lock;

/// The key of the side session in `Exporter::conns` (database names cannot
/// hold a NUL).
pub(super) fn side_key(db: &str) -> String {
    format!("{db}\0side")
}

/// A successful side run kept for reuse.
pub(super) struct Kept {
    name: Cow<'static, str>,
    elapsed: Duration,
    families: Families,
}

/// What the side session did in a scrape.
pub(super) enum SideRun {
    /// Nothing to run there: no side collector, reused results, or the
    /// side session was given up.
    Unused,
    Ran(Vec<Timed>),
    /// It could not be opened.
    NoSession(LoginFailure),
}

impl SideRun {
    pub fn at_connection_limit(&self) -> bool {
        matches!(self, Self::NoSession(e) if e.at_connection_limit())
    }
}

impl Exporter {
    /// Runs `collectors` on the side session to the main database.
    pub(super) async fn run_side(
        &self,
        base: &Source,
        main_db: &str,
        collectors: &[&Collector],
        deadline: tokio::time::Instant,
    ) -> SideRun {
        let key = side_key(main_db);
        match self
            .database_connection(base, main_db, &key, deadline)
            .await
        {
            Ok((session, version)) => {
                let ctx = self.ctx(version);
                SideRun::Ran(timed_all(collectors, &session, &ctx, deadline).await)
            }
            Err(e) => SideRun::NoSession(e),
        }
    }

    /// The side-session collectors' last results, as runs, if they are
    /// younger than `database_interval`.
    pub(super) fn reusable_side_runs(&self) -> Option<Vec<Timed>> {
        let cache = lock(&self.side_cache);
        let (at, runs) = cache.as_ref()?;
        if at.elapsed() >= self.opts.database_interval {
            return None;
        }
        Some(
            runs.iter()
                .map(|kept| Timed {
                    name: kept.name.clone(),
                    result: Ok(()),
                    elapsed: kept.elapsed,
                    families: kept.families.clone(),
                })
                .collect(),
        )
    }

    /// Keeps the side-session runs for reuse when every one of them succeeded.
    pub(super) fn keep_side_runs(&self, runs: &[Timed]) {
        if self.opts.database_interval.is_zero()
            || runs.is_empty()
            || runs.iter().any(|r| r.result.is_err())
        {
            return;
        }
        let kept = runs
            .iter()
            .map(|r| Kept {
                name: r.name.clone(),
                elapsed: r.elapsed,
                families: r.families.clone(),
            })
            .collect();
        *lock(&self.side_cache) = Some((Instant::now(), kept));
    }

    /// Closes the side session and stops opening it (see `side_off`).
    pub(super) async fn give_up_side_session(&self, base: &Source, main_db: &str) {
        if self.side_off.swap(true, Ordering::Relaxed) {
            return;
        }
        self.conns.lock().await.remove(&side_key(main_db));
        tracing::warn!(
            "{} has no connection to spare for a second session (connection limit); \
             the database sizes are read on the main session from now on",
            dsn::describe(&base.config)
        );
    }
}
