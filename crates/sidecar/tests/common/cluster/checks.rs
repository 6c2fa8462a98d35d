//! The checks `Cluster::problems` runs on the current state.

use std::collections::BTreeMap;

use serde_norway::Value;

use super::pod::{is_ours, parse_args, scalar, seq, str_at};
use super::security::pod_security_level;
use super::seed::{Form, SEED_IMAGES, address, dotnet_name};
use super::{Cluster, Pod, Running};

impl Cluster {
    pub(super) fn check_services(&self, problems: &mut Vec<String>) {
        let pods = self.pods();
        for ((_, ns, name), s) in self.of_kind("Service") {
            let what = format!("Service {ns}/{name}");
            let Some(selector) = s
                .get("spec")
                .and_then(|s| s.get("selector"))
                .and_then(Value::as_mapping)
            else {
                problems.push(format!("{what} has no selector"));
                continue;
            };
            let selected: Vec<&Pod> = pods
                .iter()
                .filter(|pod| {
                    &pod.ns == ns
                        && selector.iter().all(|(k, v)| {
                            pod.labels
                                .get(k.as_str().unwrap_or_default())
                                .map(String::as_str)
                                == v.as_str()
                        })
                })
                .collect();
            if selected.is_empty() {
                problems.push(format!("{what} selects no Pod"));
            }
            for port in seq(s.get("spec").and_then(|s| s.get("ports"))) {
                let target = port
                    .get("targetPort")
                    .or_else(|| port.get("port"))
                    .cloned()
                    .unwrap_or(Value::Null);
                for pod in &selected {
                    let declared = pod.declared();
                    let found = match &target {
                        Value::Number(n) => {
                            declared.iter().any(|d| Some(u64::from(d.1)) == n.as_u64())
                        }
                        Value::String(t) => {
                            let on: Vec<_> = declared
                                .iter()
                                .filter(|d| d.2.as_deref() == Some(t))
                                .collect();
                            if !on.is_empty() && on.iter().all(|d| d.3) {
                                problems.push(format!(
                                    "{what} targets port name `{t}`, declared only on the native sidecar `{}` of the {}: \
                                     such names get endpoints on recent Kubernetes only; target the number",
                                    on[0].0,
                                    pod.describe()
                                ));
                            }
                            !on.is_empty()
                        }
                        _ => false,
                    };
                    if !found {
                        problems.push(format!(
                            "{what} targets port {} that no container of the {} declares",
                            scalar(&target).unwrap_or_default(),
                            pod.describe()
                        ));
                    }
                }
            }
        }
    }

    pub(super) fn check_apps(&self, pod: &Pod, problems: &mut Vec<String>) {
        for r in pod.running() {
            if is_ours(r.c) {
                continue;
            }
            let image = str_at(r.c, &["image"]).unwrap_or_default();
            let what = format!("{} container {} ({image})", pod.describe(), r.name);
            let Some(seed) = SEED_IMAGES.iter().find(|s| image.starts_with(s.image)) else {
                problems.push(format!(
                    "{what}: not in SEED_IMAGES; add what it listens on and calls"
                ));
                continue;
            };
            for p in seq(r.c.get("ports")) {
                let n = p.get("containerPort").and_then(Value::as_u64).unwrap_or(0) as u16;
                if !seed.listens.contains(&n) {
                    problems.push(format!(
                        "{what} declares port {n}, but the image listens on {:?}",
                        seed.listens
                    ));
                }
            }
            let env: BTreeMap<String, String> = self
                .env_of(&pod.ns, r.c, problems, &what)
                .into_iter()
                .map(|(k, v)| (dotnet_name(&k), v))
                .collect();
            for peer in seed.peers {
                let (value, from) = match env.get(&dotnet_name(peer.var)) {
                    Some(v) => (v.as_str(), "the manifest"),
                    None => (peer.default, "the image's default"),
                };
                let checked =
                    address(value, peer.form).and_then(|(h, port)| self.reach(pod, &h, port));
                if let Err(e) = checked {
                    problems.push(format!(
                        "{what}: {} = `{value}` (from {from}): {e}",
                        peer.var
                    ));
                }
            }
        }
    }

    pub(super) fn check_sidecars(&self, pod: &Pod, problems: &mut Vec<String>) {
        for r in pod.running().into_iter().filter(|r| is_ours(r.c)) {
            let what = format!("{} sidecar {}", pod.describe(), r.name);
            let (_, pos) = parse_args(r.c);
            // Prometheus' `sidecars` job finds the admin port (the probes'
            // port) by its name.
            let port_name = match pos.first().map(String::as_str) {
                Some("logs") => "sidecar-logs",
                Some("postgres-exporter") => "sidecar-pg",
                Some("injector") => "sidecar-inj",
                _ => "sidecar-proxy",
            };
            let probe =
                r.c.get("startupProbe")
                    .and_then(|p| p.get("httpGet"))
                    .and_then(|h| h.get("port"))
                    .and_then(Value::as_u64);
            let named: Vec<u16> = pod
                .declared()
                .into_iter()
                .filter(|d| d.0 == r.name && d.2.as_deref() == Some(port_name))
                .map(|d| d.1)
                .collect();
            if named.len() != 1 || probe != Some(u64::from(named[0])) {
                problems.push(format!(
                    "{what}: its admin port (the probes' port, {probe:?}) must be declared once, named {port_name}"
                ));
            }
            match pos.first().map(String::as_str) {
                Some("proxy") => match self.proxy_of(pod, r.c) {
                    Some(Ok(cfg)) => {
                        let declared = pod.declared();
                        for l in &cfg.listeners {
                            if !l.listen.ip().is_loopback()
                                && !declared
                                    .iter()
                                    .any(|d| d.0 == r.name && d.1 == l.listen.port())
                            {
                                problems.push(format!("{what}: listener {} on {} is not a declared port of the container", l.name, l.listen));
                            }
                            for route in &l.routes {
                                if let Err(e) = address(&route.upstream, Form::HostPort)
                                    .and_then(|(h, p)| self.reach(pod, &h, p))
                                {
                                    problems
                                        .push(format!("{what}: upstream {}: {e}", route.upstream));
                                }
                            }
                        }
                        for url in cfg.tracing.zipkin.iter().chain(cfg.tracing.otlp.iter()) {
                            if let Err(e) =
                                address(url, Form::Url).and_then(|(h, p)| self.reach(pod, &h, p))
                            {
                                problems.push(format!("{what}: collector {url}: {e}"));
                            }
                        }
                    }
                    Some(Err(e)) => problems.push(format!("{what}: its configuration: {e}")),
                    None => {}
                },
                Some("postgres-exporter") => {
                    let env = self.env_of(&pod.ns, r.c, problems, &what);
                    let vars =
                        sidecar_pg_exporter::dsn::SourceVars::from_env(|k| env.get(k).cloned());
                    match vars
                        .map_err(|e| e.to_string())
                        .and_then(|v| v.source().map(|s| s.config).map_err(|e| e.to_string()))
                    {
                        Ok(cfg) => {
                            let ports = cfg.get_ports();
                            for (i, h) in cfg.get_hosts().iter().enumerate() {
                                let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
                                let host = match h {
                                    postgres::config::Host::Tcp(h) => h.clone(),
                                    #[allow(unreachable_patterns)]
                                    _ => {
                                        problems.push(format!(
                                            "{what}: a Unix socket cannot reach another container"
                                        ));
                                        continue;
                                    }
                                };
                                if let Err(e) = self.reach(pod, &host, port) {
                                    problems.push(format!("{what}: database {host}:{port}: {e}"));
                                }
                            }
                        }
                        Err(e) => problems.push(format!("{what}: its data source: {e}")),
                    }
                }
                Some("logs") => self.check_relay(pod, &r, &pos[1..], problems, &what),
                // The webhook server, not a sidecar: tests/deploy_injector.rs
                // checks its certificate, Service, webhook and RBAC.
                Some("injector") => {}
                other => problems.push(format!("{what}: unknown subcommand {other:?}")),
            }
        }
    }

    /// Each file the relay reads lies on a volume an app container writes.
    pub(super) fn check_relay(
        &self,
        pod: &Pod,
        relay: &Running,
        files: &[String],
        problems: &mut Vec<String>,
        what: &str,
    ) {
        if files.is_empty() {
            problems.push(format!("{what}: relays no file"));
        }
        for f in files {
            let mount = seq(relay.c.get("volumeMounts"))
                .into_iter()
                .filter(|m| {
                    str_at(m, &["mountPath"])
                        .is_some_and(|d| f.starts_with(&format!("{}/", d.trim_end_matches('/'))))
                })
                .max_by_key(|m| str_at(m, &["mountPath"]).map(str::len));
            let Some(mount) = mount else {
                problems.push(format!("{what}: {f} is not on a volume the relay mounts"));
                continue;
            };
            let vol = str_at(&mount, &["name"]).unwrap_or_default();
            let shared = pod.running().iter().any(|r| {
                !is_ours(r.c)
                    && seq(r.c.get("volumeMounts")).iter().any(|m| {
                        str_at(m, &["name"]) == Some(vol)
                            && m.get("readOnly").and_then(Value::as_bool) != Some(true)
                    })
            });
            if !shared {
                problems.push(format!(
                    "{what}: {f} is on volume {vol}, which no app container writes"
                ));
            }
        }
    }

    pub(super) fn check_scrape(&self, pod: &Pod, problems: &mut Vec<String>) {
        if let Some(port) = pod.annotations.get("prometheus.io/port") {
            let declared = pod.declared();
            if !declared.iter().any(|d| d.1.to_string() == *port) {
                problems.push(format!(
                    "{}: prometheus.io/port {port} is not a declared port",
                    pod.describe()
                ));
            }
        }
    }

    pub(super) fn check_security(&self, pod: &Pod, problems: &mut Vec<String>) {
        let level = pod_security_level(pod);
        let enforced = self
            .get("Namespace", "", &pod.ns)
            .and_then(|n| {
                str_at(
                    n,
                    &["metadata", "labels", "pod-security.kubernetes.io/enforce"],
                )
            })
            .unwrap_or("privileged");
        let rank = |l: &str| {
            ["privileged", "baseline", "restricted"]
                .iter()
                .position(|x| *x == l)
                .unwrap_or(0)
        };
        if rank(level.0) < rank(enforced) {
            problems.push(format!(
                "{}: namespace {} enforces Pod Security \"{enforced}\", which refuses it: {}",
                pod.describe(),
                pod.ns,
                level.1.join("; ")
            ));
        }
    }

    pub(super) fn check_fluent_bit(&self, problems: &mut Vec<String>) {
        for ((_, ns, name), _) in self.of_kind("ConfigMap") {
            let Some(conf) = self
                .data("ConfigMap", ns, name)
                .and_then(|d| d.get("fluent-bit.conf").cloned())
            else {
                continue;
            };
            let sections = fluent_bit_sections(&conf);
            let Some(pod) = self.pods().into_iter().find(|p| {
                p.running()
                    .iter()
                    .any(|r| str_at(r.c, &["image"]).is_some_and(|i| i.contains("fluent-bit")))
            }) else {
                problems.push(format!("ConfigMap {ns}/{name}: no Fluent Bit Pod uses it"));
                continue;
            };
            let what = format!("Fluent Bit ({ns}/{name})");
            let get =
                |s: &BTreeMap<String, String>, k: &str| s.get(&k.to_ascii_lowercase()).cloned();
            for (kind, s) in &sections {
                match (kind.as_str(), get(s, "name").as_deref()) {
                    ("service", _)
                        if get(s, "storage.keep.rejected").as_deref() != Some("On")
                            || get(s, "storage.path").is_none() =>
                    {
                        problems.push(format!("{what}: rejected chunks are not kept (storage.path, storage.keep.rejected On)"));
                    }
                    ("filter", Some("kubernetes"))
                        if get(s, "merge_log").as_deref() == Some("On")
                            && get(s, "merge_log_key").is_none() =>
                    {
                        problems.push(format!("{what}: Merge_Log without Merge_Log_Key: an app's own @timestamp collides with the output's"));
                    }
                    ("output", Some("es")) => {
                        let host = get(s, "host").unwrap_or_default();
                        let port = get(s, "port").and_then(|p| p.parse().ok()).unwrap_or(9200);
                        if let Err(e) = self.reach(&pod, &host, port) {
                            problems.push(format!("{what}: output to {host}:{port}: {e}"));
                        }
                        if get(s, "retry_limit").is_none_or(|r| r.parse::<u32>().is_err()) {
                            problems.push(format!("{what}: an es output has no numeric Retry_Limit: one bad chunk is retried forever"));
                        }
                        for k in ["Generate_ID", "Trace_Error"] {
                            if get(s, k).as_deref() != Some("On") {
                                problems.push(format!("{what}: an es output lacks {k} On"));
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

/// A Fluent Bit classic config as (section, keys in lower case).
pub(super) fn fluent_bit_sections(conf: &str) -> Vec<(String, BTreeMap<String, String>)> {
    let mut out: Vec<(String, BTreeMap<String, String>)> = Vec::new();
    for line in conf
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            out.push((s.to_ascii_lowercase(), BTreeMap::new()));
        } else if let (Some(last), Some((k, v))) =
            (out.last_mut(), line.split_once(char::is_whitespace))
        {
            last.1.insert(k.to_ascii_lowercase(), v.trim().to_string());
        }
    }
    out
}
