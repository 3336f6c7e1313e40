//! Builds the kernel program (mirror-ebpf) with the pinned nightly through aya-build, so that
//! `cargo build` and `cargo xtask build-ebpf` are one and the same build.

use anyhow::{anyhow, Context as _};

/// The pinned nightly's toolchain file; `cargo xtask bootstrap` installs what it names.
const EBPF_TOOLCHAIN_FILE: &str = include_str!("../mirror-ebpf/rust-toolchain.toml");

/// The `channel = "..."` value of a rust-toolchain.toml.
fn channel(toolchain_file: &str) -> Option<&str> {
    toolchain_file.lines().find_map(|line| {
        let value = line
            .trim()
            .strip_prefix("channel")?
            .trim()
            .strip_prefix('=')?;
        Some(value.trim().trim_matches('"'))
    })
}

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let root_dir = std::path::Path::new(&manifest_dir)
        .parent()
        .ok_or_else(|| anyhow!("mirror-userspace has no parent directory"))?
        .join("mirror-ebpf");
    let root_dir = root_dir
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", root_dir.display()))?;
    println!("cargo:rerun-if-changed=../mirror-common/src");
    println!("cargo:rerun-if-changed=../mirror-ebpf/rust-toolchain.toml");
    let toolchain = channel(EBPF_TOOLCHAIN_FILE)
        .ok_or_else(|| anyhow!("mirror-ebpf/rust-toolchain.toml names no channel"))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "mirror-ebpf",
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(toolchain),
    )
    .context(
        "building the eBPF program failed; `cargo xtask bootstrap` installs the pinned \
         nightly and bpf-linker it needs",
    )
}
