//! The fresh login behind `pg_up`, beside the scrape rather than in its way.
//!
//! Every scrape starts a fresh login in a task of its own (one at a time:
//! it starts only after the last one's session has closed, so a role at
//! its connection limit has the slot back). The scrape reports that login
//! if it has finished by the time the collection has. If not, the scrape
//! reports the last finished login, and this one counts for the next scrape,
//! which waits for it before it starts its own. When there is no earlier
//! login, or the last one failed, the scrape waits for its own (until the
//! deadline), so the first scrape and a recovery report at once. So a login that newly fails while the long-lived sessions still
//! work (a `pg_hba.conf` change, `NOLOGIN`, `max_connections` reached) shows
//! as `pg_up 0` one scrape later at most; a server that is down shows at
//! once, since the long-lived session fails too.

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::error::Elapsed;
use tokio::time::timeout_at;

use super::PG_UP_ZERO;
use super::conn::{LoginFailure, Purpose, open};
use crate::connect::Source;
use crate::dsn;
use crate::session::lock;

type Outcome = Result<(), LoginFailure>;

/// The warnings already logged, by episode (shared with the login task).
pub(super) type Warned = Arc<Mutex<HashSet<String>>>;

/// The logins behind `pg_up`.
#[derive(Default)]
pub(super) struct Logins {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// What the last finished login found.
    last: Option<Outcome>,
    /// The running login's result, not taken yet.
    pending: Option<oneshot::Receiver<Outcome>>,
    /// The running (or last) login's task; it ends once its session has closed.
    task: Option<JoinHandle<()>>,
}

impl Logins {
    /// Runs `work` (the collection) with a fresh login beside it, and
    /// returns what `pg_up` reports with `work`'s output (see the module
    /// documentation for which login that is).
    pub(super) async fn beside<W: Future>(
        &self,
        base: &Source,
        timeout: Duration,
        deadline: tokio::time::Instant,
        warned: &Warned,
        work: W,
    ) -> (Outcome, W::Output) {
        // The last scrape's login, if it is still running, counts before
        // this scrape's own: a failure is never reported later than that.
        let earlier = lock(&self.state).pending.take();
        if let Some(rx) = earlier {
            let outcome = answer(timeout_at(deadline, rx).await);
            lock(&self.state).last = Some(outcome);
        }
        let (mut rx, last) = {
            let mut st = lock(&self.state);
            let (tx, rx) = oneshot::channel();
            let before = st.task.take();
            let task = tokio::spawn(login(base.clone(), timeout, Arc::clone(warned), before, tx));
            st.task = Some(task);
            (rx, st.last.clone())
        };
        tokio::pin!(work);
        let (output, mut fresh) = tokio::select! {
            out = &mut work => (out, None),
            got = &mut rx => (work.await, Some(answer(Ok(got)))),
        };
        let mut pending = fresh.is_none().then_some(rx);
        if fresh.is_none() && !matches!(last, Some(Ok(()))) {
            if let Some(rx) = pending.take() {
                fresh = Some(answer(timeout_at(deadline, rx).await));
            }
        }
        let mut st = lock(&self.state);
        st.pending = pending;
        if let Some(outcome) = fresh {
            st.last = Some(outcome);
        }
        let reported = st
            .last
            .clone()
            .unwrap_or_else(|| Err(LoginFailure::timeout()));
        (reported, output)
    }

    /// Lets the last login's session finish closing (at shutdown), for at
    /// most `wait`.
    pub(super) async fn close(&self, wait: Duration) {
        let task = lock(&self.state).task.take();
        if let Some(task) = task {
            let _ = tokio::time::timeout(wait, task).await;
        }
    }
}

/// What a login's task answered; one still running at the deadline failed
/// to log in in time (the task cannot end without answering: panics abort).
fn answer(got: Result<Result<Outcome, oneshot::error::RecvError>, Elapsed>) -> Outcome {
    match got {
        Ok(Ok(outcome)) => outcome,
        _ => Err(LoginFailure::timeout()),
    }
}

/// One fresh login: waits for the last one's session to have closed, logs
/// in, sends what it found, then closes the session (the scrape does not
/// wait for the goodbye).
async fn login(
    base: Source,
    timeout: Duration,
    warned: Warned,
    before: Option<JoinHandle<()>>,
    result: oneshot::Sender<Outcome>,
) {
    let deadline = tokio::time::Instant::now() + timeout;
    if let Some(before) = before {
        let _ = timeout_at(deadline, before).await;
    }
    match open(&base, deadline, Purpose::Login).await {
        Ok(conn) => {
            forget_connect_warnings(&warned);
            let _ = result.send(Ok(()));
            conn.close(tokio::time::Instant::now() + timeout).await;
        }
        Err(e) => {
            warn_connect(
                &warned,
                &format!("cannot connect to {}: {e}", dsn::describe(&base.config)),
                PG_UP_ZERO,
            );
            let _ = result.send(Err(e));
        }
    }
}

/// A connection worked again: a later outage is worth a new warning.
pub(super) fn forget_connect_warnings(warned: &Mutex<HashSet<String>>) {
    lock(warned).retain(|k| !k.starts_with("connect:"));
}

/// One warning per target and error until a connection succeeds again.
/// `error` names the target; `then` says what follows from it.
pub(super) fn warn_connect(warned: &Mutex<HashSet<String>>, error: &str, then: &str) {
    warn_once(
        warned,
        format!("connect:{error}"),
        format!("{error}; {then}"),
    );
}

/// Logs `message` unless `key`'s episode was already warned about.
pub(super) fn warn_once(warned: &Mutex<HashSet<String>>, key: String, message: String) {
    let mut warned = lock(warned);
    if warned.len() > 1000 {
        warned.clear();
    }
    if warned.insert(key) {
        tracing::warn!("{message}");
    }
}
