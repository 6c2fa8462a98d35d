//! The `sidecar.dev/*` annotations: their names, what a pod template asks
//! for ([`Asked`], or the error that names the bad annotation), and the
//! warnings for annotations that do nothing (misplaced, unknown, or missing
//! the one they go with).

use serde_norway::{Mapping, Value};

use crate::notes::Level;
use crate::template::annotations_of;
use crate::value::{key, parse_port, yaml_text};

/// `sidecar.dev/logs: "/logs/app.log,/logs/*.json"`: relay these files.
pub const LOGS: &str = "sidecar.dev/logs";
/// `sidecar.dev/postgres-exporter: <Secret>`: an exporter with the Secret's keys as env.
pub const EXPORTER: &str = "sidecar.dev/postgres-exporter";
/// `sidecar.dev/proxy: <ConfigMap>`: a proxy configured by the ConfigMap's `proxy.yaml`.
pub const PROXY: &str = "sidecar.dev/proxy";
/// `sidecar.dev/proxy-inbound: "8000:8080"`: a proxy for the single inbound route.
pub const PROXY_INBOUND: &str = "sidecar.dev/proxy-inbound";
/// `sidecar.dev/zipkin: URL`: where the inbound proxy reports spans.
pub const ZIPKIN: &str = "sidecar.dev/zipkin";
/// `sidecar.dev/logs-admin-port: "9465"`: the relay's admin port, instead of
/// [`ports::LOGS`](sidecar_telemetry::ports::LOGS) (when the app uses that one).
pub const LOGS_ADMIN_PORT: &str = "sidecar.dev/logs-admin-port";
/// `sidecar.dev/postgres-exporter-admin-port: "9188"`: the exporter's port,
/// instead of [`ports::POSTGRES_EXPORTER`](sidecar_telemetry::ports::POSTGRES_EXPORTER).
pub const EXPORTER_ADMIN_PORT: &str = "sidecar.dev/postgres-exporter-admin-port";
/// `sidecar.dev/proxy-admin-port: "9902"`: the proxy's admin port, instead of
/// [`ports::PROXY`](sidecar_telemetry::ports::PROXY) (or the `admin:` of its ConfigMap's `proxy.yaml`).
pub const PROXY_ADMIN_PORT: &str = "sidecar.dev/proxy-admin-port";

/// `sidecar.dev/inject: "false"` (a Pod label, or an annotation): the
/// `sidecar injector` webhook leaves the Pod alone. `sidecar inject` does not
/// read it (it injects what the file asks for), but knows the name.
pub const INJECT: &str = "sidecar.dev/inject";

/// Every annotation `inject` reads (and the webhook's opt-out).
const KNOWN: [&str; 9] = [
    INJECT,
    LOGS,
    EXPORTER,
    PROXY,
    PROXY_INBOUND,
    ZIPKIN,
    LOGS_ADMIN_PORT,
    EXPORTER_ADMIN_PORT,
    PROXY_ADMIN_PORT,
];
const DEFAULT_ZIPKIN: &str = "http://jaeger-collector.tracing.svc.cluster.local:9411/api/v2/spans";

/// What a pod template's annotations ask for, each read and checked.
#[derive(Debug)]
pub(crate) struct Asked {
    /// The paths and globs, split on commas.
    pub(crate) logs: Option<Vec<String>>,
    /// The Secret.
    pub(crate) exporter: Option<String>,
    /// The ConfigMap.
    pub(crate) proxy: Option<String>,
    /// (LISTEN_PORT, APP_PORT).
    pub(crate) inbound: Option<(u16, u16)>,
    pub(crate) zipkin: String,
    pub(crate) logs_port: Option<u16>,
    pub(crate) exporter_port: Option<u16>,
    pub(crate) proxy_port: Option<u16>,
}

impl Asked {
    /// Reads the annotations: nothing when no sidecar is asked for, an error
    /// naming the first annotation that is not right.
    pub(crate) fn read(ann: &Mapping) -> Result<Option<Asked>, String> {
        let get = |k: &str| -> Result<Option<String>, String> {
            match ann.get(key(k)) {
                None => Ok(None),
                Some(Value::String(s)) if !s.trim().is_empty() => Ok(Some(s.trim().to_string())),
                Some(other) => Err(format!(
                    "annotation {k} must be a non-empty string (quote it), not {}",
                    yaml_text(other)
                )),
            }
        };
        let port = |k: &str| -> Result<Option<u16>, String> {
            get(k)?
                .map(|s| {
                    parse_port(&s).ok_or_else(|| {
                        format!("annotation {k} is `{s}`; write a port number from 1 to 65535, like \"9465\"")
                    })
                })
                .transpose()
        };
        let logs = get(LOGS)?;
        let exporter = get(EXPORTER)?;
        let proxy = get(PROXY)?;
        let inbound = get(PROXY_INBOUND)?;
        let zipkin = get(ZIPKIN)?.unwrap_or_else(|| DEFAULT_ZIPKIN.to_string());
        let logs_port = port(LOGS_ADMIN_PORT)?;
        let exporter_port = port(EXPORTER_ADMIN_PORT)?;
        let proxy_port = port(PROXY_ADMIN_PORT)?;
        if logs.is_none() && exporter.is_none() && proxy.is_none() && inbound.is_none() {
            return Ok(None);
        }
        if proxy.is_some() && inbound.is_some() {
            return Err(format!(
                "use either {PROXY} or {PROXY_INBOUND}, not both; remove one of them"
            ));
        }
        let inbound = inbound
            .map(|ports| {
                ports
                    .split_once(':')
                    .and_then(|(a, b)| Some((parse_port(a)?, parse_port(b)?)))
                    .filter(|(a, b)| a != b)
                    .ok_or_else(|| {
                        format!("annotation {PROXY_INBOUND} is `{ports}`; write LISTEN_PORT:APP_PORT, like \"8000:8080\"")
                    })
            })
            .transpose()?;
        Ok(Some(Asked {
            logs: logs.map(|paths| {
                paths
                    .split(',')
                    .map(|p| p.trim().to_string())
                    .filter(|p| !p.is_empty())
                    .collect()
            }),
            exporter,
            proxy,
            inbound,
            zipkin,
            logs_port,
            exporter_port,
            proxy_port,
        }))
    }
}

/// Stops unless `name` (of a Secret or ConfigMap) is a Kubernetes object name.
pub(crate) fn check_name(annotation: &str, name: &str) -> Result<(), String> {
    let ok = name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "annotation {annotation}: `{name}` is not a Kubernetes object name (lower case letters, digits, '-', '.'); write the name of the object"
        ))
    }
}

/// Warnings for `sidecar.dev/*` annotations that do nothing where they are:
/// on the workload's own metadata instead of its pod template.
pub(crate) fn misplaced_annotations(
    obj: &Value,
    kind: &str,
    path: &[&str],
    template_ann: &Mapping,
    notes: &mut Vec<(Level, String)>,
) {
    let target = [path, &["metadata", "annotations"]].concat().join(".");
    let mut places = Vec::new();
    if kind != "Pod" {
        places.push((
            annotations_of(obj),
            format!("the {kind}'s own metadata.annotations"),
        ));
    }
    if kind == "CronJob" {
        if let Some(job) = obj.get("spec").and_then(|s| s.get("jobTemplate")) {
            places.push((
                annotations_of(job),
                "spec.jobTemplate.metadata.annotations (the Job's)".to_string(),
            ));
        }
    }
    for (ann, place) in places {
        for k in ann.keys().filter_map(Value::as_str) {
            if k.starts_with("sidecar.dev/") && !template_ann.contains_key(k) {
                notes.push((
                    Level::Warning,
                    format!(
                        "annotation {k} is in {place}, where it does nothing; move it to {target}, the pod template's annotations"
                    ),
                ));
            }
        }
    }
}

/// Warnings for `sidecar.dev/*` annotations on the pod template that are
/// not ours (a typo?) or do nothing without another one.
pub(crate) fn unused_annotations(ann: &Mapping, notes: &mut Vec<(Level, String)>) {
    let has = |k: &str| ann.contains_key(k);
    for k in ann.keys().filter_map(Value::as_str) {
        if k.starts_with("sidecar.dev/") && !KNOWN.contains(&k) {
            notes.push((
                Level::Warning,
                format!(
                    "annotation {k} is not one sidecar inject knows, so it does nothing; the known ones are {}",
                    KNOWN.join(", ")
                ),
            ));
        }
    }
    for (k, needs) in [
        (ZIPKIN, PROXY_INBOUND),
        (LOGS_ADMIN_PORT, LOGS),
        (EXPORTER_ADMIN_PORT, EXPORTER),
    ] {
        if has(k) && !has(needs) {
            notes.push((
                Level::Warning,
                format!("annotation {k} does nothing without {needs}; add {needs} or remove it"),
            ));
        }
    }
    if has(PROXY_ADMIN_PORT) && !has(PROXY) && !has(PROXY_INBOUND) {
        notes.push((
            Level::Warning,
            format!(
                "annotation {PROXY_ADMIN_PORT} does nothing without {PROXY} or {PROXY_INBOUND}; add one or remove it"
            ),
        ));
    }
}

#[cfg(test)]
mod tests {
    use crate::{Level, inject, test_options};

    #[test]
    fn bad_annotations_name_the_document_and_field() {
        let doc = |ann: &str| {
            format!(
                "kind: Service\nmetadata: {{name: s}}\n---\nkind: Deployment\nmetadata: {{name: web}}\nspec:\n  template:\n    metadata:\n      annotations: {{{ann}}}\n    spec:\n      containers: [{{name: app, image: x}}]\n"
            )
        };
        let opts = test_options();
        let err = inject(&doc("sidecar.dev/proxy-inbound: '8000'"), &opts).unwrap_err();
        assert_eq!(err.index, 2);
        assert_eq!(err.what, "Deployment web");
        assert!(err.message.contains("LISTEN_PORT:APP_PORT"), "{err}");
        let err = inject(&doc("sidecar.dev/logs: 'app.log'"), &opts).unwrap_err();
        assert!(err.message.contains("absolute path"), "{err}");
        let err = inject(&doc("sidecar.dev/postgres-exporter: 'Bad_Name'"), &opts).unwrap_err();
        assert!(
            err.message.contains("not a Kubernetes object name"),
            "{err}"
        );
        let err = inject(
            &doc("sidecar.dev/proxy: p, sidecar.dev/proxy-inbound: '1:2'"),
            &opts,
        )
        .unwrap_err();
        assert!(err.message.contains("not both"), "{err}");
        let err = inject(&doc("sidecar.dev/logs: 5"), &opts).unwrap_err();
        assert!(err.message.contains("quote it"), "{err}");
        let err = inject("kind: [unclosed\n", &opts).unwrap_err();
        assert_eq!(err.what, "YAML");
    }

    #[test]
    fn misplaced_and_unknown_annotations_are_notes() {
        let input = "kind: Deployment\nmetadata: {name: web, annotations: {sidecar.dev/logs: /l/a.log}}\nspec:\n  template:\n    metadata: {annotations: {sidecar.dev/log: /l/a.log}}\n    spec: {containers: [{name: a, image: x}]}\n";
        let out = inject(input, &test_options()).unwrap();
        assert_eq!(out.yaml, input);
        let text: Vec<String> = out.notes.iter().map(ToString::to_string).collect();
        assert_eq!(out.notes.len(), 2, "{text:?}");
        assert!(out.notes.iter().all(|n| n.level == Level::Warning));
        assert!(
            text[0].contains("spec.template.metadata.annotations"),
            "{text:?}"
        );
        assert!(text[1].contains("sidecar.dev/log is not one"), "{text:?}");
    }
}
