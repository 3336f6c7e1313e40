//! kmock (PyPI), a stateful Kubernetes API emulator with list and watch, run inside a
//! test-bed's node namespace on its loopback, where the agent under test reaches it as a
//! DaemonSet pod reaches its API server. Objects are created, patched and deleted with curl
//! in the same namespace; a kubeconfig for the agent points at it.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use serde_json::Value;

use crate::{Netns, Process};

/// The emulator's version, from PyPI.
pub const KMOCK_PIN: &str = "kmock==0.8";

/// The emulator serving the resources of the agent's watches; stopped on drop.
pub struct Kmock {
    process: Option<Process>,
    ns: Netns,
    port: u16,
    kubeconfig: PathBuf,
}

impl Kmock {
    /// Starts kmock in `ns` (the virtualenv made on first use) and writes a kubeconfig for
    /// it. `None`: no python3-venv or PyPI here, and CI is not set (the test skips).
    pub fn start(ns: &Netns) -> Result<Option<Kmock>> {
        let Some(python) = venv()? else {
            return Ok(None);
        };
        let script = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../mirror-userspace/discovery/tests/kmock_server.py");
        let process = ns.spawn("kmock", &[python.as_os_str(), script.as_os_str()])?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let port = loop {
            let out = std::fs::read_to_string(process.stdout_path()).unwrap_or_default();
            if let Some(port) = out.lines().next().and_then(|l| l.trim().parse().ok()) {
                break port;
            }
            if Instant::now() > deadline {
                bail!(
                    "kmock printed no port: see {}",
                    process.stderr_path().display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let kubeconfig = ns.log_dir().join("kmock.kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\ncurrent-context: kmock\n\
                 clusters: [{{name: kmock, cluster: {{server: \"http://127.0.0.1:{port}\"}}}}]\n\
                 contexts: [{{name: kmock, context: {{cluster: kmock, user: kmock}}}}]\n\
                 users: [{{name: kmock, user: {{}}}}]\n"
            ),
        )
        .context("write the kubeconfig")?;
        Ok(Some(Kmock {
            process: Some(process),
            ns: ns.clone(),
            port,
            kubeconfig,
        }))
    }

    /// A kubeconfig that points at the emulator.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// Creates `object` under `collection` (e.g. `/api/v1/namespaces/default/pods`).
    pub fn create(&self, collection: &str, object: &Value) -> Result<Value> {
        self.call("POST", collection, Some(("application/json", object)))
    }

    /// Merge-patches the object at `path`.
    pub fn patch(&self, path: &str, patch: &Value) -> Result<Value> {
        self.call("PATCH", path, Some(("application/merge-patch+json", patch)))
    }

    pub fn delete(&self, path: &str) -> Result<Value> {
        self.call("DELETE", path, None)
    }

    fn call(&self, method: &str, path: &str, body: Option<(&str, &Value)>) -> Result<Value> {
        let url = format!("http://127.0.0.1:{}{path}", self.port);
        let mut argv: Vec<String> = ["curl", "-sS", "--fail-with-body", "--max-time", "10", "-X"]
            .map(String::from)
            .to_vec();
        argv.push(method.into());
        if let Some((kind, body)) = body {
            argv.extend(["-H".into(), format!("Content-Type: {kind}")]);
            argv.extend(["--data-binary".into(), body.to_string()]);
        }
        argv.push(url);
        let out = self
            .ns
            .exec_ok(&argv)
            .with_context(|| format!("{method} {path}"))?;
        serde_json::from_str(&out).with_context(|| format!("{method} {path}: {out}"))
    }

    /// Stops the emulator: the API goes away.
    pub fn stop(&mut self) {
        // Dropping the process kills it.
        self.process = None;
    }
}

/// The virtualenv's python with kmock (made once under target/; one test at a time makes it).
fn venv() -> Result<Option<PathBuf>> {
    static MAKING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = MAKING.lock().unwrap_or_else(|p| p.into_inner());
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/kmock-venv");
    let python = dir.join("bin/python");
    let ready = |python: &Path| {
        std::process::Command::new(python)
            .args(["-c", "import kmock"])
            .output()
            .is_ok_and(|out| out.status.success())
    };
    if !ready(&python) {
        let made = std::process::Command::new("python3")
            .args(["-m", "venv"])
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success())
            && std::process::Command::new(dir.join("bin/pip"))
                .args(["install", "--quiet", KMOCK_PIN])
                .status()
                .is_ok_and(|s| s.success());
        if !(made && ready(&python)) {
            if std::env::var_os("CI").is_some() {
                bail!("this test needs python3-venv and {KMOCK_PIN} from PyPI, and CI is set");
            }
            eprintln!("skipped: cannot make a venv with {KMOCK_PIN}");
            return Ok(None);
        }
    }
    Ok(Some(python))
}
