//! Metric families in the Prometheus text format 0.0.4, with exactly the
//! names upstream postgres_exporter uses (counters without a `_total` suffix
//! included, which a client library would rename).

use std::collections::BTreeMap;
use std::fmt::Write;

/// The `# TYPE` of a family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Untyped,
    /// Series are [`Histogram`]s, written as `_bucket`, `_sum` and `_count` lines.
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Untyped => "untyped",
            Kind::Histogram => "histogram",
        }
    }
}

/// Label pairs of one series.
pub type Labels = Vec<(String, String)>;

/// One histogram series: cumulative bucket counts by upper bound (`le`),
/// the sum and the count of the observations, as a query reported them.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    pub buckets: Vec<(f64, u64)>,
    pub sum: f64,
    pub count: u64,
}

/// A series' value: one number, or a histogram (boxed: most series are numbers).
#[derive(Debug, Clone)]
enum Value {
    Number(f64),
    Histogram(Box<Histogram>),
}

#[derive(Debug, Clone)]
struct Family {
    help: String,
    kind: Kind,
    series: BTreeMap<Labels, Value>,
}

/// A set of families being collected for one scrape.
///
/// A series added twice (same family, same labels) is kept once: the first
/// value wins, so overlapping sources never produce a duplicate-series error.
#[derive(Debug, Clone, Default)]
pub struct Families {
    families: BTreeMap<String, Family>,
    duplicates: u64,
}

/// Adds a series unless present (the first value wins): false if it was.
fn insert_series(series: &mut BTreeMap<Labels, Value>, labels: Labels, value: Value) -> bool {
    match series.entry(labels) {
        std::collections::btree_map::Entry::Occupied(_) => false,
        std::collections::btree_map::Entry::Vacant(slot) => {
            slot.insert(value);
            true
        }
    }
}

impl Families {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one sample (the family name is copied only for a new family).
    pub fn add(&mut self, name: &str, help: &str, kind: Kind, labels: Labels, value: f64) {
        self.insert(name, help, kind, labels, Value::Number(value));
    }

    /// Adds one histogram series to a family of [`Kind::Histogram`].
    pub fn add_histogram(&mut self, name: &str, help: &str, labels: Labels, value: Histogram) {
        self.insert(
            name,
            help,
            Kind::Histogram,
            labels,
            Value::Histogram(Box::new(value)),
        );
    }

    fn insert(&mut self, name: &str, help: &str, kind: Kind, labels: Labels, value: Value) {
        if let Some(family) = self.families.get_mut(name) {
            if !insert_series(&mut family.series, labels, value) {
                self.duplicates += 1;
            }
            return;
        }
        let mut series = BTreeMap::new();
        series.insert(labels, value);
        self.families.insert(
            name.to_string(),
            Family {
                help: help.to_string(),
                kind,
                series,
            },
        );
    }

    /// Declares a family with no series yet (so it shows up with HELP/TYPE).
    pub fn declare(&mut self, name: &str, help: &str, kind: Kind) {
        if !self.families.contains_key(name) {
            self.families.insert(
                name.to_string(),
                Family {
                    help: help.to_string(),
                    kind,
                    series: BTreeMap::new(),
                },
            );
        }
    }

    /// Moves every series of `other` into `self` (a family `self` does not
    /// have yet moves as a whole).
    pub fn merge(&mut self, other: Families) {
        for (name, family) in other.families {
            match self.families.entry(name) {
                std::collections::btree_map::Entry::Vacant(slot) => {
                    slot.insert(family);
                }
                std::collections::btree_map::Entry::Occupied(mut slot) => {
                    let mine = slot.get_mut();
                    for (labels, value) in family.series {
                        if !insert_series(&mut mine.series, labels, value) {
                            self.duplicates += 1;
                        }
                    }
                }
            }
        }
        self.duplicates += other.duplicates;
    }

    /// Series dropped because they were already present.
    #[cfg(test)]
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.families.len()
    }

    /// The value of a series.
    #[cfg(test)]
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let family = self.families.get(name)?;
        family
            .series
            .iter()
            .find(|(l, _)| {
                labels
                    .iter()
                    .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .and_then(|(_, v)| match v {
                Value::Number(v) => Some(*v),
                Value::Histogram(_) => None,
            })
    }

    /// Writes the text exposition.
    pub fn render(&self, out: &mut String) {
        for (name, family) in &self.families {
            let _ = writeln!(out, "# HELP {name} {}", escape_help(&family.help));
            let _ = writeln!(out, "# TYPE {name} {}", family.kind.as_str());
            for (labels, value) in &family.series {
                match value {
                    Value::Number(v) => sample(out, name, "", labels, None, *v),
                    Value::Histogram(h) => render_histogram(out, name, labels, h),
                }
            }
        }
    }
}

/// One sample line: `name` + `suffix`, the labels (and `le`), the value.
fn sample(out: &mut String, name: &str, suffix: &str, labels: &Labels, le: Option<f64>, v: f64) {
    out.push_str(name);
    out.push_str(suffix);
    if !labels.is_empty() || le.is_some() {
        out.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(k);
            out.push_str("=\"");
            escape_label_value(v, out);
            out.push('"');
        }
        if let Some(le) = le {
            if !labels.is_empty() {
                out.push(',');
            }
            out.push_str("le=\"");
            format_value(le, out);
            out.push('"');
        }
        out.push('}');
    }
    out.push(' ');
    format_value(v, out);
    out.push('\n');
}

/// A histogram as the Prometheus client libraries write one: the buckets by
/// ascending bound, a `+Inf` bucket holding the count (unless the query gave
/// one), the sum, the count.
fn render_histogram(out: &mut String, name: &str, labels: &Labels, h: &Histogram) {
    let mut buckets = h.buckets.clone();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    for (le, n) in &buckets {
        sample(out, name, "_bucket", labels, Some(*le), *n as f64);
    }
    if buckets.last().is_none_or(|(le, _)| *le != f64::INFINITY) {
        sample(
            out,
            name,
            "_bucket",
            labels,
            Some(f64::INFINITY),
            h.count as f64,
        );
    }
    sample(out, name, "_sum", labels, None, h.sum);
    sample(out, name, "_count", labels, None, h.count as f64);
}

fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

fn escape_label_value(v: &str, out: &mut String) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn format_value(v: f64, out: &mut String) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else if v == v.trunc() && v.abs() < 1e15 {
        let _ = write!(out, "{}", v as i64);
    } else {
        let _ = write!(out, "{v}");
    }
}

/// Turns a label or metric name into a valid Prometheus name.
pub fn sanitize_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn renders_sorted_escaped_and_deduplicated() {
        let mut f = Families::new();
        f.add(
            "pg_b",
            "B things",
            Kind::Counter,
            l(&[("datname", "x\"y\\z\nw")]),
            3.0,
        );
        f.add("pg_a", "A\nthing", Kind::Gauge, vec![], 0.5);
        f.add(
            "pg_b",
            "B things",
            Kind::Counter,
            l(&[("datname", "x\"y\\z\nw")]),
            9.0,
        );
        f.declare("pg_c", "empty", Kind::Untyped);
        let mut out = String::new();
        f.render(&mut out);
        assert_eq!(
            out,
            "# HELP pg_a A\\nthing\n# TYPE pg_a gauge\npg_a 0.5\n\
             # HELP pg_b B things\n# TYPE pg_b counter\npg_b{datname=\"x\\\"y\\\\z\\nw\"} 3\n\
             # HELP pg_c empty\n# TYPE pg_c untyped\n"
        );
        assert_eq!(f.duplicates(), 1);
        assert_eq!(f.get("pg_b", &[("datname", "x\"y\\z\nw")]), Some(3.0));
    }

    #[test]
    fn merging_keeps_the_first_value_and_moves_new_families_whole() {
        let mut a = Families::new();
        a.add("pg_x", "X", Kind::Gauge, l(&[("k", "1")]), 1.0);
        let mut b = Families::new();
        b.add("pg_x", "X", Kind::Gauge, l(&[("k", "1")]), 2.0);
        b.add("pg_x", "X", Kind::Gauge, l(&[("k", "2")]), 3.0);
        b.add("pg_y", "Y", Kind::Counter, l(&[("k", "1")]), 4.0);
        b.declare("pg_z", "Z", Kind::Untyped);
        a.merge(b);
        assert_eq!(a.get("pg_x", &[("k", "1")]), Some(1.0));
        assert_eq!(a.get("pg_x", &[("k", "2")]), Some(3.0));
        assert_eq!(a.get("pg_y", &[("k", "1")]), Some(4.0));
        assert_eq!(a.len(), 3);
        assert_eq!(a.duplicates(), 1);
    }

    #[test]
    fn histograms_render_buckets_by_bound_then_inf_sum_and_count() {
        let mut f = Families::new();
        f.add_histogram(
            "pg_idle_seconds",
            "Idle",
            l(&[("app", "a")]),
            Histogram {
                buckets: vec![(5.0, 3), (1.0, 1)],
                sum: 7.5,
                count: 4,
            },
        );
        let mut out = String::new();
        f.render(&mut out);
        assert_eq!(
            out,
            "# HELP pg_idle_seconds Idle\n# TYPE pg_idle_seconds histogram\n\
             pg_idle_seconds_bucket{app=\"a\",le=\"1\"} 1\n\
             pg_idle_seconds_bucket{app=\"a\",le=\"5\"} 3\n\
             pg_idle_seconds_bucket{app=\"a\",le=\"+Inf\"} 4\n\
             pg_idle_seconds_sum{app=\"a\"} 7.5\n\
             pg_idle_seconds_count{app=\"a\"} 4\n"
        );
    }

    #[test]
    fn special_values() {
        let mut out = String::new();
        for v in [
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            0.25,
            -2.0,
            1_795_535_428.0,
        ] {
            format_value(v, &mut out);
            out.push(' ');
        }
        assert_eq!(out, "NaN +Inf -Inf 0.25 -2 1795535428 ");
    }

    #[test]
    fn names_are_sanitized() {
        assert_eq!(
            sanitize_name("pg_stat_statements.max"),
            "pg_stat_statements_max"
        );
        assert_eq!(sanitize_name("9lives"), "_9lives");
    }
}
