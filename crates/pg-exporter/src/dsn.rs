//! Where the database is: postgres_exporter's environment variables, parsed
//! into a `tokio_postgres::Config` without ever re-parsing the password.
//!
//! - `DATA_SOURCE_NAME`: a libpq URI (`postgresql://user:pass@host:5432/db?sslmode=disable`)
//!   or key=value string (`host=localhost user=postgres password='x y'`).
//! - or `DATA_SOURCE_URI` (`host[:port][/db][?params]`) with `DATA_SOURCE_USER` and
//!   `DATA_SOURCE_PASS`, set on the config as they are: any character works.
//! - each also as `<NAME>_FILE`: the path of a file holding the value (trimmed).

use std::str::FromStr;
use std::time::Duration;

use tokio_postgres::Config;
use tokio_postgres::config::Host;

/// The `application_name` every session of the exporter carries.
pub const APPLICATION_NAME: &str = "sidecar-postgres-exporter";

/// A configuration mistake the user can fix.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DsnError {
    #[error("set either {0} or {0}_FILE, not both")]
    Both(&'static str),
    #[error("cannot read {var} file {path}: {reason}")]
    File {
        var: &'static str,
        path: String,
        reason: String,
    },
    #[error("{what} is not a valid connection string ({reason}); write it like {example}")]
    Invalid {
        what: String,
        reason: String,
        example: &'static str,
    },
    #[error(
        "sslmode={0} needs TLS, which this exporter does not speak yet; for a database in the same Pod use sslmode=disable"
    )]
    Tls(String),
    #[error("no database user given: set DATA_SOURCE_USER or put the user in DATA_SOURCE_NAME")]
    NoUser,
}

/// The raw values of the environment variables (after `_FILE` resolution).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SourceVars {
    pub name: Option<String>,
    pub uri: Option<String>,
    pub user: Option<String>,
    pub pass: Option<String>,
}

impl SourceVars {
    /// Reads the variables through `get` (the process environment in production).
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Self, DsnError> {
        Ok(Self {
            name: var(&get, "DATA_SOURCE_NAME")?,
            uri: var(&get, "DATA_SOURCE_URI")?,
            user: var(&get, "DATA_SOURCE_USER")?,
            pass: var(&get, "DATA_SOURCE_PASS")?,
        })
    }

    /// True when no data source is configured (only `/probe` can be used).
    pub fn is_empty(&self) -> bool {
        self.name.is_none() && self.uri.is_none()
    }

    /// The connection configuration these variables describe.
    pub fn config(&self) -> Result<Config, DsnError> {
        let mut config = if let Some(name) = &self.name {
            parse_dsn(name, "DATA_SOURCE_NAME")?
        } else if let Some(uri) = &self.uri {
            parse_uri(uri, "DATA_SOURCE_URI")?
        } else {
            return Err(DsnError::Invalid {
                what: "the data source".into(),
                reason: "none is set".into(),
                example: "DATA_SOURCE_URI=localhost:5432/postgres?sslmode=disable",
            });
        };
        // DATA_SOURCE_USER / _PASS complete (or override) what the URI says.
        if self.name.is_none() {
            if let Some(user) = &self.user {
                config.user(user);
            }
            if let Some(pass) = &self.pass {
                config.password(pass.as_bytes());
            }
        }
        if config.get_user().is_none() {
            return Err(DsnError::NoUser);
        }
        Ok(config)
    }
}

fn var(
    get: &impl Fn(&str) -> Option<String>,
    name: &'static str,
) -> Result<Option<String>, DsnError> {
    let file_var = format!("{name}_FILE");
    let direct = get(name).filter(|v| !v.is_empty());
    let file = get(&file_var).filter(|v| !v.is_empty());
    match (direct, file) {
        (Some(_), Some(_)) => Err(DsnError::Both(name)),
        (Some(v), None) => Ok(Some(v)),
        (None, Some(path)) => std::fs::read_to_string(&path)
            .map(|s| Some(s.trim().to_string()))
            .map_err(|e| DsnError::File {
                var: name,
                path,
                reason: e.to_string(),
            }),
        (None, None) => Ok(None),
    }
}

/// Parses a `DATA_SOURCE_NAME`: URI or key=value.
pub fn parse_dsn(dsn: &str, what: &str) -> Result<Config, DsnError> {
    let dsn = dsn.trim();
    check_sslmode(dsn)?;
    Config::from_str(dsn).map_err(|e| DsnError::Invalid {
        what: what.to_string(),
        reason: e.to_string(),
        example: "postgresql://user:password@localhost:5432/postgres?sslmode=disable or host=localhost user=postgres",
    })
}

/// Parses a `DATA_SOURCE_URI`: `host[:port][/db][?params]` (a scheme is accepted too).
pub fn parse_uri(uri: &str, what: &str) -> Result<Config, DsnError> {
    let uri = uri.trim();
    let rest = uri
        .strip_prefix("postgresql://")
        .or_else(|| uri.strip_prefix("postgres://"))
        .unwrap_or(uri);
    check_sslmode(rest)?;
    Config::from_str(&format!("postgresql://{rest}")).map_err(|e| DsnError::Invalid {
        what: what.to_string(),
        reason: e.to_string(),
        example: "localhost:5432/postgres?sslmode=disable",
    })
}

fn check_sslmode(dsn: &str) -> Result<(), DsnError> {
    for mode in ["require", "verify-ca", "verify-full"] {
        if dsn.contains(&format!("sslmode={mode}")) || dsn.contains(&format!("sslmode='{mode}'")) {
            return Err(DsnError::Tls(mode.to_string()));
        }
    }
    Ok(())
}

/// Adds what every exporter session needs at login: a name, and a connect
/// timeout when the DSN sets none. The sessions that run queries also get
/// read-only transactions and statement and lock timeouts, with `SET` after
/// login (not here, in the startup packet), so that pg_settings still says
/// what the server configures (see `exporter::conn`).
pub fn harden(config: &mut Config, connect_timeout: Duration) {
    config.application_name(APPLICATION_NAME);
    match config.get_connect_timeout() {
        Some(t) if *t <= connect_timeout => {}
        _ => {
            config.connect_timeout(connect_timeout);
        }
    }
}

/// `host:port` of the first host, as upstream's `server` label shows it.
pub fn server_label(config: &Config) -> String {
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        Some(Host::Unix(p)) => p.display().to_string(),
        None => "localhost".to_string(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!("{host}:{port}")
}

/// `user@host:port/db`, for messages (never the password).
pub fn describe(config: &Config) -> String {
    format!(
        "{}@{}/{}",
        config.get_user().unwrap_or("?"),
        server_label(config),
        database(config)
    )
}

/// The database the config connects to (libpq's default: the user name).
pub fn database(config: &Config) -> String {
    config
        .get_dbname()
        .or(config.get_user())
        .unwrap_or("postgres")
        .to_string()
}

/// A `/probe?target=` value: a URI or key=value DSN, or `host[:port][/db][?params]`
/// that takes the exporter's own credentials.
pub fn probe_target(target: &str, base: Option<&Config>) -> Result<Config, DsnError> {
    let target = target.trim();
    let has_scheme = target.starts_with("postgres://") || target.starts_with("postgresql://");
    let mut config = if !has_scheme && target.contains('=') && !target.contains('?') {
        parse_dsn(target, "the probe target")?
    } else {
        parse_uri(target, "the probe target")?
    };
    if let Some(base) = base {
        if config.get_user().is_none() {
            if let Some(user) = base.get_user() {
                config.user(user);
            }
            if config.get_password().is_none() {
                if let Some(pass) = base.get_password() {
                    config.password(pass);
                }
            }
        }
    }
    if config.get_user().is_none() {
        return Err(DsnError::NoUser);
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn vars(pairs: &[(&str, &str)]) -> SourceVars {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        SourceVars::from_env(|k| map.get(k).cloned()).unwrap()
    }

    #[test]
    fn the_seed_pod_spec_works_unchanged() {
        let v = vars(&[
            ("DATA_SOURCE_URI", "localhost?sslmode=disable"),
            ("DATA_SOURCE_USER", "postgres"),
            ("DATA_SOURCE_PASS", "secret"),
        ]);
        let c = v.config().unwrap();
        assert_eq!(c.get_user(), Some("postgres"));
        assert_eq!(c.get_password(), Some(&b"secret"[..]));
        assert_eq!(server_label(&c), "localhost:5432");
        assert_eq!(database(&c), "postgres");
    }

    #[test]
    fn passwords_with_any_character_are_kept_verbatim() {
        let pass = "p#=%{!@:/ ?&'\"\\x";
        let v = vars(&[
            ("DATA_SOURCE_URI", "127.0.0.1:5433/appdb?sslmode=disable"),
            ("DATA_SOURCE_USER", "mon itor"),
            ("DATA_SOURCE_PASS", pass),
        ]);
        let c = v.config().unwrap();
        assert_eq!(c.get_password(), Some(pass.as_bytes()));
        assert_eq!(c.get_user(), Some("mon itor"));
        assert_eq!(database(&c), "appdb");
        assert_eq!(c.get_ports(), &[5433]);
    }

    #[test]
    fn data_source_name_as_uri_or_key_value() {
        let c = vars(&[(
            "DATA_SOURCE_NAME",
            "postgresql://u:p%23w@db:6543/x?sslmode=disable",
        )])
        .config()
        .unwrap();
        assert_eq!(c.get_password(), Some(&b"p#w"[..]));
        assert_eq!(server_label(&c), "db:6543");
        let c = vars(&[(
            "DATA_SOURCE_NAME",
            "host=h port=1 user=u password='a b=c' dbname=d",
        )])
        .config()
        .unwrap();
        assert_eq!(c.get_password(), Some(&b"a b=c"[..]));
        assert_eq!(describe(&c), "u@h:1/d");
    }

    #[test]
    fn file_variants_are_read_and_trimmed() {
        let dir = std::env::temp_dir().join(format!("dsn-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pass_file = dir.join("pass");
        std::fs::write(&pass_file, "  s3cr#t \n").unwrap();
        let v = vars(&[
            ("DATA_SOURCE_URI", "localhost/db"),
            ("DATA_SOURCE_USER", "u"),
            ("DATA_SOURCE_PASS_FILE", pass_file.to_str().unwrap()),
        ]);
        assert_eq!(v.pass.as_deref(), Some("s3cr#t"));
        let map: HashMap<&str, &str> =
            [("DATA_SOURCE_PASS", "x"), ("DATA_SOURCE_PASS_FILE", "y")].into();
        let err = SourceVars::from_env(|k| map.get(k).map(|v| v.to_string())).unwrap_err();
        assert_eq!(err, DsnError::Both("DATA_SOURCE_PASS"));
        let map: HashMap<&str, &str> = [("DATA_SOURCE_USER_FILE", "/nonexistent/user")].into();
        let err = SourceVars::from_env(|k| map.get(k).map(|v| v.to_string())).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/user"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn mistakes_read_as_sentences() {
        let err = vars(&[
            ("DATA_SOURCE_URI", "localhost?sslmode=require"),
            ("DATA_SOURCE_USER", "u"),
        ])
        .config()
        .unwrap_err();
        assert!(err.to_string().contains("sslmode=disable"), "{err}");
        let err = vars(&[("DATA_SOURCE_URI", "localhost")])
            .config()
            .unwrap_err();
        assert_eq!(err, DsnError::NoUser);
        let err = vars(&[("DATA_SOURCE_NAME", "postgresql://u@h:notaport/db")])
            .config()
            .unwrap_err();
        assert!(err.to_string().contains("write it like"), "{err}");
    }

    #[test]
    fn hardening_adds_name_and_connect_timeout_and_keeps_the_options() {
        let mut c = parse_dsn("host=h user=u options='-c work_mem=1MB'", "x").unwrap();
        harden(&mut c, Duration::from_secs(3));
        assert_eq!(c.get_application_name(), Some(APPLICATION_NAME));
        // The exporter's own settings are SET after login, not sent as options.
        assert_eq!(c.get_options(), Some("-c work_mem=1MB"));
        assert_eq!(c.get_connect_timeout(), Some(&Duration::from_secs(3)));
        let mut c = parse_dsn("host=h user=u connect_timeout=1", "x").unwrap();
        harden(&mut c, Duration::from_secs(3));
        assert_eq!(c.get_connect_timeout(), Some(&Duration::from_secs(1)));
    }

    #[test]
    fn probe_targets_take_the_exporters_credentials() {
        let base = parse_dsn("host=h user=mon password=pw", "x").unwrap();
        let c = probe_target("db2:5433/app?sslmode=disable", Some(&base)).unwrap();
        assert_eq!(c.get_user(), Some("mon"));
        assert_eq!(c.get_password(), Some(&b"pw"[..]));
        assert_eq!(describe(&c), "mon@db2:5433/app");
        let c = probe_target("postgresql://other:x@db3/app", Some(&base)).unwrap();
        assert_eq!(c.get_user(), Some("other"));
        assert!(probe_target("db2", None).is_err());
    }
}
