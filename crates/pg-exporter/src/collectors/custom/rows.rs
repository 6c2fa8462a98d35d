//! A custom query's rows to families, as upstream's `queryNamespaceMapping`
//! maps them: labels from the LABEL columns (and `server`), one sample per
//! value column, histograms from their four columns, and columns the file
//! does not list as `untyped` samples when they read as numbers. A value
//! that does not read (text in a GAUGE, an unmapped text) leaves its sample
//! out, with one warning; a histogram column that holds no array fails the
//! namespace.

use std::collections::HashMap;

use tokio_postgres::SimpleQueryMessage;
use tokio_postgres::types::Type;

use super::names::valid_metric_name;
use super::values::{Value, array, decode, duration_ms, parse_float};
use super::{Query, Read, Use};
use crate::collectors::{Ctx, Failure};
use crate::exposition::{Families, Histogram, Kind, Labels};

impl Query {
    /// Adds the families of `messages` (a simple query's answer; `columns`
    /// from the same query prepared) to `out`.
    pub(super) fn rows(
        &self,
        columns: &[tokio_postgres::Column],
        messages: &[SimpleQueryMessage],
        ctx: &Ctx,
        out: &mut Families,
    ) -> Result<(), Failure> {
        let names: Vec<&str> = columns.iter().map(|c| c.name()).collect();
        // A name given twice reads its last column, as upstream's lookup does.
        let index: HashMap<&str, usize> = names.iter().enumerate().map(|(i, n)| (*n, i)).collect();
        for message in messages {
            let SimpleQueryMessage::Row(row) = message else {
                continue;
            };
            let values: Vec<Value<'_>> = (0..row.len())
                .map(|i| {
                    let ty = columns.get(i).map_or(&Type::TEXT, |c| c.type_());
                    decode(ty, row.get(i))
                })
                .collect();
            let labels: Labels = self
                .labels
                .iter()
                .map(|l| {
                    let value = if l == "server" {
                        ctx.server.clone()
                    } else {
                        index
                            .get(l.as_str())
                            .and_then(|i| values.get(*i))
                            .map(Value::label)
                            .unwrap_or_default()
                    };
                    (l.clone(), value)
                })
                .collect();
            for (i, column) in names.iter().enumerate() {
                let Some(value) = values.get(i) else {
                    continue;
                };
                match self.columns.get(*column) {
                    Some(Use::Skip) => {}
                    Some(Use::Value {
                        name,
                        help,
                        kind,
                        read,
                    }) => {
                        if let Some(v) = self.read(column, value, read) {
                            out.add(name, help, *kind, labels.clone(), v);
                        }
                    }
                    Some(Use::Histogram { name, help }) => {
                        let at = |part: &str| {
                            index
                                .get(format!("{column}{part}").as_str())
                                .and_then(|i| values.get(*i))
                        };
                        if let Some(h) =
                            self.histogram(column, value, at("_bucket"), at("_sum"), at("_count"))?
                        {
                            out.add_histogram(name, help, labels.clone(), h);
                        }
                    }
                    None => self.unlisted(column, value, &labels, out),
                }
            }
        }
        Ok(())
    }

    /// A value column's sample value; `None` (warned once) when it does not read.
    fn read(&self, column: &str, value: &Value<'_>, read: &Read) -> Option<f64> {
        let v = match read {
            Read::Number => value.number(),
            // NULL has no mapping and no duration: no sample, as upstream.
            Read::Mapped(map) => match value.text() {
                None => return None,
                Some(text) => map.get(text.as_ref()).copied(),
            },
            Read::Duration => match value.text() {
                None => return None,
                Some(text) if text == "-1" => return None,
                Some(text) => duration_ms(&text),
            },
        };
        if v.is_none() {
            let shown = value.label();
            let fix = match read {
                Read::Number => "cast it to a number in the query, or make the column a LABEL",
                Read::Mapped(_) => "add it to the column's metric_mapping",
                Read::Duration => "select a Go duration like 1h2m3s or 250ms",
            };
            self.warn_once(format!("{column}:{shown}"), || {
                format!("column {column}: {shown:?} does not read as its usage says, so its sample is left out; {fix}")
            });
        }
        v
    }

    /// A HISTOGRAM column's series: bounds in `bounds`, cumulative counts in
    /// `<column>_bucket`, then `_sum` and `_count`.
    fn histogram(
        &self,
        column: &str,
        bounds: &Value<'_>,
        buckets: Option<&Value<'_>>,
        sum: Option<&Value<'_>>,
        count: Option<&Value<'_>>,
    ) -> Result<Option<Histogram>, Failure> {
        let (Some(buckets), Some(sum), Some(count)) = (buckets, sum, count) else {
            self.warn_once(format!("{column}:parts"), || {
                format!(
                    "the HISTOGRAM column {column} needs the columns {column}_bucket, {column}_sum \
                     and {column}_count beside it; add them to the query"
                )
            });
            return Ok(None);
        };
        let bad_array = |part: &str, what: &str| {
            Failure::Rows(format!(
                "custom query {}: column {column}{part} must hold a one-dimensional array of \
                 {what} without NULLs (e.g. ARRAY_AGG(...)); fix the query",
                self.name
            ))
        };
        let bounds = elements(bounds, parse_float).ok_or_else(|| bad_array("", "bucket bounds"))?;
        let counts = elements(buckets, |i| i.parse::<i64>().ok())
            .ok_or_else(|| bad_array("_bucket", "integer counts"))?;
        let (Some(sum), Some(count)) = (sum.number(), count.count()) else {
            self.warn_once(format!("{column}:sum"), || {
                format!(
                    "{column}_sum must read as a number and {column}_count as a whole number; \
                     cast them in the query (the series is left out)"
                )
            });
            return Ok(None);
        };
        // One count per bound (extra bounds are dropped); a bound given
        // twice keeps its last count, as upstream's map does.
        let mut by_bound: Vec<(f64, u64)> = Vec::new();
        for (bound, n) in bounds.iter().zip(counts) {
            match by_bound.iter_mut().find(|(b, _)| b == bound) {
                Some(slot) => slot.1 = n as u64,
                None => by_bound.push((*bound, n as u64)),
            }
        }
        Ok(Some(Histogram {
            buckets: by_bound,
            sum,
            count,
        }))
    }

    /// A column the file does not list: `untyped` if it reads as a number.
    fn unlisted(&self, column: &str, value: &Value<'_>, labels: &Labels, out: &mut Families) {
        let name = format!("{}_{column}", self.family);
        let v = value.number();
        match v {
            Some(v) if valid_metric_name(&name) => {
                let help = format!("Unknown metric from {}", self.family);
                out.add(&name, &help, Kind::Untyped, labels.clone(), v);
            }
            _ => self.warn_once(format!("{column}:unlisted"), || {
                format!(
                    "column {column} is not in the namespace's metrics and does not make an \
                     untyped metric ({}); list it as LABEL or DISCARD",
                    if v.is_some() {
                        format!("{name} is no metric name")
                    } else {
                        format!("{:?} is no number", value.label())
                    }
                )
            }),
        }
    }
}

/// An array column's elements, each read by `parse`; NULL has none. `None`
/// when it is no one-dimensional array or an element does not read.
fn elements<T>(value: &Value<'_>, parse: impl Fn(&str) -> Option<T>) -> Option<Vec<T>> {
    match value {
        Value::Null => Some(Vec::new()),
        v => array(&v.label())?.iter().map(|i| parse(i)).collect(),
    }
}
