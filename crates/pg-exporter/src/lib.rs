//! `sidecar postgres-exporter`: PostgreSQL metrics for Prometheus, a drop-in
//! for postgres_exporter's Pod spec, metric names and dashboards.
//!
//! Data flow: [`dsn`] turns postgres_exporter's environment variables into a
//! connection config; [`connect`] opens connections with libpq's `sslmode`
//! semantics over rustls ([`tls`]). On each scrape of the telemetry path, [`Exporter`]
//! checks that a fresh connection can be made (`pg_up`), reuses one
//! long-lived, read-only connection per database (and a second one to the
//! main database for the costly database sizes), runs every enabled
//! [`collectors`] query at once under one deadline (the namespaces of a
//! custom queries file, [`collectors::custom`], among them), and renders the families
//! (`exposition`) with upstream's names; [`server`] serves that, `/probe`,
//! `/`, `/live` and `/ready`. Scrapes that arrive during a collection share
//! the next one instead of opening more connections.

#![forbid(unsafe_code)]

pub mod auth;
pub mod collectors;
pub(crate) mod connect;
pub mod dsn;
mod exporter;
mod exposition;
pub mod server;
mod session;
pub(crate) mod tls;

pub use exporter::{Exporter, Options, ProbeError};
