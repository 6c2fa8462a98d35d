//! `/probe?target=` values, with or without an auth module: how upstream's
//! `ConfigureTarget` combines a target with a module's credentials and
//! options.

use super::{DsnError, Source, split_dsn, split_uri};
use crate::auth::AuthModule;

/// A `/probe?target=` value: a URI or key=value DSN, or `host[:port][/db][?params]`.
/// With an auth module (`&auth_module=`), as upstream: the module's user and
/// password replace the target's, and its options are added to the target's
/// parameters, replacing those of the same name. Without one, a target
/// without a user takes the exporter's own credentials.
pub fn probe_target(
    target: &str,
    module: Option<&AuthModule>,
    base: Option<&Source>,
) -> Result<Source, DsnError> {
    let target = target.trim();
    let has_scheme = target.starts_with("postgres://") || target.starts_with("postgresql://");
    let what = "the probe target";
    let options = module.map_or(&[][..], |m| m.options.as_slice());
    let (mut config, tls) = if !has_scheme && target.contains('=') && !target.contains('?') {
        split_dsn(&with_key_values(target, options), what)?
    } else {
        split_uri(&with_uri_params(target, options), what)?
    };
    match (module, base.map(|b| &b.config)) {
        (Some(module), _) => {
            config.user(&module.username);
            config.password(module.password.as_bytes());
        }
        (None, Some(base)) if config.get_user().is_none() => {
            if let Some(user) = base.get_user() {
                config.user(user);
            }
            if config.get_password().is_none() {
                if let Some(pass) = base.get_password() {
                    config.password(pass);
                }
            }
        }
        (None, _) => {}
    }
    if config.get_user().is_none() {
        return Err(DsnError::NoUser);
    }
    Ok(Source::new(config, tls))
}

/// Checks an auth module's options as parameters of a connection string.
pub(crate) fn check_options(options: &[(String, String)]) -> Result<(), DsnError> {
    split_dsn(
        &with_key_values("host=localhost user=-", options),
        "its options",
    )
    .map(|_| ())
}

/// A key=value string with `options` appended (the last value of a key wins).
fn with_key_values(dsn: &str, options: &[(String, String)]) -> String {
    let mut out = dsn.to_string();
    for (key, value) in options {
        let quoted = value.replace('\\', "\\\\").replace('\'', "\\'");
        out.push_str(&format!(" {key}='{quoted}'"));
    }
    out
}

/// A URI (or `host[:port][/db]`) with `options` appended to its parameters.
fn with_uri_params(uri: &str, options: &[(String, String)]) -> String {
    let mut out = uri.to_string();
    let after_credentials = uri.find('@').map_or(0, |i| i + 1);
    let mut sep = if uri[after_credentials..].contains('?') {
        '&'
    } else {
        '?'
    };
    for (key, value) in options {
        out.push(sep);
        out.push_str(&percent_encode(key));
        out.push('=');
        out.push_str(&percent_encode(value));
        sep = '&';
    }
    out
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::parse_dsn;
    use super::super::tests::tls_of;
    use super::*;
    use crate::dsn::describe;
    use crate::tls::{RootCert, SslMode};

    #[test]
    fn probe_targets_take_the_exporters_credentials() {
        let base = parse_dsn("host=h user=mon password=pw", "x").unwrap();
        let c = probe_target("db2:5433/app?sslmode=disable", None, Some(&base)).unwrap();
        assert_eq!(c.config.get_user(), Some("mon"));
        assert_eq!(c.config.get_password(), Some(&b"pw"[..]));
        assert_eq!(describe(&c.config), "mon@db2:5433/app");
        let c = probe_target("postgresql://other:x@db3/app", None, Some(&base)).unwrap();
        assert_eq!(c.config.get_user(), Some("other"));
        assert!(probe_target("db2", None, None).is_err());
    }

    fn module(options: &[(&str, &str)]) -> AuthModule {
        AuthModule {
            username: "modu".into(),
            password: "mod p@ss'\\".into(),
            options: options
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn auth_modules_give_credentials_and_options_as_upstream() {
        let base = parse_dsn("host=h user=mon password=pw", "x").unwrap();
        let m = module(&[("sslmode", "verify-full"), ("sslrootcert", "/ca x&y.pem")]);
        // Every form of target; the module's credentials replace the target's,
        // its options the target's parameters of the same name.
        for target in [
            "db2:5433/app",
            "db2:5433/app?sslmode=disable&application_name=a",
            "postgresql://other:x@db2:5433/app?sslmode=disable",
            "host=db2 port=5433 dbname=app user=other sslmode=disable",
        ] {
            let c = probe_target(target, Some(&m), Some(&base)).unwrap();
            assert_eq!(c.config.get_user(), Some("modu"), "{target}");
            assert_eq!(
                c.config.get_password(),
                Some(&b"mod p@ss'\\"[..]),
                "{target}"
            );
            assert_eq!(describe(&c.config), "modu@db2:5433/app", "{target}");
            let t = tls_of(&c);
            assert_eq!(t.mode, SslMode::VerifyFull, "{target}");
            assert_eq!(
                t.root,
                Some(RootCert::File("/ca x&y.pem".into())),
                "{target}"
            );
        }
        let c = probe_target("db2/app?application_name=a", Some(&module(&[])), None).unwrap();
        assert_eq!(c.config.get_application_name(), Some("a"));
        assert_eq!(c.config.get_user(), Some("modu"));
        assert!(check_options(&[("sslmod".into(), "x".into())]).is_err());
        assert!(check_options(&[("connect_timeout".into(), "3".into())]).is_ok());
    }

    #[test]
    fn each_probe_target_has_its_own_tls_settings() {
        let base = parse_dsn(
            "host=tls-probe.example port=5432 user=mon password=pw sslmode=verify-full sslrootcert=/ca.pem",
            "x",
        )
        .unwrap();
        // The same server and credentials with other TLS settings: its own.
        let c = probe_target(
            "tls-probe.example:5432/app?sslmode=require",
            None,
            Some(&base),
        )
        .unwrap();
        assert_eq!(c.config.get_password(), Some(&b"pw"[..]));
        assert_eq!((tls_of(&c).mode, tls_of(&c).root), (SslMode::Require, None));
        let c = probe_target(
            "tls-probe.example:5432/app?sslmode=verify-full&sslrootcert=/other.pem",
            None,
            Some(&base),
        )
        .unwrap();
        assert_eq!(tls_of(&c).root, Some(RootCert::File("/other.pem".into())));
        // Without TLS parameters: libpq's default, not the base's settings.
        let c = probe_target("tls-probe.example:5432/app", None, Some(&base)).unwrap();
        assert_eq!((tls_of(&c).mode, tls_of(&c).root), (SslMode::Prefer, None));
        // The base keeps its own.
        assert_eq!(tls_of(&base).root, Some(RootCert::File("/ca.pem".into())));
    }
}
