//! deploy/injector/ (issue 18) read as the cluster would run it: the
//! Deployment, its Service, the MutatingWebhookConfiguration that calls it,
//! cert-manager's Certificate for it, its RBAC and PDB agree with each other
//! and with the binary's contract (`sidecar injector --listen --admin
//! --tls-cert --tls-key --image`, `--generate-cert`'s default names).
//! Schemas: deploy.rs (kubernetes-validate, and cert-manager's CRD schemas);
//! the walk-through step and Pod Security: deploy.rs and common::cluster.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::{cluster, kube};
use serde_norway::Value;

const NS: &str = "sidecar-system";
/// What `sidecar injector --generate-cert` makes without options: the
/// Secret the Deployment must mount, for the Service in the namespace.
const GENERATE_CERT_SERVICE: &str = "sidecar-injector";
const GENERATE_CERT_SECRET: &str = "sidecar-injector-tls";
/// The image every manifest of deploy/ uses for our binary.
const IMAGE: &str = "sidecar:0.1.0";

fn at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, p| v.get(*p))
}

fn st<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    at(v, path).and_then(Value::as_str)
}

fn seq<'a>(v: &'a Value, path: &[&str]) -> Vec<&'a Value> {
    at(v, path)
        .and_then(Value::as_sequence)
        .map(|s| s.iter().collect())
        .unwrap_or_default()
}

fn strings(v: &Value, path: &[&str]) -> Vec<String> {
    seq(v, path)
        .into_iter()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect()
}

fn labels(v: Option<&Value>) -> BTreeMap<String, String> {
    v.and_then(Value::as_mapping)
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.as_str()?.to_string(), v.as_str()?.to_string())))
        .collect()
}

/// A metav1.LabelSelector (matchLabels, matchExpressions with In, NotIn,
/// Exists, DoesNotExist) applied to a set of labels, as the API server does:
/// NotIn and DoesNotExist hold for a label that is absent.
fn selects(selector: &Value, labels: &BTreeMap<String, String>) -> bool {
    let ml = at(selector, &["matchLabels"])
        .and_then(Value::as_mapping)
        .into_iter()
        .flatten()
        .all(|(k, v)| labels.get(k.as_str().unwrap()).map(String::as_str) == v.as_str());
    let me = seq(selector, &["matchExpressions"]).into_iter().all(|e| {
        let key = st(e, &["key"]).unwrap();
        let values = strings(e, &["values"]);
        let value = labels.get(key);
        match st(e, &["operator"]).unwrap() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            op => panic!("operator {op}"),
        }
    });
    ml && me
}

/// The documents of deploy/injector/ (the path without cert-manager) and of
/// deploy/injector/cert-manager/, each as (file, document).
struct Manifests {
    main: Vec<(String, Value)>,
    cert_manager: Vec<(String, Value)>,
}

impl Manifests {
    fn read(root: &Path) -> Self {
        let dir = |d: &Path| {
            let mut files: Vec<_> = std::fs::read_dir(d)
                .unwrap()
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "yaml"))
                .collect();
            files.sort();
            files
                .iter()
                .flat_map(|f| {
                    let name = f.file_name().unwrap().to_string_lossy().into_owned();
                    kube::documents(&std::fs::read_to_string(f).unwrap())
                        .into_iter()
                        .map(move |d| (name.clone(), d))
                })
                .collect::<Vec<_>>()
        };
        Manifests {
            main: dir(&root.join("injector")),
            cert_manager: dir(&root.join("injector/cert-manager")),
        }
    }

    fn all(&self) -> impl Iterator<Item = &Value> {
        self.main.iter().chain(&self.cert_manager).map(|(_, d)| d)
    }

    fn of_kind(&self, kind: &str) -> impl Iterator<Item = &Value> + use<'_> {
        let kind = kind.to_string();
        self.all()
            .filter(move |d| st(d, &["kind"]) == Some(kind.as_str()))
    }

    /// The one object of a kind and name in `ns` ("" for cluster-scoped).
    fn get(&self, kind: &str, ns: &str, name: &str) -> Result<&Value, String> {
        let found: Vec<_> = self
            .of_kind(kind)
            .filter(|d| {
                st(d, &["metadata", "name"]) == Some(name)
                    && st(d, &["metadata", "namespace"]).unwrap_or("") == ns
            })
            .collect();
        match found.as_slice() {
            [one] => Ok(one),
            [] => Err(format!("no {kind} {ns}/{name}")),
            _ => Err(format!("{} objects {kind} {ns}/{name}", found.len())),
        }
    }
}

/// A flag's value from a container's args (`--flag value` or
/// `--flag=value`), else its environment variable's.
fn setting(c: &Value, flag: &str, env: Option<&str>) -> Option<String> {
    let args = strings(c, &["args"]);
    let mut found = None;
    for (i, a) in args.iter().enumerate() {
        if a == flag {
            found = args.get(i + 1).cloned();
        } else if let Some(v) = a.strip_prefix(&format!("{flag}=")) {
            found = Some(v.to_string());
        }
    }
    found.or_else(|| {
        let env = env?;
        seq(c, &["env"])
            .into_iter()
            .find(|e| st(e, &["name"]) == Some(env))
            .and_then(|e| st(e, &["value"]).map(str::to_string))
    })
}

fn port_of(addr: &str) -> Option<u64> {
    addr.rsplit_once(':')?.1.parse().ok()
}

/// A container port by number or name: (number, name).
fn container_port(c: &Value, target: &Value) -> Option<(u64, Option<String>)> {
    seq(c, &["ports"])
        .into_iter()
        .map(|p| {
            (
                at(p, &["containerPort"]).and_then(Value::as_u64).unwrap(),
                st(p, &["name"]).map(str::to_string),
            )
        })
        .find(|(n, name)| match target {
            Value::Number(t) => t.as_u64() == Some(*n),
            Value::String(t) => name.as_deref() == Some(t),
            _ => false,
        })
}

/// Every way the manifests under `root` disagree with each other, with the
/// binary's contract or with what the injector needs.
fn problems(root: &Path) -> Vec<String> {
    let m = Manifests::read(root);
    let mut p = Vec::new();
    macro_rules! need {
        ($e:expr) => {
            match $e {
                Ok(v) => v,
                Err(e) => {
                    p.push(e);
                    return p;
                }
            }
        };
    }

    // The path without cert-manager applies with no CRD installed.
    for (f, d) in &m.main {
        if kube::is_custom_resource(d) {
            p.push(format!(
                "injector/{f}: {} needs cert-manager; it belongs in injector/cert-manager/",
                st(d, &["kind"]).unwrap_or("?")
            ));
        }
    }
    for (f, d) in &m.cert_manager {
        if !kube::is_custom_resource(d) {
            p.push(format!(
                "injector/cert-manager/{f}: {} is not cert-manager's",
                st(d, &["kind"]).unwrap_or("?")
            ));
        }
    }
    // Everything namespaced is in sidecar-system.
    for d in m.all() {
        let kind = st(d, &["kind"]).unwrap_or("?");
        let cluster_scoped = [
            "Namespace",
            "ClusterRole",
            "ClusterRoleBinding",
            "MutatingWebhookConfiguration",
        ]
        .contains(&kind);
        let ns = st(d, &["metadata", "namespace"]);
        if !cluster_scoped && ns != Some(NS) {
            p.push(format!(
                "{kind} {:?} is in namespace {ns:?}, not {NS}",
                st(d, &["metadata", "name"])
            ));
        }
    }

    // The namespace enforces Pod Security "restricted".
    let namespace = need!(m.get("Namespace", "", NS));
    let mut ns_labels = labels(at(namespace, &["metadata", "labels"]));
    if ns_labels
        .get("pod-security.kubernetes.io/enforce")
        .map(String::as_str)
        != Some("restricted")
    {
        p.push(format!(
            "Namespace {NS} does not enforce Pod Security restricted"
        ));
    }
    // The API server labels every namespace with its name.
    ns_labels.insert("kubernetes.io/metadata.name".into(), NS.into());

    // The Deployment and its container of ours running `injector`.
    let deploy = need!(m.get("Deployment", NS, "sidecar-injector"));
    let replicas = at(deploy, &["spec", "replicas"])
        .and_then(Value::as_u64)
        .unwrap_or(1);
    if replicas < 2 {
        p.push(format!(
            "Deployment: {replicas} replica(s); a webhook needs 2 to survive a drain"
        ));
    }
    let template = at(deploy, &["spec", "template"]).unwrap();
    let pod_labels = labels(at(template, &["metadata", "labels"]));
    if !selects(at(deploy, &["spec", "selector"]).unwrap(), &pod_labels) {
        p.push("Deployment: its selector does not select its template's labels".into());
    }
    let spec = at(template, &["spec"]).unwrap();
    let containers = seq(spec, &["containers"]);
    let Some(c) = containers.iter().copied().find(|c| {
        st(c, &["image"]).is_some_and(|i| i.starts_with("sidecar:"))
            && strings(c, &["args"]).first().map(String::as_str) == Some("injector")
    }) else {
        p.push("Deployment: no container runs `sidecar injector`".into());
        return p;
    };
    if st(c, &["image"]) != Some(IMAGE) || st(c, &["imagePullPolicy"]) != Some("IfNotPresent") {
        p.push(format!("the injector's image is not {IMAGE} with imagePullPolicy IfNotPresent, as in the rest of deploy/"));
    }
    let injected = setting(c, "--image", Some("SIDECAR_INJECT_IMAGE"));
    if injected.as_deref() != Some(IMAGE) {
        p.push(format!(
            "the injector adds the image {injected:?}, not {IMAGE}"
        ));
    }
    let listen = setting(c, "--listen", Some("SIDECAR_INJECTOR_LISTEN")).and_then(|a| port_of(&a));
    let admin = setting(c, "--admin", Some("SIDECAR_INJECTOR_ADMIN")).and_then(|a| port_of(&a));
    let (Some(listen), Some(admin)) = (listen, admin) else {
        p.push(format!(
            "the injector's --listen ({listen:?}) and --admin ({admin:?}) need a port each"
        ));
        return p;
    };
    for (what, port) in [("--listen", listen), ("--admin", admin)] {
        if container_port(c, &Value::from(port)).is_none() {
            p.push(format!(
                "the injector's {what} port {port} is not a declared container port"
            ));
        }
    }
    // Probes on the admin port (by number or by a name declared for it).
    for (probe, path) in [
        ("startupProbe", "/ready"),
        ("readinessProbe", "/ready"),
        ("livenessProbe", "/live"),
    ] {
        let port = at(c, &[probe, "httpGet", "port"]).and_then(|t| container_port(c, t));
        let got = st(c, &[probe, "httpGet", "path"]);
        if port.as_ref().map(|p| p.0) != Some(admin) || got != Some(path) {
            p.push(format!(
                "the injector's {probe} is {got:?} on {port:?}, not {path} on the admin port {admin}"
            ));
        }
        if st(c, &[probe, "httpGet", "scheme"]).is_some_and(|s| s != "HTTP") {
            p.push(format!(
                "the injector's {probe}: the admin port is plain HTTP"
            ));
        }
    }
    // The TLS files: tls.crt and tls.key of one Secret volume, mounted
    // read-only as a directory (a subPath mount never sees a renewal).
    let mut tls_secret = None;
    for (flag, file) in [("--tls-cert", "tls.crt"), ("--tls-key", "tls.key")] {
        let Some(path) = setting(c, flag, None) else {
            p.push(format!("the injector has no {flag}"));
            continue;
        };
        let mount = seq(c, &["volumeMounts"]).into_iter().find(|mt| {
            st(mt, &["mountPath"])
                .is_some_and(|d| path == format!("{}/{file}", d.trim_end_matches('/')))
        });
        let Some(mount) = mount else {
            p.push(format!(
                "{flag} {path}: not {file} in a directory the container mounts"
            ));
            continue;
        };
        if at(mount, &["readOnly"]).and_then(Value::as_bool) != Some(true)
            || at(mount, &["subPath"]).is_some()
        {
            p.push(format!(
                "{flag} {path}: its mount must be readOnly and without subPath"
            ));
        }
        let vol = seq(spec, &["volumes"])
            .into_iter()
            .find(|v| st(v, &["name"]) == st(mount, &["name"]));
        match vol.and_then(|v| st(v, &["secret", "secretName"])) {
            Some(s) => {
                if tls_secret.is_some_and(|t| t != s) {
                    p.push("--tls-cert and --tls-key come from different Secrets".into());
                }
                tls_secret = Some(s);
            }
            None => p.push(format!("{flag} {path}: its volume is not a Secret")),
        }
    }
    let tls_secret = tls_secret.unwrap_or_default().to_string();
    if tls_secret != GENERATE_CERT_SECRET {
        p.push(format!(
            "the Deployment mounts Secret {tls_secret:?}; `sidecar injector --generate-cert` makes {GENERATE_CERT_SECRET:?}"
        ));
    }
    // Pod Security "restricted" (the cluster's own check), read-only root.
    let pod = cluster::Pod {
        ns: NS.into(),
        name: "sidecar-injector".into(),
        labels: pod_labels.clone(),
        annotations: BTreeMap::new(),
        spec,
    };
    let (level, why) = cluster::security::pod_security_level(&pod);
    if level != "restricted" {
        p.push(format!(
            "the injector's Pod is {level}, not restricted: {}",
            why.join("; ")
        ));
    }
    if at(c, &["securityContext", "readOnlyRootFilesystem"]).and_then(Value::as_bool) != Some(true)
    {
        p.push("the injector's root filesystem is writable".into());
    }

    // The ServiceAccount, its token, and exactly `get` on namespaces.
    let sa = st(spec, &["serviceAccountName"]).unwrap_or("default");
    if let Err(e) = m.get("ServiceAccount", NS, sa) {
        p.push(format!("the Deployment's ServiceAccount: {e}"));
    }
    if at(spec, &["automountServiceAccountToken"]).and_then(Value::as_bool) == Some(false) {
        p.push("the injector gets no token to read Namespaces with".into());
    }
    let mut granted = Vec::new();
    for b in m
        .of_kind("ClusterRoleBinding")
        .chain(m.of_kind("RoleBinding"))
    {
        let for_sa = seq(b, &["subjects"]).into_iter().any(|s| {
            st(s, &["kind"]) == Some("ServiceAccount")
                && st(s, &["name"]) == Some(sa)
                && st(s, &["namespace"]) == Some(NS)
        });
        if !for_sa {
            p.push(format!(
                "binding {:?} binds something but the injector's ServiceAccount",
                st(b, &["metadata", "name"])
            ));
            continue;
        }
        let kind = st(b, &["roleRef", "kind"]).unwrap_or_default();
        let ns = if kind == "Role" {
            st(b, &["metadata", "namespace"]).unwrap_or_default()
        } else {
            ""
        };
        match m.get(kind, ns, st(b, &["roleRef", "name"]).unwrap_or_default()) {
            Ok(role) => {
                for r in seq(role, &["rules"]) {
                    for g in strings(r, &["apiGroups"]) {
                        for res in strings(r, &["resources"]) {
                            for v in strings(r, &["verbs"]) {
                                granted.push((g.clone(), res.clone(), v));
                            }
                        }
                    }
                    if at(r, &["resourceNames"]).is_some() || at(r, &["nonResourceURLs"]).is_some()
                    {
                        p.push(
                            "the injector's rules name resources or URLs: it reads any Namespace"
                                .into(),
                        );
                    }
                }
            }
            Err(e) => p.push(format!("the injector's binding's roleRef: {e}")),
        }
    }
    if granted != [(String::new(), "namespaces".to_string(), "get".to_string())] {
        p.push(format!(
            "the injector's ServiceAccount is granted {granted:?}, not exactly get on namespaces"
        ));
    }

    // The Service: selects the Pods, each targetPort a declared port, 443 to --listen.
    let svc = need!(m.get("Service", NS, GENERATE_CERT_SERVICE));
    let svc_selects = at(svc, &["spec", "selector"]).is_some_and(|s| {
        let mut sel = serde_norway::Mapping::new();
        sel.insert("matchLabels".into(), s.clone());
        selects(&Value::Mapping(sel), &pod_labels)
    });
    if !svc_selects {
        p.push("Service sidecar-injector does not select the injector's Pods".into());
    }
    let mut svc_ports = BTreeMap::new();
    for sp in seq(svc, &["spec", "ports"]) {
        let port = at(sp, &["port"]).and_then(Value::as_u64).unwrap();
        let target = at(sp, &["targetPort"]).or(at(sp, &["port"])).unwrap();
        match container_port(c, target) {
            Some((n, _)) => {
                svc_ports.insert(port, n);
            }
            None => p.push(format!(
                "Service port {port}: targetPort {target:?} is no container port of the injector"
            )),
        }
        if !target.is_string() {
            p.push(format!(
                "Service port {port}: target the container port by name"
            ));
        }
    }
    if svc_ports.get(&443) != Some(&listen) {
        p.push(format!(
            "Service port 443 does not reach the injector's --listen port {listen}"
        ));
    }

    // The webhook: calls the Service, on pods CREATE, never on itself.
    let hook = need!(m.get("MutatingWebhookConfiguration", "", "sidecar-injector"));
    let webhooks = seq(hook, &["webhooks"]);
    if webhooks.len() != 1 {
        p.push(format!("{} webhooks; one expected", webhooks.len()));
    }
    for w in webhooks {
        let name = st(w, &["name"]).unwrap_or("?");
        let what = format!("webhook {name}");
        let cs = at(w, &["clientConfig", "service"]);
        let to = (
            cs.and_then(|s| st(s, &["name"])),
            cs.and_then(|s| st(s, &["namespace"])),
            cs.and_then(|s| at(s, &["port"]))
                .and_then(Value::as_u64)
                .unwrap_or(443),
            cs.and_then(|s| st(s, &["path"])),
        );
        if (to.0, to.1, svc_ports.get(&to.2), to.3)
            != (
                Some(GENERATE_CERT_SERVICE),
                Some(NS),
                Some(&listen),
                Some("/mutate"),
            )
        {
            p.push(format!("{what}: clientConfig.service {to:?} is not the Service's port to --listen, path /mutate"));
        }
        if at(w, &["clientConfig", "url"]).is_some() {
            p.push(format!("{what}: a url besides the Service"));
        }
        let rules = seq(w, &["rules"]);
        let pods_create = rules.iter().any(|r| {
            strings(r, &["operations"]) == ["CREATE"]
                && strings(r, &["apiGroups"]) == [""]
                && strings(r, &["apiVersions"]) == ["v1"]
                && strings(r, &["resources"]) == ["pods"]
        });
        if rules.len() != 1 || !pods_create {
            p.push(format!("{what}: rules are not exactly pods CREATE in v1"));
        }
        for (field, want) in [
            ("failurePolicy", "Ignore"),
            ("sideEffects", "None"),
            ("reinvocationPolicy", "IfNeeded"),
            ("matchPolicy", "Equivalent"),
        ] {
            if st(w, &[field]) != Some(want) {
                p.push(format!(
                    "{what}: {field} is {:?}, not {want}",
                    st(w, &[field])
                ));
            }
        }
        if strings(w, &["admissionReviewVersions"]) != ["v1"] {
            p.push(format!("{what}: admissionReviewVersions is not [v1]"));
        }
        let timeout = at(w, &["timeoutSeconds"]).and_then(Value::as_u64);
        if timeout != Some(5) {
            p.push(format!("{what}: timeoutSeconds {timeout:?}, not 5"));
        }
        // Which namespaces' Pods it sees.
        let ns_sel = at(w, &["namespaceSelector"])
            .cloned()
            .unwrap_or(Value::Null);
        let ns_labels_of = |name: &str, opted_in: bool| {
            let mut l =
                BTreeMap::from([("kubernetes.io/metadata.name".to_string(), name.to_string())]);
            if opted_in {
                l.insert("sidecar.dev/injection".into(), "enabled".into());
            }
            l
        };
        for (ns, opted_in, want) in [
            ("default", true, true),
            ("shop", true, true),
            ("default", false, false),
            ("kube-system", true, false),
            (NS, true, false),
        ] {
            if selects(&ns_sel, &ns_labels_of(ns, opted_in)) != want {
                p.push(format!(
                    "{what}: namespace {ns} (opted in: {opted_in}) is {}selected",
                    if want { "not " } else { "" }
                ));
            }
        }
        if selects(&ns_sel, &ns_labels) {
            p.push(format!(
                "{what}: its namespaceSelector selects the injector's own namespace"
            ));
        }
        // Which Pods: the injector's own never.
        let obj_sel = at(w, &["objectSelector"]).cloned().unwrap_or(Value::Null);
        let pod_with = |kv: &[(&str, &str)]| -> BTreeMap<String, String> {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        for (l, want) in [
            (pod_with(&[("app", "web")]), true),
            (
                pod_with(&[("app", "web"), ("sidecar.dev/inject", "true")]),
                true,
            ),
            (
                pod_with(&[("app", "web"), ("sidecar.dev/inject", "false")]),
                false,
            ),
        ] {
            if selects(&obj_sel, &l) != want {
                p.push(format!(
                    "{what}: objectSelector on a Pod labelled {l:?}: {}",
                    !want
                ));
            }
        }
        if selects(&obj_sel, &pod_labels) {
            p.push(format!("{what}: its objectSelector selects the injector's own Pods: label them sidecar.dev/inject: \"false\""));
        }
    }

    // cert-manager: the annotation names the serving Certificate, which
    // makes the mounted Secret for the Service's names, signed by a CA Issuer.
    let inject_from = st(
        hook,
        &["metadata", "annotations", "cert-manager.io/inject-ca-from"],
    )
    .unwrap_or_default();
    let Some((cert_ns, cert_name)) = inject_from.split_once('/') else {
        p.push(format!(
            "cert-manager.io/inject-ca-from is {inject_from:?}, not NAMESPACE/CERTIFICATE"
        ));
        return p;
    };
    let cert = need!(
        m.get("Certificate", cert_ns, cert_name)
            .map_err(|e| format!("cert-manager.io/inject-ca-from: {e}"))
    );
    if st(cert, &["spec", "secretName"]) != Some(tls_secret.as_str()) {
        p.push(format!(
            "Certificate {cert_name} makes Secret {:?}; the Deployment mounts {tls_secret:?}",
            st(cert, &["spec", "secretName"])
        ));
    }
    let dns = strings(cert, &["spec", "dnsNames"]);
    for want in [
        format!("{GENERATE_CERT_SERVICE}.{NS}.svc"),
        format!("{GENERATE_CERT_SERVICE}.{NS}.svc.cluster.local"),
    ] {
        if !dns.contains(&want) {
            p.push(format!("Certificate {cert_name}: dnsNames {dns:?} lack {want} (the name the API server calls)"));
        }
    }
    let usages = strings(cert, &["spec", "usages"]);
    if !usages.is_empty() && !usages.iter().any(|u| u == "server auth") {
        p.push(format!(
            "Certificate {cert_name}: usages {usages:?} lack server auth"
        ));
    }
    if at(cert, &["spec", "isCA"]).and_then(Value::as_bool) == Some(true) {
        p.push(format!(
            "Certificate {cert_name}: a serving certificate, not a CA"
        ));
    }
    // Its issuer: an Issuer here, of kind CA, whose Secret a CA Certificate
    // makes, itself issued by a self-signed Issuer.
    let issuer_of = |c: &Value, p: &mut Vec<String>| -> Option<Value> {
        let kind = st(c, &["spec", "issuerRef", "kind"]).unwrap_or("Issuer");
        let group = st(c, &["spec", "issuerRef", "group"]).unwrap_or("cert-manager.io");
        let name = st(c, &["spec", "issuerRef", "name"]).unwrap_or_default();
        let cname = st(c, &["metadata", "name"]).unwrap_or("?");
        if kind != "Issuer" || group != "cert-manager.io" {
            p.push(format!(
                "Certificate {cname}: issuerRef is a {group} {kind}, not an Issuer of these files"
            ));
            return None;
        }
        match m.get("Issuer", cert_ns, name) {
            Ok(i) => Some(i.clone()),
            Err(e) => {
                p.push(format!("Certificate {cname}: issuerRef: {e}"));
                None
            }
        }
    };
    if let Some(issuer) = issuer_of(cert, &mut p) {
        match st(&issuer, &["spec", "ca", "secretName"]) {
            None => p.push("the serving Certificate's Issuer is not a CA Issuer".into()),
            Some(ca_secret) => {
                let ca = m.of_kind("Certificate").find(|c| {
                    st(c, &["spec", "secretName"]) == Some(ca_secret)
                        && st(c, &["metadata", "namespace"]) == Some(cert_ns)
                });
                match ca {
                    None => p.push(format!("no Certificate makes the CA Secret {ca_secret}")),
                    Some(ca) => {
                        if at(ca, &["spec", "isCA"]).and_then(Value::as_bool) != Some(true) {
                            p.push(format!("the Certificate making {ca_secret} is not isCA"));
                        }
                        if let Some(root) = issuer_of(ca, &mut p) {
                            if at(&root, &["spec", "selfSigned"]).is_none() {
                                p.push("the CA Certificate's Issuer is not selfSigned".into());
                            }
                        }
                    }
                }
            }
        }
    }

    // The PDB: keeps one of the replicas.
    let pdbs: Vec<_> = m.of_kind("PodDisruptionBudget").collect();
    match pdbs.as_slice() {
        [pdb] => {
            if !selects(at(pdb, &["spec", "selector"]).unwrap(), &pod_labels) {
                p.push("the PodDisruptionBudget does not select the injector's Pods".into());
            }
            let min = at(pdb, &["spec", "minAvailable"]).and_then(Value::as_u64);
            if !min.is_some_and(|n| n >= 1 && n < replicas) {
                p.push(format!("PodDisruptionBudget minAvailable {min:?}: at least 1 and below the {replicas} replicas, or no node drains"));
            }
        }
        _ => p.push(format!("{} PodDisruptionBudgets; one expected", pdbs.len())),
    }
    p
}

#[test]
fn the_injector_manifests_agree_with_each_other_and_the_binary() {
    let p = problems(&kube::deploy_root());
    assert!(p.is_empty(), "deploy/injector:\n  - {}", p.join("\n  - "));
}

/// Both install paths, applied to an empty cluster as the walk-through says:
/// without cert-manager (deploy/injector/, after `--generate-cert`'s Secret),
/// then cert-manager's objects; each leaves nothing a cluster would refuse.
#[test]
fn both_install_paths_apply_on_an_empty_cluster() {
    let root = kube::deploy_root();
    let mut c = cluster::Cluster::default();
    let mut p = c.apply_dir(&root.join("injector"));
    p.extend(c.problems());
    assert!(
        p.is_empty(),
        "without cert-manager:\n  - {}",
        p.join("\n  - ")
    );
    let mut p = c.apply_dir(&root.join("injector/cert-manager"));
    p.extend(c.problems());
    assert!(p.is_empty(), "with cert-manager:\n  - {}", p.join("\n  - "));
    let mut c = cluster::Cluster::default();
    let p = c.apply_dir(&root.join("injector/cert-manager"));
    assert!(
        p.iter()
            .any(|p| p.contains("namespace \"sidecar-system\" not found")),
        "cert-manager/ before injector/ should need the namespace: {p:?}"
    );
}

/// Each check fails on the fault it is there for.
#[test]
fn the_injector_checks_catch_each_fault() {
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "injector/injector.yaml",
            "            - 0.0.0.0:8443",
            "            - 0.0.0.0:8444",
            "--listen port 8444 is not a declared container port",
        ),
        (
            "injector/injector.yaml",
            "            - /tls/tls.key",
            "            - /etc/tls/tls.key",
            "--tls-key /etc/tls/tls.key: not tls.key in a directory the container mounts",
        ),
        (
            "injector/injector.yaml",
            "              readOnly: true",
            "              subPath: tls.crt",
            "its mount must be readOnly and without subPath",
        ),
        (
            "injector/injector.yaml",
            "              path: /live\n              port: 9465",
            "              path: /live\n              port: 8443",
            "livenessProbe is Some(\"/live\") on Some((8443",
        ),
        (
            "injector/injector.yaml",
            "    verbs: [\"get\"]",
            "    verbs: [\"get\", \"list\"]",
            "not exactly get on namespaces",
        ),
        (
            "injector/injector.yaml",
            "  minAvailable: 1",
            "  minAvailable: 2",
            "PodDisruptionBudget minAvailable Some(2)",
        ),
        (
            "injector/injector.yaml",
            "        sidecar.dev/inject: \"false\"",
            "        sidecar.dev/inject: \"no\"",
            "its objectSelector selects the injector's own Pods",
        ),
        (
            "injector/injector.yaml",
            "  replicas: 2",
            "  replicas: 1",
            "1 replica(s)",
        ),
        (
            "injector/injector.yaml",
            "            drop: [\"ALL\"]",
            "            drop: [\"NET_RAW\"]",
            "the injector's Pod is baseline, not restricted",
        ),
        (
            "injector/webhook.yaml",
            "          values: [\"kube-system\", \"sidecar-system\"]",
            "          values: [\"kube-system\"]",
            "namespace sidecar-system (opted in: true) is selected",
        ),
        (
            "injector/webhook.yaml",
            "        port: 443",
            "        port: 8443",
            "clientConfig.service",
        ),
        (
            "injector/webhook.yaml",
            "sidecar-system/sidecar-injector",
            "sidecar-system/sidecar-injector-tls",
            "inject-ca-from: no Certificate sidecar-system/sidecar-injector-tls",
        ),
        (
            "injector/webhook.yaml",
            "failurePolicy: Ignore",
            "failurePolicy: Fail",
            "failurePolicy is Some(\"Fail\"), not Ignore",
        ),
        (
            "injector/cert-manager/certificates.yaml",
            "    - sidecar-injector.sidecar-system.svc\n",
            "",
            "lack sidecar-injector.sidecar-system.svc (the name",
        ),
        (
            "injector/cert-manager/certificates.yaml",
            "  secretName: sidecar-injector-tls",
            "  secretName: injector-tls",
            "makes Secret Some(\"injector-tls\"); the Deployment mounts",
        ),
        (
            "injector/cert-manager/certificates.yaml",
            "    name: sidecar-injector-ca\n",
            "    name: sidecar-injector-selfsigned\n",
            "not a CA Issuer",
        ),
        (
            "injector/cert-manager/certificates.yaml",
            "  isCA: true\n",
            "",
            "is not isCA",
        ),
    ];
    for (file, from, to, expected) in cases {
        let dir = kube::deploy_copy_with(file, from, to);
        let p = problems(dir.path()).join("\n");
        assert!(
            p.contains(expected),
            "{file}: {from:?} -> {to:?}: expected a problem containing {expected:?}, got:\n{p}"
        );
    }
}

/// The walk-through's demo: demo 1's website as deploy/demo1/ has it, with
/// only `sidecar.dev/logs` added to its pod template (the `kubectl patch`
/// of deploy-injector-walkthrough.md), in a namespace that opted in. The
/// injector adds what `sidecar inject` adds from the same annotations (its
/// contract); until it exists, `sidecar inject` stands in for it here. The
/// Pod it makes runs as the cluster would run it: the relay reads the
/// volume the website writes, its admin port is named for Prometheus, the
/// checks of deploy.rs pass.
#[test]
fn demo_1s_website_with_only_the_annotation_gets_its_relay() {
    let root = kube::deploy_root();
    let text = std::fs::read_to_string(root.join("demo1/widgetario.yaml")).unwrap();
    let mut web = kube::documents(&text)
        .into_iter()
        .find(|d| {
            st(d, &["kind"]) == Some("Deployment") && st(d, &["metadata", "name"]) == Some("web")
        })
        .unwrap();
    let meta = web["spec"]["template"]["metadata"]
        .as_mapping_mut()
        .unwrap();
    let mut annotations = serde_norway::Mapping::new();
    annotations.insert("sidecar.dev/logs".into(), "/logs/app.log".into());
    assert!(
        meta.insert("annotations".into(), Value::Mapping(annotations))
            .is_none()
    );
    let out = common::run_with_input(
        std::process::Command::new(common::BIN).args(["inject", "-f", "-"]),
        serde_norway::to_string(&web).unwrap().as_bytes(),
        "cannot start it",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let injected = String::from_utf8(out.stdout).unwrap();
    let docs = kube::documents(&injected);
    assert_eq!(docs.len(), 1);
    let template = kube::pod_template(&docs[0]).unwrap();
    let relay = kube::container(template, "sidecar-logs").expect("the relay");
    assert!(
        strings(relay, &["args"])
            .iter()
            .any(|a| a == "/logs/app.log"),
        "{injected}"
    );
    assert_eq!(kube::check_rules(&docs[0], "injected web"), 1);
    assert_eq!(kube::check_metrics_ports(&docs[0], "injected web"), 1);

    // demo 1 (setup, logging, demo1), then the injected Pod in its place.
    let mut c = cluster::Cluster::default();
    let mut p = Vec::new();
    for d in ["setup", "logging", "demo1"] {
        p.extend(c.apply_dir(&root.join(d)));
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("web.yaml"), &injected).unwrap();
    p.extend(c.apply_dir(dir.path()));
    p.extend(c.problems());
    assert!(p.is_empty(), "{}\n{injected}", p.join("\n"));
}
