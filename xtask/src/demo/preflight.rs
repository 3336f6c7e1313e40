//! What the demo needs from the machine, checked before minutes of installing and building, and
//! reported with the command that fixes it.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Result};

/// Programs the test-bed runs, and the Debian package of each.
const TOOLS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("nft", "nftables"),
    ("curl", "curl"),
    ("python3", "python3"),
];

/// The demo creates network namespaces and loads an eBPF program.
pub fn require_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "the demo needs root: it creates network namespaces and loads an eBPF program.\n\
             Run it as root, e.g. `sudo -E env \"PATH=$PATH\" cargo xtask demo`."
        );
    }
    Ok(())
}

/// Fails naming every missing program and the packages that provide them.
pub fn require_tools() -> Result<()> {
    let mut missing: Vec<(&str, &str)> = TOOLS
        .iter()
        .copied()
        .filter(|(program, _)| !on_path(program))
        .collect();
    // httpbin's virtualenv is made with `python3 -m venv`, which Debian ships separately.
    if on_path("python3") && !python_has_venv() {
        missing.push(("python3 -m venv", "python3-venv"));
    }
    if missing.is_empty() {
        return Ok(());
    }
    let programs: Vec<&str> = missing.iter().map(|(program, _)| *program).collect();
    let packages: Vec<&str> = missing.iter().map(|(_, package)| *package).collect();
    bail!(
        "the demo needs {}, which {} missing.\nOn Debian or Ubuntu: apt-get install -y {}",
        programs.join(", "),
        if missing.len() == 1 { "is" } else { "are" },
        packages.join(" ")
    );
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| is_executable(&dir.join(program)))
    })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    path.metadata()
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// Whether `python3 -m venv` can make a virtualenv with pip (Debian splits `ensurepip` out).
fn python_has_venv() -> bool {
    Command::new("python3")
        .args(["-c", "import venv, ensurepip"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}
