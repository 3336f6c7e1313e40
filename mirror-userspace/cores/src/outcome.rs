//! Where traffic went: one counter per outcome, so every request or byte that was not
//! mirrored has a named reason that metrics and logs can print.

use std::fmt;

/// Defines [`Counters`] from one list, so the struct, its documentation and the
/// `(name, value)` iteration can never drift apart.
macro_rules! counters {
    ($( $(#[doc = $doc:literal])* $name:ident ),+ $(,)?) => {
        /// Plain `u64` counters, one per outcome. They only ever grow (wrapping on overflow,
        /// which at one event per nanosecond takes centuries).
        #[derive(Clone, Debug, Default, PartialEq, Eq)]
        pub struct Counters {
            $( $(#[doc = $doc])* pub $name: u64, )+
        }

        impl Counters {
            /// Every counter as `(name, value)`, in declaration order.
            pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
                [$( (stringify!($name), self.$name) ),+].into_iter()
            }

            /// Every counter's `(name, documentation)`, in declaration order: the help text
            /// of the exported metrics.
            pub const HELP: &'static [(&'static str, &'static str)] =
                &[$( (stringify!($name), concat!($($doc),*)) ),+];

            /// Adds `other` into `self`, e.g. to merge per-worker counters.
            pub fn merge(&mut self, other: &Counters) {
                $( self.$name = self.$name.wrapping_add(other.$name); )+
            }
        }
    };
}

counters! {
    /// Requests handed to the relay completely (head, body, end).
    requests_mirrored,
    /// Bytes (rewritten head plus body in wire form) of the requests counted in `requests_mirrored`.
    bytes_mirrored,
    /// Requests whose Host was absent or empty: forwarded without rewriting.
    requests_host_missing,
    /// Requests skipped whole by sampling (mirror percentage).
    requests_sampled_out,
    /// Wire bytes (head and body) of the requests counted in `requests_sampled_out`.
    bytes_sampled_out,
    /// Requests whose head was already handed out when capture lost bytes: `RequestAbort`.
    requests_aborted_gap,
    /// Requests cut short because the flow ended (FIN, RST, superseding SYN) mid-request.
    requests_aborted_closed,
    /// Requests cut short because the flow sat idle past the timeout mid-request.
    requests_aborted_expired,
    /// Requests cut short because their flow was evicted to stay within a global cap.
    requests_aborted_evicted,
    /// Requests cut short by malformed chunked framing in the body.
    requests_aborted_invalid,
    /// Wire bytes handed out for requests that were later aborted.
    bytes_aborted,
    /// Gaps: bytes the capture lost (window exceeded, or flow table forced a skip).
    gaps,
    /// Sequence space skipped by those gaps.
    gap_bytes,
    /// Partial request heads discarded, never handed out: cut by a gap, or the flow ended.
    heads_discarded,
    /// Bytes discarded while looking for the next request line after a gap or a mid-stream join.
    resync_skipped_bytes,
    /// Out-of-order segments dropped because the reassembler had no free hole slot.
    segments_dropped_no_slot,
    /// Bytes of segments that arrived again (retransmission or overlap) and were ignored.
    duplicate_bytes,
    /// Flows first seen mid-stream whose first payload began a request line: joined.
    midstream_joins,
    /// Segments of flows first seen mid-stream that did not begin a request line: skipped.
    midstream_segments_skipped,
    /// Payload bytes of those skipped segments.
    midstream_bytes_skipped,
    /// Connections no longer mirrored because a request asked for `Upgrade`.
    stopped_upgrade,
    /// Connections no longer mirrored because of a `CONNECT` request.
    stopped_connect,
    /// Connections no longer mirrored: request line or header syntax invalid.
    stopped_invalid_head,
    /// Connections no longer mirrored: more headers than the parser's fixed table holds.
    stopped_too_many_headers,
    /// Connections no longer mirrored: request head larger than the configured cap.
    stopped_header_too_large,
    /// Connections no longer mirrored: malformed or conflicting `Content-Length`.
    stopped_bad_content_length,
    /// Connections no longer mirrored: `Transfer-Encoding` unsupported, not ending in chunked,
    /// or sent by HTTP/1.0.
    stopped_bad_transfer_encoding,
    /// Connections no longer mirrored: both `Content-Length` and `Transfer-Encoding`.
    stopped_length_and_encoding,
    /// Connections no longer mirrored: more than one `Host` header (RFC 9112 section 3.2).
    stopped_multiple_host,
    /// Connections no longer mirrored: malformed chunk size line, chunk end or trailer.
    stopped_bad_chunk,
    /// Connections no longer mirrored: HTTP/2 with prior knowledge (h2c), which is not
    /// HTTP/1.1 (its connection preface instead of a request line).
    stopped_h2c,
    /// Raw TCP connections (or connections upgraded to h2c) no longer mirrored: the capture
    /// lost bytes of them.
    stopped_stream_gap,
    /// HTTP/1.1 connections v1 switched to h2c after an `Upgrade: h2c` request (the client
    /// sent the connection preface after it): handed on as HTTP/2 from that request on.
    upgrades_h2c,
    /// `Upgrade: h2c` requests after which the client went on in HTTP/1.1 (v1 did not
    /// switch): mirrored as HTTP/1.1 requests.
    upgrades_h2c_refused,
    /// Raw TCP connections first seen mid-stream: not mirrored (where their stream began is
    /// unknown).
    stream_joins_skipped,
    /// Bytes of raw TCP connections, and of connections upgraded to h2c, handed to the
    /// relay (acknowledged by v1, in order).
    stream_bytes,
    /// Flows started by a SYN.
    flows_started,
    /// Flows ended by a FIN once all their data was delivered.
    flows_ended_fin,
    /// Flows ended by a RST.
    flows_ended_rst,
    /// Flows replaced by a SYN with a new initial sequence number on the same addresses.
    flows_superseded,
    /// Flows removed after sitting idle past the timeout.
    flows_expired,
    /// Flows evicted (least recently active first) because the flow table was full.
    flows_evicted_table_full,
    /// Flows evicted (least recently active first) because buffered bytes exceeded the cap.
    flows_evicted_memory,
    /// Flows evicted because their source address had its share of flows (its own, oldest first).
    flows_evicted_source_flows,
    /// Flows evicted because their source address buffered its share of bytes (its own).
    flows_evicted_source_memory,
    /// Client segments (at least partly) beyond the window: v1's advertised window, or the
    /// out-of-order window when only the client direction is seen.
    segments_beyond_window,
    /// Payload bytes of those segments dropped for lying beyond the window.
    bytes_beyond_window,
    /// Client-only: flows moved forward to a segment beyond the window after nothing arrived
    /// inside it for the hole timeout (the capture lost more than a window).
    far_jumps,
    /// RSTs ignored: not at the exact next sequence number (client), or outside the window (v1).
    rst_ignored,
    /// FINs ignored: outside the window.
    fin_ignored,
    /// Bytes held (out of order, or not yet acknowledged by v1) when their flow ended: never framed.
    held_bytes_discarded,
    /// Client segments of no connection v1 accepted (no handshake answered, no acknowledgement): ignored.
    segments_unaccepted,
    /// Payload bytes of those segments.
    bytes_unaccepted,
    /// SYN-ACKs from v1 recorded as pending handshakes.
    handshakes_seen,
    /// Pending handshakes forgotten to stay within `max_handshakes` or the source's share.
    handshakes_evicted,
    /// Of those, forgotten because their source address had its share pending (its own, oldest first).
    handshakes_evicted_source,
    /// Pending handshakes forgotten because the client never completed them in time.
    handshakes_expired,
    /// v1 segments ignored because the pipeline follows the client direction only.
    server_segments_ignored,
}

/// Why a request already (partly) handed to the relay will not be completed. The relay must
/// discard the shadow connection: v2 must never see a truncated request that looks complete.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AbortReason {
    /// The capture lost bytes inside this request.
    Gap,
    /// The flow ended (FIN, RST or a new SYN) before the request was complete.
    Closed,
    /// The flow sat idle past the timeout.
    Expired,
    /// The flow was evicted to keep within the flow or memory cap.
    Evicted,
    /// The body's chunked framing was malformed.
    Invalid,
}

impl AbortReason {
    /// Counts one aborted request of `bytes` already handed out.
    pub(crate) fn count(self, counters: &mut Counters, bytes: u64) {
        let c = match self {
            Self::Gap => &mut counters.requests_aborted_gap,
            Self::Closed => &mut counters.requests_aborted_closed,
            Self::Expired => &mut counters.requests_aborted_expired,
            Self::Evicted => &mut counters.requests_aborted_evicted,
            Self::Invalid => &mut counters.requests_aborted_invalid,
        };
        *c = c.wrapping_add(1);
        counters.bytes_aborted = counters.bytes_aborted.wrapping_add(bytes);
    }
}

/// Why a connection stopped being mirrored. Whatever follows on it is ignored until it ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StopReason {
    Upgrade,
    Connect,
    InvalidHead,
    TooManyHeaders,
    HeaderTooLarge,
    BadContentLength,
    BadTransferEncoding,
    LengthAndEncoding,
    MultipleHost,
    BadChunk,
    /// The HTTP/2 connection preface where a request line should be.
    H2c,
    /// A raw TCP connection lost bytes: what follows cannot be relayed in order.
    StreamGap,
}

impl StopReason {
    pub(crate) fn count(self, counters: &mut Counters) {
        let c = match self {
            Self::Upgrade => &mut counters.stopped_upgrade,
            Self::Connect => &mut counters.stopped_connect,
            Self::InvalidHead => &mut counters.stopped_invalid_head,
            Self::TooManyHeaders => &mut counters.stopped_too_many_headers,
            Self::HeaderTooLarge => &mut counters.stopped_header_too_large,
            Self::BadContentLength => &mut counters.stopped_bad_content_length,
            Self::BadTransferEncoding => &mut counters.stopped_bad_transfer_encoding,
            Self::LengthAndEncoding => &mut counters.stopped_length_and_encoding,
            Self::MultipleHost => &mut counters.stopped_multiple_host,
            Self::BadChunk => &mut counters.stopped_bad_chunk,
            Self::H2c => &mut counters.stopped_h2c,
            Self::StreamGap => &mut counters.stopped_stream_gap,
        };
        *c = c.wrapping_add(1);
    }
}

/// Why a flow ended for the relay (`FlowEnd`): close the shadow connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EndReason {
    Fin,
    Rst,
    /// A SYN with another initial sequence number started a new connection on the same addresses.
    Superseded,
    Expired,
    Evicted,
    /// Mirroring stopped on this connection; it is ignored until it ends.
    Stopped(StopReason),
}

impl fmt::Display for Counters {
    /// One `name=value` per line, the format logs print at shutdown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, value) in self.iter() {
            writeln!(f, "{name}={value}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iter_names_every_field_once_with_its_value() {
        let c = Counters {
            gaps: 3,
            flows_evicted_memory: 7,
            ..Counters::default()
        };
        let pairs: Vec<_> = c.iter().collect();
        assert_eq!(pairs.len(), 58);
        assert!(pairs.contains(&("gaps", 3)));
        assert!(pairs.contains(&("flows_evicted_memory", 7)));
        let mut names: Vec<_> = pairs.iter().map(|p| p.0).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), pairs.len());
    }

    #[test]
    fn help_documents_every_counter_in_order() {
        let names: Vec<_> = Counters::default().iter().map(|(name, _)| name).collect();
        let documented: Vec<_> = Counters::HELP.iter().map(|(name, _)| *name).collect();
        assert_eq!(names, documented);
        let gaps = Counters::HELP
            .iter()
            .find(|(name, _)| *name == "gaps")
            .unwrap();
        assert!(gaps.1.contains("bytes the capture lost"), "{}", gaps.1);
    }

    #[test]
    fn merge_adds_fieldwise() {
        let mut a = Counters {
            gaps: 1,
            ..Counters::default()
        };
        a.merge(&Counters {
            gaps: 2,
            requests_mirrored: 5,
            ..Counters::default()
        });
        assert_eq!((a.gaps, a.requests_mirrored), (3, 5));
    }

    #[test]
    fn each_reason_counts_into_its_own_counter() {
        let mut c = Counters::default();
        AbortReason::Evicted.count(&mut c, 10);
        StopReason::MultipleHost.count(&mut c);
        assert_eq!(c.requests_aborted_evicted, 1);
        assert_eq!(c.bytes_aborted, 10);
        assert_eq!(c.stopped_multiple_host, 1);
        assert_eq!(c.iter().map(|(_, v)| v).sum::<u64>(), 12);
    }
}
