//! `sidecar inject`: adds the sidecars to Kubernetes workloads whose pod
//! template asks for them with `sidecar.dev/*` annotations.
//!
//! Data flow ([`inject`]): `documents` splits the input into YAML documents
//! (on `---` lines) and parses each; the items of a `kind: List` (as
//! `kubectl get -o yaml` writes it) count as objects of their own.
//! `proxy_config` reads the input's proxy ConfigMaps. For every object,
//! `workload` finds the pod template (Pod, Deployment, StatefulSet,
//! DaemonSet, ReplicaSet, Job, CronJob), reads its annotations
//! (`annotations`), builds native sidecars (init containers with
//! `restartPolicy: Always`, `containers`), checks the ports they take
//! against the ones the app declares (`ports`), adds volumes and mounts
//! (`volumes`) and, unless the pod has its own, `prometheus.io/*`
//! annotations. Then `services` retargets a Service in the input that sends
//! an inbound proxy's traffic straight to the app. A changed document is
//! written back by the YAML library; every other document is copied
//! through byte for byte (comments included). Injecting twice gives the
//! same output as injecting once. What the user should know (a Service
//! changed, annotations in the wrong place, an `emptyDir` that hides the
//! image's files) comes back as [`Note`]s for stderr.
//!
//! [`admit`] is the same for one object given as JSON (the `sidecar
//! injector` webhook): it merges a Namespace's `sidecar.dev/*` defaults into
//! the pod template's annotations and calls the same `workload` code.
//!
//! Modules depend one way, helpers first: `value`, `template`, `notes` ←
//! `documents`, `annotations` ← `volumes`, `ports`, `proxy_config` ←
//! `containers` ← `services` ← `workload` ← `admit`, this file.

#![forbid(unsafe_code)]

mod admit;
mod annotations;
mod containers;
mod documents;
mod notes;
mod ports;
mod proxy_config;
mod services;
mod template;
mod value;
mod volumes;
mod workload;

pub use admit::{Admitted, Skip, admit};
pub use annotations::{
    EXPORTER, EXPORTER_ADMIN_PORT, INJECT, LOGS, LOGS_ADMIN_PORT, PROXY, PROXY_ADMIN_PORT,
    PROXY_INBOUND, ZIPKIN,
};
pub use containers::Options;
pub use documents::InjectError;
pub use notes::{Level, Note};

/// The injected YAML, and what the user should be told on stderr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Injected {
    pub yaml: String,
    /// In document order.
    pub notes: Vec<Note>,
}

/// Injects into every annotated workload of `input` (multi-document YAML).
pub fn inject(input: &str, opts: &Options) -> Result<Injected, InjectError> {
    let mut docs = documents::parse(input)?;
    let all = documents::addresses(&docs);
    let configs = proxy_config::proxy_configs(&docs, &all);
    let mut notes = Vec::new();
    let mut routes = Vec::new();
    for &at in &all {
        let (index, what) = (at.doc + 1, documents::what(&docs, at));
        let object = documents::object_mut(&mut docs, at);
        let out =
            workload::inject_object(object, opts, &configs).map_err(|message| InjectError {
                index,
                what: what.clone(),
                message,
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
        services::retarget_services(&mut docs, &all, route, &mut notes);
    }
    notes.sort_by_key(|n| n.index);
    let yaml = documents::write(&docs, input.len() * 2)?;
    Ok(Injected { yaml, notes })
}

#[cfg(test)]
fn test_options() -> Options {
    Options {
        image: "sidecar:test".into(),
    }
}
