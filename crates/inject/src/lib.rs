//! `sidecar inject`: adds the sidecars to Kubernetes workloads whose pod
//! template asks for them with `sidecar.dev/*` annotations.
//!
//! Data flow: the input is split into YAML documents (on `---` lines). A
//! document that is a workload (Pod, Deployment, StatefulSet, DaemonSet,
//! ReplicaSet, Job, CronJob) with our annotations is parsed, its pod template
//! gets native sidecars (init containers with `restartPolicy: Always`),
//! volumes, mounts and scrape annotations, and is written back; every other
//! document is copied through byte for byte (comments included). Injecting
//! twice gives the same output as injecting once.

#![forbid(unsafe_code)]

use serde_norway::{Mapping, Value};

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

const DEFAULT_ZIPKIN: &str = "http://jaeger-collector.tracing.svc.cluster.local:9411/api/v2/spans";
const LOGS_NAME: &str = "sidecar-logs";
const EXPORTER_NAME: &str = "sidecar-postgres-exporter";
const PROXY_NAME: &str = "sidecar-proxy";
const STATE_VOLUME: &str = "sidecar-logs-state";
const STATE_DIR: &str = "/var/lib/sidecar";
const PROXY_VOLUME: &str = "sidecar-proxy-config";
const PROXY_DIR: &str = "/etc/sidecar-proxy";

/// What `inject` needs besides the documents.
#[derive(Debug, Clone)]
pub struct Options {
    /// The sidecar image, e.g. `sidecar:0.1.0`.
    pub image: String,
}

/// A problem with one document, named so it can be fixed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("document {index} ({what}): {message}")]
pub struct InjectError {
    /// 1-based position of the document in the input.
    pub index: usize,
    /// `Deployment web`, or `YAML` when it does not parse.
    pub what: String,
    pub message: String,
}

/// Splits a multi-document YAML stream on its `---` lines, keeping each
/// document's text (with its comments) as it was.
fn split_documents(input: &str) -> Vec<&str> {
    let mut docs = Vec::new();
    let mut start = 0;
    let mut offset = 0;
    for line in input.split_inclusive('\n') {
        let trimmed = line.trim_end();
        if trimmed == "---" || trimmed.starts_with("--- ") {
            docs.push(&input[start..offset]);
            start = offset + line.len();
        }
        offset += line.len();
    }
    docs.push(&input[start..]);
    docs
}

/// Injects into every annotated workload of `input` (multi-document YAML).
pub fn inject(input: &str, opts: &Options) -> Result<String, InjectError> {
    let mut out = String::with_capacity(input.len() * 2);
    let docs = split_documents(input);
    for (i, text) in docs.iter().enumerate() {
        let index = i + 1;
        if i > 0 {
            out.push_str("---\n");
        }
        let value: Value = serde_norway::from_str(text).map_err(|e| InjectError {
            index,
            what: "YAML".into(),
            message: format!("cannot be parsed: {e}"),
        })?;
        match inject_document(value, opts).map_err(|message| InjectError {
            index,
            what: describe(text),
            message,
        })? {
            Some(changed) => {
                let yaml = serde_norway::to_string(&changed).map_err(|e| InjectError {
                    index,
                    what: describe(text),
                    message: format!("cannot be written back: {e}"),
                })?;
                out.push_str(&yaml);
            }
            None => out.push_str(text),
        }
    }
    Ok(out)
}

fn describe(text: &str) -> String {
    let value: Value = serde_norway::from_str(text).unwrap_or(Value::Null);
    let kind = value.get("kind").and_then(Value::as_str).unwrap_or("?");
    let name = value
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("?");
    format!("{kind} {name}")
}

/// The path of the pod template in a workload, by kind.
fn template_path(kind: &str) -> Option<&'static [&'static str]> {
    Some(match kind {
        "Pod" => &[],
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => &["spec", "template"],
        "CronJob" => &["spec", "jobTemplate", "spec", "template"],
        _ => return None,
    })
}

fn key(k: &str) -> Value {
    Value::String(k.to_string())
}

/// Walks (creating mappings as needed) to a mapping at `path`.
fn mapping_at<'a>(value: &'a mut Value, path: &[&str]) -> Result<&'a mut Mapping, String> {
    let mut cur = value;
    for p in path {
        let map = cur
            .as_mapping_mut()
            .ok_or_else(|| format!("`{p}` is not under a mapping"))?;
        cur = map
            .entry(key(p))
            .or_insert_with(|| Value::Mapping(Mapping::new()));
    }
    match cur {
        Value::Null => {
            *cur = Value::Mapping(Mapping::new());
            cur.as_mapping_mut().ok_or_else(|| "unexpected".to_string())
        }
        Value::Mapping(m) => Ok(m),
        _ => Err(format!("`{}` is not a mapping", path.join("."))),
    }
}

/// A sequence under `map[name]`, created if absent.
fn seq_at<'a>(map: &'a mut Mapping, name: &str) -> Result<&'a mut Vec<Value>, String> {
    let entry = map
        .entry(key(name))
        .or_insert_with(|| Value::Sequence(Vec::new()));
    if entry.is_null() {
        *entry = Value::Sequence(Vec::new());
    }
    entry
        .as_sequence_mut()
        .ok_or_else(|| format!("`{name}` is not a list"))
}

fn annotations(template: &Value) -> Mapping {
    template
        .get("metadata")
        .and_then(|m| m.get("annotations"))
        .and_then(Value::as_mapping)
        .cloned()
        .unwrap_or_default()
}

/// Returns the changed document, or None when it has nothing to inject.
fn inject_document(mut doc: Value, opts: &Options) -> Result<Option<Value>, String> {
    let Some(kind) = doc.get("kind").and_then(Value::as_str).map(str::to_string) else {
        return Ok(None);
    };
    let Some(path) = template_path(&kind) else {
        return Ok(None);
    };
    let name = doc
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("app")
        .to_string();
    let mut template = &mut doc;
    for p in path {
        template = template
            .get_mut(*p)
            .ok_or_else(|| format!("has no `{}`", path.join(".")))?;
    }
    let ann = annotations(template);
    let get = |k: &str| -> Result<Option<String>, String> {
        match ann.get(key(k)) {
            None => Ok(None),
            Some(Value::String(s)) if !s.trim().is_empty() => Ok(Some(s.trim().to_string())),
            Some(other) => Err(format!(
                "annotation {k} must be a non-empty string (quote it), not {}",
                serde_norway::to_string(other).unwrap_or_default().trim()
            )),
        }
    };
    let logs = get(LOGS)?;
    let exporter = get(EXPORTER)?;
    let proxy = get(PROXY)?;
    let inbound = get(PROXY_INBOUND)?;
    let zipkin = get(ZIPKIN)?.unwrap_or_else(|| DEFAULT_ZIPKIN.to_string());
    if logs.is_none() && exporter.is_none() && proxy.is_none() && inbound.is_none() {
        return Ok(None);
    }
    if proxy.is_some() && inbound.is_some() {
        return Err(format!("use either {PROXY} or {PROXY_INBOUND}, not both"));
    }
    let mut scrape_port = None;
    let mut sidecars = Vec::new();
    if let Some(secret) = &exporter {
        check_name(EXPORTER, secret)?;
        sidecars.push(exporter_container(opts, secret));
        scrape_port = Some(9187);
    }
    if let Some(config_map) = &proxy {
        check_name(PROXY, config_map)?;
        sidecars.push(proxy_container(
            opts,
            vec![
                "proxy".into(),
                "--config".into(),
                format!("{PROXY_DIR}/proxy.yaml"),
            ],
            None,
            true,
        ));
        ensure_volume(
            template,
            PROXY_VOLUME,
            Value::Mapping(Mapping::from_iter([(
                key("configMap"),
                Value::Mapping(Mapping::from_iter([(key("name"), key(config_map))])),
            )])),
        )?;
        scrape_port.get_or_insert(9901);
    }
    if let Some(ports) = &inbound {
        let (listen, upstream) = ports
            .split_once(':')
            .and_then(|(a, b)| Some((a.trim().parse::<u16>().ok()?, b.trim().parse::<u16>().ok()?)))
            .filter(|(a, b)| *a != 0 && *b != 0 && a != b)
            .ok_or_else(|| {
                format!("annotation {PROXY_INBOUND} is `{ports}`; write LISTEN_PORT:APP_PORT, like \"8000:8080\"")
            })?;
        sidecars.push(proxy_container(
            opts,
            vec![
                "proxy".into(),
                format!("--listen=0.0.0.0:{listen}"),
                format!("--upstream=127.0.0.1:{upstream}"),
                format!("--service={name}"),
                format!("--zipkin={zipkin}"),
            ],
            Some(listen),
            false,
        ));
        scrape_port.get_or_insert(9901);
    }
    if let Some(paths) = &logs {
        let paths: Vec<String> = paths
            .split(',')
            .map(|p| p.trim().to_string())
            .filter(|p| !p.is_empty())
            .collect();
        let mut mounts = Vec::new();
        for p in &paths {
            if !p.starts_with('/') {
                return Err(format!(
                    "annotation {LOGS}: `{p}` must be an absolute path, like /logs/app.log"
                ));
            }
            let dir = std::path::Path::new(p)
                .parent()
                .map(|d| d.to_string_lossy().into_owned())
                .filter(|d| !d.is_empty() && d != "/")
                .ok_or_else(|| format!("annotation {LOGS}: `{p}` must be in a directory of its own, like /logs/app.log"))?;
            if dir.contains(['*', '?', '[']) {
                return Err(format!(
                    "annotation {LOGS}: the directory of `{p}` may not contain wildcards"
                ));
            }
            if !mounts.iter().any(|(d, _): &(String, String)| *d == dir) {
                let volume = shared_volume(template, &dir, mounts.len())?;
                mounts.push((dir, volume));
            }
        }
        let mut args = vec!["logs".to_string(), "--state-dir".into(), STATE_DIR.into()];
        args.extend(paths);
        sidecars.push(logs_container(opts, args, &mounts));
        ensure_volume(
            template,
            STATE_VOLUME,
            Value::Mapping(Mapping::from_iter([(
                key("emptyDir"),
                Value::Mapping(Mapping::from_iter([(key("sizeLimit"), key("1Mi"))])),
            )])),
        )?;
        scrape_port.get_or_insert(9464);
    }
    // Native sidecars first, in a fixed order, replacing earlier injections.
    let spec = mapping_at(template, &["spec"])?;
    let init = seq_at(spec, "initContainers")?;
    init.retain(|c| {
        let n = c.get("name").and_then(Value::as_str).unwrap_or("");
        n != LOGS_NAME && n != EXPORTER_NAME && n != PROXY_NAME
    });
    for (i, c) in sidecars.into_iter().enumerate() {
        init.insert(i, c);
    }
    if let Some(port) = scrape_port {
        let ann = mapping_at(template, &["metadata", "annotations"])?;
        ann.insert(key("prometheus.io/scrape"), key("true"));
        ann.insert(key("prometheus.io/port"), key(&port.to_string()));
    }
    Ok(Some(doc))
}

fn check_name(annotation: &str, name: &str) -> Result<(), String> {
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
            "annotation {annotation}: `{name}` is not a Kubernetes object name (lower case letters, digits, '-', '.')"
        ))
    }
}

/// The volume mounted at `dir` in the app containers: an existing one, or a
/// new emptyDir mounted there in every app container.
fn shared_volume(template: &mut Value, dir: &str, n: usize) -> Result<String, String> {
    let spec = mapping_at(template, &["spec"])?;
    let containers = seq_at(spec, "containers")?;
    for c in containers.iter() {
        for m in c
            .get("volumeMounts")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            if m.get("mountPath")
                .and_then(Value::as_str)
                .map(|p| p.trim_end_matches('/'))
                == Some(dir)
            {
                if let Some(v) = m.get("name").and_then(Value::as_str) {
                    return Ok(v.to_string());
                }
            }
        }
    }
    let volume = if n == 0 {
        "sidecar-logs".to_string()
    } else {
        format!("sidecar-logs-{n}")
    };
    for c in containers.iter_mut() {
        let c = c.as_mapping_mut().ok_or("a container is not a mapping")?;
        let mounts = seq_at(c, "volumeMounts")?;
        mounts.push(Value::Mapping(Mapping::from_iter([
            (key("name"), key(&volume)),
            (key("mountPath"), key(dir)),
        ])));
    }
    ensure_volume(
        template,
        &volume,
        Value::Mapping(Mapping::from_iter([(
            key("emptyDir"),
            Value::Mapping(Mapping::new()),
        )])),
    )?;
    Ok(volume)
}

fn ensure_volume(template: &mut Value, name: &str, source: Value) -> Result<(), String> {
    let spec = mapping_at(template, &["spec"])?;
    let volumes = seq_at(spec, "volumes")?;
    if volumes
        .iter()
        .any(|v| v.get("name").and_then(Value::as_str) == Some(name))
    {
        return Ok(());
    }
    let mut volume = Mapping::from_iter([(key("name"), key(name))]);
    if let Value::Mapping(m) = source {
        volume.extend(m);
    }
    volumes.push(Value::Mapping(volume));
    Ok(())
}

fn yaml(text: &str) -> Value {
    serde_norway::from_str(text).unwrap_or(Value::Null)
}

/// What every container of ours carries: image, restart policy (native
/// sidecar), the restricted security context, small requests, a memory limit.
fn base_container(opts: &Options, name: &str, args: Vec<String>, admin_port: u16) -> Mapping {
    let mut c = Mapping::new();
    c.insert(key("name"), key(name));
    c.insert(key("image"), key(&opts.image));
    c.insert(key("imagePullPolicy"), key("IfNotPresent"));
    c.insert(key("restartPolicy"), key("Always"));
    c.insert(
        key("args"),
        Value::Sequence(args.into_iter().map(Value::String).collect()),
    );
    c.insert(
        key("startupProbe"),
        yaml(&format!("{{httpGet: {{path: /ready, port: {admin_port}}}, periodSeconds: 1, failureThreshold: 30}}")),
    );
    c.insert(
        key("livenessProbe"),
        yaml(&format!(
            "{{httpGet: {{path: /live, port: {admin_port}}}, periodSeconds: 10}}"
        )),
    );
    c.insert(
        key("resources"),
        yaml("{requests: {cpu: 10m, memory: 16Mi}, limits: {memory: 64Mi}}"),
    );
    c.insert(
        key("securityContext"),
        yaml(
            "{runAsNonRoot: true, runAsUser: 65532, runAsGroup: 65532, allowPrivilegeEscalation: false, \
             readOnlyRootFilesystem: true, capabilities: {drop: [ALL]}, seccompProfile: {type: RuntimeDefault}}",
        ),
    );
    c
}

fn exporter_container(opts: &Options, secret: &str) -> Value {
    let mut c = base_container(opts, EXPORTER_NAME, vec!["postgres-exporter".into()], 9187);
    c.insert(
        key("envFrom"),
        yaml(&format!("[{{secretRef: {{name: {secret}}}}}]")),
    );
    c.insert(
        key("ports"),
        yaml("[{name: pg-metrics, containerPort: 9187}]"),
    );
    Value::Mapping(c)
}

fn proxy_container(opts: &Options, args: Vec<String>, listen: Option<u16>, config: bool) -> Value {
    let mut c = base_container(opts, PROXY_NAME, args, 9901);
    let ports = match listen {
        Some(p) => format!(
            "[{{name: proxy, containerPort: {p}}}, {{name: proxy-admin, containerPort: 9901}}]"
        ),
        None => "[{name: proxy-admin, containerPort: 9901}]".to_string(),
    };
    c.insert(key("ports"), yaml(&ports));
    if config {
        c.insert(
            key("volumeMounts"),
            yaml(&format!(
                "[{{name: {PROXY_VOLUME}, mountPath: {PROXY_DIR}, readOnly: true}}]"
            )),
        );
    }
    Value::Mapping(c)
}

fn logs_container(opts: &Options, args: Vec<String>, mounts: &[(String, String)]) -> Value {
    let mut c = base_container(opts, LOGS_NAME, args, 9464);
    c.insert(
        key("ports"),
        yaml("[{name: logs-admin, containerPort: 9464}]"),
    );
    let mut list: Vec<Value> = mounts
        .iter()
        .map(|(dir, volume)| {
            Value::Mapping(Mapping::from_iter([
                (key("name"), key(volume)),
                (key("mountPath"), key(dir)),
                (key("readOnly"), Value::Bool(true)),
            ]))
        })
        .collect();
    list.push(Value::Mapping(Mapping::from_iter([
        (key("name"), key(STATE_VOLUME)),
        (key("mountPath"), key(STATE_DIR)),
    ])));
    c.insert(key("volumeMounts"), Value::Sequence(list));
    Value::Mapping(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> Options {
        Options {
            image: "sidecar:test".into(),
        }
    }

    #[test]
    fn documents_split_on_separator_lines_only() {
        let docs = split_documents("a: 1\n---\nb: '---'\n--- \nc: 3\n");
        assert_eq!(docs, vec!["a: 1\n", "b: '---'\n", "c: 3\n"]);
    }

    #[test]
    fn untouched_documents_keep_their_text_and_comments() {
        let input = "# a comment\napiVersion: v1\nkind: Service  # trailing\nmetadata: {name: x}\n---\nkind: Deployment\nmetadata: {name: d}\nspec: {template: {spec: {containers: []}}}\n";
        assert_eq!(inject(input, &opts()).unwrap(), input);
    }

    #[test]
    fn bad_annotations_name_the_document_and_field() {
        let doc = |ann: &str| {
            format!(
                "kind: Service\nmetadata: {{name: s}}\n---\nkind: Deployment\nmetadata: {{name: web}}\nspec:\n  template:\n    metadata:\n      annotations: {{{ann}}}\n    spec:\n      containers: [{{name: app, image: x}}]\n"
            )
        };
        let err = inject(&doc("sidecar.dev/proxy-inbound: '8000'"), &opts()).unwrap_err();
        assert_eq!(err.index, 2);
        assert_eq!(err.what, "Deployment web");
        assert!(err.message.contains("LISTEN_PORT:APP_PORT"), "{err}");
        let err = inject(&doc("sidecar.dev/logs: 'app.log'"), &opts()).unwrap_err();
        assert!(err.message.contains("absolute path"), "{err}");
        let err = inject(&doc("sidecar.dev/postgres-exporter: 'Bad_Name'"), &opts()).unwrap_err();
        assert!(
            err.message.contains("not a Kubernetes object name"),
            "{err}"
        );
        let err = inject(
            &doc("sidecar.dev/proxy: p, sidecar.dev/proxy-inbound: '1:2'"),
            &opts(),
        )
        .unwrap_err();
        assert!(err.message.contains("not both"), "{err}");
        let err = inject(&doc("sidecar.dev/logs: 5"), &opts()).unwrap_err();
        assert!(err.message.contains("quote it"), "{err}");
        let err = inject("kind: [unclosed\n", &opts()).unwrap_err();
        assert_eq!(err.what, "YAML");
    }
}
