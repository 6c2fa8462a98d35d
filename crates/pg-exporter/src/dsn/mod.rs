//! Where the database is: postgres_exporter's environment variables, parsed
//! into a `tokio_postgres::Config` without ever re-parsing the password.
//!
//! - `DATA_SOURCE_NAME`: a libpq URI (`postgresql://user:pass@host:5432/db?sslmode=disable`)
//!   or key=value string (`host=localhost user=postgres password='x y'`).
//! - or `DATA_SOURCE_URI` (`host[:port][/db][?params]`) with `DATA_SOURCE_USER` and
//!   `DATA_SOURCE_PASS`, set on the config as they are: any character works.
//! - each also as `<NAME>_FILE`: the path of a file holding the value (trimmed).
//!
//! The TLS parameters (`sslmode` with all of libpq's values, `sslrootcert`,
//! `sslcert`, `sslkey`, `sslsni`) are taken out of the string before
//! tokio-postgres parses the rest, checked here, and kept beside the config
//! in a [`Source`].

use std::str::FromStr;
use std::time::Duration;

use tokio_postgres::Config;
use tokio_postgres::config::Host;

pub use crate::connect::Source;
use crate::tls::{RootCert, SslMode, TlsSettings};

mod probe;

pub(crate) use probe::check_options;
pub use probe::probe_target;

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
    /// A TLS setting that cannot work; the message says which to change.
    #[error("{0}")]
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

    /// The data source these variables describe.
    pub fn source(&self) -> Result<Source, DsnError> {
        let (mut config, tls) = if let Some(name) = &self.name {
            split_dsn(name, "DATA_SOURCE_NAME")?
        } else if let Some(uri) = &self.uri {
            split_uri(uri, "DATA_SOURCE_URI")?
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
        Ok(Source::new(config, tls))
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
pub fn parse_dsn(dsn: &str, what: &str) -> Result<Source, DsnError> {
    let (config, tls) = split_dsn(dsn, what)?;
    Ok(Source::new(config, tls))
}

/// Parses a `DATA_SOURCE_URI`: `host[:port][/db][?params]` (a scheme is accepted too).
pub fn parse_uri(uri: &str, what: &str) -> Result<Source, DsnError> {
    let (config, tls) = split_uri(uri, what)?;
    Ok(Source::new(config, tls))
}

const DSN_EXAMPLE: &str = "postgresql://user:password@localhost:5432/postgres?sslmode=disable or host=localhost user=postgres";

/// A URI or key=value string: the config and, apart, its TLS settings.
fn split_dsn(dsn: &str, what: &str) -> Result<(Config, TlsSettings), DsnError> {
    let dsn = dsn.trim();
    let (rest, params) = if dsn.starts_with("postgres://") || dsn.starts_with("postgresql://") {
        take_uri_params(dsn)
    } else {
        take_key_values(dsn)
    };
    let config = Config::from_str(&rest).map_err(|e| DsnError::Invalid {
        what: what.to_string(),
        reason: e.to_string(),
        example: DSN_EXAMPLE,
    })?;
    with_tls(config, &params)
}

fn split_uri(uri: &str, what: &str) -> Result<(Config, TlsSettings), DsnError> {
    let uri = uri.trim();
    let rest = uri
        .strip_prefix("postgresql://")
        .or_else(|| uri.strip_prefix("postgres://"))
        .unwrap_or(uri);
    let (rest, params) = take_uri_params(&format!("postgresql://{rest}"));
    let config = Config::from_str(&rest).map_err(|e| DsnError::Invalid {
        what: what.to_string(),
        reason: e.to_string(),
        example: "localhost:5432/postgres?sslmode=disable",
    })?;
    with_tls(config, &params)
}

/// The connection parameters this module reads itself (tokio-postgres
/// refuses all but `sslmode`, and knows only three of its values).
const TLS_PARAMS: [&str; 5] = ["sslmode", "sslrootcert", "sslcert", "sslkey", "sslsni"];

/// TLS parameters as given (the last one wins, as in libpq).
#[derive(Debug, Default, PartialEq, Eq)]
struct TlsParams(Vec<(&'static str, String)>);

impl TlsParams {
    fn take(&mut self, key: &str, value: String) -> bool {
        match TLS_PARAMS.iter().find(|k| **k == key) {
            Some(k) => {
                self.0.push((k, value));
                true
            }
            None => false,
        }
    }

    /// The value of `key`; an empty one counts as unset.
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }
}

/// Takes the TLS parameters out of a URI's query string.
fn take_uri_params(uri: &str) -> (String, TlsParams) {
    let mut params = TlsParams::default();
    // As tokio-postgres reads it: credentials up to the first '@', then
    // host and path up to the first '?'.
    let after_credentials = uri.find('@').map_or(0, |i| i + 1);
    let Some(q) = uri[after_credentials..]
        .find('?')
        .map(|i| after_credentials + i)
    else {
        return (uri.to_string(), params);
    };
    let kept: Vec<&str> = uri[q + 1..]
        .split('&')
        .filter(|pair| match pair.split_once('=') {
            Some((k, v)) => !params.take(&percent_decode(k), percent_decode(v)),
            None => !pair.is_empty(),
        })
        .collect();
    let mut rest = uri[..q].to_string();
    if !kept.is_empty() {
        rest.push('?');
        rest.push_str(&kept.join("&"));
    }
    (rest, params)
}

/// `%XX` decoded (an invalid escape stays as it is, as in tokio-postgres).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' {
            if let (Some(h), Some(l)) = (
                bytes.get(i + 1).and_then(|b| hex(*b)),
                bytes.get(i + 2).and_then(|b| hex(*b)),
            ) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Takes the TLS parameters out of a key=value string, keeping the other
/// pairs as they were written. A string that does not tokenize is left
/// whole, for tokio-postgres to say what is wrong with it.
fn take_key_values(dsn: &str) -> (String, TlsParams) {
    let mut params = TlsParams::default();
    let Some(pairs) = key_values(dsn) else {
        return (dsn.to_string(), params);
    };
    let kept: Vec<&str> = pairs
        .into_iter()
        .filter(|(key, value, _)| !params.take(key, value.clone()))
        .map(|(_, _, raw)| raw)
        .collect();
    (kept.join(" "), params)
}

/// `(key, value, the pair as written)` for each pair of a key=value
/// string, read as libpq (and tokio-postgres) read it: `key = value`,
/// values optionally in single quotes, backslash escapes.
fn key_values(s: &str) -> Option<Vec<(&str, String, &str)>> {
    let mut out = Vec::new();
    let mut it = s.char_indices().peekable();
    loop {
        while it.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let Some(&(start, _)) = it.peek() else {
            return Some(out);
        };
        let mut key_end = start;
        while let Some((i, c)) = it.next_if(|(_, c)| !c.is_whitespace() && *c != '=') {
            key_end = i + c.len_utf8();
        }
        let key = &s[start..key_end];
        if key.is_empty() {
            return None;
        }
        while it.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        it.next_if(|(_, c)| *c == '=')?;
        while it.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        let mut end = s.len();
        if it.next_if(|(_, c)| *c == '\'').is_some() {
            loop {
                let (i, c) = it.next()?;
                match c {
                    '\'' => {
                        end = i + 1;
                        break;
                    }
                    '\\' => value.push(it.next()?.1),
                    c => value.push(c),
                }
            }
        } else {
            while let Some((_, c)) = it.next_if(|(_, c)| !c.is_whitespace()) {
                if c == '\\' {
                    if let Some((_, escaped)) = it.next() {
                        value.push(escaped);
                    }
                } else {
                    value.push(c);
                }
                end = it.peek().map_or(s.len(), |(j, _)| *j);
            }
            if value.is_empty() {
                return None;
            }
        }
        out.push((key, value, &s[start..end]));
    }
}

/// Checks the TLS parameters as libpq would, and sets the mode
/// tokio-postgres is to use.
fn with_tls(mut config: Config, params: &TlsParams) -> Result<(Config, TlsSettings), DsnError> {
    let root = params.get("sslrootcert").map(|r| match r {
        "system" => RootCert::System,
        path => RootCert::File(path.into()),
    });
    let mode = match params.get("sslmode") {
        Some(m) => SslMode::parse(m).ok_or_else(|| {
            DsnError::Tls(format!(
                "sslmode={m} is not a mode libpq knows: set sslmode to one of {}",
                SslMode::NAMES
            ))
        })?,
        // libpq 16+: the system roots make verify-full the default.
        None if root == Some(RootCert::System) => SslMode::VerifyFull,
        None => SslMode::Prefer,
    };
    if root == Some(RootCert::System) && mode != SslMode::VerifyFull {
        return Err(DsnError::Tls(format!(
            "sslmode={mode} may not be used with sslrootcert=system, which trusts every public CA: \
             set sslmode=verify-full (as libpq requires), or set sslrootcert to your CA's file"
        )));
    }
    if matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull) && root.is_none() {
        return Err(DsnError::Tls(format!(
            "sslmode={mode} checks the server's certificate, so it needs sslrootcert: set sslrootcert \
             to the CA certificate (PEM) that signed it, or to system for the public CAs compiled into \
             this binary; or set sslmode=require to encrypt without checking"
        )));
    }
    let cert = params.get("sslcert").map(Into::into);
    let key = params.get("sslkey").map(Into::into);
    match (&cert, &key) {
        (Some(_), None) => {
            return Err(DsnError::Tls(
                "sslcert is set but sslkey is not: set sslkey to the client certificate's private key file (PEM)".into(),
            ));
        }
        (None, Some(_)) => {
            return Err(DsnError::Tls(
                "sslkey is set but sslcert is not: set sslcert to the client certificate file (PEM)".into(),
            ));
        }
        _ => {}
    }
    let sni = match params.get("sslsni") {
        None | Some("1") => true,
        Some("0") => false,
        Some(v) => {
            return Err(DsnError::Tls(format!(
                "sslsni={v} is not 0 or 1: set sslsni=1 to send the host name in the TLS handshake (the default) or sslsni=0 not to"
            )));
        }
    };
    config.ssl_mode(mode.tokio());
    Ok((
        config,
        TlsSettings {
            mode,
            root,
            cert,
            key,
            sni,
        },
    ))
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
        let c = v.source().unwrap();
        assert_eq!(c.config.get_user(), Some("postgres"));
        assert_eq!(c.config.get_password(), Some(&b"secret"[..]));
        assert_eq!(server_label(&c.config), "localhost:5432");
        assert_eq!(database(&c.config), "postgres");
    }

    #[test]
    fn passwords_with_any_character_are_kept_verbatim() {
        let pass = "p#=%{!@:/ ?&'\"\\x";
        let v = vars(&[
            ("DATA_SOURCE_URI", "127.0.0.1:5433/appdb?sslmode=disable"),
            ("DATA_SOURCE_USER", "mon itor"),
            ("DATA_SOURCE_PASS", pass),
        ]);
        let c = v.source().unwrap();
        assert_eq!(c.config.get_password(), Some(pass.as_bytes()));
        assert_eq!(c.config.get_user(), Some("mon itor"));
        assert_eq!(database(&c.config), "appdb");
        assert_eq!(c.config.get_ports(), &[5433]);
    }

    #[test]
    fn data_source_name_as_uri_or_key_value() {
        let c = vars(&[(
            "DATA_SOURCE_NAME",
            "postgresql://u:p%23w@db:6543/x?sslmode=disable",
        )])
        .source()
        .unwrap();
        assert_eq!(c.config.get_password(), Some(&b"p#w"[..]));
        assert_eq!(server_label(&c.config), "db:6543");
        let c = vars(&[(
            "DATA_SOURCE_NAME",
            "host=h port=1 user=u password='a b=c' dbname=d",
        )])
        .source()
        .unwrap();
        assert_eq!(c.config.get_password(), Some(&b"a b=c"[..]));
        assert_eq!(describe(&c.config), "u@h:1/d");
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
            ("DATA_SOURCE_URI", "localhost?sslmode=verify-full"),
            ("DATA_SOURCE_USER", "u"),
        ])
        .source()
        .unwrap_err();
        assert!(err.to_string().contains("set sslrootcert"), "{err}");
        let err = vars(&[("DATA_SOURCE_URI", "localhost")])
            .source()
            .unwrap_err();
        assert_eq!(err, DsnError::NoUser);
        let err = vars(&[("DATA_SOURCE_NAME", "postgresql://u@h:notaport/db")])
            .source()
            .unwrap_err();
        assert!(err.to_string().contains("write it like"), "{err}");
    }

    #[test]
    fn hardening_adds_name_and_connect_timeout_and_keeps_the_options() {
        let mut c = parse_dsn("host=h user=u options='-c work_mem=1MB'", "x").unwrap();
        harden(&mut c.config, Duration::from_secs(3));
        assert_eq!(c.config.get_application_name(), Some(APPLICATION_NAME));
        // The exporter's own settings are SET after login, not sent as options.
        assert_eq!(c.config.get_options(), Some("-c work_mem=1MB"));
        assert_eq!(
            c.config.get_connect_timeout(),
            Some(&Duration::from_secs(3))
        );
        let mut c = parse_dsn("host=h user=u connect_timeout=1", "x").unwrap();
        harden(&mut c.config, Duration::from_secs(3));
        assert_eq!(
            c.config.get_connect_timeout(),
            Some(&Duration::from_secs(1))
        );
    }

    pub(super) fn tls_of(c: &Source) -> TlsSettings {
        c.tls_settings().clone()
    }

    #[test]
    fn tls_parameters_in_uris_key_values_and_data_source_uri() {
        let c = vars(&[(
            "DATA_SOURCE_NAME",
            "postgresql://u:p%26w@tls-uri.example:5433/db?sslmode=verify-full&sslrootcert=%2Fetc%2Fca%20x.pem\
             &application_name=app&sslcert=/c.pem&sslkey=/k.pem&sslsni=0",
        )])
        .source()
        .unwrap();
        assert_eq!(c.config.get_application_name(), Some("app"));
        assert_eq!(c.config.get_password(), Some(&b"p&w"[..]));
        assert_eq!(
            c.config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Require
        );
        let t = tls_of(&c);
        assert_eq!(t.mode, SslMode::VerifyFull);
        assert_eq!(t.root, Some(RootCert::File("/etc/ca x.pem".into())));
        assert_eq!(t.cert, Some("/c.pem".into()));
        assert_eq!(t.key, Some("/k.pem".into()));
        assert!(!t.sni);

        let c = vars(&[(
            "DATA_SOURCE_NAME",
            "host=tls-kv.example user=u password='it\\'s = x' sslmode = verify-ca sslrootcert='/a b/ca.pem' dbname=d",
        )])
        .source()
        .unwrap();
        assert_eq!(c.config.get_password(), Some(&b"it's = x"[..]));
        assert_eq!(describe(&c.config), "u@tls-kv.example:5432/d");
        let t = tls_of(&c);
        assert_eq!(t.mode, SslMode::VerifyCa);
        assert_eq!(t.root, Some(RootCert::File("/a b/ca.pem".into())));
        assert!(t.sni);

        // DATA_SOURCE_URI, with the user and password set after parsing.
        let v = vars(&[
            (
                "DATA_SOURCE_URI",
                "tls-dsu.example:5432/db?sslmode=require&sslrootcert=system&sslmode=verify-full",
            ),
            ("DATA_SOURCE_USER", "mon"),
            ("DATA_SOURCE_PASS", "pw"),
        ]);
        let mut c = v.source().unwrap();
        // What the exporter changes per session does not lose the settings.
        harden(&mut c.config, Duration::from_secs(10));
        c.config.dbname("other");
        let t = tls_of(&c);
        assert_eq!(
            (t.mode, t.root),
            (SslMode::VerifyFull, Some(RootCert::System))
        );
    }

    #[test]
    fn libpq_defaults_for_tls() {
        // No sslmode: prefer, as libpq; with the system roots: verify-full.
        let c = parse_dsn("host=tls-default.example user=u", "x").unwrap();
        assert_eq!(tls_of(&c).mode, SslMode::Prefer);
        let c = parse_dsn("host=tls-default.example user=u2 sslrootcert=system", "x").unwrap();
        assert_eq!(tls_of(&c).mode, SslMode::VerifyFull);
        for mode in ["disable", "allow", "prefer", "require"] {
            let c = parse_dsn(
                &format!("host=tls-modes.example user={mode} sslmode={mode}"),
                "x",
            )
            .unwrap();
            assert_eq!(tls_of(&c).mode.as_str(), mode);
        }
        // An empty value is no value.
        let c = parse_dsn(
            "postgresql://u@tls-empty.example/db?sslrootcert=&sslmode=require",
            "x",
        )
        .unwrap();
        assert_eq!(tls_of(&c).root, None);
    }

    #[test]
    fn tls_mistakes_name_the_setting_to_change() {
        let cases = [
            (
                "host=h user=u sslmode=verify",
                "set sslmode to one of disable, allow",
            ),
            ("host=h user=u sslmode=verify-ca", "needs sslrootcert"),
            (
                "host=h user=u sslmode=require sslrootcert=system",
                "set sslmode=verify-full",
            ),
            ("host=h user=u sslcert=/c.pem", "set sslkey"),
            ("host=h user=u sslkey=/k.pem", "set sslcert"),
            ("host=h user=u sslsni=yes", "set sslsni=1"),
        ];
        for (dsn, says) in cases {
            let err = parse_dsn(dsn, "x").unwrap_err();
            assert!(err.to_string().contains(says), "{dsn}: {err}");
        }
    }

    #[test]
    fn key_values_keep_what_tokio_postgres_reads() {
        let (rest, params) = take_key_values(
            "host=h  sslmode='verify-full' options='-c a=b' sslrootcert=/x\\ y.pem port = 5",
        );
        assert_eq!(rest, "host=h options='-c a=b' port = 5");
        assert_eq!(params.get("sslmode"), Some("verify-full"));
        assert_eq!(params.get("sslrootcert"), Some("/x y.pem"));
        // What does not tokenize is left for tokio-postgres to explain.
        let (rest, _) = take_key_values("host=h password='open");
        assert_eq!(rest, "host=h password='open");
        let (rest, params) = take_uri_params("postgresql://u:a?b@h/db?sslmode=allow");
        assert_eq!(rest, "postgresql://u:a?b@h/db");
        assert_eq!(params.get("sslmode"), Some("allow"));
        assert_eq!(percent_decode("%2Fa%zz%4"), "/a%zz%4");
    }
}
