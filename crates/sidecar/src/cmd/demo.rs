//! `sidecar demo` and the demo app it starts.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use clap::Args;
use sidecar_demo::DemoOptions;
use sidecar_demo::applog::{self, Rotation, WriterOptions};

/// Show the sidecars working on this machine, no cluster needed.
///
/// Part 1 (logs): a demo app writes numbered lines to a log file and rotates
/// it; `sidecar logs` relays the file to stdout; the demo shows the lines live
/// and counts lines written, relayed, lost and duplicated.
///
/// Part 2 (metrics): a throwaway PostgreSQL server (when its binaries are
/// installed, or --postgres-url), `sidecar postgres-exporter` beside it, some
/// load, and a few pg_* values before and after.
///
/// Part 3 (traces): two demo services with `sidecar proxy` beside each and a
/// front proxy, as in the seed's Jaeger demo; a few requests; each trace
/// printed as a tree from an in-process Zipkin receiver.
///
/// Stops by itself, or on Ctrl-C. Exits non-zero if a part did not do what it promises.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Log lines the demo app writes.
    #[arg(long, default_value_t = 600)]
    lines: u64,
    /// Log lines per second.
    #[arg(long, default_value_t = 100)]
    rate: u64,
    /// The demo app rotates its log file when it reaches this size.
    #[arg(long, default_value = "8KiB", value_parser = super::parse_bytes)]
    rotate_bytes: usize,
    /// Export this PostgreSQL server in the metrics part (read only) instead of
    /// starting a throwaway one, e.g. postgresql://user:pass@host:5432/db?sslmode=disable
    #[arg(long, env = "SIDECAR_DEMO_POSTGRES_URL")]
    postgres_url: Option<String>,
}

pub fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let exe = std::env::current_exe().context("cannot find the sidecar executable")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let report = runtime.block_on(sidecar_demo::run(DemoOptions {
        exe,
        lines: args.lines,
        rate: args.rate,
        rotate_bytes: args.rotate_bytes as u64,
        postgres_url: args.postgres_url,
    }))?;
    Ok(if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Write numbered log lines to a file and rotate it (the demo's app).
#[derive(Debug, Args)]
pub struct DemoAppArgs {
    /// The log file to write.
    #[arg(long)]
    file: PathBuf,
    /// Lines to write.
    #[arg(long, default_value_t = 1000)]
    lines: u64,
    /// Lines per second; 0 writes as fast as possible.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Rotate the file when it reaches this size.
    #[arg(long, default_value = "1MiB", value_parser = super::parse_bytes)]
    rotate_bytes: usize,
    /// How to rotate: rename, copytruncate or delete.
    #[arg(long, default_value = "rename")]
    rotation: Rotation,
    /// Rotated files to keep.
    #[arg(long, default_value_t = 5)]
    backups: u32,
    /// Leave the last line without its newline.
    #[arg(long)]
    partial_last_line: bool,
}

/// Runs the demo app; prints "written N rotations M" when done or stopped.
pub fn run_app(args: DemoAppArgs) -> anyhow::Result<ExitCode> {
    let opts = WriterOptions {
        file: args.file,
        lines: args.lines,
        rate: args.rate,
        rotate_bytes: args.rotate_bytes as u64,
        rotation: args.rotation,
        backups: args.backups,
        partial_last_line: args.partial_last_line,
        first_seq: 1,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let written = runtime.block_on(async move {
        let signal = sidecar_telemetry::shutdown::signal()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let mut writer = tokio::task::spawn_blocking(move || applog::write_logs(&opts, &flag));
        let written = tokio::select! {
            done = &mut writer => done,
            _ = signal => {
                stop.store(true, Ordering::Relaxed);
                writer.await
            }
        };
        anyhow::Ok(written??)
    })?;
    println!("written {} rotations {}", written.lines, written.rotations);
    Ok(ExitCode::SUCCESS)
}

/// Serve the demo's web service (stands in for the seed's service 1 and 2).
#[derive(Debug, Args)]
pub struct DemoServiceArgs {
    /// Address to listen on.
    #[arg(long, value_parser = sidecar_telemetry::http::parse_listen_addr)]
    listen: std::net::SocketAddr,
    /// Name it answers with.
    #[arg(long, default_value = "service")]
    name: String,
    /// URL it calls (copying trace headers) before answering.
    #[arg(long)]
    call: Option<String>,
}

pub fn run_service(args: DemoServiceArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let signal = sidecar_telemetry::shutdown::signal()?;
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        tracing::info!(
            "demo service {} on http://{}",
            args.name,
            listener.local_addr()?
        );
        sidecar_demo::service::serve(listener, args.name, args.call, async move {
            signal.await;
        })
        .await;
        anyhow::Ok(ExitCode::SUCCESS)
    })
}
