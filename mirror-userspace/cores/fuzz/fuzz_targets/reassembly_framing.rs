//! Reassembly and framing together, from arbitrary segments: nothing panics, events keep their
//! grammar, memory stays under its cap, and cutting a stream differently never changes the
//! requests that come out.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mirror_cores::flow::{FlowKey, Segment, TcpFlags};
use mirror_cores::http::FramerConfig;
use mirror_cores::pipeline::{Event, Pipeline, PipelineConfig};
use std::collections::HashMap;

const MAX_BUFFERED: usize = 256 * 1024;

fn config() -> PipelineConfig {
    PipelineConfig {
        max_flows: 3,
        max_buffered_bytes: MAX_BUFFERED,
        ooo_window: 2048,
        framer: FramerConfig {
            max_header_bytes: 512,
            ..FramerConfig::default()
        },
        ..PipelineConfig::default()
    }
}

fn key(i: u8) -> FlowKey {
    FlowKey {
        src: ([10, 0, 0, 1], 40_000 + u16::from(i % 4)).into(),
        dst: ([10, 0, 0, 2], 80).into(),
    }
}

/// Checks each flow's event grammar; returns the complete requests per flow.
#[derive(Default)]
struct Checker {
    open: HashMap<FlowKey, Vec<u8>>,
    complete: HashMap<FlowKey, Vec<Vec<u8>>>,
}

impl Checker {
    fn take(&mut self, e: Event) {
        match e {
            Event::RequestHead { flow, head } => {
                assert!(self.open.insert(flow, head.to_vec()).is_none(), "head in a request");
            }
            Event::RequestBody { flow, data } => {
                assert!(!data.is_empty());
                self.open.get_mut(&flow).expect("body outside a request").extend_from_slice(&data);
            }
            Event::RequestEnd { flow } => {
                let r = self.open.remove(&flow).expect("end outside a request");
                self.complete.entry(flow).or_default().push(r);
            }
            Event::RequestAbort { flow, .. } => {
                self.open.remove(&flow).expect("abort outside a request");
            }
            Event::FlowEnd { flow, .. } => {
                assert!(!self.open.contains_key(&flow), "flow ended inside a request");
            }
        }
    }
}

/// One flow's stream delivered in order, cut where `cuts` says; then FIN.
fn in_order(stream: &[u8], cuts: &[u8]) -> Vec<Vec<u8>> {
    let mut p = Pipeline::new(config()).expect("valid config");
    let mut c = Checker::default();
    let flow = key(0);
    let syn = Segment::new(flow, 7, TcpFlags(TcpFlags::SYN), b"");
    p.on_segment(0, &syn, &mut |e| c.take(e));
    let (mut at, mut i) = (0usize, 0usize);
    while at < stream.len() {
        let n = cuts.get(i).map_or(stream.len(), |&n| usize::from(n) + 1);
        let end = (at + n).min(stream.len());
        let seg = Segment::new(flow, 8 + at as u32, TcpFlags(TcpFlags::ACK), &stream[at..end]);
        p.on_segment(0, &seg, &mut |e| c.take(e));
        assert!(p.buffered_bytes() <= MAX_BUFFERED);
        at = end;
        i += 1;
    }
    c.complete.remove(&flow).unwrap_or_default()
}

fuzz_target!(|input: &[u8]| {
    // Layout: [n_ops] then n_ops * 6 control bytes, then the payload stream.
    let Some((&n, rest)) = input.split_first() else { return };
    let ctl_len = (usize::from(n) * 6).min(rest.len());
    let (ctl, stream) = rest.split_at(ctl_len);

    // 1. Split invariance: the same stream cut two ways frames to the same requests.
    let cuts: Vec<u8> = ctl.iter().map(|b| b % 97).collect();
    assert_eq!(in_order(stream, &cuts), in_order(stream, &[]));

    // 2. Arbitrary segments on several flows: no panic, grammar holds, memory bounded.
    let mut p = Pipeline::new(config()).expect("valid config");
    let mut c = Checker::default();
    let mut now = 0u64;
    for op in ctl.chunks_exact(6) {
        let flow = key(op[1]);
        let seq = u32::from(u16::from_le_bytes([op[2], op[3]]));
        let start = usize::from(op[4]) * 7 % (stream.len() + 1);
        let end = (start + usize::from(op[5])).min(stream.len());
        let payload = &stream[start..end];
        let flags = match op[0] % 8 {
            0 => TcpFlags::SYN,
            1 => TcpFlags::FIN | TcpFlags::ACK,
            2 => TcpFlags::RST,
            3 => {
                now += u64::from(op[5]) * 50_000_000;
                p.expire(now, &mut |e| c.take(e));
                continue;
            }
            _ => TcpFlags::ACK,
        };
        let seg = Segment::new(flow, seq, TcpFlags(flags), payload);
        p.on_segment(now, &seg, &mut |e| c.take(e));
        assert!(p.buffered_bytes() <= MAX_BUFFERED);
        assert!(p.flow_count() <= 3);
    }
    p.expire(u64::MAX, &mut |e| c.take(e));
    assert_eq!(p.flow_count(), 0);
    assert_eq!(p.buffered_bytes(), 0);
});
