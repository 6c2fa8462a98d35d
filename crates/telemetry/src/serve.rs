//! The start-up and shutdown sequence every long-running subcommand shares.
//!
//! [`Serve::run`] builds the tokio runtime, installs the SIGTERM/SIGINT
//! handlers, builds the registry (with the `process_*` collector), lets the
//! caller register its metrics and bind what it serves (`setup`), starts the
//! admin server (unless its address is `off`), runs the caller's `work`, then
//! stops the admin server and returns what `work` returned:
//!
//! ```text
//! runtime ─► signal handlers ─► registry + process_* ─► setup(&mut registry)
//!   ─► admin server (/live /ready /metrics [+ fallback]) ─► work(prepared, Running)
//!   ─► admin server stopped ─► runtime dropped ─► work's result
//! ```
//!
//! An error in `setup` stops before anything is served. `work` marks the
//! service ready with [`Running::health`] once it does its job; the
//! [`Running::shutdown`] future turns `/ready` to draining when the signal
//! arrives and yields it, so `work` can say which signal it got and drain.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use prometheus_client::registry::Registry;

use crate::admin::{self, Admin, AdminAddr, Health};
use crate::http::Handler;
use crate::process;
use crate::shutdown::{self, Signal};

/// Why [`Serve::run`] could not run the caller's work.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot start the async runtime")]
    Runtime(#[source] std::io::Error),
    #[error("cannot install signal handlers")]
    Signals(#[source] std::io::Error),
    /// The admin server could not listen; the message names the address.
    #[error(transparent)]
    Admin(std::io::Error),
}

/// Which tokio runtime runs the subcommand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    /// One thread for everything async.
    CurrentThread,
    /// A multi-thread runtime with this many worker threads.
    MultiThread(usize),
}

impl Runtime {
    /// `workers` threads: one (or zero) gives a current-thread runtime (no
    /// cross-thread wakeups), more a multi-thread runtime.
    pub fn with_workers(workers: usize) -> Self {
        if workers <= 1 {
            Self::CurrentThread
        } else {
            Self::MultiThread(workers)
        }
    }

    fn build(self) -> std::io::Result<tokio::runtime::Runtime> {
        match self {
            Self::CurrentThread => tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build(),
            Self::MultiThread(workers) => tokio::runtime::Builder::new_multi_thread()
                .worker_threads(workers)
                .enable_all()
                .build(),
        }
    }
}

/// What `work` gets from [`Serve::run`].
pub struct Running {
    /// Readiness behind `/ready`: call `health.set_ready(true)` once the work
    /// does its job. [`Running::shutdown`] marks it draining.
    pub health: Health,
    /// The registry `setup` filled (process metrics included), as the admin
    /// server serves it; for a subcommand that serves metrics on its own port.
    pub registry: Arc<Registry>,
    /// Where the admin server listens (a port 0 resolved), unless it is `off`.
    pub admin: Option<std::net::SocketAddr>,
    /// Resolves on SIGTERM or SIGINT, after marking `health` draining.
    pub shutdown: Shutdown,
}

/// A future that resolves on SIGTERM or SIGINT with the signal, after
/// marking the service draining (`/ready` answers 503).
pub struct Shutdown {
    inner: Pin<Box<dyn Future<Output = Signal> + Send>>,
}

impl Shutdown {
    fn new(signal: impl Future<Output = Signal> + Send + 'static, health: Health) -> Self {
        Self {
            inner: Box::pin(async move {
                let sig = signal.await;
                health.set_draining();
                sig
            }),
        }
    }
}

impl Future for Shutdown {
    type Output = Signal;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Signal> {
        self.inner.as_mut().poll(cx)
    }
}

/// How a long-running subcommand runs: its runtime and its admin server.
pub struct Serve {
    runtime: Runtime,
    admin: AdminAddr,
    fallback: Option<Arc<dyn Handler>>,
}

impl Serve {
    /// A service on `runtime`, without an admin server until [`Serve::admin`] gives its address.
    pub fn new(runtime: Runtime) -> Self {
        Self {
            runtime,
            admin: AdminAddr::Off,
            fallback: None,
        }
    }

    /// Serve `/live`, `/ready` and `/metrics` on `addr` (`off`: no admin server).
    pub fn admin(mut self, addr: AdminAddr) -> Self {
        self.admin = addr;
        self
    }

    /// Requests for other paths of the admin server go to `handler` (for example `/config`).
    pub fn admin_fallback(mut self, handler: Arc<dyn Handler>) -> Self {
        self.fallback = Some(handler);
        self
    }

    /// Runs the whole sequence (see the module documentation) and returns
    /// what `work` returned, once the admin server has stopped.
    ///
    /// `setup` runs before the admin server starts: it registers the
    /// caller's metrics and binds its listeners, so that a mistake there is
    /// reported before anything is served. What it returns goes to `work`.
    pub fn run<P, T, E>(
        self,
        setup: impl AsyncFnOnce(&mut Registry) -> Result<P, E>,
        work: impl AsyncFnOnce(P, Running) -> Result<T, E>,
    ) -> Result<T, E>
    where
        E: From<ServeError>,
    {
        let runtime = self.runtime.build().map_err(ServeError::Runtime)?;
        runtime.block_on(async move {
            let signal = shutdown::signal().map_err(ServeError::Signals)?;
            let mut registry = process::registry_with_process_metrics();
            let prepared = setup(&mut registry).await?;
            let registry = Arc::new(registry);
            let health = Health::new();
            let admin = match self.admin {
                AdminAddr::Off => None,
                AdminAddr::At(addr) => {
                    let mut handler = Admin::new(Arc::clone(&registry), health.clone());
                    if let Some(fallback) = self.fallback {
                        handler = handler.with_fallback(fallback);
                    }
                    Some(
                        admin::start(addr, handler)
                            .await
                            .map_err(ServeError::Admin)?,
                    )
                }
            };
            let running = Running {
                health: health.clone(),
                registry,
                admin: admin.as_ref().map(|a| a.addr),
                shutdown: Shutdown::new(signal, health),
            };
            let result = work(prepared, running).await;
            if let Some(admin) = admin {
                admin.stop().await;
            }
            result
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::http::{self, Body, BoxFuture};
    use hyper::{Request, Response, StatusCode, body::Incoming};
    use prometheus_client::metrics::counter::Counter;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A GET over a fresh connection; returns the status and the body.
    async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).await.unwrap();
        let status = resp.split_whitespace().nth(1).unwrap().parse().unwrap();
        let body = resp.split_once("\r\n\r\n").unwrap().1.to_string();
        (status, body)
    }

    /// A fallback that names the path it was asked for.
    struct Echo;

    impl Handler for Echo {
        fn call(&self, req: Request<Incoming>) -> BoxFuture<Response<Body>> {
            let path = req.uri().path().to_string();
            Box::pin(async move { http::text(StatusCode::OK, format!("fallback {path}\n")) })
        }
    }

    #[test]
    fn runtimes_by_worker_count() {
        assert_eq!(Runtime::with_workers(0), Runtime::CurrentThread);
        assert_eq!(Runtime::with_workers(1), Runtime::CurrentThread);
        assert_eq!(Runtime::with_workers(4), Runtime::MultiThread(4));
    }

    #[test]
    fn setup_then_work_without_admin() {
        let out: Result<(u64, bool), ServeError> = Serve::new(Runtime::CurrentThread).run(
            async |registry: &mut Registry| {
                let c: Counter = Counter::default();
                registry.register("things", "Things", c.clone());
                c.inc_by(7);
                Ok(c)
            },
            async |c, running| {
                let text = crate::admin::encode_metrics(&running.registry);
                assert!(text.contains("things_total 7"), "{text}");
                assert!(text.contains("process_resident_memory_bytes"), "{text}");
                assert_eq!(running.admin, None);
                Ok((c.get(), running.health.is_ready()))
            },
        );
        assert_eq!(out.unwrap(), (7, false));
    }

    #[derive(Debug, thiserror::Error)]
    enum TestError {
        #[error("setup failed")]
        Setup,
        #[error(transparent)]
        Serve(#[from] ServeError),
    }

    #[test]
    fn a_setup_error_stops_before_the_admin_server_and_the_work() {
        let mut worked = false;
        let out: Result<(), TestError> = Serve::new(Runtime::CurrentThread)
            .admin(AdminAddr::At("127.0.0.1:0".parse().unwrap()))
            .run(
                async |_: &mut Registry| Err(TestError::Setup),
                async |(), _| {
                    worked = true;
                    Ok(())
                },
            );
        assert!(matches!(out, Err(TestError::Setup)));
        assert!(!worked);
    }

    #[test]
    fn admin_server_serves_health_metrics_and_fallback_until_the_work_returns() {
        let out: Result<std::net::SocketAddr, ServeError> = Serve::new(Runtime::with_workers(2))
            .admin(AdminAddr::At("127.0.0.1:0".parse().unwrap()))
            .admin_fallback(Arc::new(Echo))
            .run(
                async |registry: &mut Registry| {
                    let c: Counter = Counter::default();
                    registry.register("work_done", "Work", c.clone());
                    Ok(c)
                },
                async |c, running| {
                    let addr = running.admin.unwrap();
                    assert_ne!(addr.port(), 0);
                    assert_eq!(get(addr, "/ready").await, (503, "starting\n".into()));
                    running.health.set_ready(true);
                    c.inc();
                    assert_eq!(get(addr, "/ready").await, (200, "ready\n".into()));
                    let (status, metrics) = get(addr, "/metrics").await;
                    assert_eq!(status, 200);
                    assert!(metrics.contains("work_done_total 1"), "{metrics}");
                    assert!(metrics.contains("process_open_fds"), "{metrics}");
                    assert_eq!(
                        get(addr, "/config").await,
                        (200, "fallback /config\n".into())
                    );
                    Ok(addr)
                },
            );
        let addr = out.unwrap();
        assert!(
            std::net::TcpStream::connect(addr).is_err(),
            "the admin server is stopped when run returns"
        );
    }

    #[test]
    fn shutdown_marks_draining_and_yields_the_signal() {
        let out: Result<(Signal, bool), ServeError> = Serve::new(Runtime::CurrentThread).run(
            async |_: &mut Registry| Ok(()),
            async |(), running| {
                running.health.set_ready(true);
                // The handlers are installed before `work` runs: the signal
                // reaches the shutdown future, not the default action.
                let pid = std::process::id().to_string();
                let status = std::process::Command::new("kill")
                    .args(["-TERM", &pid])
                    .status()
                    .unwrap();
                assert!(status.success());
                let sig = running.shutdown.await;
                Ok((sig, running.health.is_draining()))
            },
        );
        assert_eq!(out.unwrap(), (Signal::Terminate, true));
    }
}
