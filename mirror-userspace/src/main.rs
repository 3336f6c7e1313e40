//! `mirror`: kernel-level traffic mirroring. This file is the binary's edge: it parses the
//! command line, sets up logging and the runtime, and reports errors with anyhow.

use clap::{Parser, Subcommand};
use mirror_userspace::capture;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(name = "mirror", version, about = "Kernel-level traffic mirroring")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print (and optionally save as pcap) the TCP segments the kernel program captures.
    Capture(capture::CaptureArgs),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            // aya warns that the object's BTF has names the kernel rejects (from
            // aya-log-ebpf's generic types); it then loads without BTF, which our programs
            // do not need, so that warning is noise.
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new("info,aya::bpf=error")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match cli.command {
            Command::Capture(args) => capture::run(args).await?,
        }
        anyhow::Ok(())
    })
}
