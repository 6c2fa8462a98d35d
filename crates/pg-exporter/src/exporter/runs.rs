//! Collector runs: timing them under the scrape's deadline, and what they
//! add to a scrape (`pg_scrape_collector_*`, `pg_up`, `pg_exporter_*`).

use std::borrow::Cow;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use tokio::time::timeout_at;

use super::conn::db_error_text;
use super::{Exporter, Stats};
use crate::collectors::{Collector, Ctx, Failure};
use crate::exposition::{Families, Kind};
use crate::session::{Session, lock};

/// Why a collector run produced nothing.
pub(super) enum RunError {
    Query(Failure),
    Timeout,
    NotConnected,
}

/// A collector run: the collector's name, outcome, duration and families.
pub(super) struct Timed {
    pub name: Cow<'static, str>,
    pub result: Result<(), RunError>,
    pub elapsed: Duration,
    pub families: Families,
}

impl Timed {
    /// The run of a collector that could not run: no session to run it on.
    pub fn not_connected(collector: &Collector) -> Self {
        Self {
            name: collector.name.clone(),
            result: Err(RunError::NotConnected),
            elapsed: Duration::ZERO,
            families: Families::new(),
        }
    }
}

/// Runs one collector before `deadline`, timing it.
pub(super) async fn timed(
    collector: &Collector,
    session: &Session,
    ctx: &Ctx,
    deadline: tokio::time::Instant,
) -> Timed {
    let mut families = Families::new();
    let t0 = Instant::now();
    let result = match timeout_at(deadline, collector.run(session, ctx, &mut families)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(RunError::Query(e)),
        Err(_) => Err(RunError::Timeout),
    };
    Timed {
        name: collector.name.clone(),
        result,
        elapsed: t0.elapsed(),
        families,
    }
}

/// Runs `collectors` on one session: the built-in ones at once
/// (pipelined), then the defined ones (custom queries) at once, so a slow
/// custom query holds up no built-in collector (`/probe`).
pub(super) async fn timed_phased(
    collectors: &[&Collector],
    session: &Session,
    ctx: &Ctx,
    deadline: tokio::time::Instant,
) -> Vec<Timed> {
    let (defined, builtin): (Vec<&Collector>, Vec<&Collector>) =
        collectors.iter().partition(|c| c.is_defined());
    let mut runs = timed_all(&builtin, session, ctx, deadline).await;
    runs.extend(timed_all(&defined, session, ctx, deadline).await);
    runs
}

/// Runs `collectors` at once on `session` (pipelined).
pub(super) async fn timed_all(
    collectors: &[&Collector],
    session: &Session,
    ctx: &Ctx,
    deadline: tokio::time::Instant,
) -> Vec<Timed> {
    join_all(collectors.iter().map(|c| timed(c, session, ctx, deadline))).await
}

impl Exporter {
    /// Merges collector runs (with where they ran) into `out` with their
    /// duration and success series; cancels queries left running by a
    /// timeout. True when all succeeded.
    pub(super) async fn record(&self, runs: Vec<(String, Timed)>, out: &mut Families) -> bool {
        let mut ok = true;
        let mut timed_out = false;
        let mut durations: HashMap<Cow<'static, str>, (Duration, bool)> = HashMap::new();
        for (place, run) in runs {
            let success = self.outcome(&run.name, &place, run.result, &mut timed_out);
            ok &= success;
            let entry = durations.entry(run.name).or_insert((Duration::ZERO, true));
            entry.0 = entry.0.max(run.elapsed);
            entry.1 &= success;
            out.merge(run.families);
        }
        for (name, (elapsed, success)) in durations {
            add_collector_result(out, &self.opts.prefix, &name, Some(elapsed), success);
        }
        if timed_out {
            // Queries may still run on the server: cancel them and start afresh next time.
            let mut conns = self.conns.lock().await;
            for (_, conn) in conns.drain() {
                conn.cancel().await;
            }
        }
        ok
    }

    /// Logs a collector failure (once per collector, place and message
    /// until it succeeds there again) and says whether it succeeded.
    fn outcome(
        &self,
        name: &str,
        place: &str,
        result: Result<(), RunError>,
        timed_out: &mut bool,
    ) -> bool {
        let episode = format!("{name}@{place}");
        match result {
            Ok(()) => {
                self.episode_over(&episode);
                true
            }
            Err(RunError::Query(e)) => {
                let msg = match e {
                    Failure::Query(e) => db_error_text(&e),
                    Failure::Rows(text) => text,
                };
                self.failing(&episode);
                self.warn_once(
                    format!("{episode}:{msg}"),
                    format!("collector {name} failed on {place}: {msg}"),
                );
                false
            }
            Err(RunError::NotConnected) => false,
            Err(RunError::Timeout) => {
                *timed_out = true;
                self.failing(&episode);
                self.warn_once(
                    format!("{episode}:timeout"),
                    format!(
                        "collector {name} did not finish within --collection-timeout {}; its metrics are left out of this scrape",
                        sidecar_telemetry::duration::format(self.opts.collection_timeout)
                    ),
                );
                false
            }
        }
    }

    /// Marks a collector as failing at a place (see [`Self::episode_over`]).
    fn failing(&self, episode: &str) {
        lock(&self.warned).insert(episode.to_string());
    }

    /// A collector that failed at a place succeeded there again: its next
    /// failure is worth a new warning.
    fn episode_over(&self, episode: &str) {
        let mut warned = lock(&self.warned);
        if warned.remove(episode) {
            let prefix = format!("{episode}:");
            warned.retain(|k| !k.starts_with(&prefix));
        }
    }

    /// `pg_exporter_*`: the exporter's own scrape statistics.
    pub(super) fn exporter_families(&self, stats: &Stats, out: &mut Families) {
        let p = &self.opts.prefix;
        out.add(
            &format!("{p}_exporter_last_scrape_duration_seconds"),
            "Duration of the last scrape of metrics from PostgreSQL.",
            Kind::Gauge,
            Vec::new(),
            stats.last_duration,
        );
        out.add(
            &format!("{p}_exporter_scrapes_total"),
            "Total number of times PostgreSQL was scraped for metrics.",
            Kind::Counter,
            Vec::new(),
            stats.scrapes as f64,
        );
        out.add(
            &format!("{p}_exporter_last_scrape_error"),
            "Whether the last scrape of metrics from PostgreSQL resulted in an error (1 for error, 0 for success).",
            Kind::Gauge,
            Vec::new(),
            if stats.last_error { 1.0 } else { 0.0 },
        );
        if let Some(queries) = &self.opts.queries {
            queries.add_load_status(out, p);
        }
        self.process_families(out);
        let name = format!("{p}_exporter_missing_pg_monitor");
        let help = "1 when the exporter's role is not a member of pg_monitor (statistics of other sessions are hidden from it).";
        match &stats.missing_monitor {
            Some(role) => out.add(
                &name,
                help,
                Kind::Gauge,
                vec![("role".into(), role.clone())],
                1.0,
            ),
            None => out.declare(&name, help, Kind::Gauge),
        }
    }

    /// What postgres_exporter v0.20 always exports about itself, with its
    /// names and labels: the build, and the config file's last (here: only)
    /// read, 0 when there was no file (upstream's default name absent).
    fn process_families(&self, out: &mut Families) {
        let labels = [
            ("branch", ""),
            ("goarch", std::env::consts::ARCH),
            ("goos", std::env::consts::OS),
            ("goversion", ""),
            ("revision", ""),
            ("tags", ""),
            ("version", env!("CARGO_PKG_VERSION")),
        ];
        out.add(
            "postgres_exporter_build_info",
            "A metric with a constant '1' value labeled by version, revision, branch, goversion from which postgres_exporter was built, and the goos and goarch for the build.",
            Kind::Gauge,
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            1.0,
        );
        let loaded = self.opts.config_loaded.map(|at| {
            at.duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64())
        });
        out.add(
            "postgres_exporter_config_last_reload_successful",
            "Postgres exporter config loaded successfully.",
            Kind::Gauge,
            Vec::new(),
            if loaded.is_some() { 1.0 } else { 0.0 },
        );
        out.add(
            "postgres_exporter_config_last_reload_success_timestamp_seconds",
            "Timestamp of the last successful configuration reload.",
            Kind::Gauge,
            Vec::new(),
            loaded.unwrap_or(0.0),
        );
    }
}

pub(super) fn add_up(out: &mut Families, prefix: &str, up: bool) {
    out.add(
        &format!("{prefix}_up"),
        "Whether the last scrape of metrics from PostgreSQL was able to connect to the server (1 for yes, 0 for no).",
        Kind::Gauge,
        Vec::new(),
        if up { 1.0 } else { 0.0 },
    );
}

pub(super) fn add_collector_result(
    out: &mut Families,
    prefix: &str,
    name: &str,
    elapsed: Option<Duration>,
    success: bool,
) {
    let labels = vec![("collector".to_string(), name.to_string())];
    if let Some(elapsed) = elapsed {
        out.add(
            &format!("{prefix}_scrape_collector_duration_seconds"),
            "postgres_exporter: Duration of a collector scrape.",
            Kind::Gauge,
            labels.clone(),
            elapsed.as_secs_f64(),
        );
    }
    out.add(
        &format!("{prefix}_scrape_collector_success"),
        "postgres_exporter: Whether a collector succeeded.",
        Kind::Gauge,
        labels,
        if success { 1.0 } else { 0.0 },
    );
}
