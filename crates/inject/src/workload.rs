//! One workload: reads what its pod template asks for, builds our
//! containers in a fixed order (exporter, proxy, logs) with the ports they
//! take, stops on a port taken twice, gives the relay its mounts, then puts
//! the sidecars first in `initContainers` (those of an earlier injection
//! are replaced where they are) and adds the `prometheus.io/*` annotations.

use serde_norway::Value;
use sidecar_telemetry::ports;

use crate::annotations::{
    Asked, EXPORTER, EXPORTER_ADMIN_PORT, LOGS_ADMIN_PORT, PROXY, PROXY_ADMIN_PORT, PROXY_INBOUND,
    check_name, misplaced_annotations, unused_annotations,
};
use crate::containers::{Options, exporter_container, logs_container, proxy_container};
use crate::notes::Level;
use crate::ports::{
    ADMIN_ROLE, Claim, Fix, OurPorts, app_claims, check_ports, prometheus_annotations,
};
use crate::proxy_config::ProxyConfig;
use crate::services::Route;
use crate::template::{
    EXPORTER_NAME, LOGS_NAME, OURS, PROXY_NAME, annotations_of, containers, is_ours, name_of,
    template_path,
};
use crate::value::{kind_of, mapping_at, seq_at, str_at};
use crate::volumes::{PROXY_DIR, ensure_proxy_volume, ensure_state_volume, log_mounts, state_dir};

/// What injecting into one object did.
#[derive(Default)]
pub(crate) struct Outcome {
    pub(crate) changed: bool,
    pub(crate) notes: Vec<(Level, String)>,
    /// For the Services, when an inbound proxy was added.
    pub(crate) route: Option<Route>,
}

/// `--admin=0.0.0.0:PORT` when the port was given by annotation.
fn admin_arg(args: &mut Vec<String>, annotated: Option<u16>, port: u16) {
    if annotated.is_some() {
        args.push(format!("--admin={}", ports::all_interfaces(port)));
    }
}

/// The service name in the inbound proxy's spans: the object's name; for a
/// Pod a controller creates (the webhook sees it before it has a name), its
/// `generateName` without the trailing `-` and the ReplicaSet's
/// `pod-template-hash`, i.e. the Deployment's name; else `app`.
fn service_name(obj: &Value) -> String {
    if let Some(name) = str_at(obj, &["metadata", "name"]) {
        return name.to_string();
    }
    let Some(base) = str_at(obj, &["metadata", "generateName"])
        .map(|g| g.trim_end_matches('-'))
        .filter(|g| !g.is_empty())
    else {
        return "app".to_string();
    };
    let hash = str_at(obj, &["metadata", "labels", "pod-template-hash"]);
    hash.and_then(|h| base.strip_suffix(h)?.strip_suffix('-'))
        .filter(|b| !b.is_empty())
        .unwrap_or(base)
        .to_string()
}

/// Puts `sidecars` (native sidecars, in their fixed order) in `init`,
/// replacing an earlier injection: one of ours already there is replaced
/// where it is (another webhook may have put its own init containers
/// before it, as Istio's iptables init does, and injecting again must not
/// undo that); a new one goes just before the next of ours already there,
/// or after the previous one, or first when none is there; ours no longer
/// asked for (and a second of one name) are removed.
fn place_sidecars(init: &mut Vec<Value>, sidecars: Vec<Value>) {
    let mut seen = Vec::new();
    init.retain(|c| {
        let name = name_of(c).to_string();
        if !is_ours(c) {
            return true;
        }
        let keep = !seen.contains(&name) && sidecars.iter().any(|s| name_of(s) == name);
        seen.push(name);
        keep
    });
    let mut previous: Option<usize> = None;
    for c in sidecars {
        if let Some(i) = init
            .iter()
            .position(|old| is_ours(old) && name_of(old) == name_of(&c))
        {
            init[i] = c;
            previous = Some(i);
            continue;
        }
        let at = match previous {
            Some(p) => p + 1,
            None => init.iter().position(is_ours).unwrap_or(0),
        };
        init.insert(at, c);
        previous = Some(at);
    }
}

/// The app's containers: at least one, and none with the name of one of
/// ours (the Pod would have two containers of one name, which the API
/// server refuses; and injecting again would not find its own).
fn check_app_containers(template: &Value) -> Result<(), String> {
    if containers(template, "containers").next().is_none() {
        return Err(
            "the pod template has no containers: add the app's container before asking for sidecars"
                .into(),
        );
    }
    if let Some(c) = containers(template, "containers").find(|c| is_ours(c)) {
        return Err(format!(
            "the app's container `{}` has the name of one of the sidecars ({}); rename it",
            name_of(c),
            OURS.join(", ")
        ));
    }
    Ok(())
}

/// Injects into one object if it is a workload that asks for sidecars.
pub(crate) fn inject_object(
    obj: &mut Value,
    opts: &Options,
    configs: &[ProxyConfig],
) -> Result<Outcome, String> {
    let mut out = Outcome::default();
    let Some(kind) = kind_of(obj).map(str::to_string) else {
        return Ok(out);
    };
    let Some(path) = template_path(&kind) else {
        return Ok(out);
    };
    let name = service_name(obj);
    let namespace = str_at(obj, &["metadata", "namespace"]).map(str::to_string);
    let template_ann = path
        .iter()
        .try_fold(&*obj, |v, p| v.get(*p))
        .map(annotations_of)
        .unwrap_or_default();
    misplaced_annotations(obj, &kind, path, &template_ann, &mut out.notes);
    let Some(template) = path.iter().try_fold(obj, |v, p| v.get_mut(*p)) else {
        return Ok(out);
    };
    if !template.is_mapping() {
        return Ok(out);
    }
    unused_annotations(&template_ann, &mut out.notes);
    let Some(asked) = Asked::read(&template_ann)? else {
        return Ok(out);
    };
    check_app_containers(template)?;
    out.changed = true;

    // Our containers, and the ports they take, in a fixed order.
    let mut sidecars = Vec::new();
    let mut ours = OurPorts::default();
    // Either proxy's admin port (the two are never both asked for).
    let proxy_admin = |ours: &mut OurPorts, admin| {
        ours.admin(
            admin,
            PROXY_NAME,
            ADMIN_ROLE,
            PROXY_ADMIN_PORT,
            ports::PROXY_NAME,
        );
    };
    if let Some(secret) = &asked.exporter {
        check_name(EXPORTER, secret)?;
        let p = asked.exporter_port.unwrap_or(ports::POSTGRES_EXPORTER);
        let mut args = vec!["postgres-exporter".to_string()];
        if asked.exporter_port.is_some() {
            args.push(format!("--web.listen-address=:{p}"));
        }
        sidecars.push(exporter_container(opts, args, secret, p));
        ours.admin(
            p,
            EXPORTER_NAME,
            "serve its metrics",
            EXPORTER_ADMIN_PORT,
            ports::POSTGRES_EXPORTER_NAME,
        );
    }
    if let Some(config_map) = &asked.proxy {
        check_name(PROXY, config_map)?;
        let config = ProxyConfig::find(configs, config_map, namespace.as_deref());
        let admin = match (asked.proxy_port, config.admin) {
            (Some(p), _) => p,
            (None, Some(Some(p))) => p,
            (None, Some(None)) => {
                return Err(format!(
                    "ConfigMap {config_map}'s proxy.yaml turns the admin server off (admin: off), but the probes need it; remove that line, or give the port with the annotation {PROXY_ADMIN_PORT}"
                ));
            }
            (None, None) => ports::PROXY,
        };
        let mut args = vec![
            "proxy".to_string(),
            "--config".into(),
            format!("{PROXY_DIR}/proxy.yaml"),
        ];
        admin_arg(&mut args, asked.proxy_port, admin);
        sidecars.push(proxy_container(opts, args, None, admin, true));
        ensure_proxy_volume(template, config_map)?;
        proxy_admin(&mut ours, admin);
        for (listener, port) in config.listeners {
            ours.claims.push(Claim::ours(
                port,
                PROXY_NAME,
                &format!("listen (listener `{listener}` of its proxy.yaml)"),
                Fix::ConfigListener {
                    listener,
                    config_map: config_map.clone(),
                },
            ));
        }
    }
    if let Some((listen, upstream)) = asked.inbound {
        let admin = asked.proxy_port.unwrap_or(ports::PROXY);
        let mut args = vec![
            "proxy".to_string(),
            format!("--listen=0.0.0.0:{listen}"),
            format!("--upstream=127.0.0.1:{upstream}"),
            format!("--service={name}"),
            format!("--zipkin={}", asked.zipkin),
        ];
        admin_arg(&mut args, asked.proxy_port, admin);
        sidecars.push(proxy_container(opts, args, Some(listen), admin, false));
        proxy_admin(&mut ours, admin);
        ours.claims.push(Claim::ours(
            listen,
            PROXY_NAME,
            &format!("listen for inbound traffic (LISTEN_PORT of {PROXY_INBOUND})"),
            Fix::InboundListen { app_port: upstream },
        ));
        out.route = Some(Route::new(template, namespace.clone(), listen, upstream));
    }
    let logs_port = asked.logs_port.unwrap_or(ports::LOGS);
    if asked.logs.is_some() {
        ours.admin(
            logs_port,
            LOGS_NAME,
            ADMIN_ROLE,
            LOGS_ADMIN_PORT,
            ports::LOGS_NAME,
        );
    }
    check_ports(
        app_claims(template, asked.inbound.map(|(_, up)| up)),
        ours.claims,
    )?;
    if let Some(paths) = asked.logs {
        let mounts = log_mounts(template, &paths, &mut out.notes)?;
        let state_dir = state_dir(&mounts)?;
        let mut args = vec!["logs".to_string(), "--state-dir".into(), state_dir.into()];
        admin_arg(&mut args, asked.logs_port, logs_port);
        args.extend(paths);
        sidecars.push(logs_container(opts, args, logs_port, &mounts, state_dir));
        ensure_state_volume(template)?;
    }
    let spec = mapping_at(template, &["spec"])?;
    place_sidecars(seq_at(spec, "initContainers")?, sidecars);
    prometheus_annotations(template, &ours.metrics, &mut out.notes)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn named(names: &[&str]) -> Vec<Value> {
        names
            .iter()
            .map(|n| serde_norway::from_str(&format!("{{name: {n}, image: new}}")).unwrap())
            .collect()
    }

    fn names(init: &[Value]) -> Vec<&str> {
        init.iter().map(name_of).collect()
    }

    #[test]
    fn sidecars_already_there_keep_their_places_and_new_ones_join_them() {
        let place = |before: &[&str], ours: &[&str]| {
            let mut init: Vec<Value> = named(before)
                .into_iter()
                .map(|mut c| {
                    c["image"] = Value::from("old");
                    c
                })
                .collect();
            place_sidecars(&mut init, named(ours));
            assert!(
                init.iter()
                    .filter(|c| is_ours(c))
                    .all(|c| c["image"] == "new")
            );
            names(&init).join(" ")
        };
        let (e, p, l) = (EXPORTER_NAME, PROXY_NAME, LOGS_NAME);
        // First injection: first, in the fixed order.
        assert_eq!(place(&["a"], &[p, l]), format!("{p} {l} a"));
        // Another webhook's init container before ours stays there.
        assert_eq!(
            place(&["istio-init", p, l, "a"], &[p, l]),
            format!("istio-init {p} {l} a")
        );
        // New ones join the others, in the fixed order.
        assert_eq!(
            place(&["istio-init", p, "a"], &[e, p, l]),
            format!("istio-init {e} {p} {l} a")
        );
        // Ours no longer asked for, and a duplicate, go.
        assert_eq!(
            place(&["istio-init", p, "a", l, l], &[l]),
            format!("istio-init a {l}")
        );
        assert_eq!(place(&[p, "a"], &[]), "a");
    }

    /// Found by the injector's review: an app container named like one of
    /// ours gave a Pod with two containers of one name (refused by the API
    /// server), and injecting again added a second volume (`sidecar-logs-1`);
    /// so did a template without containers.
    #[test]
    fn an_app_container_with_our_name_or_no_app_container_is_refused() {
        let inject = |spec: &str| {
            let mut pod: Value = serde_norway::from_str(&format!(
                "{{kind: Pod, metadata: {{name: p, annotations: {{sidecar.dev/logs: /var/log/a.log}}}}, spec: {spec}}}"
            ))
            .unwrap();
            inject_object(&mut pod, &Options { image: "i".into() }, &[])
        };
        let err = inject("{containers: [{name: sidecar-logs, image: x}]}")
            .err()
            .unwrap();
        assert!(
            err.contains("`sidecar-logs`") && err.contains("rename it"),
            "{err}"
        );
        for spec in ["{containers: []}", "{}"] {
            let err = inject(spec).err().unwrap();
            assert!(err.contains("no containers"), "{err}");
        }
        assert!(inject("{containers: [{name: app, image: x}]}").is_ok());
    }
}
