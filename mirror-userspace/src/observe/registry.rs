//! The counter registry: one place that knows every stage's counters, so that the status
//! line and the metrics endpoint read the same numbers.
//!
//! Each stage keeps its counters where it updates them (atomics shared with its tasks, or
//! cells the capture loop publishes into) and registers a [`Source`] that reads them. A
//! reader walks the registry; it never keeps its own copy. A counter is a `u64` that only
//! grows; a gauge (flows, buffered bytes, open connections) goes up and down and is a
//! separate [`Kind`].

use std::sync::{Arc, Mutex, MutexGuard};

/// Whether a value only grows (Prometheus counter, `_total`) or moves both ways.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

/// One value read from a source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    /// The counter's name within its stage, e.g. `requests_mirrored`; with the stage it
    /// makes the metric name `mirror_<stage>_<name>`.
    pub name: &'static str,
    /// One line saying what is counted.
    pub help: &'static str,
    pub kind: Kind,
    /// At most one label, e.g. the program a kernel run-time counter belongs to.
    pub label: Option<(&'static str, String)>,
    pub value: u64,
}

impl Sample {
    pub fn counter(name: &'static str, help: &'static str, value: u64) -> Self {
        Sample {
            name,
            help,
            kind: Kind::Counter,
            label: None,
            value,
        }
    }

    pub fn gauge(name: &'static str, help: &'static str, value: u64) -> Self {
        Sample {
            kind: Kind::Gauge,
            ..Sample::counter(name, help, value)
        }
    }

    pub fn with_label(mut self, key: &'static str, value: impl Into<String>) -> Self {
        self.label = Some((key, value.into()));
        self
    }
}

/// A stage's counters, read on demand. Samples of one name must come one after another.
pub trait Source: Send + Sync {
    fn visit(&self, out: &mut dyn FnMut(Sample));
}

/// A source under its stage name.
type Stage = (&'static str, Arc<dyn Source>);

/// Every registered source, each under its stage name, in registration order (the order
/// the status line prints them in).
#[derive(Clone, Default)]
pub struct Registry {
    stages: Arc<Mutex<Vec<Stage>>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let stages: Vec<_> = self.lock().iter().map(|(stage, _)| *stage).collect();
        f.debug_struct("Registry").field("stages", &stages).finish()
    }
}

impl Registry {
    /// Adds a stage; its name becomes the metrics' prefix (`mirror_<stage>_`).
    pub fn register(&self, stage: &'static str, source: Arc<dyn Source>) {
        self.lock().push((stage, source));
    }

    /// Calls `out` with each stage name and each of its samples, in order.
    pub fn visit(&self, out: &mut dyn FnMut(&'static str, Sample)) {
        // Clone the list so a source may take its own locks without holding ours.
        let stages = self.lock().clone();
        for (stage, source) in stages {
            source.visit(&mut |sample| out(stage, sample));
        }
    }

    /// The value of one sample (the first with that stage and name), for tests and summaries.
    pub fn value(&self, stage: &str, name: &str) -> Option<u64> {
        let mut found = None;
        self.visit(&mut |s, sample| {
            if found.is_none() && s == stage && sample.name == name {
                found = Some(sample.value);
            }
        });
        found
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Stage>> {
        // Registration cannot leave the list half-changed: recover from a poisoned lock.
        self.stages
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

    /// A source over two atomics, as stages keep them.
    #[derive(Default)]
    pub(crate) struct TwoCounters {
        pub sent: AtomicU64,
        pub open: AtomicU64,
    }

    impl Source for TwoCounters {
        fn visit(&self, out: &mut dyn FnMut(Sample)) {
            out(Sample::counter(
                "sent",
                "Requests sent.",
                self.sent.load(Relaxed),
            ));
            out(Sample::gauge(
                "open",
                "Open connections.",
                self.open.load(Relaxed),
            ));
        }
    }

    #[test]
    fn readers_see_the_sources_live_values() {
        let registry = Registry::default();
        let source = Arc::new(TwoCounters::default());
        registry.register("relay", source.clone());
        assert_eq!(registry.value("relay", "sent"), Some(0));
        source.sent.fetch_add(3, Relaxed);
        source.open.store(2, Relaxed);
        assert_eq!(registry.value("relay", "sent"), Some(3));
        assert_eq!(registry.value("relay", "open"), Some(2));
        assert_eq!(registry.value("relay", "missing"), None);
        assert_eq!(registry.value("pipeline", "sent"), None);
    }

    #[test]
    fn stages_are_visited_in_registration_order() {
        let registry = Registry::default();
        registry.register("b", Arc::new(TwoCounters::default()));
        registry.register("a", Arc::new(TwoCounters::default()));
        let mut seen = Vec::new();
        registry.visit(&mut |stage, sample| seen.push(format!("{stage}.{}", sample.name)));
        assert_eq!(seen, ["b.sent", "b.open", "a.sent", "a.open"]);
    }
}
