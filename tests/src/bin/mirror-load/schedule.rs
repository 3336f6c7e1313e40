//! When each request is due, and what the answered ones measured.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Lets the connections open before the first request is due.
const WARM_UP: Duration = Duration::from_millis(200);

/// The open-loop schedule: request `i` is due at `start + i / rate`, shared by the connections.
pub struct Schedule {
    start: Instant,
    end: Instant,
    rate: u64,
    total: u64,
    next: AtomicU64,
    sent: AtomicU64,
}

impl Schedule {
    pub fn new(rate: u64, duration: Duration) -> Self {
        let start = Instant::now() + WARM_UP;
        Schedule {
            start,
            end: start + duration,
            rate,
            total: rate.saturating_mul(duration.as_secs()),
            next: AtomicU64::new(0),
            sent: AtomicU64::new(0),
        }
    }

    pub fn start(&self) -> Instant {
        self.start
    }

    /// The due time of the next request, or `None` once every request of the run is taken or
    /// the run's time is up (requests still due then are left unsent).
    pub fn take(&self) -> Option<Instant> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        if i >= self.total || Instant::now() >= self.end {
            return None;
        }
        self.sent.fetch_add(1, Ordering::Relaxed);
        let nanos = u128::from(i) * 1_000_000_000 / u128::from(self.rate);
        Some(self.start + Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX)))
    }

    /// Requests of the schedule never sent: the server was too slow to take them in time.
    pub fn unsent(&self) -> u64 {
        self.total - self.sent.load(Ordering::Relaxed).min(self.total)
    }
}

/// What one connection (then, merged, the whole run) measured.
#[derive(Debug, Default)]
pub struct Tally {
    /// Latency of every answered request, in microseconds.
    pub latencies_us: Vec<u64>,
    /// Answers other than 2xx, failed connections, and requests that timed out.
    pub errors: u64,
    /// Requests never sent (see [`Schedule::unsent`]).
    pub late: u64,
    /// When the last answer arrived.
    pub last_answer: Option<Instant>,
}

impl Tally {
    pub fn merge(&mut self, other: Tally) {
        self.latencies_us.extend(other.latencies_us);
        self.errors += other.errors;
        self.late += other.late;
        self.last_answer = self.last_answer.max(other.last_answer);
    }

    /// The `BENCH` line, timing the run from the first due request to the last answer.
    pub fn report(mut self, start: Instant) -> String {
        self.latencies_us.sort_unstable();
        let elapsed = self
            .last_answer
            .map_or(Duration::ZERO, |last| last.saturating_duration_since(start));
        format!(
            "BENCH requests={} duration_us={} errors={} p50_us={} p99_us={} p999_us={} late={}",
            self.latencies_us.len(),
            elapsed.as_micros().max(1),
            self.errors,
            percentile(&self.latencies_us, 500),
            percentile(&self.latencies_us, 990),
            percentile(&self.latencies_us, 999),
            self.late,
        )
    }
}

/// The nearest-rank quantile of sorted values at `per_mille` / 1000 (0 for none); integer
/// arithmetic, so that 99.9% of 1,000 values is the 999th.
fn percentile(sorted: &[u64], per_mille: usize) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (per_mille * sorted.len()).div_ceil(1000);
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let values: Vec<u64> = (1..=1000).collect();
        assert_eq!(percentile(&values, 500), 500);
        assert_eq!(percentile(&values, 990), 990);
        assert_eq!(percentile(&values, 999), 999);
        assert_eq!(percentile(&[7], 999), 7);
        assert_eq!(percentile(&[], 500), 0);
    }

    #[test]
    fn requests_are_due_at_the_rate_and_stop_at_the_total() {
        let schedule = Schedule::new(4, Duration::from_secs(1));
        let due: Vec<Instant> = std::iter::from_fn(|| schedule.take()).collect();
        assert_eq!(due.len(), 4);
        assert_eq!(due[1] - due[0], Duration::from_millis(250));
        assert_eq!(due[3] - due[0], Duration::from_millis(750));
        assert_eq!(schedule.unsent(), 0);
    }
}
