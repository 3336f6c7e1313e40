//! `cargo xtask demo`: checks the machine, installs the pinned toolchain, builds, then hands over
//! to `mirror-demo` (tests/src/bin/mirror-demo), which plays Istio's mirroring task.
//!
//! The demo itself is a separate binary because it is built on the test-bed library, which links
//! the agent's library, whose build script needs the eBPF toolchain: xtask has to install that
//! toolchain before anything that links the test-bed can be compiled.

mod preflight;

use std::io::Write as _;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context as _, Result};

use crate::toolchain::{self, ebpf_toolchain, BPF_LINKER_VERSION};

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Leave the set-up running afterwards (servers, and the agent mirroring 100%) and print
    /// how to reach it.
    #[arg(long)]
    keep: bool,
    /// Remove a set-up left by `--keep`.
    #[arg(long, conflicts_with = "keep")]
    down: bool,
}

pub fn demo(args: &DemoArgs) -> Result<()> {
    preflight::require_root()?;
    let binary = demo_binary();
    if args.down && binary.exists() {
        // Removing needs nothing new: skip the toolchain and build.
        return crate::exec(&binary, ["--down"]);
    }
    preflight::require_tools()?;
    say("mirror demo: Istio's \"Mirroring\" task (httpbin v1 and v2, a sleep client), with a TC");
    say("eBPF program and an agent in place of Envoy.");
    say("\n== Set-up: toolchain and build");
    say(format!(
        "The eBPF program needs {} with rust-src and bpf-linker \
         {BPF_LINKER_VERSION}; they are installed if missing (a minute or two, once).",
        ebpf_toolchain()
    ));
    toolchain::bootstrap().context(
        "set-up: installing the pinned eBPF toolchain failed (it needs rustup, a C toolchain \
         and network access to crates.io)",
    )?;
    say("Building the eBPF program, the agent and the demo: cargo build --bins (the first build");
    say("takes several minutes; cargo shows its progress):");
    crate::run(Command::new(env!("CARGO")).args(["build", "--bins"]))
        .context("set-up: the build failed; cargo's messages above say why")?;
    let mut forwarded = Vec::new();
    if args.keep {
        forwarded.push("--keep");
    }
    if args.down {
        forwarded.push("--down");
    }
    crate::exec(&binary, forwarded)
}

/// Where `cargo build --bins` puts the demo.
fn demo_binary() -> PathBuf {
    crate::target_dir().join("debug/mirror-demo")
}

fn say(text: impl AsRef<str>) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", text.as_ref());
    let _ = out.flush();
}
