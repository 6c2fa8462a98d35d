//! What the input's `sidecar.dev/proxy` ConfigMaps say about ports: the
//! proxy's admin port and its listeners, for the probes and the port checks.

use serde_norway::Value;

use crate::documents::{At, Doc, object, same_namespace};
use crate::value::{kind_of, parse_port, str_at};

/// What a `sidecar.dev/proxy` ConfigMap in the input says about ports.
#[derive(Debug, Clone, Default)]
pub(crate) struct ProxyConfig {
    namespace: Option<String>,
    name: String,
    /// `admin:` absent: None; `admin: off`: Some(None).
    pub(crate) admin: Option<Option<u16>>,
    /// (listener name, port).
    pub(crate) listeners: Vec<(String, u16)>,
}

impl ProxyConfig {
    /// The configuration of ConfigMap `name` for a workload in `namespace`
    /// (an empty one when the input does not have it).
    pub(crate) fn find(
        configs: &[ProxyConfig],
        name: &str,
        namespace: Option<&str>,
    ) -> ProxyConfig {
        configs
            .iter()
            .find(|c| c.name == *name && same_namespace(c.namespace.as_deref(), namespace))
            .cloned()
            .unwrap_or_default()
    }
}

fn port_of_addr(addr: &str) -> Option<u16> {
    addr.rsplit_once(':').and_then(|(_, p)| parse_port(p))
}

/// The proxy configurations (`data: {proxy.yaml: ...}`) of the input's ConfigMaps.
pub(crate) fn proxy_configs(docs: &[Doc], all: &[At]) -> Vec<ProxyConfig> {
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
