//! Waiting for something to do, on the relay's own thread: inotify on the
//! directories of the followed files, a pipe that [`super::Control::stop`]
//! writes to, and a timeout (the poll interval, for filesystems without
//! inotify). A wake caused by data alone is held a few milliseconds first,
//! so that a writer's lines in that time are read in one go: the kernel
//! merges the repeated events of one file meanwhile, and the relay makes a
//! handful of system calls per batch instead of a dozen per line.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

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
    pub(super) appeared: Vec<PathBuf>,
    /// Something happened at all (else the wait timed out).
    pub(super) any: bool,
}

/// The relay's wake-up sources.
pub(super) struct Waiter {
    inotify: Option<Inotify>,
    dirs: HashMap<WatchDescriptor, PathBuf>,
    watched: HashMap<PathBuf, WatchDescriptor>,
    /// Read end of the stop pipe.
    stop: OwnedFd,
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

    /// The events queued now (never waits).
    pub(super) fn events(&mut self) -> Changes {
        let mut changes = Changes::default();
        let Some(inotify) = &self.inotify else {
            return changes;
        };
        // One read (of up to 4 KiB of events): more left make the next
        // poll return at once.
        if let Ok(events) = inotify.read_events() {
            changes.any |= !events.is_empty();
            for e in events {
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
                    continue;
                }
                if e.mask
                    .intersects(AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO)
                {
                    if let (Some(dir), Some(name)) = (self.dirs.get(&e.wd), &e.name) {
                        changes.appeared.push(dir.join(name));
                    }
                }
            }
        }
        changes
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
