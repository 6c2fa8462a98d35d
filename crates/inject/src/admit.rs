//! One object as the `sidecar injector` webhook receives it (JSON, from an
//! AdmissionReview): the Namespace's `sidecar.dev/*` defaults merged into
//! the pod template's annotations (the template's own win, key by key), the
//! opt-out checked, then the same [`workload::inject_object`] as
//! [`inject`](crate::inject). JSON and YAML values convert through serde.

use std::collections::BTreeMap;

use serde_norway::{Mapping, Value};

use crate::annotations::{INJECT, PROXY_INBOUND};
use crate::containers::Options;
use crate::documents::InjectError;
use crate::notes::Level;
use crate::template::template_path;
use crate::value::{key, kind_of, mapping_at};
use crate::workload;

/// Why [`admit`] left an object alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// Not a kind with a pod template (or no pod template).
    NotAWorkload,
    /// Neither the pod template nor the Namespace asks for a sidecar.
    NotAsked,
    /// `sidecar.dev/inject: "false"` as a label or an annotation, or in the
    /// Namespace's annotations.
    OptedOut,
}

/// What [`admit`] made of one object.
#[derive(Debug, Clone, PartialEq)]
pub enum Admitted {
    /// The object with the sidecars (it may equal the input: injected before).
    Injected {
        object: serde_json::Value,
        notes: Vec<(Level, String)>,
    },
    /// Nothing to do; the notes say what may be wrong (misplaced annotations).
    Skipped {
        reason: Skip,
        notes: Vec<(Level, String)>,
    },
}

/// Whether `sidecar.dev/inject` is `"false"` in this mapping (labels or annotations).
fn opted_out(v: &Value, field: &str) -> bool {
    v.get("metadata")
        .and_then(|m| m.get(field))
        .and_then(|m| m.get(INJECT))
        .and_then(Value::as_str)
        .is_some_and(|s| s.trim().eq_ignore_ascii_case("false"))
}

/// Injects into one object (`kind` Pod, Deployment, StatefulSet, DaemonSet,
/// ReplicaSet, Job or CronJob) as `sidecar inject` would, after merging
/// `namespace_defaults` (the Namespace's annotations; only `sidecar.dev/*`
/// keys but `sidecar.dev/inject` are used) into its pod template's
/// annotations. `sidecar.dev/inject: "false"` in `namespace_defaults` opts
/// the whole namespace out: the object's own annotations do not override
/// it. An object `inject` refuses gives its error.
pub fn admit(
    object: &serde_json::Value,
    namespace_defaults: &BTreeMap<String, String>,
    opts: &Options,
) -> Result<Admitted, InjectError> {
    let error = |message: String| InjectError {
        index: 1,
        what: format!(
            "{} {}",
            object
                .get("kind")
                .and_then(serde_json::Value::as_str)
                .unwrap_or("object"),
            object
                .pointer("/metadata/name")
                .or_else(|| object.pointer("/metadata/generateName"))
                .and_then(serde_json::Value::as_str)
                .unwrap_or("?")
        ),
        message,
    };
    let skip = |reason| {
        Ok(Admitted::Skipped {
            reason,
            notes: Vec::new(),
        })
    };
    let mut obj: Value = serde_norway::to_value(object)
        .map_err(|e| error(format!("cannot read the object: {e}")))?;
    let Some(path) = kind_of(&obj).and_then(template_path) else {
        return skip(Skip::NotAWorkload);
    };
    let Some(template) = path.iter().try_fold(&obj, |v, p| v.get(*p)) else {
        return skip(Skip::NotAWorkload);
    };
    if !template.is_mapping() {
        return skip(Skip::NotAWorkload);
    }
    if [&obj, template]
        .iter()
        .any(|v| opted_out(v, "labels") || opted_out(v, "annotations"))
    {
        return skip(Skip::OptedOut);
    }
    if namespace_defaults
        .get(INJECT)
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("false"))
    {
        return skip(Skip::OptedOut);
    }
    let defaults: Vec<(&String, &String)> = namespace_defaults
        .iter()
        .filter(|(k, _)| k.starts_with("sidecar.dev/") && k.as_str() != INJECT)
        .collect();
    if !defaults.is_empty() {
        let Some(template) = path.iter().try_fold(&mut obj, |v, p| v.get_mut(*p)) else {
            return skip(Skip::NotAWorkload);
        };
        let annotations: &mut Mapping =
            mapping_at(template, &["metadata", "annotations"]).map_err(&error)?;
        for (k, v) in defaults {
            annotations
                .entry(key(k))
                .or_insert_with(|| Value::String(v.clone()));
        }
    }
    let out = workload::inject_object(&mut obj, opts, &[]).map_err(error)?;
    if !out.changed {
        return Ok(Admitted::Skipped {
            reason: Skip::NotAsked,
            notes: out.notes,
        });
    }
    let mut notes = out.notes;
    if out.route.is_some() {
        notes.push((
            Level::Note,
            format!(
                "the inbound proxy listens on the LISTEN_PORT of {PROXY_INBOUND}; the webhook does not change Services, so make the Service target that port"
            ),
        ));
    }
    let object = serde_json::to_value(&obj)
        .map_err(|e| error(format!("cannot write the injected object: {e}")))?;
    Ok(Admitted::Injected { object, notes })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::test_options;
    use serde_json::json;

    fn pod(annotations: serde_json::Value, labels: serde_json::Value) -> serde_json::Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"generateName": "web-", "annotations": annotations, "labels": labels},
            "spec": {"containers": [{"name": "app", "image": "app:1"}]}
        })
    }

    fn injected(a: Admitted) -> serde_json::Value {
        match a {
            Admitted::Injected { object, .. } => object,
            other => panic!("not injected: {other:?}"),
        }
    }

    #[test]
    fn same_result_as_inject_on_yaml() {
        let p = pod(json!({"sidecar.dev/logs": "/logs/app.log"}), json!({}));
        let out = injected(admit(&p, &BTreeMap::new(), &test_options()).unwrap());
        let yaml = serde_norway::to_string(&p).unwrap();
        let via_yaml: Value =
            serde_norway::from_str(&crate::inject(&yaml, &test_options()).unwrap().yaml).unwrap();
        assert_eq!(serde_json::to_value(&via_yaml).unwrap(), out);
        // Twice: the same object.
        assert_eq!(
            injected(admit(&out, &BTreeMap::new(), &test_options()).unwrap()),
            out
        );
    }

    #[test]
    fn namespace_defaults_merge_and_the_pod_wins() {
        let ns: BTreeMap<String, String> = [
            ("sidecar.dev/logs", "/ns/a.log"),
            ("sidecar.dev/zipkin", "http://z:9411/api/v2/spans"),
            ("sidecar.dev/inject", "true"),
            ("other/x", "y"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let out = injected(admit(&pod(json!({}), json!({})), &ns, &test_options()).unwrap());
        let ann = &out["metadata"]["annotations"];
        assert_eq!(ann["sidecar.dev/logs"], "/ns/a.log");
        assert!(ann.get("other/x").is_none() && ann.get("sidecar.dev/inject").is_none());
        let own = pod(json!({"sidecar.dev/logs": "/own/b.log"}), json!({}));
        let out = injected(admit(&own, &ns, &test_options()).unwrap());
        assert_eq!(
            out["metadata"]["annotations"]["sidecar.dev/logs"],
            "/own/b.log"
        );
    }

    #[test]
    fn a_controller_pod_is_named_after_its_controller_in_spans() {
        let inbound = json!({"sidecar.dev/proxy-inbound": "8000:8080"});
        let service = |metadata: serde_json::Value| {
            let mut p = pod(inbound.clone(), json!({}));
            p["metadata"] = metadata;
            let out = injected(admit(&p, &BTreeMap::new(), &test_options()).unwrap());
            let args = out["spec"]["initContainers"][0]["args"].to_string();
            args.split("--service=")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap()
                .to_string()
        };
        let ann = inbound.clone();
        assert_eq!(
            service(json!({"generateName": "web-5d8f7c9b6-", "annotations": ann,
                           "labels": {"pod-template-hash": "5d8f7c9b6"}})),
            "web"
        );
        assert_eq!(
            service(json!({"generateName": "nightly-", "annotations": ann})),
            "nightly"
        );
        assert_eq!(
            service(json!({"name": "db-0", "generateName": "db-", "annotations": ann})),
            "db-0"
        );
        assert_eq!(service(json!({"annotations": ann})), "app");
    }

    #[test]
    fn skips() {
        let opts = test_options();
        let none = BTreeMap::new();
        let logs = json!({"sidecar.dev/logs": "/logs/a.log"});
        let cases = [
            (pod(json!({}), json!({})), Skip::NotAsked),
            (
                pod(logs.clone(), json!({"sidecar.dev/inject": "false"})),
                Skip::OptedOut,
            ),
            (
                pod(
                    json!({"sidecar.dev/logs": "/logs/a.log", "sidecar.dev/inject": "False"}),
                    json!({}),
                ),
                Skip::OptedOut,
            ),
            (
                json!({"kind": "Service", "metadata": {}}),
                Skip::NotAWorkload,
            ),
            (
                json!({"kind": "Deployment", "spec": {}}),
                Skip::NotAWorkload,
            ),
        ];
        for (obj, reason) in cases {
            match admit(&obj, &none, &opts).unwrap() {
                Admitted::Skipped { reason: r, .. } => assert_eq!(r, reason, "{obj}"),
                other => panic!("{obj}: {other:?}"),
            }
        }
        let bad = pod(
            json!({"sidecar.dev/logs-admin-port": "x", "sidecar.dev/logs": "/a"}),
            json!({}),
        );
        let err = admit(&bad, &none, &opts).unwrap_err();
        assert!(err.message.contains("logs-admin-port"), "{err}");
        assert_eq!(err.what, "Pod web-");
    }

    #[test]
    fn a_namespace_opted_out_wins_over_the_pods_own_annotations() {
        let opts = test_options();
        let ns = |v: &str| -> BTreeMap<String, String> {
            [
                ("sidecar.dev/inject", v),
                ("sidecar.dev/zipkin", "http://z:9411"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
        };
        let own = json!({"sidecar.dev/logs": "/logs/a.log", "sidecar.dev/inject": "true"});
        for value in ["false", " False "] {
            match admit(&pod(own.clone(), json!({})), &ns(value), &opts).unwrap() {
                Admitted::Skipped { reason, .. } => assert_eq!(reason, Skip::OptedOut),
                other => panic!("{value}: {other:?}"),
            }
        }
        // Any other value is not an opt-out, and is not merged into the Pod.
        let out = injected(admit(&pod(own.clone(), json!({})), &ns("true"), &opts).unwrap());
        assert_eq!(out["metadata"]["annotations"]["sidecar.dev/inject"], "true");
        let out = injected(
            admit(
                &pod(json!({"sidecar.dev/logs": "/logs/a.log"}), json!({})),
                &ns("yes"),
                &opts,
            )
            .unwrap(),
        );
        assert!(
            out["metadata"]["annotations"]
                .get("sidecar.dev/inject")
                .is_none()
        );
    }
}
