//! Shared plumbing for every long-running `sidecar` subcommand.
//!
//! Data flow: each subcommand registers its metrics in a [`prometheus_client`]
//! `Registry` (plus the `process_*` collector from [`process`]), hands the
//! registry and a [`Health`] handle to [`admin::Admin`], and serves it with
//! [`http::serve`] on a listener it bound itself, until the future returned by
//! [`shutdown::signal`] resolves (SIGTERM or SIGINT). Scrapers read
//! `/metrics` in the Prometheus text format 0.0.4; Kubernetes probes read
//! `/live` and `/ready`. [`serve::Serve`] runs that whole sequence (runtime,
//! signals, registry, admin server, the subcommand's work, stop) for each
//! subcommand. [`trace`] reads and writes W3C and B3 trace headers.

#![forbid(unsafe_code)]

pub mod admin;
pub mod duration;
pub mod http;
pub mod ports;
pub mod process;
pub mod serve;
pub mod shutdown;
pub mod trace;
pub mod yaml;

pub use admin::{Admin, Health};
