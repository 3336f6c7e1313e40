//! Reassembly and framing together, from arbitrary segments of both directions, with the
//! production limits (4 MiB out-of-order window, 64 KiB heads): nothing panics, events keep
//! their grammar, memory and flows stay under their caps (global and per source), cutting a
//! stream differently never changes the requests that come out, and v1's acknowledgements
//! release the same requests as client-only framing. `run.sh` gives every input a time limit,
//! so an input that costs more than linear time fails the run.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mirror_cores::flow::{FlowKey, Segment, TcpFlags};
use mirror_cores::http::FramerConfig;
use mirror_cores::pipeline::{Admission, Event, Pipeline, PipelineConfig};
use std::collections::HashMap;

const MAX_BUFFERED: usize = 1 << 20;
const MAX_FLOWS: usize = 3;

fn config(admission: Admission) -> PipelineConfig {
    PipelineConfig {
        max_flows: MAX_FLOWS,
        max_flows_per_source: 2,
        max_buffered_bytes: MAX_BUFFERED,
        max_buffered_per_source: MAX_BUFFERED / 2,
        max_handshakes: 4,
        ooo_window: 4 << 20,
        framer: FramerConfig {
            max_header_bytes: 64 * 1024,
            ..FramerConfig::default()
        },
        admission,
        ..PipelineConfig::default()
    }
}

/// Client flows from two source addresses, so per-source shares are exercised.
fn key(i: u8) -> FlowKey {
    FlowKey {
        src: ([10, 0, 0, 1 + (i >> 7)], 40_000 + u16::from(i % 4)).into(),
        dst: ([10, 0, 0, 2], 80).into(),
    }
}

fn reverse(k: FlowKey) -> FlowKey {
    FlowKey {
        src: k.dst,
        dst: k.src,
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
                assert!(
                    self.open.insert(flow, head.to_vec()).is_none(),
                    "head in a request"
                );
            }
            Event::RequestBody { flow, data } => {
                assert!(!data.is_empty());
                self.open
                    .get_mut(&flow)
                    .expect("body outside a request")
                    .extend_from_slice(&data);
            }
            Event::RequestEnd { flow } => {
                let r = self.open.remove(&flow).expect("end outside a request");
                self.complete.entry(flow).or_default().push(r);
            }
            Event::RequestAbort { flow, .. } => {
                self.open.remove(&flow).expect("abort outside a request");
            }
            Event::StreamData { .. } => panic!("stream data without stream targets"),
            Event::FlowEnd { flow, .. } => {
                assert!(
                    !self.open.contains_key(&flow),
                    "flow ended inside a request"
                );
            }
        }
    }
}

/// One flow's stream delivered in order, cut where `cuts` says; then FIN. Gated: after a
/// handshake, v1 acknowledges each piece once it is captured.
fn in_order(stream: &[u8], cuts: &[u8], admission: Admission) -> Vec<Vec<u8>> {
    let mut p = Pipeline::new(config(admission)).expect("valid config");
    let mut c = Checker::default();
    let flow = key(0);
    let syn = Segment::new(flow, 7, TcpFlags(TcpFlags::SYN), b"");
    p.on_segment(0, &syn, &mut |e| c.take(e));
    let server = |ack: u32, flags: u8| Segment {
        ack,
        window: u16::MAX,
        window_scale: Some(7),
        ..Segment::new(reverse(flow), 900, TcpFlags(flags), b"")
    };
    let ack_of = |seq: u32| Segment {
        ack: 901,
        ..Segment::new(flow, seq, TcpFlags(TcpFlags::ACK), b"")
    };
    if admission == Admission::AckedByV1 {
        p.on_server_segment(0, &server(8, TcpFlags::SYN | TcpFlags::ACK), &mut |e| {
            c.take(e)
        });
        p.on_segment(0, &ack_of(8), &mut |e| c.take(e));
    }
    let (mut at, mut i) = (0usize, 0usize);
    while at < stream.len() {
        let n = cuts.get(i).map_or(stream.len(), |&n| usize::from(n) + 1);
        let end = (at + n).min(stream.len());
        let seg = Segment {
            payload: &stream[at..end],
            ..ack_of(8 + at as u32)
        };
        p.on_segment(0, &seg, &mut |e| c.take(e));
        if admission == Admission::AckedByV1 {
            let ack = server(8 + end as u32, TcpFlags::ACK);
            p.on_server_segment(0, &ack, &mut |e| c.take(e));
        }
        assert!(p.buffered_bytes() <= MAX_BUFFERED);
        at = end;
        i += 1;
    }
    c.complete.remove(&flow).unwrap_or_default()
}

/// Arbitrary segments of both directions on several flows: no panic, grammar holds, memory
/// and flows bounded, and a final expiry leaves nothing behind.
fn arbitrary(ctl: &[u8], stream: &[u8], admission: Admission) {
    let mut p = Pipeline::new(config(admission)).expect("valid config");
    let mut c = Checker::default();
    let mut now = 0u64;
    for op in ctl.chunks_exact(6) {
        let flow = key(op[1]);
        let seq = u32::from(u16::from_le_bytes([op[2], op[3]]));
        let start = usize::from(op[4]) * 7 % (stream.len() + 1);
        let end = (start + usize::from(op[5]) * 3).min(stream.len());
        let payload = &stream[start..end];
        // v1's side: acknowledges `seq`, from its own sequence space.
        let server = |flags: u8| Segment {
            ack: seq,
            window: u16::from(op[5]) << 8,
            window_scale: Some(op[5] % 16),
            ..Segment::new(
                reverse(flow),
                5000 + u32::from(op[4]) * 1000,
                TcpFlags(flags),
                b"",
            )
        };
        let flags = match op[0] % 11 {
            0 => TcpFlags::SYN,
            1 => TcpFlags::FIN | TcpFlags::ACK,
            2 => TcpFlags::RST,
            3 => {
                now += u64::from(op[5]) * 50_000_000;
                p.expire(now, &mut |e| c.take(e));
                continue;
            }
            4 => {
                p.on_server_segment(now, &server(TcpFlags::SYN | TcpFlags::ACK), &mut |e| {
                    c.take(e)
                });
                continue;
            }
            5 | 6 => {
                p.on_server_segment(now, &server(TcpFlags::ACK), &mut |e| c.take(e));
                continue;
            }
            7 => {
                p.on_server_segment(now, &server(TcpFlags::RST), &mut |e| c.take(e));
                continue;
            }
            _ => TcpFlags::ACK,
        };
        // The client acknowledges v1's ISN (as set by op 4 with the same op[4]) half the time.
        let seg = Segment {
            ack: 5001 + u32::from(op[4] & 0xfe) * 1000,
            ..Segment::new(flow, seq, TcpFlags(flags), payload)
        };
        p.on_segment(now, &seg, &mut |e| c.take(e));
        assert!(p.buffered_bytes() <= MAX_BUFFERED);
        assert!(p.flow_count() <= MAX_FLOWS);
        assert!(p.pending_handshakes() <= 4);
    }
    p.expire(u64::MAX, &mut |e| c.take(e));
    assert_eq!(p.flow_count(), 0);
    assert_eq!(p.pending_handshakes(), 0);
    assert_eq!(p.buffered_bytes(), 0);
}

fuzz_target!(|input: &[u8]| {
    // Layout: [n_ops] then n_ops * 6 control bytes, then the payload stream.
    let Some((&n, rest)) = input.split_first() else {
        return;
    };
    let ctl_len = (usize::from(n) * 6).min(rest.len());
    let (ctl, stream) = rest.split_at(ctl_len);

    // 1. Split invariance, and v1's acknowledgements releasing exactly the same requests.
    let cuts: Vec<u8> = ctl.iter().map(|b| b % 97).collect();
    let whole = in_order(stream, &[], Admission::ClientOnly);
    assert_eq!(in_order(stream, &cuts, Admission::ClientOnly), whole);
    assert_eq!(in_order(stream, &cuts, Admission::AckedByV1), whole);

    // 2. Arbitrary segments under either admission.
    arbitrary(ctl, stream, Admission::ClientOnly);
    arbitrary(ctl, stream, Admission::AckedByV1);
});
