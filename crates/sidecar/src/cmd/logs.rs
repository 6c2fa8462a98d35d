//! `sidecar logs`: relay log files to stdout.

use std::io::BufWriter;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, anyhow};
use clap::builder::FalseyValueParser;
use clap::error::ErrorKind;
use clap::parser::ValueSource;
use clap::{Arg, ArgMatches, Args, FromArgMatches, ValueEnum, value_parser};
use regex::bytes::Regex;
use sidecar_logs::output::PIPE_CAPACITY;
use sidecar_logs::{Config, Format, Metrics, Relay, StartAt};
use sidecar_telemetry::admin::AdminAddr;
use sidecar_telemetry::duration;
use sidecar_telemetry::ports;
use sidecar_telemetry::serve::{Runtime, Serve};

const EXAMPLES: &str = "\
Examples:
  # The seed's sidecar: relay the app's log file from a shared emptyDir volume
  sidecar logs /logs-ro/app.log

  # Every .log file in a directory, now and later, each line prefixed with its file name
  sidecar logs --prefix '/logs/*.log'

  # JSON records, Java stack traces kept as one event, resume after restarts
  sidecar logs --format json --multiline-start '^\\d{4}-\\d\\d-\\d\\d' \\
      --state-dir /logs/.sidecar /logs/app.log

Output: stdout carries only the relayed lines; the relay's own messages go to stderr.
Rotation by rename (logrotate create, RotatingFileHandler), copytruncate and
delete-and-recreate is followed without losing or repeating a line.";

/// Follow log files and relay every line to stdout, exactly once.
///
/// Waits for files that do not exist yet, follows them through rotation,
/// never drops a line (long lines are split, invalid UTF-8 is kept), and on
/// SIGTERM relays what is left before exiting.
#[derive(Debug, Args)]
#[command(after_help = EXAMPLES)]
pub struct LogsArgs {
    /// Files or quoted glob patterns to follow (`/logs/app.log`, '/logs/*.log').
    #[arg(
        required = true,
        env = "SIDECAR_LOGS_PATHS",
        value_delimiter = ',',
        value_name = "PATH"
    )]
    paths: Vec<String>,

    /// Output format: `raw` writes each line exactly as written; `json` writes
    /// one object per line: {"ts": read time, "file": path, "line": text}.
    #[arg(long, value_enum, default_value_t = FormatArg::Raw, env = "SIDECAR_LOGS_FORMAT")]
    format: FormatArg,

    /// Prefix each raw line with its file name and ": " (useful with several files).
    #[arg(long, env = "SIDECAR_LOGS_PREFIX", value_parser = FalseyValueParser::new())]
    prefix: bool,

    /// Where to start in a file seen for the first time: `beginning`, or `end`
    /// (only new lines; files created later are always read from their beginning).
    #[arg(long, value_enum, default_value_t = FromArg::Beginning, env = "SIDECAR_LOGS_FROM")]
    from: FromArg,

    /// Longest line relayed as one record; longer lines are split into pieces,
    /// never dropped (e.g. 65536, 64KiB, 1MiB).
    #[arg(long, default_value = "1MiB", value_parser = super::parse_bytes, env = "SIDECAR_LOGS_MAX_LINE_BYTES")]
    max_line_bytes: usize,

    /// Regular expression that matches the first line of each event; lines
    /// that do not match are joined to the event before them (stack traces).
    #[arg(long, value_name = "REGEX", env = "SIDECAR_LOGS_MULTILINE_START")]
    multiline_start: Option<String>,

    /// Emit a multiline event after this long without a continuation line.
    #[arg(long, default_value = "1s", value_parser = duration::parse, env = "SIDECAR_LOGS_MULTILINE_TIMEOUT")]
    multiline_timeout: Duration,

    /// How often glob patterns are scanned again for new files.
    #[arg(long, default_value = "1s", value_parser = duration::parse, env = "SIDECAR_LOGS_GLOB_INTERVAL")]
    glob_interval: Duration,

    /// How often files are checked even without a change notification
    /// (filesystems without inotify, such as NFS, rely on this).
    #[arg(long, default_value = "200ms", value_parser = duration::parse, env = "SIDECAR_LOGS_POLL_INTERVAL")]
    poll_interval: Duration,

    /// How long a rotated-away file stays open for late writes once read to its end.
    #[arg(long, default_value = "5s", value_parser = duration::parse, env = "SIDECAR_LOGS_ROTATE_WAIT")]
    rotate_wait: Duration,

    /// Directory for the checkpoint (file identity and offset, saved every
    /// second and at exit) so a restarted relay resumes exactly where it stopped.
    #[arg(long, value_name = "DIR", env = "SIDECAR_LOGS_STATE_DIR")]
    state_dir: Option<PathBuf>,

    /// On SIGTERM, keep relaying until files are quiet for 200ms, or at most this long.
    #[arg(long, default_value = "5s", value_parser = duration::parse, env = "SIDECAR_LOGS_DRAIN_TIMEOUT")]
    drain_timeout: Duration,

    #[command(flatten)]
    admin: AdminFlag,
}

/// `--admin` (old spelling `--admin-addr`), env `SIDECAR_LOGS_ADMIN`, else the
/// old env `SIDECAR_LOGS_ADMIN_ADDR` (clap takes one env name per argument).
#[derive(Debug, Clone, Copy)]
struct AdminFlag(AdminAddr);

const ADMIN_ENV: &str = "SIDECAR_LOGS_ADMIN";
const ADMIN_OLD_ENV: &str = "SIDECAR_LOGS_ADMIN_ADDR";

impl Args for AdminFlag {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        cmd.arg(
            Arg::new("admin")
                .long("admin")
                .alias("admin-addr")
                .env(ADMIN_ENV)
                .value_name("ADMIN")
                .default_value(ports::all_interfaces(ports::LOGS))
                .value_parser(value_parser!(AdminAddr))
                .help(format!(
                    "Admin server address (/live, /ready, /metrics), or `off`. The old \
                     spellings still work: --admin-addr, and {ADMIN_OLD_ENV} when {ADMIN_ENV} \
                     is not set"
                )),
        )
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

impl FromArgMatches for AdminFlag {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let given = m
            .get_one::<AdminAddr>("admin")
            .copied()
            .ok_or_else(|| clap::Error::new(ErrorKind::MissingRequiredArgument))?;
        if m.value_source("admin") != Some(ValueSource::DefaultValue) {
            return Ok(Self(given));
        }
        match std::env::var_os(ADMIN_OLD_ENV) {
            None => Ok(Self(given)),
            Some(old) => {
                let old = old.to_string_lossy();
                old.parse().map(Self).map_err(|e| {
                    clap::Error::raw(
                        ErrorKind::InvalidValue,
                        format!("invalid value '{old}' for {ADMIN_OLD_ENV}: {e}\n"),
                    )
                })
            }
        }
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum FormatArg {
    Raw,
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum FromArg {
    Beginning,
    End,
}

impl LogsArgs {
    fn config(self) -> anyhow::Result<Config> {
        let multiline_start = self
            .multiline_start
            .as_deref()
            .map(|re| {
                Regex::new(re).map_err(|e| {
                    anyhow!("--multiline-start `{re}` is not a valid regular expression: {e}")
                })
            })
            .transpose()?;
        Ok(Config {
            paths: self.paths,
            format: match self.format {
                FormatArg::Raw => Format::Raw,
                FormatArg::Json => Format::Json,
            },
            prefix: self.prefix,
            from: match self.from {
                FromArg::Beginning => StartAt::Beginning,
                FromArg::End => StartAt::End,
            },
            max_line_bytes: self.max_line_bytes,
            multiline_start,
            multiline_timeout: self.multiline_timeout,
            glob_interval: self.glob_interval,
            poll_interval: self.poll_interval,
            rotate_wait: self.rotate_wait,
            drain_timeout: self.drain_timeout,
            state_dir: self.state_dir,
        })
    }
}

pub fn run(args: LogsArgs) -> anyhow::Result<ExitCode> {
    let admin = args.admin.0;
    let config = args.config()?;
    // One thread for signals and the admin server; the relay reads files on a blocking thread.
    let summary = Serve::new(Runtime::CurrentThread).admin(admin).run(
        async |registry| -> anyhow::Result<_> {
            Ok(Relay::new(config, Metrics::register(registry))?)
        },
        async |(relay, control), app| {
            let stdout = std::io::stdout()
                .as_fd()
                .try_clone_to_owned()
                .context("cannot use stdout")?;
            if let Some(bytes) = sidecar_logs::output::widen_pipe(stdout.as_fd(), PIPE_CAPACITY) {
                tracing::debug!("stdout is a pipe of {} KiB", bytes / 1024);
            }
            let writer = BufWriter::with_capacity(64 * 1024, std::fs::File::from(stdout));
            let ready = app.health;
            let mut task = tokio::task::spawn_blocking(move || {
                relay.run(writer, move || ready.set_ready(true))
            });
            let outcome = tokio::select! {
                sig = app.shutdown => {
                    tracing::info!("{sig} received");
                    control.stop();
                    task.await
                }
                done = &mut task => done,
            };
            Ok(outcome.context("the relay thread failed")??)
        },
    )?;
    tracing::info!(
        "relayed {} records ({} bytes){}",
        summary.records,
        summary.bytes,
        if summary.drain_timed_out {
            "; the drain timed out"
        } else {
            ""
        }
    );
    Ok(ExitCode::SUCCESS)
}
