//! Project tasks: `cargo xtask <task>`. Each is a thin door onto cargo and the test-bed.

mod bench;
mod toolchain;

use std::process::Command;

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "mirror's project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the pinned eBPF toolchain (nightly + rust-src, bpf-linker) if missing.
    Bootstrap,
    /// Build the eBPF object (the same aya-build step `cargo build` runs).
    BuildEbpf {
        /// Build the release agent instead of the debug one.
        #[arg(long)]
        release: bool,
    },
    /// Run every test: unit, property and end-to-end (needs root).
    Test {
        /// Extra arguments passed to `cargo test`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Benchmark the agent against nginx and Envoy mirroring on the test-bed (needs root).
    Bench(bench::BenchArgs),
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Bootstrap => toolchain::bootstrap(),
        Task::BuildEbpf { release } => build_ebpf(release),
        Task::Test { args } => test(&args),
        Task::Bench(args) => bench::main(&args),
    }
}

fn build_ebpf(release: bool) -> Result<()> {
    toolchain::bootstrap()?;
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["build", "--package", "mirror-userspace"]);
    if release {
        cmd.arg("--release");
    }
    run(&mut cmd)
}

fn test(args: &[String]) -> Result<()> {
    toolchain::bootstrap()?;
    // The end-to-end tests run the agent binary, so build it first.
    run(Command::new(env!("CARGO")).args(["build", "--bins"]))?;
    run(Command::new(env!("CARGO")).args(["test"]).args(args))
}

/// Runs a command to completion, failing with the command line if it fails.
pub(crate) fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("could not start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}
