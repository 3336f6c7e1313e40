//! Ack-gated admission (the default): flows exist only for connections v1 accepted, client
//! bytes are framed only once v1 acknowledged them, and packets outside v1's window change
//! nothing. Table tests, then a property test over both directions.

use super::*;

const ACK: u8 = TcpFlags::ACK;
const SYNACK: u8 = TcpFlags::SYN | TcpFlags::ACK;
const S_ISN: u32 = 70_000;

fn acked() -> H {
    H::new(PipelineConfig::default())
}

#[test]
fn bytes_are_framed_only_once_v1_acknowledges_them() {
    let mut h = acked();
    h.handshake(1, 1000, S_ISN);
    assert_eq!(h.p.flow_count(), 1);
    h.client(1, 1001, S_ISN + 1, ACK, GET);
    assert!(h.events.is_empty());
    // A partial acknowledgement releases only part of the head.
    h.server(0, 1, S_ISN + 1, 1001 + 10, 512, ACK);
    assert!(h.events.is_empty());
    h.server(0, 1, S_ISN + 1, 1001 + GET.len() as u32, 512, ACK);
    assert_eq!(h.complete(1), vec![GET_SHADOW]);
    // FIN, acknowledged: the flow ends.
    let at = 1001 + GET.len() as u32;
    h.client(1, at, S_ISN + 1, TcpFlags::FIN | ACK, b"");
    assert_eq!(h.end(1), None);
    h.server(0, 1, S_ISN + 1, at + 1, 512, ACK);
    assert_eq!(h.end(1), Some(EndReason::Fin));
    assert_eq!(h.p.counters().flows_started, 1);
}

#[test]
fn syn_flood_without_syn_acks_creates_no_state() {
    let mut h = acked();
    for port in 0..65_535u16 {
        h.client(port, u32::from(port) * 7, 0, TcpFlags::SYN, b"");
    }
    assert_eq!((h.p.flow_count(), h.p.pending_handshakes()), (0, 0));
    assert_eq!(h.p.buffered_bytes(), 0);
}

#[test]
fn syn_acks_never_completed_stay_pending_bounded_and_expire() {
    let config = PipelineConfig {
        max_handshakes: 100,
        ..PipelineConfig::default()
    };
    let mut h = H::new(config);
    for port in 0..1000u16 {
        h.server(0, port, S_ISN, u32::from(port), 100, SYNACK);
    }
    assert_eq!((h.p.flow_count(), h.p.pending_handshakes()), (0, 100));
    assert_eq!(h.p.counters().handshakes_evicted, 900);
    h.expire(10 * SEC);
    assert_eq!(h.p.pending_handshakes(), 0);
    assert_eq!(h.p.counters().handshakes_expired, 100);
}

#[test]
fn forged_data_without_a_handshake_never_yields_a_request() {
    let mut h = acked();
    h.client(1, 5000, 0, ACK, GET);
    h.client(1, 5000, 0, TcpFlags::SYN, b"");
    h.client(1, 5001, 0, ACK, GET);
    assert_eq!(h.p.flow_count(), 0);
    assert!(h.events.is_empty());
    let c = h.p.counters();
    assert_eq!(
        (c.segments_unaccepted, c.bytes_unaccepted),
        (2, 2 * GET.len() as u64)
    );
    // A client ACK that does not acknowledge v1's ISN completes nothing.
    h.server(0, 2, S_ISN, 101, 100, SYNACK);
    h.client(2, 101, S_ISN + 7, ACK, GET);
    assert_eq!(h.p.flow_count(), 0);
}

#[test]
fn forged_segment_v1_never_acknowledges_never_yields_a_request() {
    let mut h = acked();
    h.handshake(1, 0, S_ISN);
    // Forged at the next sequence number; v1 never acknowledges it (it rejected it, or it
    // never reached v1); v1 then resets the connection.
    h.client(1, 1, S_ISN + 1, ACK, GET);
    h.server(0, 1, S_ISN + 1, 1, 512, ACK);
    h.server(0, 1, S_ISN + 1, 1, 0, TcpFlags::RST);
    assert!(h.complete(1).is_empty());
    assert_eq!(h.end(1), Some(EndReason::Rst));
    assert_eq!(h.p.counters().held_bytes_discarded, GET.len() as u64);
}

#[test]
fn data_beyond_v1_window_is_dropped_and_counted() {
    let mut h = acked();
    // v1's SYN-ACK advertises 100 bytes (never scaled); later segments scale by 2^7.
    h.client(1, 0, 0, TcpFlags::SYN, b"");
    h.server_scaled(0, 1, S_ISN, 1, 100, Some(7), SYNACK);
    h.client(1, 1, S_ISN + 1, ACK, b"");
    let wire = [GET, GET, GET, GET].concat(); // 4 * 33 = 132 bytes: the last 32 lie beyond
    h.client(1, 1, S_ISN + 1, ACK, &wire);
    let c = h.p.counters();
    assert_eq!((c.segments_beyond_window, c.bytes_beyond_window), (1, 32));
    // v1 acknowledges the 100 bytes it took and opens its window (1 << 7); the client
    // retransmits the rest.
    h.server(0, 1, S_ISN + 1, 101, 1, ACK);
    assert_eq!(h.complete(1), vec![GET_SHADOW; 3]);
    h.client(1, 101, S_ISN + 1, ACK, &wire[100..]);
    h.server(0, 1, S_ISN + 1, 1 + wire.len() as u32, 1, ACK);
    assert_eq!(h.complete(1), vec![GET_SHADOW; 4]);
}

#[test]
fn off_window_rst_and_fin_do_not_end_a_flow() {
    let mut h = acked();
    h.handshake(1, 0, S_ISN);
    h.client(1, 1, S_ISN + 1, ACK, GET);
    h.client(1, 1 << 20, S_ISN + 1, TcpFlags::RST, b"");
    h.client(1, 2, S_ISN + 1, TcpFlags::RST, b"");
    h.server(0, 1, S_ISN - 5000, 1, 0, TcpFlags::RST);
    h.client(1, 1 << 30, S_ISN + 1, TcpFlags::FIN | ACK, b"");
    assert_eq!(h.end(1), None);
    let c = h.p.counters();
    assert_eq!((c.rst_ignored, c.fin_ignored), (3, 1));
    h.server(0, 1, S_ISN + 1, 1 + GET.len() as u32, 512, ACK);
    assert_eq!(h.complete(1), vec![GET_SHADOW]);
    // At the exact next sequence number a RST counts.
    h.client(1, 1 + GET.len() as u32, S_ISN + 1, TcpFlags::RST, b"");
    assert_eq!(h.end(1), Some(EndReason::Rst));
}

#[test]
fn a_segment_far_ahead_does_not_poison_the_flow() {
    let mut h = acked();
    h.handshake(1, 0, S_ISN);
    h.client(1, 1 << 31, S_ISN + 1, ACK, b"GET /far HTTP/1.1\r\n\r\n");
    let mut seq = 1u32;
    for _ in 0..100 {
        h.client(1, seq, S_ISN + 1, ACK, GET);
        seq += GET.len() as u32;
        h.server(0, 1, S_ISN + 1, seq, 512, ACK);
    }
    assert_eq!(h.complete(1).len(), 100);
    assert_eq!(h.p.counters().duplicate_bytes, 0);
}

#[test]
fn a_segment_past_the_buffer_window_on_a_joined_flow_does_not_skip_the_stream() {
    let config = PipelineConfig {
        ooo_window: 4096,
        ..PipelineConfig::default()
    };
    let mut h = H::new(config);
    // Joined: v1's window scale is unknown, so its window is taken as large as it can be.
    h.server(0, 1, 9, 1, 65535, ACK);
    h.client(1, 1 + 8192, 9, ACK, b"GET /forged HTTP/1.1\r\n\r\n");
    h.client(1, 1 + 4000, 9, ACK, &[b'x'; 200]);
    let mut seq = 1u32;
    for _ in 0..10 {
        h.client(1, seq, 9, ACK, GET);
        seq += GET.len() as u32;
        h.server(0, 1, 9, seq, 65535, ACK);
    }
    assert_eq!(h.complete(1).len(), 10);
    assert_eq!(h.p.counters().gaps, 0);
}

#[test]
fn client_only_far_segment_does_not_poison_and_lasting_loss_is_followed() {
    let mut h = H::new(client_only());
    h.syn(1, 0);
    h.data(1, (1 << 31) + 5, GET);
    let mut seq = 1u32;
    for _ in 0..100 {
        h.data(1, seq, GET);
        seq += GET.len() as u32;
    }
    assert_eq!(h.complete(1).len(), 100);
    // The capture then loses 10 MiB: segments keep landing beyond the window, and after a hole
    // timeout of nothing else the stream moves to them.
    let far = seq + (10 << 20);
    h.seg(0, 1, far, ACK, GET);
    h.seg(SEC, 1, far + GET.len() as u32, ACK, GET);
    h.seg(SEC, 1, far + 2 * GET.len() as u32, ACK, GET);
    assert_eq!(h.complete(1).len(), 102);
    assert_eq!(h.p.counters().far_jumps, 1);
}

#[test]
fn joined_mid_stream_from_v1_acknowledgement() {
    let mut h = acked();
    // Bytes before v1's first acknowledgement we see are not adopted.
    h.client(1, 500, 9, ACK, b"tail of a body\r\n");
    assert_eq!(h.p.flow_count(), 0);
    h.server(0, 1, 9, 516, 512, ACK);
    assert_eq!(h.p.counters().midstream_joins, 1);
    h.client(1, 516, 9, ACK, b"ody\r\n");
    h.client(1, 521, 9, ACK, GET);
    h.server(0, 1, 9, 521 + GET.len() as u32, 512, ACK);
    assert_eq!(h.complete(1), vec![GET_SHADOW]);
}

#[test]
fn v1_acknowledging_bytes_the_capture_lost_gives_a_gap_after_the_hole_timeout() {
    let mut h = acked();
    h.handshake(1, 0, S_ISN);
    let post = b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhell\n";
    let mut wire = post.to_vec();
    wire.extend_from_slice(GET);
    // post[10..20] is never captured; v1 acknowledges everything.
    h.client(1, 1, S_ISN + 1, ACK, &wire[..10]);
    h.client(1, 21, S_ISN + 1, ACK, &wire[20..]);
    h.server(0, 1, S_ISN + 1, 1 + wire.len() as u32, 512, ACK);
    assert!(h.complete(1).is_empty());
    h.expire(SEC);
    assert_eq!(h.complete(1), vec![GET_SHADOW]);
    assert_eq!(h.p.counters().gap_bytes, 10);
}

#[test]
fn a_new_handshake_on_the_same_addresses_supersedes_the_flow() {
    let mut h = acked();
    h.handshake(1, 0, S_ISN);
    h.client(1, 1, S_ISN + 1, ACK, &GET[..5]);
    h.server(0, 1, S_ISN + 1, 6, 512, ACK);
    // A retransmitted SYN-ACK changes nothing.
    h.server_scaled(0, 1, S_ISN, 1, 65535, Some(7), SYNACK);
    assert_eq!(h.p.pending_handshakes(), 0);
    h.handshake(1, 9000, S_ISN + 99);
    assert_eq!(h.end(1), Some(EndReason::Superseded));
    assert_eq!(h.p.counters().flows_superseded, 1);
}

#[test]
fn client_only_pipeline_ignores_server_segments() {
    let mut h = H::new(client_only());
    h.server(0, 1, 0, 1, 512, ACK);
    assert_eq!(h.p.flow_count(), 0);
    assert_eq!(h.p.counters().server_segments_ignored, 1);
}

/// One captured packet of the property test.
#[derive(Clone, Debug)]
enum Pkt {
    Client {
        port: u16,
        seq: u32,
        payload: Vec<u8>,
    },
    Server {
        port: u16,
        ack: u32,
    },
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Both directions lost, reordered and duplicated, on several flows, with forged client
    /// segments v1 never acknowledges (beyond what v1 acknowledged, or far outside): every
    /// complete request is one that was sent; none contains forged bytes; with nothing lost,
    /// all come out in order. v1 is modelled as a receiver that got every genuine segment and
    /// acknowledged each cumulatively.
    #[test]
    fn both_directions_lossy_and_forged_never_yield_an_unacknowledged_request(
        flows in prop::collection::vec((prop::collection::vec(request(), 1..5), any::<u32>()), 1..4),
        cut in 1usize..200,
        losses in prop::collection::vec(any::<prop::sample::Index>(), 0..3),
        swaps in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
        dups in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
        forged in prop::collection::vec((any::<prop::sample::Index>(), 0u32..5000, any::<bool>()), 0..4),
    ) {
        let mut h = acked();
        let mut pkts = Vec::new();
        let mut ends = Vec::new();
        for (i, (reqs, isn)) in flows.iter().enumerate() {
            let port = i as u16 + 1;
            h.handshake(port, *isn, S_ISN);
            let wire: Vec<u8> = reqs.iter().flat_map(|r| r.wire.clone()).collect();
            let base = isn.wrapping_add(1);
            for (n, piece) in wire.chunks(cut).enumerate() {
                let seq = base.wrapping_add((n * cut) as u32);
                pkts.push(Pkt::Client { port, seq, payload: piece.to_vec() });
                pkts.push(Pkt::Server { port, ack: seq.wrapping_add(piece.len() as u32) });
            }
            ends.push(base.wrapping_add(wire.len() as u32));
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
        for (at, off, far) in &forged {
            let flow = at.index(flows.len());
            let start = if *far { ends[flow].wrapping_add(1 << 30) } else { ends[flow] };
            let seq = start.wrapping_add(*off);
            let p = Pkt::Client { port: flow as u16 + 1, seq, payload: b"GET /forged HTTP/1.1\r\n\r\n".to_vec() };
            let i = at.index(pkts.len() + 1);
            pkts.insert(i, p);
        }
        for p in &pkts {
            match p {
                Pkt::Client { port, seq, payload } => {
                    h.client(*port, *seq, S_ISN + 1, ACK, payload);
                }
                Pkt::Server { port, ack } => {
                    h.server(0, *port, S_ISN + 1, *ack, 65535, ACK);
                }
            }
        }
        h.expire(1000 * SEC);
        let rebuilt = h.flows();
        for (i, (reqs, _)) in flows.iter().enumerate() {
            let sent: Vec<&Vec<u8>> = reqs.iter().map(|r| &r.mirrored).collect();
            let got = rebuilt.get(&key(i as u16 + 1)).map(|f| f.0.complete.clone()).unwrap_or_default();
            for g in &got {
                prop_assert!(sent.contains(&g), "flow {} got a request never sent: {:?}", i, String::from_utf8_lossy(g));
            }
            if !lossy {
                let want: Vec<Vec<u8>> = sent.into_iter().cloned().collect();
                prop_assert_eq!(got, want);
            }
        }
        prop_assert_eq!(h.p.flow_count(), 0);
        prop_assert_eq!(h.p.buffered_bytes(), 0);
    }
}
