//! A fixed-bucket histogram of durations, cheap enough for a hot path: two relaxed adds (a
//! bucket and the sum), no lock, no allocation. A stage keeps one in its stats and reports it
//! from its [`Source`](super::Source) as a [`HistogramSample`].

use std::{
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    time::Duration,
};

use super::registry::{HistogramSample, Labels};

/// Upper bounds in seconds, from a tenth of a millisecond (v2 on the same node answers in
/// under one) to the default response timeout (10 s); a last bucket holds everything slower.
pub const LATENCY_BOUNDS: [f64; 16] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

#[derive(Debug)]
pub struct LatencyHistogram {
    name: &'static str,
    help: &'static str,
    /// One count per bound, then the overflow bucket.
    buckets: [AtomicU64; LATENCY_BOUNDS.len() + 1],
    sum_ns: AtomicU64,
}

impl LatencyHistogram {
    pub const fn new(name: &'static str, help: &'static str) -> Self {
        LatencyHistogram {
            name,
            help,
            buckets: [const { AtomicU64::new(0) }; LATENCY_BOUNDS.len() + 1],
            sum_ns: AtomicU64::new(0),
        }
    }

    /// Counts one duration.
    pub fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let bucket = LATENCY_BOUNDS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(LATENCY_BOUNDS.len());
        if let Some(slot) = self.buckets.get(bucket) {
            slot.fetch_add(1, Relaxed);
        }
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sum_ns.fetch_add(nanos, Relaxed);
    }

    /// The current counts. Read without a lock, so under load the sum may lag the buckets by
    /// a duration; the count is the buckets' total, so the exposition stays consistent
    /// (`+Inf` bucket == count).
    pub fn sample(&self) -> HistogramSample {
        let buckets: Vec<(f64, u64)> = LATENCY_BOUNDS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(self.buckets.iter().map(|slot| slot.load(Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        HistogramSample {
            name: self.name,
            help: self.help,
            labels: Labels::new(),
            buckets,
            sum: self.sum_ns.load(Relaxed) as f64 / 1e9,
            count,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_land_in_the_first_bucket_that_holds_them() {
        let histogram = LatencyHistogram::new("latency_seconds", "Latency.");
        histogram.observe(Duration::from_micros(100));
        histogram.observe(Duration::from_micros(500));
        histogram.observe(Duration::from_millis(3));
        histogram.observe(Duration::from_secs(60));
        let sample = histogram.sample();
        assert_eq!(sample.count, 4);
        assert_eq!(sample.buckets[0], (0.000_1, 1));
        assert_eq!(sample.buckets[2], (0.000_5, 1));
        assert_eq!(sample.buckets[5], (0.005, 1));
        assert_eq!(sample.buckets.last(), Some(&(f64::INFINITY, 1)));
        assert!((sample.sum - 60.003_6).abs() < 1e-9, "{}", sample.sum);
    }
}
