//! A throwaway PostgreSQL server: initdb in a temporary directory, a free
//! port on 127.0.0.1, stopped (fast shutdown) when dropped. Used by the demo
//! and the tests. When run as root it runs the server as the `postgres` user,
//! since PostgreSQL refuses to run as root.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The superuser of a throwaway server and its password (host connections use scram).
pub const SUPERUSER: &str = "postgres";
pub const SUPERUSER_PASSWORD: &str = "demo-superuser-pw";

/// Why a throwaway server could not run.
#[derive(Debug, thiserror::Error)]
pub enum PgServerError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("initdb failed: {0}")]
    Initdb(String),
    #[error("PostgreSQL did not start within 60s; its log says:\n{0}")]
    Start(String),
    #[error(
        "running as root, PostgreSQL needs a `postgres` user to run as (the postgresql package creates it)"
    )]
    NoUser,
}

/// Directories with `initdb` and `postgres`: `/usr/lib/postgresql/*/bin`
/// (newest first) and the directory of `initdb` on PATH.
pub fn find_bin_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| entries.flatten().map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    dirs.sort();
    dirs.reverse();
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            dirs.push(dir);
        }
    }
    dirs.retain(|d| d.join("initdb").is_file() && d.join("postgres").is_file());
    dirs.dedup();
    dirs
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// A command that runs as the postgres user when we are root.
fn as_server_user(program: &Path) -> Command {
    if is_root() {
        // setpriv execs the program (no extra process), so signals reach it directly.
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=postgres",
            "--regid=postgres",
            "--clear-groups",
            "--",
        ])
        .arg(program);
        c
    } else {
        Command::new(program)
    }
}

pub struct PgServer {
    pub port: u16,
    pub bin: PathBuf,
    /// `postgres --version` output.
    pub version: String,
    dir: tempfile::TempDir,
    child: Option<Child>,
    extra: Vec<String>,
}

impl PgServer {
    /// Initializes and starts a server from the binaries in `bin`, with extra
    /// `-c name=value` settings.
    pub fn start(bin: &Path, settings: &[&str]) -> Result<Self, PgServerError> {
        let dir = tempfile::Builder::new().prefix("sidecar-pg-").tempdir()?;
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, SUPERUSER_PASSWORD)?;
        if is_root() {
            let user = nix::unistd::User::from_name("postgres")
                .ok()
                .flatten()
                .ok_or(PgServerError::NoUser)?;
            for p in [dir.path(), pwfile.as_path()] {
                nix::unistd::chown(p, Some(user.uid), Some(user.gid))
                    .map_err(std::io::Error::from)?;
            }
        }
        let out = as_server_user(&bin.join("initdb"))
            .arg("-D")
            .arg(dir.path().join("data"))
            .args(["-U", SUPERUSER, "-E", "UTF8", "--no-sync"])
            .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
            .arg(format!("--pwfile={}", pwfile.display()))
            .output()?;
        if !out.status.success() {
            return Err(PgServerError::Initdb(
                String::from_utf8_lossy(&out.stderr).into_owned(),
            ));
        }
        let version = Command::new(bin.join("postgres"))
            .arg("--version")
            .output()?;
        let mut server = Self {
            port: free_port()?,
            bin: bin.to_path_buf(),
            version: String::from_utf8_lossy(&version.stdout).trim().to_string(),
            dir,
            child: None,
            extra: settings.iter().map(|s| s.to_string()).collect(),
        };
        server.launch()?;
        Ok(server)
    }

    fn launch(&mut self) -> Result<(), PgServerError> {
        let mut cmd = as_server_user(&self.bin.join("postgres"));
        cmd.arg("-D")
            .arg(self.dir.path().join("data"))
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-k")
            .arg(self.dir.path())
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"]);
        for setting in &self.extra {
            cmd.args(["-c", setting]);
        }
        let log = std::fs::File::create(self.dir.path().join("server.log"))?;
        self.child = Some(
            cmd.stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::from(log))
                .process_group(0)
                .spawn()?,
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.accepts_connections() {
            if Instant::now() > deadline || self.exited() {
                return Err(PgServerError::Start(self.log()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_none_or(|c| c.try_wait().ok().flatten().is_some())
    }

    /// True once the server answers on its socket (pg_isready's check).
    fn accepts_connections(&self) -> bool {
        let isready = self.bin.join("pg_isready");
        if isready.is_file() {
            return Command::new(isready)
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                .status()
                .is_ok_and(|s| s.success());
        }
        std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
    }

    /// Major version, e.g. 15.
    pub fn major(&self) -> u32 {
        self.version
            .split_whitespace()
            .find_map(|w| w.split('.').next()?.parse().ok())
            .unwrap_or(0)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// `DATA_SOURCE_URI` for `db` on this server.
    pub fn uri(&self, db: &str) -> String {
        format!("127.0.0.1:{}/{db}?sslmode=disable", self.port)
    }

    /// Fast shutdown (SIGINT), waiting for the server to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGINT,
                );
            }
            let deadline = Instant::now() + Duration::from_secs(30);
            while child.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.wait();
        }
    }

    /// Starts the stopped server again on the same port.
    pub fn restart(&mut self) -> Result<(), PgServerError> {
        self.stop();
        self.launch()
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
    }
}

use std::os::unix::process::CommandExt;
