//! The relay's counters: what reached v2, what was dropped and why, and what v2 answered.
//! Plain atomics, shared by the dispatcher and every shadow connection task, and read
//! through the registry (`observe`).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

use crate::observe::{histogram::LatencyHistogram, registry::HistogramSample, Sample, Source};

/// Why a mirrored request did not reach v2 whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// The connection's queue or the global in-flight byte budget was full (v2 too slow).
    QueueFull,
    /// The cap on shadow connections was reached.
    ConnLimit,
    /// v2 could not be reached (connect refused or timed out, or backing off after that).
    ShadowDown,
    /// Writing to v2 failed or timed out with the request not fully sent.
    WriteFailed,
    /// The capture lost bytes of the request (a gap) after it had started streaming.
    Aborted,
    /// The agent shut down before the request was sent.
    Shutdown,
}

impl DropReason {
    pub const ALL: [DropReason; 6] = [
        DropReason::QueueFull,
        DropReason::ConnLimit,
        DropReason::ShadowDown,
        DropReason::WriteFailed,
        DropReason::Aborted,
        DropReason::Shutdown,
    ];

    /// The `reason` label of requests dropped for this reason.
    pub const fn label(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::ConnLimit => "conn_limit",
            DropReason::ShadowDown => "shadow_down",
            DropReason::WriteFailed => "write_failed",
            DropReason::Aborted => "aborted",
            DropReason::Shutdown => "shutdown",
        }
    }
}

#[derive(Debug)]
pub struct RelayStats {
    /// Requests written to v2 completely.
    pub sent: AtomicU64,
    /// Request bytes written to v2.
    pub bytes_sent: AtomicU64,
    dropped: [AtomicU64; DropReason::ALL.len()],
    /// Responses by status class: 1xx (101 only; interim ones are not counted) to 5xx.
    responses: [AtomicU64; 5],
    /// Responses v2 did not send in time, or sent unparseable.
    pub response_timeouts: AtomicU64,
    pub response_errors: AtomicU64,
    pub connections_opened: AtomicU64,
    pub connect_failures: AtomicU64,
    /// Shadow connections open now (a gauge).
    pub shadow_connections: AtomicUsize,
    /// Request bytes queued for v2 and not yet written, over all connections (a gauge).
    pub queued_bytes: AtomicUsize,
    /// From a request's last byte written to its response's status line read.
    pub response_latency: LatencyHistogram,
}

impl Default for RelayStats {
    fn default() -> Self {
        RelayStats {
            sent: AtomicU64::new(0),
            bytes_sent: AtomicU64::new(0),
            dropped: Default::default(),
            responses: Default::default(),
            response_timeouts: AtomicU64::new(0),
            response_errors: AtomicU64::new(0),
            connections_opened: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            shadow_connections: AtomicUsize::new(0),
            queued_bytes: AtomicUsize::new(0),
            response_latency: LatencyHistogram::new(
                "response_latency_seconds",
                "Seconds from a request's last byte written to v2 to v2's status line read.",
            ),
        }
    }
}

impl RelayStats {
    pub fn dropped(&self, reason: DropReason) {
        self.dropped[reason as usize].fetch_add(1, Relaxed);
    }

    pub fn dropped_count(&self, reason: DropReason) -> u64 {
        self.dropped[reason as usize].load(Relaxed)
    }

    pub fn response(&self, status: u16) {
        if let Some(slot) = usize::from(status / 100)
            .checked_sub(1)
            .and_then(|class| self.responses.get(class))
        {
            slot.fetch_add(1, Relaxed);
        }
    }

    /// Responses of class `class` (1 to 5).
    pub fn responses(&self, class: usize) -> u64 {
        class
            .checked_sub(1)
            .and_then(|i| self.responses.get(i))
            .map_or(0, |slot| slot.load(Relaxed))
    }
}

impl Source for RelayStats {
    fn visit(&self, out: &mut dyn FnMut(Sample)) {
        let load = |counter: &AtomicU64| counter.load(Relaxed);
        out(Sample::counter(
            "sent",
            "Requests written to v2 completely.",
            load(&self.sent),
        ));
        out(Sample::counter(
            "bytes_sent",
            "Request bytes written to v2.",
            load(&self.bytes_sent),
        ));
        for reason in DropReason::ALL {
            out(Sample::counter(
                "dropped",
                "Requests that did not reach v2 whole, by reason: queue_full (a queue or the \
                 in-flight budget was full), conn_limit, shadow_down (v2 unreachable), \
                 write_failed, aborted (the capture lost bytes), shutdown.",
                self.dropped_count(reason),
            )
            .with_label("reason", reason.label()));
        }
        for (class, name) in RESPONSE_CLASSES.iter().enumerate() {
            out(Sample::counter(
                "responses",
                "Responses from v2, by status class (1xx: 101 only).",
                self.responses(class + 1),
            )
            .with_label("class", *name));
        }
        out(Sample::counter(
            "response_timeouts",
            "Requests v2 did not answer in time.",
            load(&self.response_timeouts),
        ));
        out(Sample::counter(
            "response_errors",
            "Responses v2 sent unparseable.",
            load(&self.response_errors),
        ));
        out(Sample::counter(
            "connections_opened",
            "Connections opened to v2.",
            load(&self.connections_opened),
        ));
        out(Sample::counter(
            "connect_failures",
            "Connects to v2 that failed or timed out.",
            load(&self.connect_failures),
        ));
        out(Sample::gauge(
            "shadow_connections",
            "Shadow connections open now.",
            self.shadow_connections.load(Relaxed) as u64,
        ));
        out(Sample::gauge(
            "queued_bytes",
            "Request bytes queued for v2 and not yet written.",
            self.queued_bytes.load(Relaxed) as u64,
        ));
    }

    fn histograms(&self, out: &mut dyn FnMut(HistogramSample)) {
        out(self.response_latency.sample());
    }
}

/// The `class` labels of the response counters.
const RESPONSE_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_reason_and_class() {
        let stats = RelayStats::default();
        stats.dropped(DropReason::QueueFull);
        stats.dropped(DropReason::QueueFull);
        stats.response(204);
        stats.response(503);
        stats.response(999);
        stats.response(42);
        assert_eq!(stats.dropped_count(DropReason::QueueFull), 2);
        assert_eq!(stats.responses(2), 1);
        assert_eq!(stats.responses(5), 1);
        let mut samples = Vec::new();
        stats.visit(&mut |sample| {
            let label = sample.labels.first().map(|(_, v)| v.clone());
            samples.push((sample.name, label, sample.value));
        });
        let label = |value: &str| Some(value.to_owned());
        assert!(samples.contains(&("dropped", label("queue_full"), 2)));
        assert!(samples.contains(&("responses", label("2xx"), 1)));
        assert!(samples.contains(&("shadow_connections", None, 0)));
    }
}
