//! Kubernetes manifest checks for tests: offline schema validation and the
//! rules every container of ours follows.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_norway::Value;

/// Validates files strictly against the Kubernetes 1.33 schemas
/// (`kubernetes-validate --strict`, from the test venv); warnings fail too.
pub fn validate(files: &[&Path]) {
    python_check(
        "kubernetes-validate",
        &["-m", "kubernetes_validate", "-k", "1.33.0", "--strict"],
        files,
        "python with kubernetes-validate (./scripts/test installs it)",
    );
}

/// Runs a Python checker (`args`, then `files`) from the test venv: it must
/// succeed, say something, and every line it says must be INFO.
fn python_check(name: &str, args: &[&str], files: &[&Path], needs: &str) {
    let python = std::env::var("SIDECAR_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(&python)
        .args(args)
        .args(files)
        .output()
        .expect(needs);
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{name} failed:\n{report}");
    assert!(!report.trim().is_empty(), "{name} checked nothing");
    for line in report.lines() {
        assert!(line.starts_with("INFO"), "{name}: {line}");
    }
}

/// The API groups of custom resources in deploy/ (cert-manager's, for the
/// injector's certificates): kubernetes-validate has no schema for them (it
/// warns "Couldn't find schema"), so they are validated by [`validate_crds`].
pub const CRD_GROUPS: &[&str] = &["cert-manager.io/"];

/// Whether a document is a custom resource of one of [`CRD_GROUPS`].
pub fn is_custom_resource(doc: &Value) -> bool {
    doc.get("apiVersion")
        .and_then(Value::as_str)
        .is_some_and(|v| CRD_GROUPS.iter().any(|g| v.starts_with(g)))
}

/// Validates custom resources strictly against their CRDs' OpenAPI schemas
/// (tests/data/cert-manager-crds.json, cert-manager's own CRDs vendored with
/// tests/py/vendor_crd_schemas.py): unknown fields are errors, as with
/// `kubectl apply`'s default field validation; CEL rules are not evaluated,
/// and a document setting a field that has some fails (tests/py/validate_crd.py).
pub fn validate_crds(files: &[&Path]) {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests");
    let script = format!("{dir}/py/validate_crd.py");
    let schemas = format!("{dir}/data/cert-manager-crds.json");
    python_check(
        "validate_crd.py",
        &[&script, &schemas],
        files,
        "python with jsonschema and pyyaml (./scripts/test installs them)",
    );
}

/// Every YAML document of a multi-document text.
pub fn documents(text: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|v: &Value| !v.is_null())
        .collect()
}

/// The pod template of a workload document, if it is one.
pub fn pod_template(doc: &Value) -> Option<&Value> {
    match doc.get("kind")?.as_str()? {
        "Pod" => Some(doc),
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => {
            doc.get("spec")?.get("template")
        }
        "CronJob" => doc
            .get("spec")?
            .get("jobTemplate")?
            .get("spec")?
            .get("template"),
        _ => None,
    }
}

fn is_ours(container: &Value) -> bool {
    container
        .get("image")
        .and_then(Value::as_str)
        .is_some_and(|i| i.starts_with("sidecar:") || i.contains("/sidecar:"))
}

fn s<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, p| v.get(*p))
}

/// Checks the rules for our containers in one document; returns how many it checked.
pub fn check_rules(doc: &Value, what: &str) -> usize {
    let Some(template) = pod_template(doc) else {
        return 0;
    };
    let spec = template.get("spec").unwrap();
    let list = |name: &str| {
        spec.get(name)
            .and_then(Value::as_sequence)
            .cloned()
            .unwrap_or_default()
    };
    let (containers, init) = (list("containers"), list("initContainers"));
    let has_app = containers.iter().any(|c| !is_ours(c));
    let mut checked = 0;
    for (c, is_init) in containers
        .iter()
        .map(|c| (c, false))
        .chain(init.iter().map(|c| (c, true)))
    {
        if !is_ours(c) {
            continue;
        }
        checked += 1;
        let name = format!(
            "{what}: container {}",
            c.get("name").and_then(Value::as_str).unwrap_or("?")
        );
        if has_app {
            assert!(
                is_init,
                "{name} sits beside an app: it must be a native sidecar (initContainers)"
            );
            assert_eq!(
                s(c, &["restartPolicy"]).and_then(Value::as_str),
                Some("Always"),
                "{name}: restartPolicy Always"
            );
        }
        let probe_path = |probe: &str| {
            s(c, &[probe, "httpGet", "path"])
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        assert_eq!(
            probe_path("startupProbe").as_deref(),
            Some("/ready"),
            "{name}: startupProbe on /ready"
        );
        assert_eq!(
            probe_path("livenessProbe").as_deref(),
            Some("/live"),
            "{name}: livenessProbe on /live"
        );
        let sc = |k: &[&str]| {
            s(c, &[&["securityContext"][..], k].concat())
                .or_else(|| s(spec, &[&["securityContext"][..], k].concat()))
                .cloned()
        };
        assert_eq!(
            sc(&["runAsNonRoot"]),
            Some(Value::Bool(true)),
            "{name}: runAsNonRoot"
        );
        assert_eq!(
            sc(&["allowPrivilegeEscalation"]),
            Some(Value::Bool(false)),
            "{name}: allowPrivilegeEscalation false"
        );
        assert_eq!(
            sc(&["readOnlyRootFilesystem"]),
            Some(Value::Bool(true)),
            "{name}: readOnlyRootFilesystem"
        );
        assert_eq!(
            sc(&["seccompProfile", "type"])
                .and_then(|v| v.as_str().map(str::to_string))
                .as_deref(),
            Some("RuntimeDefault"),
            "{name}: seccomp RuntimeDefault"
        );
        let drops = sc(&["capabilities", "drop"])
            .and_then(|v| v.as_sequence().cloned())
            .unwrap_or_default();
        assert!(
            drops.iter().any(|d| d.as_str() == Some("ALL")),
            "{name}: capabilities drop ALL"
        );
        for r in [
            ["requests", "cpu"],
            ["requests", "memory"],
            ["limits", "memory"],
        ] {
            assert!(
                s(c, &["resources", r[0], r[1]]).is_some(),
                "{name}: resources.{}.{}",
                r[0],
                r[1]
            );
        }
        let annotations = s(template, &["metadata", "annotations"]);
        assert!(
            annotations
                .and_then(|a| a.get("prometheus.io/port"))
                .is_some(),
            "{name}: the pod needs prometheus.io/port so Prometheus scrapes it"
        );
    }
    checked
}

/// The container named `name` of a pod template, among its `containers` and
/// `initContainers`.
pub fn container<'a>(template: &'a Value, name: &str) -> Option<&'a Value> {
    let spec = template.get("spec")?;
    ["containers", "initContainers"]
        .iter()
        .filter_map(|list| spec.get(*list).and_then(Value::as_sequence))
        .flatten()
        .find(|c| c.get("name").and_then(Value::as_str) == Some(name))
}

/// One annotation of a pod template (or any object), as a string.
pub fn annotation<'a>(object: &'a Value, key: &str) -> Option<&'a str> {
    s(object, &["metadata", "annotations", key]).and_then(Value::as_str)
}

/// The name each container of ours gives its metrics (admin) port, so
/// Prometheus can scrape it by name (`__meta_kubernetes_pod_container_port_name`;
/// deploy/monitoring keeps these names). Port names must be unique within a
/// Pod, hence one per sidecar. Written out here, not taken from the code, so
/// that a change of name fails a test.
pub fn metrics_port_name(container: &str) -> &'static str {
    match container {
        "sidecar-logs" => "sidecar-logs",
        "sidecar-postgres-exporter" => "sidecar-pg",
        "sidecar-proxy" => "sidecar-proxy",
        // The injector's own (deploy/injector), not a sidecar.
        "sidecar-injector" => "sidecar-inj",
        other => panic!("{other} is not a container of ours"),
    }
}

/// Checks that each container of ours in a workload document declares its
/// admin port (the one its probes use) under its [`metrics_port_name`],
/// once; returns how many it checked.
pub fn check_metrics_ports(doc: &Value, what: &str) -> usize {
    let Some(template) = pod_template(doc) else {
        return 0;
    };
    let mut checked = 0;
    for list in ["containers", "initContainers"] {
        for c in s(template, &["spec", list])
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
            .filter(|c| is_ours(c))
        {
            let name = c.get("name").and_then(Value::as_str).unwrap_or("?");
            let port_name = metrics_port_name(name);
            let probe = s(c, &["startupProbe", "httpGet", "port"]).and_then(Value::as_u64);
            let named: Vec<u64> = c
                .get("ports")
                .and_then(Value::as_sequence)
                .into_iter()
                .flatten()
                .filter(|p| p.get("name").and_then(Value::as_str) == Some(port_name))
                .filter_map(|p| p.get("containerPort").and_then(Value::as_u64))
                .collect();
            assert_eq!(
                named.len(),
                1,
                "{what}: container {name} declares one port named {port_name}"
            );
            assert_eq!(
                Some(named[0]),
                probe,
                "{what}: container {name}'s {port_name} port is its admin port"
            );
            checked += 1;
        }
    }
    checked
}

/// The repository's deploy/ directory.
pub fn deploy_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

/// A copy of deploy/ with one file's text changed (the first `from`, which
/// must be there, replaced by `to`).
pub fn deploy_copy_with(file: &str, from: &str, to: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = deploy_root();
    let mut stack = vec![root.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let rel = p.strip_prefix(&root).unwrap();
            if p.is_dir() {
                std::fs::create_dir_all(dir.path().join(rel)).unwrap();
                stack.push(p);
            } else {
                std::fs::copy(&p, dir.path().join(rel)).unwrap();
            }
        }
    }
    let path = dir.path().join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "{file} no longer contains {from:?}");
    std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
    dir
}
