//! Builds the kernel program (mirror-ebpf) with the pinned nightly through aya-build, so that
//! `cargo build` and `cargo xtask build-ebpf` are one and the same build.

use anyhow::{anyhow, Context as _};

/// Keep in step with `xtask/src/toolchain.rs`, which installs it.
const EBPF_TOOLCHAIN: &str = "nightly-2026-05-20";

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
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "mirror-ebpf",
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(EBPF_TOOLCHAIN),
    )
    .context(
        "building the eBPF program failed; `cargo xtask bootstrap` installs the pinned \
         nightly and bpf-linker it needs",
    )
}
