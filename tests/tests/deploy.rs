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
