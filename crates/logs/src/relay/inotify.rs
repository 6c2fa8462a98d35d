//! Waiting for something to do, on the relay's own thread: inotify on the
//! directories of the followed files, a pipe that [`super::Control::stop`]
//! writes to, and a timeout (the poll interval, for filesystems without
//! inotify). A wake caused by data alone is held a few milliseconds first,
//! so that a writer's lines in that time are read in one go: the kernel
//! merges the repeated events of one file meanwhile, and the relay makes a
//! handful of system calls per batch instead of a dozen per line.

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};

/// How long a wake by new data waits for more before reading.
pub(super) const BATCH_WAIT: Duration = Duration::from_millis(10);

/// What a wait found.
#[derive(Debug, Default)]
pub(super) struct Changes {
    /// Names changed in a watched directory (created, renamed, deleted),
    /// or events were lost: the followed paths must be looked at.
    pub(super) names: bool,
    /// Files that appeared (created, or renamed to the path), in order.
    pub(super) appeared: Vec<Appeared>,
    /// Something happened at all (else the wait timed out).
    pub(super) any: bool,
}

/// A file that appeared at `path`.
#[derive(Debug, Clone)]
pub(super) struct Appeared {
    pub(super) path: PathBuf,
    /// Renamed there from a name that a rename earlier had taken the file
    /// away from (as far as the watched directories show): the name it had
    /// first. A file back at `origin` is no new file there.
    pub(super) origin: Option<PathBuf>,
}

/// Most event reads per drain (a queue refilled faster is left for the next).
const MAX_READS: usize = 64;
/// What `read_events` reads at most, and the sizes of an event.
const READ_BYTES: usize = 4096;
const EVENT_HEADER: usize = 16;
/// The largest event: a 255-byte name, its NUL, padded to 16 bytes.
const MAX_EVENT: usize = EVENT_HEADER + 256;
/// Most renamed names remembered.
const MAX_ORIGINS: usize = 4096;

/// The relay's wake-up sources.
pub(super) struct Waiter {
    inotify: Option<Inotify>,
    dirs: HashMap<WatchDescriptor, PathBuf>,
    watched: HashMap<PathBuf, WatchDescriptor>,
    /// Read end of the stop pipe.
    stop: OwnedFd,
    /// When the last reads that emptied the event queue began.
    drains: VecDeque<Instant>,
    /// Renamed names, with the name each file had before it was first renamed.
    origins: HashMap<PathBuf, PathBuf>,
    /// Renames under way: the cookie of each `IN_MOVED_FROM` and its origin.
    moving: HashMap<u32, PathBuf>,
}

impl Waiter {
    /// Starts inotify (if the system has it); `stop` is the read end of a
    /// non-blocking pipe.
    pub(super) fn new(stop: OwnedFd) -> Self {
        let inotify = match Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC) {
            Ok(i) => Some(i),
            Err(e) => {
                tracing::warn!(
                    "file change notifications (inotify) are not available ({e}); checking files every poll interval instead"
                );
                None
            }
        };
        Self {
            inotify,
            dirs: HashMap::new(),
            watched: HashMap::new(),
            stop,
            drains: VecDeque::new(),
            origins: HashMap::new(),
            moving: HashMap::new(),
        }
    }

    /// True when changes are notified (else only the poll timer wakes).
    pub(super) fn notifies(&self) -> bool {
        self.inotify.is_some() && !self.watched.is_empty()
    }

    /// Watches `dir` (once); false if it cannot (then it is polled).
    pub(super) fn watch(&mut self, dir: &Path) -> bool {
        if self.watched.contains_key(dir) {
            return true;
        }
        let Some(inotify) = &self.inotify else {
            return false;
        };
        let mask = AddWatchFlags::IN_CREATE
            | AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_MOVED_FROM
            | AddWatchFlags::IN_DELETE
            | AddWatchFlags::IN_MODIFY
            | AddWatchFlags::IN_ATTRIB
            | AddWatchFlags::IN_DELETE_SELF
            | AddWatchFlags::IN_MOVE_SELF
            | AddWatchFlags::IN_ONLYDIR;
        match inotify.add_watch(dir, mask) {
            Ok(wd) => {
                self.dirs.insert(wd, dir.to_path_buf());
                self.watched.insert(dir.to_path_buf(), wd);
                true
            }
            Err(e) => {
                tracing::debug!("cannot watch {}: {e}; polling it", dir.display());
                false
            }
        }
    }

    /// Waits up to `timeout` for a change or a stop; a wake by data alone
    /// is held [`BATCH_WAIT`] (unless `hurry`: draining).
    pub(super) fn wait(&mut self, timeout: Duration, hurry: bool) -> Changes {
        let (ready, stop_ready) = {
            let mut fds = vec![PollFd::new(self.stop.as_fd(), PollFlags::POLLIN)];
            if let Some(i) = &self.inotify {
                fds.push(PollFd::new(i.as_fd(), PollFlags::POLLIN));
            }
            let ms = PollTimeout::try_from(timeout.as_millis().min(60_000) as u32)
                .unwrap_or(PollTimeout::NONE);
            let ready = poll(&mut fds, ms).unwrap_or(0);
            let stop_ready = fds[0].any().unwrap_or(true);
            (ready, stop_ready)
        };
        // The pipe is read only when it has something (a system call saved per wake).
        let stopped = stop_ready && self.drain_stop();
        let mut changes = if ready > 0 {
            self.events()
        } else {
            Changes::default()
        };
        changes.any |= ready > 0 || stopped;
        if changes.any && !changes.names && !stopped && !hurry {
            // Data only: let the writer's next lines come too (a stop still
            // ends the wait at once).
            let mut fds = [PollFd::new(self.stop.as_fd(), PollFlags::POLLIN)];
            let ms =
                PollTimeout::try_from(BATCH_WAIT.as_millis() as u32).unwrap_or(PollTimeout::ZERO);
            if poll(&mut fds, ms).unwrap_or(0) > 0 {
                self.drain_stop();
            }
            let more = self.events();
            changes.names |= more.names;
            changes.appeared.extend(more.appeared);
        }
        changes
    }

    /// All the events queued now (never waits). Reading until the queue is
    /// empty bounds how late an appearance is seen: a file the relay read
    /// had its event read by the next full drain (see `loss.rs`).
    pub(super) fn events(&mut self) -> Changes {
        let mut changes = Changes::default();
        for _ in 0..MAX_READS {
            let started = Instant::now();
            let Some(inotify) = &self.inotify else {
                return changes;
            };
            let events = match inotify.read_events() {
                Ok(events) => events,
                Err(nix::errno::Errno::EAGAIN) => {
                    // Nothing queued: the queue was empty when read.
                    self.drained(started);
                    return changes;
                }
                Err(_) => return changes,
            };
            changes.any |= !events.is_empty();
            let mut bytes = 0;
            for e in events {
                bytes += EVENT_HEADER
                    + e.name
                        .as_ref()
                        .map_or(0, |n| (n.len() + 1).div_ceil(16) * 16);
                self.event(e, &mut changes);
            }
            if bytes + MAX_EVENT <= READ_BYTES {
                // The next event would have fitted: none was queued.
                self.drained(started);
                return changes;
            }
        }
        changes
    }

    /// Notes a full drain that began at `at`.
    fn drained(&mut self, at: Instant) {
        if self.drains.len() >= 8 {
            self.drains.pop_front();
        }
        self.drains.push_back(at);
    }

    /// The start of the last read that emptied the event queue before `t`:
    /// every event made before then has been read.
    pub(super) fn drained_before(&self, t: Instant) -> Option<Instant> {
        self.drains.iter().rev().find(|d| **d < t).copied()
    }

    fn event(&mut self, e: nix::sys::inotify::InotifyEvent, changes: &mut Changes) {
        let names = AddWatchFlags::IN_CREATE
            | AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_MOVED_FROM
            | AddWatchFlags::IN_DELETE
            | AddWatchFlags::IN_DELETE_SELF
            | AddWatchFlags::IN_MOVE_SELF
            | AddWatchFlags::IN_Q_OVERFLOW
            | AddWatchFlags::IN_IGNORED;
        if e.mask.intersects(names) {
            changes.names = true;
        }
        if e.mask.intersects(AddWatchFlags::IN_IGNORED) {
            // The directory went away: watch it again when it is back.
            if let Some(dir) = self.dirs.remove(&e.wd) {
                self.watched.remove(&dir);
            }
            return;
        }
        let (Some(dir), Some(name)) = (self.dirs.get(&e.wd), &e.name) else {
            return;
        };
        let path = dir.join(name);
        if self.origins.len() > MAX_ORIGINS {
            self.origins.clear();
        }
        if self.moving.len() > MAX_ORIGINS {
            self.moving.clear();
        }
        if e.mask.intersects(AddWatchFlags::IN_MOVED_FROM) {
            // Where the file was first seen, for the rename that follows.
            let origin = self.origins.remove(&path).unwrap_or_else(|| path.clone());
            self.moving.insert(e.cookie, origin);
        } else if e.mask.intersects(AddWatchFlags::IN_MOVED_TO) {
            let origin = self.moving.remove(&e.cookie);
            match &origin {
                Some(o) => {
                    self.origins.insert(path.clone(), o.clone());
                }
                None => {
                    self.origins.remove(&path);
                }
            }
            changes.appeared.push(Appeared { path, origin });
        } else if e.mask.intersects(AddWatchFlags::IN_CREATE) {
            self.origins.remove(&path);
            changes.appeared.push(Appeared { path, origin: None });
        } else if e.mask.intersects(AddWatchFlags::IN_DELETE) {
            self.origins.remove(&path);
        }
    }

    /// Empties the stop pipe; true if anything was in it.
    fn drain_stop(&self) -> bool {
        let mut buf = [0u8; 64];
        let mut any = false;
        while let Ok(n) = nix::unistd::read(&self.stop, &mut buf) {
            if n == 0 {
                break;
            }
            any = true;
        }
        any
    }
}
