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

use mirror_common::{RecordHeader, RECORD_REVERSE};
use mirror_cores::{
    flow::Segment,
    pipeline::{Admission, ConfigError, Event, Pipeline, PipelineConfig},
    rewrite::HostRewrite,
};

use self::{
    sides::{Side, Sides},
    tally::{Discarded, FileTally},
};
use super::{
    dispatch::Dispatcher,
    host_rewrite::HostRewriteArgs,
    mirror_stats::{PolicySource, RelaySource},
    pipeline_cells::PipelineCells,
    run::{check_shadow, config_targets, parse_shadow, positive, relay_runtime, Outlet},
    shards::{shard_config, EventSink, Shard, ShardClock, Shards, Summed, WhenFull},
};
use crate::{
    capture::{packet, pcap, record, target::Target},
    control,
    observe::{status::status_line, Registry, Source},
    relay::{raise_fd_limit, FdLimitError, H2cMirror, Relay, RelayConfig},
    shutdown::shutdown_signal,
};

/// How often (in capture time) idle flows and stale holes are looked for, as live.
const EXPIRE_EVERY_NS: u64 = 250_000_000;
/// A pause shorter than this is not slept (a timer costs more than it paces).
const MIN_SLEEP: Duration = Duration::from_millis(1);
/// Batches queued per pipeline thread with --capture-threads.
const SHARD_QUEUE_BATCHES: usize = 64;
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
    #[command(flatten)]
    pub host_rewrite: HostRewriteArgs,
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
    /// Shard the pipeline over this many threads, by client address, behind one reader (as
    /// `mirror run --capture-threads`); each has its own relay (under --config, its own policy
    /// dispatcher) with its share of the budgets. Without it, one thread reads and runs the
    /// pipeline.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub capture_threads: Option<u16>,
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

    async fn shutdown(self, grace: Duration) {
        if let Sink::Send(outlet) = self {
            outlet.shutdown(grace).await;
        }
    }
}

impl EventSink for Sink {
    fn handle(&mut self, event: Event) {
        Sink::handle(self, event);
    }
}

/// How the file's segments reach the pipeline: on the reading thread, or through shards.
enum Feed {
    Direct {
        pipeline: Box<Pipeline>,
        sink: Sink,
        cells: Arc<PipelineCells>,
        next_expire_ns: u64,
    },
    Sharded {
        shards: Shards<Sink>,
        record: Vec<u8>,
    },
}

impl ReplayArgs {
    fn pipeline_config(&self) -> PipelineConfig {
        let rewrite = if self.config.is_some() {
            // Under a config file the dispatcher rewrites per mirror.
            HostRewrite::Keep
        } else {
            self.host_rewrite.rewrite()
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

    /// One relay's settings, with `1 / share` of the connections and bytes.
    fn relay_config(&self, share: usize) -> RelayConfig {
        let share = share.max(1);
        RelayConfig {
            shadow: self.shadow.clone().unwrap_or_default(),
            max_connections: (self.max_shadow_connections / share).max(1),
            // A replay has no pods to share between: the whole caps.
            max_connections_per_source: usize::MAX,
            max_inflight_bytes: (self.max_inflight_mib.saturating_mul(1 << 20) / share).max(1),
            max_inflight_bytes_per_source: usize::MAX,
            response_timeout: Duration::from_millis(self.response_timeout_ms),
            // A connection upgraded to h2c is replayed over HTTP/2.
            h2c: Some(H2cMirror::all(self.host_rewrite.rewrite(), self.seed)),
            ..RelayConfig::default()
        }
    }
}

/// Makes one sink (a relay, the policies' dispatcher, or the discarding counter) and
/// registers its counters in `sources`.
fn make_sink(
    args: &ReplayArgs,
    config: Option<&control::MirrorConfig>,
    share: usize,
    grace: Duration,
    sources: &mut Vec<(&'static str, Arc<dyn Source>)>,
) -> Sink {
    if args.discard {
        let discarded = Arc::new(Discarded::default());
        sources.push(("discard", discarded.clone()));
        return Sink::Discard(discarded);
    }
    match config {
        None => {
            let relay = Relay::new(args.relay_config(share));
            sources.push(("relay", relay.stats()));
            Sink::Send(Outlet::Relay(relay))
        }
        Some(config) => {
            let dispatcher = Dispatcher::new(config, args.relay_config(share), args.seed, grace);
            sources.push(("policy", Arc::new(PolicySource(dispatcher.stats()))));
            sources.push(("relay", Arc::new(RelaySource(dispatcher.stats()))));
            Sink::Send(Outlet::Policies(Box::new(dispatcher)))
        }
    }
}

/// Registers each stage once: one source, or the sum of the shards' sources of that stage.
fn register_summed(registry: &Registry, sources: Vec<(&'static str, Arc<dyn Source>)>) {
    let mut stages: Vec<(&'static str, Vec<Arc<dyn Source>>)> = Vec::new();
    for (stage, source) in sources {
        match stages.iter_mut().find(|(name, _)| *name == stage) {
            Some((_, list)) => list.push(source),
            None => stages.push((stage, vec![source])),
        }
    }
    for (stage, mut list) in stages {
        if list.len() == 1 {
            if let Some(source) = list.pop() {
                registry.register(stage, source);
            }
        } else {
            registry.register(stage, Arc::new(Summed(list)));
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
    pipeline_config.validate()?;
    let mut targets = args.targets.clone();
    if let Some(config) = &config {
        targets.extend(config_targets(config));
    }
    let mut sides = Sides::new(targets);
    let grace = Duration::from_secs(args.grace_secs);

    let registry = Registry::default();
    let relay_runtime = relay_runtime(None).map_err(ReplayError::Runtime)?;
    if !args.discard {
        raise_fd_limit(args.max_shadow_connections)?;
        if let Some(shadow) = &args.shadow {
            check_shadow(shadow).await;
        }
    }
    let on_relay_runtime = relay_runtime.enter();
    let mut sources: Vec<(&'static str, Arc<dyn Source>)> = Vec::new();
    let mut feed = match args.capture_threads {
        None => {
            let sink = make_sink(&args, config.as_ref(), 1, grace, &mut sources);
            let cells = Arc::new(PipelineCells::default());
            sources.push(("pipeline", cells.clone()));
            Feed::Direct {
                pipeline: Box::new(Pipeline::new(pipeline_config)?),
                sink,
                cells,
                next_expire_ns: 0,
            }
        }
        Some(threads) => {
            let threads = usize::from(threads);
            let mut shards = Vec::new();
            let mut pipelines = Vec::new();
            for index in 0..threads {
                let sink = make_sink(&args, config.as_ref(), threads, grace, &mut sources);
                let pipeline = Pipeline::new(shard_config(&pipeline_config, index, threads))?;
                pipelines.push(Shard::new(pipeline, sink));
            }
            for shard in &pipelines {
                sources.push(("pipeline", shard.cells.clone()));
                sources.push(("intake", shard.intake.clone()));
            }
            // A saved capture waits for room rather than drop: it has no primary to protect.
            let started = Shards::start(
                pipelines,
                SHARD_QUEUE_BATCHES,
                ShardClock::Records,
                WhenFull::Wait,
            )
            .map_err(ReplayError::Runtime)?;
            sources.push(("shards", started.stats()));
            shards.push(started);
            Feed::Sharded {
                shards: shards.remove(0),
                record: Vec::new(),
            }
        }
    };
    drop(on_relay_runtime);
    let tally = Arc::new(FileTally::default());
    sources.push(("file", tally.clone()));
    register_summed(&registry, sources);
    eprintln!("replaying {path}");

    let stop = shutdown_signal();
    tokio::pin!(stop);
    let link = reader.link_type();
    let (mut buffer, mut scratch) = (Vec::new(), Vec::new());
    let mut clock: Option<(u64, Instant)> = None;
    let mut last_ns = 0u64;
    let started = Instant::now();
    let cpu_started = process_cpu_ns();
    while let Some(captured) = reader.next_packet(&mut buffer).map_err(file_error)? {
        let count = tally.packets.fetch_add(1, Relaxed) + 1;
        let now = captured.unix_ns.max(last_ns);
        last_ns = now;
        let (first_ns, start) = *clock.get_or_insert((now, Instant::now()));
        let stopped = match args.speed {
            Some(speed) => {
                let due = start + Duration::from_nanos(((now - first_ns) as f64 / speed) as u64);
                if due > Instant::now() + MIN_SLEEP {
                    feed.flush();
                    sleep_or_stop(due, &mut stop).await
                } else {
                    false
                }
            }
            None => count.is_multiple_of(SIGNAL_CHECK_EVERY) && has_stopped(&mut stop).await,
        };
        if stopped {
            break;
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
        let side = sides.side(&headers);
        match side {
            Side::Server => tally.server_segments.fetch_add(1, Relaxed),
            Side::Client => tally.client_segments.fetch_add(1, Relaxed),
            Side::Unknown => tally.unattributed_packets.fetch_add(1, Relaxed),
        };
        if side != Side::Unknown {
            feed.segment(now, frame, &headers, side == Side::Server, &tally);
        }
    }
    let shards = feed.finish(last_ns.saturating_add(end_of_file_ns));
    let cpu_ns = process_cpu_ns().saturating_sub(cpu_started);
    let wall = started.elapsed();
    tally.endpoints_not_learnt.store(sides.not_learnt, Relaxed);
    explain(&args, &tally);
    if args.discard {
        let requests = registry.total("discard", "request_ends").unwrap_or(0);
        let per_cpu_second = requests as f64 / (cpu_ns.max(1) as f64 / 1e9);
        eprintln!(
            "replay: {requests} requests in {:.3} s ({:.3} s of CPU, all threads): \
             {per_cpu_second:.0} requests per CPU second, {:.0} per second",
            wall.as_secs_f64(),
            cpu_ns as f64 / 1e9,
            requests as f64 / wall.as_secs_f64().max(1e-9),
        );
    }
    let mut closing = tokio::task::JoinSet::new();
    for sink in shards {
        closing.spawn_on(sink.shutdown(grace), relay_runtime.handle());
    }
    while closing.join_next().await.is_some() {}
    relay_runtime.shutdown_background();
    eprintln!("{}", status_line(&registry));
    Ok(())
}

impl Feed {
    /// One segment of the file: `frame` whole, `headers` already parsed from it.
    fn segment(
        &mut self,
        now: u64,
        frame: &[u8],
        headers: &Segment<'_>,
        server: bool,
        tally: &FileTally,
    ) {
        match self {
            Feed::Direct {
                pipeline,
                sink,
                cells,
                next_expire_ns,
            } => {
                if now >= *next_expire_ns {
                    pipeline.expire(now, &mut |event| sink.handle(event));
                    cells.publish(pipeline);
                    *next_expire_ns = now + EXPIRE_EVERY_NS;
                }
                if server {
                    pipeline.on_server_segment(now, headers, &mut |event| sink.handle(event));
                } else if let Ok(segment) = packet::parse_ethernet(frame) {
                    pipeline.on_segment(now, &segment, &mut |event| sink.handle(event));
                } else {
                    tally.undecodable_packets.fetch_add(1, Relaxed);
                }
            }
            Feed::Sharded { shards, record } => {
                let len = u32::try_from(frame.len()).unwrap_or(u32::MAX);
                let header = RecordHeader {
                    timestamp_ns: now,
                    orig_len: len,
                    cap_len: len,
                    flags: if server { RECORD_REVERSE } else { 0 },
                    ..RecordHeader::default()
                };
                record.clear();
                record::encode(&header, frame, record);
                shards.dispatch(record);
            }
        }
    }

    /// Hands on what waits in partly filled batches.
    fn flush(&mut self) {
        if let Feed::Sharded { shards, .. } = self {
            shards.flush();
        }
    }

    /// Ends every flow still open as of `end_ns` and returns the sinks.
    fn finish(self, end_ns: u64) -> Vec<Sink> {
        match self {
            Feed::Direct {
                mut pipeline,
                mut sink,
                cells,
                ..
            } => {
                pipeline.expire(end_ns, &mut |event| sink.handle(event));
                cells.publish(&pipeline);
                vec![sink]
            }
            Feed::Sharded { shards, .. } => shards
                .finish()
                .into_iter()
                .map(|mut shard| {
                    let sink = &mut shard.sink;
                    shard
                        .pipeline
                        .expire(end_ns, &mut |event| sink.handle(event));
                    shard.cells.publish(&shard.pipeline);
                    shard.sink
                })
                .collect(),
        }
    }
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

/// CPU time the whole process has used, in nanoseconds.
fn process_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}
