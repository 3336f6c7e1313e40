//! Installs the pinned eBPF toolchain: the nightly with rust-src, and bpf-linker.
//!
//! Idempotent and near-instant when both are present: it asks `rustup` and `bpf-linker`
//! for what is installed before installing anything.

use std::process::Command;

use anyhow::{bail, Context as _, Result};

/// The nightly that builds the eBPF crate (rustc 1.97, LLVM 22). Keep in step with
/// `mirror-userspace/build.rs`.
pub const EBPF_TOOLCHAIN: &str = "nightly-2026-05-20";
/// bpf-linker 0.10 links with rustc's own LLVM 22; later releases need a system LLVM 23.
pub const BPF_LINKER_VERSION: &str = "0.10.0";

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
            EBPF_TOOLCHAIN,
        ])
        .output()
        .map(|out| {
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains("rust-src")
        })
        .unwrap_or(false);
    if has_rust_src {
        return Ok(());
    }
    eprintln!("bootstrap: installing {EBPF_TOOLCHAIN} with rust-src (about 10 s)");
    crate::run(Command::new("rustup").args([
        "toolchain",
        "install",
        EBPF_TOOLCHAIN,
        "--profile",
        "minimal",
        "--component",
        "rust-src",
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
