//! Raw TCP mode: a stream flow's acknowledged bytes reach the relay in order and unchanged,
//! whatever the segmentation; what cannot be relayed in order (a join mid-stream, a gap) is
//! counted and not mirrored.

use super::*;

const ACK: u8 = TcpFlags::ACK;
const S_ISN: u32 = 90_000;
/// Not HTTP: a Redis command, then bytes no request line starts with.
const RESP: &[u8] = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n\x16\x03\x01\x00\xff";

fn streamed() -> H {
    let mut h = H::new(PipelineConfig::default());
    h.p.set_stream_targets(vec![StreamTarget {
        addr: key(0).dst.ip(),
        prefix: 32,
        port: key(0).dst.port(),
    }]);
    h
}

impl H {
    /// The bytes streamed on the flow of `port` and how it ended; checks that nothing but
    /// stream data and one last `FlowEnd` came for it.
    fn stream(&self, port: u16) -> (Vec<u8>, Option<EndReason>) {
        let mut bytes = Vec::new();
        let mut end = None;
        for e in self.events.iter() {
            match e {
                Event::StreamData { flow, data } if *flow == key(port) => {
                    assert!(end.is_none(), "data after FlowEnd");
                    assert!(!data.is_empty(), "empty stream data");
                    bytes.extend_from_slice(data);
                }
                Event::FlowEnd { flow, reason } if *flow == key(port) => {
                    assert!(end.replace(*reason).is_none(), "second FlowEnd");
                }
                e if event_flow(e) == key(port) => panic!("request event on a stream: {e:?}"),
                _ => {}
            }
        }
        (bytes, end)
    }
}

fn event_flow(e: &Event) -> FlowKey {
    match e {
        Event::RequestHead { flow, .. }
        | Event::RequestBody { flow, .. }
        | Event::RequestEnd { flow }
        | Event::RequestAbort { flow, .. }
        | Event::FlowEnd { flow, .. }
        | Event::StreamData { flow, .. } => *flow,
    }
}

#[test]
fn acknowledged_bytes_are_streamed_in_order_and_unframed() {
    let mut h = streamed();
    h.handshake(1, 1000, S_ISN);
    let (a, b) = RESP.split_at(9);
    let b_seq = 1001 + a.len() as u32;
    h.client(1, b_seq, S_ISN + 1, ACK, b);
    h.client(1, 1001, S_ISN + 1, ACK, a);
    assert_eq!(h.stream(1), (vec![], None));
    // v1 acknowledged part of it: only that part goes on.
    h.server(0, 1, S_ISN + 1, 1001 + 5, 512, ACK);
    assert_eq!(h.stream(1).0, &RESP[..5]);
    let end = 1001 + RESP.len() as u32;
    h.server(0, 1, S_ISN + 1, end, 512, ACK);
    h.client(1, end, S_ISN + 1, TcpFlags::FIN | ACK, b"");
    h.server(0, 1, S_ISN + 1, end + 1, 512, ACK);
    assert_eq!(h.stream(1), (RESP.to_vec(), Some(EndReason::Fin)));
    let c = h.p.counters();
    assert_eq!(c.stream_bytes, RESP.len() as u64);
    assert_eq!((c.requests_mirrored, c.stopped_invalid_head), (0, 0));
}

#[test]
fn a_stream_joined_mid_stream_is_counted_and_not_mirrored() {
    let mut h = streamed();
    // v1 acknowledges bytes of a connection whose handshake was never seen.
    h.server(0, 1, S_ISN, 5000, 512, ACK);
    h.client(1, 5000, S_ISN, ACK, RESP);
    h.server(0, 1, S_ISN, 5000 + RESP.len() as u32, 512, ACK);
    assert!(h.events.is_empty(), "{:?}", h.events);
    assert_eq!(h.p.counters().stream_joins_skipped, 1);
    // The tombstone goes with the linger time, holding no bytes.
    assert_eq!(h.p.buffered_bytes(), 0);
    h.expire(10 * SEC);
    assert_eq!(h.p.flow_count(), 0);
}

#[test]
fn a_gap_stops_the_stream_where_it_is() {
    let mut h = streamed();
    h.handshake(1, 1000, S_ISN);
    let (a, rest) = RESP.split_at(4);
    let (lost, c) = rest.split_at(6);
    h.client(1, 1001, S_ISN + 1, ACK, a);
    let c_seq = 1001 + (a.len() + lost.len()) as u32;
    h.client(1, c_seq, S_ISN + 1, ACK, c);
    // v1 got everything (the capture lost the middle segment) and acknowledges it all.
    h.server(0, 1, S_ISN + 1, 1001 + RESP.len() as u32, 512, ACK);
    assert_eq!(h.stream(1), (a.to_vec(), None));
    // The hole is given up on after the hole timeout: the stream stops there.
    h.expire(2 * SEC);
    assert_eq!(
        h.stream(1),
        (a.to_vec(), Some(EndReason::Stopped(StopReason::StreamGap)))
    );
    let counters = h.p.counters();
    assert_eq!(counters.stopped_stream_gap, 1);
    assert_eq!(counters.gap_bytes, lost.len() as u64);
}

#[test]
fn other_destinations_are_still_framed_as_http() {
    let mut h = H::new(PipelineConfig::default());
    h.p.set_stream_targets(vec![StreamTarget {
        addr: key(0).dst.ip(),
        prefix: 32,
        port: 6379,
    }]);
    h.handshake(1, 1000, S_ISN);
    h.client(1, 1001, S_ISN + 1, ACK, GET);
    h.server(0, 1, S_ISN + 1, 1001 + GET.len() as u32, 512, ACK);
    assert_eq!(h.complete(1), vec![GET_SHADOW]);
}

/// One packet of the property test: client data, or v1 acknowledging up to `ack`.
#[derive(Clone, Debug)]
enum Pkt {
    Client { seq: u32, payload: Vec<u8> },
    Server { ack: u32 },
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Any bytes, cut anywhere, reordered, duplicated and partly lost on the capture: what
    /// is streamed is always a prefix of what the client sent (never a byte out of order or
    /// unsent), and with nothing lost it is all of it, ended by the FIN.
    #[test]
    fn any_segmentation_streams_a_prefix_and_all_of_it_without_loss(
        wire in prop::collection::vec(any::<u8>(), 1..3000),
        isn in any::<u32>(),
        cut in 1usize..400,
        losses in prop::collection::vec(any::<prop::sample::Index>(), 0..3),
        swaps in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
        dups in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
    ) {
        let mut h = streamed();
        h.handshake(1, isn, S_ISN);
        let base = isn.wrapping_add(1);
        let mut pkts = Vec::new();
        for (n, piece) in wire.chunks(cut).enumerate() {
            let seq = base.wrapping_add((n * cut) as u32);
            pkts.push(Pkt::Client { seq, payload: piece.to_vec() });
            pkts.push(Pkt::Server { ack: seq.wrapping_add(piece.len() as u32) });
        }
        let lossy = !losses.is_empty();
        let mut lost: Vec<usize> = losses.iter().map(|i| i.index(pkts.len())).collect();
        lost.sort_unstable();
        lost.dedup();
        for &l in lost.iter().rev() {
            pkts.remove(l);
        }
        for s in &swaps {
            let i = s.index(pkts.len().max(1));
            if i + 1 < pkts.len() {
                pkts.swap(i, i + 1);
            }
        }
        for d in &dups {
            let i = d.index(pkts.len().max(1));
            if let Some(p) = pkts.get(i).cloned() {
                pkts.insert((i + 3).min(pkts.len()), p);
            }
        }
        let end = base.wrapping_add(wire.len() as u32);
        for p in &pkts {
            match p {
                Pkt::Client { seq, payload } => {
                    h.client(1, *seq, S_ISN + 1, ACK, payload);
                }
                Pkt::Server { ack } => {
                    h.server(0, 1, S_ISN + 1, *ack, 65535, ACK);
                }
            }
        }
        h.client(1, end, S_ISN + 1, TcpFlags::FIN | ACK, b"");
        h.server(0, 1, S_ISN + 1, end.wrapping_add(1), 65535, ACK);
        h.expire(1000 * SEC);
        let (streamed, reason) = h.stream(1);
        prop_assert!(wire.starts_with(&streamed), "streamed bytes are not a prefix of the wire");
        prop_assert!(reason.is_some());
        if !lossy {
            prop_assert_eq!(&streamed, &wire);
            prop_assert_eq!(reason, Some(EndReason::Fin));
        }
        prop_assert_eq!(h.p.counters().stream_bytes, streamed.len() as u64);
        prop_assert_eq!(h.p.flow_count(), 0);
        prop_assert_eq!(h.p.buffered_bytes(), 0);
    }
}

#[test]
fn an_http_flow_v1_switched_to_h2c_is_streamed_from_its_upgrade_on() {
    let upgrade =
        b"GET / HTTP/1.1\r\nHost: api\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABk\r\n\r\n";
    let mut wire = upgrade.to_vec();
    wire.extend_from_slice(crate::http2::frame::PREFACE);
    wire.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    let mut h = H::new(PipelineConfig::default());
    h.handshake(1, 1000, S_ISN);
    for (i, piece) in wire.chunks(10).enumerate() {
        h.client(1, 1001 + 10 * i as u32, S_ISN + 1, ACK, piece);
    }
    let end = 1001 + wire.len() as u32;
    h.server(0, 1, S_ISN + 1, end, 512, ACK);
    h.client(1, end, S_ISN + 1, TcpFlags::FIN | ACK, b"");
    h.server(0, 1, S_ISN + 1, end + 1, 512, ACK);
    assert_eq!(h.stream(1), (wire.clone(), Some(EndReason::Fin)));
    let c = h.p.counters();
    assert_eq!((c.upgrades_h2c, c.stream_bytes), (1, wire.len() as u64));
    assert_eq!((c.requests_mirrored, c.stopped_upgrade), (0, 0));
}
