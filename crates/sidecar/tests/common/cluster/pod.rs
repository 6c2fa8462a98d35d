//! Pods as a cluster runs them: their running containers, declared ports
//! and arguments.

use std::collections::BTreeMap;

use serde_norway::Value;

pub(super) fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(v, |v, p| v.get(*p))?.as_str()
}

pub(super) fn seq(v: Option<&Value>) -> Vec<Value> {
    v.and_then(Value::as_sequence).cloned().unwrap_or_default()
}

pub(super) fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Whether an image is one of ours.
pub fn is_ours(container: &Value) -> bool {
    str_at(container, &["image"])
        .is_some_and(|i| i.starts_with("sidecar:") || i.contains("/sidecar:"))
}

/// A Pod as a workload's template would create it.
pub struct Pod<'a> {
    pub ns: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub spec: &'a Value,
}

/// A container that runs beside the app: regular, or a native sidecar.
pub struct Running<'a> {
    pub c: &'a Value,
    pub name: String,
    pub native_sidecar: bool,
}

impl Pod<'_> {
    pub fn running(&self) -> Vec<Running<'_>> {
        let mut out = Vec::new();
        let list = |k: &str| {
            self.spec
                .get(k)
                .and_then(Value::as_sequence)
                .map(|s| s.iter())
                .into_iter()
                .flatten()
        };
        for c in list("initContainers") {
            if str_at(c, &["restartPolicy"]) == Some("Always") {
                out.push(Running {
                    c,
                    name: str_at(c, &["name"]).unwrap_or("?").into(),
                    native_sidecar: true,
                });
            }
        }
        for c in list("containers") {
            out.push(Running {
                c,
                name: str_at(c, &["name"]).unwrap_or("?").into(),
                native_sidecar: false,
            });
        }
        out
    }

    pub(super) fn all_containers(&self) -> Vec<&Value> {
        ["initContainers", "containers"]
            .iter()
            .flat_map(|k| {
                self.spec
                    .get(*k)
                    .and_then(Value::as_sequence)
                    .map(|s| s.iter())
                    .into_iter()
                    .flatten()
            })
            .collect()
    }

    /// Declared ports: (container, number, name, on a native sidecar).
    pub fn declared(&self) -> Vec<(String, u16, Option<String>, bool)> {
        let mut out = Vec::new();
        for r in self.running() {
            for p in seq(r.c.get("ports")) {
                let n = p.get("containerPort").and_then(Value::as_u64).unwrap_or(0) as u16;
                let name = str_at(&p, &["name"]).map(str::to_string);
                out.push((r.name.clone(), n, name, r.native_sidecar));
            }
        }
        out
    }

    pub(super) fn describe(&self) -> String {
        format!("Pod of {}/{}", self.ns, self.name)
    }

    pub(super) fn volume(&self, name: &str) -> Option<Value> {
        seq(self.spec.get("volumes"))
            .into_iter()
            .find(|v| str_at(v, &["name"]) == Some(name))
    }
}

/// Command-line flags that take no value, across our subcommands.
pub(super) const BOOL_FLAGS: &[&str] = &[
    "--prefix",
    "--generate-request-id",
    "--http2-upstream",
    "--no-fast-path",
];

/// A container's arguments as (flag, value) pairs and positional arguments.
pub(super) fn parse_args(c: &Value) -> (Vec<(String, String)>, Vec<String>) {
    let args: Vec<String> = seq(c.get("command"))
        .iter()
        .chain(seq(c.get("args")).iter())
        .filter_map(scalar)
        .collect();
    let (mut flags, mut pos) = (Vec::new(), Vec::new());
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        if let Some((k, v)) = a.split_once('=').filter(|_| a.starts_with("--")) {
            flags.push((k.to_string(), v.to_string()));
        } else if a.starts_with("--") && !BOOL_FLAGS.contains(&a.as_str()) {
            flags.push((a, it.next().unwrap_or_default()));
        } else if a.starts_with('-') {
            flags.push((a, String::new()));
        } else {
            pos.push(a);
        }
    }
    (flags, pos)
}
