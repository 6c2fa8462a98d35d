//! PostgreSQL servers for tests: the demo's throwaway server
//! (`sidecar_demo::pgserver`) with test settings, and a client for setup.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};

pub use sidecar_demo::pgserver::{PgServer, SUPERUSER, SUPERUSER_PASSWORD};

/// Directories holding `initdb` and `postgres`, one per PostgreSQL version.
///
/// `SIDECAR_TEST_PG_BINDIRS` (colon-separated; set by ./scripts/test) wins;
/// otherwise what the demo finds (`/usr/lib/postgresql/*/bin`, PATH).
pub fn bin_dirs() -> Vec<PathBuf> {
    match std::env::var("SIDECAR_TEST_PG_BINDIRS") {
        Ok(dirs) => dirs
            .split(':')
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .filter(|d| d.join("initdb").exists())
            .collect(),
        Err(_) => sidecar_demo::pgserver::find_bin_dirs(),
    }
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

/// A server with what the exporter tests need: logical slots, a slot size limit.
pub fn start(bin: &Path) -> PgServer {
    let mut settings = vec![
        "max_connections=50",
        "wal_level=logical",
        "max_slot_wal_keep_size=1GB",
    ];
    if bin.join("../lib/postgresql/pg_stat_statements.so").exists()
        || bin.join("../lib/pg_stat_statements.so").exists()
    {
        settings.push("shared_preload_libraries=pg_stat_statements");
    }
    PgServer::start(bin, &settings).unwrap()
}

/// A superuser connection to `db`.
pub fn client(server: &PgServer, db: &str) -> postgres::Client {
    postgres::Config::new()
        .host("127.0.0.1")
        .port(server.port)
        .user(SUPERUSER)
        .password(SUPERUSER_PASSWORD)
        .dbname(db)
        .connect(postgres::NoTls)
        .unwrap()
}

/// Runs `check` on a server of every available version, one after the other.
pub fn each_version(mut check: impl FnMut(&PgServer)) {
    let dirs = bin_dirs();
    assert!(
        !dirs.is_empty(),
        "no PostgreSQL binaries; run ./scripts/test"
    );
    for dir in dirs {
        let server = start(&dir);
        eprintln!("checking {}", server.version);
        check(&server);
    }
}
