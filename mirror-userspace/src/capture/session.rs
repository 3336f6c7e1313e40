//! Everything a capturing command shares: load the classifier, attach it, keep its targets in step
//! with their source, forward kernel logs, and stop on SIGINT/SIGTERM.

use std::{
    os::fd::AsFd,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use mirror_common::Config;
use tokio::signal::unix::{signal, SignalKind};

use super::{
    classifier::{AttachMode, Classifier, ClassifierError, ClassifierOptions, Direction},
    kernel_stats::{lock, KernelCounters, KernelRunTimes},
    ring::RingReader,
    ring_fill::RingFill,
    target::Target,
    target_set::{TargetSetError, TargetSource},
};

/// Where and what to capture: the flags every capturing command takes.
#[derive(Clone, Debug, clap::Args)]
pub struct CaptureOptions {
    /// Interface to attach to (repeatable), e.g. the node side of a pod's veth.
    #[arg(long = "iface", required = true, value_name = "NAME")]
    pub ifaces: Vec<String>,
    /// Hook that sees the client's packets to a target. Packets leaving a pod arrive on the
    /// node side of its veth, so the default is ingress. v1's answers are captured on the
    /// other hook (see `--no-reverse`).
    #[arg(long, value_enum, default_value = "ingress")]
    pub direction: Direction,
    /// Do not capture v1's side of mirrored connections. By default the other hook is attached
    /// too and emits the headers (sequence, acknowledgement, window, flags; no payload) of
    /// every packet from a target, so the agent can follow what v1 accepted.
    #[arg(long)]
    pub no_reverse: bool,
    /// Destination to capture, ADDR[/PREFIX]:PORT (repeatable; IPv6 in brackets).
    #[arg(long = "target", value_name = "ADDR[/PREFIX]:PORT")]
    pub targets: Vec<Target>,
    /// File of targets, one per line; re-read on SIGHUP and when it changes.
    #[arg(long, value_name = "PATH")]
    pub targets_file: Option<PathBuf>,
    /// TCX links or a netlink clsact filter.
    #[arg(long, value_enum, default_value = "auto")]
    pub attach: AttachMode,
    /// Ring buffer size in MiB (a power of two, 2 to 1024). The kernel allocates all of it when
    /// the map is made, so it is memory the agent holds whatever the load. Measured with
    /// `cargo xtask bench --memory` (2 cores): 16 MiB dropped nothing at saturation (82k
    /// req/s) and kept the agent at 32.5 MiB PSS at 50k req/s (64 MiB: 91 MiB); a 64 MiB
    /// upload at veth speed (tests/tests/relay.rs, release agent) passed 3 of 3 runs at 16 MiB,
    /// while 8 MiB lost records in 1 of 2 and 4 MiB in 2 of 2: twice the smallest ring seen
    /// to fail.
    #[arg(long, default_value_t = 16, value_name = "MIB")]
    pub ring_mib: u32,
    /// Forward the kernel program's diagnostics (aya-log) to the log.
    #[arg(long)]
    pub kernel_log: bool,
    /// Enable kernel BPF run-time statistics and report nanoseconds per packet.
    #[arg(long)]
    pub bpf_stats: bool,
    /// Targets and interfaces arrive while running (the Kubernetes node agent): start with
    /// none rather than refuse.
    #[arg(skip)]
    pub live: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Classifier(#[from] ClassifierError),
    #[error(transparent)]
    Targets(#[from] TargetSetError),
    #[error("--ring-mib {0} is out of range")]
    RingSize(u32),
    #[error("setting up {what} failed")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// The mark bits that identify the agent's own packets (see `Config::ignore_mark`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OwnMark {
    pub value: u32,
    pub mask: u32,
}

impl OwnMark {
    /// No own traffic to skip (`mirror capture` sends nothing).
    pub const NONE: OwnMark = OwnMark { value: 0, mask: 0 };
}

/// Mark bits that kube-proxy (0x4000, 0x8000), Calico (0xffff0000 by default) and Cilium
/// (0x0f00 magic, 0xff00 key mask, identity in the upper 16 bits) set or clear: an own-traffic
/// mask that covers them can be broken by their rules.
pub const CNI_MARK_BITS: u32 = 0xffff_ff00;

/// Parses a mark or mask: decimal, or hexadecimal with `0x`.
pub fn parse_mark(text: &str) -> Result<u32, String> {
    let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.map_err(|error| format!("{text:?} is not a 32-bit mark ({error})"))
}

/// A loaded, attached classifier. Dropping it detaches everything.
pub struct Session {
    classifier: Arc<Mutex<Classifier>>,
    reader: RingReader,
    /// The ring's fill level (stage `ring`).
    fill: Arc<RingFill>,
    /// Follows the targets file, if there is one.
    watcher: Option<tokio::task::JoinHandle<()>>,
    /// Keeps BPF run-time statistics on while open.
    _stats: Option<std::os::fd::OwnedFd>,
}

impl Session {
    /// Loads and attaches; must run inside a tokio runtime. `own_mark`: see
    /// `Config::ignore_mark`; `wakeup_bytes`: see `Config::wakeup_bytes` (non-zero obliges the
    /// caller to also drain the ring on a timer).
    pub fn start(
        options: &CaptureOptions,
        own_mark: OwnMark,
        wakeup_bytes: u32,
    ) -> Result<Session, SessionError> {
        if own_mark.value & own_mark.mask & CNI_MARK_BITS != 0 {
            tracing::warn!(
                mark = format_args!("{:#x}", own_mark.value),
                mask = format_args!("{:#x}", own_mark.mask),
                "the own-traffic mark uses bits that kube-proxy, Calico or Cilium rules set or \
                 clear: a rule that changes them would make the agent capture its own traffic"
            );
        }
        let source = TargetSource {
            fixed: options.targets.clone(),
            file: options.targets_file.clone(),
        };
        let targets = match source.load() {
            Err(TargetSetError::Empty) if options.live => Default::default(),
            loaded => loaded?,
        };
        let ring_bytes = options
            .ring_mib
            .checked_mul(1 << 20)
            .ok_or(SessionError::RingSize(options.ring_mib))?;
        let mut classifier = Classifier::load(&ClassifierOptions {
            ring_bytes,
            config: Config {
                ignore_mark: own_mark.value,
                ignore_mark_mask: own_mark.mask,
                log_enabled: u32::from(options.kernel_log),
                wakeup_bytes,
                forward_direction: options.direction.kernel_value(),
                reverse_enabled: u32::from(!options.no_reverse),
            },
        })?;
        if options.kernel_log {
            start_kernel_log(&mut classifier)?;
        }
        let stats = options
            .bpf_stats
            .then(super::classifier::enable_run_time_stats)
            .transpose()?;
        classifier.set_targets(&targets)?;
        for iface in &options.ifaces {
            classifier.attach(iface, options.direction, options.attach)?;
            if !options.no_reverse {
                classifier.attach(iface, options.direction.opposite(), options.attach)?;
            }
        }
        let ring = classifier
            .take_ring()
            .ok_or(ClassifierError::MissingMap { map: "EVENTS" })?;
        let fill = RingFill::new(ring.as_fd(), ring_bytes).map_err(|source| SessionError::Io {
            what: "the ring buffer's positions",
            source,
        })?;
        let reader = RingReader::new(ring).map_err(|source| SessionError::Io {
            what: "the ring buffer reader",
            source,
        })?;
        tracing::info!(
            targets = %targets.iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
            "capturing"
        );
        let classifier = Arc::new(Mutex::new(classifier));
        let watcher = source
            .file
            .is_some()
            .then(|| tokio::spawn(watch_targets(source, Arc::clone(&classifier))));
        Ok(Session {
            classifier,
            reader,
            fill: Arc::new(fill),
            watcher,
            _stats: stats,
        })
    }

    /// Replaces the captured targets (a reloaded config file's).
    pub fn set_targets(
        &self,
        targets: &std::collections::BTreeSet<Target>,
    ) -> Result<(), ClassifierError> {
        lock(&self.classifier).set_targets(targets)
    }

    /// The classifier, for what attaches and detaches while the session runs
    /// (`capture::live`).
    pub(crate) fn classifier(&self) -> Arc<Mutex<Classifier>> {
        Arc::clone(&self.classifier)
    }

    pub fn reader(&mut self) -> &mut RingReader {
        &mut self.reader
    }

    /// The kernel program's counters (stage `kernel`) and run times (stage `bpf`), for the
    /// registry.
    pub(crate) fn kernel_sources(&self) -> (KernelCounters, KernelRunTimes) {
        (
            KernelCounters(Arc::clone(&self.classifier)),
            KernelRunTimes(Arc::clone(&self.classifier)),
        )
    }

    /// The ring buffer's fill level (stage `ring`), for the registry.
    pub(crate) fn ring_fill(&self) -> Arc<RingFill> {
        Arc::clone(&self.fill)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(watcher) = &self.watcher {
            watcher.abort();
        }
    }
}

fn start_kernel_log(classifier: &mut Classifier) -> Result<(), SessionError> {
    let logger =
        aya_log::EbpfLogger::init(classifier.ebpf_mut()).map_err(|error| SessionError::Io {
            what: "the kernel log reader",
            source: std::io::Error::other(error),
        })?;
    let mut logger = super::ring::register_readable(logger).map_err(|source| SessionError::Io {
        what: "the kernel log reader",
        source,
    })?;
    tokio::spawn(async move {
        while let Ok(mut guard) = logger.readable_mut().await {
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
    Ok(())
}

/// Re-reads the targets on SIGHUP and when the targets file changes; a bad file keeps the
/// current set and logs why.
async fn watch_targets(source: TargetSource, classifier: Arc<Mutex<Classifier>>) {
    let mut hangup = match signal(SignalKind::hangup()) {
        Ok(hangup) => hangup,
        Err(error) => {
            tracing::warn!(%error, "no SIGHUP handler: targets reload on file change only");
            return;
        }
    };
    let mut seen = source.file_modified();
    let mut poll = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = hangup.recv() => {}
            _ = poll.tick() => {
                let modified = source.file_modified();
                if modified == seen {
                    continue;
                }
                seen = modified;
            }
        }
        match source.load() {
            Ok(targets) => match lock(&classifier).set_targets(&targets) {
                Ok(()) => tracing::info!(count = targets.len(), "targets reloaded"),
                Err(error) => tracing::error!(%error, "targets not updated"),
            },
            Err(error) => tracing::error!(%error, "targets not reloaded; keeping the current set"),
        }
    }
}
