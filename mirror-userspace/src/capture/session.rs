//! Everything a capturing command shares: load the classifier, attach it, keep its targets in step
//! with their source, forward kernel logs, and stop on SIGINT/SIGTERM.

use std::{
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
    target::Target,
    target_set::{TargetSetError, TargetSource},
};

/// Where and what to capture: the flags every capturing command takes.
#[derive(Clone, Debug, clap::Args)]
pub struct CaptureOptions {
    /// Interface to attach to (repeatable), e.g. the node side of a pod's veth.
    #[arg(long = "iface", required = true, value_name = "NAME")]
    pub ifaces: Vec<String>,
    /// Hook to capture on. Packets leaving a pod arrive on the node side of its veth, so
    /// the default is ingress.
    #[arg(long, value_enum, default_value = "ingress")]
    pub direction: Direction,
    /// Destination to capture, ADDR[/PREFIX]:PORT (repeatable; IPv6 in brackets).
    #[arg(long = "target", value_name = "ADDR[/PREFIX]:PORT")]
    pub targets: Vec<Target>,
    /// File of targets, one per line; re-read on SIGHUP and when it changes.
    #[arg(long, value_name = "PATH")]
    pub targets_file: Option<PathBuf>,
    /// TCX links or a netlink clsact filter.
    #[arg(long, value_enum, default_value = "auto")]
    pub attach: AttachMode,
    /// Ring buffer size in MiB (a power of two, 2 to 1024).
    #[arg(long, default_value_t = 64, value_name = "MIB")]
    pub ring_mib: u32,
    /// Forward the kernel program's diagnostics (aya-log) to the log.
    #[arg(long)]
    pub kernel_log: bool,
    /// Enable kernel BPF run-time statistics and report nanoseconds per packet.
    #[arg(long)]
    pub bpf_stats: bool,
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

/// A loaded, attached classifier. Dropping it detaches everything.
pub struct Session {
    classifier: Arc<Mutex<Classifier>>,
    reader: RingReader,
    watcher: tokio::task::JoinHandle<()>,
    /// Keeps BPF run-time statistics on while open.
    _stats: Option<std::os::fd::OwnedFd>,
}

impl Session {
    /// Loads and attaches; must run inside a tokio runtime. `ignore_mark`: see
    /// `Config::ignore_mark`; `wakeup_bytes`: see `Config::wakeup_bytes` (non-zero obliges the
    /// caller to also drain the ring on a timer).
    pub fn start(
        options: &CaptureOptions,
        ignore_mark: u32,
        wakeup_bytes: u32,
    ) -> Result<Session, SessionError> {
        let source = TargetSource {
            fixed: options.targets.clone(),
            file: options.targets_file.clone(),
        };
        let targets = source.load()?;
        let ring_bytes = options
            .ring_mib
            .checked_mul(1 << 20)
            .ok_or(SessionError::RingSize(options.ring_mib))?;
        let mut classifier = Classifier::load(&ClassifierOptions {
            ring_bytes,
            config: Config {
                ignore_mark,
                log_enabled: u32::from(options.kernel_log),
                wakeup_bytes,
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
        }
        let ring = classifier
            .take_ring()
            .ok_or(ClassifierError::MissingMap { map: "EVENTS" })?;
        let reader = RingReader::new(ring).map_err(|source| SessionError::Io {
            what: "the ring buffer reader",
            source,
        })?;
        tracing::info!(
            targets = %targets.iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
            "capturing"
        );
        let classifier = Arc::new(Mutex::new(classifier));
        let watcher = tokio::spawn(watch_targets(source, Arc::clone(&classifier)));
        Ok(Session {
            classifier,
            reader,
            watcher,
            _stats: stats,
        })
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
}

impl Drop for Session {
    fn drop(&mut self) {
        self.watcher.abort();
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
