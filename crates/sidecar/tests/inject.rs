//! `sidecar inject`: golden files for every workload kind and annotation,
//! idempotence, schema validation of the output, and bad input.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::kube;

fn cases() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/inject");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "yaml")
                && !p.to_string_lossy().ends_with(".expected.yaml")
        })
        .collect();
    files.sort();
    assert!(files.len() >= 6);
    files
}

fn inject(path: &Path) -> String {
    let out = Command::new(common::BIN)
        .args(["inject", "--image", "sidecar:0.1.0", "-f"])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn golden_files_idempotence_and_valid_output() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let tmp = tempfile::tempdir().unwrap();
    let mut outputs = Vec::new();
    for case in cases() {
        let got = inject(&case);
        let expected_path = case.with_extension("expected.yaml");
        if update {
            std::fs::write(&expected_path, &got).unwrap();
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_else(|_| {
            panic!(
                "{} missing; run with UPDATE_GOLDEN=1",
                expected_path.display()
            )
        });
        assert_eq!(
            got,
            expected,
            "{} differs from its golden file",
            case.display()
        );
        // Injecting again changes nothing.
        assert_eq!(
            inject(&expected_path),
            expected,
            "{} is not idempotent",
            case.display()
        );
        // What comes out is valid Kubernetes and follows the rules for our containers.
        let checked: usize = kube::documents(&got)
            .iter()
            .map(|d| kube::check_rules(d, &case.display().to_string()))
            .sum();
        assert!(checked >= 1, "{}: no sidecar injected", case.display());
        let out = tmp.path().join(case.file_name().unwrap());
        std::fs::write(&out, &got).unwrap();
        outputs.push(out);
    }
    let refs: Vec<&Path> = outputs.iter().map(PathBuf::as_path).collect();
    kube::validate(&refs);
}

#[test]
fn stdin_directories_and_errors() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/inject");
    let out = Command::new(common::BIN)
        .args(["inject", "-f"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(out.status.success());
    let all = String::from_utf8(out.stdout).unwrap();
    assert!(all.matches("restartPolicy: Always").count() >= 7, "{all}");
    let out = common::run_with_input(Command::new(common::BIN)
        .args(["inject"]), b"kind: Service\nmetadata: {name: s}\n---\nkind: Deployment\nmetadata: {name: web}\nspec:\n  template:\n    metadata:\n      annotations: {sidecar.dev/proxy-inbound: \"80\"}\n    spec: {containers: [{name: a, image: x}]}\n", "cannot start it");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("document 2 (Deployment web)") && err.contains("sidecar.dev/proxy-inbound"),
        "{err}"
    );
}

/// What `sidecar inject` did with one input on stdin.
struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

fn run_stdin(input: &str) -> Run {
    let out = common::run_with_input(
        Command::new(common::BIN).args(["inject", "--image", "sidecar:0.1.0"]),
        input.as_bytes(),
        "cannot start it",
    );
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

/// Injects `input`, expects success, checks that a second run changes
/// nothing, that the output is valid Kubernetes, and that our containers
/// follow the rules; returns the run.
fn inject_ok(input: &str, what: &str) -> Run {
    let run = run_stdin(input);
    assert!(run.ok, "{what}: {}", run.stderr);
    let again = run_stdin(&run.stdout);
    assert!(again.ok, "{what} (again): {}", again.stderr);
    assert_eq!(again.stdout, run.stdout, "{what}: not idempotent");
    let docs = kube::documents(&run.stdout);
    let mut objects = Vec::new();
    for d in &docs {
        match d.get("items").and_then(serde_norway::Value::as_sequence) {
            Some(items) => objects.extend(items.iter().cloned()),
            None => objects.push(d.clone()),
        }
    }
    for o in &objects {
        kube::check_metrics_ports(o, what);
        let template = kube::pod_template(o);
        if template.is_some_and(|t| kube::annotation(t, "prometheus.io/port").is_some()) {
            kube::check_rules(o, what);
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("out.yaml");
    let text: Vec<String> = objects
        .iter()
        .map(|o| serde_norway::to_string(o).unwrap())
        .collect();
    std::fs::write(&file, text.join("---\n")).unwrap();
    kube::validate(&[&file]);
    run
}

fn inject_err(input: &str) -> String {
    let run = run_stdin(input);
    assert!(!run.ok, "expected an error, got:\n{}", run.stdout);
    assert!(run.stdout.is_empty(), "nothing on stdout after an error");
    run.stderr
}

/// A Deployment `name` (labels app: name) with these pod template
/// annotations (YAML flow mapping entries) and containers (a YAML flow list).
fn deployment(name: &str, annotations: &str, containers: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {name}}}\nspec:\n  selector: {{matchLabels: {{app: {name}}}}}\n  template:\n    metadata:\n      labels: {{app: {name}}}\n      annotations: {{{annotations}}}\n    spec:\n      containers: {containers}\n"
    )
}

fn template_of(output: &str, kind: &str) -> serde_norway::Value {
    kube::documents(output)
        .into_iter()
        .find(|d| d.get("kind").and_then(serde_norway::Value::as_str) == Some(kind))
        .and_then(|d| kube::pod_template(&d).cloned())
        .unwrap_or_else(|| panic!("no {kind} in\n{output}"))
}

fn ports_of(container: &serde_norway::Value) -> Vec<(String, u64)> {
    container
        .get("ports")
        .and_then(serde_norway::Value::as_sequence)
        .into_iter()
        .flatten()
        .map(|p| {
            (
                p.get("name")
                    .and_then(serde_norway::Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                p.get("containerPort")
                    .and_then(serde_norway::Value::as_u64)
                    .unwrap(),
            )
        })
        .collect()
}

const APP: &str = "[{name: web, image: example/web:1, ports: [{name: http, containerPort: 8080}]}]";

#[test]
fn prometheus_annotations_of_the_pod_are_kept_and_our_ports_are_named() {
    // The app's own metrics: port and path stay as they are.
    let run = inject_ok(
        &deployment(
            "web",
            "sidecar.dev/logs: /logs/app.log, prometheus.io/scrape: 'true', prometheus.io/port: '8080', prometheus.io/path: /custom/metrics",
            APP,
        ),
        "own port and path",
    );
    let t = template_of(&run.stdout, "Deployment");
    assert_eq!(kube::annotation(&t, "prometheus.io/port"), Some("8080"));
    assert_eq!(
        kube::annotation(&t, "prometheus.io/path"),
        Some("/custom/metrics")
    );
    assert_eq!(kube::annotation(&t, "prometheus.io/scrape"), Some("true"));
    let relay = kube::container(&t, "sidecar-logs").unwrap();
    assert!(
        ports_of(relay).contains(&("sidecar-logs".to_string(), 9464)),
        "{:?}",
        ports_of(relay)
    );
    // An explicit "false" stays "false", and no port is added.
    let run = inject_ok(
        &deployment(
            "db",
            "sidecar.dev/postgres-exporter: db-exporter, prometheus.io/scrape: 'false'",
            "[{name: db, image: postgres:16}]",
        ),
        "scrape false",
    );
    let t = template_of(&run.stdout, "Deployment");
    assert_eq!(kube::annotation(&t, "prometheus.io/scrape"), Some("false"));
    assert_eq!(kube::annotation(&t, "prometheus.io/port"), None);
    // A pod without prometheus.io annotations gets ours, as before.
    let run = inject_ok(
        &deployment("web", "sidecar.dev/proxy-inbound: '8000:8080'", APP),
        "no annotations",
    );
    let t = template_of(&run.stdout, "Deployment");
    assert_eq!(kube::annotation(&t, "prometheus.io/scrape"), Some("true"));
    assert_eq!(kube::annotation(&t, "prometheus.io/port"), Some("9901"));
    let proxy = kube::container(&t, "sidecar-proxy").unwrap();
    assert!(
        ports_of(proxy).contains(&("sidecar-proxy".to_string(), 9901)),
        "{:?}",
        ports_of(proxy)
    );
}

#[test]
fn ports_the_app_declares_stop_with_both_containers_and_the_way_out() {
    let app_with = |port: u16| {
        format!(
            "[{{name: web, image: example/web:1, ports: [{{containerPort: 8080}}, {{name: other, containerPort: {port}}}]}}]"
        )
    };
    for (annotation, port, ours, way_out) in [
        (
            "sidecar.dev/logs: /logs/app.log",
            9464,
            "sidecar-logs",
            "sidecar.dev/logs-admin-port",
        ),
        (
            "sidecar.dev/postgres-exporter: web-db",
            9187,
            "sidecar-postgres-exporter",
            "sidecar.dev/postgres-exporter-admin-port",
        ),
        (
            "sidecar.dev/proxy-inbound: '8000:8080'",
            9901,
            "sidecar-proxy",
            "sidecar.dev/proxy-admin-port",
        ),
        (
            "sidecar.dev/proxy: web-proxy",
            9901,
            "sidecar-proxy",
            "sidecar.dev/proxy-admin-port",
        ),
        (
            "sidecar.dev/proxy-inbound: '8000:8080'",
            8000,
            "sidecar-proxy",
            "sidecar.dev/proxy-inbound",
        ),
    ] {
        let err = inject_err(&deployment("web", annotation, &app_with(port)));
        for needle in [
            "document 1 (Deployment web)",
            "container web",
            ours,
            &port.to_string(),
            way_out,
        ] {
            assert!(err.contains(needle), "{annotation}: `{needle}` in {err}");
        }
    }
    // Two sidecars of ours on one port.
    let err = inject_err(&deployment(
        "web",
        "sidecar.dev/logs: /logs/app.log, sidecar.dev/proxy-inbound: '9464:8080'",
        APP,
    ));
    assert!(
        err.contains("sidecar-proxy") && err.contains("sidecar-logs"),
        "{err}"
    );
    // The annotations move ours: probes, the named port, the flag and the
    // scrape annotation follow.
    let run = inject_ok(
        &deployment(
            "web",
            "sidecar.dev/logs: /logs/app.log, sidecar.dev/logs-admin-port: '9465'",
            &app_with(9464),
        ),
        "logs moved",
    );
    let t = template_of(&run.stdout, "Deployment");
    let relay = kube::container(&t, "sidecar-logs").unwrap();
    assert_eq!(ports_of(relay), vec![("sidecar-logs".to_string(), 9465)]);
    assert!(
        serde_norway::to_string(relay.get("args").unwrap())
            .unwrap()
            .contains("0.0.0.0:9465"),
        "{relay:?}"
    );
    assert_eq!(kube::annotation(&t, "prometheus.io/port"), Some("9465"));
    for (annotation, name, flag) in [
        (
            "sidecar.dev/postgres-exporter: web-db, sidecar.dev/postgres-exporter-admin-port: '9188'",
            "sidecar-postgres-exporter",
            ":9188",
        ),
        (
            "sidecar.dev/proxy-inbound: '8000:8080', sidecar.dev/proxy-admin-port: '9902'",
            "sidecar-proxy",
            "0.0.0.0:9902",
        ),
    ] {
        let run = inject_ok(&deployment("web", annotation, &app_with(9187)), annotation);
        let t = template_of(&run.stdout, "Deployment");
        let c = kube::container(&t, name).unwrap();
        assert!(
            serde_norway::to_string(c.get("args").unwrap())
                .unwrap()
                .contains(flag),
            "{c:?}"
        );
    }
    let err = inject_err(&deployment(
        "web",
        "sidecar.dev/logs: /logs/app.log, sidecar.dev/logs-admin-port: 'high'",
        APP,
    ));
    assert!(err.contains("sidecar.dev/logs-admin-port"), "{err}");

    // A proxy ConfigMap in the input: its listeners are checked too, and its
    // `admin:` port is where the probes go.
    let config_map = |listen: u16| {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: web-proxy}}\ndata:\n  proxy.yaml: |\n    service: web\n    listeners:\n      - name: inbound\n        listen: 0.0.0.0:{listen}\n        direction: inbound\n        routes: [{{prefix: /, upstream: 127.0.0.1:8080}}]\n    admin: 0.0.0.0:9911\n---\n"
        )
    };
    let err = inject_err(&format!(
        "{}{}",
        config_map(8080),
        deployment("web", "sidecar.dev/proxy: web-proxy", APP)
    ));
    assert!(
        err.contains("container web")
            && err.contains("listener `inbound`")
            && err.contains("ConfigMap web-proxy"),
        "{err}"
    );
    let run = inject_ok(
        &format!(
            "{}{}",
            config_map(8000),
            deployment("web", "sidecar.dev/proxy: web-proxy", APP)
        ),
        "proxy ConfigMap",
    );
    let t = template_of(&run.stdout, "Deployment");
    let proxy = kube::container(&t, "sidecar-proxy").unwrap();
    assert_eq!(
        proxy["startupProbe"]["httpGet"]["port"].as_u64(),
        Some(9911)
    );
    assert_eq!(kube::annotation(&t, "prometheus.io/port"), Some("9911"));
}

#[test]
fn a_log_directory_inside_an_app_volume_reuses_it() {
    let input = "\
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
spec:
  serviceName: db
  selector: {matchLabels: {app: db}}
  template:
    metadata:
      labels: {app: db}
      annotations: {sidecar.dev/logs: /var/lib/postgresql/data/log/*.log}
    spec:
      containers:
        - name: postgres
          image: postgres:16
          volumeMounts: [{name: data, mountPath: /var/lib/postgresql/data}]
  volumeClaimTemplates:
    - metadata: {name: data}
      spec:
        accessModes: [ReadWriteOnce]
        resources: {requests: {storage: 1Gi}}
";
    let run = inject_ok(input, "log directory in a PVC");
    assert!(!run.stderr.contains("warning"), "{}", run.stderr);
    let t = template_of(&run.stdout, "StatefulSet");
    // No new emptyDir inside the PVC: the app's mounts are as they were.
    let app = kube::container(&t, "postgres").unwrap();
    assert_eq!(
        app.get("volumeMounts")
            .and_then(serde_norway::Value::as_sequence)
            .unwrap()
            .len(),
        1,
        "{app:?}"
    );
    let volumes: Vec<&str> = t["spec"]["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|v| v.get("name").and_then(serde_norway::Value::as_str))
        .collect();
    assert_eq!(volumes, vec!["sidecar-logs-state"]);
    // The relay reads the log directory through the PVC, read-only, without
    // a subPath (the kubelet would create its directory, as root, before the
    // app starts: an initdb on an empty volume then refuses to run).
    let relay = kube::container(&t, "sidecar-logs").unwrap();
    let mount = relay["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| m["name"].as_str() == Some("data"))
        .unwrap_or_else(|| panic!("the relay mounts the PVC: {relay:?}"));
    assert_eq!(
        mount["mountPath"].as_str(),
        Some("/var/lib/postgresql/data")
    );
    assert_eq!(mount["readOnly"].as_bool(), Some(true));
    assert!(mount.get("subPath").is_none(), "{mount:?}");

    // A new emptyDir that would hide the image's files is warned about.
    for (containers, paths, needle) in [
        (
            "[{name: web, image: example/web:1, workingDir: /app}]",
            "/app/app.log",
            "workingDir",
        ),
        (
            "[{name: web, image: example/web:1, command: [/srv/bin/server]}]",
            "/srv/bin/server.log",
            "/srv/bin/server",
        ),
    ] {
        let run = inject_ok(
            &deployment("web", &format!("sidecar.dev/logs: '{paths}'"), containers),
            paths,
        );
        assert!(
            run.stderr.contains("warning") && run.stderr.contains(needle),
            "{paths}: {}",
            run.stderr
        );
    }
    let run = inject_ok(
        &deployment(
            "web",
            "sidecar.dev/logs: /logs/app.log",
            "[{name: web, image: example/web:1, workingDir: /app, command: [/app/server]}]",
        ),
        "own directory",
    );
    assert!(run.stderr.is_empty(), "{}", run.stderr);
}

#[test]
fn lists_are_injected_and_misplaced_annotations_are_warned_about() {
    let list = "\
apiVersion: v1
kind: List
metadata: {resourceVersion: ''}
items:
  - apiVersion: v1
    kind: Service
    metadata: {name: web}
    spec:
      selector: {app: web}
      ports: [{port: 80, targetPort: 9090}]
  - apiVersion: apps/v1
    kind: Deployment
    metadata: {name: web}
    spec:
      selector: {matchLabels: {app: web}}
      template:
        metadata:
          labels: {app: web}
          annotations: {sidecar.dev/logs: /logs/app.log}
        spec:
          containers: [{name: web, image: example/web:1}]
";
    let run = inject_ok(list, "List");
    let docs = kube::documents(&run.stdout);
    assert_eq!(docs.len(), 1);
    assert_eq!(docs[0]["kind"].as_str(), Some("List"));
    let items = docs[0]["items"].as_sequence().unwrap();
    assert_eq!(items[0]["kind"].as_str(), Some("Service"));
    let t = kube::pod_template(&items[1]).unwrap();
    assert!(
        kube::container(t, "sidecar-logs").is_some(),
        "{}",
        run.stdout
    );
    let err = inject_err(&list.replace("/logs/app.log", "logs/app.log"));
    assert!(
        err.contains("document 1 (List, item 2: Deployment web)"),
        "{err}"
    );

    // Annotations on the workload's own metadata do nothing: say where they go.
    for (input, place) in [
        (
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  annotations: {sidecar.dev/logs: /logs/app.log}\nspec:\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec: {containers: [{name: web, image: x}]}\n",
            "spec.template.metadata.annotations",
        ),
        (
            "apiVersion: batch/v1\nkind: CronJob\nmetadata:\n  name: nightly\n  annotations: {sidecar.dev/postgres-exporter: db}\nspec:\n  schedule: '0 3 * * *'\n  jobTemplate:\n    spec:\n      template:\n        spec: {restartPolicy: Never, containers: [{name: job, image: x}]}\n",
            "spec.jobTemplate.spec.template.metadata.annotations",
        ),
    ] {
        let run = run_stdin(input);
        assert!(run.ok, "{}", run.stderr);
        assert_eq!(run.stdout, input, "nothing to inject: copied unchanged");
        assert!(
            run.stderr.contains("warning") && run.stderr.contains(place),
            "{place}: {}",
            run.stderr
        );
    }
}

const SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  selector: {app: web}\n  ports: [PORTS]\n";

fn service_ports(output: &str) -> Vec<serde_norway::Value> {
    kube::documents(output)
        .into_iter()
        .find(|d| d["kind"].as_str() == Some("Service"))
        .unwrap()["spec"]["ports"]
        .as_sequence()
        .unwrap()
        .clone()
}

#[test]
fn inbound_proxy_retargets_the_service_of_its_workload() {
    let workload = deployment("web", "sidecar.dev/proxy-inbound: '8000:8080'", APP);
    for ports in [
        "{port: 80, targetPort: 8080}",
        "{port: 80, targetPort: http}",
        "{port: 8080}",
    ] {
        let input = format!("{}---\n{workload}", SERVICE.replace("PORTS", ports));
        let run = inject_ok(&input, ports);
        let got = service_ports(&run.stdout);
        assert_eq!(
            got[0]["targetPort"].as_u64(),
            Some(8000),
            "{ports}: {got:?}"
        );
        assert!(
            run.stderr.contains("Service web") && run.stderr.contains("8000"),
            "{ports}: {}",
            run.stderr
        );
        // Already retargeted: the second run says nothing.
        let again = run_stdin(&run.stdout);
        assert!(again.stderr.is_empty(), "{ports}: {}", again.stderr);
    }
    // The Service after the workload, a port that is not the app's: kept.
    let input = format!(
        "{workload}---\n{}",
        SERVICE.replace(
            "PORTS",
            "{name: a, port: 80, targetPort: 8080}, {name: b, port: 90, targetPort: 9090}"
        )
    );
    let run = inject_ok(&input, "two ports");
    let got = service_ports(&run.stdout);
    assert_eq!(got[0]["targetPort"].as_u64(), Some(8000));
    assert_eq!(got[1]["targetPort"].as_u64(), Some(9090));
    // No Service in the input, or one that selects other pods: a warning
    // naming the change.
    for input in [
        workload.clone(),
        format!(
            "{}---\n{workload}",
            SERVICE
                .replace("{app: web}", "{app: other}")
                .replace("PORTS", "{port: 80, targetPort: 8080}")
        ),
    ] {
        let run = run_stdin(&input);
        assert!(run.ok, "{}", run.stderr);
        assert!(
            run.stderr.contains("warning")
                && run.stderr.contains("targetPort")
                && run.stderr.contains("8000"),
            "{}",
            run.stderr
        );
        if input.contains("app: other") {
            let got = service_ports(&run.stdout);
            assert_eq!(got[0]["targetPort"].as_u64(), Some(8080));
        }
    }
}

#[test]
fn default_ports_are_shared_constants() {
    use sidecar_telemetry::ports;
    let run = inject_ok(
        &deployment(
            "web",
            "sidecar.dev/logs: /logs/app.log, sidecar.dev/postgres-exporter: db",
            "[{name: web, image: x}]",
        ),
        "defaults",
    );
    let t = template_of(&run.stdout, "Deployment");
    let port =
        |name: &str| kube::container(&t, name).unwrap()["startupProbe"]["httpGet"]["port"].as_u64();
    assert_eq!(port("sidecar-logs"), Some(u64::from(ports::LOGS)));
    assert_eq!(
        port("sidecar-postgres-exporter"),
        Some(u64::from(ports::POSTGRES_EXPORTER))
    );
    let run = inject_ok(
        &deployment(
            "web",
            "sidecar.dev/proxy: web-proxy",
            "[{name: web, image: x}]",
        ),
        "proxy",
    );
    let t = template_of(&run.stdout, "Deployment");
    assert_eq!(
        kube::container(&t, "sidecar-proxy").unwrap()["startupProbe"]["httpGet"]["port"].as_u64(),
        Some(u64::from(ports::PROXY))
    );
    for (cmd, default) in [
        ("logs", format!("0.0.0.0:{}", ports::LOGS)),
        (
            "postgres-exporter",
            format!(":{}", ports::POSTGRES_EXPORTER),
        ),
    ] {
        let out = Command::new(common::BIN)
            .args([cmd, "--help"])
            .output()
            .unwrap();
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(
            help.contains(&format!("[default: {default}]")),
            "{cmd}: {help}"
        );
    }
    // Written once: no literal default port left in these sources' code.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    for file in [
        "crates/inject/src/lib.rs",
        "crates/sidecar/src/cmd/logs.rs",
        "crates/sidecar/src/cmd/pg_exporter.rs",
        "crates/proxy/src/config.rs",
    ] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap();
        for (n, line) in code.lines().enumerate() {
            let line = line.trim_start();
            if line.starts_with("//") {
                continue;
            }
            for port in ["9464", "9187", "9901"] {
                assert!(
                    !line.contains(port),
                    "{file}:{}: the literal {port}; use sidecar_telemetry::ports",
                    n + 1
                );
            }
        }
    }
}
