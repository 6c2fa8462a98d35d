//! Reads deploy/ the way a cluster would run it. Each step of the README's
//! walk-through is a `kubectl apply -f DIR` (the directory's own files, in
//! name order); an object replaces the one of the same kind, namespace and
//! name. After each step `Cluster::problems` lists what would fail on a real
//! cluster:
//! - a Service that selects no Pod, or whose targetPort no container declares
//!   (a port name declared only on a native sidecar resolves on recent
//!   Kubernetes only, so only regular containers may be targeted by name);
//! - an app whose image, with the environment the manifests give it, calls a
//!   peer (host and port) that no Service or container of its Pod offers
//!   (`SEED_IMAGES`: what each third-party image listens on and calls, and
//!   where each default comes from);
//! - a sidecar of ours configured with an upstream, collector or database
//!   that does not resolve the same way, a relay reading files no app writes;
//! - Fluent Bit's outputs, Prometheus' scrape annotations;
//! - a Pod that its namespace's Pod Security level would refuse;
//! - an apply the API server would refuse (a changed selector, a namespace
//!   that does not exist yet).
#![allow(dead_code, clippy::unwrap_used)]

mod checks;
mod pod;
pub mod security;
mod seed;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_norway::Value;

use super::kube;
pub use pod::{Pod, Running};
use pod::{is_ours, parse_args, scalar, seq, str_at};

/// The walk-through as the README gives it: each step's directories, applied
/// in order on top of everything before.
pub const WALK_THROUGH: &[(&str, &[&str])] = &[
    ("demo 1", &["setup", "logging", "demo1"]),
    ("demo 1 updated", &["demo1/update"]),
    ("demo 2", &["monitoring"]),
    ("demo 2 updated", &["demo2/update"]),
    ("demo 3", &["tracing", "demo3"]),
    ("demo 3 updated", &["demo3/update"]),
    // "To go back to the before state of a demo, apply its directory again."
    ("demo 3 reverted", &["demo3"]),
    ("demo 1 reverted", &["demo1"]),
    ("demo 2 reverted", &["demo2"]),
    // The injector (issue 18; deploy-injector-walkthrough.md until the README
    // has it): its manifests, then cert-manager's objects for its certificate.
    ("injector", &["injector", "injector/cert-manager"]),
];

type Key = (String, String, String);

const CLUSTER_SCOPED: &[&str] = &[
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration",
    "ClusterIssuer",
];
const WORKLOADS: &[&str] = &[
    "Deployment",
    "StatefulSet",
    "DaemonSet",
    "ReplicaSet",
    "Job",
];

/// The objects of a cluster after some applies.
#[derive(Default)]
pub struct Cluster {
    objects: BTreeMap<Key, Value>,
}

impl Cluster {
    /// `kubectl apply -f DIR`: the directory's own YAML files, in name order.
    pub fn apply_dir(&mut self, dir: &Path) -> Vec<String> {
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
            .collect();
        files.sort();
        let mut problems = Vec::new();
        for f in files {
            for doc in kube::documents(&std::fs::read_to_string(&f).unwrap()) {
                if let Err(e) = self.apply(doc) {
                    problems.push(format!("{}: {e}", f.display()));
                }
            }
        }
        problems
    }

    fn apply(&mut self, doc: Value) -> Result<(), String> {
        let kind = str_at(&doc, &["kind"]).unwrap_or_default().to_string();
        let name = str_at(&doc, &["metadata", "name"])
            .unwrap_or_default()
            .to_string();
        let ns = if CLUSTER_SCOPED.contains(&kind.as_str()) {
            String::new()
        } else {
            str_at(&doc, &["metadata", "namespace"])
                .unwrap_or("default")
                .to_string()
        };
        if !ns.is_empty()
            && !["default", "kube-system"].contains(&ns.as_str())
            && !self
                .objects
                .contains_key(&("Namespace".into(), String::new(), ns.clone()))
        {
            return Err(format!(
                "{kind} {name}: namespace \"{ns}\" not found (apply it first)"
            ));
        }
        let key = (kind.clone(), ns, name.clone());
        if let Some(old) = self.objects.get(&key) {
            if WORKLOADS.contains(&kind.as_str())
                && old.get("spec").and_then(|s| s.get("selector"))
                    != doc.get("spec").and_then(|s| s.get("selector"))
            {
                return Err(format!(
                    "{kind} {name}: spec.selector is immutable; the apply is refused"
                ));
            }
        }
        self.objects.insert(key, doc);
        Ok(())
    }

    fn get(&self, kind: &str, ns: &str, name: &str) -> Option<&Value> {
        self.objects
            .get(&(kind.to_string(), ns.to_string(), name.to_string()))
    }

    fn of_kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = (&'a Key, &'a Value)> + 'a {
        self.objects.iter().filter(move |(k, _)| k.0 == kind)
    }

    pub fn pods(&self) -> Vec<Pod<'_>> {
        let mut out = Vec::new();
        for ((_, ns, name), doc) in &self.objects {
            let Some(t) = kube::pod_template(doc) else {
                continue;
            };
            let map = |k: &str| -> BTreeMap<String, String> {
                t.get("metadata")
                    .and_then(|m| m.get(k))
                    .and_then(Value::as_mapping)
                    .map(|m| {
                        m.iter()
                            .filter_map(|(k, v)| Some((k.as_str()?.to_string(), scalar(v)?)))
                            .collect()
                    })
                    .unwrap_or_default()
            };
            out.push(Pod {
                ns: ns.clone(),
                name: name.clone(),
                labels: map("labels"),
                annotations: map("annotations"),
                spec: t.get("spec").unwrap(),
            });
        }
        out
    }

    /// A key of a ConfigMap or Secret.
    fn data(&self, kind: &str, ns: &str, name: &str) -> Option<BTreeMap<String, String>> {
        let obj = self.get(kind, ns, name)?;
        let mut out = BTreeMap::new();
        for field in ["data", "stringData"] {
            for (k, v) in obj
                .get(field)
                .and_then(Value::as_mapping)
                .into_iter()
                .flatten()
            {
                let (Some(k), Some(v)) = (k.as_str(), v.as_str()) else {
                    continue;
                };
                let v = if kind == "Secret" && field == "data" {
                    use base64::Engine as _;
                    String::from_utf8_lossy(
                        &base64::engine::general_purpose::STANDARD
                            .decode(v)
                            .unwrap_or_default(),
                    )
                    .into_owned()
                } else {
                    v.to_string()
                };
                out.insert(k.to_string(), v);
            }
        }
        Some(out)
    }

    /// The environment a container gets: envFrom, then env (later wins).
    /// Values that cannot be resolved are problems.
    fn env_of(
        &self,
        ns: &str,
        c: &Value,
        problems: &mut Vec<String>,
        what: &str,
    ) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        for from in seq(c.get("envFrom")) {
            for (kind, field) in [("ConfigMap", "configMapRef"), ("Secret", "secretRef")] {
                if let Some(name) = str_at(&from, &[field, "name"]) {
                    match self.data(kind, ns, name) {
                        Some(d) => env.extend(d),
                        None => problems
                            .push(format!("{what}: envFrom {kind} {ns}/{name} does not exist")),
                    }
                }
            }
        }
        for e in seq(c.get("env")) {
            let name = str_at(&e, &["name"]).unwrap_or_default().to_string();
            if let Some(v) = e.get("value").and_then(scalar) {
                env.insert(name, v);
            } else {
                for (kind, field) in [("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")]
                {
                    if let (Some(n), Some(k)) = (
                        str_at(&e, &["valueFrom", field, "name"]),
                        str_at(&e, &["valueFrom", field, "key"]),
                    ) {
                        match self.data(kind, ns, n).and_then(|d| d.get(k).cloned()) {
                            Some(v) => {
                                env.insert(name.clone(), v);
                            }
                            None => problems.push(format!(
                                "{what}: env {name} from {kind} {ns}/{n} key {k}: not found"
                            )),
                        }
                    }
                }
            }
        }
        env
    }

    /// Whether a program in `pod` reaches `host:port`; else why not.
    fn reach(&self, pod: &Pod, host: &str, port: u16) -> Result<(), String> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if ["localhost", "127.0.0.1", "::1"].contains(&host) {
            return if self.local_ports(pod).contains(&port) {
                Ok(())
            } else {
                Err(format!("nothing in the Pod listens on port {port}"))
            };
        }
        let parts: Vec<&str> = host.split('.').collect();
        let (svc, ns) = match parts.as_slice() {
            [svc] => (*svc, pod.ns.as_str()),
            [svc, ns] | [svc, ns, "svc"] | [svc, ns, "svc", "cluster", "local"] => (*svc, *ns),
            _ => return Err(format!("`{host}` is not a Service name")),
        };
        let Some(s) = self.get("Service", ns, svc) else {
            return Err(format!("there is no Service {ns}/{svc}"));
        };
        let ports: Vec<u64> = seq(s.get("spec").and_then(|s| s.get("ports")))
            .iter()
            .filter_map(|p| p.get("port")?.as_u64())
            .collect();
        if ports.contains(&u64::from(port)) {
            Ok(())
        } else {
            Err(format!(
                "Service {ns}/{svc} has no port {port} (it has {ports:?})"
            ))
        }
    }

    /// Ports something in the Pod listens on: declared ones, and our proxies' listeners.
    fn local_ports(&self, pod: &Pod) -> BTreeSet<u16> {
        let mut out: BTreeSet<u16> = pod.declared().iter().map(|d| d.1).collect();
        for r in pod.running() {
            if let Some(Ok(p)) = self.proxy_of(pod, r.c) {
                out.extend(p.listeners.iter().map(|l| l.listen.port()));
            }
        }
        out
    }

    /// Our proxy's configuration, from its ConfigMap or its flags.
    fn proxy_of(&self, pod: &Pod, c: &Value) -> Option<Result<sidecar_proxy::Config, String>> {
        if !is_ours(c) {
            return None;
        }
        let (flags, pos) = parse_args(c);
        if pos.first().map(String::as_str) != Some("proxy") {
            return None;
        }
        let flag = |k: &str| {
            flags
                .iter()
                .rev()
                .find(|(f, _)| f == k)
                .map(|(_, v)| v.clone())
        };
        if let Some(path) = flag("--config") {
            return Some(self.mounted_file(pod, c, &path).and_then(|text| {
                sidecar_proxy::Config::from_yaml(&text, &path).map_err(|e| e.to_string())
            }));
        }
        let mut yaml = String::new();
        let esc = |s: String| format!("{s:?}");
        yaml.push_str(&format!(
            "service: {}\n",
            esc(flag("--service").unwrap_or_else(|| "x".into()))
        ));
        if let Some(z) = flag("--zipkin") {
            yaml.push_str(&format!("tracing: {{zipkin: {}}}\n", esc(z)));
        }
        yaml.push_str(&format!(
            "listeners:\n  - name: l\n    listen: {}\n    direction: {}\n    routes: [{{prefix: /, upstream: {}}}]\n",
            esc(flag("--listen").unwrap_or_default()),
            flag("--direction").unwrap_or_else(|| "inbound".into()),
            esc(flag("--upstream").unwrap_or_default())
        ));
        Some(sidecar_proxy::Config::from_yaml(&yaml, "flags").map_err(|e| e.to_string()))
    }

    /// The text of a file a container reads from a ConfigMap or Secret volume.
    fn mounted_file(&self, pod: &Pod, c: &Value, path: &str) -> Result<String, String> {
        for m in seq(c.get("volumeMounts")) {
            let (Some(dir), Some(vol)) = (str_at(&m, &["mountPath"]), str_at(&m, &["name"])) else {
                continue;
            };
            let Some(file) = path.strip_prefix(dir).map(|f| f.trim_start_matches('/')) else {
                continue;
            };
            let v = pod
                .volume(vol)
                .ok_or_else(|| format!("volume {vol} is not defined"))?;
            for (kind, field, key) in [
                ("ConfigMap", "configMap", "name"),
                ("Secret", "secret", "secretName"),
            ] {
                if let Some(name) = str_at(&v, &[field, key]) {
                    return self
                        .data(kind, &pod.ns, name)
                        .ok_or_else(|| format!("{kind} {}/{name} does not exist", pod.ns))?
                        .get(file)
                        .cloned()
                        .ok_or_else(|| format!("{kind} {}/{name} has no key {file}", pod.ns));
                }
            }
            return Err(format!(
                "{path} is on volume {vol}, not a ConfigMap or Secret"
            ));
        }
        Err(format!("{path} is not on any volume the container mounts"))
    }

    /// Every problem a real cluster would meet in the current state.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        self.check_services(&mut p);
        for pod in self.pods() {
            self.check_apps(&pod, &mut p);
            self.check_sidecars(&pod, &mut p);
            self.check_scrape(&pod, &mut p);
            self.check_security(&pod, &mut p);
        }
        self.check_fluent_bit(&mut p);
        p
    }
}
