//! A strict reader of the Prometheus text format 0.0.4, for tests.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Default, Clone)]
pub struct Family {
    pub kind: String,
    pub help: String,
    pub samples: Vec<(BTreeMap<String, String>, f64)>,
}

impl Family {
    pub fn label_keys(&self) -> BTreeSet<String> {
        self.samples
            .iter()
            .flat_map(|(l, _)| l.keys().cloned())
            .collect()
    }
}

/// Parses an exposition; panics on malformed lines, samples without TYPE,
/// and duplicate series.
pub fn parse(text: &str) -> BTreeMap<String, Family> {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            families.entry(name.to_string()).or_default().help = help.to_string();
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(
                ["counter", "gauge", "untyped", "histogram", "summary"].contains(&kind),
                "{line}"
            );
            families.entry(name.to_string()).or_default().kind = kind.to_string();
            continue;
        }
        assert!(!line.starts_with('#'), "unexpected comment: {line}");
        let (series, value) = line.rsplit_once(' ').unwrap();
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value in {line}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series, BTreeMap::new()),
            Some((name, rest)) => (name, parse_labels(rest.strip_suffix('}').unwrap())),
        };
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad name {name}"
        );
        assert!(
            seen.insert((name.to_string(), labels.clone())),
            "duplicate series: {line}"
        );
        // A histogram's `_bucket`, `_sum` and `_count` lines belong to it;
        // they keep their own name as the label `__name__`.
        let histogram = ["_bucket", "_sum", "_count"].iter().find_map(|s| {
            let base = name.strip_suffix(s)?;
            (!families.contains_key(name)
                && families.get(base).is_some_and(|f| f.kind == "histogram"))
            .then_some(base)
        });
        let mut labels = labels;
        if histogram.is_some() {
            labels.insert("__name__".to_string(), name.to_string());
        }
        let family = families
            .get_mut(histogram.unwrap_or(name))
            .unwrap_or_else(|| panic!("sample without # TYPE: {line}"));
        assert!(!family.kind.is_empty(), "sample without # TYPE: {line}");
        family.samples.push((labels, value));
    }
    families
}

fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut chars = s.chars().peekable();
    while chars.peek().is_some() {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        assert_eq!(chars.next(), Some('"'), "label {key} not quoted in {s}");
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(c) => value.push(c),
                    None => panic!("dangling escape in {s}"),
                },
                '"' => break,
                c => value.push(c),
            }
        }
        assert!(
            labels.insert(key.clone(), value).is_none(),
            "label {key} twice in {s}"
        );
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
    labels
}

/// Runs `promtool check metrics` on the text: it must parse; the only lint
/// findings allowed are upstream postgres_exporter's historical names.
pub fn promtool_check(text: &str) {
    let out = super::run_with_input(
        std::process::Command::new("promtool").args(["check", "metrics"]),
        text.as_bytes(),
        "promtool (Debian package `prometheus`; ./scripts/test installs it)",
    );
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        matches!(out.status.code(), Some(0) | Some(3)),
        "promtool could not parse the output:\n{report}"
    );
    for line in report.lines() {
        let allowed = line.contains("counter metrics should have \"_total\" suffix")
            // Upstream's name for a custom query's DURATION column: <namespace>_<column>_milliseconds.
            || line.contains("use base unit \"seconds\" instead of \"milliseconds\"")
            || line.contains("non-histogram and non-summary metrics should not have \"_count\" suffix")
            // A PostgreSQL setting's own name (pg_settings_wal_summary_keep_time_seconds, PG 17+).
            || (line.starts_with("pg_settings_") && line.contains("metric name should not include type"));
        assert!(allowed, "unexpected promtool finding: {line}");
    }
}
