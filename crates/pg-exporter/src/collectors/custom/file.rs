//! The custom queries file (`--extend.query-path`), upstream's format:
//!
//! ```yaml
//! pg_replication:                 # a namespace: metric names start with it
//!   query: "SELECT ... AS lag"    # required
//!   master: true                  # only on the main database (auto-discovery)
//!   cache_seconds: 30             # reuse the rows for that long
//!   runonserver: ">=10.0.0"       # only on servers in this version range
//!   metrics:                      # one single-key map per column
//!     - lag:
//!         usage: "GAUGE"          # LABEL COUNTER GAUGE HISTOGRAM MAPPEDMETRIC DURATION DISCARD
//!         description: "Replication lag behind master in seconds"
//! ```
//!
//! Read with serde (errors carry the line serde_norway saw them at), then
//! checked as a whole: names that collide, label names, mappings.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};

use super::range::Range;

/// How a column is used, upstream's `usage`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Usage {
    Discard,
    Label,
    Counter,
    Gauge,
    Histogram,
    MappedMetric,
    Duration,
}

const USAGES: &str = "LABEL, COUNTER, GAUGE, HISTOGRAM, MAPPEDMETRIC, DURATION or DISCARD";

impl Usage {
    fn parse(text: &str) -> Result<Self, String> {
        Ok(match text {
            "DISCARD" => Usage::Discard,
            "LABEL" => Usage::Label,
            "COUNTER" => Usage::Counter,
            "GAUGE" => Usage::Gauge,
            "HISTOGRAM" => Usage::Histogram,
            "MAPPEDMETRIC" => Usage::MappedMetric,
            "DURATION" => Usage::Duration,
            other => {
                return Err(format!(
                    "unknown usage {other:?}; use {USAGES} (upper case, as upstream spells them)"
                ));
            }
        })
    }
}

/// Reads a scalar with `parse`, inside the deserializer's visit of it, so
/// an error carries the scalar's own line. NULL reads `None`.
struct Scalar<F>(F, &'static str);

impl<'de, T, F: FnOnce(&str) -> Result<T, String>> Visitor<'de> for Scalar<F> {
    type Value = Option<T>;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.1)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Option<T>, E> {
        (self.0)(v).map(Some).map_err(E::custom)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Option<T>, E> {
        Ok(None)
    }
}

impl<'de> Deserialize<'de> for Usage {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(Scalar(Usage::parse, "a usage such as GAUGE"))?
            .ok_or_else(|| de::Error::custom(format!("the usage is empty; use {USAGES}")))
    }
}

/// A column's entry under `metrics`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "ColumnFields")]
pub(crate) struct Column {
    pub usage: Usage,
    pub description: String,
    /// MAPPEDMETRIC: text value → sample value.
    pub mapping: BTreeMap<String, f64>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a column's settings: a mapping with usage and description"
)]
struct ColumnFields {
    usage: Option<Usage>,
    #[serde(default)]
    description: String,
    metric_mapping: Option<BTreeMap<String, f64>>,
    /// Upstream declares it but cannot load it; refused with a pointer.
    pg_version: Option<de::IgnoredAny>,
}

impl TryFrom<ColumnFields> for Column {
    type Error = String;

    fn try_from(f: ColumnFields) -> Result<Self, String> {
        if f.pg_version.is_some() {
            return Err(
                "pg_version is not supported (upstream's exporter fails to load a file \
                        with it); give the namespace a runonserver range instead"
                    .into(),
            );
        }
        let Some(usage) = f.usage else {
            return Err(format!(
                "the column has no usage; add `usage: GAUGE` (or {USAGES})"
            ));
        };
        let mapping = f.metric_mapping.unwrap_or_default();
        match usage {
            Usage::MappedMetric if mapping.is_empty() => {
                return Err(
                    "a MAPPEDMETRIC column needs metric_mapping, the number for each \
                            text value, e.g. `metric_mapping: {on: 1, off: 0}`"
                        .into(),
                );
            }
            Usage::MappedMetric => {}
            _ if !mapping.is_empty() => {
                return Err(
                    "metric_mapping is only read for usage MAPPEDMETRIC; remove it or \
                            change the usage"
                        .into(),
                );
            }
            _ => {}
        }
        Ok(Column {
            usage,
            description: f.description,
            mapping,
        })
    }
}

/// One namespace as the file holds it.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "NamespaceFields")]
pub(crate) struct Namespace {
    pub query: String,
    /// Column name and settings, in file order.
    pub metrics: Vec<(String, Column)>,
    pub master: bool,
    pub cache_seconds: u64,
    pub runonserver: Option<Range>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a namespace: a mapping with query and metrics"
)]
struct NamespaceFields {
    query: Option<String>,
    #[serde(default)]
    metrics: Vec<BTreeMap<String, Column>>,
    #[serde(default)]
    master: bool,
    #[serde(default)]
    cache_seconds: u64,
    #[serde(default)]
    runonserver: RangeField,
}

/// `runonserver`, checked where it stands (so an error names its line).
#[derive(Default)]
struct RangeField(Option<Range>);

impl<'de> Deserialize<'de> for RangeField {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let parse = |text: &str| match text.trim() {
            "" => Ok(None),
            text => Range::parse(text).map(Some),
        };
        let range = d.deserialize_any(Scalar(
            parse,
            "a version range such as \">=10.0.0 <11.0.0\"",
        ))?;
        Ok(RangeField(range.flatten()))
    }
}

impl TryFrom<NamespaceFields> for Namespace {
    type Error = String;

    fn try_from(f: NamespaceFields) -> Result<Self, String> {
        let query = f.query.unwrap_or_default();
        if query.trim().is_empty() {
            return Err(
                "the namespace has no query; add `query: SELECT ...` with the SQL that \
                        returns its rows"
                    .into(),
            );
        }
        Ok(Namespace {
            query,
            metrics: f.metrics.into_iter().flatten().collect(),
            master: f.master,
            cache_seconds: f.cache_seconds,
            runonserver: f.runonserver.0,
        })
    }
}

/// The namespaces in file order.
struct Top(Vec<(String, Namespace)>);

impl<'de> Deserialize<'de> for Top {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct TopVisitor;
        impl<'de> Visitor<'de> for TopVisitor {
            type Value = Top;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("namespaces: a mapping of names to queries")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Top, A::Error> {
                let mut out = Vec::new();
                while let Some(name) = map.next_key::<String>()? {
                    let ns = map.next_value::<Namespace>()?;
                    out.push((name, ns));
                }
                Ok(Top(out))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Top, E> {
                Ok(Top(Vec::new()))
            }
        }
        d.deserialize_any(TopVisitor)
    }
}

/// A problem with the file, at a line when one is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Problem {
    pub line: Option<usize>,
    pub text: String,
}

/// Reads the namespaces of `text`.
pub(crate) fn parse(text: &str) -> Result<Vec<(String, Namespace)>, Problem> {
    let has_content = text.lines().any(|l| {
        let l = l.trim();
        !l.is_empty() && !l.starts_with('#') && l != "---"
    });
    if !has_content {
        return Ok(Vec::new());
    }
    match serde_norway::from_str::<Top>(text) {
        Ok(Top(namespaces)) => Ok(namespaces),
        Err(e) => {
            let line = e.location().map(|l| l.line());
            // serde_norway appends " at line N column C"; the line is given apart.
            let mut message = e.to_string();
            if let Some(at) = message.find(" at line ") {
                message.truncate(at);
            }
            // serde_norway names where (`pg_a.metrics[1].x.usage: ...`), but
            // not always (syntax errors): then the namespace around the line.
            let message = match line.and_then(|l| namespace_at(text, l)) {
                Some(ns) if !message.starts_with(ns) => format!("namespace {ns}: {message}"),
                _ => message,
            };
            Err(Problem {
                line,
                text: message,
            })
        }
    }
}

/// The top-level key of a line (`name:` at column 0, quotes taken off).
fn top_key(line: &str) -> Option<&str> {
    if line.starts_with([' ', '\t', '#', '-']) {
        return None;
    }
    let (key, _) = line.split_once(':')?;
    Some(key.trim().trim_matches(['"', '\'']))
}

/// The namespace whose block holds line `line` (1-based).
fn namespace_at(text: &str, line: usize) -> Option<&str> {
    text.lines().take(line).filter_map(top_key).last()
}

/// The line (1-based) where namespace `ns` starts, and where its column
/// `column` is listed (the `n`-th time, from 0), when they can be found.
pub(crate) fn line_of(text: &str, ns: &str, column: Option<&str>, n: usize) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.iter().position(|l| top_key(l) == Some(ns))?;
    let Some(column) = column else {
        return Some(start + 1);
    };
    let mut seen = 0;
    for (i, l) in lines.iter().enumerate().skip(start + 1) {
        if top_key(l).is_some() {
            break;
        }
        let key = l.trim_start().trim_start_matches(['-', '{', ' ']);
        let key = key
            .split(':')
            .next()
            .unwrap_or("")
            .trim()
            .trim_matches(['"', '\'']);
        if key == column {
            if seen == n {
                return Some(i + 1);
            }
            seen += 1;
        }
    }
    Some(start + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "\
pg_a:
  query: SELECT 1 AS x, 'l' AS l
  master: true
  cache_seconds: 5
  runonserver: \">=10.0.0\"
  metrics:
    - l:
        usage: \"LABEL\"
        description: a label
    - x:
        usage: \"GAUGE\"
        description: an x
";

    #[test]
    fn a_good_file_reads_in_order() {
        let ns = parse(GOOD).unwrap();
        assert_eq!(ns.len(), 1);
        let (name, a) = &ns[0];
        assert_eq!(name, "pg_a");
        assert!(a.master);
        assert_eq!(a.cache_seconds, 5);
        assert_eq!(a.metrics[0].0, "l");
        assert_eq!(a.metrics[1].1.usage, Usage::Gauge);
        assert!(a.runonserver.as_ref().unwrap().matches((15, 0, 0)));
    }

    #[test]
    fn comments_only_is_no_namespace() {
        assert!(parse("# nothing here\n\n").unwrap().is_empty());
    }

    fn problem(text: &str) -> Problem {
        parse(text).unwrap_err()
    }

    #[test]
    fn mistakes_name_the_line_and_what_to_do() {
        let p = problem(&GOOD.replace("\"GAUGE\"", "\"GAUG\""));
        assert_eq!(p.line, Some(11), "{p:?}");
        assert!(
            p.text.contains("pg_a.metrics[1].x.usage") && p.text.contains("unknown usage \"GAUG\""),
            "{p:?}"
        );

        let p = problem(&GOOD.replace("  query: SELECT 1 AS x, 'l' AS l\n", ""));
        assert_eq!(p.line, Some(1), "{p:?}");
        assert!(p.text.contains("has no query"), "{p:?}");

        let p = problem(&GOOD.replace("\"GAUGE\"", "MAPPEDMETRIC"));
        assert_eq!(p.line, Some(10), "{p:?}");
        assert!(p.text.contains("needs metric_mapping"), "{p:?}");

        let p = problem(&GOOD.replace(">=10.0.0", ">=10"));
        assert_eq!(p.line, Some(5), "{p:?}");
        assert!(p.text.contains("write it like"), "{p:?}");

        let p = problem(&GOOD.replace("master:", "mastr:"));
        assert_eq!(p.line, Some(3), "{p:?}");
        assert!(p.text.contains("unknown field `mastr`"), "{p:?}");

        let p = problem(&GOOD.replace("  metrics:\n", "  metrics: [\n"));
        assert!(p.line.is_some(), "{p:?}");
    }

    #[test]
    fn lines_of_namespaces_and_columns() {
        assert_eq!(line_of(GOOD, "pg_a", None, 0), Some(1));
        assert_eq!(line_of(GOOD, "pg_a", Some("x"), 0), Some(10));
        assert_eq!(line_of(GOOD, "pg_b", None, 0), None);
    }
}
