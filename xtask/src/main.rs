//! Project tasks: `cargo xtask <task>`. Each is a thin door onto cargo and the test-bed.

mod bench;
mod demo;
mod packages;
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
    /// Play Istio's mirroring task on network namespaces, narrated (needs root).
    Demo(demo::DemoArgs),
    /// Fuzz TCP reassembly + HTTP framing together for a while (libFuzzer, pinned nightly).
    Fuzz {
        /// How long to run, in seconds.
        #[arg(default_value_t = 30)]
        seconds: u32,
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
        Task::Demo(args) => demo::demo(&args),
        Task::Fuzz { seconds } => fuzz(seconds),
        Task::Test { args } => test(&args),
        Task::Bench(args) => bench::bench(&args),
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

fn fuzz(seconds: u32) -> Result<()> {
    toolchain::bootstrap()?;
    toolchain::ensure_cargo_fuzz()?;
    run(
        Command::new(workspace_root().join("mirror-userspace/cores/fuzz/run.sh"))
            .arg(seconds.to_string()),
    )
}

fn test(args: &[String]) -> Result<()> {
    // As root the end-to-end tests run, so their programs must be there; without root they
    // skip (or fail under CI), and a missing program is only worth a note.
    if packages::is_root() {
        packages::ensure(packages::Task::Test)?;
    } else if let Some(advice) = packages::check(packages::Task::Test) {
        eprintln!("note: {advice}");
    }
    toolchain::bootstrap()?;
    // The end-to-end tests run the agent (release: what ships, and what the latency tests
    // should measure) and the test sink, so build both first.
    run(Command::new(env!("CARGO")).args(["build", "--bins"]))?;
    run(Command::new(env!("CARGO")).args(["build", "--release", "--bin", "mirror"]))?;
    let agent = target_dir().join("release/mirror");
    run(Command::new(env!("CARGO"))
        .args(["test"])
        .args(args)
        .env("MIRROR_BIN", agent))
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

/// Replaces this process with `binary`, so that Ctrl-C reaches it alone and the shell waits
/// until it has cleaned up.
pub(crate) fn exec<S: AsRef<std::ffi::OsStr>>(
    binary: &std::path::Path,
    args: impl IntoIterator<Item = S>,
) -> Result<()> {
    use std::os::unix::process::CommandExt as _;
    let err = Command::new(binary).args(args).exec();
    Err(err).with_context(|| format!("could not run {}", binary.display()))
}

/// Cargo's target directory.
pub(crate) fn target_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// The workspace root (xtask lives one level below it).
fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default()
}
