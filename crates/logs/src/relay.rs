//! The relay loop: finds files, notices rotation, reads, writes, checkpoints.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::time::{Duration, Instant, SystemTime};

use notify::{RecursiveMode, Watcher};
use regex::bytes::Regex;

use crate::checkpoint::{CheckpointError, Entry, Store};
use crate::framer::{Framer, Rules};
use crate::identity::{FileId, Fingerprint, ReadContent, Tail, read_full_at};
use crate::metrics::{FileMetrics, Metrics, RotationKind};
use crate::output::{Format, Output};

/// Read buffer size.
const READ_CHUNK: usize = 128 * 1024;
/// Most bytes read from one file per wake, so one busy file cannot starve the others.
const TICK_BUDGET: usize = 1024 * 1024;
/// How long all files must stay quiet before a draining relay exits.
const DRAIN_QUIET: Duration = Duration::from_millis(200);
/// How many let-go files are remembered (to resume them if they reappear).
const KNOWN_FILES: usize = 1024;
/// Directory entries looked at when searching for rotated files.
const DIR_SEARCH_LIMIT: usize = 10_000;
/// Most files held open ahead of their turn.
const MAX_PINNED: usize = 64;
/// Times a rotation is looked at again when the writer rotates once more
/// during each listing, before the files found are relayed in the order of
/// their age and number anyway.
const MAX_ROTATION_TRIES: u32 = 3;
/// Contents of truncated files remembered (see [`Relay::read_contents`]).
const READ_CONTENTS: usize = 16;
/// Rotated files with these endings are compressed: not relayed.
const COMPRESSED: [&str; 5] = [".gz", ".bz2", ".xz", ".zst", ".lz4"];

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
}

/// Asks a running relay to drain and stop.
#[derive(Debug, Clone)]
pub struct Control {
    stop: Arc<AtomicBool>,
    wake: SyncSender<()>,
}

impl Control {
    /// Starts the drain: keep reading until files are quiet, then exit.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.wake.try_send(());
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

enum Pattern {
    Literal(PathBuf),
    Glob(String),
}

/// One open file.
struct Reader {
    /// The followed path this file was found at: `file` in JSON, metrics label.
    label: Arc<str>,
    /// File name of the label, for `--prefix`.
    name: Arc<str>,
    /// Where the file is now, as far as we know.
    path: PathBuf,
    /// True while the file is the one at a followed path.
    attached: bool,
    id: FileId,
    file: File,
    fp: Fingerprint,
    /// The last bytes read (before `offset`).
    tail: Tail,
    /// Next byte to read.
    offset: u64,
    /// Size and modification time at the last look.
    size: u64,
    mtime: SystemTime,
    framer: Framer,
    last_data: Instant,
    metrics: FileMetrics,
    /// Committed offset already counted in the bytes metric.
    counted: u64,
    error_noted: bool,
    /// Times the file at the path moved on while the files rotated before it
    /// were listed (see [`Relay::rotated_before`]).
    rotation_tries: u32,
    /// Set when the reader starts a file at offset 0 after the first scan
    /// (with the time since which missed files count): before relaying the
    /// content, copies that later `copytruncate`s made meanwhile are
    /// relayed (see [`Relay::recheck_first_bytes`]).
    recheck_since: Option<SystemTime>,
}

impl Reader {
    /// A reader for `file` (found at `path`) that starts at `offset`.
    fn new(
        label: &str,
        path: PathBuf,
        file: File,
        offset: u64,
        metrics: &Metrics,
    ) -> io::Result<Self> {
        let meta = file.metadata()?;
        Ok(Self {
            name: Arc::from(file_name(Path::new(label))),
            label: Arc::from(label),
            path,
            attached: false,
            id: FileId::of(&meta),
            fp: Fingerprint::read(&file, offset)?,
            tail: Tail::read(&file, offset)?,
            offset,
            size: meta.len(),
            mtime: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            framer: Framer::new(offset),
            last_data: Instant::now(),
            metrics: metrics.for_file(label),
            counted: offset,
            error_noted: false,
            rotation_tries: 0,
            recheck_since: None,
            file,
        })
    }

    /// The file's last change: its mtime now, else at the last look.
    fn last_change(&self) -> SystemTime {
        self.file
            .metadata()
            .and_then(|m| m.modified())
            .unwrap_or(self.mtime)
    }
}

/// Files opened by the watcher's thread as they appear at followed paths.
#[derive(Default)]
struct Early {
    /// The followed paths (literal paths and the paths of followed files).
    paths: BTreeSet<PathBuf>,
    files: Vec<(PathBuf, File, FileId)>,
}

impl Early {
    fn opened(&mut self, paths: &[PathBuf]) {
        for path in paths {
            if !self.paths.contains(path) || self.files.len() >= MAX_PINNED {
                continue;
            }
            let Ok(file) = File::open(path) else {
                continue;
            };
            let Ok(meta) = file.metadata() else {
                continue;
            };
            let id = FileId::of(&meta);
            if meta.is_file() && !self.files.iter().any(|f| f.2 == id) {
                self.files.push((path.clone(), file, id));
            }
        }
    }
}

/// Which files [`Relay::recover_missed`] leaves to the followed file's reader.
#[derive(Clone, Copy)]
enum Skip<'a> {
    /// None: every missed file is relayed.
    Nothing,
    /// Copies (whole or in progress) of what the followed path holds now.
    CopiesOfPath,
    /// Copies of content that starts with these bytes.
    CopiesOf(&'a Fingerprint),
}

/// A file beside a followed one that may hold lines we never read.
struct Candidate {
    mtime: SystemTime,
    number: Option<u64>,
    path: PathBuf,
    id: FileId,
    /// The file, when it was opened before it was listed (pinned).
    file: Option<File>,
}

/// A file read before and let go (or saved in the checkpoint).
#[derive(Debug, Clone)]
struct Known {
    fp: Fingerprint,
    offset: u64,
    label: String,
    path: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Notice {
    Missing,
    NoMatch,
    Directory,
    NotRegular,
    Unreadable,
}

#[derive(Default)]
struct Progress {
    read_any: bool,
    budget_hit: bool,
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
    wake_tx: SyncSender<()>,
    wake_rx: Receiver<()>,
    watcher: Option<notify::RecommendedWatcher>,
    watched: HashSet<PathBuf>,
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
    /// Files the watcher opened the moment they appeared at a followed path
    /// (a writer that deletes its file may do so before the relay looks).
    early: Arc<std::sync::Mutex<Early>>,
    summary: Summary,
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
        let (wake_tx, wake_rx) = sync_channel(1);
        let stop = Arc::new(AtomicBool::new(false));
        let control = Control {
            stop: Arc::clone(&stop),
            wake: wake_tx.clone(),
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
            wake_tx,
            wake_rx,
            watcher: None,
            watched: HashSet::new(),
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
            early: Arc::default(),
            summary: Summary::default(),
        };
        Ok((relay, control))
    }

    /// Runs until [`Control::stop`] and the drain that follows; `ready` is
    /// called once the first scan is done.
    pub fn run<W: Write>(mut self, writer: W, ready: impl FnOnce()) -> Result<Summary, RelayError> {
        let mut output = Output::new(writer, self.cfg.format, self.cfg.prefix);
        let out = &mut output;
        self.start_watcher();
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
        let mut drain_started: Option<Instant> = None;
        loop {
            let progress = self.read_all(now, out)?;
            out.flush().map_err(RelayError::Output)?;
            self.checkpoint_if_due(now);

            if self.stop.load(Ordering::SeqCst) {
                let started = *drain_started.get_or_insert_with(|| {
                    tracing::info!(
                        "stopping: relaying what is left (at most {})",
                        humantime::format_duration(self.cfg.drain_timeout)
                    );
                    now
                });
                let quiet =
                    !progress.budget_hit && now.duration_since(self.last_data_any) >= DRAIN_QUIET;
                if quiet {
                    break;
                }
                if now.duration_since(started) >= self.cfg.drain_timeout {
                    self.summary.drain_timed_out = true;
                    tracing::warn!(
                        "drain timeout of {} passed while files were still being written; stopping anyway",
                        humantime::format_duration(self.cfg.drain_timeout)
                    );
                    break;
                }
            }
            if !progress.budget_hit {
                let wait = if drain_started.is_some() {
                    Duration::from_millis(50)
                } else {
                    self.cfg.poll_interval
                };
                match self.wake_rx.recv_timeout(wait) {
                    Ok(()) | Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => {}
                }
            }
            now = Instant::now();
            out.set_read_time(SystemTime::now());
            let glob_due = now.duration_since(last_glob) >= self.cfg.glob_interval;
            if glob_due {
                last_glob = now;
            }
            self.check_paths(glob_due, now, out)?;
        }

        // Emit what is held (partial lines get their newline), then checkpoint.
        let now = Instant::now();
        for i in 0..self.readers.len() {
            self.finish_reader(i, now, out)?;
        }
        out.flush().map_err(RelayError::Output)?;
        self.dirty = true;
        self.save_checkpoint();
        self.metrics.files_open.set(0);
        Ok(self.summary)
    }

    fn start_watcher(&mut self) {
        let tx = self.wake_tx.clone();
        let early = Arc::clone(&self.early);
        match notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if let Ok(event) = event {
                if matches!(
                    event.kind,
                    notify::EventKind::Create(_)
                        | notify::EventKind::Modify(notify::event::ModifyKind::Name(_))
                ) {
                    let mut early = early.lock().unwrap_or_else(|e| e.into_inner());
                    early.opened(&event.paths);
                }
            }
            let _ = tx.try_send(());
        }) {
            Ok(w) => self.watcher = Some(w),
            Err(e) => tracing::warn!(
                "file change notifications are not available ({e}); checking files every {} instead",
                humantime::format_duration(self.cfg.poll_interval)
            ),
        }
    }

    /// Watches the directories the patterns point into (those that exist).
    fn watch_pattern_dirs(&mut self) {
        let dirs: Vec<PathBuf> = self
            .patterns
            .iter()
            .map(|p| match p {
                Pattern::Literal(path) => parent_dir(path),
                Pattern::Glob(g) => glob_base_dir(g),
            })
            .collect();
        for dir in dirs {
            self.watch_dir(dir);
        }
    }

    fn watch_dir(&mut self, dir: PathBuf) {
        let Some(watcher) = self.watcher.as_mut() else {
            return;
        };
        if self.watched.contains(&dir) {
            return;
        }
        match watcher.watch(&dir, RecursiveMode::NonRecursive) {
            Ok(()) => {
                self.watched.insert(dir);
            }
            Err(e) => {
                tracing::debug!("cannot watch {}: {e}; polling it", dir.display());
            }
        }
    }

    // ---- finding files -------------------------------------------------

    /// Moves the files the watcher opened early to `pinned` (those not read
    /// yet), and tells it which paths to open early from now on.
    fn take_early(&mut self, paths: &BTreeSet<PathBuf>) {
        let opened = {
            let mut early = self.early.lock().unwrap_or_else(|e| e.into_inner());
            if early.paths != *paths {
                early.paths.clone_from(paths);
            }
            std::mem::take(&mut early.files)
        };
        for (path, file, id) in opened {
            if self.pinned.len() < MAX_PINNED
                && !self.pinned.iter().any(|p| p.2 == id)
                && !self.readers.iter().any(|r| r.id == id)
            {
                self.pinned.push((path, file, id));
            }
        }
    }

    /// Re-checks the followed paths: new files, rotated files, vanished files.
    fn check_paths<W: Write>(
        &mut self,
        glob_due: bool,
        now: Instant,
        out: &mut Output<W>,
    ) -> Result<(), RelayError> {
        if glob_due {
            self.watch_pattern_dirs();
        }
        let mut paths: BTreeSet<PathBuf> = BTreeSet::new();
        let mut unmatched = Vec::new();
        for pattern in &self.patterns {
            match pattern {
                Pattern::Literal(p) => {
                    paths.insert(p.clone());
                }
                Pattern::Glob(g) if glob_due => {
                    let before = paths.len();
                    if let Ok(entries) = glob::glob(g) {
                        for entry in entries.flatten() {
                            paths.insert(entry);
                        }
                    }
                    if paths.len() == before {
                        unmatched.push(g.clone());
                    }
                }
                Pattern::Glob(_) => {}
            }
        }
        for g in unmatched {
            self.note(
                &g,
                Notice::NoMatch,
                format_args!("no file matches {g} yet; waiting for one to appear"),
            );
        }
        for r in &self.readers {
            if r.attached {
                paths.insert(r.path.clone());
            }
        }
        self.take_early(&paths);
        for path in paths {
            self.check_path(&path, now, out)?;
        }
        Ok(())
    }

    fn check_path<W: Write>(
        &mut self,
        path: &Path,
        now: Instant,
        out: &mut Output<W>,
    ) -> Result<(), RelayError> {
        let attached = self
            .readers
            .iter()
            .position(|r| r.attached && r.path == path);
        let key = path.to_string_lossy().into_owned();
        let meta = match fs::metadata(path) {
            Ok(meta) => meta,
            Err(e) => {
                if e.kind() == io::ErrorKind::NotFound {
                    if let Some(i) = attached {
                        let label = Arc::clone(&self.readers[i].label);
                        let since = self.detach(i, now, out)?;
                        self.vacated.insert(label, since);
                    } else {
                        self.note(
                            &key,
                            Notice::Missing,
                            format_args!("{key} does not exist yet; waiting for it to appear"),
                        );
                    }
                } else if attached.is_none() {
                    // The open file (if any) is still read through its descriptor.
                    self.note(
                        &key,
                        Notice::Unreadable,
                        format_args!("cannot look at {key}: {e}; will retry"),
                    );
                }
                return Ok(());
            }
        };
        if meta.is_dir() {
            self.note(
                &key,
                Notice::Directory,
                format_args!(
                    "{key} is a directory, not a file; follow the files in it with a quoted glob such as '{key}/*.log'"
                ),
            );
            return Ok(());
        }
        if !meta.is_file() {
            self.note(
                &key,
                Notice::NotRegular,
                format_args!("{key} is not a regular file; skipping it"),
            );
            return Ok(());
        }
        if attached.is_some_and(|i| self.readers[i].id == FileId::of(&meta)) {
            return Ok(());
        }
        // Hold what is at the path now before catching up on anything else:
        // once open, it cannot vanish, whatever the writer does meanwhile.
        let Some((file, meta)) = self.open_at(path) else {
            return Ok(());
        };
        let id = FileId::of(&meta);
        let held = self.take_held(path, id);
        let Some(i) = attached else {
            for (f, _) in held {
                let label: Arc<str> = Arc::from(key.as_str());
                self.relay_rotated_file(&label, path.to_path_buf(), f, now, out)?;
            }
            return self.start_reader(path, file, &meta, now, out);
        };
        // Another file now has the path: the old one was rotated. Files
        // rotated between the two are listed before anything is read, and
        // only if `id` is still at the path afterwards: files the writer
        // rotates later, while we read, come after `id`, not before it.
        let label = Arc::clone(&self.readers[i].label);
        // Copies older than the old file's content, if it has not looked yet.
        self.recheck_first_bytes(i, now, out)?;
        let since = self.look_back(i);
        // When the writer rotated again while we listed, look again next
        // tick; a writer that outruns every listing gets its files in the
        // order found (by age and number) after a few tries.
        let force = self.readers[i].rotation_tries >= MAX_ROTATION_TRIES;
        let Some(between) = self.rotated_before(&label, since, id, held, force) else {
            self.readers[i].rotation_tries += 1;
            return Ok(());
        };
        self.deferred.remove(&label);
        self.let_go(i, now, out)?;
        for (p, f) in between {
            self.relay_rotated_file(&label, p, f, now, out)?;
        }
        // Files rotated while we read those, as long as `id` is at the path.
        self.recover_missed(&label, since, Skip::Nothing, &[id], Some(id), now, out)?;
        self.start_reader(path, file, &meta, now, out)
    }

    /// True when `file` (inode `id`) is being read, or was read and still
    /// starts as it did.
    fn was_read(&self, id: FileId, file: &File) -> bool {
        self.readers.iter().any(|r| r.id == id)
            || self
                .known
                .get(&id)
                .is_some_and(|k| k.fp.matches(file).unwrap_or(false))
    }

    /// Takes the files pinned for `path` (seen there between two checks)
    /// that are neither `current` nor read already.
    fn take_held(&mut self, path: &Path, current: FileId) -> Vec<(File, FileId)> {
        let mut held = Vec::new();
        let mut i = 0;
        while i < self.pinned.len() {
            if self.pinned[i].0 == path {
                let (_, f, pid) = self.pinned.remove(i);
                if pid != current && !self.was_read(pid, &f) {
                    held.push((f, pid));
                }
            } else {
                i += 1;
            }
        }
        held
    }

    /// The files rotated away from `label` since `since`, before `anchor`
    /// (the file at the path now) and not read yet, oldest first and opened:
    /// the files listed beside the path, with the `held` files (pinned there
    /// earlier; those no longer beside it keep their order). `None`, with
    /// `held` pinned again, when `anchor` left the path while we listed (some
    /// files listed may then be newer than it), unless `force`.
    fn rotated_before(
        &mut self,
        label: &Arc<str>,
        since: SystemTime,
        anchor: FileId,
        held: Vec<(File, FileId)>,
        force: bool,
    ) -> Option<Vec<(PathBuf, File)>> {
        let label_path = Path::new(&**label);
        let mut found = self.list_missed(label_path, since, None, &[anchor]);
        if !force && !at_path(label_path, anchor) {
            for (f, id) in held {
                self.pinned.push((label_path.to_path_buf(), f, id));
            }
            return None;
        }
        tracing::debug!(
            "{label}: rotated before inode {}: inodes {:?} listed, {:?} held",
            anchor.ino,
            found.iter().map(|c| c.id.ino).collect::<Vec<_>>(),
            held.iter().map(|h| h.1.ino).collect::<Vec<_>>()
        );
        let mut unlisted = Vec::new();
        for (f, id) in held {
            match found.iter_mut().find(|c| c.id == id) {
                Some(c) => c.file = Some(f),
                None => unlisted.push((label_path.to_path_buf(), f)),
            }
        }
        unlisted.extend(open_candidates(found));
        Some(unlisted)
    }

    /// Opens the file at `path`, noting (once) why not if it cannot.
    fn open_at(&mut self, path: &Path) -> Option<(File, fs::Metadata)> {
        let opened = File::open(path).and_then(|f| {
            let meta = f.metadata()?;
            Ok((f, meta))
        });
        match opened {
            Ok(pair) => Some(pair),
            Err(e) => {
                let key = path.to_string_lossy().into_owned();
                self.metrics.for_file(&key).read_errors.inc();
                self.note(
                    &key,
                    Notice::Unreadable,
                    format_args!("cannot open {key}: {e}; will retry"),
                );
                None
            }
        }
    }

    /// Starts following a file found at a followed path; a reader already
    /// reading it (a file renamed into a match, or a second link) keeps its
    /// place instead, never starting over.
    fn start_reader<W: Write>(
        &mut self,
        path: &Path,
        file: File,
        meta: &fs::Metadata,
        now: Instant,
        out: &mut Output<W>,
    ) -> Result<(), RelayError> {
        let id = FileId::of(meta);
        if let Some(r) = self.readers.iter_mut().find(|r| r.id == id) {
            if !r.attached {
                r.attached = true;
                r.path = path.to_path_buf();
            }
            return Ok(());
        }
        let key = path.to_string_lossy().into_owned();
        self.notices.remove(&key);
        let size = meta.len();
        let (offset, how) = match self.take_known(id, &file, size) {
            Some(offset) => (offset, "resuming"),
            None if self.initial_scan
                && self.cfg.from == StartAt::End
                && !self.saved_labels.contains(&key) =>
            {
                (end_of_last_line(&file, size), "from its end")
            }
            None => (0, "from the beginning"),
        };
        let mut reader = match Reader::new(&key, path.to_path_buf(), file, offset, &self.metrics) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("cannot read {key}: {e}; will retry");
                return Ok(());
            }
        };
        reader.attached = true;
        tracing::info!("following {key} {how} (offset {offset})");
        tracing::debug!("{key}: following inode {}", reader.id.ino);
        let first = self.seen_labels.insert(Arc::clone(&reader.label));
        let vacated = self.vacated.remove(&reader.label);
        let since = if first && !self.initial_scan {
            // The first file at this path: files rotated away before it (while
            // we waited for the path) hold earlier lines.
            let since = self.started;
            self.recover_missed(
                &reader.label,
                since,
                Skip::CopiesOfPath,
                &[id],
                Some(id),
                now,
                out,
            )?;
            Some(since)
        } else if let Some(since) = vacated {
            // The path was empty for a while: the writer may have rotated
            // several files through it before this one stayed.
            self.recover_missed(
                &reader.label,
                since,
                Skip::Nothing,
                &[id],
                Some(id),
                now,
                out,
            )?;
            Some(since)
        } else {
            None
        };
        if offset == 0 {
            // What the file holds at its first read may already come after
            // a `copytruncate` made since the listing above.
            reader.recheck_since = since;
        }
        self.readers.push(reader);
        self.metrics.files_open.set(self.readers.len() as i64);
        self.dirty = true;
        self.watch_dir(parent_dir(path));
        Ok(())
    }

    /// The offset to resume `file` at, if we read it before (same inode, same first bytes).
    fn take_known(&mut self, id: FileId, file: &File, size: u64) -> Option<u64> {
        let known = self.known.get(&id)?;
        let same = known.fp.len() as u64 <= size
            && known.offset <= size
            && known.fp.matches(file).unwrap_or(false);
        if !same {
            // The inode was reused by a new file, or the file was rewritten.
            return None;
        }
        let offset = known.offset;
        self.known.remove(&id);
        self.saved_open.retain(|e| e.id != id);
        Some(offset)
    }

    /// The file at a followed path was removed. Read the old file to its end
    /// through its descriptor (it stays open a while for late writes), then
    /// any file rotated away before we could open it. Returns the old file's
    /// last change.
    fn detach<W: Write>(
        &mut self,
        i: usize,
        now: Instant,
        out: &mut Output<W>,
    ) -> Result<SystemTime, RelayError> {
        let since = self.look_back(i);
        self.let_go(i, now, out)?;
        let label = Arc::clone(&self.readers[i].label);
        self.deferred.remove(&label);
        self.recover_missed(&label, since, Skip::Nothing, &[], None, now, out)?;
        Ok(since)
    }

    /// How far back to look for files rotated away after reader `i`'s file:
    /// its last change, or earlier if files were left for later.
    fn look_back(&self, i: usize) -> SystemTime {
        let r = &self.readers[i];
        let since = r.last_change();
        match self.deferred.get(&r.label) {
            Some(&earlier) => since.min(earlier),
            None => since,
        }
    }

    /// Reader `i`'s file is no longer at its path: note the rotation and
    /// read the file to its end.
    fn let_go<W: Write>(
        &mut self,
        i: usize,
        now: Instant,
        out: &mut Output<W>,
    ) -> Result<(), RelayError> {
        let r = &mut self.readers[i];
        r.attached = false;
        let kind = match r.file.metadata() {
            Ok(m) if m.nlink() == 0 => RotationKind::Delete,
            _ => RotationKind::Rename,
        };
        if *r.path == *Path::new(&*r.label) {
            self.metrics.rotation(&r.label, kind);
            tracing::info!(
                "{} was rotated ({}); finishing the old file before the new one",
                r.label,
                match kind {
                    RotationKind::Delete => "deleted",
                    _ => "renamed",
                }
            );
        }
        self.dirty = true;
        self.drain_reader(i, now, out)
    }

    /// Reads reader `i` to the end of its file, whatever the tick budget.
    fn drain_reader<W: Write>(
        &mut self,
        i: usize,
        now: Instant,
        out: &mut Output<W>,
    ) -> Result<(), RelayError> {
        while self.poll_reader(i, now, out)?.budget_hit {}
        Ok(())
    }

    /// Relays, oldest first, files beside `label` (named like it: `app.log.1`,
    /// `app.log-20260101`) that changed since `since` and that we never read:
    /// files rotated away before the relay could open them.
    ///
    /// With `copytruncate`, a copy of what the followed file holds now is
    /// skipped (`skip`): the reader of the followed file
    /// relays that content, and finishes it from the copy after the truncation.
    ///
    /// With an `anchor` (the file at the path now, read next), a listing
    /// counts only if the anchor is still at the path after it: files the
    /// writer rotates after the anchor are newer and wait for it.
    #[allow(clippy::too_many_arguments)]
    fn recover_missed<W: Write>(
        &mut self,
        label: &Arc<str>,
        since: SystemTime,
        skip: Skip<'_>,
        exclude: &[FileId],
        anchor: Option<FileId>,
        now: Instant,
        out: &mut Output<W>,
    ) -> Result<(), RelayError> {
        let label_path = Path::new(&**label);
        // Again after reading, for files rotated meanwhile.
        for _ in 0..100 {
            let of_path;
            let current = match skip {
                Skip::Nothing => None,
                Skip::CopiesOf(fp) => Some(fp),
                Skip::CopiesOfPath => {
                    of_path = File::open(label_path)
                        .and_then(|f| Fingerprint::read(&f, u64::MAX))
                        .unwrap_or_default();
                    Some(&of_path)
                }
            };
            let found = self.list_missed(label_path, since, current, exclude);
            if found.is_empty() {
                break;
            }
            if anchor.is_some_and(|a| !at_path(label_path, a)) {
                // Some may be older than the anchor: the next rotation of
                // this label looks back to `since` (nothing is lost).
                let t = self.deferred.entry(Arc::clone(label)).or_insert(since);
                *t = (*t).min(since);
                break;
            }
            for (path, file) in open_candidates(found) {
                self.relay_rotated_file(label, path, file, now, out)?;
            }
        }
        Ok(())
    }

    /// Files [`Relay::missed_candidates`] finds in two listings: a listing
    /// can miss a file renamed while it is read.
    fn list_missed(
        &self,
        label_path: &Path,
        since: SystemTime,
        current: Option<&Fingerprint>,
        exclude: &[FileId],
    ) -> Vec<Candidate> {
        let mut found = self.missed_candidates(label_path, since, current, exclude);
        for extra in self.missed_candidates(label_path, since, current, exclude) {
            if !found.iter().any(|c| c.id == extra.id) {
                found.push(extra);
            }
        }
        found
    }

    /// Relays a whole file that was rotated away before we followed it.
    fn relay_rotated_file<W: Write>(
        &mut self,
        label: &Arc<str>,
        path: PathBuf,
        file: File,
        now: Instant,
        out: &mut Output<W>,
    ) -> Result<(), RelayError> {
        // A copy of a truncated file's content that we relayed (a copy that
        // was not there yet when the truncation was handled) goes on from
        // where that content was relayed to.
        let start = self
            .read_contents
            .iter()
            .rev()
            .find(|c| c.is_in(&file).unwrap_or(false))
            .map_or(0, ReadContent::end);
        let Ok(reader) = Reader::new(label, path, file, start, &self.metrics) else {
            return Ok(());
        };
        // Listed or held before something else read it (then it is known).
        if self.was_read(reader.id, &reader.file) {
            return Ok(());
        }
        if start > 0 {
            tracing::info!(
                "{label}: {} is a copy of content relayed up to byte {start}; relaying what follows",
                reader.path.display()
            );
        } else {
            tracing::info!(
                "{label}: {} was rotated away before the relay could follow it; relaying it now",
                reader.path.display()
            );
        }
        tracing::debug!(
            "{label}: relaying inode {} from byte {start}",
            reader.id.ino
        );
        self.metrics.rotation(label, RotationKind::Rename);
        self.readers.push(reader);
        let j = self.readers.len() - 1;
        self.drain_reader(j, now, out)?;
        self.finish_reader(j, now, out)?;
        if let Some(r) = self.readers.pop() {
            self.forget_reader(r);
        }
        Ok(())
    }

    /// Opens (without reading) files that replaced followed files since the
    /// last check, so they are still there when we get to them. Called while
    /// a long read is under way.
    fn pin_new_files(&mut self) {
        for i in 0..self.readers.len() {
            let r = &self.readers[i];
            if !r.attached || self.pinned.len() >= MAX_PINNED {
                continue;
            }
            let Ok(meta) = fs::metadata(&r.path) else {
                continue;
            };
            let id = FileId::of(&meta);
            if id == r.id
                || self.pinned.iter().any(|p| p.2 == id)
                || self.readers.iter().any(|o| o.id == id)
            {
                continue;
            }
            let path = r.path.clone();
            if let Ok(f) = File::open(&path) {
                if f.metadata().is_ok_and(|m| FileId::of(&m) == id) {
                    self.pinned.push((path, f, id));
                }
            }
        }
    }

    /// One listing for [`Relay::recover_missed`].
    fn missed_candidates(
        &self,
        label_path: &Path,
        since: SystemTime,
        current: Option<&Fingerprint>,
        exclude: &[FileId],
    ) -> Vec<Candidate> {
        let base = file_name(label_path);
        let Ok(entries) = fs::read_dir(parent_dir(label_path)) else {
            return Vec::new();
        };
        let mut found = Vec::new();
        for entry in entries.flatten().take(DIR_SEARCH_LIMIT) {
            let fname = entry.file_name().to_string_lossy().into_owned();
            if fname == base
                || !fname.starts_with(&base)
                || COMPRESSED.iter().any(|c| fname.ends_with(c))
            {
                continue;
            }
            let path = entry.path();
            let Ok(meta) = fs::metadata(&path) else {
                continue;
            };
            let id = FileId::of(&meta);
            let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            if !meta.is_file()
                || mtime < since
                || exclude.contains(&id)
                || self.pinned.iter().any(|p| p.2 == id)
                || self.known.contains_key(&id)
                || self.readers.iter().any(|r| r.id == id)
            {
                continue;
            }
            if current.is_some_and(|current| {
                !current.is_empty()
                    && File::open(&path)
                        .is_ok_and(|f| current.shares_start_with(&f).unwrap_or(false))
            }) {
                continue;
            }
            found.push(Candidate {
                mtime,
                number: rotation_number(&fname[base.len()..]),
                path,
                id,
                file: None,
            });
        }
        found
    }

    /// Remembers a reader being let go, so the file is not read twice.
    fn forget_reader(&mut self, r: Reader) {
        self.remember(
            r.id,
            Known {
                fp: r.fp,
                offset: r.offset,
                label: r.label.to_string(),
                path: r.path,
            },
        );
        self.dirty = true;
    }

    // ---- reading ------------------------------------------------------------

    fn read_all<W: Write>(
        &mut self,
        now: Instant,
        out: &mut Output<W>,
    ) -> Result<Progress, RelayError> {
        let mut progress = Progress::default();
        // Labels whose older file still has unread bytes: newer files of the
        // same label wait, so lines keep their order across a rotation.
        let mut held_back: Vec<Arc<str>> = Vec::new();
        for i in 0..self.readers.len() {
            if held_back.contains(&self.readers[i].label) {
                progress.budget_hit = true;
                continue;
            }
            let p = self.poll_reader(i, now, out)?;
            if p.read_any {
                progress.read_any = true;
                self.last_data_any = now;
            }
            if p.budget_hit {
                progress.budget_hit = true;
                held_back.push(Arc::clone(&self.readers[i].label));
            }
            let r = &mut self.readers[i];
            let mut sink = out.for_file(&r.label, &r.name);
            r.framer
                .flush_stale(&self.rules, now, &mut sink)
                .map_err(RelayError::Output)?;
            account(r, &mut self.summary);
        }
        self.retire_quiet(now, out)?;
        self.update_lag();
        Ok(progress)
    }

    /// Reads what is new in one file.
    fn poll_reader<W: Write>(
        &mut self,
        i: usize,
        now: Instant,
        out: &mut Output<W>,
    ) -> Result<Progress, RelayError> {
        let mut progress = Progress::default();
        let (size, mtime) = match self.readers[i].file.metadata() {
            Ok(m) => (m.len(), m.modified().unwrap_or(SystemTime::UNIX_EPOCH)),
            Err(e) => {
                self.read_error(i, &e);
                return Ok(progress);
            }
        };
        let r = &self.readers[i];
        // Shorter than what we read: truncated. Changed, and no longer
        // starting as it did: truncated and written again, maybe as far as
        // before (then there is nothing new to read that would show it).
        if size < r.offset || (mtime != r.mtime && !r.fp.matches(&r.file).unwrap_or(true)) {
            self.truncated(i, now, out)?;
        }
        self.readers[i].size = size;
        self.readers[i].mtime = mtime;
        self.recheck_first_bytes(i, now, out)?;
        let mut budget = TICK_BUDGET;
        let mut chunks = 0u32;
        while budget > 0 {
            let r = &mut self.readers[i];
            let want = self.buf.len().min(budget);
            let n = match read_at(&r.file, &mut self.buf[..want], r.offset) {
                Ok(n) => n,
                Err(e) => {
                    self.read_error(i, &e);
                    break;
                }
            };
            if n == 0 {
                break;
            }
            // The bytes count only if the file still starts as it did: otherwise
            // it was truncated and rewritten between two looks (copytruncate).
            if !r.fp.matches(&r.file).unwrap_or(true) {
                self.truncated(i, now, out)?;
                continue;
            }
            let r = &mut self.readers[i];
            r.error_noted = false;
            r.fp.extend(r.offset, &self.buf[..n]);
            r.tail.push(&self.buf[..n]);
            let mut sink = out.for_file(&r.label, &r.name);
            r.framer
                .push(&self.rules, &self.buf[..n], now, &mut sink)
                .map_err(RelayError::Output)?;
            r.offset += n as u64;
            r.size = r.size.max(r.offset);
            r.last_data = now;
            account(r, &mut self.summary);
            budget -= n;
            progress.read_any = true;
            self.dirty = true;
            chunks += 1;
            if chunks % 8 == 0 {
                self.pin_new_files();
            }
        }
        if budget == 0 {
            progress.budget_hit = true;
        }
        Ok(progress)
    }

    /// A reader that starts a file at offset 0 (new, or over after a
    /// truncation) cannot tell from the file alone whether what it holds at
    /// the first read follows what came before, or comes after more
    /// `copytruncate`s (made while the relay looked elsewhere). Once the
    /// file has its first bytes, copies not starting with them that changed
    /// since the old content are relayed first, oldest first; the
    /// fingerprint taken here then guards the reads that follow.
    fn recheck_first_bytes<W: Write>(
        &mut self,
        i: usize,
        now: Instant,
        out: &mut Output<W>,
    ) -> Result<(), RelayError> {
        let r = &mut self.readers[i];
        let Some(since) = r.recheck_since else {
            return Ok(());
        };
        if r.offset != 0 {
            r.recheck_since = None;
            return Ok(());
        }
        let fp = match Fingerprint::read(&r.file, u64::MAX) {
            Ok(fp) if !fp.is_empty() => fp,
            // Nothing written yet: look again once something is.
            _ => return Ok(()),
        };
        r.recheck_since = None;
        r.fp = fp.clone();
        let (label, id) = (Arc::clone(&r.label), r.id);
        self.recover_missed(&label, since, Skip::CopiesOf(&fp), &[id], None, now, out)
    }

    fn read_error(&mut self, i: usize, e: &io::Error) {
        let r = &mut self.readers[i];
        r.metrics.read_errors.inc();
        if !r.error_noted {
            r.error_noted = true;
            tracing::warn!("cannot read {}: {e}; will retry", r.path.display());
        }
    }

    /// The file shrank or was rewritten in place. Finish its old content from
    /// the copy a `copytruncate` left beside it, then start over at offset 0.
    fn truncated<W: Write>(
        &mut self,
        i: usize,
        now: Instant,
        out: &mut Output<W>,
    ) -> Result<(), RelayError> {
        let (label, dir, old_offset, old_fp, seen_size, id, old_mtime) = {
            let r = &self.readers[i];
            (
                Arc::clone(&r.label),
                parent_dir(&r.path),
                r.offset,
                r.fp.clone(),
                r.size,
                r.id,
                r.mtime,
            )
        };
        self.metrics.rotation(&label, RotationKind::Truncate);
        let mut read_to = old_offset;
        let copy = if old_fp.is_empty() {
            None
        } else {
            find_copy(&dir, &old_fp, old_offset, id)
        };
        match copy {
            Some((copy_file, copy_path)) => {
                let copy_id = copy_file.metadata().map(|m| FileId::of(&m)).ok();
                let in_use = copy_id.is_some_and(|cid| self.readers.iter().any(|r| r.id == cid));
                if in_use {
                    tracing::info!(
                        "{label} was truncated; its copy {} is already followed",
                        copy_path.display()
                    );
                } else {
                    tracing::info!(
                        "{label} was truncated; finishing its old content from {}",
                        copy_path.display()
                    );
                    let end = self.read_copy(i, &copy_file, old_offset, now, out)?;
                    read_to = end;
                    if let Some(cid) = copy_id {
                        let fp = Fingerprint::read(&copy_file, end).unwrap_or_default();
                        self.remember(
                            cid,
                            Known {
                                fp,
                                offset: end,
                                label: label.to_string(),
                                path: copy_path,
                            },
                        );
                    }
                }
            }
            None => {
                let lost = seen_size.saturating_sub(old_offset);
                if lost > 0 {
                    self.readers[i].metrics.bytes_lost.inc_by(lost);
                    tracing::warn!(
                        "{label} was truncated before its last {lost} bytes could be read, and no copy of it was found in {}; those bytes are lost",
                        dir.display()
                    );
                } else {
                    tracing::info!("{label} was truncated; reading it from the start");
                }
            }
        }
        self.finish_reader(i, now, out)?;
        let tail = std::mem::take(&mut self.readers[i].tail);
        if let Some(content) = ReadContent::new(old_fp, tail, read_to) {
            if self.read_contents.len() >= READ_CONTENTS {
                self.read_contents.pop_front();
            }
            self.read_contents.push_back(content);
        }
        // Copies made by later rotations we did not see come next.
        self.recover_missed(&label, old_mtime, Skip::CopiesOfPath, &[id], None, now, out)?;
        let r = &mut self.readers[i];
        r.framer.restart_at(0);
        r.counted = 0;
        r.offset = 0;
        r.size = 0;
        r.fp = Fingerprint::default();
        r.recheck_since = Some(old_mtime);
        self.dirty = true;
        Ok(())
    }

    /// Reads `copy` from `offset` to its end as the continuation of reader `i`.
    fn read_copy<W: Write>(
        &mut self,
        i: usize,
        copy: &File,
        mut offset: u64,
        now: Instant,
        out: &mut Output<W>,
    ) -> Result<u64, RelayError> {
        loop {
            let n = match read_at(copy, &mut self.buf, offset) {
                Ok(n) => n,
                Err(e) => {
                    self.read_error(i, &e);
                    break;
                }
            };
            if n == 0 {
                break;
            }
            let r = &mut self.readers[i];
            r.tail.push(&self.buf[..n]);
            let mut sink = out.for_file(&r.label, &r.name);
            r.framer
                .push(&self.rules, &self.buf[..n], now, &mut sink)
                .map_err(RelayError::Output)?;
            account(r, &mut self.summary);
            offset += n as u64;
        }
        Ok(offset)
    }

    /// Lets go of rotated files that were read to their end and stayed quiet.
    fn retire_quiet<W: Write>(
        &mut self,
        now: Instant,
        out: &mut Output<W>,
    ) -> Result<(), RelayError> {
        let mut i = 0;
        while i < self.readers.len() {
            let r = &self.readers[i];
            let quiet = now.duration_since(r.last_data) >= self.cfg.rotate_wait;
            if !r.attached && quiet && r.offset >= r.size {
                self.finish_reader(i, now, out)?;
                let r = self.readers.remove(i);
                tracing::debug!(
                    "done with the rotated file {} of {}",
                    r.path.display(),
                    r.label
                );
                let label = Arc::clone(&r.label);
                self.forget_reader(r);
                if !self.literal_labels.contains(&*label)
                    && !self.readers.iter().any(|o| o.label == label)
                {
                    self.metrics.forget_file(&label);
                }
                self.metrics.files_open.set(self.readers.len() as i64);
                self.dirty = true;
            } else {
                i += 1;
            }
        }
        Ok(())
    }

    fn finish_reader<W: Write>(
        &mut self,
        i: usize,
        now: Instant,
        out: &mut Output<W>,
    ) -> Result<(), RelayError> {
        let r = &mut self.readers[i];
        let mut sink = out.for_file(&r.label, &r.name);
        r.framer
            .finish(&self.rules, now, &mut sink)
            .map_err(RelayError::Output)?;
        account(r, &mut self.summary);
        Ok(())
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

    // ---- checkpoints ----------------------------------------------------------

    /// Loads a checkpoint: files are resumed when found again with the same
    /// identity; the others are looked for as rotated files after the first scan.
    fn restore(&mut self, saved: Vec<Entry>) {
        for entry in saved {
            self.saved_labels.insert(entry.label.clone());
            let known = Known {
                fp: entry.fingerprint(),
                offset: entry.offset,
                label: entry.label.clone(),
                path: entry.path.clone(),
            };
            if entry.open {
                self.saved_open.push(entry.clone());
            }
            self.remember(entry.id, known);
        }
    }

    /// After the first scan: files from the checkpoint that were not found
    /// again at a followed path were rotated while the relay was down. Find
    /// each beside its old path (same inode and first bytes, or a copy with the
    /// same first bytes), relay it from the saved offset, then relay the files
    /// rotated after it, all before the files now at the followed paths.
    fn find_orphans<W: Write>(
        &mut self,
        now: Instant,
        out: &mut Output<W>,
    ) -> Result<(), RelayError> {
        let orphans = std::mem::take(&mut self.saved_open);
        // Per label: files rotated after the last of its orphans come after all of them.
        let mut after: Vec<(Arc<str>, SystemTime, bool)> = Vec::new();
        for entry in orphans {
            let fp = entry.fingerprint();
            let dir = parent_dir(&entry.path);
            let label: Arc<str> = Arc::from(entry.label.as_str());
            let by_inode = find_by_inode(&dir, entry.id, &fp, entry.offset);
            let by_copy = by_inode.is_none();
            let located = by_inode.or_else(|| find_copy(&dir, &fp, entry.offset, entry.id));
            let since = match located {
                Some((file, path)) => {
                    let Ok(reader) = Reader::new(&label, path, file, entry.offset, &self.metrics)
                    else {
                        continue;
                    };
                    if self.readers.iter().any(|r| r.id == reader.id) {
                        continue;
                    }
                    tracing::info!(
                        "{label} was rotated while the relay was down; finishing {} from byte {}",
                        reader.path.display(),
                        entry.offset
                    );
                    self.known.remove(&entry.id);
                    let since = reader.mtime;
                    self.readers.push(reader);
                    let j = self.readers.len() - 1;
                    self.drain_reader(j, now, out)?;
                    self.finish_reader(j, now, out)?;
                    if let Some(r) = self.readers.pop() {
                        self.forget_reader(r);
                    }
                    since
                }
                None => {
                    tracing::warn!(
                        "{label} was read up to byte {} before the relay stopped, then rotated away; no file in {} has its content, so lines written to it after that may be lost",
                        entry.offset,
                        dir.display()
                    );
                    self.checkpoint_time.unwrap_or(self.started)
                }
            };
            match after.iter_mut().find(|(l, _, _)| *l == label) {
                Some((_, t, c)) => {
                    *t = (*t).max(since);
                    *c |= by_copy;
                }
                None => after.push((label, since, by_copy)),
            }
        }
        for (label, since, by_copy) in after {
            let skip = if by_copy {
                Skip::CopiesOfPath
            } else {
                Skip::Nothing
            };
            self.recover_missed(&label, since, skip, &[], None, now, out)?;
        }
        self.metrics.files_open.set(self.readers.len() as i64);
        Ok(())
    }

    fn checkpoint_if_due(&mut self, now: Instant) {
        if self.dirty && now.duration_since(self.last_checkpoint) >= Duration::from_secs(1) {
            self.last_checkpoint = now;
            self.save_checkpoint();
        }
    }

    /// Saves offsets of bytes already flushed to stdout. Call after flushing.
    fn save_checkpoint(&mut self) {
        let Some(store) = &self.store else { return };
        if !self.dirty {
            return;
        }
        let mut entries: Vec<Entry> = self
            .readers
            .iter()
            .map(|r| Entry {
                label: r.label.to_string(),
                path: r.path.clone(),
                id: r.id,
                fingerprint: r.fp.to_hex(),
                offset: r.framer.committed(),
                open: true,
            })
            .collect();
        for id in &self.known_order {
            if let Some(k) = self.known.get(id) {
                entries.push(Entry {
                    label: k.label.clone(),
                    path: k.path.clone(),
                    id: *id,
                    fingerprint: k.fp.to_hex(),
                    offset: k.offset,
                    open: false,
                });
            }
        }
        // Files from the checkpoint not found yet stay in it.
        entries.extend(self.saved_open.iter().cloned());
        match store.save(entries) {
            Ok(()) => {
                self.metrics.checkpoints.inc();
                self.dirty = false;
            }
            Err(e) => {
                self.metrics.checkpoint_errors.inc();
                tracing::warn!("{e}");
            }
        }
    }
}

/// Moves what the framer emitted into the metrics and the summary.
fn account(r: &mut Reader, summary: &mut Summary) {
    let stats = r.framer.take_stats();
    if stats.records > 0 {
        r.metrics.lines.inc_by(stats.records);
        summary.records += stats.records;
    }
    if stats.splits > 0 {
        r.metrics.lines_split.inc_by(stats.splits);
    }
    let committed = r.framer.committed();
    if committed > r.counted {
        let bytes = committed - r.counted;
        r.metrics.bytes.inc_by(bytes);
        summary.bytes += bytes;
        r.counted = committed;
    }
}

fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    use std::os::unix::fs::FileExt;
    loop {
        match file.read_at(buf, offset) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            other => return other,
        }
    }
}

/// Sorts `found` oldest first (for equal times `app.log.2` before
/// `app.log.1`) and opens them all before reading any: names shift with each
/// rotation. A name that already belongs to another file is skipped; the
/// next listing finds that file under its new name.
fn open_candidates(mut found: Vec<Candidate>) -> Vec<(PathBuf, File)> {
    found.sort_by(|a, b| {
        a.mtime
            .cmp(&b.mtime)
            .then_with(|| match (a.number, b.number) {
                (Some(x), Some(y)) => y.cmp(&x),
                _ => a.path.cmp(&b.path),
            })
    });
    found
        .into_iter()
        .filter_map(|c| {
            if let Some(file) = c.file {
                return Some((c.path, file));
            }
            let file = File::open(&c.path).ok()?;
            let same = file.metadata().is_ok_and(|m| FileId::of(&m) == c.id);
            same.then_some((c.path, file))
        })
        .collect()
}

/// True when the file at `path` is `id`.
fn at_path(path: &Path, id: FileId) -> bool {
    fs::metadata(path).is_ok_and(|m| FileId::of(&m) == id)
}

/// The file in `dir` with inode `id` that still starts with `fp` and has at least `len` bytes.
fn find_by_inode(dir: &Path, id: FileId, fp: &Fingerprint, len: u64) -> Option<(File, PathBuf)> {
    dir_entries(dir).into_iter().find_map(|p| {
        let m = fs::metadata(&p).ok()?;
        if !m.is_file() || FileId::of(&m) != id || m.len() < len {
            return None;
        }
        let f = File::open(&p).ok()?;
        fp.matches(&f).ok()?.then_some((f, p))
    })
}

/// The paths in `dir` (up to [`DIR_SEARCH_LIMIT`]), from two listings: a
/// listing can miss a file renamed while it is read (a rotation shifting
/// `app.log.1` to `app.log.2`).
fn dir_entries(dir: &Path) -> Vec<PathBuf> {
    let list = || -> Vec<PathBuf> {
        fs::read_dir(dir)
            .map(|entries| {
                entries
                    .flatten()
                    .take(DIR_SEARCH_LIMIT)
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut paths = list();
    let mut seen: HashSet<PathBuf> = paths.iter().cloned().collect();
    for p in list() {
        if seen.insert(p.clone()) {
            paths.push(p);
        }
    }
    paths
}

/// `Some(n)` for a rotation suffix `.n` (`app.log.3`).
fn rotation_number(suffix: &str) -> Option<u64> {
    suffix.strip_prefix('.')?.parse().ok()
}

/// The directory a glob pattern starts in: its leading components without wildcards.
fn glob_base_dir(pattern: &str) -> PathBuf {
    let mut base = PathBuf::new();
    for part in Path::new(pattern).components() {
        let text = part.as_os_str().to_string_lossy();
        if text.contains(['*', '?', '[']) {
            break;
        }
        base.push(part);
    }
    if base.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        base
    }
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.to_string_lossy().into_owned())
}

/// Offset just past the last complete line, for `--from end`.
fn end_of_last_line(file: &File, size: u64) -> u64 {
    let window = size.min(64 * 1024);
    let mut buf = vec![0; window as usize];
    match read_full_at(file, &mut buf, size - window) {
        Ok(n) if n == buf.len() => match memchr::memrchr(b'\n', &buf) {
            Some(i) => size - window + i as u64 + 1,
            None => size,
        },
        _ => size,
    }
}

/// Finds the copy of a truncated file: a regular file in `dir`, other than
/// `exclude`, at least `min_len` long, that starts with `fp`. The most
/// recently modified one wins.
fn find_copy(
    dir: &Path,
    fp: &Fingerprint,
    min_len: u64,
    exclude: FileId,
) -> Option<(File, PathBuf)> {
    if fp.is_empty() {
        return None;
    }
    let mut best: Option<(SystemTime, File, PathBuf)> = None;
    for path in dir_entries(dir) {
        let Ok(meta) = fs::metadata(&path) else {
            continue;
        };
        if !meta.is_file() || meta.len() < min_len || FileId::of(&meta) == exclude {
            continue;
        }
        let Ok(file) = File::open(&path) else {
            continue;
        };
        if !fp.matches(&file).unwrap_or(false) {
            continue;
        }
        let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        if best.as_ref().is_none_or(|(t, _, _)| mtime > *t) {
            best = Some((mtime, file, path));
        }
    }
    best.map(|(_, f, p)| (f, p))
}
