//! Volumes and mounts: each log directory's volume for the relay (the
//! app's own volume where an app container mounts one there or above, else
//! a new `emptyDir` shared with every app container, with a warning when
//! it would hide the image's files), the relay's checkpoint directory and
//! volume, and the proxy's ConfigMap volume. Volumes are ensured by name,
//! so injecting twice adds nothing.

use serde_norway::{Mapping, Value};

use crate::annotations::LOGS;
use crate::notes::Level;
use crate::template::{LOGS_NAME, app_containers, is_ours, name_of};
use crate::value::{key, mapping_at, seq_at};

/// The relay's checkpoint volume.
pub(crate) const STATE_VOLUME: &str = "sidecar-logs-state";
const STATE_DIR: &str = "/var/lib/sidecar";
/// The checkpoint directory when a log volume is mounted over [`STATE_DIR`].
const STATE_DIR_ALT: &str = "/sidecar-logs-state";
pub(crate) const PROXY_VOLUME: &str = "sidecar-proxy-config";
pub(crate) const PROXY_DIR: &str = "/etc/sidecar-proxy";
/// Directories of a Linux image that a new `emptyDir` would empty (the
/// directory or anything under it).
const SYSTEM_TREES: [&str; 6] = ["/bin", "/sbin", "/lib", "/lib64", "/usr", "/etc"];
/// Directories of an image that a new `emptyDir` at exactly that place would empty.
const SYSTEM_DIRS: [&str; 6] = ["/var", "/opt", "/home", "/srv", "/root", "/app"];

/// Whether directory `dir` is `outer` or inside it.
fn within(dir: &str, outer: &str) -> bool {
    outer == "/"
        || dir == outer
        || dir
            .strip_prefix(outer)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// A volume the app's containers mount.
#[derive(Debug, Clone)]
struct AppMount {
    container: String,
    volume: String,
    path: String,
    sub_path: Option<String>,
    sub_path_expr: bool,
}

/// A volume of the relay, read-only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RelayMount {
    pub(crate) volume: String,
    pub(crate) path: String,
    pub(crate) sub_path: Option<String>,
}

fn app_mounts(template: &Value) -> Vec<AppMount> {
    let mut all = Vec::new();
    for c in app_containers(template) {
        for m in c
            .get("volumeMounts")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            let (Some(volume), Some(path)) = (
                m.get("name").and_then(Value::as_str),
                m.get("mountPath").and_then(Value::as_str),
            ) else {
                continue;
            };
            let path = path.trim_end_matches('/');
            all.push(AppMount {
                container: name_of(c).to_string(),
                volume: volume.to_string(),
                path: if path.is_empty() { "/" } else { path }.to_string(),
                sub_path: m
                    .get("subPath")
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string),
                sub_path_expr: m
                    .get("subPathExpr")
                    .and_then(Value::as_str)
                    .is_some_and(|s| !s.is_empty()),
            });
        }
    }
    all
}

/// The relay's view of each log file's directory: the volume an app
/// container already mounts there or above (mounted where the app mounts
/// it), else a new `emptyDir` mounted at the directory in every app
/// container. Warns when such an `emptyDir` would hide the image's files.
pub(crate) fn log_mounts(
    template: &mut Value,
    paths: &[String],
    notes: &mut Vec<(Level, String)>,
) -> Result<Vec<RelayMount>, String> {
    let mut dirs: Vec<(String, &str)> = Vec::new();
    for p in paths {
        if !p.starts_with('/') {
            return Err(format!(
                "annotation {LOGS}: `{p}` must be an absolute path, like /logs/app.log"
            ));
        }
        let dir = std::path::Path::new(p)
            .parent()
            .map(|d| d.to_string_lossy().trim_end_matches('/').to_string())
            .filter(|d| !d.is_empty())
            .ok_or_else(|| {
                format!(
                    "annotation {LOGS}: `{p}` must be in a directory of its own, like /logs/app.log"
                )
            })?;
        if dir.contains(['*', '?', '[']) {
            return Err(format!(
                "annotation {LOGS}: the directory of `{p}` may not contain wildcards; put them in the file name only, like /logs/*.log"
            ));
        }
        if !dirs.iter().any(|(d, _)| *d == dir) {
            dirs.push((dir, p));
        }
    }
    // Outer directories first, so that inner ones reuse their volume.
    dirs.sort_by_key(|(d, _)| d.matches('/').count());
    let mut existing = app_mounts(template);
    let mut relay: Vec<RelayMount> = Vec::new();
    for (dir, path) in dirs {
        let outer = existing
            .iter()
            .filter(|m| within(&dir, &m.path))
            .fold(None::<&AppMount>, |best, m| match best {
                Some(b) if b.path.len() >= m.path.len() => Some(b),
                _ => Some(m),
            })
            .cloned();
        let mount = match outer {
            Some(m) if m.sub_path_expr => {
                return Err(format!(
                    "annotation {LOGS}: `{path}` is in volume {}, which container {} mounts at {} with a subPathExpr that the relay cannot repeat; log to a directory outside that volume, like /logs",
                    m.volume, m.container, m.path
                ));
            }
            // The app's volume, where the app mounts it: no subPath of our
            // own, which the kubelet would create (as root, before the app
            // starts) inside the app's data.
            Some(m) => RelayMount {
                volume: m.volume,
                path: m.path,
                sub_path: m.sub_path,
            },
            None => {
                warn_hidden_files(template, &dir, path, notes);
                let volume = new_log_volume(template, &dir)?;
                for c in app_containers(template) {
                    existing.push(AppMount {
                        container: name_of(c).to_string(),
                        volume: volume.clone(),
                        path: dir.clone(),
                        sub_path: None,
                        sub_path_expr: false,
                    });
                }
                RelayMount {
                    volume,
                    path: dir,
                    sub_path: None,
                }
            }
        };
        if !relay.contains(&mount) {
            relay.push(mount);
        }
    }
    Ok(relay)
}

/// Where the relay keeps its checkpoint: [`STATE_DIR`], or [`STATE_DIR_ALT`]
/// when a log directory is mounted over it.
pub(crate) fn state_dir(mounts: &[RelayMount]) -> Result<&'static str, String> {
    let clash = |dir: &str| {
        mounts
            .iter()
            .any(|m| within(dir, &m.path) || within(&m.path, dir))
    };
    [STATE_DIR, STATE_DIR_ALT]
        .into_iter()
        .find(|d| !clash(d))
        .ok_or_else(|| {
            format!(
                "annotation {LOGS}: the relay would mount the log directories over both {STATE_DIR} and {STATE_DIR_ALT}, where it keeps its checkpoint; log to a directory of its own, like /logs"
            )
        })
}

/// A new `emptyDir` for the log directory `dir`, mounted there in every app container.
fn new_log_volume(template: &mut Value, dir: &str) -> Result<String, String> {
    let spec = mapping_at(template, &["spec"])?;
    let taken: Vec<String> = spec
        .get("volumes")
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
        .map(|v| name_of(v).to_string())
        .collect();
    let volume = (0..)
        .map(|n| {
            if n == 0 {
                LOGS_NAME.to_string()
            } else {
                format!("{LOGS_NAME}-{n}")
            }
        })
        .find(|v| !taken.contains(v) && v != STATE_VOLUME)
        .unwrap_or_default();
    for c in seq_at(spec, "containers")?.iter_mut() {
        if is_ours(c) {
            continue;
        }
        let c = c.as_mapping_mut().ok_or(
            "every entry of `containers` must be a mapping (name: ..., image: ...); fix the pod template",
        )?;
        seq_at(c, "volumeMounts")?.push(Value::Mapping(Mapping::from_iter([
            (key("name"), key(&volume)),
            (key("mountPath"), key(dir)),
        ])));
    }
    ensure_volume(
        template,
        &volume,
        Value::Mapping(Mapping::from_iter([(
            key("emptyDir"),
            Value::Mapping(Mapping::new()),
        )])),
    )?;
    Ok(volume)
}

/// Warns when a new `emptyDir` at `dir` would hide what the image has there:
/// an app container's working directory or program, or a system directory.
fn warn_hidden_files(template: &Value, dir: &str, path: &str, notes: &mut Vec<(Level, String)>) {
    let mut reasons = Vec::new();
    for c in app_containers(template) {
        let name = name_of(c);
        if let Some(wd) = c.get("workingDir").and_then(Value::as_str) {
            let wd = wd.trim_end_matches('/');
            if !wd.is_empty() && within(wd, dir) {
                reasons.push(format!("container {name}'s workingDir is {wd}"));
            }
        }
        if let Some(cmd) = c
            .get("command")
            .and_then(Value::as_sequence)
            .and_then(|s| s.first())
            .and_then(Value::as_str)
        {
            if cmd.starts_with('/') && within(cmd, dir) {
                reasons.push(format!("container {name}'s command {cmd} is there"));
            }
        }
    }
    if reasons.is_empty()
        && (SYSTEM_TREES.iter().any(|t| within(dir, t)) || SYSTEM_DIRS.contains(&dir))
    {
        reasons.push(format!("images keep their own files in {dir}"));
    }
    if !reasons.is_empty() {
        notes.push((
            Level::Warning,
            format!(
                "annotation {LOGS}: the new emptyDir mounted at {dir} (the directory of {path}) hides what the image has there ({}); if the image keeps files in {dir}, have the app log to a directory of its own, like /logs, and point {LOGS} there",
                reasons.join(" and ")
            ),
        ));
    }
}

/// The relay's checkpoint volume: an `emptyDir` of 1Mi.
pub(crate) fn ensure_state_volume(template: &mut Value) -> Result<(), String> {
    ensure_volume(
        template,
        STATE_VOLUME,
        Value::Mapping(Mapping::from_iter([(
            key("emptyDir"),
            Value::Mapping(Mapping::from_iter([(key("sizeLimit"), key("1Mi"))])),
        )])),
    )
}

/// The proxy's configuration: ConfigMap `config_map` as a volume.
pub(crate) fn ensure_proxy_volume(template: &mut Value, config_map: &str) -> Result<(), String> {
    ensure_volume(
        template,
        PROXY_VOLUME,
        Value::Mapping(Mapping::from_iter([(
            key("configMap"),
            Value::Mapping(Mapping::from_iter([(key("name"), key(config_map))])),
        )])),
    )
}

/// Adds volume `name` (from `source`) unless the pod has one by that name.
fn ensure_volume(template: &mut Value, name: &str, source: Value) -> Result<(), String> {
    let spec = mapping_at(template, &["spec"])?;
    let volumes = seq_at(spec, "volumes")?;
    if volumes
        .iter()
        .any(|v| v.get("name").and_then(Value::as_str) == Some(name))
    {
        return Ok(());
    }
    let mut volume = Mapping::from_iter([(key("name"), key(name))]);
    if let Value::Mapping(m) = source {
        volume.extend(m);
    }
    volumes.push(Value::Mapping(volume));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_contain_by_whole_components() {
        assert!(within(
            "/var/lib/postgresql/data/log",
            "/var/lib/postgresql/data"
        ));
        assert!(within("/data", "/data"));
        assert!(within("/anything", "/"));
        assert!(!within("/data2/log", "/data"));
        assert!(!within("/data", "/data/log"));
    }
}
