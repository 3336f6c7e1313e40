//! v1's side of each connection (header-only segments, server to client): the handshake that
//! creates a flow, the acknowledgements that release client bytes to the framer, the window
//! that bounds them, and v1's RSTs.

use super::handshakes::SynAck;
use super::{Admission, Event, Pipeline, V1View};
use crate::flow::{FlowKey, Segment};
use crate::http::Framer;
use crate::outcome::{AbortReason, EndReason};
use crate::reassembly::{Reassembler, MAX_WINDOW};

/// Window scale assumed for a flow joined mid-stream, whose SYN-ACK was not seen: the largest
/// RFC 7323 allows, so that v1's real window is never underestimated (the out-of-order window
/// still bounds memory).
const JOINED_SCALE: u8 = 14;

impl Pipeline {
    /// Takes one captured v1-to-client segment seen at `now_ns` (`seg.flow` runs server to
    /// client; the flow it belongs to is the reverse). Only its header matters: sequence,
    /// acknowledgement, window, window scale and flags.
    pub fn on_server_segment(
        &mut self,
        now_ns: u64,
        seg: &Segment<'_>,
        emit: &mut impl FnMut(Event),
    ) {
        if self.config.admission == Admission::ClientOnly {
            self.counters.server_segments_ignored += 1;
            return;
        }
        let key = FlowKey {
            src: seg.flow.dst,
            dst: seg.flow.src,
        };
        let f = seg.flags;
        if f.syn() {
            if f.ack() && !f.rst() {
                self.syn_ack(now_ns, key, seg);
            }
            return;
        }
        if f.rst() {
            self.handshakes.take(&key);
            self.server_rst(key, seg.seq, emit);
            return;
        }
        if !f.ack() {
            return;
        }
        if let Some(h) = self.handshakes.get(&key) {
            let after_syn_ack = seg.seq.wrapping_sub(h.server_isn.wrapping_add(1)) < MAX_WINDOW
                && seg.ack.wrapping_sub(h.client_next) < MAX_WINDOW;
            if !after_syn_ack {
                return; // a stray segment of an older connection on the same addresses
            }
            // v1 acknowledging anything after its SYN-ACK means the handshake completed.
            self.establish(now_ns, key, emit);
        }
        match self.flows.get(&key).map(|fl| fl.active.is_some()) {
            Some(true) => {}
            Some(false) => return,
            None if f.fin() => return,
            None => self.join(now_ns, key, seg, emit),
        }
        self.touch(now_ns, key);
        self.on_ack(now_ns, key, seg, emit);
        self.enforce_memory_caps(key, emit);
    }

    /// v1 answered a SYN: remember the handshake (not a flow: the client must complete it).
    fn syn_ack(&mut self, now_ns: u64, key: FlowKey, seg: &Segment<'_>) {
        let client_isn = seg.ack.wrapping_sub(1);
        if self
            .flows
            .get(&key)
            .is_some_and(|fl| fl.isn == Some(client_isn))
        {
            return; // a retransmitted SYN-ACK, of a live or an ended flow
        }
        self.counters.handshakes_seen += 1;
        let syn_ack = SynAck {
            client_next: seg.ack,
            server_isn: seg.seq,
            window: seg.window,
            scale: seg.window_scale.unwrap_or(0).min(JOINED_SCALE),
        };
        let evicted = self.handshakes.insert(
            now_ns,
            key,
            syn_ack,
            self.config.max_handshakes,
            self.config.max_handshakes_per_source,
        );
        self.counters.handshakes_evicted += evicted.source + evicted.table_full;
        self.counters.handshakes_evicted_source += evicted.source;
    }

    /// The handshake of `key` completed: its flow starts (replacing any older flow on the same
    /// addresses), at the request boundary, gated by v1's acknowledgements.
    pub(super) fn establish(&mut self, now_ns: u64, key: FlowKey, emit: &mut impl FnMut(Event)) {
        let Some(h) = self.handshakes.take(&key) else {
            return;
        };
        if let Some(old) = self.flows.get(&key) {
            if old.active.is_some() {
                self.counters.flows_superseded += 1;
            }
            self.finish(key, AbortReason::Closed, EndReason::Superseded, emit);
            self.remove(&key);
        }
        self.counters.flows_started += 1;
        let v1 = V1View {
            acked: h.client_next,
            // The SYN-ACK's own window is never scaled (RFC 7323 2.2).
            right_edge: h.client_next.wrapping_add(u32::from(h.window)),
            scale: h.scale,
            server_seq: h.server_isn.wrapping_add(1),
        };
        let reasm = Reassembler::gated(h.client_next, self.config.ooo_window);
        let isn = Some(h.client_next.wrapping_sub(1));
        self.insert(now_ns, key, isn, reasm, Framer::new(), Some(v1), emit);
    }

    /// A connection v1 acknowledges but whose handshake was not seen: adopted from v1's
    /// acknowledgement on, looking for the next request line.
    fn join(&mut self, now_ns: u64, key: FlowKey, seg: &Segment<'_>, emit: &mut impl FnMut(Event)) {
        self.counters.midstream_joins += 1;
        let v1 = V1View {
            acked: seg.ack,
            right_edge: seg.ack,
            scale: JOINED_SCALE,
            server_seq: seg.seq,
        };
        let reasm = Reassembler::gated(seg.ack, self.config.ooo_window);
        self.insert(
            now_ns,
            key,
            None,
            reasm,
            Framer::resyncing(),
            Some(v1),
            emit,
        );
    }

    /// v1's acknowledgement and window: release what it accepted, widen what it allows.
    fn on_ack(
        &mut self,
        now_ns: u64,
        key: FlowKey,
        seg: &Segment<'_>,
        emit: &mut impl FnMut(Event),
    ) {
        let Some(a) = self.active(&key) else {
            return;
        };
        let Some(v1) = a.v1.as_mut() else {
            return;
        };
        if seg.ack.wrapping_sub(v1.acked) as i32 > 0 {
            v1.acked = seg.ack;
        }
        let edge = seg.ack.wrapping_add(u32::from(seg.window) << v1.scale);
        if edge.wrapping_sub(v1.right_edge) as i32 > 0 {
            v1.right_edge = edge;
        }
        if seg.seq.wrapping_sub(v1.server_seq) as i32 > 0 {
            v1.server_seq = seg.seq;
        }
        let acked = v1.acked;
        self.skip_hole(now_ns, key, emit);
        if let Some(((), stopped)) = self.drive(key, emit, |r, out| r.release_to(acked, out)) {
            self.settle(now_ns, key, stopped, emit);
        }
    }

    /// v1's RST ends the flow if it lies within v1's possible send window (at or after the
    /// highest sequence number seen from v1, by less than the largest window); bytes v1 never
    /// acknowledged are discarded with it.
    fn server_rst(&mut self, key: FlowKey, seq: u32, emit: &mut impl FnMut(Event)) {
        let Some(a) = self.active(&key) else {
            return;
        };
        let in_window = a.v1.is_some_and(|v| {
            let off = seq.wrapping_sub(v.server_seq);
            off < MAX_WINDOW
        });
        if in_window {
            self.counters.flows_ended_rst += 1;
            self.finish(key, AbortReason::Closed, EndReason::Rst, emit);
        } else {
            self.counters.rst_ignored += 1;
        }
    }
}
