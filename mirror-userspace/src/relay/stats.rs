//! The relay's counters: one terminal outcome per mirrored request (answered by status class,
//! unanswered by cause, dropped by reason), and how the connections to v2 fared. Plain
//! atomics, shared by the dispatcher and every task, and read through the registry
//! (`observe`). Conservation: `requests = answered + unanswered + dropped + pending`, and
//! `pending` is zero once the relay is drained.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

use crate::observe::{Sample, Source};

/// Defines a reason enum with its counter names and help texts from one list.
macro_rules! reasons {
    ($(#[$meta:meta])* $name:ident { $( $(#[doc = $doc:literal])* $variant:ident => $counter:literal ),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum $name { $( $(#[doc = $doc])* $variant ),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$( $name::$variant ),+];

            /// The counter of requests with this outcome.
            pub const fn counter_name(self) -> &'static str {
                match self { $( $name::$variant => $counter ),+ }
            }

            const fn help(self) -> &'static str {
                match self { $( $name::$variant => concat!($($doc),+) ),+ }
            }
        }
    };
}

reasons! {
    /// Why a mirrored request never reached v2 (whole).
    DropReason {
        /// The client connection's queue or the global in-flight byte budget was full.
        QueueFull => "dropped_queue_full",
        /// Every allowed connection to v2 was busy for the whole connect timeout.
        ConnLimit => "dropped_conn_limit",
        /// v2 refused, did not answer the connect, or was unreachable (or backing off after that).
        ShadowDown => "dropped_shadow_down",
        /// A local error prevented the connect (no local port, no file descriptor, no buffers).
        LocalError => "dropped_local_error",
        /// The shadow's name did not resolve.
        ResolveFailed => "dropped_resolve_failed",
        /// The capture lost bytes of the request after it had started streaming.
        Aborted => "dropped_aborted",
        /// The agent shut down before v2 answered the request.
        Shutdown => "dropped_shutdown",
    }
}

reasons! {
    /// Why a request given to v2 got no answer.
    Unanswered {
        /// No answer within the response timeout, or v2 stopped accepting the request's bytes.
        Timeout => "unanswered_timeout",
        /// v2 closed the connection without answering.
        Closed => "unanswered_closed",
        /// v2 reset the connection without answering.
        Reset => "unanswered_reset",
        /// v2's response could not be parsed.
        Malformed => "unanswered_malformed",
    }
}

/// The one outcome a mirrored request ends in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// v2's response was framed; its status.
    Answered(u16),
    Unanswered(Unanswered),
    Dropped(DropReason),
}

/// Why a connect to v2 failed. Only the first three say anything about v2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectFailure {
    Refused,
    TimedOut,
    Unreachable,
    /// EADDRNOTAVAIL / EADDRINUSE: no local port left.
    AddrUnavailable,
    /// EMFILE / ENFILE.
    FdLimit,
    /// ENOBUFS / ENOMEM.
    NoBuffers,
    /// Anything else on the local side.
    Other,
}

impl ConnectFailure {
    pub const ALL: [ConnectFailure; 7] = [
        ConnectFailure::Refused,
        ConnectFailure::TimedOut,
        ConnectFailure::Unreachable,
        ConnectFailure::AddrUnavailable,
        ConnectFailure::FdLimit,
        ConnectFailure::NoBuffers,
        ConnectFailure::Other,
    ];

    /// Whether the failure says v2 is down (as opposed to this node being short of something).
    pub const fn blames_shadow(self) -> bool {
        matches!(
            self,
            ConnectFailure::Refused | ConnectFailure::TimedOut | ConnectFailure::Unreachable
        )
    }

    const fn counter_name(self) -> &'static str {
        match self {
            ConnectFailure::Refused => "connect_refused",
            ConnectFailure::TimedOut => "connect_timeouts",
            ConnectFailure::Unreachable => "connect_unreachable",
            ConnectFailure::AddrUnavailable => "connect_addr_unavailable",
            ConnectFailure::FdLimit => "connect_fd_limit",
            ConnectFailure::NoBuffers => "connect_no_buffers",
            ConnectFailure::Other => "connect_other_errors",
        }
    }

    const fn help(self) -> &'static str {
        match self {
            ConnectFailure::Refused => "Connects to v2 refused.",
            ConnectFailure::TimedOut => "Connects to v2 that timed out.",
            ConnectFailure::Unreachable => {
                "Connects to v2 with no route (host or net unreachable)."
            }
            ConnectFailure::AddrUnavailable => {
                "Connects that found no local port (EADDRNOTAVAIL): a local error."
            }
            ConnectFailure::FdLimit => "Connects that found no file descriptor (EMFILE, ENFILE).",
            ConnectFailure::NoBuffers => "Connects that found no kernel memory (ENOBUFS, ENOMEM).",
            ConnectFailure::Other => "Connects that failed for another local reason.",
        }
    }
}

/// Status classes counted: 1xx to 5xx, and anything else.
const STATUS_CLASSES: [&str; 6] = [
    "answered_1xx",
    "answered_2xx",
    "answered_3xx",
    "answered_4xx",
    "answered_5xx",
    "answered_other",
];

#[derive(Debug, Default)]
pub struct RelayStats {
    /// Requests handed to the relay (their head arrived).
    pub requests: AtomicU64,
    answered: [AtomicU64; STATUS_CLASSES.len()],
    unanswered: [AtomicU64; 4],
    dropped: [AtomicU64; 7],
    /// Requests written again on a new connection because v2 closed before processing them.
    pub resent: AtomicU64,
    /// Request bytes v2's connections accepted (re-sent ones included).
    pub bytes_sent: AtomicU64,
    pub connections_opened: AtomicU64,
    /// Requests that went out on a connection that had carried an earlier one.
    pub connections_reused: AtomicU64,
    connect_failures: [AtomicU64; ConnectFailure::ALL.len()],
    /// Name lookups of the shadow that failed.
    pub resolve_failures: AtomicU64,
    /// Connections to v2 open now (a gauge), idle ones included.
    pub shadow_connections: AtomicUsize,
    /// Of those, idle in the pool now (a gauge).
    pub idle_connections: AtomicUsize,
}

impl RelayStats {
    /// Counts a request's terminal outcome. Called once per request (see `ticket`).
    pub fn outcome(&self, outcome: Outcome) {
        let slot = match outcome {
            Outcome::Answered(status) => {
                let class = usize::from(status / 100);
                let index = if (1..=5).contains(&class) {
                    class - 1
                } else {
                    5
                };
                &self.answered[index]
            }
            Outcome::Unanswered(cause) => &self.unanswered[cause as usize],
            Outcome::Dropped(reason) => &self.dropped[reason as usize],
        };
        slot.fetch_add(1, Relaxed);
    }

    pub fn connect_failed(&self, failure: ConnectFailure) {
        self.connect_failures[failure as usize].fetch_add(1, Relaxed);
    }

    pub fn dropped_count(&self, reason: DropReason) -> u64 {
        self.dropped[reason as usize].load(Relaxed)
    }

    pub fn unanswered_count(&self, cause: Unanswered) -> u64 {
        self.unanswered[cause as usize].load(Relaxed)
    }

    pub fn connect_failures(&self, failure: ConnectFailure) -> u64 {
        self.connect_failures[failure as usize].load(Relaxed)
    }

    /// Answers of status class `class` (1 to 5; anything else is counted as 6).
    pub fn answered_class(&self, class: usize) -> u64 {
        class
            .checked_sub(1)
            .and_then(|i| self.answered.get(i))
            .map_or(0, |slot| slot.load(Relaxed))
    }

    pub fn answered(&self) -> u64 {
        sum(&self.answered)
    }

    pub fn unanswered(&self) -> u64 {
        sum(&self.unanswered)
    }

    pub fn dropped(&self) -> u64 {
        sum(&self.dropped)
    }

    /// Requests without an outcome yet. Read while requests move it may be off by the few
    /// that end between the loads; once drained it is exact.
    pub fn pending(&self) -> u64 {
        let ended = self.answered() + self.unanswered() + self.dropped();
        self.requests.load(Relaxed).saturating_sub(ended)
    }
}

fn sum(counters: &[AtomicU64]) -> u64 {
    counters.iter().map(|c| c.load(Relaxed)).sum()
}

impl Source for RelayStats {
    fn visit(&self, out: &mut dyn FnMut(Sample)) {
        let load = |counter: &AtomicU64| counter.load(Relaxed);
        // Outcome totals first: the conservation law reads left to right.
        out(Sample::counter(
            "requests",
            "Requests handed to the relay.",
            load(&self.requests),
        ));
        out(Sample::counter(
            "answered",
            "Requests v2 answered (its response was framed).",
            self.answered(),
        ));
        out(Sample::counter(
            "unanswered",
            "Requests given to v2 that it did not answer.",
            self.unanswered(),
        ));
        out(Sample::counter(
            "dropped",
            "Requests that never reached v2 whole.",
            self.dropped(),
        ));
        out(Sample::gauge(
            "pending",
            "Requests without an outcome yet (queued, being sent, or awaiting the answer).",
            self.pending(),
        ));
        for (class, name) in STATUS_CLASSES.iter().enumerate() {
            out(Sample::counter(
                name,
                "Requests v2 answered with this status class.",
                self.answered_class(class + 1),
            ));
        }
        for cause in Unanswered::ALL {
            out(Sample::counter(
                cause.counter_name(),
                cause.help(),
                self.unanswered_count(*cause),
            ));
        }
        for reason in DropReason::ALL {
            out(Sample::counter(
                reason.counter_name(),
                reason.help(),
                self.dropped_count(*reason),
            ));
        }
        out(Sample::counter(
            "resent",
            "Requests written again because v2 closed before processing them.",
            load(&self.resent),
        ));
        out(Sample::counter(
            "bytes_sent",
            "Request bytes written to v2.",
            load(&self.bytes_sent),
        ));
        out(Sample::counter(
            "connections_opened",
            "Connections opened to v2.",
            load(&self.connections_opened),
        ));
        out(Sample::counter(
            "connections_reused",
            "Requests sent on a connection that had carried an earlier one.",
            load(&self.connections_reused),
        ));
        for failure in ConnectFailure::ALL {
            out(Sample::counter(
                failure.counter_name(),
                failure.help(),
                self.connect_failures(failure),
            ));
        }
        out(Sample::counter(
            "resolve_failures",
            "Lookups of the shadow's name that failed.",
            load(&self.resolve_failures),
        ));
        out(Sample::gauge(
            "shadow_connections",
            "Connections to v2 open now.",
            self.shadow_connections.load(Relaxed) as u64,
        ));
        out(Sample::gauge(
            "idle_connections",
            "Connections to v2 idle in the pool now.",
            self.idle_connections.load(Relaxed) as u64,
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_add_up_by_kind_and_class() {
        let stats = RelayStats::default();
        stats.requests.store(6, Relaxed);
        stats.outcome(Outcome::Dropped(DropReason::QueueFull));
        stats.outcome(Outcome::Answered(204));
        stats.outcome(Outcome::Answered(503));
        stats.outcome(Outcome::Answered(999));
        stats.outcome(Outcome::Unanswered(Unanswered::Reset));
        assert_eq!(stats.dropped_count(DropReason::QueueFull), 1);
        assert_eq!(stats.answered_class(2), 1);
        assert_eq!(stats.answered_class(5), 1);
        assert_eq!(stats.answered_class(6), 1);
        assert_eq!(
            (stats.answered(), stats.unanswered(), stats.dropped()),
            (3, 1, 1)
        );
        assert_eq!(stats.pending(), 1);
        let mut samples = Vec::new();
        stats.visit(&mut |sample| samples.push((sample.name, sample.value)));
        assert_eq!(
            &samples[..5],
            &[
                ("requests", 6),
                ("answered", 3),
                ("unanswered", 1),
                ("dropped", 1),
                ("pending", 1)
            ]
        );
        assert!(samples.contains(&("dropped_queue_full", 1)));
        assert!(samples.contains(&("unanswered_reset", 1)));
        assert!(samples.contains(&("shadow_connections", 0)));
    }

    #[test]
    fn only_remote_connect_failures_blame_the_shadow() {
        let blamed: Vec<_> = ConnectFailure::ALL
            .iter()
            .filter(|f| f.blames_shadow())
            .collect();
        assert_eq!(blamed.len(), 3);
        assert!(!ConnectFailure::AddrUnavailable.blames_shadow());
        assert!(!ConnectFailure::FdLimit.blames_shadow());
    }
}
