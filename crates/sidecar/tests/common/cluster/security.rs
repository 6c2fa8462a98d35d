//! Pod Security Standards levels, as the admission controller reads them.

use serde_norway::Value;

use super::Pod;
use super::pod::{seq, str_at};

/// The Pod Security Standards level a Pod meets ("restricted", "baseline" or
/// "privileged") and the reasons it misses the next one. Follows
/// kubernetes.io/docs/concepts/security/pod-security-standards for the
/// fields the manifests use.
pub fn pod_security_level(pod: &Pod) -> (&'static str, Vec<String>) {
    const BASELINE_CAPS: &[&str] = &[
        "AUDIT_WRITE",
        "CHOWN",
        "DAC_OVERRIDE",
        "FOWNER",
        "FSETID",
        "KILL",
        "MKNOD",
        "NET_BIND_SERVICE",
        "SETFCAP",
        "SETGID",
        "SETPCAP",
        "SETUID",
        "SYS_CHROOT",
    ];
    const RESTRICTED_VOLUMES: &[&str] = &[
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    ];
    let spec = pod.spec;
    let (mut not_baseline, mut not_restricted) = (Vec::new(), Vec::new());
    for k in ["hostNetwork", "hostPID", "hostIPC"] {
        if spec.get(k).and_then(Value::as_bool) == Some(true) {
            not_baseline.push(k.to_string());
        }
    }
    for v in seq(spec.get("volumes")) {
        let name = str_at(&v, &["name"]).unwrap_or_default();
        let kind = v
            .as_mapping()
            .into_iter()
            .flatten()
            .filter_map(|(k, _)| k.as_str())
            .find(|k| *k != "name")
            .unwrap_or_default()
            .to_string();
        if kind == "hostPath" {
            not_baseline.push(format!("volume {name} is a hostPath"));
        } else if !RESTRICTED_VOLUMES.contains(&kind.as_str()) {
            not_restricted.push(format!("volume {name} is a {kind}"));
        }
    }
    let pod_sc = |k: &str| spec.get("securityContext").and_then(|s| s.get(k)).cloned();
    for c in pod.all_containers() {
        let name = str_at(c, &["name"]).unwrap_or("?");
        let sc = |k: &str| c.get("securityContext").and_then(|s| s.get(k)).cloned();
        let eff = |k: &str| sc(k).or_else(|| pod_sc(k));
        if sc("privileged").and_then(|v| v.as_bool()) == Some(true) {
            not_baseline.push(format!("{name} is privileged"));
        }
        for p in seq(c.get("ports")) {
            if p.get("hostPort").is_some() {
                not_baseline.push(format!("{name} uses a hostPort"));
            }
        }
        let caps = |k: &str| -> Vec<String> {
            seq(c
                .get("securityContext")
                .and_then(|s| s.get("capabilities"))
                .and_then(|c| c.get(k)))
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect()
        };
        for cap in caps("add") {
            if !BASELINE_CAPS.contains(&cap.as_str()) {
                not_baseline.push(format!("{name} adds {cap}"));
            } else if cap != "NET_BIND_SERVICE" {
                not_restricted.push(format!("{name} adds {cap}"));
            }
        }
        if !caps("drop").iter().any(|c| c == "ALL") {
            not_restricted.push(format!("{name} does not drop ALL capabilities"));
        }
        if sc("allowPrivilegeEscalation").and_then(|v| v.as_bool()) != Some(false) {
            not_restricted.push(format!(
                "{name} may gain privileges (allowPrivilegeEscalation)"
            ));
        }
        if eff("runAsNonRoot").and_then(|v| v.as_bool()) != Some(true) {
            not_restricted.push(format!("{name} may run as root (runAsNonRoot)"));
        }
        if eff("runAsUser").and_then(|v| v.as_u64()) == Some(0) {
            not_restricted.push(format!("{name} runs as root (runAsUser 0)"));
        }
        let seccomp = eff("seccompProfile")
            .and_then(|s| s.get("type").and_then(Value::as_str).map(str::to_string));
        match seccomp.as_deref() {
            Some("Unconfined") => not_baseline.push(format!("{name} is seccomp Unconfined")),
            Some("RuntimeDefault" | "Localhost") => {}
            _ => not_restricted.push(format!("{name} sets no seccomp profile")),
        }
    }
    if !not_baseline.is_empty() {
        ("privileged", not_baseline)
    } else if !not_restricted.is_empty() {
        ("baseline", not_restricted)
    } else {
        ("restricted", Vec::new())
    }
}
