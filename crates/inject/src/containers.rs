//! The containers we add, as native sidecars: what all of them carry
//! ([`base_container`]: image, probes on the admin port, restricted security
//! context, resources), and each one's ports (named for Prometheus), env
//! and mounts.

use serde_norway::{Mapping, Value};
use sidecar_telemetry::ports;

use crate::template::{EXPORTER_NAME, LOGS_NAME, PROXY_NAME};
use crate::value::{key, yaml};
use crate::volumes::{PROXY_DIR, PROXY_VOLUME, RelayMount, STATE_VOLUME};

/// The name of the inbound proxy's listen port.
pub(crate) const PROXY_PORT_NAME: &str = "proxy";

/// What `inject` needs besides the documents.
#[derive(Debug, Clone)]
pub struct Options {
    /// The sidecar image, e.g. `sidecar:0.1.0`.
    pub image: String,
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

pub(crate) fn exporter_container(
    opts: &Options,
    args: Vec<String>,
    secret: &str,
    port: u16,
) -> Value {
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

/// A proxy: with a listen port (inbound) or its ConfigMap mounted (`config`).
pub(crate) fn proxy_container(
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

/// The relay: the log directories read-only, its checkpoint at `state_dir`.
pub(crate) fn logs_container(
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
