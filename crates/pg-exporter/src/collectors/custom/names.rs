//! The names a custom queries file defines, checked at start: metric and
//! label names Prometheus accepts, no column twice, and no family defined
//! twice (by two namespaces, or by a namespace and the exporter or an
//! enabled built-in collector), which upstream's registry would refuse on
//! every scrape.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use super::file::{Namespace, Problem, Usage, line_of};
use super::{Query, Read, Use};
use crate::collectors::COLLECTORS;
use crate::exposition::Kind;

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`
pub(super) fn valid_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `[a-zA-Z_][a-zA-Z0-9_]*`, not reserved (`__`).
fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with("__")
}

/// Who defines a family name, for the message on a collision.
struct Owner {
    namespace: String,
    column: String,
    line: Option<usize>,
}

/// Checks the namespaces of `text` and builds their queries, in order.
pub(super) fn check(
    text: &str,
    namespaces: &[(String, Namespace)],
    prefix: &str,
    enabled: &[&str],
) -> Result<Vec<Query>, Problem> {
    let builtin: Vec<_> = COLLECTORS
        .iter()
        .filter(|c| enabled.contains(&c.name.as_ref()))
        .collect();
    let mut owners: HashMap<String, Owner> = HashMap::new();
    let mut seen_namespaces: HashSet<&str> = HashSet::new();
    let mut queries = Vec::new();
    for (ns_name, ns) in namespaces {
        let ns_line = line_of(text, ns_name, None, 0);
        let problem = |line: Option<usize>, text: String| Problem { line, text };
        if !seen_namespaces.insert(ns_name) {
            let line = nth_top_line(text, ns_name, 1).or(ns_line);
            return Err(problem(
                line,
                format!("namespace {ns_name} is defined twice; merge the two or rename one"),
            ));
        }
        if builtin.iter().any(|c| c.name == ns_name.as_str()) {
            return Err(problem(
                ns_line,
                format!(
                    "namespace {ns_name} has the name of a built-in collector (its success is \
                     reported as collector=\"{ns_name}\"); rename it, e.g. pg_{ns_name}"
                ),
            ));
        }
        // Upstream replaces the first "pg" of the namespace with the prefix.
        let family = ns_name.replacen("pg", prefix, 1);
        let has_histogram = ns.metrics.iter().any(|(_, c)| c.usage == Usage::Histogram);
        let mut columns: HashMap<String, Use> = HashMap::new();
        let mut labels: Vec<String> = vec!["server".to_string()];
        let mut count: HashMap<&str, usize> = HashMap::new();
        for (col, spec) in &ns.metrics {
            let n = count.entry(col.as_str()).or_default();
            let line = line_of(text, ns_name, Some(col), *n).or(ns_line);
            *n += 1;
            let at =
                |what: String| problem(line, format!("namespace {ns_name}, column {col}: {what}"));
            if columns.contains_key(col) {
                return Err(at("the column is listed twice; keep one entry".into()));
            }
            let name = match spec.usage {
                Usage::Duration => format!("{family}_{col}_milliseconds"),
                _ => format!("{family}_{col}"),
            };
            let use_ = match spec.usage {
                Usage::Discard => Use::Skip,
                Usage::Label => {
                    if col == "server" {
                        return Err(at(
                            "the exporter adds the label server (host:port) itself; \
                                       rename the column in the query, e.g. AS server_name"
                                .into(),
                        ));
                    }
                    if !valid_label_name(col) {
                        return Err(at("a label name must be letters, digits and underscores, \
                                       not starting with a digit or __; rename the column in the query"
                            .into()));
                    }
                    if has_histogram && col == "le" {
                        return Err(at("le is the bucket label of the namespace's histograms; \
                                       rename the column in the query"
                            .into()));
                    }
                    labels.push(col.clone());
                    Use::Skip
                }
                usage => {
                    if !valid_metric_name(&name) {
                        return Err(at(format!(
                            "{name} is not a valid metric name (letters, digits, _ and :, not \
                             starting with a digit); rename the namespace or the column"
                        )));
                    }
                    let help = spec.description.clone();
                    match usage {
                        Usage::Histogram => Use::Histogram { name, help },
                        Usage::Counter => value(name, help, Kind::Counter, Read::Number),
                        Usage::Gauge => value(name, help, Kind::Gauge, Read::Number),
                        Usage::MappedMetric => {
                            value(name, help, Kind::Gauge, Read::Mapped(spec.mapping.clone()))
                        }
                        _ => value(name, help, Kind::Gauge, Read::Duration),
                    }
                }
            };
            // The names the column's samples take, each with one owner.
            let written: Vec<String> = match &use_ {
                Use::Skip => Vec::new(),
                Use::Value { name, .. } => vec![name.clone()],
                Use::Histogram { name, .. } => ["", "_bucket", "_sum", "_count"]
                    .iter()
                    .map(|s| format!("{name}{s}"))
                    .collect(),
            };
            for name in written {
                if let Some(other) = owners.get(&name) {
                    let (o_ns, o_col) = (&other.namespace, &other.column);
                    let where_ = other
                        .line
                        .map(|l| format!(" (line {l})"))
                        .unwrap_or_default();
                    return Err(at(format!(
                        "its metric {name} is also defined by namespace {o_ns}, column {o_col}{where_}; \
                         rename one of them"
                    )));
                }
                if let Some(reason) = reserved(&name, prefix, &builtin) {
                    return Err(at(format!("its metric {name} {reason}")));
                }
                owners.insert(
                    name,
                    Owner {
                        namespace: ns_name.clone(),
                        column: col.clone(),
                        line,
                    },
                );
            }
            columns.insert(col.clone(), use_);
        }
        // A histogram's parts are read with it.
        for (col, spec) in &ns.metrics {
            if spec.usage == Usage::Histogram {
                for part in ["_bucket", "_sum", "_count"] {
                    let part = format!("{col}{part}");
                    if columns.contains_key(&part) {
                        let line = line_of(text, ns_name, Some(&part), 0).or(ns_line);
                        return Err(problem(
                            line,
                            format!(
                                "namespace {ns_name}, column {part}: it is part of the HISTOGRAM \
                                 {col} (read with it); remove its entry"
                            ),
                        ));
                    }
                    columns.insert(part, Use::Skip);
                }
            }
        }
        labels.sort();
        queries.push(Query {
            name: ns_name.clone(),
            family,
            sql: ns.query.clone(),
            cache: Duration::from_secs(ns.cache_seconds),
            runonserver: ns.runonserver.clone(),
            columns,
            labels,
            warned: Mutex::new(HashSet::new()),
        });
    }
    Ok(queries)
}

fn value(name: String, help: String, kind: Kind, read: Read) -> Use {
    Use::Value {
        name,
        help,
        kind,
        read,
    }
}

/// Why `name` is taken, if it is: the exporter's own families, or one an
/// enabled built-in collector writes.
fn reserved(name: &str, prefix: &str, builtin: &[&crate::collectors::Collector]) -> Option<String> {
    let own = [format!("{prefix}_up"), format!("{prefix}_static")];
    let own_prefixes = [
        format!("{prefix}_exporter_"),
        format!("{prefix}_scrape_collector_"),
    ];
    if own.iter().any(|o| o == name) || own_prefixes.iter().any(|p| name.starts_with(p.as_str())) {
        return Some(
            "is one of the exporter's own families; rename the namespace or the column".into(),
        );
    }
    builtin.iter().find(|c| c.writes(prefix, name)).map(|c| {
        format!(
            "is also written by the built-in collector {0}; rename the namespace or the column, \
             or turn the collector off with --no-collector.{0}",
            c.name
        )
    })
}

/// The line of the `n`-th (from 0) top-level key `ns`.
fn nth_top_line(text: &str, ns: &str, n: usize) -> Option<usize> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| {
            !l.starts_with([' ', '\t', '#', '-'])
                && l.split_once(':')
                    .is_some_and(|(k, _)| k.trim().trim_matches(['"', '\'']) == ns)
        })
        .nth(n)
        .map(|(i, _)| i + 1)
}
