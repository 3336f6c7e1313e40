//! The relay's counters: one terminal outcome per mirrored request (answered by status class,
//! unanswered by cause, dropped by reason), and how the connections to v2 fared. Plain
//! atomics, shared by the dispatcher and every task, and read through the registry
//! (`observe`). Conservation: `requests = answered + unanswered + dropped + pending`, and
//! `pending` is zero once the relay is drained.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

use super::grpc_methods::GrpcMethods;
use crate::observe::{histogram::LatencyHistogram, registry::HistogramSample, Sample, Source};

/// Defines a reason enum with its `reason` labels and help texts from one list.
macro_rules! reasons {
    ($(#[$meta:meta])* $name:ident { $( $(#[doc = $doc:literal])* $variant:ident => $label:literal ),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum $name { $( $(#[doc = $doc])* $variant ),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$( $name::$variant ),+];

            /// The `reason` label of requests with this outcome (in the status line, the
            /// family's name and this: `dropped_queue_full`).
            pub const fn label(self) -> &'static str {
                match self { $( $name::$variant => $label ),+ }
            }
        }
    };
}

reasons! {
    /// Why a mirrored request never reached v2 (whole).
    DropReason {
        /// The client connection's queue or the global in-flight byte budget was full.
        QueueFull => "queue_full",
        /// The client's source address (its pod) held its share of the in-flight byte budget
        /// (`--max-inflight-mib-per-source`): it loses its own mirroring, no other pod's.
        SourceBudget => "source_budget",
        /// The client's source address (its pod) had its share of the connections to v2 in
        /// use (`--max-shadow-connections-per-source`), one per client connection it keeps
        /// open: it loses its own mirroring, no other pod's.
        SourceConnections => "source_connections",
        /// Every allowed connection to v2 was busy for the whole connect timeout.
        ConnLimit => "conn_limit",
        /// v2 refused, did not answer the connect, or was unreachable (or backing off after that).
        ShadowDown => "shadow_down",
        /// v2 took no new connection in time while it answered on others: the connect timed
        /// out (a full accept queue), or as many new connections as are opened at once waited
        /// for their first answer for the whole response timeout. Not a v2 that is down.
        ShadowBusy => "shadow_busy",
        /// A local error prevented the connect (no local port, no file descriptor, no buffers).
        LocalError => "local_error",
        /// The shadow's name did not resolve.
        ResolveFailed => "resolve_failed",
        /// The capture lost bytes of the request after it had started streaming.
        Aborted => "aborted",
        /// The agent shut down before v2 answered the request.
        Shutdown => "shutdown",
    }
}

reasons! {
    /// Why a request given to v2 got no answer.
    Unanswered {
        /// No answer within the response timeout, or v2 stopped accepting the request's bytes.
        Timeout => "timeout",
        /// v2 closed the connection without answering.
        Closed => "closed",
        /// v2 reset the connection without answering.
        Reset => "reset",
        /// v2's response could not be parsed.
        Malformed => "malformed",
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

/// The `class` labels of the answered counters: 1xx to 5xx, anything else, and raw TCP
/// connections v2 took whole ([`STREAM_TAKEN`]).
const STATUS_CLASSES: [&str; 7] = ["1xx", "2xx", "3xx", "4xx", "5xx", "other", "tcp"];

/// The "status" a raw TCP connection is answered with when v2 took every byte of it and
/// the connection ended as the client's did: counted in class `tcp`, no latency observed.
pub const STREAM_TAKEN: u16 = 0;

#[derive(Debug)]
pub struct RelayStats {
    /// Requests handed to the relay (their head arrived).
    pub requests: AtomicU64,
    answered: [AtomicU64; STATUS_CLASSES.len()],
    unanswered: [AtomicU64; Unanswered::ALL.len()],
    dropped: [AtomicU64; DropReason::ALL.len()],
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
    /// h2c connections no longer followed (see `mirror_cores::http2::H2Stop`).
    h2c_stopped: AtomicU64,
    /// Answered h2c streams whose response carried `grpc-status: 0`.
    pub grpc_ok: AtomicU64,
    /// Answered h2c streams whose response carried another `grpc-status`.
    pub grpc_error: AtomicU64,
    /// gRPC calls by method and how they ended.
    pub grpc_methods: GrpcMethods,
    /// gRPC calls whose `grpc-timeout` was not one (ignored: the response timeout applied).
    pub grpc_timeout_invalid: AtomicU64,
    /// Connections to v2 open now (a gauge), idle ones included.
    pub shadow_connections: AtomicUsize,
    /// Of those, idle in the pool now (a gauge).
    pub idle_connections: AtomicUsize,
    /// Request bytes held now (queued, or sent and not yet answered), as the in-flight
    /// budget charges them (a gauge; kept by `ticket::Budget`).
    pub queued_bytes: AtomicUsize,
    /// From a request handed to the relay to v2's answer framed, for answered requests.
    pub response_latency: LatencyHistogram,
}

impl Default for RelayStats {
    fn default() -> Self {
        RelayStats {
            requests: AtomicU64::new(0),
            answered: Default::default(),
            unanswered: Default::default(),
            dropped: Default::default(),
            resent: AtomicU64::new(0),
            bytes_sent: AtomicU64::new(0),
            connections_opened: AtomicU64::new(0),
            connections_reused: AtomicU64::new(0),
            connect_failures: Default::default(),
            resolve_failures: AtomicU64::new(0),
            h2c_stopped: AtomicU64::new(0),
            grpc_ok: AtomicU64::new(0),
            grpc_error: AtomicU64::new(0),
            grpc_methods: GrpcMethods::default(),
            grpc_timeout_invalid: AtomicU64::new(0),
            shadow_connections: AtomicUsize::new(0),
            idle_connections: AtomicUsize::new(0),
            queued_bytes: AtomicUsize::new(0),
            response_latency: LatencyHistogram::new(
                "response_latency_seconds",
                "Seconds from a request handed to the relay to v2's response framed (answered \
                 requests only).",
            ),
        }
    }
}

impl RelayStats {
    /// Counts a request's terminal outcome. Called once per request (see `ticket`).
    pub fn outcome(&self, outcome: Outcome) {
        let slot = match outcome {
            Outcome::Answered(STREAM_TAKEN) => &self.answered[6],
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

    /// An h2c connection stopped being followed: its streams from then on are not mirrored.
    pub fn count_h2c_stopped(&self) {
        self.h2c_stopped.fetch_add(1, Relaxed);
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

    /// Answers of status class `class` (1 to 5; anything else is counted as 6; raw TCP
    /// connections are 7).
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
        // The outcome families, each summing to its total (the status line prints the total
        // before the family: `dropped=1 dropped_queue_full=1 ...`).
        for (class, name) in STATUS_CLASSES.iter().enumerate() {
            out(Sample::counter(
                "answered",
                "Requests v2 answered (its response was framed), by status class; class tcp: \
                 raw TCP connections v2 took whole.",
                self.answered_class(class + 1),
            )
            .with_label("class", *name));
        }
        for cause in Unanswered::ALL {
            out(Sample::counter(
                "unanswered",
                "Requests given to v2 that it did not answer, by reason: timeout, closed, reset, \
                 malformed.",
                self.unanswered_count(*cause),
            )
            .with_label("reason", cause.label()));
        }
        for reason in DropReason::ALL {
            out(Sample::counter(
                "dropped",
                "Requests that never reached v2 whole, by reason: queue_full (a queue or the \
                 in-flight budget was full), conn_limit, shadow_down, shadow_busy (a \
                 connect timed out while v2 answered others), local_error, resolve_failed, aborted (the capture lost bytes), shutdown.",
                self.dropped_count(*reason),
            )
            .with_label("reason", reason.label()));
        }
        out(Sample::gauge(
            "pending",
            "Requests without an outcome yet (queued, being sent, or awaiting the answer).",
            self.pending(),
        ));
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
        out(Sample::counter(
            "h2c_stopped",
            "h2c connections no longer followed (not HTTP/2, a capture gap, a frame or header \
             block over its bound, HPACK or protocol errors): later streams not mirrored.",
            load(&self.h2c_stopped),
        ));
        out(Sample::counter(
            "grpc_ok",
            "Answered h2c streams whose response said grpc-status 0 (of answered_2xx).",
            load(&self.grpc_ok),
        ));
        out(Sample::counter(
            "grpc_error",
            "Answered h2c streams whose response said a grpc-status other than 0.",
            load(&self.grpc_error),
        ));
        self.grpc_methods.visit(out);
        out(Sample::counter(
            "grpc_timeout_invalid",
            "gRPC calls whose grpc-timeout did not parse: ignored, the response timeout applied.",
            load(&self.grpc_timeout_invalid),
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
        out(Sample::gauge(
            "queued_bytes",
            "Request bytes held now (queued, or sent and not yet answered), as the in-flight \
             budget charges them.",
            self.queued_bytes.load(Relaxed) as u64,
        ));
    }

    fn histograms(&self, out: &mut dyn FnMut(HistogramSample)) {
        out(self.response_latency.sample());
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
        stats.visit(&mut |sample| {
            let label = sample.labels.first().map(|(_, v)| v.clone());
            samples.push((sample.name, label, sample.value));
        });
        assert_eq!(samples[0], ("requests", None, 6));
        let family = |name: &str| -> u64 {
            samples
                .iter()
                .filter(|(n, label, _)| *n == name && label.is_some())
                .map(|(_, _, value)| value)
                .sum()
        };
        assert_eq!(
            (family("answered"), family("unanswered"), family("dropped")),
            (3, 1, 1)
        );
        let label = |value: &str| Some(value.to_owned());
        assert!(samples.contains(&("dropped", label("queue_full"), 1)));
        assert!(samples.contains(&("unanswered", label("reset"), 1)));
        assert!(samples.contains(&("answered", label("other"), 1)));
        assert!(samples.contains(&("pending", None, 1)));
        assert!(samples.contains(&("shadow_connections", None, 0)));
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
