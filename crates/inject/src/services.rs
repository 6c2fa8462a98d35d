//! Services: after every workload is injected, a Service in the input that
//! selects an inbound proxy's pods and sends TCP traffic straight to the
//! app port is retargeted to the proxy's listen port (a note says so); a
//! warning says when no Service in the input reaches the proxy.

use serde_norway::{Mapping, Value};

use crate::containers::PROXY_PORT_NAME;
use crate::documents::{At, Doc, object_mut, same_namespace, what};
use crate::notes::{Level, Note};
use crate::template::{PROXY_NAME, app_containers};
use crate::value::{key, kind_of, scalar_text, str_at};

/// An inbound proxy in front of an app port, for the Services that select
/// the workload.
#[derive(Debug, Default)]
pub(crate) struct Route {
    /// The workload's document, as in [`Note`].
    pub(crate) index: usize,
    pub(crate) what: String,
    namespace: Option<String>,
    labels: Mapping,
    app_port: u16,
    /// The names the app's containers give `app_port`.
    app_port_names: Vec<String>,
    listen: u16,
}

impl Route {
    /// The route of the pod `template` (in `namespace`) from `listen` to `app_port`.
    pub(crate) fn new(
        template: &Value,
        namespace: Option<String>,
        listen: u16,
        app_port: u16,
    ) -> Route {
        Route {
            namespace,
            labels: template
                .get("metadata")
                .and_then(|m| m.get("labels"))
                .and_then(Value::as_mapping)
                .cloned()
                .unwrap_or_default(),
            app_port,
            app_port_names: app_port_names(template, app_port),
            listen,
            ..Route::default()
        }
    }
}

/// The names the app's containers give `port`.
fn app_port_names(template: &Value, port: u16) -> Vec<String> {
    app_containers(template)
        .filter_map(|c| c.get("ports").and_then(Value::as_sequence))
        .flatten()
        .filter(|p| p.get("containerPort").and_then(Value::as_u64) == Some(u64::from(port)))
        .filter_map(|p| p.get("name").and_then(Value::as_str).map(str::to_string))
        .collect()
}

/// Points the input's Services that send an inbound proxy's traffic
/// straight to the app at the proxy instead; warns when none reaches it.
pub(crate) fn retarget_services(
    docs: &mut [Doc],
    all: &[At],
    route: &Route,
    notes: &mut Vec<Note>,
) {
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
                changed.push(format!("port {port} (was {})", scalar_text(&target)));
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
