//! The Kubernetes manifests in `deploy/`: every kustomization renders offline and every object
//! passes `kubernetes-validate --strict` for Kubernetes 1.28 and the newest version it knows;
//! the MirrorPolicy CRD's schema is structural and accepts the ConfigMap's policies and the
//! examples (`deploy/validate.sh`, which CI can also run alone).

use std::{io::Write as _, path::Path, process::Command};

#[test]
fn deploy_manifests_validate_for_kubernetes_1_28_and_newest() {
    for program in ["kubectl", "python3"] {
        if Command::new(program).arg("--help").output().is_err() {
            if std::env::var_os("CI").is_some() {
                panic!("this test needs {program}, and CI is set");
            }
            let _ = writeln!(std::io::stderr(), "skipped: needs {program}");
            return;
        }
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/validate.sh");
    let out = Command::new(&script)
        .output()
        .expect("run deploy/validate.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    // Both kustomizations were rendered and checked against both versions.
    assert!(
        stdout.contains("deploy: 7 objects checked against 1.28.0, "),
        "{stdout}"
    );
    assert!(
        stdout.contains("deploy/overlays/privileged: 7 objects checked"),
        "{stdout}"
    );
    assert!(
        stdout.contains("deploy/overlays/pod-hook: 7 objects checked"),
        "{stdout}"
    );
    assert!(stdout.contains("CRD schema structural"), "{stdout}");
}

/// The config file the ConfigMap carries passes `mirror config check` as it is mounted.
#[test]
fn the_configmaps_config_passes_mirror_config_check() {
    let manifest = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/base/configmap.yaml"),
    )
    .expect("configmap.yaml");
    // The literal block under `config.yaml: |`, indented four spaces.
    let config: String = manifest
        .split_once("config.yaml: |\n")
        .expect("a config.yaml key")
        .1
        .lines()
        .take_while(|line| line.starts_with("    ") || line.is_empty())
        .map(|line| format!("{}\n", line.get(4..).unwrap_or_default()))
        .collect();
    let file = std::env::temp_dir().join(format!("mirror-configmap-{}.yaml", std::process::id()));
    std::fs::write(&file, &config).expect("write");
    let out = Command::new(mirror_tests::agent::mirror_binary().expect("mirror binary"))
        .args(["config", "check"])
        .arg(&file)
        .output()
        .expect("mirror config check");
    let _ = std::fs::remove_file(&file);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("policy httpbin -> service default/httpbin:8000 (capture server)"),
        "{stdout}"
    );
}
