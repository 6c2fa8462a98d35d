//! The Kubernetes manifests under deploy/: valid against the 1.33 schemas
//! (strict), our containers follow the rules, proxy configs parse.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use common::{cluster, kube};

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

/// Built-in kinds against the Kubernetes 1.33 schemas; the custom resources
/// (the injector's cert-manager Issuers and Certificates, which
/// kubernetes-validate has no schema for) against cert-manager's CRD schemas.
/// A file holds either kind of document, never both, so that no built-in
/// object skips kubernetes-validate.
#[test]
fn every_manifest_validates_strictly_against_kubernetes_1_33() {
    let files = manifests();
    assert!(files.len() >= 12, "{files:?}");
    let (mut builtin, mut custom) = (Vec::new(), Vec::new());
    for f in &files {
        let docs = kube::documents(&std::fs::read_to_string(f).unwrap());
        let n = docs.iter().filter(|d| kube::is_custom_resource(d)).count();
        match n {
            0 => builtin.push(f.as_path()),
            n if n == docs.len() => custom.push(f.as_path()),
            _ => panic!(
                "{}: custom resources and built-in kinds in one file",
                f.display()
            ),
        }
    }
    assert_eq!(
        custom,
        [deploy_root()
            .join("injector/cert-manager/certificates.yaml")
            .as_path()]
    );
    kube::validate(&builtin);
    kube::validate_crds(&custom);
}

/// The CRD check refuses what the API server would: an unknown field, a
/// missing required one, a value outside an enum, a field with CEL rules it
/// cannot evaluate, a kind it has no schema for.
#[test]
fn the_crd_schema_check_refuses_what_the_api_server_would() {
    let text =
        std::fs::read_to_string(deploy_root().join("injector/cert-manager/certificates.yaml"))
            .unwrap();
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "a misspelt field",
            "  secretName: sidecar-injector-tls",
            "  secretname: sidecar-injector-tls",
            "'secretName' is a required property",
        ),
        (
            "an unknown field",
            "  isCA: true",
            "  isCA: true\n  ca: true",
            "('ca' was unexpected)",
        ),
        (
            "a value outside the enum",
            "algorithm: ECDSA",
            "algorithm: EC",
            "'EC' is not one of",
        ),
        (
            "a field with CEL rules",
            "  selfSigned: {}",
            "  venafi: {zone: z, tpp: {url: \"https://v\", credentialsRef: {name: v}}}",
            "has CEL rules this check cannot evaluate",
        ),
        (
            "a kind without a schema",
            "kind: Issuer",
            "kind: ClusterIssuer",
            "no schema for cert-manager.io/v1/ClusterIssuer",
        ),
    ];
    for (what, from, to, expected) in cases {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("certificates.yaml");
        assert!(text.contains(from), "{what}: {from:?}");
        std::fs::write(&f, text.replacen(from, to, 1)).unwrap();
        let err = std::panic::catch_unwind(|| kube::validate_crds(&[f.as_path()]))
            .expect_err(what)
            .downcast::<String>()
            .unwrap();
        assert!(
            err.contains(expected),
            "{what}: expected {expected:?} in {err}"
        );
    }
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
    // logs relay, exporter, two service proxies, the front proxy, and the
    // injector (deploy/injector: not a sidecar, but our image, with the same
    // probes, limits, restricted context and scrape annotation).
    assert_eq!(checked, 6);
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

fn deploy_root() -> PathBuf {
    kube::deploy_root()
}

fn mutated(file: &str, from: &str, to: &str) -> tempfile::TempDir {
    kube::deploy_copy_with(file, from, to)
}

/// Runs the walk-through on the manifests under `root`; returns each step's problems.
fn walk_through(root: &Path) -> Vec<(String, Vec<String>)> {
    let mut cluster = cluster::Cluster::default();
    let mut out = Vec::new();
    for (step, dirs) in cluster::WALK_THROUGH {
        let mut problems = Vec::new();
        for d in *dirs {
            problems.extend(cluster.apply_dir(&root.join(d)));
        }
        problems.extend(cluster.problems());
        out.push((step.to_string(), problems));
    }
    out
}

fn report(steps: &[(String, Vec<String>)]) -> String {
    steps
        .iter()
        .filter(|(_, p)| !p.is_empty())
        .map(|(s, p)| format!("after {s}:\n  - {}", p.join("\n  - ")))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn every_step_of_the_walk_through_runs_as_a_cluster_would_run_it() {
    let steps = walk_through(&deploy_root());
    assert_eq!(steps.len(), cluster::WALK_THROUGH.len());
    let report = report(&steps);
    assert!(report.is_empty(), "{report}");
}

/// The checks catch each fault the manifests once had (issue 16); each
/// mutation puts one back.
#[test]
fn the_walk_through_check_catches_each_fault_the_manifests_once_had() {
    let cases: &[(&str, &str, &str, &str, &str)] = &[
        (
            "demo 3 before: service 1 without TARGET_HOST calls the image's default",
            "demo3/services.yaml",
            "            - name: TARGET_HOST\n              value: service2:8000\n",
            "",
            "TARGET_HOST = `service2:8080` (from the image's default): Service default/service2 has no port 8080",
        ),
        (
            "demo 3 after: service 1 calls service 2 directly, not through its proxy",
            "demo3/update/service1.yaml",
            "value: localhost:9000",
            "value: localhost:9001",
            "TARGET_HOST = `localhost:9001` (from the manifest): nothing in the Pod listens on port 9001",
        ),
        (
            "demo 3 before: the LoadBalancer targets the proxy's port, which only the update declares",
            "demo3/services.yaml",
            "      port: 8000\n      targetPort: 8080\n",
            "      port: 8000\n      targetPort: 8000\n",
            "Service default/service1 targets port 8000 that no container of the Pod of default/service1 declares",
        ),
        (
            "a Service names a port declared only on a native sidecar",
            "demo3/update/service2.yaml",
            "      port: 8000\n      targetPort: 8000\n",
            "      port: 8000\n      targetPort: proxy\n",
            "targets port name `proxy`, declared only on the native sidecar `proxy`",
        ),
        (
            "a proxy route to a Service port that does not exist",
            "demo3/update/service1.yaml",
            "upstream: service2:8000",
            "upstream: service2:8080",
            "upstream service2:8080: Service default/service2 has no port 8080",
        ),
        (
            "the exporter's database is not in its Pod",
            "demo2/update/exporter-credentials.yaml",
            "DATA_SOURCE_URI: localhost?sslmode=disable",
            "DATA_SOURCE_URI: localhost:5433?sslmode=disable",
            "database localhost:5433: nothing in the Pod listens on port 5433",
        ),
        (
            "Fluent Bit retries one bad chunk forever",
            "logging/fluent-bit.yaml",
            "Retry_Limit        10",
            "Retry_Limit        False",
            "an es output has no numeric Retry_Limit",
        ),
        (
            "merged app JSON collides with the output's @timestamp",
            "logging/fluent-bit.yaml",
            "        Merge_Log_Key       log_processed\n",
            "",
            "Merge_Log without Merge_Log_Key",
        ),
        (
            "a Pod its namespace's Pod Security level refuses",
            "tracing/jaeger.yaml",
            "            allowPrivilegeEscalation: false\n",
            "",
            "enforces Pod Security \"restricted\", which refuses it: jaeger may gain privileges",
        ),
        (
            "a LoadBalancer applied before what it selects",
            "demo1/widgetario.yaml",
            "  name: widgetario-web-lb\nspec:\n  type: LoadBalancer\n  selector:\n    app: web",
            "  name: widgetario-web-lb\nspec:\n  type: LoadBalancer\n  selector:\n    app: website",
            "Service default/widgetario-web-lb selects no Pod",
        ),
        (
            "an admin port Prometheus cannot find by name",
            "demo2/update/products-db.yaml",
            "- name: sidecar-pg",
            "- name: metrics",
            "its admin port (the probes' port, Some(9187)) must be declared once, named sidecar-pg",
        ),
        (
            "the relay reads a directory no app writes",
            "demo1/update/web.yaml",
            "\"/logs-ro/app.log\"",
            "\"/logs-state/app.log\"",
            "/logs-state/app.log is on volume logs-state, which no app container writes",
        ),
        (
            "the injector's Pod may run as root in a restricted namespace",
            "injector/injector.yaml",
            "        runAsNonRoot: true\n",
            "",
            "namespace sidecar-system enforces Pod Security \"restricted\", which refuses it: sidecar-injector may run as root",
        ),
        (
            "the injector's Service targets a port name its container does not declare",
            "injector/injector.yaml",
            "      targetPort: webhook",
            "      targetPort: https",
            "Service sidecar-system/sidecar-injector targets port https that no container",
        ),
        (
            "the injector's namespace applied after what it holds",
            "injector/01-namespace.yaml",
            "name: sidecar-system",
            "name: sidecar",
            "namespace \"sidecar-system\" not found",
        ),
    ];
    for (what, file, from, to, expected) in cases {
        let dir = mutated(file, from, to);
        let report = report(&walk_through(dir.path()));
        assert!(
            report.contains(expected),
            "{what}: expected a problem containing {expected:?}, got:\n{report}"
        );
    }
}

/// The Pod Security level each Pod of the walk-through meets, as the README
/// states it; the namespaces enforce theirs (setup/01-namespaces.yaml).
#[test]
fn pod_security_levels_are_the_ones_the_readme_states() {
    let mut cluster = cluster::Cluster::default();
    for (_, dirs) in &cluster::WALK_THROUGH[..6] {
        for d in *dirs {
            assert!(cluster.apply_dir(&deploy_root().join(d)).is_empty());
        }
    }
    let mut levels: Vec<(String, &str)> = cluster
        .pods()
        .iter()
        .map(|p| {
            (
                format!("{}/{}", p.ns, p.name),
                cluster::security::pod_security_level(p).0,
            )
        })
        .collect();
    levels.sort();
    let expected = [
        ("default/front-proxy", "restricted"),
        ("default/products-api", "baseline"),
        ("default/products-db", "baseline"),
        ("default/service1", "baseline"),
        ("default/service2", "baseline"),
        ("default/stock-api", "baseline"),
        ("default/web", "baseline"),
        ("logging/elasticsearch", "restricted"),
        ("logging/fluent-bit", "privileged"),
        ("logging/kibana", "restricted"),
        ("monitoring/prometheus", "restricted"),
        ("tracing/jaeger", "restricted"),
    ];
    let expected: Vec<(String, &str)> = expected.iter().map(|(p, l)| (p.to_string(), *l)).collect();
    assert_eq!(levels, expected);
}

/// A Pod for Prometheus: namespace, name, annotations, (port, port name).
type ScrapePod<'a> = (
    &'a str,
    &'a str,
    &'a [(&'a str, &'a str)],
    &'a [(u16, &'a str)],
);

/// What Prometheus would scrape with deploy/monitoring's config, as
/// `promtool check service-discovery` computes it (the real relabeling code),
/// for Pods given as (namespace, name, annotations, [(port, port name)]):
/// (job, address, metrics path) of each kept target, deduplicated per job as
/// Prometheus does.
fn scraped(pods: &[ScrapePod]) -> BTreeSet<(String, String, String)> {
    let root = deploy_root();
    let text = std::fs::read_to_string(root.join("monitoring/prometheus.yaml")).unwrap();
    let cm = kube::documents(&text)
        .into_iter()
        .find(|d| d.get("kind").and_then(|k| k.as_str()) == Some("ConfigMap"))
        .unwrap();
    let mut config: serde_norway::Value =
        serde_norway::from_str(cm["data"]["prometheus.yml"].as_str().unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let targets = dir.path().join("targets.json");
    let mut jobs = Vec::new();
    for job in config["scrape_configs"].as_sequence_mut().unwrap() {
        let sd = job.as_mapping_mut().unwrap();
        let k8s = sd.remove("kubernetes_sd_configs").unwrap();
        assert_eq!(k8s[0]["role"].as_str(), Some("pod"));
        sd.insert(
            "file_sd_configs".into(),
            serde_norway::from_str(&format!("[{{files: [{:?}]}}]", targets.display())).unwrap(),
        );
        jobs.push((
            job["job_name"].as_str().unwrap().to_string(),
            // A namespace list limits the job, as the kubernetes SD would.
            k8s[0]["namespaces"]["names"].as_sequence().map(|n| {
                n.iter()
                    .map(|n| n.as_str().unwrap().to_string())
                    .collect::<Vec<_>>()
            }),
        ));
    }
    let file = dir.path().join("prometheus.yml");
    std::fs::write(&file, serde_norway::to_string(&config).unwrap()).unwrap();
    let mut out = BTreeSet::new();
    for (job, namespaces) in jobs {
        // The Kubernetes pod role: one target per declared port.
        let mut groups = Vec::new();
        for (i, (ns, name, annotations, ports)) in pods.iter().enumerate() {
            if namespaces
                .as_ref()
                .is_some_and(|n| !n.iter().any(|n| n == ns))
            {
                continue;
            }
            for (port, port_name) in *ports {
                let mut labels = serde_json::json!({
                    "__meta_kubernetes_namespace": ns,
                    "__meta_kubernetes_pod_name": name,
                    "__meta_kubernetes_pod_phase": "Running",
                    "__meta_kubernetes_pod_label_app": name,
                    "__meta_kubernetes_pod_container_port_number": port.to_string(),
                    "__meta_kubernetes_pod_container_port_name": port_name,
                });
                for (k, v) in *annotations {
                    labels[format!(
                        "__meta_kubernetes_pod_annotation_{}",
                        k.replace(['.', '/'], "_")
                    )] = (*v).into();
                }
                groups.push(serde_json::json!({
                    "targets": [format!("10.0.0.{}:{port}", i + 1)],
                    "labels": labels,
                }));
            }
        }
        std::fs::write(&targets, serde_json::to_string(&groups).unwrap()).unwrap();
        let run = std::process::Command::new("promtool")
            .args(["check", "service-discovery", "--timeout=2s"])
            .arg(&file)
            .arg(&job)
            .output()
            .expect("promtool (Debian package `prometheus`; ./scripts/test installs it)");
        assert!(
            run.status.success(),
            "promtool check service-discovery {job}: {}",
            String::from_utf8_lossy(&run.stderr)
        );
        let found: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
        for t in found.as_array().unwrap() {
            let l = &t["labels"];
            if let Some(addr) = l["__address__"].as_str() {
                let path = l["__metrics_path__"].as_str().unwrap_or("/metrics");
                out.insert((job.clone(), addr.to_string(), path.to_string()));
            }
        }
    }
    out
}

/// Our sidecars' metrics ports are scraped once each, found by port name in
/// any namespace, beside a Pod's own annotations, which stay the app's.
#[test]
fn prometheus_scrapes_each_sidecar_once_by_port_name_and_keeps_the_apps_annotations() {
    let t =
        |job: &str, addr: &str, path: &str| (job.to_string(), addr.to_string(), path.to_string());
    let got = scraped(&[
        // demo 1 updated: annotated for the relay.
        (
            "default",
            "web",
            &[
                ("prometheus.io/scrape", "true"),
                ("prometheus.io/port", "9464"),
            ],
            &[(80, "web"), (9464, "sidecar-logs")],
        ),
        // the app's own annotations, kept by inject; the proxy found by name.
        (
            "default",
            "shop",
            &[
                ("prometheus.io/scrape", "true"),
                ("prometheus.io/port", "8080"),
                ("prometheus.io/path", "/app/metrics"),
            ],
            &[(8080, "app"), (8000, "proxy"), (9901, "sidecar-proxy")],
        ),
        // no annotations in `default`: every declared port, once.
        ("default", "db", &[], &[(5432, "db"), (9187, "sidecar-pg")]),
        // another namespace: only our sidecars, by name.
        (
            "shop",
            "api",
            &[],
            &[
                (80, "http"),
                (9464, "sidecar-logs"),
                (9901, "sidecar-proxy"),
            ],
        ),
        // `scrape: "false"` opts the whole Pod out.
        (
            "shop",
            "quiet",
            &[("prometheus.io/scrape", "false")],
            &[(9464, "sidecar-logs")],
        ),
        (
            "default",
            "quiet",
            &[("prometheus.io/scrape", "false")],
            &[(9187, "sidecar-pg")],
        ),
        // the injector (deploy/injector): its admin port by name, not its webhook.
        (
            "sidecar-system",
            "sidecar-injector",
            &[
                ("prometheus.io/scrape", "true"),
                ("prometheus.io/port", "9465"),
            ],
            &[(8443, "webhook"), (9465, "sidecar-inj")],
        ),
    ]);
    let expected: BTreeSet<_> = [
        t("default-pods", "10.0.0.1:9464", "/metrics"),
        t("default-pods", "10.0.0.2:8080", "/app/metrics"),
        t("sidecars", "10.0.0.2:9901", "/metrics"),
        t("default-pods", "10.0.0.3:5432", "/metrics"),
        t("default-pods", "10.0.0.3:9187", "/metrics"),
        t("sidecars", "10.0.0.4:9464", "/metrics"),
        t("sidecars", "10.0.0.4:9901", "/metrics"),
        t("sidecars", "10.0.0.7:9465", "/metrics"),
    ]
    .into_iter()
    .collect();
    assert_eq!(got, expected);
}
