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
    use std::io::Write;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/inject");
    let out = Command::new(common::BIN)
        .args(["inject", "-f"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(out.status.success());
    let all = String::from_utf8(out.stdout).unwrap();
    assert!(all.matches("restartPolicy: Always").count() >= 7, "{all}");
    let mut child = Command::new(common::BIN)
        .args(["inject"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"kind: Service\nmetadata: {name: s}\n---\nkind: Deployment\nmetadata: {name: web}\nspec:\n  template:\n    metadata:\n      annotations: {sidecar.dev/proxy-inbound: \"80\"}\n    spec: {containers: [{name: a, image: x}]}\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("document 2 (Deployment web)") && err.contains("sidecar.dev/proxy-inbound"),
        "{err}"
    );
}
