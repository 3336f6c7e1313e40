//! Attachments that follow a changing set of interfaces while the capture runs: the pods'
//! veths that come and go under `mirror run --kubernetes`, and the config's interface
//! patterns. Each interface is attached (both hooks) or detached on its own; one failing
//! never stops the others: it is logged, counted, and tried again at the next reconcile.

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc, Mutex,
    },
};

use aya::programs::tc::SchedClassifierLinkId;

use super::{
    classifier::{ifindex, AttachMode, Classifier, Direction},
    kernel_stats::lock,
};
use crate::observe::{Sample, Source};

/// Where and how to attach: the session's settings.
#[derive(Clone, Copy, Debug)]
pub struct LiveOptions {
    /// The hook that sees the client's packets.
    pub direction: Direction,
    /// Also attach the other hook (v1's side).
    pub reverse: bool,
    pub mode: AttachMode,
}

/// One attached interface.
struct Attached {
    /// The index it had when attached: a new interface under the same name is another one.
    ifindex: u32,
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

    /// The hook that sees the client's packets.
    pub fn direction(&self) -> Direction {
        self.options.direction
    }

    pub fn stats(&self) -> Arc<LiveStats> {
        Arc::clone(&self.stats)
    }

    /// Makes the attached set equal to `wanted` (name -> ifindex seen): detaches what is no
    /// longer wanted or was replaced by a new interface of the same name, attaches what is
    /// new. Returns the names attached now.
    pub fn reconcile(&mut self, wanted: &BTreeMap<String, u32>) -> Vec<String> {
        let stale: Vec<String> = self
            .attached
            .iter()
            .filter(|(name, a)| wanted.get(*name) != Some(&a.ifindex))
            .map(|(name, _)| name.clone())
            .collect();
        for name in stale {
            if let Some(attached) = self.attached.remove(&name) {
                self.detach(&name, attached);
            }
        }
        for (name, &index) in wanted {
            if self.attached.contains_key(name) {
                continue;
            }
            // The interface went (or was replaced) since it was listed: the next reconcile
            // sees the new one.
            if ifindex(name) != Some(index) {
                continue;
            }
            match self.attach(name) {
                Ok(links) => {
                    self.stats.attaches.fetch_add(1, Relaxed);
                    self.attached.insert(
                        name.clone(),
                        Attached {
                            ifindex: index,
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
        self.attached.keys().cloned().collect()
    }

    /// Attaches both hooks (or the forward one); on a failure, detaches what it made.
    fn attach(
        &self,
        name: &str,
    ) -> Result<Vec<(Direction, SchedClassifierLinkId)>, super::classifier::ClassifierError> {
        let mut classifier = lock(&self.classifier);
        let forward = self.options.direction;
        let mut directions = vec![forward];
        if self.options.reverse {
            directions.push(forward.opposite());
        }
        let mut links = Vec::new();
        for direction in directions {
            match classifier.attach(name, direction, self.options.mode) {
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
