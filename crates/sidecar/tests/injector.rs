//! `sidecar injector`, the admission webhook, as the API server sees it:
//! the real binary over real HTTPS (certificates made here), its patches
//! applied by an independent JSONPatch implementation (Python's jsonpatch)
//! and compared with `sidecar inject` on the same object.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use common::injector::{
    Ca, Conn, FakeApi, Injector, SecretDir, apply_patches, client_config, inject_cli, patch_of,
    review, try_inject_cli, warnings_of,
};
use common::wait_until;
use common::workloads::{KINDS, Rng, random_workload, template, workload};
use serde_json::{Value, json};

fn start(extra: &[&str]) -> (Injector, SecretDir, Ca) {
    let ca = Ca::new("injector test CA");
    let (cert, key, _) = ca.leaf();
    let tls = SecretDir::new(&cert, &key);
    (Injector::start(&tls, &ca.pem, extra), tls, ca)
}

fn annotation_sets() -> Vec<Value> {
    vec![
        json!({"sidecar.dev/logs": "/var/log/app/app.log,/var/log/app/*.json"}),
        json!({"sidecar.dev/postgres-exporter": "pg-secret"}),
        json!({"sidecar.dev/proxy": "web-proxy"}),
        json!({"sidecar.dev/proxy-inbound": "8000:8080",
               "sidecar.dev/zipkin": "http://zipkin.tracing:9411/api/v2/spans"}),
        json!({"sidecar.dev/logs": "/var/log/app/app.log",
               "sidecar.dev/postgres-exporter": "pg-secret",
               "sidecar.dev/proxy-inbound": "8000:8080",
               "sidecar.dev/logs-admin-port": "9470",
               "sidecar.dev/postgres-exporter-admin-port": "9190",
               "sidecar.dev/proxy-admin-port": "9910",
               "prometheus.io/scrape": "true",
               "team~name/x": "keys with ~ and / are escaped in patches"}),
    ]
}

/// Every workload kind with every annotation set (with and without the
/// lists injection adds to), and the workloads of `sidecar inject`'s own
/// test files.
fn corpus() -> Vec<Value> {
    let mut objects = Vec::new();
    let with_lists = json!({
        "initContainers": [{"name": "migrate", "image": "busybox", "command": ["true"]}],
        "volumes": [{"name": "data", "emptyDir": {}}]
    });
    for kind in KINDS {
        for ann in annotation_sets() {
            objects.push(workload(kind, template(&ann, &json!({}))));
        }
        let all = annotation_sets().pop().unwrap();
        objects.push(workload(kind, template(&all, &with_lists)));
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/inject");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_str().unwrap();
            name.ends_with(".yaml") && !name.ends_with(".expected.yaml")
        })
        .collect();
    files.sort();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for doc in serde_norway::Deserializer::from_str(&text) {
            let v: Value = serde::Deserialize::deserialize(doc).unwrap();
            if KINDS.contains(&v["kind"].as_str().unwrap_or("")) {
                objects.push(v);
            }
        }
    }
    objects
}

#[test]
fn reviews_patch_every_kind_as_inject_does_and_a_second_review_changes_nothing() {
    let (inj, _tls, _ca) = start(&["--kube-api", "off"]);
    let objects = corpus();
    assert!(objects.len() > 45, "{}", objects.len());
    let mut cases = Vec::new();
    for object in &objects {
        let r = inj.review(object, "apps", false);
        let patch = patch_of(&r).unwrap_or_else(|| panic!("no patch for {object}: {r}"));
        for w in warnings_of(&r) {
            assert!(
                w.starts_with("sidecar-injector: ") && !w.contains('\n'),
                "{w}"
            );
            assert!(w.chars().count() <= 240, "{w}");
        }
        cases.push((object.clone(), patch));
    }
    let patched = apply_patches(&cases);
    for (object, after) in objects.iter().zip(&patched) {
        assert_eq!(
            after,
            &inject_cli(object),
            "the webhook's patch and `sidecar inject` differ for {object}"
        );
    }
    // Injected objects again: no patch, counted as already injected.
    for after in &patched {
        let r = inj.review(after, "apps", false);
        assert!(
            patch_of(&r).is_none(),
            "a second review patched {after}: {r}"
        );
    }
    assert_eq!(inj.outcome("injected"), objects.len() as f64);
    assert_eq!(inj.outcome("already_injected"), objects.len() as f64);

    // dryRun: the same patch (no side effects exist), counted apart.
    let r = inj.review(&objects[0], "apps", true);
    assert_eq!(patch_of(&r), Some(cases[0].1.clone()));
    assert_eq!(inj.outcome("dry_run"), 1.0);
    assert!(
        inj.metric("sidecar_injector_review_duration_seconds_count") >= 2.0 * cases.len() as f64
    );
}

#[test]
fn skips_opt_outs_errors_and_malformed_requests_are_allowed_with_warnings() {
    let (inj, _tls, ca) = start(&["--kube-api", "off"]);
    let logs = json!({"sidecar.dev/logs": "/var/log/app/app.log"});
    let pod = |ann: &Value| workload("Pod", template(ann, &json!({})));

    // Nothing asked for, or not a workload: no patch, no warning.
    for object in [
        pod(&Value::Null),
        pod(&json!({"other": "x"})),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"}}),
    ] {
        let r = inj.review(&object, "apps", false);
        assert!(patch_of(&r).is_none() && warnings_of(&r).is_empty(), "{r}");
    }
    assert_eq!(inj.outcome("skipped"), 3.0);

    // Opt-out: the label (also read by the objectSelector) or the annotation.
    let mut labelled = pod(&logs);
    labelled["metadata"]["labels"]["sidecar.dev/inject"] = json!("false");
    let mut annotated = pod(&logs);
    annotated["metadata"]["annotations"]["sidecar.dev/inject"] = json!("false");
    let mut deployment = workload("Deployment", template(&logs, &json!({})));
    deployment["spec"]["template"]["metadata"]["labels"]["sidecar.dev/inject"] = json!("false");
    for object in [labelled, annotated, deployment] {
        let r = inj.review(&object, "apps", false);
        assert!(patch_of(&r).is_none(), "{r}");
    }
    assert_eq!(inj.outcome("opted_out"), 3.0);

    // What inject refuses: allowed, no patch, inject's message as a warning.
    let bad = pod(&json!({"sidecar.dev/logs": "/var/log/app/a.log",
                          "sidecar.dev/logs-admin-port": "8080"}));
    let r = inj.review(&bad, "apps", false);
    assert!(patch_of(&r).is_none(), "{r}");
    let w = warnings_of(&r).join("\n");
    assert!(
        w.contains("starts without them") && w.contains("8080"),
        "{w}"
    );
    assert_eq!(inj.outcome("error"), 1.0);

    // Malformed requests: 200, allowed, a warning; the uid when known.
    let big = format!("{{\"x\": \"{}\"}}", "a".repeat(9 << 20));
    let no_object = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                           "request": {"uid": "u-1", "namespace": "apps"}});
    let cases: Vec<(Vec<u8>, &str, &str)> = vec![
        (b"not json".to_vec(), "", "not JSON"),
        (
            json!({"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview",
                   "request": {"uid": "u-2"}})
            .to_string()
            .into_bytes(),
            "u-2",
            "admission.k8s.io/v1",
        ),
        (
            json!({"apiVersion": "admission.k8s.io/v1", "kind": "Pod", "request": {"uid": "u-3"}})
                .to_string()
                .into_bytes(),
            "u-3",
            "AdmissionReview",
        ),
        (
            json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"})
                .to_string()
                .into_bytes(),
            "",
            "no `request`",
        ),
        (
            json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                   "request": {"object": pod(&logs)}})
            .to_string()
            .into_bytes(),
            "",
            "request.uid",
        ),
        (no_object.to_string().into_bytes(), "u-1", "request.object"),
        (big.into_bytes(), "", "4 MiB"),
    ];
    let n = cases.len();
    for (body, uid, says) in cases {
        let answer = inj.post(&body);
        let r = &answer["response"];
        assert_eq!(r["allowed"], true, "{answer}");
        assert_eq!(r["uid"], uid, "{answer}");
        assert!(r.get("patch").is_none(), "{answer}");
        let w = warnings_of(r).join("\n");
        assert!(w.contains(says), "`{says}` not in {w}");
    }
    assert_eq!(inj.outcome("malformed"), n as f64);

    // Other paths and methods.
    // (Each on its own connection: one answered before its body was read is closed.)
    assert_eq!(inj.conn().request("POST", "/other", b"{}").0, 404);
    let (status, headers, _) = inj.conn().request("GET", "/mutate", b"");
    assert_eq!(status, 405);
    assert!(
        headers.to_ascii_lowercase().contains("allow: post"),
        "{headers}"
    );
    // The API server may speak HTTP/2: it is offered by ALPN.
    let h2 = Conn::open(
        inj.addr,
        &client_config(&ca.pem, &[b"h2", b"http/1.1"]),
        "localhost",
    );
    assert_eq!(h2.alpn().as_deref(), Some(&b"h2"[..]));
}

#[test]
fn namespace_defaults_come_from_the_api_and_the_pod_wins() {
    let ca = Ca::new("injector test CA");
    let api = FakeApi::start(&ca, "token-1");
    api.set(
        "apps",
        json!({"sidecar.dev/logs": "/var/log/ns/ns.log", "sidecar.dev/inject": "true",
               "other.io/x": "y"}),
    );
    let (inj, _tls) = Injector::start_with_api(&ca, &api);

    // No annotations of its own: the Namespace's apply, and show on the Pod.
    let bare = workload("Pod", template(&Value::Null, &json!({})));
    let r = inj.review(&bare, "apps", false);
    let patch = patch_of(&r).unwrap_or_else(|| panic!("{r}"));
    let after = apply_patches(&[(bare.clone(), patch)]).pop().unwrap();
    let ann = &after["metadata"]["annotations"];
    assert_eq!(ann["sidecar.dev/logs"], "/var/log/ns/ns.log", "{after}");
    assert!(ann.get("other.io/x").is_none() && ann.get("sidecar.dev/inject").is_none());
    assert_eq!(
        after,
        inject_cli(&after),
        "the Pod says what asked for its sidecars"
    );
    assert!(patch_of(&inj.review(&after, "apps", false)).is_none());

    // The Pod's own annotation wins.
    let own = workload(
        "Deployment",
        template(
            &json!({"sidecar.dev/logs": "/var/log/own/own.log"}),
            &json!({}),
        ),
    );
    let r = inj.review(&own, "apps", false);
    let after = apply_patches(&[(own.clone(), patch_of(&r).unwrap())])
        .pop()
        .unwrap();
    let t = &after["spec"]["template"];
    assert_eq!(
        t["metadata"]["annotations"]["sidecar.dev/logs"],
        "/var/log/own/own.log"
    );
    assert!(t.to_string().contains("/var/log/own") && !t.to_string().contains("/var/log/ns"));

    // A namespace without annotations (404 here): nothing to add.
    let r = inj.review(&bare, "elsewhere", false);
    assert!(patch_of(&r).is_none() && warnings_of(&r).is_empty(), "{r}");

    // Cached: a burst of reviews reads each Namespace once.
    let before = api.requests.load(std::sync::atomic::Ordering::SeqCst);
    for _ in 0..5 {
        inj.review(&bare, "apps", false);
    }
    assert_eq!(
        api.requests.load(std::sync::atomic::Ordering::SeqCst),
        before
    );
    assert_eq!(
        inj.metric("sidecar_injector_namespace_lookup_errors_total"),
        0.0
    );

    // The token is read for every lookup (bound tokens rotate).
    *api.token.lock().unwrap() = "token-2".into();
    std::fs::write(api.sa_dir.path().join("token"), "token-2\n").unwrap();
    api.set("rotated", json!({"sidecar.dev/logs": "/x/y.log"}));
    assert!(patch_of(&inj.review(&bare, "rotated", false)).is_some());
    // A token the API refuses (401) is a lookup error.
    std::fs::write(api.sa_dir.path().join("token"), "stale").unwrap();
    api.set("other", json!({"sidecar.dev/logs": "/x/y.log"}));
    let r = inj.review(&bare, "other", false);
    assert!(patch_of(&r).is_none(), "{r}");
    let w = warnings_of(&r).join("\n");
    assert!(w.contains("401") && w.contains("Namespace other"), "{w}");
    assert_eq!(
        inj.metric("sidecar_injector_namespace_lookup_errors_total"),
        1.0
    );
    assert_eq!(inj.outcome("namespace_unavailable"), 1.0);
}

#[test]
fn api_down_injects_what_the_pods_own_annotations_ask_for_with_a_warning_counted_and_logged_once() {
    let ca = Ca::new("injector test CA");
    let api = FakeApi::start(&ca, "t");
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let (cert, key, _) = ca.leaf();
    let tls = SecretDir::new(&cert, &key);
    let url = format!("https://127.0.0.1:{port}");
    let sa = api.sa_dir.path().display().to_string();
    let inj = Injector::start(
        &tls,
        &ca.pem,
        &["--kube-api", &url, "--service-account-dir", &sa],
    );
    // Its own annotations ask for sidecars: injected from them, with a warning.
    let pod = workload(
        "Pod",
        template(
            &json!({"sidecar.dev/logs": "/var/log/app/a.log"}),
            &json!({}),
        ),
    );
    let mut cases = Vec::new();
    for ns in ["a", "b", "c"] {
        let r = inj.review(&pod, ns, false);
        let patch = patch_of(&r).unwrap_or_else(|| panic!("{r}"));
        cases.push((pod.clone(), patch));
        let w = warnings_of(&r).join("\n");
        assert!(
            w.contains(&format!("cannot read Namespace {ns}"))
                && w.contains("only the Pod's own sidecar.dev/* annotations were used"),
            "{w}"
        );
    }
    for after in apply_patches(&cases) {
        assert_eq!(after, inject_cli(&pod));
    }
    // Nothing of its own: admitted unchanged, with a warning.
    let bare = workload("Pod", template(&Value::Null, &json!({})));
    let r = inj.review(&bare, "d", false);
    assert!(patch_of(&r).is_none(), "{r}");
    let w = warnings_of(&r).join("\n");
    assert!(
        w.contains("no sidecars added") && w.contains("Namespace d"),
        "{w}"
    );
    assert_eq!(inj.outcome("namespace_unavailable"), 4.0);
    assert_eq!(inj.outcome("injected"), 0.0);
    assert_eq!(
        inj.metric("sidecar_injector_namespace_lookup_errors_total"),
        4.0
    );
    // An opted-out Pod is simply opted out.
    let mut out = pod.clone();
    out["metadata"]["labels"]["sidecar.dev/inject"] = json!("false");
    inj.review(&out, "e", false);
    assert_eq!(inj.outcome("opted_out"), 1.0);
    let log = inj.proc.stderr_text();
    assert_eq!(log.matches("cannot read Namespace").count(), 1, "{log}");
}

#[test]
fn a_namespace_annotated_inject_false_opts_out_its_pods_whatever_their_annotations() {
    let ca = Ca::new("injector test CA");
    let api = FakeApi::start(&ca, "t");
    api.set(
        "quiet",
        json!({"sidecar.dev/inject": "false", "sidecar.dev/logs": "/var/log/ns/ns.log"}),
    );
    let (inj, _tls) = Injector::start_with_api(&ca, &api);
    let bare = workload("Pod", template(&Value::Null, &json!({})));
    let own = workload(
        "Pod",
        template(
            &json!({"sidecar.dev/logs": "/var/log/app/a.log", "sidecar.dev/inject": "true"}),
            &json!({}),
        ),
    );
    for pod in [&bare, &own] {
        let r = inj.review(pod, "quiet", false);
        assert!(patch_of(&r).is_none(), "{r}");
    }
    assert_eq!(inj.outcome("opted_out"), 2.0);
    // Elsewhere the same Pod is injected.
    assert!(patch_of(&inj.review(&own, "apps", false)).is_some());
}

#[test]
fn reinvocation_after_another_webhook_put_its_init_container_first_gives_no_patch() {
    let (inj, _tls, _ca) = start(&["--kube-api", "off"]);
    let pod = workload(
        "Pod",
        template(
            &json!({"sidecar.dev/logs": "/var/log/app/a.log",
                    "sidecar.dev/proxy-inbound": "8000:8080"}),
            &json!({"initContainers": [{"name": "migrate", "image": "app:1"}]}),
        ),
    );
    let r = inj.review(&pod, "apps", false);
    let mut after = apply_patches(&[(pod.clone(), patch_of(&r).unwrap())])
        .pop()
        .unwrap();
    // A later webhook (Istio's iptables init, say) puts its own first.
    let init = after["spec"]["initContainers"].as_array_mut().unwrap();
    assert_eq!(init.len(), 3, "{after}");
    init.insert(0, json!({"name": "other-init", "image": "other:1"}));
    let r = inj.review(&after, "apps", false);
    assert!(
        patch_of(&r).is_none(),
        "the second review moved things: {r}"
    );
    assert_eq!(inj.outcome("already_injected"), 1.0);
    // `sidecar inject` follows the same rule.
    assert_eq!(inject_cli(&after), after);
}

#[test]
fn the_certificate_is_reloaded_while_serving_and_a_bad_pair_keeps_the_old_one() {
    let ca = Ca::new("injector test CA");
    let (cert1, key1, der1) = ca.leaf();
    let mut tls = SecretDir::new(&cert1, &key1);
    let mut inj = Injector::start(&tls, &ca.pem, &["--kube-api", "off"]);
    let pod = workload(
        "Pod",
        template(
            &json!({"sidecar.dev/logs": "/var/log/app/a.log"}),
            &json!({}),
        ),
    );
    let body = review(&pod, "apps", false).to_string();
    let mut kept = inj.conn();
    assert_eq!(kept.peer_cert(), der1);
    assert_eq!(kept.request("POST", "/mutate", body.as_bytes()).0, 200);

    // A Secret update: the ..data symlink swapped to a new pair.
    let (cert2, key2, der2) = ca.leaf();
    tls.update(&cert2, &key2);
    wait_until(
        "a new connection to get the new certificate",
        Duration::from_secs(15),
        || inj.conn().peer_cert() == der2,
    );
    assert_eq!(inj.metric("sidecar_injector_tls_reloads_total"), 1.0);
    // The connection opened before keeps working.
    let (status, _, answer) = kept.request("POST", "/mutate", body.as_bytes());
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&answer).contains("JSONPatch"));

    // Half written: a new certificate with a truncated key. The old pair stays.
    let (cert3, key3, _) = ca.leaf();
    tls.update(&cert3, &key3[..key3.len() / 2]);
    wait_until("a reload error", Duration::from_secs(15), || {
        inj.metric("sidecar_injector_tls_reload_errors_total") == 1.0
    });
    assert_eq!(inj.conn().peer_cert(), der2);
    inj.proc.wait_stderr(
        "still serving the previous certificate",
        Duration::from_secs(5),
    );
    // A mismatched pair (key of another certificate): the same.
    tls.update(&cert3, &key2);
    wait_until("a second reload error", Duration::from_secs(15), || {
        inj.metric("sidecar_injector_tls_reload_errors_total") == 2.0
    });
    assert_eq!(inj.conn().peer_cert(), der2);
    assert_eq!(
        inj.proc
            .stderr_text()
            .matches("still serving the previous certificate")
            .count(),
        1,
        "one warning per episode"
    );

    // SIGTERM: exits 0 promptly, with an idle keep-alive connection open.
    let started = std::time::Instant::now();
    inj.proc.terminate();
    let status = inj.proc.wait(Duration::from_secs(10));
    assert!(status.success(), "{status:?}\n{}", inj.proc.stderr_text());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    drop(kept);
}

#[test]
fn generated_certificate_verifies_for_the_service_and_is_served() {
    let out = std::process::Command::new(common::BIN)
        .args(["injector", "--generate-cert"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let secret: Value = serde_norway::from_str(&text).unwrap();
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &text).unwrap();
    common::kube::validate(&[file.path()]);
    assert_eq!(secret["kind"], "Secret");
    assert_eq!(secret["type"], "kubernetes.io/tls");
    assert_eq!(secret["metadata"]["name"], "sidecar-injector-tls");
    assert_eq!(secret["metadata"]["namespace"], "sidecar-system");
    let data = |k: &str| {
        String::from_utf8(B64.decode(secret["data"][k].as_str().unwrap()).unwrap()).unwrap()
    };
    let (crt, key, ca) = (data("tls.crt"), data("tls.key"), data("ca.crt"));
    let bundle = B64.encode(&ca);
    assert!(text.contains(&format!("# caBundle: {bundle}\n")), "{text}");
    assert!(text.contains(&format!(
        "kubectl patch mutatingwebhookconfiguration sidecar-injector --type=json -p '[{{\"op\":\"add\",\"path\":\"/webhooks/0/clientConfig/caBundle\",\"value\":\"{bundle}\"}}]'"
    )));

    // The injector serves the pair; a client trusting ca.crt verifies it
    // for the Service's name.
    let tls = SecretDir::new(&crt, &key);
    let inj = Injector::start(&tls, &ca, &["--kube-api", "off"]);
    let config = client_config(&ca, &[b"http/1.1"]);
    for name in [
        "sidecar-injector.sidecar-system.svc",
        "sidecar-injector.sidecar-system.svc.cluster.local",
    ] {
        let mut conn = Conn::open(inj.addr, &config, name);
        assert_eq!(conn.request("GET", "/mutate", b"").0, 405);
    }
    assert!(Conn::try_open(inj.addr, &config, "other.sidecar-system.svc").is_err());
}

#[test]
fn sigterm_lets_the_review_in_flight_finish_then_exits_0() {
    let ca = Ca::new("injector test CA");
    let api = FakeApi::start(&ca, "t");
    api.set("apps", json!({"sidecar.dev/logs": "/var/log/ns/ns.log"}));
    *api.delay.lock().unwrap() = Duration::from_millis(1000);
    let (mut inj, _tls) = Injector::start_with_api(&ca, &api);
    let pod = workload("Pod", template(&Value::Null, &json!({})));
    let body = review(&pod, "apps", false).to_string();
    let mut conn = inj.conn();
    let in_flight = std::thread::spawn(move || conn.request("POST", "/mutate", body.as_bytes()));
    // The review waits on the (slow) Namespace lookup.
    wait_until("the namespace lookup", Duration::from_secs(10), || {
        api.requests.load(std::sync::atomic::Ordering::SeqCst) == 1
    });
    inj.proc.terminate();
    let (status, _, answer) = in_flight.join().unwrap();
    assert_eq!(status, 200);
    let answer: Value = serde_json::from_slice(&answer).unwrap();
    assert!(patch_of(&answer["response"]).is_some(), "{answer}");
    let exit = inj.proc.wait(Duration::from_secs(10));
    assert!(exit.success(), "{exit:?}\n{}", inj.proc.stderr_text());
    assert!(Conn::try_open(inj.addr, &inj.client, "localhost").is_err());
}

#[test]
fn reviews_over_http2_are_answered() {
    use http_body_util::BodyExt;
    let (inj, _tls, ca) = start(&["--kube-api", "off"]);
    let pod = workload(
        "Pod",
        template(
            &json!({"sidecar.dev/logs": "/var/log/app/a.log"}),
            &json!({}),
        ),
    );
    let body = review(&pod, "apps", false).to_string();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(inj.addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let tls = tokio_rustls::TlsConnector::from(client_config(&ca.pem, &[b"h2"]))
            .connect(name, tcp)
            .await
            .unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let (mut send, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tls),
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        // Several streams on the one connection.
        for _ in 0..3 {
            let req = hyper::Request::post("https://localhost/mutate")
                .header("content-type", "application/json")
                .body(http_body_util::Full::new(bytes::Bytes::from(body.clone())))
                .unwrap();
            let resp = send.send_request(req).await.unwrap();
            assert_eq!(resp.status(), 200);
            let answer: Value =
                serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes())
                    .unwrap();
            assert!(patch_of(&answer["response"]).is_some(), "{answer}");
        }
    });
    assert_eq!(inj.outcome("injected"), 3.0);
}

#[test]
fn missing_or_wrong_certificate_files_stop_the_start_with_the_flag_to_fix() {
    let dir = tempfile::tempdir().unwrap();
    let (crt, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let run = || {
        std::process::Command::new(common::BIN)
            .args([
                "injector",
                "--listen",
                "127.0.0.1:0",
                "--admin",
                "off",
                "--kube-api",
                "off",
            ])
            .arg("--tls-cert")
            .arg(&crt)
            .arg("--tls-key")
            .arg(&key)
            .output()
            .unwrap()
    };
    let out = run();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("--tls-cert")
            && err.contains("--generate-cert")
            && err.contains("cert-manager"),
        "{err}"
    );
    let ca = Ca::new("c");
    let (cert1, _, _) = ca.leaf();
    let (_, key2, _) = ca.leaf();
    std::fs::write(&crt, &cert1).unwrap();
    std::fs::write(&key, "not a key").unwrap();
    let err = String::from_utf8_lossy(&run().stderr).into_owned();
    assert!(
        err.contains("--tls-key") && err.contains("not a PEM private key"),
        "{err}"
    );
    std::fs::write(&key, &key2).unwrap();
    let err = String::from_utf8_lossy(&run().stderr).into_owned();
    assert!(err.contains("does not belong to the certificate"), "{err}");
}

#[test]
fn random_workloads_get_what_inject_gives_them_or_its_error_as_a_warning() {
    let seed = std::env::var("SIDECAR_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_1234_u64);
    let mut rng = Rng(seed);
    let (inj, _tls, _ca) = start(&["--kube-api", "off"]);
    let objects: Vec<Value> = (0..60).map(|_| random_workload(&mut rng)).collect();
    let mut patched = Vec::new();
    let mut refused = 0;
    for object in &objects {
        let r = inj.review(object, "apps", false);
        match (patch_of(&r), try_inject_cli(object)) {
            (Some(p), Ok(expected)) => patched.push((object.clone(), p, expected)),
            (None, Err(e)) => {
                refused += 1;
                let w = warnings_of(&r).join("\n");
                assert!(
                    w.contains("starts without them"),
                    "seed {seed}: {w}\ninject: {e}"
                );
            }
            (p, cli) => panic!("seed {seed}: webhook patch {p:?}, inject {cli:?}, for {object}"),
        }
    }
    let cases: Vec<(Value, Value)> = patched
        .iter()
        .map(|(o, p, _)| (o.clone(), p.clone()))
        .collect();
    for ((object, _, expected), after) in patched.iter().zip(apply_patches(&cases)) {
        assert_eq!(&after, expected, "seed {seed}: {object}");
        assert!(
            patch_of(&inj.review(&after, "apps", false)).is_none(),
            "seed {seed}: {after}"
        );
    }
    // Both kinds of answer were exercised.
    assert!(
        patched.len() > 10 && refused > 5,
        "{} patched, {refused} refused",
        patched.len()
    );
}

#[test]
fn in_a_cluster_the_api_defaults_to_kubernetes_service_host_and_port() {
    let ca = Ca::new("injector test CA");
    let api = FakeApi::start(&ca, "t");
    api.set("apps", json!({"sidecar.dev/logs": "/var/log/ns/ns.log"}));
    let (cert, key, _) = ca.leaf();
    let tls = SecretDir::new(&cert, &key);
    let sa = api.sa_dir.path().display().to_string();
    let port = api.addr.port().to_string();
    let inj = Injector::start_env(
        &tls,
        &ca.pem,
        &["--service-account-dir", &sa],
        &[
            ("KUBERNETES_SERVICE_HOST", "127.0.0.1"),
            ("KUBERNETES_SERVICE_PORT", &port),
        ],
    );
    let pod = workload("Pod", template(&Value::Null, &json!({})));
    assert!(patch_of(&inj.review(&pod, "apps", false)).is_some());
    assert_eq!(api.requests.load(std::sync::atomic::Ordering::SeqCst), 1);
    // Outside a cluster (no KUBERNETES_SERVICE_*, no --kube-api): off, said once.
    let (off, _tls, _ca) = start(&[]);
    assert!(patch_of(&off.review(&pod, "apps", false)).is_none());
    assert_eq!(
        off.proc
            .stderr_text()
            .matches("Namespace sidecar.dev/* defaults are not read")
            .count(),
        1
    );
}
