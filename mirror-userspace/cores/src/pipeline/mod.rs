//! The glue between capture and relay: one flow table that turns decoded segments into
//! per-flow request events (reassembly, then framing), with every global cap enforced here.
//!
//! Usage, from the capture loop (`emit` forwards each event to the relay):
//!
//! ```
//! use mirror_cores::flow::{FlowKey, Segment, TcpFlags};
//! use mirror_cores::pipeline::{Event, Pipeline, PipelineConfig};
//!
//! let mut p = Pipeline::new(PipelineConfig::default()).unwrap();
//! let flow = FlowKey { src: "10.0.0.1:40000".parse().unwrap(), dst: "10.0.0.2:80".parse().unwrap() };
//! let mut events = Vec::new();
//! let syn = Segment::new(flow, 99, TcpFlags(TcpFlags::SYN), b"");
//! p.on_segment(0, &syn, &mut |e| events.push(e));
//! let req = Segment::new(flow, 100, TcpFlags(TcpFlags::ACK), b"GET / HTTP/1.1\r\nHost: api\r\n\r\n");
//! p.on_segment(1, &req, &mut |e| events.push(e));
//! p.expire(2, &mut |e| events.push(e)); // call periodically, e.g. every second
//! assert!(matches!(&events[..], [Event::RequestHead { .. }, Event::RequestEnd { .. }]));
//! ```

mod config;
mod lru;

pub use config::{ConfigError, PipelineConfig};

use crate::flow::{FlowKey, Segment};
use crate::http::{line_start, Env, FrameEvent, Framer, LineStart};
use crate::outcome::{AbortReason, Counters, EndReason, StopReason};
use crate::reassembly::{Delivery, Reassembler};
use crate::sampling::Sampler;
use bytes::Bytes;
use lru::Lru;
use std::collections::HashMap;

/// What the relay is told, always for one flow. Per flow, requests come as
/// `RequestHead (RequestBody)* (RequestEnd | RequestAbort)`, one after another, and
/// `FlowEnd` comes last and at most once (a flow that starts again later is a new flow).
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
}

/// Per-flow state that exists only while the flow is mirrored.
#[derive(Debug)]
struct Active {
    reasm: Reassembler,
    framer: Framer,
    /// Sequence number of the FIN, once seen: the flow ends when the stream reaches it.
    fin_at: Option<u32>,
    /// When the reassembler started holding data behind an unfilled hole.
    hole_since_ns: Option<u64>,
}

#[derive(Debug)]
struct FlowEntry {
    /// `None`: ended, or no longer mirrored. Kept as a tombstone until `closed_linger_ns`
    /// so that its late segments are ignored rather than joined mid-stream.
    active: Option<Box<Active>>,
    /// The SYN's sequence number, to tell a retransmitted SYN from a new connection.
    isn: Option<u32>,
    last_seen_ns: u64,
    /// Latest recency stamp (see [`Lru`]).
    stamp: u64,
    /// Buffer bytes this flow pins, as last accounted into `Pipeline::buffered`.
    memory: usize,
}

/// The flow table and everything shared by its flows. Not thread-safe by design: one per
/// capture worker.
#[derive(Debug)]
pub struct Pipeline {
    config: PipelineConfig,
    flows: HashMap<FlowKey, FlowEntry>,
    lru: Lru,
    sampler: Sampler,
    counters: Counters,
    /// Sum of `FlowEntry::memory`.
    buffered: usize,
}

impl Pipeline {
    pub fn new(config: PipelineConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let sampler = Sampler::new(config.sample_percent, config.sample_seed)?;
        Ok(Self {
            config,
            flows: HashMap::new(),
            lru: Lru::default(),
            sampler,
            counters: Counters::default(),
            buffered: 0,
        })
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Flows tracked, tombstones included.
    pub fn flow_count(&self) -> usize {
        self.flows.len()
    }

    /// Bytes buffered by all flows.
    pub fn buffered_bytes(&self) -> usize {
        self.buffered
    }

    /// Takes one captured client-to-server segment seen at `now_ns`.
    pub fn on_segment(&mut self, now_ns: u64, seg: &Segment<'_>, emit: &mut impl FnMut(Event)) {
        let key = seg.flow;
        if seg.flags.rst() {
            if let Some(flow) = self.flows.get_mut(&key) {
                if flow.active.is_some() {
                    self.counters.flows_ended_rst += 1;
                }
                self.finish(key, AbortReason::Closed, EndReason::Rst, emit);
            }
            return;
        }
        let Some(data_seq) = self.admit(now_ns, seg, emit) else {
            return;
        };
        let stamp = self.lru.touch(key);
        let Some(flow) = self.flows.get_mut(&key) else {
            return;
        };
        flow.last_seen_ns = now_ns;
        flow.stamp = stamp;
        if flow.active.is_some() {
            self.feed(now_ns, key, data_seq, seg, emit);
        }
        self.enforce_memory_cap(emit);
        let flows = &self.flows;
        self.lru.compact(flows.len(), |k, s| {
            flows.get(k).is_some_and(|f| f.stamp == s)
        });
    }

    /// Ends flows idle past the timeout, forgets old tombstones and gives up on holes that
    /// stayed unfilled too long. Call it periodically with the current time.
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
    }

    /// Decides what a segment means for the flow table; returns the sequence number of its
    /// first payload byte if it is to be processed.
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
            self.insert(
                now_ns,
                key,
                Some(seg.seq),
                Reassembler::new(data_seq, self.config.ooo_window),
                Framer::new(),
                emit,
            );
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
        self.insert(now_ns, key, None, reasm, Framer::resyncing(), emit);
        Some(seg.seq)
    }

    fn insert(
        &mut self,
        now_ns: u64,
        key: FlowKey,
        isn: Option<u32>,
        reasm: Reassembler,
        framer: Framer,
        emit: &mut impl FnMut(Event),
    ) {
        while self.flows.len() >= self.config.max_flows {
            if !self.evict_oldest(true, emit) {
                break;
            }
        }
        let active = Active {
            reasm,
            framer,
            fin_at: None,
            hole_since_ns: None,
        };
        let flow = FlowEntry {
            active: Some(Box::new(active)),
            isn,
            last_seen_ns: now_ns,
            stamp: 0,
            memory: 0,
        };
        self.flows.insert(key, flow);
    }

    /// Pushes the segment through reassembly and framing, then applies FIN and stop.
    fn feed(
        &mut self,
        now_ns: u64,
        key: FlowKey,
        data_seq: u32,
        seg: &Segment<'_>,
        emit: &mut impl FnMut(Event),
    ) {
        self.skip_hole(now_ns, key, emit);
        let Self {
            flows,
            config,
            sampler,
            counters,
            ..
        } = self;
        let Some(a) = flows.get_mut(&key).and_then(|f| f.active.as_deref_mut()) else {
            return;
        };
        let mut env = Env {
            config: &config.framer,
            sampler,
            counters,
        };
        let mut stopped = None;
        let Active { reasm, framer, .. } = a;
        let pushed = reasm.push(data_seq, seg.payload, &mut |d| {
            deliver(framer, d, key, &mut env, &mut stopped, emit);
        });
        match pushed {
            Ok(p) => counters.duplicate_bytes += u64::from(p.duplicate),
            Err(_) => counters.segments_dropped_no_slot += 1,
        }
        if seg.flags.fin() && !seg.flags.syn() {
            a.fin_at = Some(data_seq.wrapping_add(seg.payload.len() as u32));
        }
        a.hole_since_ns = match (a.reasm.has_held(), a.hole_since_ns) {
            (false, _) => None,
            (true, since) => Some(since.unwrap_or(now_ns)),
        };
        let fin_reached = a
            .fin_at
            .is_some_and(|f| f.wrapping_sub(a.reasm.next_seq()) as i32 <= 0);
        if let Some(reason) = stopped {
            self.stop(key, reason, emit);
        } else if fin_reached {
            self.counters.flows_ended_fin += 1;
            self.finish(key, AbortReason::Closed, EndReason::Fin, emit);
        } else {
            self.account(&key);
        }
    }

    /// Gives up on the flow's front hole if it stayed unfilled past the hole timeout.
    fn skip_hole(&mut self, now_ns: u64, key: FlowKey, emit: &mut impl FnMut(Event)) {
        let Self {
            flows,
            config,
            sampler,
            counters,
            ..
        } = self;
        let Some(a) = flows.get_mut(&key).and_then(|f| f.active.as_deref_mut()) else {
            return;
        };
        if !hole_expired(config, a, now_ns) {
            return;
        }
        if let Some(reason) = skip_front_hole(a, key, config, sampler, counters, emit) {
            self.stop(key, reason, emit);
        } else {
            self.account(&key);
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
            ..
        } = self;
        let Some(flow) = flows.get_mut(&key) else {
            return;
        };
        let Some(mut a) = flow.active.take() else {
            return;
        };
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
        flow.memory = 0;
    }

    fn remove(&mut self, key: &FlowKey) {
        if let Some(flow) = self.flows.remove(key) {
            self.buffered -= flow.memory;
        }
    }

    /// Re-reads a flow's buffer use into the global total.
    fn account(&mut self, key: &FlowKey) {
        if let Some(flow) = self.flows.get_mut(key) {
            let now = flow
                .active
                .as_ref()
                .map_or(0, |a| a.reasm.memory() + a.framer.memory());
            self.buffered = self.buffered - flow.memory + now;
            flow.memory = now;
        }
    }

    fn enforce_memory_cap(&mut self, emit: &mut impl FnMut(Event)) {
        while self.buffered > self.config.max_buffered_bytes {
            if !self.evict_oldest(false, emit) {
                break;
            }
        }
    }

    /// Evicts the least recently active flow. Returns false if there was none.
    fn evict_oldest(&mut self, table_full: bool, emit: &mut impl FnMut(Event)) -> bool {
        let flows = &self.flows;
        let Some(key) = self
            .lru
            .pop_oldest(|k, s| flows.get(k).is_some_and(|f| f.stamp == s))
        else {
            return false;
        };
        if self.flows.get(&key).is_some_and(|f| f.active.is_some()) {
            if table_full {
                self.counters.flows_evicted_table_full += 1;
            } else {
                self.counters.flows_evicted_memory += 1;
            }
            self.finish(key, AbortReason::Evicted, EndReason::Evicted, emit);
        }
        // Evicted flows leave no tombstone: their next request line joins them afresh.
        self.remove(&key);
        true
    }
}

/// Whether `a` has held data behind a hole for at least the hole timeout.
fn hole_expired(config: &PipelineConfig, a: &Active, now_ns: u64) -> bool {
    a.hole_since_ns
        .is_some_and(|t| now_ns.saturating_sub(t) >= config.hole_timeout_ns)
}

/// Declares the hole in front of held data lost and frames what follows it. Returns a stop
/// reason if framing stopped.
fn skip_front_hole(
    a: &mut Active,
    key: FlowKey,
    config: &PipelineConfig,
    sampler: &mut Sampler,
    counters: &mut Counters,
    emit: &mut impl FnMut(Event),
) -> Option<StopReason> {
    let mut env = Env {
        config: &config.framer,
        sampler,
        counters,
    };
    let mut stopped = None;
    let Active { reasm, framer, .. } = a;
    reasm.skip_front_hole(&mut |d| deliver(framer, d, key, &mut env, &mut stopped, emit));
    a.hole_since_ns = None;
    stopped
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
        FrameEvent::Stopped(_) => return None,
    })
}

#[cfg(test)]
mod tests;
