//! Workloads for the injector's tests: every kind around a pod template,
//! and random ones from a small deterministic generator.
#![allow(dead_code, clippy::unwrap_used)]

use serde_json::{Value, json};

pub const KINDS: [&str; 7] = [
    "Pod",
    "Deployment",
    "StatefulSet",
    "DaemonSet",
    "ReplicaSet",
    "Job",
    "CronJob",
];

/// A pod template: an app on port 8080, with `annotations` (left out when null).
pub fn template(annotations: &Value, extra_spec: &Value) -> Value {
    let mut metadata = json!({"labels": {"app": "web"}});
    if !annotations.is_null() {
        metadata["annotations"] = annotations.clone();
    }
    let mut spec = json!({"containers": [{
        "name": "app", "image": "app:1",
        "ports": [{"containerPort": 8080, "name": "http"}]
    }]});
    for (k, v) in extra_spec.as_object().into_iter().flatten() {
        spec[k] = v.clone();
    }
    json!({"metadata": metadata, "spec": spec})
}

/// A workload of `kind` around `template`.
pub fn workload(kind: &str, mut template: Value) -> Value {
    let meta = json!({"name": "web", "namespace": "apps"});
    match kind {
        "Pod" => {
            let mut m = template["metadata"].clone();
            m["name"] = json!("web");
            m["namespace"] = json!("apps");
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": m, "spec": template["spec"]})
        }
        "Job" | "CronJob" => {
            template["spec"]["restartPolicy"] = json!("Never");
            let job = json!({"template": template});
            if kind == "Job" {
                json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": job})
            } else {
                json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": meta,
                       "spec": {"schedule": "*/5 * * * *", "jobTemplate": {"spec": job}}})
            }
        }
        _ => {
            let mut spec =
                json!({"selector": {"matchLabels": {"app": "web"}}, "template": template});
            if kind == "StatefulSet" {
                spec["serviceName"] = json!("web");
            }
            json!({"apiVersion": "apps/v1", "kind": kind, "metadata": meta, "spec": spec})
        }
    }
}

/// A small deterministic generator (xorshift), so a failure names its seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    pub fn coin(&mut self) -> bool {
        self.below(2) == 0
    }
}

/// A random workload: any kind, any mix of annotations (some invalid, some
/// clashing with the app's ports), app containers with ports and volumes,
/// with or without the lists and maps injection adds to.
pub fn random_workload(rng: &mut Rng) -> Value {
    let mut ann = serde_json::Map::new();
    let choices: [(&str, &[&str]); 10] = [
        (
            "sidecar.dev/logs",
            &[
                "/var/log/app/app.log",
                "/data/log/*.log,/var/log/x.log",
                "/tmp/a.log",
            ],
        ),
        (
            "sidecar.dev/postgres-exporter",
            &["pg-secret", "Not_A_Name"],
        ),
        ("sidecar.dev/proxy", &["web-proxy"]),
        (
            "sidecar.dev/proxy-inbound",
            &["8000:8080", "9000:8081", "8080:8080", "80"],
        ),
        ("sidecar.dev/zipkin", &["http://z:9411/api/v2/spans"]),
        ("sidecar.dev/logs-admin-port", &["9470", "8080", "x"]),
        (
            "sidecar.dev/postgres-exporter-admin-port",
            &["9190", "9464"],
        ),
        ("sidecar.dev/proxy-admin-port", &["9910"]),
        ("prometheus.io/scrape", &["false"]),
        ("team.io/owner~x", &["a/b"]),
    ];
    for (k, values) in choices {
        if rng.below(3) == 0 {
            ann.insert(k.to_string(), json!(rng.pick(values)));
        }
    }
    if !ann
        .keys()
        .any(|k| k.starts_with("sidecar.dev/") && !k.contains("port") && !k.contains("zipkin"))
    {
        ann.insert("sidecar.dev/logs".into(), json!("/var/log/app/app.log"));
    }
    let ports = [8080, 8081, 8000, 9464, 9187, 9901, 5432];
    let mut containers = Vec::new();
    for i in 0..1 + rng.below(2) {
        let mut c = json!({"name": format!("app{i}"), "image": "app:1"});
        if rng.coin() {
            c["ports"] = json!([{"containerPort": rng.pick(&ports)}]);
        }
        if rng.coin() {
            c["volumeMounts"] =
                json!([{"name": "data", "mountPath": rng.pick(&["/data", "/var/log", "/srv"])}]);
        }
        containers.push(c);
    }
    let mut spec = json!({"containers": containers});
    if rng.coin() || spec.to_string().contains("\"data\"") {
        spec["volumes"] = json!([{"name": "data", "emptyDir": {}}]);
    }
    if rng.coin() {
        spec["initContainers"] = json!([{"name": "migrate", "image": "busybox"}]);
    }
    let mut t = template(&Value::Object(ann), &json!({}));
    t["spec"] = spec;
    if rng.below(4) == 0 {
        t["metadata"].as_object_mut().unwrap().remove("labels");
    }
    let kind = *rng.pick(&KINDS);
    workload(kind, t)
}
