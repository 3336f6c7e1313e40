//! `mirror run`: capture, rebuild, rewrite and replay to the shadow — the agent itself.
//!
//! One task owns the whole capture path (ring buffer reader, pipeline, relay dispatcher), so
//! nothing on it locks; shadow connections run on their own tasks behind bounded queues.
//! Every stage's counters are registered in one [`Registry`], which the status line renders.

use std::{
    sync::{atomic::Ordering::Relaxed, Arc},
    time::Duration,
};

use mirror_cores::{
    pipeline::{ConfigError, Pipeline, PipelineConfig},
    rewrite::HostRewrite,
};

use super::{intake::Intake, pipeline_cells::PipelineCells};
use crate::{
    capture::{
        clock, packet, record,
        session::{CaptureOptions, Session, SessionError},
    },
    observe::{
        access_log::AccessLog,
        admin::{self, AdminError, AdminState},
        health::Health,
        options::ObserveOptions,
        status::{short_line, status_line},
        Registry,
    },
    relay::{Relay, RelayConfig},
    shutdown::shutdown_signal,
};

/// With `--poll-ms`, the kernel wakes the agent early once this much waits in the ring.
const BATCH_WAKEUP_BYTES: u32 = 256 << 10;

/// Marks the agent's shadow sockets (SO_MARK) so the kernel program never captures them.
pub const DEFAULT_SHADOW_MARK: u32 = 0x6d69_7272;

#[derive(Clone, Debug, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub capture: CaptureOptions,
    #[command(flatten)]
    pub observe: ObserveOptions,
    /// The shadow (v2), HOST:PORT: a name (resolved at each connect) or an address.
    #[arg(long, value_name = "HOST:PORT")]
    pub shadow: String,
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

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("reading the ring buffer failed")]
    Ring(#[source] std::io::Error),
    #[error(transparent)]
    Admin(#[from] AdminError),
    #[error("cannot open the access log")]
    AccessLog(#[source] std::io::Error),
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

    fn relay_config(&self, access_log: Option<Arc<AccessLog>>) -> RelayConfig {
        RelayConfig {
            shadow: self.shadow.clone(),
            mark: self.shadow_mark,
            max_connections: self.max_shadow_connections,
            queue_depth: self.shadow_queue.max(1),
            max_inflight_bytes: self.max_inflight_mib.saturating_mul(1 << 20),
            connect_timeout: Duration::from_millis(self.connect_timeout_ms),
            response_timeout: Duration::from_millis(self.response_timeout_ms),
            access_log,
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

/// Mirrors until SIGINT/SIGTERM, then gives queued requests a grace period.
pub async fn run(args: RunArgs) -> Result<(), RunError> {
    let mut pipeline = Pipeline::new(args.pipeline_config())?;
    let wakeup_bytes = if args.poll_ms == 0 {
        0
    } else {
        BATCH_WAKEUP_BYTES
    };
    // The order of the status line: where requests went first, then how they got there.
    let registry = Registry::default();
    let health = Arc::new(Health::default());
    // Up before attach, so that /readyz says "not ready" until the program is attached.
    if let Some(addr) = args.observe.admin_addr() {
        let state = AdminState {
            registry: registry.clone(),
            health: Arc::clone(&health),
            config: args.effective_config(),
        };
        let bound = admin::start(addr, Arc::new(state)).await?;
        tracing::info!(%bound, "admin endpoint listening");
    }
    let access_log = match &args.observe.access_log {
        Some(destination) => Some(Arc::new(
            AccessLog::start(destination, args.observe.access_log_every)
                .await
                .map_err(RunError::AccessLog)?,
        )),
        None => None,
    };
    let mut session = Session::start(&args.capture, args.shadow_mark, wakeup_bytes)?;
    health.attached(&args.capture.ifaces);
    let mut relay = Relay::new(args.relay_config(access_log.clone()));
    let intake = Arc::new(Intake::default());
    let cells = Arc::new(PipelineCells::default());
    registry.register("relay", relay.stats());
    registry.register("pipeline", cells.clone());
    registry.register("intake", intake.clone());
    let (kernel, bpf) = session.kernel_sources();
    registry.register("kernel", Arc::new(kernel));
    registry.register("bpf", Arc::new(bpf));
    registry.register("agent", health.clone());
    if let Some(access_log) = access_log {
        registry.register("access_log", access_log);
    }
    tracing::info!(shadow = %args.shadow, percent = args.percent, "mirroring");
    eprintln!("mirroring to {}; Ctrl-C to stop", args.shadow);

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
        health.beat();
        let mut on_record = |item: &[u8]| intake_record(item, &intake, &mut pipeline, &mut relay);
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
            due = expire.tick() => {
                health.timer_ran(due.into_std());
                pipeline.expire(clock::monotonic_ns(), &mut |event| relay.handle(event));
                cells.publish(&pipeline);
            }
            _ = report.tick() => tracing::info!("{}", short_line(&registry)),
        }
    }
    session
        .reader()
        .drain(|item| intake_record(item, &intake, &mut pipeline, &mut relay));
    cells.publish(&pipeline);
    relay.shutdown(Duration::from_secs(args.grace_secs)).await;
    // The relay's counters move during the grace period: report them after it. The final
    // summary has every counter (tests and the bench read it); the periodic line is short.
    eprintln!("{}", status_line(&registry));
    Ok(())
}

fn intake_record(item: &[u8], intake: &Intake, pipeline: &mut Pipeline, relay: &mut Relay) {
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
        relay.handle(event)
    });
}
