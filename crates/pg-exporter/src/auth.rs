//! `--config.file`: upstream's `postgres_exporter.yml`, whose auth modules
//! give `/probe?target=...&auth_module=NAME` its credentials and connection
//! options (Prometheus' multi-target pattern: one exporter, many databases).
//!
//! ```yaml
//! auth_modules:
//!   reporting:
//!     type: userpass
//!     userpass:
//!       username: monitor
//!       password: secret
//!     options:            # libpq parameters added to the target
//!       sslmode: verify-full
//!       sslrootcert: /certs/ca.pem
//! ```
//!
//! As upstream v0.20 reads it (`KnownFields`), a key other than these is a
//! mistake: the file is refused, naming it and its line. Upstream then
//! runs without modules and warns; this exporter does not start, so a typo
//! does not turn into 400s on every probe. Every module is checked at start
//! (its type, its credentials, its options as a connection string would
//! be); passwords are kept out of every message and `Debug` output.

use sidecar_telemetry::yaml::describe_error as yaml_error;
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::Deserialize;

/// The file upstream reads when `--config.file` is not given.
pub const DEFAULT_FILE: &str = "postgres_exporter.yml";

/// A config file that cannot be used; each message says what to fix.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigFileError {
    #[error(
        "cannot read the config file {path} (--config.file): {reason}; give the path of a readable file"
    )]
    Read { path: String, reason: String },
    #[error(
        "config file {path}: {message}; it may hold only auth_modules: NAME: {{type: userpass, userpass: \
         {{username, password}}, options: {{libpq parameter: value}}}}"
    )]
    Parse { path: String, message: String },
    #[error("config file {path}: auth module {module:?}: {message}")]
    Module {
        path: String,
        module: String,
        message: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    auth_modules: Option<BTreeMap<String, ModuleSpec>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ModuleSpec {
    #[serde(rename = "type")]
    kind: Option<String>,
    userpass: Option<UserPass>,
    #[serde(default)]
    options: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserPass {
    username: Option<String>,
    password: Option<String>,
}

/// One auth module: the credentials and the connection options a probe
/// of any target with it uses.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthModule {
    pub username: String,
    pub password: String,
    /// libpq parameters, each replacing the target's own.
    pub options: Vec<(String, String)>,
}

impl fmt::Debug for AuthModule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthModule")
            .field("username", &self.username)
            .field("password", &"<hidden>")
            .field("options", &self.options)
            .finish()
    }
}

/// The auth modules of the config file, by name.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct AuthModules {
    modules: BTreeMap<String, AuthModule>,
}

impl fmt::Debug for AuthModules {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.modules.keys()).finish()
    }
}

impl AuthModules {
    /// Reads `path`; a missing file is `None` (no modules) when the path
    /// was not asked for (`explicit` false: upstream's default file name).
    pub fn load(path: &Path, explicit: bool) -> Result<Option<Self>, ConfigFileError> {
        let shown = path.display().to_string();
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text, &shown).map(Some),
            Err(e) if !explicit && e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ConfigFileError::Read {
                path: shown,
                reason: e.to_string(),
            }),
        }
    }

    /// Parses and checks a config file's text (`path` for messages).
    pub fn parse(text: &str, path: &str) -> Result<Self, ConfigFileError> {
        let file: Option<File> =
            serde_norway::from_str(text).map_err(|e| ConfigFileError::Parse {
                path: path.to_string(),
                message: yaml_error(&e),
            })?;
        let mut modules = BTreeMap::new();
        for (name, spec) in file.and_then(|f| f.auth_modules).into_iter().flatten() {
            let module = check(spec).map_err(|message| ConfigFileError::Module {
                path: path.to_string(),
                module: name.clone(),
                message,
            })?;
            modules.insert(name, module);
        }
        Ok(Self { modules })
    }

    pub fn get(&self, name: &str) -> Option<&AuthModule> {
        self.modules.get(name)
    }

    /// The modules' names, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.modules.keys().map(String::as_str).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.modules.is_empty()
    }
}

/// A module as upstream's probe can use it, or what to fix.
fn check(spec: ModuleSpec) -> Result<AuthModule, String> {
    match spec.kind.as_deref() {
        Some("userpass") => {}
        Some(other) => {
            return Err(format!(
                "type {other:?} is not one postgres_exporter knows: set type: userpass"
            ));
        }
        None => return Err("it has no type: set type: userpass".into()),
    }
    let userpass = spec.userpass.ok_or(
        "it has no userpass: add userpass: {username: ..., password: ...} (probes with it need both)",
    )?;
    let username = userpass.username.filter(|u| !u.is_empty()).ok_or(
        "userpass has no username: set userpass.username (probes with this module need a username and a password, as upstream's)",
    )?;
    let password = userpass.password.filter(|p| !p.is_empty()).ok_or(
        "userpass has no password: set userpass.password (probes with this module need a username and a password, as upstream's)",
    )?;
    let options: Vec<(String, String)> = spec.options.unwrap_or_default().into_iter().collect();
    for (key, _) in &options {
        if key == "user" || key == "password" {
            return Err(format!(
                "options.{key} is not used for credentials: set userpass.{} instead",
                if key == "user" {
                    "username"
                } else {
                    "password"
                }
            ));
        }
        if matches!(key.as_str(), "host" | "hostaddr" | "port") {
            // tokio-postgres adds these to the target's instead of replacing them.
            return Err(format!(
                "options.{key} would add a second server to every target: the target names the server, \
                 so remove options.{key}"
            ));
        }
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!(
                "options key {key:?} is not a libpq parameter name: use names like sslmode or connect_timeout"
            ));
        }
    }
    // The options must make a valid connection string (sslmode values,
    // sslrootcert with verify-full, known parameters...).
    crate::dsn::check_options(&options).map_err(|e| format!("options: {e}"))?;
    Ok(AuthModule {
        username,
        password,
        options,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "\
auth_modules:
  first:
    type: userpass
    userpass:
      username: mon1
      password: 'p@ss:1/?'
    options:
      sslmode: disable
      connect_timeout: 3
  second:
    type: userpass
    userpass: {username: mon2, password: s2}
";

    #[test]
    fn upstreams_file_is_read() {
        let m = AuthModules::parse(FILE, "f.yml").unwrap();
        assert_eq!(m.names(), ["first", "second"]);
        let first = m.get("first").unwrap();
        assert_eq!(first.username, "mon1");
        assert_eq!(first.password, "p@ss:1/?");
        assert_eq!(
            first.options,
            [
                ("connect_timeout".to_string(), "3".to_string()),
                ("sslmode".to_string(), "disable".to_string())
            ]
        );
        assert!(m.get("second").unwrap().options.is_empty());
        // Debug shows names only, never a password.
        assert_eq!(format!("{m:?}"), r#"["first", "second"]"#);
        assert!(!format!("{first:?}").contains("p@ss"));
        // An empty file, or one without modules: none.
        assert!(AuthModules::parse("", "f").unwrap().is_empty());
        assert!(
            AuthModules::parse("auth_modules:\n", "f")
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn mistakes_name_the_problem_and_line_and_never_the_password() {
        let cases = [
            (
                "auth_modules:\n  a:\n    type: userpass\n    userpas: {username: u, password: hunter2}\n",
                &["unknown field `userpas`", "line 4"][..],
            ),
            (
                "auth_module:\n  a: {}\n",
                &["unknown field `auth_module`", "line 1"],
            ),
            (
                "auth_modules:\n  a:\n    type: tls\n    userpass: {username: u, password: hunter2}\n",
                &["\"a\"", "set type: userpass"],
            ),
            (
                "auth_modules:\n  a:\n    type: userpass\n    userpass: {username: u}\n",
                &["set userpass.password"],
            ),
            (
                "auth_modules:\n  a:\n    type: userpass\n    userpass: {username: u, password: hunter2}\n    options: {sslmode: verify-full}\n",
                &["\"a\"", "set sslrootcert"],
            ),
            (
                "auth_modules:\n  a:\n    type: userpass\n    userpass: {username: u, password: hunter2}\n    options: {password: x}\n",
                &["set userpass.password instead"],
            ),
            (
                "auth_modules:\n  a:\n    type: userpass\n    userpass: {username: u, password: hunter2}\n    options: {sslmod: require}\n",
                &["\"a\"", "sslmod"],
            ),
            (
                "auth_modules:\n  a:\n    type: userpass\n    userpass: {username: u, password: hunter2}\n    options: {port: 5433}\n",
                &["remove options.port"],
            ),
            ("auth_modules: [\n", &["line"]),
        ];
        for (text, says) in cases {
            let err = AuthModules::parse(text, "p.yml").unwrap_err().to_string();
            for s in says {
                assert!(err.contains(s), "{text}: {err} lacks {s}");
            }
            assert!(err.contains("p.yml"), "{err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
    }

    #[test]
    fn the_default_file_may_be_missing_a_named_one_may_not() {
        let missing = Path::new("/nonexistent/postgres_exporter.yml");
        assert!(AuthModules::load(missing, false).unwrap().is_none());
        let err = AuthModules::load(missing, true).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/postgres_exporter.yml"), "{err}");
    }
}
