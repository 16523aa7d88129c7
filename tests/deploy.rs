//! The Kubernetes manifests under deploy/k8s: valid against the Kubernetes schemas (offline, by
//! `kubernetes-validate` from PyPI, which scripts/setup.sh installs), and the configuration
//! their ConfigMap carries is the checked-in meridian.toml, which `meridian config check`
//! accepts.

use std::path::PathBuf;
use std::process::Command;

use meridian_tests::{meridian_bin, Workdir};

fn k8s_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("deploy")
        .join("k8s")
}

/// `kubernetes-validate --strict` over `files`: (passed, output).
fn validate(files: &[PathBuf]) -> (bool, String) {
    let out = Command::new("python3")
        .args(["-m", "kubernetes_validate", "--strict"])
        .args(files)
        .output()
        .expect("run python3");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !text.contains("No module named kubernetes_validate"),
        "kubernetes-validate is missing: run scripts/setup.sh"
    );
    (out.status.success(), text)
}

#[test]
fn kubernetes_manifests_are_valid_and_carry_a_valid_config() {
    let dir = k8s_dir();
    let mut manifests: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("deploy/k8s")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    manifests.sort();
    assert!(manifests.len() >= 5, "{manifests:?}");
    let (ok, out) = validate(&manifests);
    assert!(ok, "{out}");
    for kind in ["statefulset", "poddisruptionbudget", "service", "configmap"] {
        assert!(
            out.contains(&format!("resource {kind}/")),
            "no {kind} validated: {out}"
        );
    }

    // The validator refuses what is wrong (so its pass above means something).
    let work = Workdir::new("deploy");
    let broken = work.path.join("broken.yaml");
    let region = std::fs::read_to_string(dir.join("region-eu-west.yaml")).expect("read");
    std::fs::write(&broken, region.replace("replicas: 3", "replicas: three")).expect("write");
    let (ok, out) = validate(&[broken]);
    assert!(!ok, "a StatefulSet with replicas: three passed: {out}");

    // The ConfigMap holds meridian.toml line for line, and that file is a valid config.
    let toml = std::fs::read_to_string(dir.join("meridian.toml")).expect("meridian.toml");
    let configmap = std::fs::read_to_string(dir.join("configmap.yaml")).expect("configmap");
    for line in toml.lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            configmap.contains(&format!("    {line}\n")),
            "configmap.yaml lacks '{line}' of meridian.toml"
        );
    }
    let out = Command::new(meridian_bin())
        .args(["config", "check", "--config"])
        .arg(dir.join("meridian.toml"))
        .env_remove("MERIDIAN_CONFIG")
        .output()
        .expect("run meridian");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
