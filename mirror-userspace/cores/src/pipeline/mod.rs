//! The glue between capture and relay: one flow table that turns decoded segments into
//! per-flow request events (reassembly, then framing), with every cap enforced here, per
//! source address as well as globally.
//!
//! Usage, from the capture loop (`emit` forwards each event to the relay). By default
//! ([`Admission::AckedByV1`]) v1's side is followed too: a flow starts at v1's SYN-ACK and
//! client bytes are framed once v1 acknowledges them.
//!
//! ```
//! use mirror_cores::flow::{FlowKey, Segment, TcpFlags};
//! use mirror_cores::pipeline::{Event, Pipeline, PipelineConfig};
//!
//! let mut p = Pipeline::new(PipelineConfig::default()).unwrap();
//! let client = FlowKey { src: "10.0.0.1:40000".parse().unwrap(), dst: "10.0.0.2:80".parse().unwrap() };
//! let server = FlowKey { src: client.dst, dst: client.src };
//! let mut events = Vec::new();
//! let get = b"GET / HTTP/1.1\r\nHost: api\r\n\r\n";
//! let seg = |flow, seq, ack, flags, payload| Segment {
//!     ack, window: 65535, ..Segment::new(flow, seq, TcpFlags(flags), payload)
//! };
//! p.on_segment(0, &seg(client, 99, 0, TcpFlags::SYN, b""), &mut |e| events.push(e));
//! p.on_server_segment(0, &seg(server, 5000, 100, TcpFlags::SYN | TcpFlags::ACK, b""), &mut |e| events.push(e));
//! p.on_segment(1, &seg(client, 100, 5001, TcpFlags::ACK, get), &mut |e| events.push(e));
//! assert!(events.is_empty()); // v1 has not acknowledged the request yet
//! p.on_server_segment(2, &seg(server, 5001, 100 + get.len() as u32, TcpFlags::ACK, b""), &mut |e| events.push(e));
//! p.expire(3, &mut |e| events.push(e)); // call periodically, e.g. every second
//! assert!(matches!(&events[..], [Event::RequestHead { .. }, Event::RequestEnd { .. }]));
//! ```

mod config;
mod handshakes;
mod lru;
mod server;
mod sources;
mod streams;

pub use config::{Admission, ConfigError, PipelineConfig};
pub use sources::{SourceTally, MAX_TALLIES};
pub use streams::StreamTarget;

use crate::flow::{FlowKey, Segment};
use crate::http::{line_start, Env, FrameEvent, Framer, LineStart};
use crate::outcome::{AbortReason, Counters, EndReason, StopReason};
use crate::reassembly::{Delivery, Reassembler};
use crate::sampling::Sampler;
use bytes::Bytes;
use handshakes::Handshakes;
use sources::Sources;
use std::collections::HashMap;

/// What the relay is told, always for one flow. Per flow, requests come as
/// `RequestHead (RequestBody)* (RequestEnd | RequestAbort)`, one after another, and
/// `FlowEnd` comes last and at most once (a flow that starts again later is a new flow).
/// A raw TCP or h2c flow (see [`Pipeline::set_stream_targets`]) has `StreamData*` instead of
/// requests; an HTTP/1.1 flow that v1 switched to h2c has `StreamData*` after its requests,
/// from the upgrading request on (for the h2c core: see [`crate::http::FrameEvent::H2c`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Open (or reuse) the shadow connection of `flow` and send this complete head.
    RequestHead { flow: FlowKey, head: Bytes },
    /// Send these body bytes (wire form: chunked framing kept).
    RequestBody { flow: FlowKey, data: Bytes },
    /// The request is complete.
    RequestEnd { flow: FlowKey },
    /// The request will not be completed: reset the shadow connection, so v2 never takes a
    /// truncated request for a whole one. The next request opens a new connection.
    RequestAbort { flow: FlowKey, reason: AbortReason },
    /// The flow is over for the relay: close its shadow connection.
    FlowEnd { flow: FlowKey, reason: EndReason },
    /// Raw TCP mode, h2c, or an upgraded flow: the next bytes of the client's stream, in
    /// order, acknowledged by v1.
    StreamData { flow: FlowKey, data: Bytes },
}

/// What v1's side has told us about a flow (ack-gated admission only).
#[derive(Clone, Copy, Debug)]
struct V1View {
    /// Highest acknowledgement: client bytes before it were accepted by v1.
    acked: u32,
    /// Highest right edge of v1's receive window (`ack + window << scale`).
    right_edge: u32,
    /// Window scale v1 applies (the SYN-ACK's; the largest, 14, for a flow joined mid-stream).
    scale: u8,
    /// Highest sequence number seen from v1 (a lower bound of its next one).
    server_seq: u32,
}

/// Per-flow state that exists only while the flow is mirrored.
#[derive(Debug)]
struct Active {
    reasm: Reassembler,
    framer: Framer,
    /// Sequence number of the FIN, once seen: the flow ends when the stream reaches it.
    fin_at: Option<u32>,
    /// When a hole that may be given up on appeared (see `Reassembler::hole_pending`).
    hole_since_ns: Option<u64>,
    /// Client-only: since when segments arrive only beyond the window.
    far_since_ns: Option<u64>,
    v1: Option<V1View>,
    /// Raw TCP mode: deliveries go to the relay as they are, not through the framer.
    stream: bool,
}

#[derive(Debug)]
struct FlowEntry {
    /// `None`: ended, or no longer mirrored. Kept as a tombstone until `closed_linger_ns`
    /// so that its late segments are ignored rather than joined mid-stream.
    active: Option<Box<Active>>,
    /// The client's SYN sequence number, to tell a retransmitted SYN (or SYN-ACK) from a new
    /// connection.
    isn: Option<u32>,
    last_seen_ns: u64,
    /// Latest recency stamp in its source's queue (see [`lru::Lru`]).
    stamp: u64,
    /// Buffer bytes this flow pins, as last accounted into the totals.
    memory: usize,
}

/// Which cap made an eviction.
#[derive(Clone, Copy, Debug)]
enum Cap {
    TableFull,
    Memory,
    SourceFlows,
    SourceMemory,
}

/// The flow table and everything shared by its flows. Not thread-safe by design: one per
/// capture worker.
#[derive(Debug)]
pub struct Pipeline {
    config: PipelineConfig,
    flows: HashMap<FlowKey, FlowEntry>,
    sources: Sources,
    handshakes: Handshakes,
    sampler: Sampler,
    counters: Counters,
    /// Sum of `FlowEntry::memory`.
    buffered: usize,
    /// Destinations relayed in raw TCP mode.
    stream_targets: Vec<StreamTarget>,
}

impl Pipeline {
    pub fn new(config: PipelineConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let sampler = Sampler::new(config.sample_percent, config.sample_seed)?;
        Ok(Self {
            config,
            flows: HashMap::new(),
            sources: Sources::default(),
            handshakes: Handshakes::default(),
            sampler,
            counters: Counters::default(),
            buffered: 0,
            stream_targets: Vec::new(),
        })
    }

    /// Connections to these destinations that start from now on are relayed in raw TCP
    /// mode; flows already tracked keep their mode.
    pub fn set_stream_targets(&mut self, targets: Vec<StreamTarget>) {
        self.stream_targets = targets;
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Flows tracked, tombstones included.
    pub fn flow_count(&self) -> usize {
        self.flows.len()
    }

    /// Handshakes v1 answered that the client has not completed yet.
    pub fn pending_handshakes(&self) -> usize {
        self.handshakes.len()
    }

    /// Bytes buffered by all flows.
    pub fn buffered_bytes(&self) -> usize {
        self.buffered
    }

    /// Up to `n` (at most [`MAX_TALLIES`]) source addresses worth a look: those holding the
    /// most flows or bytes and those that lost the most flows to eviction, worst first.
    /// Costs O(sources) per call: for a status line, not per packet.
    pub fn source_tallies(&self, n: usize) -> Vec<SourceTally> {
        self.sources.tallies(n)
    }

    /// Takes one captured client-to-server segment seen at `now_ns`.
    pub fn on_segment(&mut self, now_ns: u64, seg: &Segment<'_>, emit: &mut impl FnMut(Event)) {
        match self.config.admission {
            Admission::ClientOnly => self.on_client_only(now_ns, seg, emit),
            Admission::AckedByV1 => self.on_client_gated(now_ns, seg, emit),
        }
    }

    /// Ends flows idle past the timeout, forgets old tombstones and pending handshakes, and
    /// gives up on holes that stayed unfilled too long. Call it periodically with the
    /// current time.
    pub fn expire(&mut self, now_ns: u64, emit: &mut impl FnMut(Event)) {
        let mut idle = Vec::new();
        let mut holes = Vec::new();
        for (key, flow) in &self.flows {
            let age = now_ns.saturating_sub(flow.last_seen_ns);
            match &flow.active {
                Some(_) if age >= self.config.idle_timeout_ns => idle.push(*key),
                None if age >= self.config.closed_linger_ns => idle.push(*key),
                Some(a) if hole_expired(&self.config, a, now_ns) => holes.push(*key),
                _ => {}
            }
        }
        for key in idle {
            if self.flows.get(&key).is_some_and(|f| f.active.is_some()) {
                self.counters.flows_expired += 1;
            }
            self.finish(key, AbortReason::Expired, EndReason::Expired, emit);
            self.remove(&key);
        }
        for key in holes {
            self.skip_hole(now_ns, key, emit);
        }
        self.counters.handshakes_expired += self
            .handshakes
            .expire(now_ns, self.config.handshake_timeout_ns);
    }

    /// Client-only admission: a SYN or a request line starts a flow, bytes are framed as soon
    /// as they are contiguous.
    fn on_client_only(&mut self, now_ns: u64, seg: &Segment<'_>, emit: &mut impl FnMut(Event)) {
        let key = seg.flow;
        if seg.flags.rst() {
            self.client_rst(key, seg.seq, emit);
            return;
        }
        let Some(data_seq) = self.admit(now_ns, seg, emit) else {
            return;
        };
        self.touch(now_ns, key);
        self.feed(now_ns, key, data_seq, seg, emit);
        self.enforce_memory_caps(key, emit);
    }

    /// Ack-gated admission, client side: only flows v1 accepted; bytes wait for v1's ACK.
    fn on_client_gated(&mut self, now_ns: u64, seg: &Segment<'_>, emit: &mut impl FnMut(Event)) {
        let key = seg.flow;
        let completes = !seg.flags.syn()
            && !seg.flags.rst()
            && seg.flags.ack()
            && self
                .handshakes
                .get(&key)
                .is_some_and(|h| seg.ack == h.server_isn.wrapping_add(1));
        if completes {
            self.establish(now_ns, key, emit);
        }
        let live = self.flows.get(&key).map(|f| f.active.is_some());
        match live {
            None => {
                if !seg.payload.is_empty() {
                    self.counters.segments_unaccepted += 1;
                    self.counters.bytes_unaccepted += seg.payload.len() as u64;
                }
                return;
            }
            // A tombstone, or a SYN on a live flow (v1's SYN-ACK decides what it starts).
            Some(false) => return,
            Some(true) if seg.flags.syn() => return,
            Some(true) => {}
        }
        if seg.flags.rst() {
            self.client_rst(key, seg.seq, emit);
            return;
        }
        self.touch(now_ns, key);
        self.feed(now_ns, key, seg.seq, seg, emit);
        self.enforce_memory_caps(key, emit);
    }

    /// A client RST ends the flow only at the exact next sequence number (RFC 5961 3.2): the
    /// next byte to frame, the end of what is held, or v1's acknowledgement.
    fn client_rst(&mut self, key: FlowKey, seq: u32, emit: &mut impl FnMut(Event)) {
        let Some(a) = self.flows.get(&key).and_then(|f| f.active.as_deref()) else {
            return;
        };
        let exact = seq == a.reasm.next_seq()
            || seq == a.reasm.end_seq()
            || a.v1.is_some_and(|v| v.acked == seq);
        if exact {
            self.counters.flows_ended_rst += 1;
            self.finish(key, AbortReason::Closed, EndReason::Rst, emit);
        } else {
            self.counters.rst_ignored += 1;
        }
    }

    /// Client-only: decides what a segment means for the flow table; returns the sequence
    /// number of its first payload byte if it is to be processed.
    fn admit(
        &mut self,
        now_ns: u64,
        seg: &Segment<'_>,
        emit: &mut impl FnMut(Event),
    ) -> Option<u32> {
        let key = seg.flow;
        if seg.flags.syn() {
            let data_seq = seg.seq.wrapping_add(1);
            match self.flows.get(&key) {
                Some(f) if f.isn == Some(seg.seq) => return Some(data_seq),
                Some(f) => {
                    if f.active.is_some() {
                        self.counters.flows_superseded += 1;
                    }
                    self.finish(key, AbortReason::Closed, EndReason::Superseded, emit);
                    self.remove(&key);
                }
                None => {}
            }
            self.counters.flows_started += 1;
            let reasm = Reassembler::new(data_seq, self.config.ooo_window);
            self.insert(now_ns, key, Some(seg.seq), reasm, Framer::new(), None, emit);
            return Some(data_seq);
        }
        if self.flows.contains_key(&key) {
            return Some(seg.seq);
        }
        if seg.payload.is_empty() {
            return None;
        }
        if line_start(seg.payload) != LineStart::Yes {
            self.counters.midstream_segments_skipped += 1;
            self.counters.midstream_bytes_skipped += seg.payload.len() as u64;
            return None;
        }
        self.counters.midstream_joins += 1;
        let reasm = Reassembler::new(seg.seq, self.config.ooo_window);
        self.insert(now_ns, key, None, reasm, Framer::resyncing(), None, emit);
        Some(seg.seq)
    }

    /// Starts tracking a flow, within the per-source and global flow caps. The source's own
    /// flows go first when it is at its share; under global pressure, the flows of the source
    /// holding the most.
    #[allow(clippy::too_many_arguments)]
    fn insert(
        &mut self,
        now_ns: u64,
        key: FlowKey,
        isn: Option<u32>,
        reasm: Reassembler,
        framer: Framer,
        v1: Option<V1View>,
        emit: &mut impl FnMut(Event),
    ) {
        let ip = key.src.ip();
        while self.sources.flows(ip) >= self.config.max_flows_per_source {
            if !self.evict_from(ip, Cap::SourceFlows, emit) {
                break;
            }
        }
        while self.flows.len() >= self.config.max_flows {
            let Some(victim) = self.sources.largest_by_flows() else {
                break;
            };
            if !self.evict_from(victim, Cap::TableFull, emit) {
                break;
            }
        }
        let stream = self.stream_targets.iter().any(|t| t.contains(key.dst));
        // A raw stream joined mid-stream (no handshake seen) would start v2's connection in
        // the middle of the protocol: keep only a tombstone.
        let joined_stream = stream && isn.is_none();
        if joined_stream {
            self.counters.stream_joins_skipped += 1;
        }
        let active = Active {
            reasm,
            framer,
            fin_at: None,
            hole_since_ns: None,
            far_since_ns: None,
            v1,
            stream,
        };
        let flow = FlowEntry {
            active: (!joined_stream).then(|| Box::new(active)),
            isn,
            last_seen_ns: now_ns,
            stamp: 0,
            memory: 0,
        };
        self.flows.insert(key, flow);
        self.sources.add_flow(ip);
        self.touch(now_ns, key);
    }

    /// Records activity on a flow (its source's recency order).
    fn touch(&mut self, now_ns: u64, key: FlowKey) {
        if !self.flows.contains_key(&key) {
            return;
        }
        let stamp = self.sources.touch(key);
        if let Some(flow) = self.flows.get_mut(&key) {
            flow.last_seen_ns = now_ns;
            flow.stamp = stamp;
        }
        let flows = &self.flows;
        self.sources.compact(key.src.ip(), |k, s| {
            flows.get(k).is_some_and(|f| f.stamp == s)
        });
    }

    /// Pushes a client segment through reassembly (and, once released, framing), then applies
    /// FIN and stop.
    fn feed(
        &mut self,
        now_ns: u64,
        key: FlowKey,
        data_seq: u32,
        seg: &Segment<'_>,
        emit: &mut impl FnMut(Event),
    ) {
        self.skip_hole(now_ns, key, emit);
        let window = self.config.ooo_window;
        let Some(a) = self.active(&key) else {
            return;
        };
        let next_before = a.reasm.next_seq();
        let mut payload = seg.payload;
        let mut beyond = 0usize;
        if let Some(v1) = a.v1 {
            // v1 drops what lies beyond the window it advertised; so do we.
            let room = (v1.right_edge.wrapping_sub(data_seq) as i32).max(0) as usize;
            if payload.len() > room {
                beyond = payload.len() - room;
                payload = &payload[..room];
            }
        }
        let fin = seg.flags.fin() && !seg.flags.syn();
        let fin_seq = data_seq.wrapping_add(seg.payload.len() as u32);
        let fin_in_window = {
            let off = fin_seq.wrapping_sub(next_before) as i32;
            let inside_v1 =
                a.v1.is_none_or(|v| fin_seq.wrapping_sub(v.right_edge) as i32 <= 0);
            (0..=window as i32).contains(&off) && inside_v1
        };
        let pushed = self.drive(key, emit, |r, out| r.push(data_seq, payload, out));
        let mut refused_whole = false;
        if let Some((pushed, stopped)) = pushed {
            match pushed {
                Ok(p) => {
                    self.counters.duplicate_bytes += u64::from(p.duplicate);
                    beyond += p.beyond_window as usize;
                    refused_whole =
                        !payload.is_empty() && p.beyond_window as usize == payload.len();
                }
                Err(_) => self.counters.segments_dropped_no_slot += 1,
            }
            if stopped.is_some() {
                self.settle(now_ns, key, stopped, emit);
                return;
            }
        }
        if beyond > 0 {
            self.counters.segments_beyond_window += 1;
            self.counters.bytes_beyond_window += beyond as u64;
        }
        if self.config.admission == Admission::ClientOnly && !payload.is_empty() {
            self.follow_far(now_ns, key, data_seq, payload, refused_whole, emit);
        }
        if fin {
            match self.active(&key) {
                Some(a) if fin_in_window => a.fin_at = Some(fin_seq),
                Some(_) => self.counters.fin_ignored += 1,
                None => {}
            }
        }
        self.settle(now_ns, key, None, emit);
    }

    /// Client-only: segments that only ever land beyond the window for a hole timeout mean
    /// the capture lost more than a window: move the stream to them. One far segment among
    /// genuine ones moves nothing.
    fn follow_far(
        &mut self,
        now_ns: u64,
        key: FlowKey,
        data_seq: u32,
        payload: &[u8],
        refused_whole: bool,
        emit: &mut impl FnMut(Event),
    ) {
        let timeout = self.config.hole_timeout_ns;
        let Some(a) = self.active(&key) else {
            return;
        };
        if !refused_whole {
            a.far_since_ns = None;
            return;
        }
        let since = *a.far_since_ns.get_or_insert(now_ns);
        if now_ns.saturating_sub(since) < timeout {
            return;
        }
        a.far_since_ns = None;
        self.counters.far_jumps += 1;
        let res = self.drive(key, emit, |r, out| {
            r.jump_to(data_seq, out);
            r.push(data_seq, payload, out)
        });
        if let Some((_, Some(stop))) = res {
            self.settle(now_ns, key, Some(stop), emit);
        }
    }

    /// Runs `op` on a live flow's reassembler with its deliveries framed into events. Returns
    /// `op`'s result and the stop reason if framing stopped.
    fn drive<R>(
        &mut self,
        key: FlowKey,
        emit: &mut impl FnMut(Event),
        op: impl FnOnce(&mut Reassembler, &mut dyn FnMut(Delivery<'_>)) -> R,
    ) -> Option<(R, Option<StopReason>)> {
        let Self {
            flows,
            config,
            sampler,
            counters,
            ..
        } = self;
        let a = flows.get_mut(&key)?.active.as_deref_mut()?;
        let mut env = Env {
            config: &config.framer,
            sampler,
            counters,
        };
        let mut stopped = None;
        let Active {
            reasm,
            framer,
            stream,
            ..
        } = a;
        let r = if *stream {
            op(reasm, &mut |d| {
                streams::deliver(d, key, env.counters, &mut stopped, emit)
            })
        } else {
            op(reasm, &mut |d| {
                deliver(framer, d, key, &mut env, &mut stopped, emit)
            })
        };
        Some((r, stopped))
    }

    /// After the stream moved: restarts or clears the hole timer, then stops, ends at the
    /// FIN, or re-accounts memory.
    fn settle(
        &mut self,
        now_ns: u64,
        key: FlowKey,
        stopped: Option<StopReason>,
        emit: &mut impl FnMut(Event),
    ) {
        let Some(a) = self.active(&key) else {
            return;
        };
        a.hole_since_ns = match (a.reasm.hole_pending(), a.hole_since_ns) {
            (false, _) => None,
            (true, since) => Some(since.unwrap_or(now_ns)),
        };
        // Gated, the FIN itself must be acknowledged by v1 too: a forged FIN ends nothing.
        let fin_reached = a.fin_at.is_some_and(|f| {
            f.wrapping_sub(a.reasm.next_seq()) as i32 <= 0
                && a.v1.is_none_or(|v| v.acked.wrapping_sub(f) as i32 > 0)
        });
        if let Some(reason) = stopped {
            self.stop(key, reason, emit);
        } else if fin_reached {
            self.counters.flows_ended_fin += 1;
            self.finish(key, AbortReason::Closed, EndReason::Fin, emit);
        } else {
            self.account(&key);
        }
    }

    fn active(&mut self, key: &FlowKey) -> Option<&mut Active> {
        self.flows.get_mut(key)?.active.as_deref_mut()
    }

    /// Gives up on the flow's front hole if it stayed unfilled past the hole timeout.
    fn skip_hole(&mut self, now_ns: u64, key: FlowKey, emit: &mut impl FnMut(Event)) {
        let expired = self
            .flows
            .get(&key)
            .and_then(|f| f.active.as_deref())
            .is_some_and(|a| hole_expired(&self.config, a, now_ns));
        if !expired {
            return;
        }
        let res = self.drive(key, emit, |r, out| r.skip_front_hole(out));
        if let Some(a) = self.active(&key) {
            a.hole_since_ns = None;
        }
        if let Some((_, stopped)) = res {
            self.settle(now_ns, key, stopped, emit);
        }
    }

    /// Mirroring stopped: tell the relay, keep a tombstone.
    fn stop(&mut self, key: FlowKey, reason: StopReason, emit: &mut impl FnMut(Event)) {
        self.finish(key, AbortReason::Invalid, EndReason::Stopped(reason), emit);
    }

    /// Ends an active flow for the relay (aborting a request in progress) and leaves a
    /// tombstone; does nothing to a tombstone.
    fn finish(
        &mut self,
        key: FlowKey,
        abort: AbortReason,
        reason: EndReason,
        emit: &mut impl FnMut(Event),
    ) {
        let Self {
            flows,
            config,
            sampler,
            counters,
            buffered,
            sources,
            ..
        } = self;
        let Some(flow) = flows.get_mut(&key) else {
            return;
        };
        let Some(mut a) = flow.active.take() else {
            return;
        };
        counters.held_bytes_discarded += a.reasm.held_bytes();
        let mut env = Env {
            config: &config.framer,
            sampler,
            counters,
        };
        a.framer.close(abort, &mut env, &mut |e| {
            if let Some(ev) = to_event(key, e) {
                emit(ev);
            }
        });
        emit(Event::FlowEnd { flow: key, reason });
        *buffered -= flow.memory;
        sources.change_bytes(key.src.ip(), flow.memory, 0);
        flow.memory = 0;
    }

    fn remove(&mut self, key: &FlowKey) {
        if let Some(flow) = self.flows.remove(key) {
            self.buffered -= flow.memory;
            let ip = key.src.ip();
            self.sources.change_bytes(ip, flow.memory, 0);
            self.sources.remove_flow(ip);
        }
    }

    /// Re-reads a flow's buffer use into the totals.
    fn account(&mut self, key: &FlowKey) {
        if let Some(flow) = self.flows.get_mut(key) {
            let now = flow
                .active
                .as_ref()
                .map_or(0, |a| a.reasm.memory() + a.framer.memory());
            self.buffered = self.buffered - flow.memory + now;
            self.sources.change_bytes(key.src.ip(), flow.memory, now);
            flow.memory = now;
        }
    }

    /// The flow's source over its byte share loses its own flows; over the global cap, the
    /// source buffering the most does.
    fn enforce_memory_caps(&mut self, key: FlowKey, emit: &mut impl FnMut(Event)) {
        let ip = key.src.ip();
        while self.sources.bytes(ip) > self.config.max_buffered_per_source {
            if !self.evict_from(ip, Cap::SourceMemory, emit) {
                break;
            }
        }
        while self.buffered > self.config.max_buffered_bytes {
            let Some(victim) = self.sources.largest_by_bytes() else {
                break;
            };
            if !self.evict_from(victim, Cap::Memory, emit) {
                break;
            }
        }
    }

    /// Evicts the least recently active flow of source `ip`. Returns false if it had none.
    fn evict_from(&mut self, ip: std::net::IpAddr, cap: Cap, emit: &mut impl FnMut(Event)) -> bool {
        let flows = &self.flows;
        let Some(key) = self
            .sources
            .pop_oldest(ip, |k, s| flows.get(k).is_some_and(|f| f.stamp == s))
        else {
            return false;
        };
        if self.flows.get(&key).is_some_and(|f| f.active.is_some()) {
            let c = &mut self.counters;
            match cap {
                Cap::TableFull => c.flows_evicted_table_full += 1,
                Cap::Memory => c.flows_evicted_memory += 1,
                Cap::SourceFlows => c.flows_evicted_source_flows += 1,
                Cap::SourceMemory => c.flows_evicted_source_memory += 1,
            }
            self.sources.record_eviction(ip);
            self.finish(key, AbortReason::Evicted, EndReason::Evicted, emit);
        }
        // Evicted flows leave no tombstone: they may be joined again mid-stream.
        self.remove(&key);
        true
    }
}

/// Whether `a` has had a hole it may give up on for at least the hole timeout.
fn hole_expired(config: &PipelineConfig, a: &Active, now_ns: u64) -> bool {
    a.hole_since_ns
        .is_some_and(|t| now_ns.saturating_sub(t) >= config.hole_timeout_ns)
}

/// Hands one reassembler delivery to the framer, turning its events into relay events.
fn deliver(
    framer: &mut Framer,
    d: Delivery<'_>,
    key: FlowKey,
    env: &mut Env<'_>,
    stopped: &mut Option<StopReason>,
    emit: &mut impl FnMut(Event),
) {
    let mut on_frame = |e: FrameEvent| match e {
        FrameEvent::Stopped(r) => *stopped = Some(r),
        e => {
            if let Some(ev) = to_event(key, e) {
                emit(ev);
            }
        }
    };
    match d {
        Delivery::Data(bytes) => framer.data(bytes, env, &mut on_frame),
        Delivery::Gap(n) => framer.gap(n, env, &mut on_frame),
    }
}

/// The relay event for a framer event; `Stopped` becomes a `FlowEnd` elsewhere.
fn to_event(flow: FlowKey, e: FrameEvent) -> Option<Event> {
    Some(match e {
        FrameEvent::Head(head) => Event::RequestHead { flow, head },
        FrameEvent::Body(data) => Event::RequestBody { flow, data },
        FrameEvent::End => Event::RequestEnd { flow },
        FrameEvent::Abort(reason) => Event::RequestAbort { flow, reason },
        // The h2c core in the relay takes it from here, the upgrading request first.
        FrameEvent::H2c(data) => Event::StreamData { flow, data },
        FrameEvent::Stopped(_) => return None,
    })
}

#[cfg(test)]
mod tests;
