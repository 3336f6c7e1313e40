//! Installs the pinned eBPF toolchain: the nightly with rust-src, and bpf-linker.
//!
//! Idempotent and near-instant when both are present: it asks `rustup` and `bpf-linker`
//! for what is installed before installing anything.

use std::process::Command;

use anyhow::{bail, Context as _, Result};

/// The toolchain file that pins the nightly building the eBPF crate (its one pin).
const EBPF_TOOLCHAIN_FILE: &str = include_str!("../../mirror-ebpf/rust-toolchain.toml");
/// bpf-linker 0.10 links with rustc's own LLVM 22; later releases need a system LLVM 23.
pub const BPF_LINKER_VERSION: &str = "0.10.0";

/// The pinned nightly's name, from `mirror-ebpf/rust-toolchain.toml`.
pub fn ebpf_toolchain() -> &'static str {
    EBPF_TOOLCHAIN_FILE
        .lines()
        .find_map(|line| {
            let value = line
                .trim()
                .strip_prefix("channel")?
                .trim()
                .strip_prefix('=')?;
            Some(value.trim().trim_matches('"'))
        })
        .unwrap_or("nightly")
}

pub fn bootstrap() -> Result<()> {
    ensure_nightly()?;
    ensure_bpf_linker()
}

fn ensure_nightly() -> Result<()> {
    let has_rust_src = Command::new("rustup")
        .args([
            "component",
            "list",
            "--installed",
            "--toolchain",
            ebpf_toolchain(),
        ])
        .output()
        .map(|out| {
            let installed = String::from_utf8_lossy(&out.stdout);
            out.status.success() && installed.contains("rust-src") && installed.contains("clippy")
        })
        .unwrap_or(false);
    if has_rust_src {
        return Ok(());
    }
    let toolchain = ebpf_toolchain();
    eprintln!("bootstrap: installing {toolchain} with rust-src and clippy (about 15 s)");
    crate::run(Command::new("rustup").args([
        "toolchain",
        "install",
        toolchain,
        "--profile",
        "minimal",
        "--component",
        "rust-src",
        "--component",
        "clippy",
    ]))
}

fn ensure_bpf_linker() -> Result<()> {
    let installed = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stdout).into_owned());
    match installed {
        Some(version) if version.contains(BPF_LINKER_VERSION) => return Ok(()),
        Some(version) => eprintln!(
            "bootstrap: replacing {} with bpf-linker {BPF_LINKER_VERSION}",
            version.trim()
        ),
        None => eprintln!("bootstrap: installing bpf-linker {BPF_LINKER_VERSION} (about 1 min)"),
    }
    crate::run(Command::new("cargo").args([
        "install",
        "bpf-linker",
        "--version",
        BPF_LINKER_VERSION,
        "--locked",
        "--force",
    ]))
    .context("installing bpf-linker")?;
    if Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_err()
    {
        bail!("bpf-linker was installed but is not on PATH: add ~/.cargo/bin to PATH");
    }
    Ok(())
}

/// cargo-fuzz for `cargo xtask fuzz`; only that task needs it, so bootstrap leaves it out.
pub const CARGO_FUZZ_VERSION: &str = "0.13.2";

pub fn ensure_cargo_fuzz() -> Result<()> {
    let installed = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|out| {
            out.status.success()
                && String::from_utf8_lossy(&out.stdout).contains(CARGO_FUZZ_VERSION)
        });
    if installed {
        return Ok(());
    }
    eprintln!("fuzz: installing cargo-fuzz {CARGO_FUZZ_VERSION} (about 1 min)");
    crate::run(Command::new("cargo").args([
        "install",
        "cargo-fuzz",
        "--version",
        CARGO_FUZZ_VERSION,
        "--locked",
        "--force",
    ]))
}
