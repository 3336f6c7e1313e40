//! The relay's counters: what reached v2, what was dropped and why, and what v2 answered.
//! Plain atomics, shared by the dispatcher and every shadow connection task, and read
//! through the registry (`observe`).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

use crate::observe::{Sample, Source};

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

    /// The counter of requests dropped for this reason.
    pub const fn counter_name(self) -> &'static str {
        match self {
            DropReason::QueueFull => "dropped_queue_full",
            DropReason::ConnLimit => "dropped_conn_limit",
            DropReason::ShadowDown => "dropped_shadow_down",
            DropReason::WriteFailed => "dropped_write_failed",
            DropReason::Aborted => "dropped_aborted",
            DropReason::Shutdown => "dropped_shutdown",
        }
    }

    const fn help(self) -> &'static str {
        match self {
            DropReason::QueueFull => {
                "Requests dropped: the connection's queue or the in-flight budget was full."
            }
            DropReason::ConnLimit => "Requests dropped: the cap on shadow connections was reached.",
            DropReason::ShadowDown => "Requests dropped: v2 could not be reached.",
            DropReason::WriteFailed => "Requests dropped: writing to v2 failed or timed out.",
            DropReason::Aborted => "Requests dropped: the capture lost bytes of the request.",
            DropReason::Shutdown => "Requests dropped: the agent shut down before sending them.",
        }
    }
}

#[derive(Debug, Default)]
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
                reason.counter_name(),
                reason.help(),
                self.dropped_count(reason),
            ));
        }
        for (class, name) in RESPONSE_COUNTERS.iter().enumerate() {
            out(Sample::counter(
                name,
                "Responses from v2 of this status class (1xx: 101 only).",
                self.responses(class + 1),
            ));
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
    }
}

/// Names of the response counters, by status class.
const RESPONSE_COUNTERS: [&str; 5] = [
    "responses_1xx",
    "responses_2xx",
    "responses_3xx",
    "responses_4xx",
    "responses_5xx",
];

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
        stats.visit(&mut |sample| samples.push((sample.name, sample.value)));
        assert!(samples.contains(&("dropped_queue_full", 2)));
        assert!(samples.contains(&("responses_2xx", 1)));
        assert!(samples.contains(&("shadow_connections", 0)));
    }
}
