//! `mirror run`: capture, rebuild, rewrite and replay to the shadow — the agent itself.
//!
//! One task owns the whole capture path (ring buffer reader, pipeline, relay dispatcher), so
//! nothing on it locks; the relay's tasks run on a runtime of their own, behind bounded
//! queues, so the capture never waits behind them.
//! Every stage's counters are registered in one [`Registry`], which the status line renders.
//!
//! Two ways to say what to mirror: the flags (one policy, one mirror: the pipeline samples
//! and rewrites Host, one relay sends), or `--config FILE` (the pipeline hands on every
//! request unchanged and the [`Dispatcher`] applies the file's policies, one relay per
//! mirror; the file is reloaded on SIGHUP and when it changes). With `--config`, the flags
//! that say what to mirror (`--iface`, `--target`, `--targets-file`, `--shadow`,
//! `--percent`, `--host-suffix`, `--host`, `--keep-host`) are refused; the tuning flags
//! (queues, budgets, timeouts, mark, seed, polling) apply to every mirror.

use std::{collections::BTreeSet, path::PathBuf, sync::Arc, time::Duration};

use mirror_cores::{
    pipeline::{Admission, ConfigError, Event, Pipeline, PipelineConfig, StreamTarget},
    rewrite::HostRewrite,
};

use super::{
    dispatch::Dispatcher,
    heap_trim::HeapTrim,
    host_rewrite::HostRewriteArgs,
    intake::Intake,
    kubernetes::{self, AgentParts, KubernetesError, KubernetesOptions},
    mirror_stats::{PolicySource, RelaySource},
    pipeline_cells::PipelineCells,
    relay_priority::{Backlog, Governor, RelayThreads},
    run_shards,
    shards::EventSink,
};
use crate::{
    capture::{
        clock,
        live::{LiveAttachments, LiveOptions},
        session::{self, CaptureOptions, OwnMark, Session, SessionError},
        target::Target,
    },
    control::{self, config::Scope, interfaces::InterfacesError, reload, MirrorConfig},
    observe::{
        access_log::AccessLog,
        admin::{self, AdminError, AdminState},
        health::Health,
        options::ObserveOptions,
        status::{short_line, status_line},
        Registry,
    },
    relay::{raise_fd_limit, FdLimitError, H2cMirror, Relay, RelayConfig, Shadow},
    shutdown::shutdown_signal,
};

/// With `--poll-ms`, the kernel wakes the agent early once this much waits in the ring.
const BATCH_WAKEUP_BYTES: u32 = 256 << 10;

#[derive(Clone, Debug, clap::Args)]
#[command(mut_arg("ifaces", |arg| arg.required(false).required_unless_present("config")))]
pub struct RunArgs {
    #[command(flatten)]
    pub capture: CaptureOptions,
    #[command(flatten)]
    pub observe: ObserveOptions,
    #[command(flatten)]
    pub kubernetes: KubernetesOptions,
    /// Mirror policies from this YAML file (see the README's "Config file"), reloaded on
    /// SIGHUP and when it changes. Replaces the flags that say what to mirror.
    #[arg(long, value_name = "FILE", conflicts_with_all = POLICY_FLAGS)]
    pub config: Option<PathBuf>,
    /// The shadow (v2), HOST:PORT (IPv6 in brackets): a name (looked up again at most every
    /// 5 s) or an address.
    #[arg(
        long,
        value_name = "HOST:PORT",
        value_parser = parse_shadow,
        required_unless_present = "config"
    )]
    pub shadow: Option<String>,
    /// Share of requests mirrored, 0 to 100 (fractions allowed), decided per request.
    #[arg(long, default_value_t = 100.0)]
    pub percent: f64,
    #[command(flatten)]
    pub host_rewrite: HostRewriteArgs,
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
    /// Most connections to the shadow open at once, idle ones included (a client connection
    /// keeps one while it lives, then it goes back to a pool; a few KiB each). RLIMIT_NOFILE
    /// is raised to fit.
    #[arg(long, default_value_t = 4096, value_parser = positive::<usize>)]
    pub max_shadow_connections: usize,
    /// Of those, how many the client connections of one client address (a pod) may hold or
    /// wait for at once; beyond, that pod's requests are dropped
    /// (`dropped_source_connections`), no other pod's. Default: half of
    /// --max-shadow-connections. A hard limit, unlike the byte share: a client connection
    /// keeps its shadow connection while it lives, so connections lent beyond a share could
    /// not be taken back; half leaves the other pods at least half against any one pod, and
    /// one busy pod (a load generator, an ingress gateway) a few thousand at once (a quarter
    /// dropped 3.5% of a lone pod's 10,000 connections per second in the relay tests).
    #[arg(long, value_name = "N", value_parser = positive::<usize>)]
    pub max_shadow_connections_per_source: Option<usize>,
    /// Request pieces queued per client connection before requests are dropped. Generous:
    /// with v1's acknowledgements releasing the client's bytes, an upload arrives in pieces of
    /// a few KiB; the in-flight byte budget (which charges every piece at least 256 bytes) is
    /// what bounds memory.
    #[arg(long, default_value_t = 32_768, value_parser = positive::<usize>)]
    pub shadow_queue: usize,
    /// Request bytes held for the shadow over all connections (queued, or sent and not yet
    /// answered), in MiB.
    #[arg(long, default_value_t = 64, value_parser = positive::<usize>)]
    pub max_inflight_mib: usize,
    /// Of those, one client address's (a pod's) share, in MiB: a pod may hold more only while
    /// the budget keeps room for every other pod's unused share and a sixteenth for pods not
    /// yet holding any; beyond, that pod's requests are dropped (`dropped_source_budget`), no
    /// other pod's. Default: a quarter of --max-inflight-mib, so a lone pod's large upload may
    /// still use 15/16 of the budget while v2 falls behind.
    #[arg(long, value_name = "MIB", value_parser = positive::<usize>)]
    pub max_inflight_mib_per_source: Option<usize>,
    /// Timeout of a connect to the shadow, in milliseconds.
    #[arg(long, default_value_t = 2000, value_parser = positive::<u64>)]
    pub connect_timeout_ms: u64,
    /// How long the shadow may go without accepting a byte of a request, or take to answer
    /// one, in milliseconds.
    #[arg(long, default_value_t = 10_000, value_parser = positive::<u64>)]
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
    /// Niceness of the relay's threads (those that send to v2) while the relay keeps up: the
    /// capture thread keeps draining the ring at --nice while the sending yields the CPU to the
    /// node's workloads. Once the relay holds a sixteenth of --max-inflight-mib for v2, or a
    /// sixteenth of --max-shadow-connections are held or awaited by client connections, it has
    /// fallen behind, and its threads compete at --nice until both are under a sixty-fourth
    /// (`agent/relay_priority.rs`; `mirror_relay_priority_competing`). So a busy node's
    /// workloads, the primary among them, get the CPU first, and the relay still catches up
    /// before it would drop. Going back needs CAP_SYS_NICE: without it the relay stays at
    /// --nice. A value at or below --nice turns this off.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(i32).range(0..=19))]
    pub relay_nice: i32,
    /// Seed of the per-request sampling decisions (fixed: reproducible runs).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Pipeline threads of the capture path: above 1, one ring reader shards records by
    /// client address over this many threads, each with its own relay (with --config, its
    /// own policy dispatcher: a relay per mirror) and its share of the connection and byte
    /// budgets (see `agent/shards.rs`); every reload reaches every thread, and the counters
    /// are the threads' sums under the same names and labels. 1 by default, not the
    /// node's cores: one thread carries 716-839k requests per CPU second (`cargo xtask bench
    /// --capture-path`), eight to ten times what 2 cores serve, and sharding costs the reader's
    /// batch copy (618-715k per CPU second); end to end at saturation on 2 cores two threads
    /// carried 89.1k req/s against 87.3k on one in one run, and dropped records from full
    /// queues in another (`--memory`). More threads pay only past ~700k requests a second.
    #[arg(long, default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=256))]
    pub capture_threads: u16,
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
    #[error(transparent)]
    Kubernetes(#[from] KubernetesError),
    #[error("reading the ring buffer failed")]
    Ring(#[source] std::io::Error),
    #[error(transparent)]
    FdLimit(#[from] FdLimitError),
    #[error("starting the relay's runtime failed")]
    Runtime(#[source] std::io::Error),
    #[error(transparent)]
    Admin(#[from] AdminError),
    #[error("cannot open the access log")]
    AccessLog(#[source] std::io::Error),
}

/// `--shadow`: HOST:PORT, said plainly when it is not.
pub(super) fn parse_shadow(text: &str) -> Result<String, String> {
    Shadow::parse(text)
        .map(|_| text.to_owned())
        .map_err(|error| error.to_string())
}

/// A limit that must be at least 1 (0 would mean "drop everything").
pub(super) fn positive<T: std::str::FromStr + PartialOrd + Default>(
    text: &str,
) -> Result<T, String> {
    match text.parse::<T>() {
        Ok(value) if value > T::default() => Ok(value),
        _ => Err(format!("`{text}`: must be a whole number of at least 1")),
    }
}

/// Says at start if the shadow's name does not resolve now (it is looked up again later, so
/// this is a warning, not an error).
pub(super) async fn check_shadow(shadow: &str) {
    let looked_up =
        tokio::time::timeout(Duration::from_secs(5), tokio::net::lookup_host(shadow)).await;
    match looked_up.map(|found| found.map(|mut addrs| addrs.next().is_some())) {
        Ok(Ok(true)) => {}
        Ok(Ok(false)) => tracing::warn!(%shadow, "the shadow's name resolves to no address (yet)"),
        Ok(Err(error)) => {
            tracing::warn!(%shadow, %error, "the shadow's name does not resolve (yet)")
        }
        Err(_) => tracing::warn!(%shadow, "looking up the shadow's name timed out"),
    }
}

/// The relay's own runtime: its connection work never takes the capture thread. `threads`:
/// what registers each of its threads and sets their niceness (None: the caller's, unchanged).
pub(super) fn relay_runtime(
    threads: Option<Arc<RelayThreads>>,
) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(2).thread_name("mirror-relay");
    if let Some(threads) = threads {
        let stopped = Arc::clone(&threads);
        builder
            .on_thread_start(move || threads.thread_started())
            .on_thread_stop(move || stopped.thread_stopped());
    }
    builder.enable_all().build()
}

impl RunArgs {
    fn pipeline_config(&self) -> PipelineConfig {
        let rewrite = self.host_rewrite.rewrite();
        // With v1's side captured (the default), client bytes reach v2 only once v1
        // acknowledged them; --no-reverse falls back to trusting the client's packets.
        let admission = if self.capture.no_reverse {
            Admission::ClientOnly
        } else {
            Admission::AckedByV1
        };
        PipelineConfig {
            sample_percent: self.percent,
            sample_seed: self.seed,
            ..PipelineConfig::default()
        }
        .with_rewrite(rewrite)
        .with_admission(admission)
    }

    /// One pod's share of the in-flight budget, in MiB.
    pub fn max_inflight_mib_per_source(&self) -> usize {
        self.max_inflight_mib_per_source
            .unwrap_or((self.max_inflight_mib / 4).max(1))
    }

    /// One pod's share of the shadow connections.
    pub fn max_shadow_connections_per_source(&self) -> usize {
        self.max_shadow_connections_per_source
            .unwrap_or((self.max_shadow_connections / 2).max(1))
    }

    /// The relay settings; under a config file, every mirror's (its backend as the shadow).
    pub(super) fn relay_config(&self, access_log: Option<Arc<AccessLog>>) -> RelayConfig {
        RelayConfig {
            shadow: self.shadow.clone().unwrap_or_default(),
            mark: self.shadow_mark,
            max_connections: self.max_shadow_connections,
            max_connections_per_source: self.max_shadow_connections_per_source(),
            queue_depth: self.shadow_queue,
            max_inflight_bytes: self.max_inflight_mib.saturating_mul(1 << 20),
            max_inflight_bytes_per_source: self
                .max_inflight_mib_per_source()
                .saturating_mul(1 << 20),
            connect_timeout: Duration::from_millis(self.connect_timeout_ms),
            response_timeout: Duration::from_millis(self.response_timeout_ms),
            access_log,
            // A connection upgraded to h2c is replayed over HTTP/2 (under a config file,
            // each mirror's relay takes its policy's rule instead).
            h2c: Some(H2cMirror::all(self.host_rewrite.rewrite(), self.seed)),
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
pub(super) enum Outlet {
    Relay(Relay),
    Policies(Box<Dispatcher>),
    /// The capture thread's, when pipeline threads have the outlets (`--capture-threads`).
    Sharded,
}

impl Outlet {
    pub(super) fn handle(&mut self, event: Event) {
        match self {
            Outlet::Relay(relay) => relay.handle(event),
            Outlet::Policies(dispatcher) => dispatcher.handle(event),
            Outlet::Sharded => {}
        }
    }

    pub(super) async fn shutdown(self, grace: Duration) {
        match self {
            Outlet::Relay(relay) => relay.shutdown(grace).await,
            Outlet::Policies(dispatcher) => (*dispatcher).shutdown(grace).await,
            Outlet::Sharded => {}
        }
    }
}

impl EventSink for Outlet {
    fn handle(&mut self, event: Event) {
        Outlet::handle(self, event);
    }
}

/// The capture targets of a config: every policy's (a Service's as discovered).
pub(super) fn config_targets(config: &MirrorConfig) -> BTreeSet<Target> {
    config.capture_targets()
}

/// The destinations of a config's raw TCP and h2c policies (a Service's as discovered).
pub(super) fn stream_targets(config: &MirrorConfig) -> Vec<StreamTarget> {
    config
        .policies
        .iter()
        .filter(|p| p.protocol.is_stream())
        .flat_map(|p| match p.scope() {
            Scope::Some(targets) => targets,
            Scope::Every => Vec::new(),
        })
        .map(|t| StreamTarget {
            addr: t.addr,
            prefix: t.prefix,
            port: t.port,
        })
        .collect()
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
        // The node agent attaches to the pods' veths and the patterns' matches as they come.
        capture.ifaces = if args.kubernetes.enabled {
            Vec::new()
        } else {
            control::interfaces::expand(&config.interfaces)?
        };
        capture.direction = kubernetes::direction(config, &args.kubernetes, capture.direction)?;
        capture.live = args.kubernetes.enabled;
        capture.targets = config_targets(config).into_iter().collect();
        // The dispatcher samples and rewrites per mirror: the pipeline hands on every
        // request with the client's own head.
        pipeline_config = PipelineConfig {
            sample_percent: 100.0,
            ..pipeline_config
        }
        .with_rewrite(HostRewrite::Keep);
    }
    let mut pipeline = Pipeline::new(pipeline_config.clone())?;
    if let Some((_, config)) = &file {
        pipeline.set_stream_targets(stream_targets(config));
    }
    let wakeup_bytes = if args.poll_ms == 0 {
        0
    } else {
        BATCH_WAKEUP_BYTES
    };
    let fd_limit = raise_fd_limit(args.max_shadow_connections)?;
    tracing::debug!(fd_limit, "file descriptor limit");
    if let Some(shadow) = &args.shadow {
        check_shadow(shadow).await;
    }
    let own_mark = OwnMark {
        value: args.shadow_mark,
        mask: args.shadow_mark_mask,
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
    let mut session = Session::start(&capture, own_mark, wakeup_bytes)?;
    health.attached(&capture.ifaces);
    // Relays (and the dispatcher's, made and replaced on reloads) spawn their tasks on a
    // runtime of their own: enter it wherever one is made.
    let relay_threads = (args.relay_nice > args.nice)
        .then(|| RelayThreads::new(args.relay_nice, args.nice))
        .flatten();
    let relay_runtime = relay_runtime(relay_threads.clone()).map_err(RunError::Runtime)?;
    let mut relay_priority = Governor::new(Backlog {
        bytes: args.max_inflight_mib.saturating_mul(1 << 20),
        connections: args.max_shadow_connections,
    });
    let intake = Arc::new(Intake::default());
    let cells = Arc::new(PipelineCells::default());
    let on_relay_runtime = relay_runtime.enter();
    let mut shards = match args.capture_threads {
        1 => None,
        threads => Some(run_shards::start(
            &args,
            &pipeline_config,
            file.as_ref().map(|(_, config)| config),
            access_log.clone(),
            &registry,
            usize::from(threads),
        )?),
    };
    let (mut outlet, mut reloads) = match &file {
        None => {
            // Sharded, the threads' relays send.
            let outlet = if shards.is_some() {
                Outlet::Sharded
            } else {
                let relay = Relay::new(args.relay_config(access_log.clone()));
                registry.register("relay", relay.stats());
                Outlet::Relay(relay)
            };
            let shadow = args.shadow.clone().unwrap_or_default();
            tracing::info!(%shadow, percent = args.percent, "mirroring");
            eprintln!("mirroring to {shadow}; Ctrl-C to stop");
            (outlet, None)
        }
        Some((path, config)) => {
            // Sharded, the threads' dispatchers send.
            let outlet = if shards.is_some() {
                Outlet::Sharded
            } else {
                let dispatcher = Dispatcher::new(
                    config,
                    args.relay_config(access_log.clone()),
                    args.seed,
                    grace,
                );
                registry.register("policy", Arc::new(PolicySource(dispatcher.stats())));
                registry.register("relay", Arc::new(RelaySource(dispatcher.stats())));
                Outlet::Policies(Box::new(dispatcher))
            };
            let mirrors: usize = config.policies.iter().map(|p| p.backends.len()).sum();
            tracing::info!(config = %path.display(), policies = config.policies.len(), mirrors, "mirroring");
            eprintln!(
                "mirroring to {mirrors} mirrors of {} policies from {}; Ctrl-C to stop",
                config.policies.len(),
                path.display()
            );
            let reloads = reload::watch(path.clone(), config.clone());
            (outlet, Some(reloads))
        }
    };
    drop(on_relay_runtime);
    if let (true, Some((_, config))) = (args.kubernetes.enabled, &file) {
        let live = LiveOptions {
            direction: capture.direction,
            reverse: !capture.no_reverse,
            mode: capture.attach,
            netns_dir: args.kubernetes.netns_dir.clone(),
        };
        let parts = AgentParts {
            options: args.kubernetes.clone(),
            config: config.clone(),
            reloads: reloads.take(),
            live: LiveAttachments::new(session.classifier(), live),
            registry: registry.clone(),
            health: Arc::clone(&health),
        };
        reloads = Some(kubernetes::start(parts, relay_runtime.handle()).await?);
    }
    if shards.is_none() {
        registry.register("pipeline", cells.clone());
        registry.register("intake", intake.clone());
    }
    let (kernel, bpf) = session.kernel_sources();
    registry.register("kernel", Arc::new(kernel));
    registry.register("bpf", Arc::new(bpf));
    registry.register("ring", session.ring_fill());
    registry.register("agent", health.clone());
    if let Some(threads) = &relay_threads {
        registry.register("relay_priority", threads.clone());
    }
    if let Some(access_log) = access_log {
        registry.register("access_log", access_log);
    }
    if capture.no_reverse {
        tracing::warn!(
            "--no-reverse: v1's side is not captured, so requests are mirrored as the client \
             sent them, including forged ones v1 never accepted"
        );
    }

    let mut expire = tokio::time::interval(Duration::from_millis(250));
    let mut heap_trim = HeapTrim::new();
    let ring_fill = session.ring_fill();
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
        let mut on_record = |item: &[u8]| match &mut shards {
            Some(shards) => shards.dispatch(item),
            None => intake_record(item, &intake, &mut pipeline, &mut outlet),
        };
        // Timers first: a ring that is never empty must not starve them.
        tokio::select! {
            biased;
            () = &mut stop => break,
            due = expire.tick() => {
                health.timer_ran(due.into_std());
                pipeline.expire(clock::monotonic_ns(), &mut |event| outlet.handle(event));
                cells.publish(&pipeline);
                heap_trim.tick(due.into_std(), ring_fill.written_bytes());
            }
            _ = report.tick() => tracing::info!("{}", short_line(&registry)),
            batch = session.reader().next_batch(&mut on_record) => {
                batch.map_err(RunError::Ring)?;
                cells.publish(&pipeline);
            }
            _ = poll.tick(), if args.poll_ms > 0 => {
                session.reader().drain(&mut on_record);
                cells.publish(&pipeline);
            }
            Some(config) = next_reload(&mut reloads) => {
                let _on_relay_runtime = relay_runtime.enter();
                if apply_reload(&config, &session, &mut outlet) {
                    pipeline.set_stream_targets(stream_targets(&config));
                    if let Some(shards) = &mut shards {
                        shards.update(&run_shards::reload(config));
                    }
                }
            }
        }
        if let Some(shards) = &mut shards {
            shards.flush();
        }
        if let (Some(threads), Some(level)) =
            (&relay_threads, relay_priority.observe(Backlog::now()))
        {
            threads.set(level);
        }
        // Let the runtime's own work (timers, signals) in between batches.
        tokio::task::yield_now().await;
    }
    session.reader().drain(|item| match &mut shards {
        Some(shards) => shards.dispatch(item),
        None => intake_record(item, &intake, &mut pipeline, &mut outlet),
    });
    cells.publish(&pipeline);
    if let Some(shards) = shards {
        run_shards::finish(shards, grace).await;
    }
    outlet.shutdown(grace).await;
    relay_runtime.shutdown_background();
    // The relay's counters move during the grace period: report them after it. The final
    // summary has every counter (tests and the bench read it); the periodic line is short.
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

/// Applies a reloaded config between two records: later request heads follow it. Returns
/// whether it was applied.
fn apply_reload(config: &MirrorConfig, session: &Session, outlet: &mut Outlet) -> bool {
    if let Err(error) = session.set_targets(&config_targets(config)) {
        tracing::error!(%error, "config reload: targets not updated; keeping the running config");
        return false;
    }
    if let Outlet::Policies(dispatcher) = outlet {
        dispatcher.reconfigure(config);
    }
    tracing::info!(policies = config.policies.len(), "config reloaded");
    true
}

fn intake_record(item: &[u8], intake: &Intake, pipeline: &mut Pipeline, outlet: &mut Outlet) {
    intake.feed(item, pipeline, &mut |event| outlet.handle(event));
}
