//! The relay loop ([`Relay::run`]): each wake it re-checks the followed
//! paths (`watch`), handles what moved (`rotation`, `siblings`), reads every
//! open file (`reader`) and checkpoints (`resume`).

mod cut;
mod inotify;
mod loss;
mod reader;
mod resume;
mod rotation;
mod siblings;
mod watch;

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::File;
use std::io::{self, Write};

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use regex::bytes::Regex;

use crate::checkpoint::{CheckpointError, Entry, Store};
use crate::framer::Rules;
use crate::identity::{BeforeHash, FileId, FingerprintHash, ReadContent};
use crate::metrics::Metrics;
use crate::output::{Format, Output};

use self::inotify::Waiter;
use self::loss::Ledger;
use self::reader::Reader;

use self::watch::Early;

/// Read buffer size.
pub(super) const READ_CHUNK: usize = 128 * 1024;

/// Most bytes read from one file per wake, so one busy file cannot starve the others.
pub(super) const TICK_BUDGET: usize = 1024 * 1024;

/// How long all files must stay quiet before a draining relay exits.
pub(super) const DRAIN_QUIET: Duration = Duration::from_millis(200);

/// How many let-go files are remembered (to resume them if they reappear).
pub(super) const KNOWN_FILES: usize = 1024;

/// Most files held open ahead of their turn.
pub(super) const MAX_PINNED: usize = 64;

/// Times a rotation is looked at again when the writer rotates once more
/// during each listing, before the files found are relayed in the order of
/// their age and number anyway.
pub(super) const MAX_ROTATION_TRIES: u32 = 3;

/// Contents of truncated files remembered (see [`Relay::read_contents`]).
pub(super) const READ_CONTENTS: usize = 16;

/// Where to start in a file seen for the first time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartAt {
    #[default]
    Beginning,
    End,
}

/// What the relay does; built by the command line.
#[derive(Debug, Clone)]
pub struct Config {
    /// Files or glob patterns.
    pub paths: Vec<String>,
    pub format: Format,
    pub prefix: bool,
    pub from: StartAt,
    pub max_line_bytes: usize,
    pub multiline_start: Option<Regex>,
    pub multiline_timeout: Duration,
    pub glob_interval: Duration,
    pub poll_interval: Duration,
    pub rotate_wait: Duration,
    pub drain_timeout: Duration,
    pub state_dir: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            paths: Vec::new(),
            format: Format::Raw,
            prefix: false,
            from: StartAt::Beginning,
            max_line_bytes: 1024 * 1024,
            multiline_start: None,
            multiline_timeout: Duration::from_secs(1),
            glob_interval: Duration::from_secs(1),
            poll_interval: Duration::from_millis(200),
            rotate_wait: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(5),
            state_dir: None,
        }
    }
}

/// Why the relay stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(
        "cannot write to stdout ({0}): whatever reads the relay's output went away; lines not yet written stay in the files"
    )]
    Output(#[source] io::Error),
    #[error("`{pattern}` is not a valid glob pattern ({reason}); quote it and check its brackets")]
    Pattern { pattern: String, reason: String },
    #[error(
        "give at least one file or glob pattern to follow, like /logs/app.log or '/logs/*.log'"
    )]
    NoPaths,
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("cannot set up the relay: {0}")]
    Setup(#[source] io::Error),
    #[error(
        "the final checkpoint could not be written ({0}); a restarted relay resumes from the one before and may relay the lines since again: make room in --state-dir (a separate small emptyDir), or drop it"
    )]
    FinalCheckpoint(#[source] CheckpointError),
}

/// Asks a running relay to drain and stop.
#[derive(Debug, Clone)]
pub struct Control {
    stop: Arc<AtomicBool>,
    /// Write end of the pipe the relay waits on.
    wake: Arc<std::os::fd::OwnedFd>,
}

impl Control {
    /// Starts the drain: keep reading until files are quiet, then exit.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = nix::unistd::write(&*self.wake, &[1]);
    }
}

/// What a finished relay did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub records: u64,
    pub bytes: u64,
    /// True when the drain timeout passed while files were still being written.
    pub drain_timed_out: bool,
}

pub(super) enum Pattern {
    Literal(PathBuf),
    Glob(String),
}

/// A file read before and let go (or saved in the checkpoint).
#[derive(Debug, Clone)]
pub(super) struct Known {
    pub(super) fp: FingerprintHash,
    pub(super) offset: u64,
    /// The bytes before `offset` (unknown in older checkpoints).
    pub(super) before: Option<BeforeHash>,
    /// When the file was made, where the filesystem tells (statx).
    pub(super) born: Option<SystemTime>,
    pub(super) label: String,
    pub(super) path: PathBuf,
}

impl Known {
    /// True unless `file` is known to be another file on the same inode:
    /// made at another time (where the filesystem keeps birth times), or
    /// holding other bytes before `offset` (a new file that starts with the
    /// same bytes, a banner, is not the file read before).
    pub(super) fn ends_as_before(&self, file: &File) -> bool {
        same_birth(self.born, file)
            && self
                .before
                .is_none_or(|b| b.matches_at(file, self.offset).unwrap_or(false))
    }
}

/// False when `file` was made at another time than `born` (both known).
pub(super) fn same_birth(born: Option<SystemTime>, file: &File) -> bool {
    match (born, file.metadata().and_then(|m| m.created())) {
        (Some(then), Ok(now)) => then == now,
        _ => true,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Notice {
    Missing,
    NoMatch,
    Directory,
    NotRegular,
    Unreadable,
}

#[derive(Default)]
pub(super) struct Progress {
    pub(super) read_any: bool,
    pub(super) budget_hit: bool,
}

/// The log relay. Build with [`Relay::new`], run with [`Relay::run`].
pub struct Relay {
    cfg: Config,
    rules: Rules,
    patterns: Vec<Pattern>,
    readers: Vec<Reader>,
    known: HashMap<FileId, Known>,
    known_order: VecDeque<FileId>,
    /// Checkpoint entries for files not yet found again after a restart.
    saved_open: Vec<Entry>,
    saved_labels: HashSet<String>,
    literal_labels: HashSet<String>,
    metrics: Metrics,
    store: Option<Store>,
    stop: Arc<AtomicBool>,
    /// inotify, the stop pipe and the poll timer.
    waiter: Waiter,
    notices: HashMap<String, Notice>,
    buf: Vec<u8>,
    last_data_any: Instant,
    dirty: bool,
    last_checkpoint: Instant,
    initial_scan: bool,
    /// Labels that had a file at some point (a first file gets its missed siblings read).
    seen_labels: HashSet<Arc<str>>,
    /// Labels whose path was found empty (mid-rotation) after their file was
    /// let go, with that file's last change: files rotated away before the
    /// next one appears hold lines too.
    vacated: HashMap<Arc<str>, SystemTime>,
    /// Labels with files rotated away since the given time that were left
    /// for later because the file at the path moved on while we listed
    /// (see [`Relay::recover_missed`]): the next rotation looks back that far.
    deferred: HashMap<Arc<str>, SystemTime>,
    started: SystemTime,
    checkpoint_time: Option<SystemTime>,
    /// The contents of truncated files and how far they were relayed, newest
    /// last: a copy of one that turns up after the truncation was handled
    /// is relayed from there (never twice).
    read_contents: VecDeque<ReadContent>,
    /// Files opened early at followed paths (see [`Relay::pin_new_files`]).
    pinned: Vec<(PathBuf, File, FileId)>,
    /// Files opened the moment they appeared at a followed path (a writer
    /// that deletes its file may do so before the relay looks).
    early: Early,
    /// Files that appeared at followed paths and files read (see `loss.rs`).
    ledger: Ledger,
    summary: Summary,
    /// When the drain must end: set once a stop was asked for.
    drain_deadline: Option<Instant>,
    /// What each followed path that is a symlink pointed to when its file
    /// was last started (see [`Relay::rotation_places`]).
    targets: HashMap<PathBuf, PathBuf>,
}

impl Relay {
    /// Checks the configuration and prepares the relay; nothing is opened yet.
    pub fn new(cfg: Config, metrics: Metrics) -> Result<(Self, Control), RelayError> {
        if cfg.paths.is_empty() {
            return Err(RelayError::NoPaths);
        }
        let mut patterns = Vec::new();
        let mut literal_labels = HashSet::new();
        for p in &cfg.paths {
            if p.contains(['*', '?', '[']) {
                glob::Pattern::new(p).map_err(|e| RelayError::Pattern {
                    pattern: p.clone(),
                    reason: e.msg.to_string(),
                })?;
                patterns.push(Pattern::Glob(p.clone()));
            } else {
                literal_labels.insert(p.clone());
                patterns.push(Pattern::Literal(PathBuf::from(p)));
            }
        }
        let store = cfg.state_dir.as_deref().map(Store::open).transpose()?;
        let rules = Rules {
            max_line_bytes: cfg.max_line_bytes.max(1),
            multiline_start: cfg.multiline_start.clone(),
            multiline_timeout: cfg.multiline_timeout,
            blocks: cfg.format == Format::Raw && !cfg.prefix && cfg.multiline_start.is_none(),
        };
        let cfg_globs: Vec<glob::Pattern> = patterns
            .iter()
            .filter_map(|p| match p {
                Pattern::Glob(g) => glob::Pattern::new(g).ok(),
                Pattern::Literal(_) => None,
            })
            .collect();
        let (stop_rx, stop_tx) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_CLOEXEC)
                .map_err(|e| RelayError::Setup(std::io::Error::from(e)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let control = Control {
            stop: Arc::clone(&stop),
            wake: Arc::new(stop_tx),
        };
        let now = Instant::now();
        let relay = Self {
            cfg,
            rules,
            patterns,
            readers: Vec::new(),
            known: HashMap::new(),
            known_order: VecDeque::new(),
            saved_open: Vec::new(),
            saved_labels: HashSet::new(),
            literal_labels,
            metrics,
            store,
            stop,
            waiter: Waiter::new(stop_rx),
            notices: HashMap::new(),
            buf: vec![0; READ_CHUNK],
            last_data_any: now,
            dirty: false,
            last_checkpoint: now,
            initial_scan: true,
            seen_labels: HashSet::new(),
            vacated: HashMap::new(),
            deferred: HashMap::new(),
            read_contents: VecDeque::new(),
            started: SystemTime::now(),
            checkpoint_time: None,
            pinned: Vec::new(),
            early: Early::for_globs(cfg_globs),
            ledger: Ledger::default(),
            summary: Summary::default(),
            drain_deadline: None,
            targets: HashMap::new(),
        };
        Ok((relay, control))
    }

    /// Runs until [`Control::stop`] and the drain that follows; `ready` is
    /// called once the first scan is done.
    pub fn run<W: Write>(mut self, writer: W, ready: impl FnOnce()) -> Result<Summary, RelayError> {
        let mut output = Output::new(writer, self.cfg.format, self.cfg.prefix);
        let out = &mut output;
        if let Some(store) = &self.store {
            let saved = store.load()?;
            self.checkpoint_time = store.modified();
            if !saved.is_empty() {
                tracing::info!(
                    "resuming {} file(s) from checkpoint {}",
                    saved.len(),
                    store.path().display()
                );
            }
            self.restore(saved);
        }
        let mut now = Instant::now();
        out.set_read_time(SystemTime::now());
        self.check_paths(true, now, out)?;
        self.initial_scan = false;
        self.find_orphans(now, out)?;
        ready();

        let mut last_glob = now;
        let mut last_look = now;
        loop {
            let progress = self.read_all(now, out)?;
            out.flush().map_err(RelayError::Output)?;
            self.checkpoint_if_due(now);

            let draining = self.drain_deadline().is_some();
            if draining {
                let quiet =
                    !progress.budget_hit && now.duration_since(self.last_data_any) >= DRAIN_QUIET;
                if quiet {
                    break;
                }
                if self.out_of_time() {
                    self.summary.drain_timed_out = true;
                    tracing::warn!(
                        "drain timeout of {} passed while files were still being read or written; stopping anyway",
                        humantime::format_duration(self.cfg.drain_timeout)
                    );
                    break;
                }
            }
            let changes = if progress.budget_hit {
                self.waiter.events()
            } else {
                let wait = if draining {
                    Duration::from_millis(50)
                } else {
                    self.cfg.poll_interval
                };
                self.waiter.wait(wait, draining)
            };
            // Files that appeared are opened at once (they may be short-lived).
            self.early.appeared(&changes.appeared);
            now = Instant::now();
            out.set_read_time(SystemTime::now());
            // A file matching a glob appeared: scan now (it may be short-lived).
            let glob_due =
                now.duration_since(last_glob) >= self.cfg.glob_interval || self.take_glob_hit();
            if glob_due {
                last_glob = now;
            }
            // The followed paths are looked at when names changed, and every
            // poll interval anyway (events can be lost; NFS has none); a wake
            // by new data alone needs only the reads.
            let look = changes.names
                || glob_due
                || !self.waiter.notifies()
                || now.duration_since(last_look) >= self.cfg.poll_interval;
            if look {
                last_look = now;
                self.check_paths(glob_due, now, out)?;
            }
        }

        // Emit what is held (partial lines get their newline), then checkpoint.
        self.finish_all(out)?;
        out.flush().map_err(RelayError::Output)?;
        self.dirty = true;
        // The last checkpoint must be written: else a restart relays again
        // what was relayed since the one before (the exit status says so).
        self.save_checkpoint()
            .map_err(RelayError::FinalCheckpoint)?;
        self.metrics.files_open.set(0);
        Ok(self.summary)
    }

    /// When the drain must end, once a stop was asked for (the first call
    /// that sees the stop starts the drain).
    pub(super) fn drain_deadline(&mut self) -> Option<Instant> {
        if self.drain_deadline.is_none() && self.stop.load(Ordering::SeqCst) {
            tracing::info!(
                "stopping: relaying what is left (at most {})",
                humantime::format_duration(self.cfg.drain_timeout)
            );
            self.drain_deadline = Some(Instant::now() + self.cfg.drain_timeout);
        }
        self.drain_deadline
    }

    /// True once a stop was asked for and the drain timeout has passed:
    /// every read loop, however much is left in its file, stops there.
    pub(super) fn out_of_time(&mut self) -> bool {
        self.drain_deadline()
            .is_some_and(|deadline| Instant::now() >= deadline)
    }

    /// Remembers a reader being let go, so the file is not read twice.
    fn forget_reader(&mut self, r: Reader) {
        self.remember(
            r.id,
            Known {
                fp: FingerprintHash::of(&r.fp),
                offset: r.offset,
                before: Some(BeforeHash::of(r.tail.as_bytes())),
                born: r.born,
                label: r.label.to_string(),
                path: r.path,
            },
        );
        self.dirty = true;
    }

    fn update_lag(&self) {
        let mut lag: HashMap<&str, i64> = HashMap::new();
        for r in &self.readers {
            let behind = r.size.saturating_sub(r.framer.committed());
            *lag.entry(&r.label).or_default() += i64::try_from(behind).unwrap_or(i64::MAX);
        }
        for r in &self.readers {
            if let Some(v) = lag.remove(&*r.label) {
                r.metrics.lag.set(v);
            }
        }
    }

    fn remember(&mut self, id: FileId, known: Known) {
        if self.known.insert(id, known).is_none() {
            // Taken out of `known` earlier (resumed), it may still be listed.
            self.known_order.retain(|o| *o != id);
            self.known_order.push_back(id);
        }
        while self.known.len() > KNOWN_FILES {
            match self.known_order.pop_front() {
                Some(old) => {
                    self.known.remove(&old);
                }
                None => break,
            }
        }
        self.known_order.retain(|id| self.known.contains_key(id));
    }

    /// Reports files that appeared at `path` and were never read (see
    /// `loss.rs`): counted, with one warning per look that finds any.
    fn settle_losses(&mut self, label: &str, path: &Path, now: Instant, final_look: bool) {
        let drained = self.waiter.drained_before(now);
        let lost = self.ledger.settle(path, now, drained, final_look);
        if lost == 0 {
            return;
        }
        self.metrics
            .files_lost
            .get_or_create(&crate::metrics::FileLabel {
                file: label.to_string(),
            })
            .inc_by(lost);
        tracing::warn!(
            "{lost} file(s) that appeared at {label} were rotated away and deleted before the relay could read them; their lines are lost (the writer rotated faster than the relay read, or the relay was stopped or starved)"
        );
    }

    fn note(&mut self, key: &str, notice: Notice, message: std::fmt::Arguments<'_>) {
        if self.notices.get(key) != Some(&notice) {
            match notice {
                Notice::Missing | Notice::NoMatch => tracing::info!("{message}"),
                _ => tracing::warn!("{message}"),
            }
            if self.notices.len() > 4 * KNOWN_FILES {
                self.notices.clear();
            }
            self.notices.insert(key.to_string(), notice);
        }
    }
}

pub(super) fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

pub(super) fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.to_string_lossy().into_owned())
}

/// A relay following `path`, for unit tests of its parts.
#[cfg(test)]
pub(super) fn test_relay(path: &Path) -> Relay {
    let cfg = Config {
        paths: vec![path.to_string_lossy().into_owned()],
        ..Config::default()
    };
    let mut registry = prometheus_client::registry::Registry::default();
    let (relay, _) = Relay::new(cfg, Metrics::register(&mut registry)).unwrap();
    relay
}
