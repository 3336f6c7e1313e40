//! `mirror run`: capture, rebuild, rewrite and replay to the shadow — the agent itself.
//!
//! One task owns the whole capture path (ring buffer reader, pipeline, relay dispatcher), so
//! nothing on it locks; shadow connections run on their own tasks behind bounded queues.
//! Every stage's counters are registered in one [`Registry`], which the status line renders.
//!
//! Two ways to say what to mirror: the flags (one policy, one mirror: the pipeline samples
//! and rewrites Host, one relay sends), or `--config FILE` (the pipeline hands on every
//! request unchanged and the [`Dispatcher`] applies the file's policies, one relay per
//! mirror; the file is reloaded on SIGHUP and when it changes). With `--config`, the flags
//! that say what to mirror (`--iface`, `--target`, `--targets-file`, `--shadow`,
//! `--percent`, `--host-suffix`, `--host`, `--keep-host`) are refused; the tuning flags
//! (queues, budgets, timeouts, mark, seed, polling) apply to every mirror.

use std::{
    collections::BTreeSet,
    path::PathBuf,
    sync::{atomic::Ordering::Relaxed, Arc},
    time::Duration,
};

use mirror_cores::{
    pipeline::{ConfigError, Event, Pipeline, PipelineConfig},
    rewrite::HostRewrite,
};

use super::{
    dispatch::Dispatcher,
    intake::Intake,
    mirror_stats::{PolicySource, RelaySource},
    pipeline_cells::PipelineCells,
};
use crate::{
    capture::{
        clock, packet, record,
        session::{CaptureOptions, Session, SessionError},
        target::Target,
    },
    control::{self, interfaces::InterfacesError, reload, MirrorConfig},
    observe::{status::status_line, Registry},
    relay::{Relay, RelayConfig},
    shutdown::shutdown_signal,
};

/// With `--poll-ms`, the kernel wakes the agent early once this much waits in the ring.
const BATCH_WAKEUP_BYTES: u32 = 256 << 10;

/// Marks the agent's shadow sockets (SO_MARK) so the kernel program never captures them.
pub const DEFAULT_SHADOW_MARK: u32 = 0x6d69_7272;

#[derive(Clone, Debug, clap::Args)]
#[command(mut_arg("ifaces", |arg| arg.required(false).required_unless_present("config")))]
pub struct RunArgs {
    #[command(flatten)]
    pub capture: CaptureOptions,
    /// Mirror policies from this YAML file (see the README's "Config file"), reloaded on
    /// SIGHUP and when it changes. Replaces the flags that say what to mirror.
    #[arg(long, value_name = "FILE", conflicts_with_all = POLICY_FLAGS)]
    pub config: Option<PathBuf>,
    /// The shadow (v2), HOST:PORT: a name (resolved at each connect) or an address.
    #[arg(long, value_name = "HOST:PORT", required_unless_present = "config")]
    pub shadow: Option<String>,
    /// Share of requests mirrored, 0 to 100 (fractions allowed), decided per request.
    #[arg(long, default_value_t = 100.0)]
    pub percent: f64,
    /// Text inserted after the Host's name, before its port (Envoy's `-shadow` by default).
    #[arg(long, default_value = "-shadow", value_name = "TEXT")]
    pub host_suffix: String,
    /// Send this fixed Host instead of a suffixed one.
    #[arg(long, value_name = "HOST", conflicts_with = "keep_host")]
    pub host: Option<String>,
    /// Forward the Host header unchanged (for shadows behind virtual hosts).
    #[arg(long)]
    pub keep_host: bool,
    /// SO_MARK of the agent's own shadow connections, which the kernel never captures.
    #[arg(long, default_value_t = DEFAULT_SHADOW_MARK)]
    pub shadow_mark: u32,
    /// Most shadow connections open at once (each captured client connection has its own, so
    /// v2 sees v1's connection pattern; a few KiB each).
    #[arg(long, default_value_t = 4096)]
    pub max_shadow_connections: usize,
    /// Request pieces queued per shadow connection before requests are dropped.
    #[arg(long, default_value_t = 1024)]
    pub shadow_queue: usize,
    /// Request bytes queued for the shadow over all connections, in MiB.
    #[arg(long, default_value_t = 64)]
    pub max_inflight_mib: usize,
    /// Timeout of a connect to the shadow, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    pub connect_timeout_ms: u64,
    /// How long the shadow may take to accept a write or answer, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    pub response_timeout_ms: u64,
    /// Seconds between the status lines in the log.
    #[arg(long, default_value_t = 60)]
    pub log_interval_secs: u64,
    /// Seconds queued requests get to reach the shadow at shutdown.
    #[arg(long, default_value_t = 5)]
    pub grace_secs: u64,
    /// Read the ring buffer every this many milliseconds, and have the kernel wake the agent
    /// only when 256 KiB wait unread: one wake-up per batch instead of one per packet, so the
    /// agent takes less CPU from the node's workloads. 0: wake for every packet.
    #[arg(long, default_value_t = 5)]
    pub poll_ms: u64,
    /// Scheduling niceness of the agent (0 to 19). At 0 it competes for CPU like any workload;
    /// higher values give the node's workloads, the primary among them, the CPU first, at the
    /// price of (counted) drops when the node is saturated: measured here at saturation with a
    /// connection per request, nice 10 mirrored 47% of requests and nice 0 all of them.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(i32).range(0..=19))]
    pub nice: i32,
    /// Seed of the per-request sampling decisions (fixed: reproducible runs).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// The flags a config file replaces (their clap ids).
const POLICY_FLAGS: [&str; 8] = [
    "ifaces",
    "targets",
    "targets_file",
    "shadow",
    "percent",
    "host_suffix",
    "host",
    "keep_host",
];

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    File(#[from] control::ConfigError),
    #[error(transparent)]
    Interfaces(#[from] InterfacesError),
    #[error("reading the ring buffer failed")]
    Ring(#[source] std::io::Error),
}

impl RunArgs {
    fn pipeline_config(&self) -> PipelineConfig {
        let rewrite = if self.keep_host {
            HostRewrite::Keep
        } else if let Some(host) = &self.host {
            HostRewrite::Fixed(host.clone())
        } else {
            HostRewrite::Suffix(self.host_suffix.clone())
        };
        PipelineConfig {
            sample_percent: self.percent,
            sample_seed: self.seed,
            ..PipelineConfig::default()
        }
        .with_rewrite(rewrite)
    }

    /// The relay settings; under a config file, every mirror's (its backend as the shadow).
    fn relay_config(&self) -> RelayConfig {
        RelayConfig {
            shadow: self.shadow.clone().unwrap_or_default(),
            mark: self.shadow_mark,
            max_connections: self.max_shadow_connections,
            queue_depth: self.shadow_queue.max(1),
            max_inflight_bytes: self.max_inflight_mib.saturating_mul(1 << 20),
            connect_timeout: Duration::from_millis(self.connect_timeout_ms),
            response_timeout: Duration::from_millis(self.response_timeout_ms),
            ..RelayConfig::default()
        }
    }
}

/// Lowers the calling thread's priority; threads it starts afterwards inherit it, so call it
/// before building the runtime.
pub fn set_nice(nice: i32) -> std::io::Result<()> {
    // SAFETY: setpriority(2) on the calling thread (who = 0) with a plain integer.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Where the pipeline's events go: one relay (flags) or the policies' dispatcher (file).
enum Outlet {
    Relay(Relay),
    Policies(Box<Dispatcher>),
}

impl Outlet {
    fn handle(&mut self, event: Event) {
        match self {
            Outlet::Relay(relay) => relay.handle(event),
            Outlet::Policies(dispatcher) => dispatcher.handle(event),
        }
    }

    async fn shutdown(self, grace: Duration) {
        match self {
            Outlet::Relay(relay) => relay.shutdown(grace).await,
            Outlet::Policies(dispatcher) => (*dispatcher).shutdown(grace).await,
        }
    }
}

/// The capture targets of a config: every policy's.
fn config_targets(config: &MirrorConfig) -> BTreeSet<Target> {
    config.policies.iter().filter_map(|p| p.target).collect()
}

/// Mirrors until SIGINT/SIGTERM, then gives queued requests a grace period.
pub async fn run(args: RunArgs) -> Result<(), RunError> {
    let grace = Duration::from_secs(args.grace_secs);
    let file = match &args.config {
        Some(path) => Some((path.clone(), control::load(path)?)),
        None => None,
    };
    let mut capture = args.capture.clone();
    let mut pipeline_config = args.pipeline_config();
    if let Some((_, config)) = &file {
        capture.ifaces = control::interfaces::expand(&config.interfaces)?;
        capture.targets = config_targets(config).into_iter().collect();
        // The dispatcher samples and rewrites per mirror: the pipeline hands on every
        // request with the client's own head.
        pipeline_config = PipelineConfig {
            sample_percent: 100.0,
            ..pipeline_config
        }
        .with_rewrite(HostRewrite::Keep);
    }
    let mut pipeline = Pipeline::new(pipeline_config)?;
    let wakeup_bytes = if args.poll_ms == 0 {
        0
    } else {
        BATCH_WAKEUP_BYTES
    };
    let mut session = Session::start(&capture, args.shadow_mark, wakeup_bytes)?;
    let intake = Arc::new(Intake::default());
    let cells = Arc::new(PipelineCells::default());
    // The order of the status line: where requests went first, then how they got there.
    let registry = Registry::default();
    let (mut outlet, mut reloads) = match &file {
        None => {
            let relay = Relay::new(args.relay_config());
            registry.register("relay", relay.stats());
            let shadow = args.shadow.clone().unwrap_or_default();
            tracing::info!(%shadow, percent = args.percent, "mirroring");
            eprintln!("mirroring to {shadow}; Ctrl-C to stop");
            (Outlet::Relay(relay), None)
        }
        Some((path, config)) => {
            let dispatcher = Dispatcher::new(config, args.relay_config(), args.seed, grace);
            registry.register("policy", Arc::new(PolicySource(dispatcher.stats())));
            registry.register("relay", Arc::new(RelaySource(dispatcher.stats())));
            let mirrors: usize = config.policies.iter().map(|p| p.backends.len()).sum();
            tracing::info!(config = %path.display(), policies = config.policies.len(), mirrors, "mirroring");
            eprintln!(
                "mirroring to {mirrors} mirrors of {} policies from {}; Ctrl-C to stop",
                config.policies.len(),
                path.display()
            );
            let reloads = reload::watch(path.clone(), config.clone());
            (Outlet::Policies(Box::new(dispatcher)), Some(reloads))
        }
    };
    registry.register("pipeline", cells.clone());
    registry.register("intake", intake.clone());
    let (kernel, bpf) = session.kernel_sources();
    registry.register("kernel", Arc::new(kernel));
    registry.register("bpf", Arc::new(bpf));

    let mut expire = tokio::time::interval(Duration::from_millis(250));
    // Without wake-ups the ring is drained on this timer (with them, it never fires usefully
    // but costs nothing).
    let mut poll = tokio::time::interval(Duration::from_millis(args.poll_ms.max(1)));
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut report = tokio::time::interval(Duration::from_secs(args.log_interval_secs.max(1)));
    report.tick().await;
    let stop = shutdown_signal();
    tokio::pin!(stop);
    loop {
        let mut on_record = |item: &[u8]| intake_record(item, &intake, &mut pipeline, &mut outlet);
        tokio::select! {
            biased;
            () = &mut stop => break,
            batch = session.reader().next_batch(&mut on_record) => {
                batch.map_err(RunError::Ring)?;
                cells.publish(&pipeline);
            }
            _ = poll.tick(), if args.poll_ms > 0 => {
                session.reader().drain(&mut on_record);
                cells.publish(&pipeline);
            }
            _ = expire.tick() => {
                pipeline.expire(clock::monotonic_ns(), &mut |event| outlet.handle(event));
                cells.publish(&pipeline);
            }
            Some(config) = next_reload(&mut reloads) => {
                apply_reload(&config, &session, &mut outlet);
            }
            _ = report.tick() => tracing::info!("{}", status_line(&registry)),
        }
    }
    session
        .reader()
        .drain(|item| intake_record(item, &intake, &mut pipeline, &mut outlet));
    cells.publish(&pipeline);
    outlet.shutdown(grace).await;
    // The relay's counters move during the grace period: report them after it.
    eprintln!("{}", status_line(&registry));
    Ok(())
}

/// The next reloaded config, or never without a file.
async fn next_reload(
    reloads: &mut Option<tokio::sync::mpsc::Receiver<MirrorConfig>>,
) -> Option<MirrorConfig> {
    match reloads {
        Some(receiver) => receiver.recv().await,
        None => std::future::pending().await,
    }
}

/// Applies a reloaded config between two records: later request heads follow it.
fn apply_reload(config: &MirrorConfig, session: &Session, outlet: &mut Outlet) {
    if let Err(error) = session.set_targets(&config_targets(config)) {
        tracing::error!(%error, "config reload: targets not updated; keeping the running config");
        return;
    }
    if let Outlet::Policies(dispatcher) = outlet {
        dispatcher.reconfigure(config);
    }
    tracing::info!(policies = config.policies.len(), "config reloaded");
}

fn intake_record(item: &[u8], intake: &Intake, pipeline: &mut Pipeline, outlet: &mut Outlet) {
    intake.records.fetch_add(1, Relaxed);
    let Ok(record) = record::decode(item) else {
        intake.malformed_records.fetch_add(1, Relaxed);
        return;
    };
    let Ok(segment) = packet::parse_ethernet(record.packet) else {
        intake.undecodable_packets.fetch_add(1, Relaxed);
        return;
    };
    pipeline.on_segment(record.header.timestamp_ns, &segment, &mut |event| {
        outlet.handle(event)
    });
}
