//! Ports: who takes which (the app's declared TCP ports and APP_PORT, our
//! admin and listen ports), stopping with both claimants and the way out
//! when two meet; and the pod's `prometheus.io/*` annotations, ours or the
//! app's own, kept.

use serde_norway::Value;

use crate::annotations::PROXY_INBOUND;
use crate::notes::Level;
use crate::template::{containers, is_ours, name_of};
use crate::value::{key, mapping_at, parse_port, scalar_text};

/// What a sidecar does on its admin port, for messages.
pub(crate) const ADMIN_ROLE: &str = "serve its admin port (/live, /ready, /metrics)";
const PROMETHEUS_PREFIX: &str = "prometheus.io/";

/// Who would take a port, to tell the user what to move.
#[derive(Debug)]
pub(crate) struct Claim {
    port: u16,
    /// `container web declares it`, `sidecar-logs would serve ... there`.
    taken: String,
    fix: Fix,
}

impl Claim {
    /// A port of ours: `{container} would {role} there`.
    pub(crate) fn ours(port: u16, container: &str, role: &str, fix: Fix) -> Claim {
        Claim {
            port,
            taken: format!("{container} would {role} there"),
            fix,
        }
    }
}

/// The ports our sidecars take: claims for [`check_ports`], and the admin
/// ports Prometheus scrapes (with their port names), in a fixed order.
#[derive(Debug, Default)]
pub(crate) struct OurPorts {
    pub(crate) claims: Vec<Claim>,
    pub(crate) metrics: Vec<(u16, &'static str)>,
}

impl OurPorts {
    /// A sidecar's admin port: `container` would `role` there; the user
    /// moves it with `annotation`; Prometheus finds it by `port_name`.
    pub(crate) fn admin(
        &mut self,
        port: u16,
        container: &str,
        role: &str,
        annotation: &'static str,
        port_name: &'static str,
    ) {
        self.claims.push(Claim::ours(
            port,
            container,
            role,
            Fix::Annotation(annotation),
        ));
        self.metrics.push((port, port_name));
    }
}

/// How the user moves one of our ports.
#[derive(Debug)]
pub(crate) enum Fix {
    /// The app's port: nothing of ours to move.
    App,
    /// An annotation with a port number.
    Annotation(&'static str),
    /// The LISTEN_PORT of `sidecar.dev/proxy-inbound`.
    InboundListen { app_port: u16 },
    /// A listener in the proxy's ConfigMap.
    ConfigListener {
        listener: String,
        config_map: String,
    },
}

impl Fix {
    fn text(&self, free: u16) -> String {
        match self {
            Fix::App => String::new(),
            Fix::Annotation(a) => {
                format!("move ours with the annotation {a}, like {a}: \"{free}\"")
            }
            Fix::InboundListen { app_port } => format!(
                "pick another LISTEN_PORT in the annotation {PROXY_INBOUND}, like \"{free}:{app_port}\" (and send the Service's traffic there)"
            ),
            Fix::ConfigListener {
                listener,
                config_map,
            } => format!(
                "move listener `{listener}` to another port, like {free}, in ConfigMap {config_map}'s proxy.yaml"
            ),
        }
    }
}

/// The ports the app's containers declare (TCP), and the app port an
/// inbound proxy sends to.
pub(crate) fn app_claims(template: &Value, upstream: Option<u16>) -> Vec<Claim> {
    let mut claims = Vec::new();
    for c in containers(template, "containers").chain(containers(template, "initContainers")) {
        if is_ours(c) {
            continue;
        }
        for p in c
            .get("ports")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            let tcp = p
                .get("protocol")
                .and_then(Value::as_str)
                .is_none_or(|proto| proto == "TCP");
            if let (true, Some(port)) = (
                tcp,
                p.get("containerPort")
                    .and_then(Value::as_u64)
                    .and_then(|n| u16::try_from(n).ok()),
            ) {
                claims.push(Claim {
                    port,
                    taken: format!("container {} declares it", name_of(c)),
                    fix: Fix::App,
                });
            }
        }
    }
    if let Some(port) = upstream {
        claims.push(Claim {
            port,
            taken: format!("the app listens there (APP_PORT of {PROXY_INBOUND})"),
            fix: Fix::App,
        });
    }
    claims
}

/// Stops when one of our ports is taken by the app or by another of ours.
pub(crate) fn check_ports(app: Vec<Claim>, ours: Vec<Claim>) -> Result<(), String> {
    let all: Vec<u16> = app.iter().chain(&ours).map(|c| c.port).collect();
    let free = |from: u16| {
        (from.saturating_add(1)..=u16::MAX)
            .chain((1..from).rev())
            .find(|p| !all.contains(p))
            .unwrap_or(from)
    };
    let mut taken = app;
    for claim in ours {
        if let Some(prev) = taken.iter().find(|c| c.port == claim.port) {
            let p = claim.port;
            return Err(format!(
                "port {p} is taken twice: {}, and {}; {}",
                prev.taken,
                claim.taken,
                claim.fix.text(free(p))
            ));
        }
        taken.push(claim);
    }
    Ok(())
}

/// Our `prometheus.io/*` annotations, unless the pod has its own (they are
/// the app's: kept as they are).
pub(crate) fn prometheus_annotations(
    template: &mut Value,
    metrics_ports: &[(u16, &str)],
    notes: &mut Vec<(Level, String)>,
) -> Result<(), String> {
    let Some(&(first, _)) = metrics_ports.first() else {
        return Ok(());
    };
    let ann = mapping_at(template, &["metadata", "annotations"])?;
    let own: Vec<(String, String)> = ann
        .iter()
        .filter_map(|(k, v)| {
            let k = k.as_str()?;
            k.starts_with(PROMETHEUS_PREFIX)
                .then(|| (k.to_string(), scalar_text(v)))
        })
        .collect();
    if own.is_empty() {
        ann.insert(key("prometheus.io/scrape"), key("true"));
        ann.insert(key("prometheus.io/port"), key(&first.to_string()));
        return Ok(());
    }
    // Ours from an earlier run (or the user's, pointing at one of ours): nothing to say.
    let points_at_ours = own.iter().all(|(k, v)| match k.as_str() {
        "prometheus.io/scrape" => v == "true",
        "prometheus.io/port" => {
            parse_port(v).is_some_and(|p| metrics_ports.iter().any(|(m, _)| *m == p))
        }
        _ => false,
    }) && own.iter().any(|(k, _)| k == "prometheus.io/port");
    if !points_at_ours {
        let list: Vec<String> = own.iter().map(|(k, v)| format!("{k}: \"{v}\"")).collect();
        let names: Vec<&str> = metrics_ports.iter().map(|(_, n)| *n).collect();
        notes.push((
            Level::Note,
            format!(
                "the pod keeps its own prometheus.io annotations ({}), which are the app's; the sidecars' metrics are on the container ports named {}, for Prometheus to scrape by port name",
                list.join(", "),
                names.join(", ")
            ),
        ));
    }
    Ok(())
}
