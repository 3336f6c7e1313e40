//! The loaded kernel program: its maps, and its attachments to interfaces.
//!
//! Dropping a [`Classifier`] detaches everything: TCX links close with their file descriptors
//! (even on SIGKILL), and aya detaches netlink filters on drop. A netlink filter left behind
//! by a killed run is found by program name and replaced at the next start.

use std::{collections::BTreeSet, io};

use aya::{
    maps::{lpm_trie::Key, Array, LpmTrie, MapData, MapError, PerCpuArray, RingBuf},
    programs::{
        tc::{self, NlOptions, SchedClassifierLinkId, TcAttachOptions},
        LinkOrder, ProgramError, SchedClassifier, TcAttachType,
    },
    Ebpf, EbpfError, EbpfLoader,
};
use mirror_common::{
    Config, Counter, TargetKey, TargetValue, CONFIG_GLOBAL, COUNTERS_MAP, DIRECTION_EGRESS,
    DIRECTION_INGRESS, EGRESS_PROGRAM, EVENTS_MAP, INGRESS_PROGRAM, PORTS_MAP, TARGETS_MAP,
};

use super::{port_filter::PortBitmap, privileges, target::Target};

/// The kernel program, built by build.rs from mirror-ebpf.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/mirror"));

/// Which TC hook to capture on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Direction {
    /// Packets arriving on the interface (on a pod veth's node side: leaving the pod).
    Ingress,
    /// Packets leaving through the interface.
    Egress,
}

impl Direction {
    fn program(self) -> &'static str {
        match self {
            Direction::Ingress => INGRESS_PROGRAM,
            Direction::Egress => EGRESS_PROGRAM,
        }
    }

    /// The other hook.
    pub fn opposite(self) -> Direction {
        match self {
            Direction::Ingress => Direction::Egress,
            Direction::Egress => Direction::Ingress,
        }
    }

    /// The kernel's `DIRECTION_*` value.
    pub fn kernel_value(self) -> u32 {
        match self {
            Direction::Ingress => DIRECTION_INGRESS,
            Direction::Egress => DIRECTION_EGRESS,
        }
    }

    fn attach_type(self) -> TcAttachType {
        match self {
            Direction::Ingress => TcAttachType::Ingress,
            Direction::Egress => TcAttachType::Egress,
        }
    }
}

/// How to attach: TCX links (kernel >= 6.6) or a clsact qdisc with a netlink filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachMode {
    /// TCX where the kernel has it, netlink otherwise.
    Auto,
    Tcx,
    Netlink,
}

#[derive(Debug, thiserror::Error)]
pub enum ClassifierError {
    #[error(
        "not enough privileges to load BPF programs: run as root, or grant CAP_BPF, \
         CAP_NET_ADMIN and CAP_PERFMON (CAP_SYS_ADMIN on kernels before 5.8)"
    )]
    NotPrivileged,
    /// The kernel answers a refused ring buffer map the same way whatever the cause: a kernel
    /// without it, a missing CAP_BPF, or a seccomp profile that blocks bpf(2) (runtime-default
    /// profiles allow it only with CAP_SYS_ADMIN). Measured with `setpriv --bounding-set`:
    /// without CAP_BPF this is where loading stops.
    #[error(
        "no BPF ring buffer could be created: it needs Linux 5.8 or later with \
         CONFIG_BPF_SYSCALL, CAP_BPF (or CAP_SYS_ADMIN), and a seccomp profile that allows \
         bpf(2) (runtime-default profiles allow it only with CAP_SYS_ADMIN: use Unconfined)"
    )]
    NoRingBuffer,
    #[error("no network interface named {iface:?} (in this network namespace)")]
    NoSuchInterface { iface: String },
    #[error("ring buffer size {0} must be a power of two between 2 MiB and 1 GiB")]
    BadRingSize(u32),
    #[error("loading the eBPF object failed")]
    Load(#[source] EbpfError),
    #[error("the kernel rejected program {program}")]
    Program {
        program: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("attaching to {iface} ({direction:?}) failed")]
    Attach {
        iface: String,
        direction: Direction,
        #[source]
        source: ProgramError,
    },
    #[error("enabling BPF run-time statistics failed")]
    Stats {
        #[source]
        source: aya::sys::SyscallError,
    },
    #[error("map {map} is missing from the eBPF object or has the wrong type")]
    MissingMap { map: &'static str },
    #[error("updating map {map} failed")]
    Map {
        map: &'static str,
        #[source]
        source: MapError,
    },
}

/// Load-time settings.
#[derive(Clone, Debug)]
pub struct ClassifierOptions {
    pub ring_bytes: u32,
    /// Fixed for the program's life: it becomes read-only data the verifier sees as constants.
    pub config: Config,
}

/// The loaded program and its maps. The ring buffer is handed out once with
/// [`Classifier::take_ring`]; the rest stays here.
pub struct Classifier {
    ebpf: Ebpf,
    ring: Option<RingBuf<MapData>>,
    targets: LpmTrie<MapData, TargetKey, TargetValue>,
    installed: BTreeSet<Target>,
    ports: Array<MapData, u32>,
    installed_ports: PortBitmap,
    counters: PerCpuArray<MapData, u64>,
}

impl Classifier {
    /// Loads the program and its maps into the kernel; attaches nothing yet.
    pub fn load(options: &ClassifierOptions) -> Result<Classifier, ClassifierError> {
        if !privileges::can_load_bpf() {
            return Err(ClassifierError::NotPrivileged);
        }
        let ring = options.ring_bytes;
        if !ring.is_power_of_two() || !(2 << 20..=1 << 30).contains(&ring) {
            return Err(ClassifierError::BadRingSize(ring));
        }
        if !aya::sys::is_map_supported(aya::maps::MapType::RingBuf).unwrap_or(false) {
            return Err(ClassifierError::NoRingBuffer);
        }
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(EVENTS_MAP, ring)
            .override_global(CONFIG_GLOBAL, &options.config, true)
            .load(EBPF_OBJECT)
            .map_err(|error| match &error {
                EbpfError::MapError(MapError::CreateError { io_error, .. })
                    if io_error.kind() == io::ErrorKind::PermissionDenied =>
                {
                    ClassifierError::NotPrivileged
                }
                _ => ClassifierError::Load(error),
            })?;
        for program in [INGRESS_PROGRAM, EGRESS_PROGRAM] {
            classifier(&mut ebpf, program)?
                .load()
                .map_err(|source| ClassifierError::Program { program, source })?;
        }
        let ring = take_map(&mut ebpf, EVENTS_MAP)?;
        let targets = take_map(&mut ebpf, TARGETS_MAP)?;
        let ports = take_map(&mut ebpf, PORTS_MAP)?;
        let counters = take_map(&mut ebpf, COUNTERS_MAP)?;
        Ok(Classifier {
            ebpf,
            ring: Some(ring),
            targets,
            installed: BTreeSet::new(),
            ports,
            installed_ports: PortBitmap::empty(),
            counters,
        })
    }

    /// The loaded eBPF object, for aya-log.
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// Hands out the ring buffer (once).
    pub fn take_ring(&mut self) -> Option<RingBuf<MapData>> {
        self.ring.take()
    }

    /// Attaches the capture program to `iface`.
    ///
    /// TCX links go first in the chain so that programs which redirect (Cilium's) cannot hide
    /// packets from us; we return "next" so they still run. The link's id is what
    /// [`Classifier::detach`] takes; unused, the link lives as long as the classifier.
    pub fn attach(
        &mut self,
        iface: &str,
        direction: Direction,
        mode: AttachMode,
    ) -> Result<SchedClassifierLinkId, ClassifierError> {
        if ifindex(iface).is_none() {
            return Err(ClassifierError::NoSuchInterface {
                iface: iface.to_owned(),
            });
        }
        let program = classifier(&mut self.ebpf, direction.program())?;
        let attach_error = |source| ClassifierError::Attach {
            iface: iface.to_owned(),
            direction,
            source,
        };
        let use_tcx = match mode {
            AttachMode::Auto => aya::util::KernelVersion::current()
                .is_ok_and(|version| version >= aya::util::KernelVersion::new(6, 6, 0)),
            AttachMode::Tcx => true,
            AttachMode::Netlink => false,
        };
        let options = if use_tcx {
            TcAttachOptions::TcxOrder(LinkOrder::first())
        } else {
            // A filter of ours left by a killed run would capture twice: replace it.
            match tc::qdisc_detach_program(iface, direction.attach_type(), direction.program()) {
                Ok(()) => tracing::warn!(
                    iface,
                    "removed a stale mirror filter left by an earlier run"
                ),
                Err(tc::TcError::IoError(error)) if error.kind() == io::ErrorKind::NotFound => {}
                Err(error) => tracing::debug!(iface, %error, "no stale filter removed"),
            }
            if let Err(error) = tc::qdisc_add_clsact(iface) {
                // EEXIST: the qdisc is already there (ours from before, or Cilium's): fine.
                tracing::debug!(iface, %error, "clsact qdisc not added");
            }
            TcAttachOptions::Netlink(NlOptions::default())
        };
        let link = program
            .attach_with_options(iface, direction.attach_type(), options)
            .map_err(attach_error)?;
        tracing::info!(iface, ?direction, tcx = use_tcx, "attached");
        Ok(link)
    }

    /// Detaches one attachment made by [`Classifier::attach`] (a pod's veth that went, or is
    /// no longer wanted). A link whose interface is already gone detaches without error.
    pub fn detach(
        &mut self,
        direction: Direction,
        link: SchedClassifierLinkId,
    ) -> Result<(), ClassifierError> {
        classifier(&mut self.ebpf, direction.program())?
            .detach(link)
            .map_err(|source| ClassifierError::Program {
                program: direction.program(),
                source,
            })
    }

    /// Makes the kernel's target set equal to `targets`, without detaching: new ones are
    /// added before stale ones are removed, so a target in both sets is never unmatched. The
    /// port pre-filter covers the old and the new ports while the trie changes.
    pub fn set_targets(&mut self, targets: &BTreeSet<Target>) -> Result<(), ClassifierError> {
        let map_error = |source| ClassifierError::Map {
            map: TARGETS_MAP,
            source,
        };
        let ports = PortBitmap::of(targets);
        self.set_ports(ports.union(&self.installed_ports))?;
        for (index, target) in targets.iter().enumerate() {
            let (bits, key) = target.trie_key();
            let value = u32::try_from(index).unwrap_or(u32::MAX);
            self.targets
                .insert(&Key::new(bits, key), value, 0)
                .map_err(map_error)?;
        }
        for stale in self.installed.difference(targets) {
            let (bits, key) = stale.trie_key();
            match self.targets.remove(&Key::new(bits, key)) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(source) => return Err(map_error(source)),
            }
        }
        self.installed = targets.clone();
        self.set_ports(ports)
    }

    /// Writes the words of the port bitmap that differ from what the kernel holds.
    fn set_ports(&mut self, ports: PortBitmap) -> Result<(), ClassifierError> {
        for (index, word) in ports.changes_from(&self.installed_ports) {
            self.ports
                .set(index, word, 0)
                .map_err(|source| ClassifierError::Map {
                    map: PORTS_MAP,
                    source,
                })?;
        }
        self.installed_ports = ports;
        Ok(())
    }

    /// How often each program ran and for how long in total (kernel BPF stats: zero unless
    /// they are enabled, see [`enable_run_time_stats`]).
    pub fn run_stats(&self) -> Vec<RunStats> {
        [INGRESS_PROGRAM, EGRESS_PROGRAM]
            .into_iter()
            .filter_map(|program| {
                let info = self.ebpf.program(program)?.info().ok()?;
                Some(RunStats {
                    program,
                    runs: info.run_count(),
                    run_time_ns: u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX),
                })
            })
            .collect()
    }

    /// Sums each per-CPU counter.
    pub fn counters(&self) -> Result<[u64; Counter::COUNT as usize], ClassifierError> {
        let mut totals = [0u64; Counter::COUNT as usize];
        for (counter, total) in Counter::ALL.iter().zip(totals.iter_mut()) {
            let per_cpu = self.counters.get(&(*counter as u32), 0).map_err(|source| {
                ClassifierError::Map {
                    map: COUNTERS_MAP,
                    source,
                }
            })?;
            *total = per_cpu.iter().sum();
        }
        Ok(totals)
    }
}

/// Run count and total run time of one program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunStats {
    pub program: &'static str,
    pub runs: u64,
    pub run_time_ns: u64,
}

impl RunStats {
    /// Average nanoseconds per run.
    pub fn ns_per_run(&self) -> Option<u64> {
        self.run_time_ns.checked_div(self.runs)
    }
}

/// Turns on the kernel's BPF run-time statistics (like `sysctl kernel.bpf_stats_enabled=1`)
/// for as long as the returned fd is open.
pub fn enable_run_time_stats() -> Result<std::os::fd::OwnedFd, ClassifierError> {
    aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .map_err(|source| ClassifierError::Stats { source })
}

fn classifier<'a>(
    ebpf: &'a mut Ebpf,
    program: &'static str,
) -> Result<&'a mut SchedClassifier, ClassifierError> {
    let missing = || ClassifierError::Program {
        program,
        source: ProgramError::UnexpectedProgramType,
    };
    ebpf.program_mut(program)
        .ok_or_else(missing)?
        .try_into()
        .map_err(|_| missing())
}

fn take_map<T>(ebpf: &mut Ebpf, map: &'static str) -> Result<T, ClassifierError>
where
    T: TryFrom<aya::maps::Map>,
{
    let raw = ebpf
        .take_map(map)
        .ok_or(ClassifierError::MissingMap { map })?;
    T::try_from(raw).map_err(|_| ClassifierError::MissingMap { map })
}

pub(crate) fn ifindex(iface: &str) -> Option<u32> {
    let name = std::ffi::CString::new(iface).ok()?;
    // SAFETY: `name` is a valid NUL-terminated string for the duration of the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}
