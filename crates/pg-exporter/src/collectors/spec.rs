//! Rows to families: a [`Spec`] names a query's label columns, then one
//! column per metric. Queries cast labels to `text` and values to `float8`,
//! so every row maps the same way.

use crate::exposition::{Families, Kind, Labels};
use crate::session::Session;

use super::Ctx;

pub(super) use Kind::{Counter as C, Gauge as G, Untyped as U};

/// What a NULL value becomes.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Null {
    /// No sample.
    Skip,
    Zero,
    NaN,
}

pub(crate) struct Metric {
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
    pub null: Null,
}

/// A metric whose NULL is left out.
pub(super) const fn m(name: &'static str, kind: Kind, help: &'static str) -> Metric {
    Metric {
        name,
        kind,
        help,
        null: Null::Skip,
    }
}

/// A metric whose NULL reads 0.
pub(super) const fn z(name: &'static str, kind: Kind, help: &'static str) -> Metric {
    Metric {
        name,
        kind,
        help,
        null: Null::Zero,
    }
}

pub(crate) struct Spec {
    /// `<prefix>_<family>_<metric>`.
    pub family: &'static str,
    pub labels: &'static [&'static str],
    pub metrics: &'static [Metric],
}

/// `'text'` as an SQL string literal.
pub(super) fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

pub(super) const CURRENT_LSN: &str =
    "CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn() ELSE pg_current_wal_lsn() END";

/// Runs `sql` and adds its rows to `out` as `spec` maps them.
pub(super) async fn run(
    client: &Session,
    ctx: &Ctx,
    out: &mut Families,
    spec: &Spec,
    sql: &str,
) -> Result<(), tokio_postgres::Error> {
    let rows = client.query(sql).await?;
    let names: Vec<String> = spec
        .metrics
        .iter()
        .map(|m| match m.name {
            "" => format!("{}_{}", ctx.prefix, spec.family),
            name => format!("{}_{}_{}", ctx.prefix, spec.family, name),
        })
        .collect();
    for row in rows {
        let labels: Labels = spec
            .labels
            .iter()
            .enumerate()
            .map(|(i, name)| {
                (
                    name.to_string(),
                    row.get::<_, Option<String>>(i).unwrap_or_default(),
                )
            })
            .collect();
        for (j, metric) in spec.metrics.iter().enumerate() {
            let value: Option<f64> = row.try_get(spec.labels.len() + j)?;
            let value = match (value, metric.null) {
                (Some(v), _) => v,
                (None, Null::Zero) => 0.0,
                (None, Null::NaN) => f64::NAN,
                (None, Null::Skip) => continue,
            };
            out.add(&names[j], metric.help, metric.kind, labels.clone(), value);
        }
    }
    Ok(())
}

/// Runs several queries of one collector at once (pipelined on the session:
/// one round trip, not one per query) and adds their rows in order.
pub(super) async fn run_all(
    client: &Session,
    ctx: &Ctx,
    out: &mut Families,
    queries: &[(&Spec, &str)],
) -> Result<(), tokio_postgres::Error> {
    let results = futures_util::future::join_all(queries.iter().map(|(spec, sql)| async move {
        let mut fam = Families::new();
        run(client, ctx, &mut fam, spec, sql).await.map(|()| fam)
    }))
    .await;
    for result in results {
        out.merge(result?);
    }
    Ok(())
}

/// Checks that `sql` selects one column per label and metric of `spec`
/// (counting the top-level items of its select list).
#[cfg(test)]
pub(super) fn assert_columns(spec: &Spec, sql: &str) {
    let mut depth = 0;
    let mut columns = 1;
    for (i, c) in sql.char_indices().skip(6) {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => columns += 1,
            ' ' if depth == 0 && sql[i..].starts_with(" FROM ") => break,
            _ => {}
        }
    }
    assert_eq!(
        columns,
        spec.labels.len() + spec.metrics.len(),
        "{}",
        spec.family
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_are_quoted() {
        assert_eq!(literal("a'b"), "'a''b'");
    }
}
