//! One AdmissionReview: read the request, find the Namespace's defaults,
//! run `sidecar_inject::admit`, answer with a JSONPatch (RFC 6902) from the
//! object as sent to the injected one. Every answer allows the object: a
//! request we cannot read or an object `inject` refuses gets a warning,
//! never an error status, so the webhook cannot stop Pods from starting.

use std::time::Instant;

use base64::Engine;
use serde_json::{Value, json};
use sidecar_inject::{Admitted, Level, Options, Skip, admit};

use crate::metrics::{Metrics, Outcome};
use crate::namespaces::Namespaces;

pub const API_VERSION: &str = "admission.k8s.io/v1";
/// Warnings longer than this are cut: the API server may truncate those
/// over 256 characters (it shows them to kubectl).
const MAX_WARNING: usize = 240;
/// At most this many warnings per answer (the last says how many were left out).
const MAX_WARNINGS: usize = 8;
/// Objects with more JSON values than this are admitted without sidecars:
/// a review takes a few hundred bytes per value while it runs, and no Pod
/// that can start needs as many (exec's limit on a container's arguments
/// and environment is about 2 MiB).
pub(crate) const MAX_VALUES: usize = 200_000;

/// About how many JSON values the JSON text `raw` holds, counting no
/// further than `limit`: one, plus one per `,` `[` `{` outside strings (an
/// upper bound), read before anything is built from it.
fn values(raw: &str, limit: usize) -> usize {
    let mut count = 1;
    let mut in_string = false;
    let mut escaped = false;
    for b in raw.bytes() {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b',' | b'[' | b'{' => {
                count += 1;
                if count > limit {
                    break;
                }
            }
            _ => {}
        }
    }
    count
}

/// The parts of an AdmissionReview the injector reads; the rest (the
/// `oldObject` of an update, ...) is skipped without being built, and the
/// object is kept as text until its size is known.
#[derive(serde::Deserialize)]
struct ReviewIn<'a> {
    #[serde(rename = "apiVersion")]
    api_version: Option<String>,
    kind: Option<String>,
    #[serde(borrow)]
    request: Option<RequestIn<'a>>,
}

#[derive(serde::Deserialize)]
struct RequestIn<'a> {
    uid: Option<String>,
    operation: Option<String>,
    #[serde(rename = "subResource")]
    sub_resource: Option<String>,
    namespace: Option<String>,
    #[serde(rename = "dryRun")]
    dry_run: Option<bool>,
    #[serde(borrow)]
    object: Option<&'a serde_json::value::RawValue>,
}

/// What a review decided, for the metrics and the tests.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) outcome: Outcome,
    /// The AdmissionReview to send back.
    pub(crate) body: Value,
}

/// Answers reviews.
pub(crate) struct Reviewer {
    pub(crate) opts: Options,
    pub(crate) namespaces: Namespaces,
    pub(crate) metrics: Metrics,
}

/// One line, prefixed, at most [`MAX_WARNING`] characters.
fn warning(text: &str) -> String {
    let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut w = format!("sidecar-injector: {one_line}");
    if w.chars().count() > MAX_WARNING {
        w = w.chars().take(MAX_WARNING - 3).collect::<String>() + "...";
    }
    w
}

/// The JSONPatch from `from` to `to`, base64-encoded, or nothing when they are equal.
pub(crate) fn patch(from: &Value, to: &Value) -> Option<String> {
    let ops = json_patch::diff(from, to);
    if ops.0.is_empty() {
        return None;
    }
    let bytes = serde_json::to_vec(&ops).ok()?;
    Some(base64::engine::general_purpose::STANDARD.encode(bytes))
}

fn response(uid: &str, patch: Option<String>, warnings: Vec<String>) -> Value {
    let mut r = json!({"uid": uid, "allowed": true});
    if let Some(p) = patch {
        r["patchType"] = json!("JSONPatch");
        r["patch"] = json!(p);
    }
    if !warnings.is_empty() {
        let mut warnings = warnings;
        if warnings.len() > MAX_WARNINGS {
            let left = warnings.len() - (MAX_WARNINGS - 1);
            warnings.truncate(MAX_WARNINGS - 1);
            warnings.push(warning(&format!(
                "{left} more warnings; run `sidecar inject` on the object to see them all"
            )));
        }
        r["warnings"] = json!(warnings);
    }
    json!({"apiVersion": API_VERSION, "kind": "AdmissionReview", "response": r})
}

/// A request we cannot read: allowed, with a warning saying why.
pub(crate) fn malformed(uid: &str, why: &str) -> Answer {
    Answer {
        outcome: Outcome::Malformed,
        body: response(
            uid,
            None,
            vec![warning(&format!(
                "cannot read the AdmissionReview ({why}); the object is admitted without sidecars"
            ))],
        ),
    }
}

impl Reviewer {
    /// Answers one request body, and counts it.
    /// `working` is the budget of bodies being worked on, of which this
    /// one takes `weight` once its Namespace has been read (a slow lookup
    /// holds no share of it).
    pub(crate) async fn review(
        &self,
        body: &[u8],
        started: Instant,
        working: &tokio::sync::Semaphore,
        weight: u32,
    ) -> Answer {
        let answer = self.decide(body, working, weight).await;
        self.metrics.count(answer.outcome);
        self.metrics
            .duration
            .observe(started.elapsed().as_secs_f64());
        answer
    }

    /// Counts an answer made without [`Reviewer::review`] (a body that
    /// could not be read), with its time since `started`.
    pub(crate) fn count(&self, answer: Answer, started: Instant) -> Answer {
        self.metrics.count(answer.outcome);
        self.metrics
            .duration
            .observe(started.elapsed().as_secs_f64());
        answer
    }

    async fn decide(&self, body: &[u8], working: &tokio::sync::Semaphore, weight: u32) -> Answer {
        let review: ReviewIn = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => {
                return malformed(
                    "",
                    &format!("the body is not JSON, or not an AdmissionReview's: {e}"),
                );
            }
        };
        let uid = review
            .request
            .as_ref()
            .and_then(|r| r.uid.clone())
            .unwrap_or_default();
        let (api_version, kind) = (review.api_version.as_deref(), review.kind.as_deref());
        if api_version != Some(API_VERSION) || kind != Some("AdmissionReview") {
            return malformed(
                &uid,
                &format!(
                    "expected apiVersion {API_VERSION} and kind AdmissionReview, got {} and {}",
                    api_version.unwrap_or("none"),
                    kind.unwrap_or("none")
                ),
            );
        }
        let Some(request) = review.request else {
            return malformed(&uid, "no `request`");
        };
        if uid.is_empty() {
            return malformed(&uid, "no `request.uid`");
        }
        let Some(raw) = request
            .object
            .filter(|o| o.get().trim_start().starts_with('{'))
        else {
            return malformed(&uid, "no `request.object`");
        };
        // Only a creation can take sidecars: an object that exists cannot
        // have its containers changed (the API server would refuse the
        // update), and a subresource (binding, status) is not the object.
        let subresource = request.sub_resource.as_deref().filter(|s| !s.is_empty());
        if request.operation.as_deref().is_some_and(|o| o != "CREATE") || subresource.is_some() {
            return self.skipped(&uid, Skip::NotAWorkload, Vec::new());
        }
        let dry_run = request.dry_run == Some(true);
        let namespace = request.namespace.as_deref();
        let looked_up = self.namespaces.defaults(namespace).await;
        let Ok(_working) = working.acquire_many(weight).await else {
            return malformed(&uid, "the injector is stopping");
        };
        if values(raw.get(), MAX_VALUES) > MAX_VALUES {
            return Answer {
                outcome: Outcome::Error,
                body: response(
                    &uid,
                    None,
                    vec![warning(&format!(
                        "no sidecars added, the Pod starts without them: the object holds more than {MAX_VALUES} JSON values, too many to inject into"
                    ))],
                ),
            };
        }
        let object: Value = match serde_json::from_str(raw.get()) {
            Ok(o) => o,
            Err(e) => return malformed(&uid, &format!("`request.object` does not read: {e}")),
        };
        let object = &object;
        let opts = &self.opts;
        let none = std::collections::BTreeMap::new();
        // When the Namespace cannot be read, the Pod's own annotations
        // still count: `unavailable` says why its defaults are missing.
        let (admitted, unavailable) = match looked_up {
            Ok(defaults) => (admit(object, &defaults, opts), None),
            Err(e) => match admit(object, &none, opts) {
                Ok(Admitted::Skipped {
                    reason: reason @ (Skip::OptedOut | Skip::NotAWorkload),
                    ..
                }) => return self.skipped(&uid, reason, Vec::new()),
                injected @ Ok(Admitted::Injected { .. }) => (injected, Some(e)),
                not_injected => {
                    let mut warnings = vec![warning(&format!(
                        "no sidecars added: {e}; the sidecar.dev/* defaults of the Namespace are needed to decide"
                    ))];
                    if let Err(refused) = not_injected {
                        warnings.push(warning(&refused.message));
                    }
                    return Answer {
                        outcome: Outcome::NamespaceUnavailable,
                        body: response(&uid, None, warnings),
                    };
                }
            },
        };
        let warnings = |notes: Vec<(Level, String)>| -> Vec<String> {
            let missing = unavailable.iter().map(|e| {
                warning(&format!(
                    "{e}; only the Pod's own sidecar.dev/* annotations were used, not the Namespace's defaults"
                ))
            });
            missing
                .chain(notes.iter().map(|(_, m)| warning(m)))
                .collect()
        };
        let outcome = |injected| match (&unavailable, dry_run) {
            (Some(_), _) => Outcome::NamespaceUnavailable,
            (None, true) if injected => Outcome::DryRun,
            (None, _) if injected => Outcome::Injected,
            (None, _) => Outcome::AlreadyInjected,
        };
        match admitted {
            Ok(Admitted::Injected {
                object: after,
                notes,
            }) => match patch(object, &after) {
                Some(p) => Answer {
                    outcome: outcome(true),
                    body: response(&uid, Some(p), warnings(notes)),
                },
                None => Answer {
                    outcome: outcome(false),
                    body: response(&uid, None, warnings(notes)),
                },
            },
            Ok(Admitted::Skipped { reason, notes }) => self.skipped(&uid, reason, warnings(notes)),
            Err(e) => Answer {
                outcome: Outcome::Error,
                body: response(
                    &uid,
                    None,
                    vec![warning(&format!(
                        "no sidecars added, the Pod starts without them: {}",
                        e.message
                    ))],
                ),
            },
        }
    }

    fn skipped(&self, uid: &str, reason: Skip, warnings: Vec<String>) -> Answer {
        Answer {
            outcome: match reason {
                Skip::OptedOut => Outcome::OptedOut,
                Skip::NotAWorkload | Skip::NotAsked => Outcome::Skipped,
            },
            body: response(uid, None, warnings),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn patches_escape_keys_and_apply_to_missing_fields() {
        let from = json!({"metadata": {}});
        let to = json!({"metadata": {"annotations": {"sidecar.dev/logs": "/a", "a~b": "c"}}});
        let p = patch(&from, &to).unwrap();
        let ops: Value =
            serde_json::from_slice(&base64::engine::general_purpose::STANDARD.decode(p).unwrap())
                .unwrap();
        let mut applied = from.clone();
        let ops: json_patch::Patch = serde_json::from_value(ops).unwrap();
        json_patch::patch(&mut applied, &ops).unwrap();
        assert_eq!(applied, to);
        assert_eq!(patch(&to, &to), None);
    }

    #[test]
    fn values_are_counted_up_to_the_limit_outside_strings() {
        let v = r#"{"a": [1, 2, {"b": null}], "c": "d,[{\\\",x"}"#;
        assert_eq!(values(v, 100), 7);
        assert_eq!(values(v, 3), 4);
        assert_eq!(values("{}", 100), 2);
    }

    #[test]
    fn warnings_are_one_short_line() {
        let w = warning(&format!("a\nb {}", "x".repeat(400)));
        assert!(w.starts_with("sidecar-injector: a b x"));
        assert_eq!(w.chars().count(), MAX_WARNING);
    }
}
