//! The relay's counters: what reached v2, what was dropped and why, and what v2 answered.
//! Plain atomics, shared by the dispatcher and every shadow connection task.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

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

    pub const fn name(self) -> &'static str {
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

    /// Every counter as `(name, value)`, for logs and metrics.
    pub fn snapshot(&self) -> Vec<(String, u64)> {
        let mut out = vec![
            ("sent".to_owned(), self.sent.load(Relaxed)),
            ("bytes_sent".to_owned(), self.bytes_sent.load(Relaxed)),
        ];
        for reason in DropReason::ALL {
            out.push((
                format!("dropped_{}", reason.name()),
                self.dropped_count(reason),
            ));
        }
        for class in 1..=5 {
            out.push((format!("responses_{class}xx"), self.responses(class)));
        }
        out.extend([
            (
                "response_timeouts".to_owned(),
                self.response_timeouts.load(Relaxed),
            ),
            (
                "response_errors".to_owned(),
                self.response_errors.load(Relaxed),
            ),
            (
                "connections_opened".to_owned(),
                self.connections_opened.load(Relaxed),
            ),
            (
                "connect_failures".to_owned(),
                self.connect_failures.load(Relaxed),
            ),
        ]);
        out
    }
}

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
        let snapshot = stats.snapshot();
        assert!(snapshot.contains(&("dropped_queue_full".to_owned(), 2)));
        assert!(snapshot.contains(&("responses_2xx".to_owned(), 1)));
    }
}
