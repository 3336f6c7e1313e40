//! Per-mirror counters for the registry: what the policies decided for each mirror (stage
//! `policy`) and each mirror's relay (stage `relay`), every sample labelled
//! `mirror="<policy>/<backend>"`. Samples come grouped by name, as the registry requires.

use std::sync::{
    atomic::{AtomicU64, Ordering::Relaxed},
    Arc, Mutex, MutexGuard,
};

use crate::{
    observe::{registry::HistogramSample, Sample, Source},
    relay::RelayStats,
};

/// What the dispatcher decided for one mirror.
#[derive(Debug, Default)]
pub struct MirrorCounters {
    pub requests_mirrored: AtomicU64,
    pub requests_sampled_out: AtomicU64,
    pub requests_not_matched: AtomicU64,
}

/// Requests the dispatcher could not give to any policy.
#[derive(Debug, Default)]
pub struct DispatchCounters {
    pub requests_without_policy: AtomicU64,
    pub heads_unparsed: AtomicU64,
}

#[derive(Clone, Debug)]
struct Entry {
    label: String,
    decided: Arc<MirrorCounters>,
    relay: Arc<RelayStats>,
}

/// The mirrors currently running, as the dispatcher last set them.
#[derive(Debug, Default)]
pub struct MirrorStats {
    entries: Mutex<Vec<Entry>>,
    pub dispatch: DispatchCounters,
}

impl MirrorStats {
    pub fn add(&self, label: String, decided: Arc<MirrorCounters>, relay: Arc<RelayStats>) {
        self.lock().push(Entry {
            label,
            decided,
            relay,
        });
    }

    pub fn remove(&self, label: &str) {
        self.lock().retain(|e| e.label != label);
    }

    fn snapshot(&self) -> Vec<Entry> {
        self.lock().clone()
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Entry>> {
        // A push or retain cannot leave the list half-changed.
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Stage `policy`.
#[derive(Debug)]
pub struct PolicySource(pub Arc<MirrorStats>);

/// Stage `relay`: every mirror's relay counters.
#[derive(Debug)]
pub struct RelaySource(pub Arc<MirrorStats>);

type Counter = (
    &'static str,
    &'static str,
    fn(&MirrorCounters) -> &AtomicU64,
);

const DECIDED: [Counter; 3] = [
    (
        "requests_mirrored",
        "Requests handed to this mirror's relay.",
        |c| &c.requests_mirrored,
    ),
    (
        "requests_sampled_out",
        "Requests that matched the policy and that this mirror's share left out.",
        |c| &c.requests_sampled_out,
    ),
    (
        "requests_not_matched",
        "Requests to the policy's target that none of its matches took.",
        |c| &c.requests_not_matched,
    ),
];

impl Source for PolicySource {
    fn visit(&self, out: &mut dyn FnMut(Sample)) {
        let entries = self.0.snapshot();
        for (name, help, field) in DECIDED {
            for e in &entries {
                let value = field(&e.decided).load(Relaxed);
                out(Sample::counter(name, help, value).with_label("mirror", e.label.clone()));
            }
        }
        let d = &self.0.dispatch;
        out(Sample::counter(
            "requests_without_policy",
            "Requests to a captured destination that no policy's target covers.",
            d.requests_without_policy.load(Relaxed),
        ));
        out(Sample::counter(
            "heads_unparsed",
            "Request heads the policies could not read: not mirrored.",
            d.heads_unparsed.load(Relaxed),
        ));
    }
}

impl Source for RelaySource {
    fn visit(&self, out: &mut dyn FnMut(Sample)) {
        let per_mirror: Vec<(String, Vec<Sample>)> = self
            .0
            .snapshot()
            .into_iter()
            .map(|e| {
                let mut samples = Vec::new();
                e.relay.visit(&mut |s| samples.push(s));
                (e.label, samples)
            })
            .collect();
        // Grouped by name, in the order names first come: relays may differ in how many
        // samples a name has (gRPC methods seen), never in which names come first.
        let mut names: Vec<&'static str> = Vec::new();
        for (_, samples) in &per_mirror {
            for sample in samples {
                if !names.contains(&sample.name) {
                    names.push(sample.name);
                }
            }
        }
        for name in names {
            for (label, samples) in &per_mirror {
                for sample in samples.iter().filter(|s| s.name == name) {
                    out(sample.clone().with_label("mirror", label.clone()));
                }
            }
        }
    }

    fn histograms(&self, out: &mut dyn FnMut(HistogramSample)) {
        // Each relay keeps one histogram (its v2 latency): one after another, so the
        // family's members stay together.
        for e in self.0.snapshot() {
            e.relay
                .histograms(&mut |h| out(h.with_label("mirror", e.label.clone())));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::{status::status_line, Registry};

    #[test]
    fn samples_are_grouped_by_name_and_labelled() {
        let stats = Arc::new(MirrorStats::default());
        let a = Arc::new(MirrorCounters::default());
        a.requests_mirrored.store(4, Relaxed);
        stats.add("p/a:80".into(), a, Arc::new(RelayStats::default()));
        stats.add(
            "p/b:80".into(),
            Arc::default(),
            Arc::new(RelayStats::default()),
        );
        let registry = Registry::default();
        registry.register("policy", Arc::new(PolicySource(stats.clone())));
        registry.register("relay", Arc::new(RelaySource(stats.clone())));
        let mut names = Vec::new();
        registry.visit(&mut |stage, s| {
            names.push((stage, s.name, s.labels.last().map(|l| l.1.clone())))
        });
        assert_eq!(
            names[0],
            ("policy", "requests_mirrored", Some("p/a:80".into()))
        );
        assert_eq!(
            names[1],
            ("policy", "requests_mirrored", Some("p/b:80".into()))
        );
        let relay: Vec<_> = names.iter().filter(|n| n.0 == "relay").collect();
        assert_eq!((relay[0].1, relay[1].1), ("requests", "requests"));
        let line = status_line(&registry);
        assert!(
            line.starts_with("policy: p/a:80 requests_mirrored=4 p/b:80 requests_mirrored=0"),
            "{line}"
        );
        stats.remove("p/a:80");
        assert!(!status_line(&registry).contains("p/a:80"));
    }
}
