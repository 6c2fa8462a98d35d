//! Small helpers over `serde_norway` values: keys, paths, mappings and
//! lists created on demand, and values as text for messages.

use serde_norway::{Mapping, Value};

pub(crate) fn key(k: &str) -> Value {
    Value::String(k.to_string())
}

/// A value written in YAML flow style, e.g. `{httpGet: {path: /live, port: 9464}}`.
pub(crate) fn yaml(text: &str) -> Value {
    serde_norway::from_str(text).unwrap_or(Value::Null)
}

/// A value as YAML on one line, for messages: `5`, `''`.
pub(crate) fn yaml_text(v: &Value) -> String {
    serde_norway::to_string(v)
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// A scalar as the user wrote it: a string's own text, anything else as YAML.
pub(crate) fn scalar_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => yaml_text(other),
    }
}

pub(crate) fn kind_of(v: &Value) -> Option<&str> {
    v.get("kind").and_then(Value::as_str)
}

pub(crate) fn str_at<'v>(v: &'v Value, path: &[&str]) -> Option<&'v str> {
    path.iter()
        .try_fold(v, |v, p| v.get(*p))
        .and_then(Value::as_str)
}

/// A port number written as a string annotation.
pub(crate) fn parse_port(s: &str) -> Option<u16> {
    s.trim().parse::<u16>().ok().filter(|p| *p != 0)
}

fn not_a_mapping(path: &[&str]) -> String {
    format!(
        "`{}` of the pod template must be a mapping (key: value lines); fix it there",
        path.join(".")
    )
}

/// Walks (creating mappings as needed) to a mapping at `path` of the pod template.
pub(crate) fn mapping_at<'a>(
    value: &'a mut Value,
    path: &[&str],
) -> Result<&'a mut Mapping, String> {
    let mut cur = value;
    for (i, p) in path.iter().enumerate() {
        if cur.is_null() {
            *cur = Value::Mapping(Mapping::new());
        }
        let map = cur
            .as_mapping_mut()
            .ok_or_else(|| not_a_mapping(&path[..i]))?;
        cur = map
            .entry(key(p))
            .or_insert_with(|| Value::Mapping(Mapping::new()));
    }
    if cur.is_null() {
        *cur = Value::Mapping(Mapping::new());
    }
    cur.as_mapping_mut().ok_or_else(|| not_a_mapping(path))
}

/// A sequence under `map[name]`, created if absent.
pub(crate) fn seq_at<'a>(map: &'a mut Mapping, name: &str) -> Result<&'a mut Vec<Value>, String> {
    let entry = map
        .entry(key(name))
        .or_insert_with(|| Value::Sequence(Vec::new()));
    if entry.is_null() {
        *entry = Value::Sequence(Vec::new());
    }
    entry
        .as_sequence_mut()
        .ok_or_else(|| format!("`{name}` must be a list (lines starting with `- `); fix it there"))
}
