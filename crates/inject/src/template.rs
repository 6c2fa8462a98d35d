//! The pod template of a workload: where it is by kind, its annotations,
//! its containers, and which of them are ours (by name).

use serde_norway::{Mapping, Value};

pub(crate) const LOGS_NAME: &str = "sidecar-logs";
pub(crate) const EXPORTER_NAME: &str = "sidecar-postgres-exporter";
pub(crate) const PROXY_NAME: &str = "sidecar-proxy";
pub(crate) const OURS: [&str; 3] = [LOGS_NAME, EXPORTER_NAME, PROXY_NAME];

/// The path of the pod template in a workload, by kind.
pub(crate) fn template_path(kind: &str) -> Option<&'static [&'static str]> {
    Some(match kind {
        "Pod" => &[],
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => &["spec", "template"],
        "CronJob" => &["spec", "jobTemplate", "spec", "template"],
        _ => return None,
    })
}

pub(crate) fn annotations_of(v: &Value) -> Mapping {
    v.get("metadata")
        .and_then(|m| m.get("annotations"))
        .and_then(Value::as_mapping)
        .cloned()
        .unwrap_or_default()
}

pub(crate) fn name_of(c: &Value) -> &str {
    c.get("name").and_then(Value::as_str).unwrap_or("?")
}

pub(crate) fn is_ours(c: &Value) -> bool {
    OURS.contains(&name_of(c))
}

/// The pod spec's `list` (`containers`, `initContainers`), or nothing.
pub(crate) fn containers<'a>(template: &'a Value, list: &str) -> impl Iterator<Item = &'a Value> {
    template
        .get("spec")
        .and_then(|s| s.get(list))
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
}

/// The app's containers (ours left out).
pub(crate) fn app_containers(template: &Value) -> impl Iterator<Item = &Value> {
    containers(template, "containers").filter(|c| !is_ours(c))
}
