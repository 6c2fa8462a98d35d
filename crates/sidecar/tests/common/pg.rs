//! A throwaway PostgreSQL server for tests: initdb in a temp dir, a free port
//! on 127.0.0.1, stopped when dropped. Runs as the `postgres` user when the
//! tests run as root (CI), since PostgreSQL refuses to run as root.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const SUPERUSER: &str = "postgres";
pub const SUPERUSER_PASSWORD: &str = "test-superuser-pw";

/// Directories holding `initdb` and `postgres`, one per PostgreSQL version.
///
/// `SIDECAR_TEST_PG_BINDIRS` (colon-separated; set by ./scripts/test) wins;
/// otherwise every `/usr/lib/postgresql/*/bin`.
pub fn bin_dirs() -> Vec<PathBuf> {
    if let Ok(dirs) = std::env::var("SIDECAR_TEST_PG_BINDIRS") {
        return dirs
            .split(':')
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .filter(|d| d.join("initdb").exists())
            .collect();
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path().join("bin"))
                .filter(|d| d.join("initdb").exists())
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    dirs
}

/// The first available server, or a clear panic saying how to get one.
pub fn default_bin_dir() -> PathBuf {
    bin_dirs().into_iter().next().unwrap_or_else(|| {
        panic!(
            "no PostgreSQL server binaries found; run ./scripts/test (it installs them) \
             or set SIDECAR_TEST_PG_BINDIRS"
        )
    })
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// A command run as the postgres user when we are root.
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
    pub version: String,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl PgServer {
    pub fn start(bin: &Path) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("sidecar-pg-")
            .tempdir()
            .unwrap();
        if is_root() {
            let user = nix::unistd::User::from_name("postgres").unwrap().expect(
                "a `postgres` user (the postgresql package creates it; ./scripts/test installs it)",
            );
            nix::unistd::chown(dir.path(), Some(user.uid), Some(user.gid)).unwrap();
        }
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, SUPERUSER_PASSWORD).unwrap();
        if is_root() {
            let user = nix::unistd::User::from_name("postgres").unwrap().unwrap();
            nix::unistd::chown(&pwfile, Some(user.uid), Some(user.gid)).unwrap();
        }
        let out = as_server_user(&bin.join("initdb"))
            .arg("-D")
            .arg(dir.path().join("data"))
            .args([
                "-U",
                SUPERUSER,
                "-E",
                "UTF8",
                "--no-sync",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let version = Command::new(bin.join("postgres"))
            .arg("--version")
            .output()
            .unwrap();
        let version = String::from_utf8_lossy(&version.stdout).trim().to_string();
        let mut server = Self {
            port: free_port(),
            bin: bin.to_path_buf(),
            version,
            dir,
            child: None,
        };
        server.launch();
        server
    }

    fn launch(&mut self) {
        let mut cmd = as_server_user(&self.bin.join("postgres"));
        cmd.arg("-D")
            .arg(self.dir.path().join("data"))
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-k")
            .arg(self.dir.path())
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "max_connections=50",
            ])
            .args([
                "-c",
                "wal_level=logical",
                "-c",
                "max_slot_wal_keep_size=1GB",
            ]);
        if self
            .bin
            .join("../lib/postgresql/pg_stat_statements.so")
            .exists()
            || Path::new(&format!(
                "/usr/lib/postgresql/{}/lib/pg_stat_statements.so",
                self.major()
            ))
            .exists()
        {
            cmd.args(["-c", "shared_preload_libraries=pg_stat_statements"]);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(self.dir.path().join("server.log")).unwrap(),
            ))
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self.try_connect("postgres").is_ok() {
                return;
            }
            if Instant::now() > deadline {
                panic!("PostgreSQL did not start: {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Major version number, e.g. 15.
    pub fn major(&self) -> u32 {
        self.version
            .split_whitespace()
            .find_map(|w| w.split('.').next()?.parse().ok())
            .unwrap_or(0)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    fn try_connect(&self, db: &str) -> Result<postgres::Client, postgres::Error> {
        postgres::Config::new()
            .host("127.0.0.1")
            .port(self.port)
            .user(SUPERUSER)
            .password(SUPERUSER_PASSWORD)
            .dbname(db)
            .connect(postgres::NoTls)
    }

    /// A superuser connection to `db`.
    pub fn client(&self, db: &str) -> postgres::Client {
        self.try_connect(db).unwrap()
    }

    /// `DATA_SOURCE_URI` for `db` on this server.
    pub fn uri(&self, db: &str) -> String {
        format!("127.0.0.1:{}/{db}?sslmode=disable", self.port)
    }

    /// Fast shutdown (SIGINT), waiting for the server to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGINT,
            );
            let deadline = Instant::now() + Duration::from_secs(30);
            while child.try_wait().unwrap().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.wait();
        }
    }

    /// Starts the stopped server again, on the same port.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
    }
}
