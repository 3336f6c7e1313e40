//! `cargo xtask bench`: installs the system packages it needs (see [`crate::packages`]) and the
//! pinned toolchain, builds everything in release (the agent, the sink, the fixed-rate load
//! generator `mirror-load`), then hands over to `mirror-bench` (tests/src/bin/mirror-bench),
//! which measures the agent next to an ideal mirror and nginx's and Envoy's mirroring on the
//! namespace test-bed. Like the demo, the bench is a binary of the
//! tests package because it links the test-bed, which xtask cannot build before the toolchain
//! is installed.

use std::process::Command;

use anyhow::Result;

use crate::packages::{self, Task};
use crate::toolchain;

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Arguments for mirror-bench: `--smoke`, `--micro`, `--rounds N`, `--seconds N`,
    /// `--rate-fractions F,F,...`, `--httpbin-rate-fractions F,...`, `--rate-rounds N`, `--no-micro`, `--capture-path`, `--memory`, `--ring-sizes N,N,...`, `--h2-only` (see `target/release/mirror-bench --help`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

pub fn bench(args: &BenchArgs) -> Result<()> {
    let micro_only = args.args.iter().any(|arg| arg == "--micro");
    if !micro_only {
        packages::ensure(Task::Bench)?;
    }
    toolchain::bootstrap()?;
    // Release: the agent and the sink measured are what ships.
    crate::run(Command::new(env!("CARGO")).args(["build", "--release", "--bins"]))?;
    crate::exec(
        &crate::target_dir().join("release/mirror-bench"),
        &args.args,
    )
}
