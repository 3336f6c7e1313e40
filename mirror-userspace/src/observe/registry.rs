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

/// What a sample's `value` is measured in. Exported metrics use base units: a value kept in
/// nanoseconds (cheap to keep in an integer) is exported in seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    Plain,
    Nanoseconds,
}

/// A sample's labels: few, with bounded values (a reason, a status class, a program).
pub type Labels = Vec<(&'static str, String)>;

/// One value read from a source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    /// The counter's name within its stage, e.g. `requests_mirrored`; with the stage it
    /// makes the metric name `mirror_<stage>_<name>`.
    pub name: &'static str,
    /// One line saying what is counted.
    pub help: &'static str,
    pub kind: Kind,
    pub unit: Unit,
    /// E.g. the program a kernel run-time counter belongs to, or the reason of a drop.
    pub labels: Labels,
    pub value: u64,
}

impl Sample {
    pub fn counter(name: &'static str, help: &'static str, value: u64) -> Self {
        Sample {
            name,
            help,
            kind: Kind::Counter,
            unit: Unit::Plain,
            labels: Labels::new(),
            value,
        }
    }

    pub fn gauge(name: &'static str, help: &'static str, value: u64) -> Self {
        Sample {
            kind: Kind::Gauge,
            ..Sample::counter(name, help, value)
        }
    }

    /// A gauge kept in nanoseconds; exported in seconds (`name` should end in `_seconds`).
    pub fn gauge_nanos(name: &'static str, help: &'static str, nanos: u64) -> Self {
        Sample {
            unit: Unit::Nanoseconds,
            ..Sample::gauge(name, help, nanos)
        }
    }

    /// Adds a label (`Sample::counter(..).with_label("reason", "queue_full")`).
    pub fn with_label(mut self, key: &'static str, value: impl Into<String>) -> Self {
        self.labels.push((key, value.into()));
        self
    }

    /// The value in the exported unit (seconds for nanoseconds).
    pub fn exported_value(&self) -> f64 {
        match self.unit {
            Unit::Plain => self.value as f64,
            Unit::Nanoseconds => self.value as f64 / 1e9,
        }
    }
}

/// A histogram read from a source: per-bucket counts (not cumulative) under their upper
/// bounds, the last bound being infinity.
#[derive(Clone, Debug, PartialEq)]
pub struct HistogramSample {
    /// As for [`Sample::name`]; in base units (`response_latency_seconds`).
    pub name: &'static str,
    pub help: &'static str,
    /// As for [`Sample::labels`] (the mirror, under `--config`); no `le`.
    pub labels: Labels,
    pub buckets: Vec<(f64, u64)>,
    pub sum: f64,
    pub count: u64,
}

impl HistogramSample {
    /// Adds a label, as [`Sample::with_label`] does.
    pub fn with_label(mut self, key: &'static str, value: impl Into<String>) -> Self {
        self.labels.push((key, value.into()));
        self
    }
}

/// A stage's counters, read on demand. Samples (and histograms) of one name must come one
/// after another.
pub trait Source: Send + Sync {
    fn visit(&self, out: &mut dyn FnMut(Sample));

    /// The source's histograms, if it keeps any (the metrics endpoint renders them; the
    /// status line leaves them out).
    fn histograms(&self, _out: &mut dyn FnMut(HistogramSample)) {}
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

    /// Calls `out` with each stage name and each of its histograms, in order.
    pub fn visit_histograms(&self, out: &mut dyn FnMut(&'static str, HistogramSample)) {
        let stages = self.lock().clone();
        for (stage, source) in stages {
            source.histograms(&mut |histogram| out(stage, histogram));
        }
    }

    /// The sum of every sample of one stage and name (over all its labels), if it has any:
    /// a labelled family's total, or a plain sample's value.
    pub fn total(&self, stage: &str, name: &str) -> Option<u64> {
        let mut total = None;
        self.visit(&mut |s, sample| {
            if s == stage && sample.name == name {
                total = Some(total.unwrap_or(0u64).wrapping_add(sample.value));
            }
        });
        total
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
