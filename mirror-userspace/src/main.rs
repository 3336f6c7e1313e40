//! `mirror`: kernel-level traffic mirroring. This file is the binary's edge: it parses the
//! command line, sets up logging and the runtime, and reports errors with anyhow.

use clap::{Parser, Subcommand};
use std::io::Write as _;

use mirror_userspace::{
    agent::{replay, run},
    capture::attached,
    control,
    inspect::dump,
    observe::status_cmd,
};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(name = "mirror", version, about = "Kernel-level traffic mirroring")]
struct Cli {
    /// Log lines as text for people or as JSON objects for log collectors.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Print (and optionally save as pcap) the TCP segments the kernel program captures.
    Capture(dump::CaptureArgs),
    /// Mirror: replay every captured request to the shadow, replies discarded.
    Run(Box<run::RunArgs>),
    /// Replay a saved capture (pcap) through the pipeline to the shadow, then report.
    Replay(Box<replay::ReplayArgs>),
    /// List the BPF programs on interfaces' TCX hooks, in run order.
    Attached(attached::AttachedArgs),
    /// Summarise a running agent from its admin endpoint: interfaces, rates, drops, latency.
    Status(status_cmd::StatusArgs),
    /// Check a config file, or write one from Istio or Gateway API objects.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate FILE and print the effective policies.
    Check { file: std::path::PathBuf },
    /// Turn VirtualServices (mirror, mirrorPercentage, mirrors) and HTTPRoutes
    /// (RequestMirror filters) into a config file, written to stdout.
    FromIstio {
        file: std::path::PathBuf,
        /// The primary service's address or prefix (the objects only name it).
        #[arg(long, value_name = "ADDR[/PREFIX]")]
        address: Option<String>,
        /// Capture interfaces (names or globs) to write; default `veth*`.
        #[arg(long = "iface", value_name = "NAME")]
        ifaces: Vec<String>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Capture(args) => runtime()?.block_on(dump::run(args))?,
        Command::Run(args) => {
            run::set_nice(args.nice)?;
            capture_runtime()?.block_on(run::run(*args))?
        }
        Command::Replay(args) => capture_runtime()?.block_on(replay::run(*args))?,
        Command::Attached(args) => print_attached(&args)?,
        Command::Status(args) => runtime()?.block_on(status_cmd::run(&args))?,
        Command::Config(command) => config_command(command)?,
    }
    Ok(())
}

fn config_command(command: ConfigCommand) -> anyhow::Result<()> {
    match command {
        ConfigCommand::Check { file } => {
            let config = control::load(&file)?;
            print!("{config}");
        }
        ConfigCommand::FromIstio {
            file,
            address,
            ifaces,
        } => {
            let text = control::config::read_capped(&file)?;
            let converted = control::istio::convert(&text, address.as_deref(), &ifaces)?;
            print!("{}", converted.yaml);
            for note in converted.notes {
                eprintln!("note: {note}");
            }
        }
    }
    Ok(())
}

/// Logs go to stderr (stdout carries command output and `--access-log -`). No log line carries
/// a request's body or header values: they hold credentials.
fn init_logging(format: LogFormat) {
    // aya warns that the object's BTF has names the kernel rejects (from aya-log-ebpf's
    // generic types); it then loads without BTF, which our programs do not need, so that
    // warning is noise.
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,aya::bpf=error"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Two worker threads, one per core here. A single thread was measured too: it mirrored only
/// 62% of the requests at saturation with a new connection per request (the relay's connect
/// and teardown work needs more than one core there), against 99.9% with two.
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}

/// The capture path of `mirror run` is one task on one thread; the relay builds a runtime of
/// its own (two threads) for its connections, so neither waits behind the other.
fn capture_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// One line per program: `IFACE DIRECTION tcx NAME id ID`.
fn print_attached(args: &attached::AttachedArgs) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    for iface in &args.ifaces {
        for program in attached::tcx_programs(iface)? {
            writeln!(
                out,
                "{} {:?} tcx {} id {}",
                program.iface, program.direction, program.name, program.id
            )?;
        }
    }
    Ok(())
}
