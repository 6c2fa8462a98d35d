//! `sidecar inject`: add the sidecars to annotated Kubernetes workloads.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use sidecar_inject::{Level, Options, inject};
use sidecar_telemetry::ports;

/// The help's annotations and examples (the default ports from [`ports`]).
fn examples() -> String {
    format!(
        "\
Annotations on a workload's pod template (Pod, Deployment, StatefulSet, DaemonSet,
ReplicaSet, Job, CronJob; also the items of a `kind: List`), not on its own metadata:
  sidecar.dev/logs: \"/logs/app.log\"          relay these files (comma-separated paths or globs);
                                             a volume the app mounts there (or above) is
                                             reused, else the directory becomes a shared emptyDir
  sidecar.dev/postgres-exporter: <Secret>    exporter with the Secret's keys as env
                                             (DATA_SOURCE_URI, DATA_SOURCE_USER, DATA_SOURCE_PASS)
  sidecar.dev/proxy: <ConfigMap>             proxy configured by the ConfigMap's proxy.yaml
  sidecar.dev/proxy-inbound: \"8000:8080\"     proxy for one inbound route (listen:app port); a
                                             Service in the input that targets the app port
                                             is retargeted to the listen port
  sidecar.dev/zipkin: URL                    where that proxy reports spans (default: Jaeger
                                             in the `tracing` namespace)
When the app declares a port a sidecar takes, move the sidecar's admin port:
  sidecar.dev/logs-admin-port: PORT                 (default {logs})
  sidecar.dev/postgres-exporter-admin-port: PORT    (default {pg})
  sidecar.dev/proxy-admin-port: PORT                (default {proxy})
A pod's own prometheus.io/* annotations are kept; ours are added only to a pod
without any. Our metrics ports are named {logs_name}, {pg_name}, {proxy_name}.

Examples:
  kubectl apply -f <(sidecar inject -f app.yaml)
  sidecar inject -f deploy/ > injected.yaml
  helm template my-chart | sidecar inject | kubectl apply -f -",
        logs = ports::LOGS,
        pg = ports::POSTGRES_EXPORTER,
        proxy = ports::PROXY,
        logs_name = ports::LOGS_NAME,
        pg_name = ports::POSTGRES_EXPORTER_NAME,
        proxy_name = ports::PROXY_NAME,
    )
}

/// Add the sidecars to Kubernetes workloads that ask for them with sidecar.dev/* annotations.
///
/// Reads multi-document YAML, adds native sidecars (init containers with
/// restartPolicy: Always) with probes, a restricted security context and
/// small resources, plus the volumes, mounts and prometheus.io annotations
/// they need, and writes the YAML to stdout. Documents without annotations
/// are copied unchanged; injecting twice changes nothing. Warnings (and the
/// Services it retargets) go to stderr.
#[derive(Debug, clap::Args)]
#[command(after_help = examples())]
pub struct InjectArgs {
    /// A YAML file, a directory of .yaml/.yml files, or - for stdin.
    #[arg(short = 'f', long = "filename", default_value = "-")]
    file: PathBuf,

    /// The sidecar image to use.
    #[arg(long, default_value = super::injector::DEFAULT_IMAGE, env = "SIDECAR_INJECT_IMAGE")]
    image: String,
}

fn read_input(path: &Path) -> anyhow::Result<String> {
    if path == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read YAML from stdin")?;
        return Ok(text);
    }
    if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("cannot list {}", path.display()))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
            .collect();
        files.sort();
        let mut all = String::new();
        for f in files {
            let text = std::fs::read_to_string(&f)
                .with_context(|| format!("cannot read {}", f.display()))?;
            if !all.is_empty() {
                all.push_str("---\n");
            }
            all.push_str(&text);
            if !all.ends_with('\n') {
                all.push('\n');
            }
        }
        return Ok(all);
    }
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

pub fn run(args: InjectArgs) -> anyhow::Result<ExitCode> {
    let input = read_input(&args.file)?;
    let output = inject(&input, &Options { image: args.image })?;
    for note in &output.notes {
        let level = match note.level {
            Level::Warning => "warning",
            Level::Note => "note",
        };
        eprintln!("sidecar: {level}: {note}");
    }
    std::io::stdout()
        .write_all(output.yaml.as_bytes())
        .context("cannot write to stdout")?;
    Ok(ExitCode::SUCCESS)
}
