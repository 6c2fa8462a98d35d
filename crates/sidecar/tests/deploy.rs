//! The Kubernetes manifests under deploy/: valid against the 1.33 schemas
//! (strict), our containers follow the rules, proxy configs parse.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};

use common::kube;

fn manifests() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy");
    let mut out = Vec::new();
    let mut stack = vec![root];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn every_manifest_validates_strictly_against_kubernetes_1_33() {
    let files = manifests();
    assert!(files.len() >= 12, "{files:?}");
    let refs: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    kube::validate(&refs);
}

#[test]
fn our_containers_are_native_sidecars_with_probes_limits_and_a_restricted_context() {
    let mut checked = 0;
    for f in manifests() {
        let text = std::fs::read_to_string(&f).unwrap();
        for doc in kube::documents(&text) {
            checked += kube::check_rules(&doc, &f.display().to_string());
        }
    }
    // logs relay, exporter, two service proxies, the front proxy.
    assert_eq!(checked, 5);
}

#[test]
fn proxy_configs_in_config_maps_parse_and_validate() {
    let mut seen = 0;
    for f in manifests() {
        let text = std::fs::read_to_string(&f).unwrap();
        for doc in kube::documents(&text) {
            if doc.get("kind").and_then(|k| k.as_str()) != Some("ConfigMap") {
                continue;
            }
            if let Some(yaml) = doc
                .get("data")
                .and_then(|d| d.get("proxy.yaml"))
                .and_then(|v| v.as_str())
            {
                let cfg = sidecar_proxy::Config::from_yaml(yaml, &f.display().to_string()).unwrap();
                cfg.validate().unwrap();
                seen += 1;
            }
        }
    }
    assert_eq!(seen, 2);
}
