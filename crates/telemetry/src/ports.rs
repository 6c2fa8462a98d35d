//! The sidecars' default admin ports (`/live`, `/ready`, `/metrics`) and the
//! names their containers give them in Kubernetes, written once: the
//! subcommands' `--admin` defaults and `sidecar inject` both read them.
//!
//! Prometheus finds a sidecar's metrics by the port name (the names are
//! distinct because port names must be unique within a Pod), so a Pod keeps
//! its own `prometheus.io/*` annotations for its app.

/// `sidecar logs`: the relay's admin and metrics port.
pub const LOGS: u16 = 9464;
/// `sidecar postgres-exporter`: the exporter's metrics port (postgres_exporter's).
pub const POSTGRES_EXPORTER: u16 = 9187;
/// `sidecar proxy`: the proxy's admin and metrics port (Envoy's admin port).
pub const PROXY: u16 = 9901;

/// `sidecar injector`: the admission webhook's admin and metrics port (its
/// webhook itself is HTTPS on 8443). Not in a Pod with the other sidecars.
pub const INJECTOR: u16 = 9465;

/// The container port name of the relay's [`LOGS`] port.
pub const LOGS_NAME: &str = "sidecar-logs";
/// The container port name of the exporter's [`POSTGRES_EXPORTER`] port.
pub const POSTGRES_EXPORTER_NAME: &str = "sidecar-pg";
/// The container port name of the proxy's [`PROXY`] admin port.
pub const PROXY_NAME: &str = "sidecar-proxy";
/// The container port name deploy/injector gives the injector's
/// [`INJECTOR`] port (`sidecar-injector` is one character too long).
pub const INJECTOR_NAME: &str = "sidecar-inj";

/// `0.0.0.0:PORT`: every interface, as a Pod's sidecar listens.
pub fn all_interfaces(port: u16) -> String {
    format!("0.0.0.0:{port}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_names_are_valid_and_distinct() {
        // IANA_SVC_NAME: at most 15 lower-case letters, digits and '-', with a letter.
        let names = [LOGS_NAME, POSTGRES_EXPORTER_NAME, PROXY_NAME, INJECTOR_NAME];
        for n in names {
            assert!(n.len() <= 15, "{n}");
            assert!(
                n.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            );
        }
        for (i, n) in names.iter().enumerate() {
            assert!(!names[i + 1..].contains(n), "{n}");
        }
        let ports = [LOGS, POSTGRES_EXPORTER, PROXY, INJECTOR];
        for (i, a) in ports.iter().enumerate() {
            assert!(!ports[i + 1..].contains(a), "{a}");
        }
    }
}
