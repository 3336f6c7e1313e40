//! `mirror replay FILE.pcap`: feeds a saved capture (`mirror capture --pcap`, or tcpdump on
//! the client's interface) through the same pipeline and relay as `mirror run`, so traffic
//! recorded in production can be replayed to a shadow later, and the capture path can be
//! measured without the kernel (`--discard`).
//!
//! The capture needs both directions: with v1's side in the file, a request is admitted only
//! once v1 acknowledged it, as live. A file with the client's direction only admits nothing
//! (said at the end); `--no-reverse` then trusts the client's packets, as `mirror run
//! --no-reverse` does. The file's timestamps are the pipeline's clock, so its timeouts (holes,
//! idle flows) run on capture time whatever the speed; at the end of the file every flow
//! still open is ended (a request v1 had not acknowledged by then is aborted, `expired`).

mod sides;
mod tally;

use std::{
    fs::File,
    future::Future,
    io::BufReader,
    path::PathBuf,
    pin::Pin,
    sync::{atomic::Ordering::Relaxed, Arc},
    time::{Duration, Instant},
};

use mirror_cores::{
    pipeline::{Admission, ConfigError, Event, Pipeline, PipelineConfig},
    rewrite::HostRewrite,
};

use self::{
    sides::{Side, Sides},
    tally::{Discarded, FileTally},
};
use super::{
    dispatch::Dispatcher,
    mirror_stats::{PolicySource, RelaySource},
    pipeline_cells::PipelineCells,
    run::{check_shadow, config_targets, parse_shadow, positive, relay_runtime, Outlet},
};
use crate::{
    capture::{packet, pcap, target::Target},
    control,
    observe::{status::status_line, Registry},
    relay::{raise_fd_limit, FdLimitError, Relay, RelayConfig},
    shutdown::shutdown_signal,
};

/// How often (in capture time) idle flows and stale holes are looked for, as live.
const EXPIRE_EVERY_NS: u64 = 250_000_000;
/// A pause shorter than this is not slept (a timer costs more than it paces).
const MIN_SLEEP: Duration = Duration::from_millis(1);
/// Packets between two looks at the signals when replaying as fast as possible.
const SIGNAL_CHECK_EVERY: u64 = 4096;

#[derive(Clone, Debug, clap::Args)]
pub struct ReplayArgs {
    /// The capture: classic pcap, Ethernet or Linux cooked link type (tcpdump -w, or
    /// `mirror capture --pcap`), with both directions of each connection.
    #[arg(value_name = "FILE.pcap")]
    pub file: PathBuf,
    /// The shadow (v2), HOST:PORT (IPv6 in brackets).
    #[arg(long, value_name = "HOST:PORT", value_parser = parse_shadow,
          required_unless_present_any = ["config", "discard"])]
    pub shadow: Option<String>,
    /// Mirror policies from this YAML file, as `mirror run --config` (read once).
    #[arg(long, value_name = "FILE",
          conflicts_with_all = ["shadow", "percent", "host_suffix", "host", "keep_host", "discard"])]
    pub config: Option<PathBuf>,
    /// Send nothing: count the requests the pipeline hands on and drop them, and say how
    /// much CPU the replay took (the capture path alone, without relay or v2).
    #[arg(long, conflicts_with = "shadow")]
    pub discard: bool,
    /// Replay at this multiple of the capture's own pace (1: as recorded, 2: twice as fast).
    /// Without it, as fast as the pipeline goes.
    #[arg(long, value_name = "X", value_parser = parse_speed)]
    pub speed: Option<f64>,
    /// v1's endpoints, ADDR[/PREFIX]:PORT (repeatable): packets to one are the client's,
    /// packets from one are v1's. Without any, they are learnt from the handshakes in the file.
    #[arg(long = "target", value_name = "ADDR[/PREFIX]:PORT")]
    pub targets: Vec<Target>,
    /// Trust the client's packets without v1's acknowledgements (a capture of one direction).
    #[arg(long)]
    pub no_reverse: bool,
    /// Share of requests mirrored, 0 to 100, decided per request.
    #[arg(long, default_value_t = 100.0)]
    pub percent: f64,
    /// Text inserted after the Host's name, before its port.
    #[arg(long, default_value = "-shadow", value_name = "TEXT")]
    pub host_suffix: String,
    /// Send this fixed Host instead of a suffixed one.
    #[arg(long, value_name = "HOST", conflicts_with = "keep_host")]
    pub host: Option<String>,
    /// Forward the Host header unchanged.
    #[arg(long)]
    pub keep_host: bool,
    /// Seed of the per-request sampling decisions.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Request bytes held for the shadow over all connections, in MiB; beyond, requests are
    /// dropped and counted (`dropped_budget`), as live.
    #[arg(long, default_value_t = 64, value_parser = positive::<usize>)]
    pub max_inflight_mib: usize,
    /// Most connections to the shadow open at once.
    #[arg(long, default_value_t = 4096, value_parser = positive::<usize>)]
    pub max_shadow_connections: usize,
    /// How long the shadow may take to accept or answer a request, in milliseconds.
    #[arg(long, default_value_t = 10_000, value_parser = positive::<u64>)]
    pub response_timeout_ms: u64,
    /// Seconds queued requests get to reach the shadow after the end of the file.
    #[arg(long, default_value_t = 10)]
    pub grace_secs: u64,
}

fn parse_speed(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(speed) if speed.is_finite() && speed > 0.0 => Ok(speed),
        _ => Err(format!(
            "`{text}`: must be a number above 0 (1 = as recorded)"
        )),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("reading {path}")]
    File {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    ConfigFile(#[from] control::ConfigError),
    #[error(transparent)]
    FdLimit(#[from] FdLimitError),
    #[error("starting the relay's runtime failed")]
    Runtime(#[source] std::io::Error),
}

/// Where the pipeline's events go.
enum Sink {
    Send(Outlet),
    Discard(Arc<Discarded>),
}

impl Sink {
    fn handle(&mut self, event: Event) {
        match self {
            Sink::Send(outlet) => outlet.handle(event),
            Sink::Discard(discarded) => discarded.take(event),
        }
    }
}

impl ReplayArgs {
    fn pipeline_config(&self) -> PipelineConfig {
        let rewrite = if self.config.is_some() || self.keep_host {
            // Under a config file the dispatcher rewrites per mirror.
            HostRewrite::Keep
        } else if let Some(host) = &self.host {
            HostRewrite::Fixed(host.clone())
        } else {
            HostRewrite::Suffix(self.host_suffix.clone())
        };
        let admission = if self.no_reverse {
            Admission::ClientOnly
        } else {
            Admission::AckedByV1
        };
        let percent = if self.config.is_some() {
            100.0
        } else {
            self.percent
        };
        PipelineConfig {
            sample_percent: percent,
            sample_seed: self.seed,
            ..PipelineConfig::default()
        }
        .with_rewrite(rewrite)
        .with_admission(admission)
    }

    fn relay_config(&self) -> RelayConfig {
        RelayConfig {
            shadow: self.shadow.clone().unwrap_or_default(),
            max_connections: self.max_shadow_connections,
            max_inflight_bytes: self.max_inflight_mib.saturating_mul(1 << 20),
            response_timeout: Duration::from_millis(self.response_timeout_ms),
            ..RelayConfig::default()
        }
    }
}

/// Replays the file, then gives queued requests the grace period and prints the status line.
pub async fn run(args: ReplayArgs) -> Result<(), ReplayError> {
    let path = args.file.display().to_string();
    let file_error = |source| ReplayError::File {
        path: path.clone(),
        source,
    };
    let file = File::open(&args.file).map_err(file_error)?;
    let mut reader =
        pcap::Reader::new(BufReader::with_capacity(1 << 20, file)).map_err(file_error)?;
    let config = match &args.config {
        Some(path) => Some(control::load(path)?),
        None => None,
    };
    let pipeline_config = args.pipeline_config();
    let end_of_file_ns = pipeline_config.idle_timeout_ns + pipeline_config.closed_linger_ns;
    let mut pipeline = Pipeline::new(pipeline_config)?;
    let mut targets = args.targets.clone();
    if let Some(config) = &config {
        targets.extend(config_targets(config));
    }
    let mut sides = Sides::new(targets);
    let grace = Duration::from_secs(args.grace_secs);

    let registry = Registry::default();
    let relay_runtime = relay_runtime().map_err(ReplayError::Runtime)?;
    let mut sink = if args.discard {
        let discarded = Arc::new(Discarded::default());
        registry.register("discard", discarded.clone());
        Sink::Discard(discarded)
    } else {
        raise_fd_limit(args.max_shadow_connections)?;
        let _on_relay_runtime = relay_runtime.enter();
        match &config {
            None => {
                let shadow = args.shadow.clone().unwrap_or_default();
                check_shadow(&shadow).await;
                let relay = Relay::new(args.relay_config());
                registry.register("relay", relay.stats());
                Sink::Send(Outlet::Relay(relay))
            }
            Some(config) => {
                let dispatcher = Dispatcher::new(config, args.relay_config(), args.seed, grace);
                registry.register("policy", Arc::new(PolicySource(dispatcher.stats())));
                registry.register("relay", Arc::new(RelaySource(dispatcher.stats())));
                Sink::Send(Outlet::Policies(Box::new(dispatcher)))
            }
        }
    };
    let cells = Arc::new(PipelineCells::default());
    let tally = Arc::new(FileTally::default());
    registry.register("pipeline", cells.clone());
    registry.register("file", tally.clone());
    eprintln!("replaying {path}");

    let stop = shutdown_signal();
    tokio::pin!(stop);
    let link = reader.link_type();
    let (mut buffer, mut scratch) = (Vec::new(), Vec::new());
    let mut clock: Option<(u64, Instant)> = None;
    let (mut last_ns, mut next_expire_ns) = (0u64, 0u64);
    let started = Instant::now();
    let cpu_started = thread_cpu_ns();
    while let Some(captured) = reader.next_packet(&mut buffer).map_err(file_error)? {
        let count = tally.packets.fetch_add(1, Relaxed) + 1;
        let now = captured.unix_ns.max(last_ns);
        last_ns = now;
        let (first_ns, start) = *clock.get_or_insert((now, Instant::now()));
        let stopped = match args.speed {
            Some(speed) => {
                let due = start + Duration::from_nanos(((now - first_ns) as f64 / speed) as u64);
                due > Instant::now() + MIN_SLEEP && sleep_or_stop(due, &mut stop).await
            }
            None => count.is_multiple_of(SIGNAL_CHECK_EVERY) && has_stopped(&mut stop).await,
        };
        if stopped {
            break;
        }
        if now >= next_expire_ns {
            pipeline.expire(now, &mut |event| sink.handle(event));
            cells.publish(&pipeline);
            next_expire_ns = now + EXPIRE_EVERY_NS;
        }
        let Some(frame) = pcap::ethernet_frame(link, captured.data, &mut scratch) else {
            tally.undecodable_packets.fetch_add(1, Relaxed);
            continue;
        };
        // Headers first (v1's side may be cut after them, as `mirror capture` saves it).
        let Ok(headers) = packet::parse_headers(frame) else {
            tally.undecodable_packets.fetch_add(1, Relaxed);
            continue;
        };
        match sides.side(&headers) {
            Side::Server => {
                tally.server_segments.fetch_add(1, Relaxed);
                pipeline.on_server_segment(now, &headers, &mut |event| sink.handle(event));
            }
            Side::Client => match packet::parse_ethernet(frame) {
                Ok(segment) => {
                    tally.client_segments.fetch_add(1, Relaxed);
                    pipeline.on_segment(now, &segment, &mut |event| sink.handle(event));
                }
                Err(_) => {
                    tally.undecodable_packets.fetch_add(1, Relaxed);
                }
            },
            Side::Unknown => {
                tally.unattributed_packets.fetch_add(1, Relaxed);
            }
        }
    }
    // The capture is over: every flow still open ends, as if idle past every timeout.
    pipeline.expire(last_ns.saturating_add(end_of_file_ns), &mut |event| {
        sink.handle(event)
    });
    cells.publish(&pipeline);
    let cpu_ns = thread_cpu_ns().saturating_sub(cpu_started);
    let wall = started.elapsed();
    tally.endpoints_not_learnt.store(sides.not_learnt, Relaxed);
    explain(&args, &tally);
    match sink {
        Sink::Send(outlet) => outlet.shutdown(grace).await,
        Sink::Discard(discarded) => {
            let requests = discarded.request_ends.load(Relaxed);
            let per_cpu_second = requests as f64 / (cpu_ns.max(1) as f64 / 1e9);
            eprintln!(
                "replay: {requests} requests in {:.3} s ({:.3} s of CPU on the replay thread): \
                 {per_cpu_second:.0} requests per CPU second",
                wall.as_secs_f64(),
                cpu_ns as f64 / 1e9,
            );
        }
    }
    relay_runtime.shutdown_background();
    eprintln!("{}", status_line(&registry));
    Ok(())
}

/// Sleeps until `due`; true if `stop` completed first.
async fn sleep_or_stop(due: Instant, stop: &mut Pin<&mut impl Future<Output = ()>>) -> bool {
    tokio::select! {
        biased;
        () = stop => true,
        () = tokio::time::sleep_until(due.into()) => false,
    }
}

/// Whether `stop` has completed, without waiting for it.
async fn has_stopped(stop: &mut Pin<&mut impl Future<Output = ()>>) -> bool {
    tokio::select! {
        biased;
        () = stop => true,
        () = std::future::ready(()) => false,
    }
}

/// Says why a replay may have sent less than the file holds.
fn explain(args: &ReplayArgs, tally: &FileTally) {
    let (client, server) = (
        tally.client_segments.load(Relaxed),
        tally.server_segments.load(Relaxed),
    );
    if !args.no_reverse && client > 0 && server == 0 {
        tracing::warn!(
            "the file has no packets of v1's side, whose acknowledgements admit requests: \
             nothing was mirrored. A capture of the client's direction only can be replayed \
             with --no-reverse (trusting the client's packets)"
        );
    }
    let unattributed = tally.unattributed_packets.load(Relaxed);
    if unattributed > 0 {
        tracing::warn!(
            unattributed,
            "packets skipped: neither endpoint is a --target (or, without --target, an \
             endpoint seen in a handshake in the file)"
        );
    }
}

/// CPU time the calling thread has used, in nanoseconds.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}
