//! Attachments that follow a changing set of interfaces while the capture runs: the pods'
//! veths that come and go under `mirror run --kubernetes`, and the config's interface
//! patterns. Each interface is attached (both hooks) or detached on its own; one failing
//! never stops the others: it is logged, counted, and tried again at the next reconcile.
//!
//! An interface is the node side of a pod's veth, in the agent's namespace, or the pod's own
//! interface inside its namespace (`--server-hook pod`), which is entered on a short-lived
//! thread of its own for the attach: the TCX link stays with the classifier afterwards.

use std::{
    collections::BTreeMap,
    fs::File,
    os::fd::AsRawFd as _,
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc, Mutex,
    },
};

use aya::programs::tc::SchedClassifierLinkId;

use super::{
    classifier::{ifindex, AttachMode, Classifier, ClassifierError, Direction},
    kernel_stats::lock,
};
use crate::observe::{Sample, Source};

/// Where and how to attach: the session's settings.
#[derive(Clone, Debug)]
pub struct LiveOptions {
    /// The hook that sees the client's packets.
    pub direction: Direction,
    /// Also attach the other hook (v1's side).
    pub reverse: bool,
    pub mode: AttachMode,
    /// Where pods' network namespace files are (`Place::Pod`).
    pub netns_dir: PathBuf,
}

/// An interface to attach to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Place {
    /// In the agent's namespace, by name and the index it has now (a new interface under the
    /// same name is another one).
    Node { name: String, ifindex: u32 },
    /// Inside a pod's namespace (its id as the agent's namespace numbers it), by index;
    /// `node_side` names the veth's node end, which lives as long as the pod's interface.
    Pod {
        netnsid: i32,
        ifindex: u32,
        node_side: String,
    },
}

impl Place {
    /// The key of the wanted and attached sets, and the interface's name in logs.
    pub fn key(&self) -> String {
        match self {
            Place::Node { name, .. } => name.clone(),
            Place::Pod {
                netnsid, ifindex, ..
            } => format!("netns{netnsid}/if{ifindex}"),
        }
    }

    /// The interface in the agent's namespace whose presence says this one exists.
    pub fn node_interface(&self) -> &str {
        match self {
            Place::Node { name, .. } => name,
            Place::Pod { node_side, .. } => node_side,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    #[error(transparent)]
    Classifier(#[from] ClassifierError),
    #[error("no file in {dir} is the network namespace with id {netnsid}")]
    NoNamespace { dir: String, netnsid: i32 },
    #[error("finding the network namespace with id {netnsid}")]
    Netlink {
        netnsid: i32,
        #[source]
        source: mirror_discovery::interfaces::InterfaceError,
    },
    #[error("entering the pod's network namespace (needs CAP_SYS_ADMIN)")]
    Enter(#[source] std::io::Error),
    #[error("no interface with index {0} in the pod's network namespace")]
    NoPodInterface(u32),
    #[error("the attaching thread failed")]
    Thread,
}

/// One attached interface.
struct Attached {
    place: Place,
    links: Vec<(Direction, SchedClassifierLinkId)>,
}

/// The counters of live attachment (stage `attach`).
#[derive(Debug, Default)]
pub struct LiveStats {
    attached_now: AtomicU64,
    attaches: AtomicU64,
    detaches: AtomicU64,
    attach_failures: AtomicU64,
}

impl Source for LiveStats {
    fn visit(&self, out: &mut dyn FnMut(Sample)) {
        out(Sample::gauge(
            "interfaces",
            "Interfaces the program is attached to now.",
            self.attached_now.load(Relaxed),
        ));
        out(Sample::counter(
            "attaches",
            "Interfaces attached while running (pods that appeared).",
            self.attaches.load(Relaxed),
        ));
        out(Sample::counter(
            "detaches",
            "Interfaces detached while running (pods that went or stopped being wanted).",
            self.detaches.load(Relaxed),
        ));
        out(Sample::counter(
            "failures",
            "Attaches that failed (each retried at the next reconcile; the others go on).",
            self.attach_failures.load(Relaxed),
        ));
    }
}

/// The interfaces attached while the session runs, by name.
pub struct LiveAttachments {
    classifier: Arc<Mutex<Classifier>>,
    options: LiveOptions,
    attached: BTreeMap<String, Attached>,
    stats: Arc<LiveStats>,
}

impl LiveAttachments {
    pub fn new(classifier: Arc<Mutex<Classifier>>, options: LiveOptions) -> Self {
        LiveAttachments {
            classifier,
            options,
            attached: BTreeMap::new(),
            stats: Arc::default(),
        }
    }

    /// Sets the kernel's targets now, from this task: before new interfaces are attached, so
    /// that their first packets already match (the capture loop applies the same set again
    /// with the policies).
    pub fn set_targets(
        &self,
        targets: &std::collections::BTreeSet<super::target::Target>,
    ) -> Result<(), ClassifierError> {
        lock(&self.classifier).set_targets(targets)
    }

    /// The hook that sees the client's packets.
    pub fn direction(&self) -> Direction {
        self.options.direction
    }

    pub fn stats(&self) -> Arc<LiveStats> {
        Arc::clone(&self.stats)
    }

    /// Makes the attached set equal to `wanted` (by [`Place::key`]): detaches what is no
    /// longer wanted or was replaced by a new interface of the same name, attaches what is
    /// new. Returns the agent-namespace interfaces whose presence says the attached ones
    /// still exist.
    pub fn reconcile(&mut self, wanted: &BTreeMap<String, Place>) -> Vec<String> {
        let stale: Vec<String> = self
            .attached
            .iter()
            .filter(|(key, a)| wanted.get(*key) != Some(&a.place))
            .map(|(key, _)| key.clone())
            .collect();
        for name in stale {
            if let Some(attached) = self.attached.remove(&name) {
                self.detach(&name, attached);
            }
        }
        for (name, place) in wanted {
            if self.attached.contains_key(name) {
                continue;
            }
            // The interface went (or was replaced) since it was listed: the next reconcile
            // sees the new one.
            if let Place::Node {
                name,
                ifindex: index,
            } = place
            {
                if ifindex(name) != Some(*index) {
                    continue;
                }
            }
            match self.attach(place) {
                Ok(links) => {
                    self.stats.attaches.fetch_add(1, Relaxed);
                    self.attached.insert(
                        name.clone(),
                        Attached {
                            place: place.clone(),
                            links,
                        },
                    );
                }
                Err(error) => {
                    self.stats.attach_failures.fetch_add(1, Relaxed);
                    tracing::warn!(iface = %name, error = %error_chain(&error), "attach failed; the other interfaces are unaffected, retrying at the next reconcile");
                }
            }
        }
        self.stats
            .attached_now
            .store(self.attached.len() as u64, Relaxed);
        self.attached
            .values()
            .map(|a| a.place.node_interface().to_owned())
            .collect()
    }

    fn attach(&self, place: &Place) -> Result<Vec<(Direction, SchedClassifierLinkId)>, LiveError> {
        match place {
            Place::Node { name, .. } => Ok(attach_hooks(&self.classifier, &self.options, name)?),
            Place::Pod {
                netnsid, ifindex, ..
            } => {
                let netns =
                    mirror_discovery::interfaces::netns_file(&self.options.netns_dir, *netnsid)
                        .map_err(|source| LiveError::Netlink {
                            netnsid: *netnsid,
                            source,
                        })?
                        .ok_or_else(|| LiveError::NoNamespace {
                            dir: self.options.netns_dir.display().to_string(),
                            netnsid: *netnsid,
                        })?;
                attach_inside(&self.classifier, self.options.clone(), netns, *ifindex)
            }
        }
    }

    fn detach(&self, name: &str, attached: Attached) {
        let mut classifier = lock(&self.classifier);
        for (direction, link) in attached.links {
            // An interface that is gone took its hooks with it; nothing is left to remove.
            if let Err(error) = classifier.detach(direction, link) {
                tracing::debug!(iface = %name, error = %error_chain(&error), "detach");
            }
        }
        self.stats.detaches.fetch_add(1, Relaxed);
        tracing::info!(iface = %name, "detached");
    }
}

/// Attaches both hooks (or the forward one) to `name` in the calling thread's namespace; on a
/// failure, detaches what it made.
fn attach_hooks(
    classifier: &Mutex<Classifier>,
    options: &LiveOptions,
    name: &str,
) -> Result<Vec<(Direction, SchedClassifierLinkId)>, ClassifierError> {
    let mut classifier = lock(classifier);
    let forward = options.direction;
    let mut directions = vec![forward];
    if options.reverse {
        directions.push(forward.opposite());
    }
    let mut links = Vec::new();
    for direction in directions {
        match classifier.attach(name, direction, options.mode) {
            Ok(link) => links.push((direction, link)),
            Err(error) => {
                for (direction, link) in links {
                    let _ = classifier.detach(direction, link);
                }
                return Err(error);
            }
        }
    }
    Ok(links)
}

/// Attaches to interface `ifindex` of the namespace `netns`, from a thread that enters it (a
/// TCX link and a netlink filter both name the interface in the caller's namespace) and ends
/// with the attach, so nothing else ever runs there.
fn attach_inside(
    classifier: &Arc<Mutex<Classifier>>,
    options: LiveOptions,
    netns: File,
    ifindex: u32,
) -> Result<Vec<(Direction, SchedClassifierLinkId)>, LiveError> {
    let classifier = Arc::clone(classifier);
    // A netlink filter would be removed by index in the agent's namespace: TCX links only
    // (their detach is closing the link, wherever it is).
    let options = LiveOptions {
        mode: AttachMode::Tcx,
        ..options
    };
    std::thread::spawn(move || {
        // SAFETY: setns on an open namespace file changes only this thread's namespace.
        if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(LiveError::Enter(std::io::Error::last_os_error()));
        }
        let mut name = [0u8; libc::IF_NAMESIZE];
        // SAFETY: if_indextoname writes at most IF_NAMESIZE bytes into the buffer we own.
        let found = unsafe { libc::if_indextoname(ifindex, name.as_mut_ptr().cast()) };
        if found.is_null() {
            return Err(LiveError::NoPodInterface(ifindex));
        }
        let len = name.iter().position(|b| *b == 0).unwrap_or(name.len());
        let name = String::from_utf8_lossy(&name[..len]).into_owned();
        Ok(attach_hooks(&classifier, &options, &name)?)
    })
    .join()
    .map_err(|_| LiveError::Thread)?
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
