//! pg_settings as gauges, as upstream names and converts them, with the
//! values the server, database and role configure: the exporter's own
//! session settings (read-only, statement and lock timeouts, SET after login)
//! do not show.

use crate::exposition::{Families, Kind, sanitize_name};
use crate::session::Session;

use super::spec::Spec;
use super::{Ctx, Pending};

/// The families this collector owns: `<prefix>_settings_<name>`, one per
/// setting (no metric list: every name under the family is its own).
pub(super) const SETTINGS: Spec = Spec {
    family: "settings",
    labels: &[],
    metrics: &[],
};

pub(super) fn settings<'a>(s: &'a Session, ctx: &'a Ctx, out: &'a mut Families) -> Pending<'a> {
    Box::pin(read(s, ctx, out))
}

/// pg_settings only change when the configuration is reloaded (or the server
/// restarts, which means a new session): the rows are read again only when
/// `pg_conf_load_time()` moves.
async fn read(
    client: &Session,
    ctx: &Ctx,
    out: &mut Families,
) -> Result<(), tokio_postgres::Error> {
    let stamp: f64 = client
        .query("SELECT EXTRACT(EPOCH FROM pg_conf_load_time())::float8")
        .await?
        .first()
        .and_then(|r| r.get::<_, Option<f64>>(0))
        .unwrap_or(f64::NAN);
    if let Some(cached) = client.cached("settings", stamp) {
        out.merge(cached);
        return Ok(());
    }
    let rows = client.query(SETTINGS_SQL).await?;
    let mut fresh = Families::new();
    for row in rows {
        let (name, setting, unit, desc, vartype): (String, String, String, String, String) =
            (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
        if let Some((suffix, value, help)) = setting_value(&setting, &unit, &vartype, &desc) {
            let family = format!("{}_settings_{}{}", ctx.prefix, sanitize_name(&name), suffix);
            fresh.add(&family, &help, Kind::Gauge, Vec::new(), value);
        }
    }
    client.store("settings", stamp, fresh.clone());
    out.merge(fresh);
    Ok(())
}

/// The settings with the values a session without the exporter's overrides
/// sees. What the exporter SETs (source `session`) shows its `reset_val`: the
/// value at login, from the server's configuration, the database and the
/// role (and the DSN's own options). `transaction_read_only` follows the
/// transaction, which the exporter's default makes read-only: it shows what
/// a transaction of a session without it gets (the configured
/// `default_transaction_read_only`, or on during recovery).
const SETTINGS_SQL: &str = "SELECT name, CASE \
    WHEN name = 'transaction_read_only' THEN CASE WHEN pg_is_in_recovery() OR (SELECT reset_val \
    FROM pg_settings WHERE name = 'default_transaction_read_only') = 'on' THEN 'on' ELSE 'off' END \
    WHEN source = 'session' THEN reset_val ELSE setting END, \
    COALESCE(unit, ''), COALESCE(short_desc, ''), vartype FROM pg_settings \
    WHERE vartype IN ('bool', 'integer', 'real')";

/// A setting as upstream shows it: booleans 1/0, times in seconds, sizes in
/// bytes (name suffix `_seconds`/`_bytes`), -1 kept as is. `None` for units
/// it does not know (skipped rather than shown wrong).
fn setting_value(
    setting: &str,
    unit: &str,
    vartype: &str,
    desc: &str,
) -> Option<(&'static str, f64, String)> {
    if vartype == "bool" {
        return Some((
            "",
            if setting == "on" { 1.0 } else { 0.0 },
            desc.to_string(),
        ));
    }
    let value: f64 = setting.parse().ok()?;
    let (suffix, factor) = match unit {
        "" => return Some(("", value, desc.to_string())),
        "ms" => ("_seconds", 0.001),
        "s" => ("_seconds", 1.0),
        "min" => ("_seconds", 60.0),
        "h" => ("_seconds", 3600.0),
        "d" => ("_seconds", 86400.0),
        "B" => ("_bytes", 1.0),
        "kB" => ("_bytes", 1024.0),
        "MB" => ("_bytes", 1024.0 * 1024.0),
        "GB" => ("_bytes", 1024.0 * 1024.0 * 1024.0),
        "TB" => ("_bytes", 1024.0 * 1024.0 * 1024.0 * 1024.0),
        "8kB" => ("_bytes", 8192.0),
        "16kB" => ("_bytes", 16384.0),
        "32kB" => ("_bytes", 32768.0),
        "16MB" => ("_bytes", 16.0 * 1024.0 * 1024.0),
        "32MB" => ("_bytes", 32.0 * 1024.0 * 1024.0),
        "64MB" => ("_bytes", 64.0 * 1024.0 * 1024.0),
        _ => return None,
    };
    let unit_word = &suffix[1..];
    let value = if value == -1.0 { value } else { value * factor };
    Some((
        suffix,
        value,
        format!("{desc} [Units converted to {unit_word}.]"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_convert_units_like_upstream() {
        let (suffix, v, help) = setting_value("200", "ms", "integer", "Delay").unwrap();
        assert_eq!((suffix, v), ("_seconds", 0.2));
        assert_eq!(help, "Delay [Units converted to seconds.]");
        assert_eq!(
            setting_value("16384", "8kB", "integer", "").unwrap().1,
            134_217_728.0
        );
        assert_eq!(
            setting_value("-1", "kB", "integer", "").unwrap(),
            ("_bytes", -1.0, " [Units converted to bytes.]".into())
        );
        assert_eq!(setting_value("5", "min", "integer", "").unwrap().1, 300.0);
        assert_eq!(setting_value("on", "", "bool", "x").unwrap().1, 1.0);
        assert_eq!(setting_value("off", "", "bool", "x").unwrap().1, 0.0);
        assert_eq!(
            setting_value("0.9", "", "real", "x").unwrap(),
            ("", 0.9, "x".into())
        );
        assert!(setting_value("1", "parsecs", "integer", "").is_none());
    }
}
