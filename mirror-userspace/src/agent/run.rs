//! `mirror run`: capture, rebuild, rewrite and replay to the shadow — the agent itself.
//!
//! One task owns the whole capture path (ring buffer reader, pipeline, relay dispatcher), so
//! nothing on it locks; shadow connections run on their own tasks behind bounded queues.

use std::time::Duration;

use mirror_cores::{
    outcome::Counters,
    pipeline::{ConfigError, Pipeline, PipelineConfig},
    rewrite::HostRewrite,
};

use crate::{
    capture::{
        clock, packet, record,
        session::{self, CaptureOptions, OwnMark, Session, SessionError},
    },
    relay::{Relay, RelayConfig, RelayStats},
    shutdown::shutdown_signal,
};

/// With `--poll-ms`, the kernel wakes the agent early once this much waits in the ring.
const BATCH_WAKEUP_BYTES: u32 = 256 << 10;

#[derive(Clone, Debug, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub capture: CaptureOptions,
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
    /// SO_MARK of the agent's own shadow connections, which the kernel never captures
    /// (decimal or 0x hex).
    #[arg(long, default_value = "0x6d", value_parser = session::parse_mark)]
    pub shadow_mark: u32,
    /// The mark bits the kernel compares with --shadow-mark: other bits may change on the way
    /// (CNI rules) without the agent capturing its own traffic. The default, the low byte, is
    /// one no kube-proxy, Calico or Cilium rule sets or clears on host traffic
    /// (`session::CNI_MARK_BITS`).
    #[arg(long, default_value = "0xff", value_parser = session::parse_mark)]
    pub shadow_mark_mask: u32,
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
}

/// What the capture path saw before the pipeline.
#[derive(Debug, Default)]
struct Intake {
    records: u64,
    malformed_records: u64,
    undecodable_packets: u64,
    /// Header-only records of v1's side, not (yet) fed to the pipeline: it takes client data.
    reverse_records: u64,
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

    fn relay_config(&self) -> RelayConfig {
        RelayConfig {
            shadow: self.shadow.clone(),
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

/// Mirrors until SIGINT/SIGTERM, then gives queued requests a grace period.
pub async fn run(args: RunArgs) -> Result<(), RunError> {
    let mut pipeline = Pipeline::new(args.pipeline_config())?;
    let wakeup_bytes = if args.poll_ms == 0 {
        0
    } else {
        BATCH_WAKEUP_BYTES
    };
    let own_mark = OwnMark {
        value: args.shadow_mark,
        mask: args.shadow_mark_mask,
    };
    let mut session = Session::start(&args.capture, own_mark, wakeup_bytes)?;
    let mut relay = Relay::new(args.relay_config());
    let mut intake = Intake::default();
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
        let mut on_record =
            |item: &[u8]| intake_record(item, &mut intake, &mut pipeline, &mut relay);
        tokio::select! {
            biased;
            () = &mut stop => break,
            batch = session.reader().next_batch(&mut on_record) => batch.map_err(RunError::Ring)?,
            _ = poll.tick(), if args.poll_ms > 0 => {
                session.reader().drain(&mut on_record);
            }
            _ = expire.tick() => {
                pipeline.expire(clock::monotonic_ns(), &mut |event| relay.handle(event));
            }
            _ = report.tick() => {
                let line = status_line(
                    &session,
                    &pipeline,
                    &relay.stats(),
                    relay.live_connections(),
                    &intake,
                );
                tracing::info!("{line}");
            }
        }
    }
    session
        .reader()
        .drain(|item| intake_record(item, &mut intake, &mut pipeline, &mut relay));
    let stats = relay.stats();
    relay.shutdown(Duration::from_secs(args.grace_secs)).await;
    // The relay's counters move during the grace period: report them after it.
    eprintln!("{}", status_line(&session, &pipeline, &stats, 0, &intake));
    Ok(())
}

fn intake_record(item: &[u8], intake: &mut Intake, pipeline: &mut Pipeline, relay: &mut Relay) {
    intake.records += 1;
    let Ok(record) = record::decode(item) else {
        intake.malformed_records += 1;
        return;
    };
    if record.reverse() {
        intake.reverse_records += 1;
        return;
    }
    let Ok(segment) = packet::parse_ethernet(record.packet) else {
        intake.undecodable_packets += 1;
        return;
    };
    pipeline.on_segment(record.header.timestamp_ns, &segment, &mut |event| {
        relay.handle(event)
    });
}

/// One line saying where the traffic went: relay, pipeline outcomes, intake, kernel, and the
/// kernel programs' run counts and times when `--bpf-stats` is on.
fn status_line(
    session: &Session,
    pipeline: &Pipeline,
    relay: &RelayStats,
    shadow_connections: usize,
    intake: &Intake,
) -> String {
    let mut line = String::from("relay:");
    for (name, value) in relay.snapshot() {
        line.push_str(&format!(" {name}={value}"));
    }
    line.push_str(&format!(" shadow_connections={shadow_connections}"));
    line.push_str(" | pipeline:");
    push_counters(&mut line, pipeline.counters());
    line.push_str(&format!(
        " flows={} buffered_bytes={}",
        pipeline.flow_count(),
        pipeline.buffered_bytes()
    ));
    line.push_str(&format!(
        " | intake: records={} malformed_records={} undecodable_packets={} reverse_records={} | kernel:",
        intake.records, intake.malformed_records, intake.undecodable_packets, intake.reverse_records
    ));
    for (name, value) in session.kernel_counters() {
        line.push_str(&format!(" {name}={value}"));
    }
    // Only with --bpf-stats: without it the kernel keeps no run times and these stay zero.
    let programs: Vec<_> = session
        .run_stats()
        .into_iter()
        .filter(|stats| stats.runs > 0)
        .collect();
    if !programs.is_empty() {
        line.push_str(" | bpf:");
        for stats in programs {
            line.push_str(&format!(
                " {} runs={} run_time_ns={} ns_per_run={}",
                stats.program,
                stats.runs,
                stats.run_time_ns,
                stats.ns_per_run().unwrap_or(0)
            ));
        }
    }
    line
}

fn push_counters(line: &mut String, counters: &Counters) {
    for (name, value) in counters.iter() {
        line.push_str(&format!(" {name}={value}"));
    }
}
