//! `sidecar inject`: adds the sidecars to Kubernetes workloads whose pod
//! template asks for them with `sidecar.dev/*` annotations.
//!
//! Data flow: the input is split into YAML documents (on `---` lines) and
//! each is parsed; the items of a `kind: List` (as `kubectl get -o yaml`
//! writes it) count as objects of their own. Every object that is a workload
//! (Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet, Job, CronJob) with
//! our annotations on its pod template gets native sidecars (init containers
//! with `restartPolicy: Always`), volumes, mounts and, unless the pod has its
//! own, `prometheus.io/*` annotations. The ports our sidecars take are
//! checked against the ones the app declares first. Then a Service in the
//! input that sends an inbound proxy's traffic straight to the app is
//! retargeted to the proxy. A changed document is written back by the YAML
//! library; every other document is copied through byte for byte (comments
//! included). Injecting twice gives the same output as injecting once.
//! What the user should know (a Service changed, annotations in the wrong
//! place, an `emptyDir` that hides the image's files) comes back as
//! [`Note`]s for stderr.

#![forbid(unsafe_code)]

use std::fmt;

use serde_norway::{Mapping, Value};
use sidecar_telemetry::ports;

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
/// [`ports::LOGS`] (when the app uses that one).
pub const LOGS_ADMIN_PORT: &str = "sidecar.dev/logs-admin-port";
/// `sidecar.dev/postgres-exporter-admin-port: "9188"`: the exporter's port,
/// instead of [`ports::POSTGRES_EXPORTER`].
pub const EXPORTER_ADMIN_PORT: &str = "sidecar.dev/postgres-exporter-admin-port";
/// `sidecar.dev/proxy-admin-port: "9902"`: the proxy's admin port, instead of
/// [`ports::PROXY`] (or the `admin:` of its ConfigMap's `proxy.yaml`).
pub const PROXY_ADMIN_PORT: &str = "sidecar.dev/proxy-admin-port";

/// Every annotation `inject` reads.
const KNOWN: [&str; 8] = [
    LOGS,
    EXPORTER,
    PROXY,
    PROXY_INBOUND,
    ZIPKIN,
    LOGS_ADMIN_PORT,
    EXPORTER_ADMIN_PORT,
    PROXY_ADMIN_PORT,
];
const PROMETHEUS_PREFIX: &str = "prometheus.io/";
const DEFAULT_ZIPKIN: &str = "http://jaeger-collector.tracing.svc.cluster.local:9411/api/v2/spans";
const LOGS_NAME: &str = "sidecar-logs";
const EXPORTER_NAME: &str = "sidecar-postgres-exporter";
const PROXY_NAME: &str = "sidecar-proxy";
const OURS: [&str; 3] = [LOGS_NAME, EXPORTER_NAME, PROXY_NAME];
/// The name of the inbound proxy's listen port.
const PROXY_PORT_NAME: &str = "proxy";
const STATE_VOLUME: &str = "sidecar-logs-state";
const STATE_DIR: &str = "/var/lib/sidecar";
/// The checkpoint directory when a log volume is mounted over [`STATE_DIR`].
const STATE_DIR_ALT: &str = "/sidecar-logs-state";
const PROXY_VOLUME: &str = "sidecar-proxy-config";
const PROXY_DIR: &str = "/etc/sidecar-proxy";
/// What a sidecar does on its admin port, for messages.
const ADMIN_ROLE: &str = "serve its admin port (/live, /ready, /metrics)";
/// Directories of a Linux image that a new `emptyDir` would empty (the
/// directory or anything under it).
const SYSTEM_TREES: [&str; 6] = ["/bin", "/sbin", "/lib", "/lib64", "/usr", "/etc"];
/// Directories of an image that a new `emptyDir` at exactly that place would empty.
const SYSTEM_DIRS: [&str; 6] = ["/var", "/opt", "/home", "/srv", "/root", "/app"];

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
    /// `Deployment web`, `List, item 2: Deployment web`, or `YAML` when it
    /// does not parse.
    pub what: String,
    pub message: String,
}

/// The injected YAML, and what the user should be told on stderr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Injected {
    pub yaml: String,
    /// In document order.
    pub notes: Vec<Note>,
}

/// How much a [`Note`] matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// A change `inject` made outside the workload (a Service retargeted),
    /// or something worth knowing.
    Note,
    /// Probably not what the user wants: something to fix.
    Warning,
}

/// Something about one document that the user should know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// 1-based position of the document in the input.
    pub index: usize,
    /// As in [`InjectError::what`].
    pub what: String,
    pub level: Level,
    pub message: String,
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "document {} ({}): {}",
            self.index, self.what, self.message
        )
    }
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

/// One document of the input: its text, its value, whether it changed.
struct Doc<'a> {
    text: &'a str,
    value: Value,
    changed: bool,
}

/// Where an object is: a document, or an item of a List document.
#[derive(Debug, Clone, Copy)]
struct At {
    doc: usize,
    item: Option<usize>,
}

fn is_list(v: &Value) -> bool {
    kind_of(v).is_some_and(|k| k.ends_with("List"))
        && v.get("items").is_some_and(Value::is_sequence)
}

/// Every object of the input, the items of Lists included.
fn addresses(docs: &[Doc]) -> Vec<At> {
    let mut all = Vec::new();
    for (doc, d) in docs.iter().enumerate() {
        match d.value.get("items").and_then(Value::as_sequence) {
            Some(items) if is_list(&d.value) => {
                all.extend((0..items.len()).map(|i| At { doc, item: Some(i) }));
            }
            _ => all.push(At { doc, item: None }),
        }
    }
    all
}

fn object<'v>(docs: &'v [Doc], at: At) -> &'v Value {
    let v = &docs[at.doc].value;
    match at.item {
        Some(i) => &v["items"][i],
        None => v,
    }
}

fn object_mut<'v>(docs: &'v mut [Doc], at: At) -> &'v mut Value {
    let v = &mut docs[at.doc].value;
    match at.item {
        Some(i) => &mut v["items"][i],
        None => v,
    }
}

fn kind_of(v: &Value) -> Option<&str> {
    v.get("kind").and_then(Value::as_str)
}

fn str_at<'v>(v: &'v Value, path: &[&str]) -> Option<&'v str> {
    path.iter()
        .try_fold(v, |v, p| v.get(*p))
        .and_then(Value::as_str)
}

/// `Deployment web`.
fn describe(v: &Value) -> String {
    let kind = kind_of(v).unwrap_or("?");
    let name = str_at(v, &["metadata", "name"]).unwrap_or("?");
    format!("{kind} {name}")
}

/// How errors and notes name an object: `Deployment web`, or
/// `List, item 2: Deployment web`.
fn what(docs: &[Doc], at: At) -> String {
    match at.item {
        Some(i) => format!(
            "{}, item {}: {}",
            kind_of(&docs[at.doc].value).unwrap_or("List"),
            i + 1,
            describe(object(docs, at))
        ),
        None => describe(object(docs, at)),
    }
}

/// A YAML syntax error, with its line counted in the whole input.
fn yaml_error(e: &serde_norway::Error, first_line: usize) -> String {
    let text = e.to_string();
    match e.location() {
        Some(loc) => {
            let text = text
                .rfind(" at line ")
                .map_or(text.as_str(), |i| &text[..i]);
            format!(
                "is not valid YAML at line {}, column {} of the input ({text}); fix the YAML there",
                first_line + loc.line() - 1,
                loc.column()
            )
        }
        None => format!("is not valid YAML ({text}); fix the YAML"),
    }
}

/// Injects into every annotated workload of `input` (multi-document YAML).
pub fn inject(input: &str, opts: &Options) -> Result<Injected, InjectError> {
    let mut docs = Vec::new();
    let mut line = 1;
    for (i, text) in split_documents(input).into_iter().enumerate() {
        let value: Value = serde_norway::from_str(text).map_err(|e| InjectError {
            index: i + 1,
            what: "YAML".into(),
            message: yaml_error(&e, line),
        })?;
        docs.push(Doc {
            text,
            value,
            changed: false,
        });
        line += text.matches('\n').count() + 1;
    }
    let all = addresses(&docs);
    let configs = proxy_configs(&docs, &all);
    let mut notes = Vec::new();
    let mut routes = Vec::new();
    for &at in &all {
        let (index, what) = (at.doc + 1, what(&docs, at));
        let out = inject_object(object_mut(&mut docs, at), opts, &configs).map_err(|message| {
            InjectError {
                index,
                what: what.clone(),
                message,
            }
        })?;
        docs[at.doc].changed |= out.changed;
        notes.extend(out.notes.into_iter().map(|(level, message)| Note {
            index,
            what: what.clone(),
            level,
            message,
        }));
        if let Some(mut route) = out.route {
            route.index = index;
            route.what = what;
            routes.push(route);
        }
    }
    for route in &routes {
        retarget_services(&mut docs, &all, route, &mut notes);
    }
    notes.sort_by_key(|n| n.index);
    let mut out = String::with_capacity(input.len() * 2);
    for (i, doc) in docs.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        if doc.changed {
            let yaml = serde_norway::to_string(&doc.value).map_err(|e| InjectError {
                index: i + 1,
                what: describe(&doc.value),
                message: format!("cannot be written back as YAML ({e}); please report this"),
            })?;
            out.push_str(&yaml);
        } else {
            out.push_str(doc.text);
        }
    }
    Ok(Injected { yaml: out, notes })
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

/// Walks (creating mappings as needed) to a mapping at `path` of the pod template.
fn mapping_at<'a>(value: &'a mut Value, path: &[&str]) -> Result<&'a mut Mapping, String> {
    let mut cur = value;
    for (i, p) in path.iter().enumerate() {
        if cur.is_null() {
            *cur = Value::Mapping(Mapping::new());
        }
        let map = cur.as_mapping_mut().ok_or_else(|| {
            format!(
                "`{}` of the pod template must be a mapping (key: value lines); fix it there",
                path[..i].join(".")
            )
        })?;
        cur = map
            .entry(key(p))
            .or_insert_with(|| Value::Mapping(Mapping::new()));
    }
    if cur.is_null() {
        *cur = Value::Mapping(Mapping::new());
    }
    cur.as_mapping_mut().ok_or_else(|| {
        format!(
            "`{}` of the pod template must be a mapping (key: value lines); fix it there",
            path.join(".")
        )
    })
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
        .ok_or_else(|| format!("`{name}` must be a list (lines starting with `- `); fix it there"))
}

fn annotations_of(v: &Value) -> Mapping {
    v.get("metadata")
        .and_then(|m| m.get("annotations"))
        .and_then(Value::as_mapping)
        .cloned()
        .unwrap_or_default()
}

fn name_of(c: &Value) -> &str {
    c.get("name").and_then(Value::as_str).unwrap_or("?")
}

fn is_ours(c: &Value) -> bool {
    OURS.contains(&name_of(c))
}

/// The pod spec's `list` (`containers`, `initContainers`), or nothing.
fn containers<'a>(template: &'a Value, list: &str) -> impl Iterator<Item = &'a Value> {
    template
        .get("spec")
        .and_then(|s| s.get(list))
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
}

/// Whether directory `dir` is `outer` or inside it.
fn within(dir: &str, outer: &str) -> bool {
    outer == "/"
        || dir == outer
        || dir
            .strip_prefix(outer)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// A port number written as a string annotation.
fn parse_port(s: &str) -> Option<u16> {
    s.trim().parse::<u16>().ok().filter(|p| *p != 0)
}

/// What a `sidecar.dev/proxy` ConfigMap in the input says about ports.
#[derive(Debug, Clone, Default)]
struct ProxyConfig {
    namespace: Option<String>,
    name: String,
    /// `admin:` absent: None; `admin: off`: Some(None).
    admin: Option<Option<u16>>,
    /// (listener name, port).
    listeners: Vec<(String, u16)>,
}

fn port_of_addr(addr: &str) -> Option<u16> {
    addr.rsplit_once(':').and_then(|(_, p)| parse_port(p))
}

/// The proxy configurations (`data: {proxy.yaml: ...}`) of the input's ConfigMaps.
fn proxy_configs(docs: &[Doc], all: &[At]) -> Vec<ProxyConfig> {
    let mut configs = Vec::new();
    for &at in all {
        let v = object(docs, at);
        if kind_of(v) != Some("ConfigMap") {
            continue;
        }
        let Some(text) = str_at(v, &["data", "proxy.yaml"]) else {
            continue;
        };
        let Ok(cfg) = serde_norway::from_str::<Value>(text) else {
            continue;
        };
        configs.push(ProxyConfig {
            namespace: str_at(v, &["metadata", "namespace"]).map(str::to_string),
            name: str_at(v, &["metadata", "name"]).unwrap_or("").to_string(),
            admin: cfg.get("admin").and_then(Value::as_str).map(|a| {
                if a.trim() == "off" {
                    None
                } else {
                    port_of_addr(a)
                }
            }),
            listeners: cfg
                .get("listeners")
                .and_then(Value::as_sequence)
                .into_iter()
                .flatten()
                .filter_map(|l| {
                    Some((
                        l.get("name")
                            .and_then(Value::as_str)
                            .unwrap_or("?")
                            .to_string(),
                        port_of_addr(l.get("listen")?.as_str()?)?,
                    ))
                })
                .collect(),
        });
    }
    configs
}

/// Namespaces match when they are equal or one is not written (then both
/// go wherever `kubectl apply -n` puts them).
fn same_namespace(a: Option<&str>, b: Option<&str>) -> bool {
    a.is_none() || b.is_none() || a == b
}

/// What injecting into one object did.
#[derive(Default)]
struct Outcome {
    changed: bool,
    notes: Vec<(Level, String)>,
    route: Option<Route>,
}

/// An inbound proxy in front of an app port, for the Services that select
/// the workload.
#[derive(Debug, Default)]
struct Route {
    index: usize,
    what: String,
    namespace: Option<String>,
    labels: Mapping,
    app_port: u16,
    /// The names the app's containers give `app_port`.
    app_port_names: Vec<String>,
    listen: u16,
}

/// Who would take a port, to tell the user what to move.
#[derive(Debug)]
struct Claim {
    port: u16,
    /// `container web declares it`, `sidecar-logs would serve ... there`.
    taken: String,
    fix: Fix,
}

impl Claim {
    /// A port of ours: `{container} would {role} there`.
    fn ours(port: u16, container: &str, role: &str, fix: Fix) -> Claim {
        Claim {
            port,
            taken: format!("{container} would {role} there"),
            fix,
        }
    }
}

/// How the user moves one of our ports.
#[derive(Debug)]
enum Fix {
    /// The app's port: nothing of ours to move.
    App,
    /// An annotation with a port number.
    Annotation(&'static str),
    /// The LISTEN_PORT of `sidecar.dev/proxy-inbound`.
    InboundListen { app_port: u16 },
    /// A listener in the proxy's ConfigMap.
    ConfigListener {
        listener: String,
        config_map: String,
    },
}

impl Fix {
    fn text(&self, free: u16) -> String {
        match self {
            Fix::App => String::new(),
            Fix::Annotation(a) => {
                format!("move ours with the annotation {a}, like {a}: \"{free}\"")
            }
            Fix::InboundListen { app_port } => format!(
                "pick another LISTEN_PORT in the annotation {PROXY_INBOUND}, like \"{free}:{app_port}\" (and send the Service's traffic there)"
            ),
            Fix::ConfigListener {
                listener,
                config_map,
            } => format!(
                "move listener `{listener}` to another port, like {free}, in ConfigMap {config_map}'s proxy.yaml"
            ),
        }
    }
}

/// The ports the app's containers declare (TCP), and the app port an
/// inbound proxy sends to.
fn app_claims(template: &Value, upstream: Option<u16>) -> Vec<Claim> {
    let mut claims = Vec::new();
    for c in containers(template, "containers").chain(containers(template, "initContainers")) {
        if is_ours(c) {
            continue;
        }
        for p in c
            .get("ports")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            let tcp = p
                .get("protocol")
                .and_then(Value::as_str)
                .is_none_or(|proto| proto == "TCP");
            if let (true, Some(port)) = (
                tcp,
                p.get("containerPort")
                    .and_then(Value::as_u64)
                    .and_then(|n| u16::try_from(n).ok()),
            ) {
                claims.push(Claim {
                    port,
                    taken: format!("container {} declares it", name_of(c)),
                    fix: Fix::App,
                });
            }
        }
    }
    if let Some(port) = upstream {
        claims.push(Claim {
            port,
            taken: format!("the app listens there (APP_PORT of {PROXY_INBOUND})"),
            fix: Fix::App,
        });
    }
    claims
}

/// Stops when one of our ports is taken by the app or by another of ours.
fn check_ports(app: Vec<Claim>, ours: Vec<Claim>) -> Result<(), String> {
    let all: Vec<u16> = app.iter().chain(&ours).map(|c| c.port).collect();
    let free = |from: u16| {
        (from.saturating_add(1)..=u16::MAX)
            .chain((1..from).rev())
            .find(|p| !all.contains(p))
            .unwrap_or(from)
    };
    let mut taken = app;
    for claim in ours {
        if let Some(prev) = taken.iter().find(|c| c.port == claim.port) {
            let p = claim.port;
            return Err(format!(
                "port {p} is taken twice: {}, and {}; {}",
                prev.taken,
                claim.taken,
                claim.fix.text(free(p))
            ));
        }
        taken.push(claim);
    }
    Ok(())
}

/// Warnings for `sidecar.dev/*` annotations that do nothing where they are:
/// on the workload's own metadata instead of its pod template.
fn misplaced_annotations(
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
fn unused_annotations(ann: &Mapping, notes: &mut Vec<(Level, String)>) {
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

/// Injects into one object if it is a workload that asks for sidecars.
fn inject_object(
    obj: &mut Value,
    opts: &Options,
    configs: &[ProxyConfig],
) -> Result<Outcome, String> {
    let mut out = Outcome::default();
    let Some(kind) = kind_of(obj).map(str::to_string) else {
        return Ok(out);
    };
    let Some(path) = template_path(&kind) else {
        return Ok(out);
    };
    let name = str_at(obj, &["metadata", "name"])
        .unwrap_or("app")
        .to_string();
    let namespace = str_at(obj, &["metadata", "namespace"]).map(str::to_string);
    let template_ann = path
        .iter()
        .try_fold(&*obj, |v, p| v.get(*p))
        .map(annotations_of)
        .unwrap_or_default();
    misplaced_annotations(obj, &kind, path, &template_ann, &mut out.notes);
    let Some(template) = path.iter().try_fold(obj, |v, p| v.get_mut(*p)) else {
        return Ok(out);
    };
    if !template.is_mapping() {
        return Ok(out);
    }
    let ann = template_ann;
    unused_annotations(&ann, &mut out.notes);
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
        return Ok(out);
    }
    if proxy.is_some() && inbound.is_some() {
        return Err(format!(
            "use either {PROXY} or {PROXY_INBOUND}, not both; remove one of them"
        ));
    }
    out.changed = true;
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

    // Our containers, and the ports they take, in a fixed order.
    let mut sidecars = Vec::new();
    let mut claims = Vec::new();
    let mut metrics_ports = Vec::new();
    if let Some(secret) = &exporter {
        check_name(EXPORTER, secret)?;
        let p = exporter_port.unwrap_or(ports::POSTGRES_EXPORTER);
        let mut args = vec!["postgres-exporter".to_string()];
        if exporter_port.is_some() {
            args.push(format!("--web.listen-address=:{p}"));
        }
        sidecars.push(exporter_container(opts, args, secret, p));
        claims.push(Claim::ours(
            p,
            EXPORTER_NAME,
            "serve its metrics",
            Fix::Annotation(EXPORTER_ADMIN_PORT),
        ));
        metrics_ports.push((p, ports::POSTGRES_EXPORTER_NAME));
    }
    if let Some(config_map) = &proxy {
        check_name(PROXY, config_map)?;
        let config = configs
            .iter()
            .find(|c| {
                c.name == *config_map
                    && same_namespace(c.namespace.as_deref(), namespace.as_deref())
            })
            .cloned()
            .unwrap_or_default();
        let admin = match (proxy_port, config.admin) {
            (Some(p), _) => p,
            (None, Some(Some(p))) => p,
            (None, Some(None)) => {
                return Err(format!(
                    "ConfigMap {config_map}'s proxy.yaml turns the admin server off (admin: off), but the probes need it; remove that line, or give the port with the annotation {PROXY_ADMIN_PORT}"
                ));
            }
            (None, None) => ports::PROXY,
        };
        let mut args = vec![
            "proxy".to_string(),
            "--config".into(),
            format!("{PROXY_DIR}/proxy.yaml"),
        ];
        if proxy_port.is_some() {
            args.push(format!("--admin={}", ports::all_interfaces(admin)));
        }
        sidecars.push(proxy_container(opts, args, None, admin, true));
        ensure_volume(
            template,
            PROXY_VOLUME,
            Value::Mapping(Mapping::from_iter([(
                key("configMap"),
                Value::Mapping(Mapping::from_iter([(key("name"), key(config_map))])),
            )])),
        )?;
        claims.push(Claim::ours(
            admin,
            PROXY_NAME,
            ADMIN_ROLE,
            Fix::Annotation(PROXY_ADMIN_PORT),
        ));
        for (listener, port) in config.listeners {
            claims.push(Claim::ours(
                port,
                PROXY_NAME,
                &format!("listen (listener `{listener}` of its proxy.yaml)"),
                Fix::ConfigListener {
                    listener,
                    config_map: config_map.clone(),
                },
            ));
        }
        metrics_ports.push((admin, ports::PROXY_NAME));
    }
    if let Some((listen, upstream)) = inbound {
        let admin = proxy_port.unwrap_or(ports::PROXY);
        let mut args = vec![
            "proxy".to_string(),
            format!("--listen=0.0.0.0:{listen}"),
            format!("--upstream=127.0.0.1:{upstream}"),
            format!("--service={name}"),
            format!("--zipkin={zipkin}"),
        ];
        if proxy_port.is_some() {
            args.push(format!("--admin={}", ports::all_interfaces(admin)));
        }
        sidecars.push(proxy_container(opts, args, Some(listen), admin, false));
        claims.push(Claim::ours(
            admin,
            PROXY_NAME,
            ADMIN_ROLE,
            Fix::Annotation(PROXY_ADMIN_PORT),
        ));
        claims.push(Claim::ours(
            listen,
            PROXY_NAME,
            &format!("listen for inbound traffic (LISTEN_PORT of {PROXY_INBOUND})"),
            Fix::InboundListen { app_port: upstream },
        ));
        metrics_ports.push((admin, ports::PROXY_NAME));
        out.route = Some(Route {
            namespace: namespace.clone(),
            labels: template
                .get("metadata")
                .and_then(|m| m.get("labels"))
                .and_then(Value::as_mapping)
                .cloned()
                .unwrap_or_default(),
            app_port: upstream,
            app_port_names: app_port_names(template, upstream),
            listen,
            ..Route::default()
        });
    }
    if logs.is_some() {
        let p = logs_port.unwrap_or(ports::LOGS);
        claims.push(Claim::ours(
            p,
            LOGS_NAME,
            ADMIN_ROLE,
            Fix::Annotation(LOGS_ADMIN_PORT),
        ));
        metrics_ports.push((p, ports::LOGS_NAME));
    }
    check_ports(app_claims(template, inbound.map(|(_, up)| up)), claims)?;
    if let Some(paths) = &logs {
        let paths: Vec<String> = paths
            .split(',')
            .map(|p| p.trim().to_string())
            .filter(|p| !p.is_empty())
            .collect();
        let mounts = log_mounts(template, &paths, &mut out.notes)?;
        let clash = |dir: &str| {
            mounts
                .iter()
                .any(|m| within(dir, &m.path) || within(&m.path, dir))
        };
        let state_dir = [STATE_DIR, STATE_DIR_ALT]
            .into_iter()
            .find(|d| !clash(d))
            .ok_or_else(|| {
                format!(
                    "annotation {LOGS}: the relay would mount the log directories over both {STATE_DIR} and {STATE_DIR_ALT}, where it keeps its checkpoint; log to a directory of its own, like /logs"
                )
            })?;
        let p = logs_port.unwrap_or(ports::LOGS);
        let mut args = vec!["logs".to_string(), "--state-dir".into(), state_dir.into()];
        if logs_port.is_some() {
            args.push(format!("--admin={}", ports::all_interfaces(p)));
        }
        args.extend(paths);
        sidecars.push(logs_container(opts, args, p, &mounts, state_dir));
        ensure_volume(
            template,
            STATE_VOLUME,
            Value::Mapping(Mapping::from_iter([(
                key("emptyDir"),
                Value::Mapping(Mapping::from_iter([(key("sizeLimit"), key("1Mi"))])),
            )])),
        )?;
    }
    // Native sidecars first, in a fixed order, replacing earlier injections.
    let spec = mapping_at(template, &["spec"])?;
    let init = seq_at(spec, "initContainers")?;
    init.retain(|c| !is_ours(c));
    for (i, c) in sidecars.into_iter().enumerate() {
        init.insert(i, c);
    }
    prometheus_annotations(template, &metrics_ports, &mut out.notes)?;
    Ok(out)
}

/// Our `prometheus.io/*` annotations, unless the pod has its own (they are
/// the app's: kept as they are).
fn prometheus_annotations(
    template: &mut Value,
    metrics_ports: &[(u16, &str)],
    notes: &mut Vec<(Level, String)>,
) -> Result<(), String> {
    let Some(&(first, _)) = metrics_ports.first() else {
        return Ok(());
    };
    let ann = mapping_at(template, &["metadata", "annotations"])?;
    let own: Vec<(String, String)> = ann
        .iter()
        .filter_map(|(k, v)| {
            let k = k.as_str()?;
            k.starts_with(PROMETHEUS_PREFIX).then(|| {
                let v = match v {
                    Value::String(s) => s.clone(),
                    other => serde_norway::to_string(other)
                        .unwrap_or_default()
                        .trim()
                        .to_string(),
                };
                (k.to_string(), v)
            })
        })
        .collect();
    if own.is_empty() {
        ann.insert(key("prometheus.io/scrape"), key("true"));
        ann.insert(key("prometheus.io/port"), key(&first.to_string()));
        return Ok(());
    }
    // Ours from an earlier run (or the user's, pointing at one of ours): nothing to say.
    let points_at_ours = own.iter().all(|(k, v)| match k.as_str() {
        "prometheus.io/scrape" => v == "true",
        "prometheus.io/port" => {
            parse_port(v).is_some_and(|p| metrics_ports.iter().any(|(m, _)| *m == p))
        }
        _ => false,
    }) && own.iter().any(|(k, _)| k == "prometheus.io/port");
    if !points_at_ours {
        let list: Vec<String> = own.iter().map(|(k, v)| format!("{k}: \"{v}\"")).collect();
        let names: Vec<&str> = metrics_ports.iter().map(|(_, n)| *n).collect();
        notes.push((
            Level::Note,
            format!(
                "the pod keeps its own prometheus.io annotations ({}), which are the app's; the sidecars' metrics are on the container ports named {}, for Prometheus to scrape by port name",
                list.join(", "),
                names.join(", ")
            ),
        ));
    }
    Ok(())
}

/// The names the app's containers give `port`.
fn app_port_names(template: &Value, port: u16) -> Vec<String> {
    containers(template, "containers")
        .filter(|c| !is_ours(c))
        .filter_map(|c| c.get("ports").and_then(Value::as_sequence))
        .flatten()
        .filter(|p| p.get("containerPort").and_then(Value::as_u64) == Some(u64::from(port)))
        .filter_map(|p| p.get("name").and_then(Value::as_str).map(str::to_string))
        .collect()
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
            "annotation {annotation}: `{name}` is not a Kubernetes object name (lower case letters, digits, '-', '.'); write the name of the object"
        ))
    }
}

/// A volume the app's containers mount.
#[derive(Debug, Clone)]
struct AppMount {
    container: String,
    volume: String,
    path: String,
    sub_path: Option<String>,
    sub_path_expr: bool,
}

/// A volume of the relay, read-only.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RelayMount {
    volume: String,
    path: String,
    sub_path: Option<String>,
}

fn app_mounts(template: &Value) -> Vec<AppMount> {
    let mut all = Vec::new();
    for c in containers(template, "containers").filter(|c| !is_ours(c)) {
        for m in c
            .get("volumeMounts")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            let (Some(volume), Some(path)) = (
                m.get("name").and_then(Value::as_str),
                m.get("mountPath").and_then(Value::as_str),
            ) else {
                continue;
            };
            let path = path.trim_end_matches('/');
            all.push(AppMount {
                container: name_of(c).to_string(),
                volume: volume.to_string(),
                path: if path.is_empty() { "/" } else { path }.to_string(),
                sub_path: m
                    .get("subPath")
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string),
                sub_path_expr: m
                    .get("subPathExpr")
                    .and_then(Value::as_str)
                    .is_some_and(|s| !s.is_empty()),
            });
        }
    }
    all
}

/// The relay's view of each log file's directory: the volume an app
/// container already mounts there or above (mounted where the app mounts
/// it), else a new `emptyDir` mounted at the directory in every app
/// container. Warns when such an `emptyDir` would hide the image's files.
fn log_mounts(
    template: &mut Value,
    paths: &[String],
    notes: &mut Vec<(Level, String)>,
) -> Result<Vec<RelayMount>, String> {
    let mut dirs: Vec<(String, &str)> = Vec::new();
    for p in paths {
        if !p.starts_with('/') {
            return Err(format!(
                "annotation {LOGS}: `{p}` must be an absolute path, like /logs/app.log"
            ));
        }
        let dir = std::path::Path::new(p)
            .parent()
            .map(|d| d.to_string_lossy().trim_end_matches('/').to_string())
            .filter(|d| !d.is_empty())
            .ok_or_else(|| {
                format!(
                    "annotation {LOGS}: `{p}` must be in a directory of its own, like /logs/app.log"
                )
            })?;
        if dir.contains(['*', '?', '[']) {
            return Err(format!(
                "annotation {LOGS}: the directory of `{p}` may not contain wildcards; put them in the file name only, like /logs/*.log"
            ));
        }
        if !dirs.iter().any(|(d, _)| *d == dir) {
            dirs.push((dir, p));
        }
    }
    // Outer directories first, so that inner ones reuse their volume.
    dirs.sort_by_key(|(d, _)| d.matches('/').count());
    let mut existing = app_mounts(template);
    let mut relay: Vec<RelayMount> = Vec::new();
    for (dir, path) in dirs {
        let outer = existing
            .iter()
            .filter(|m| within(&dir, &m.path))
            .fold(None::<&AppMount>, |best, m| match best {
                Some(b) if b.path.len() >= m.path.len() => Some(b),
                _ => Some(m),
            })
            .cloned();
        let mount = match outer {
            Some(m) if m.sub_path_expr => {
                return Err(format!(
                    "annotation {LOGS}: `{path}` is in volume {}, which container {} mounts at {} with a subPathExpr that the relay cannot repeat; log to a directory outside that volume, like /logs",
                    m.volume, m.container, m.path
                ));
            }
            // The app's volume, where the app mounts it: no subPath of our
            // own, which the kubelet would create (as root, before the app
            // starts) inside the app's data.
            Some(m) => RelayMount {
                volume: m.volume,
                path: m.path,
                sub_path: m.sub_path,
            },
            None => {
                warn_hidden_files(template, &dir, path, notes);
                let volume = new_log_volume(template, &dir)?;
                for c in containers(template, "containers").filter(|c| !is_ours(c)) {
                    existing.push(AppMount {
                        container: name_of(c).to_string(),
                        volume: volume.clone(),
                        path: dir.clone(),
                        sub_path: None,
                        sub_path_expr: false,
                    });
                }
                RelayMount {
                    volume,
                    path: dir,
                    sub_path: None,
                }
            }
        };
        if !relay.contains(&mount) {
            relay.push(mount);
        }
    }
    Ok(relay)
}

/// A new `emptyDir` for the log directory `dir`, mounted there in every app container.
fn new_log_volume(template: &mut Value, dir: &str) -> Result<String, String> {
    let spec = mapping_at(template, &["spec"])?;
    let taken: Vec<String> = spec
        .get("volumes")
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
        .map(|v| name_of(v).to_string())
        .collect();
    let volume = (0..)
        .map(|n| {
            if n == 0 {
                LOGS_NAME.to_string()
            } else {
                format!("{LOGS_NAME}-{n}")
            }
        })
        .find(|v| !taken.contains(v) && v != STATE_VOLUME)
        .unwrap_or_default();
    for c in seq_at(spec, "containers")?.iter_mut() {
        if is_ours(c) {
            continue;
        }
        let c = c.as_mapping_mut().ok_or(
            "every entry of `containers` must be a mapping (name: ..., image: ...); fix the pod template",
        )?;
        seq_at(c, "volumeMounts")?.push(Value::Mapping(Mapping::from_iter([
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

/// Warns when a new `emptyDir` at `dir` would hide what the image has there:
/// an app container's working directory or program, or a system directory.
fn warn_hidden_files(template: &Value, dir: &str, path: &str, notes: &mut Vec<(Level, String)>) {
    let mut reasons = Vec::new();
    for c in containers(template, "containers").filter(|c| !is_ours(c)) {
        let name = name_of(c);
        if let Some(wd) = c.get("workingDir").and_then(Value::as_str) {
            let wd = wd.trim_end_matches('/');
            if !wd.is_empty() && within(wd, dir) {
                reasons.push(format!("container {name}'s workingDir is {wd}"));
            }
        }
        if let Some(cmd) = c
            .get("command")
            .and_then(Value::as_sequence)
            .and_then(|s| s.first())
            .and_then(Value::as_str)
        {
            if cmd.starts_with('/') && within(cmd, dir) {
                reasons.push(format!("container {name}'s command {cmd} is there"));
            }
        }
    }
    if reasons.is_empty()
        && (SYSTEM_TREES.iter().any(|t| within(dir, t)) || SYSTEM_DIRS.contains(&dir))
    {
        reasons.push(format!("images keep their own files in {dir}"));
    }
    if !reasons.is_empty() {
        notes.push((
            Level::Warning,
            format!(
                "annotation {LOGS}: the new emptyDir mounted at {dir} (the directory of {path}) hides what the image has there ({}); if the image keeps files in {dir}, have the app log to a directory of its own, like /logs, and point {LOGS} there",
                reasons.join(" and ")
            ),
        ));
    }
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

/// Points the input's Services that send an inbound proxy's traffic
/// straight to the app at the proxy instead; warns when none reaches it.
fn retarget_services(docs: &mut [Doc], all: &[At], route: &Route, notes: &mut Vec<Note>) {
    let mut reaches_proxy = false;
    for &at in all {
        let (index, what) = (at.doc + 1, what(docs, at));
        let svc = object_mut(docs, at);
        if kind_of(svc) != Some("Service")
            || !same_namespace(
                str_at(svc, &["metadata", "namespace"]),
                route.namespace.as_deref(),
            )
        {
            continue;
        }
        let selects = svc
            .get("spec")
            .and_then(|s| s.get("selector"))
            .and_then(Value::as_mapping)
            .is_some_and(|sel| {
                !sel.is_empty() && sel.iter().all(|(k, v)| route.labels.get(k) == Some(v))
            });
        if !selects {
            continue;
        }
        let mut changed = Vec::new();
        for p in svc
            .get_mut("spec")
            .and_then(|s| s.get_mut("ports"))
            .and_then(Value::as_sequence_mut)
            .into_iter()
            .flatten()
        {
            let udp = p
                .get("protocol")
                .and_then(Value::as_str)
                .is_some_and(|proto| proto != "TCP");
            let Some(target) = p.get("targetPort").or_else(|| p.get("port")).cloned() else {
                continue;
            };
            let to_app = match &target {
                Value::Number(n) => n.as_u64() == Some(u64::from(route.app_port)),
                Value::String(s) => route.app_port_names.contains(s),
                _ => false,
            };
            let to_proxy = match &target {
                Value::Number(n) => n.as_u64() == Some(u64::from(route.listen)),
                Value::String(s) => s == PROXY_PORT_NAME,
                _ => false,
            };
            if udp {
                continue;
            }
            reaches_proxy |= to_proxy;
            if to_app {
                if let Some(m) = p.as_mapping_mut() {
                    m.insert(key("targetPort"), Value::Number(route.listen.into()));
                }
                let port = p.get("port").and_then(Value::as_u64).unwrap_or(0);
                let was = match &target {
                    Value::String(s) => s.clone(),
                    other => serde_norway::to_string(other)
                        .unwrap_or_default()
                        .trim()
                        .to_string(),
                };
                changed.push(format!("port {port} (was {was})"));
                reaches_proxy = true;
            }
        }
        if !changed.is_empty() {
            docs[at.doc].changed = true;
            notes.push(Note {
                index,
                what,
                level: Level::Note,
                message: format!(
                    "targetPort changed to {} for {}: the listen port of {PROXY_NAME} in {}, which passes the traffic on to the app's port {}",
                    route.listen,
                    changed.join(" and "),
                    route.what,
                    route.app_port
                ),
            });
        }
    }
    if !reaches_proxy {
        let labels: Vec<String> = route
            .labels
            .iter()
            .filter_map(|(k, v)| Some(format!("{}={}", k.as_str()?, v.as_str()?)))
            .collect();
        notes.push(Note {
            index: route.index,
            what: route.what.clone(),
            level: Level::Warning,
            message: format!(
                "no Service in the input sends traffic to {PROXY_NAME}, so requests that come through a Service bypass it; in the Service that selects these pods ({}), change targetPort {} to {} (the proxy's listen port)",
                if labels.is_empty() {
                    "they have no labels: add some".to_string()
                } else {
                    labels.join(", ")
                },
                route.app_port,
                route.listen
            ),
        });
    }
}

fn yaml(text: &str) -> Value {
    serde_norway::from_str(text).unwrap_or(Value::Null)
}

/// What every container of ours carries: image, restart policy (native
/// sidecar), probes on its admin port, the restricted security context,
/// small requests, a memory limit.
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

/// `{name: NAME, containerPort: PORT}`: a sidecar's admin port, under the
/// name Prometheus finds it by (`ports::*_NAME`).
fn metrics_port(name: &str, port: u16) -> String {
    format!("{{name: {name}, containerPort: {port}}}")
}

fn exporter_container(opts: &Options, args: Vec<String>, secret: &str, port: u16) -> Value {
    let mut c = base_container(opts, EXPORTER_NAME, args, port);
    c.insert(
        key("envFrom"),
        yaml(&format!("[{{secretRef: {{name: {secret}}}}}]")),
    );
    c.insert(
        key("ports"),
        yaml(&format!(
            "[{}]",
            metrics_port(ports::POSTGRES_EXPORTER_NAME, port)
        )),
    );
    Value::Mapping(c)
}

fn proxy_container(
    opts: &Options,
    args: Vec<String>,
    listen: Option<u16>,
    admin: u16,
    config: bool,
) -> Value {
    let mut c = base_container(opts, PROXY_NAME, args, admin);
    let ports = match listen {
        Some(p) => format!(
            "[{{name: {PROXY_PORT_NAME}, containerPort: {p}}}, {}]",
            metrics_port(ports::PROXY_NAME, admin)
        ),
        None => format!("[{}]", metrics_port(ports::PROXY_NAME, admin)),
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

fn logs_container(
    opts: &Options,
    args: Vec<String>,
    port: u16,
    mounts: &[RelayMount],
    state_dir: &str,
) -> Value {
    let mut c = base_container(opts, LOGS_NAME, args, port);
    c.insert(
        key("ports"),
        yaml(&format!("[{}]", metrics_port(ports::LOGS_NAME, port))),
    );
    let mut list: Vec<Value> = mounts
        .iter()
        .map(|m| {
            let mut v = Mapping::from_iter([
                (key("name"), key(&m.volume)),
                (key("mountPath"), key(&m.path)),
            ]);
            if let Some(s) = &m.sub_path {
                v.insert(key("subPath"), key(s));
            }
            v.insert(key("readOnly"), Value::Bool(true));
            Value::Mapping(v)
        })
        .collect();
    list.push(Value::Mapping(Mapping::from_iter([
        (key("name"), key(STATE_VOLUME)),
        (key("mountPath"), key(state_dir)),
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
        assert_eq!(inject(input, &opts()).unwrap().yaml, input);
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

    #[test]
    fn directories_contain_by_whole_components() {
        assert!(within(
            "/var/lib/postgresql/data/log",
            "/var/lib/postgresql/data"
        ));
        assert!(within("/data", "/data"));
        assert!(within("/anything", "/"));
        assert!(!within("/data2/log", "/data"));
        assert!(!within("/data", "/data/log"));
    }

    #[test]
    fn yaml_errors_give_the_line_in_the_whole_input() {
        let err = inject("kind: Service\n---\na: b\nc: [\n", &opts()).unwrap_err();
        assert_eq!(err.index, 2);
        assert!(err.message.contains("line 5"), "{err}");
        assert!(err.message.contains("fix the YAML"), "{err}");
    }

    #[test]
    fn misplaced_and_unknown_annotations_are_notes() {
        let input = "kind: Deployment\nmetadata: {name: web, annotations: {sidecar.dev/logs: /l/a.log}}\nspec:\n  template:\n    metadata: {annotations: {sidecar.dev/log: /l/a.log}}\n    spec: {containers: [{name: a, image: x}]}\n";
        let out = inject(input, &opts()).unwrap();
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
