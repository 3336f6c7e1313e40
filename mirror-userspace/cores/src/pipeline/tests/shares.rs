//! Fair shares: a source address over its share of flows or bytes loses its own flows, and
//! global pressure takes from the largest consumer, never from a smaller source.

use super::*;

fn from(host: u8, port: u16) -> FlowKey {
    FlowKey {
        src: ([10, 0, 1, host], port).into(),
        dst: ([10, 0, 0, 2], 80).into(),
    }
}

fn syn(p: &mut Pipeline, events: &mut Vec<Event>, flow: FlowKey) {
    let seg = Segment::new(flow, 0, TcpFlags(TcpFlags::SYN), b"");
    p.on_segment(0, &seg, &mut |e| events.push(e));
}

fn ended(events: &[Event], host: u8) -> usize {
    events
        .iter()
        .filter(
            |e| matches!(e, Event::FlowEnd { flow, .. } if flow.src.ip() == from(host, 0).src.ip()),
        )
        .count()
}

#[test]
fn a_source_over_its_flow_share_evicts_only_its_own() {
    let config = PipelineConfig {
        max_flows: 100,
        max_flows_per_source: 10,
        ..client_only()
    };
    let mut p = Pipeline::new(config).unwrap();
    let mut ev = Vec::new();
    for port in 0..5 {
        syn(&mut p, &mut ev, from(2, port));
    }
    for port in 0..1000 {
        syn(&mut p, &mut ev, from(1, port));
    }
    assert_eq!(ended(&ev, 2), 0);
    assert_eq!(ended(&ev, 1), 990);
    assert_eq!(p.counters().flows_evicted_source_flows, 990);
    assert_eq!(p.flow_count(), 15);
    let top = p.source_tallies(4);
    assert_eq!(top[0].addr, from(1, 0).src.ip());
    assert_eq!((top[0].flows, top[0].flows_evicted), (10, 990));
    assert!(top
        .iter()
        .any(|t| t.addr == from(2, 0).src.ip() && t.flows_evicted == 0));
}

#[test]
fn a_full_table_evicts_from_the_largest_source() {
    let config = PipelineConfig {
        max_flows: 20,
        max_flows_per_source: 20,
        ..client_only()
    };
    let mut p = Pipeline::new(config).unwrap();
    let mut ev = Vec::new();
    for port in 0..3 {
        syn(&mut p, &mut ev, from(2, port));
    }
    // Source 1 fills the table; its later flows push out its own older ones, and source 2's
    // new flows push out source 1's, never source 2's.
    for port in 0..100 {
        syn(&mut p, &mut ev, from(1, port));
    }
    for port in 3..10 {
        syn(&mut p, &mut ev, from(2, port));
    }
    assert_eq!(ended(&ev, 2), 0);
    assert_eq!(p.flow_count(), 20);
    assert_eq!(p.counters().flows_evicted_table_full, 90);
}

#[test]
fn a_source_over_its_byte_share_loses_its_own_flows() {
    let config = PipelineConfig {
        max_buffered_per_source: 100_000,
        ..client_only()
    };
    let mut p = Pipeline::new(config).unwrap();
    let mut ev = Vec::new();
    let block = vec![b'x'; 40_000];
    syn(&mut p, &mut ev, from(2, 1));
    let held = Segment::new(from(2, 1), 1000, TcpFlags(TcpFlags::ACK), &block);
    p.on_segment(0, &held, &mut |e| ev.push(e));
    for port in 0..10 {
        syn(&mut p, &mut ev, from(1, port));
        let seg = Segment::new(from(1, port), 1000, TcpFlags(TcpFlags::ACK), &block);
        p.on_segment(0, &seg, &mut |e| ev.push(e));
    }
    assert_eq!(ended(&ev, 2), 0);
    assert!(p.counters().flows_evicted_source_memory >= 8);
    assert!(p.source_tallies(1)[0].buffered_bytes <= 100_000);
}

#[test]
fn global_memory_pressure_takes_from_the_largest_consumer() {
    let config = PipelineConfig {
        max_buffered_bytes: 200_000,
        ..client_only()
    };
    let mut p = Pipeline::new(config).unwrap();
    let mut ev = Vec::new();
    let block = vec![b'x'; 40_000];
    let hold = |p: &mut Pipeline, ev: &mut Vec<Event>, flow| {
        syn(p, ev, flow);
        let seg = Segment::new(flow, 1000, TcpFlags(TcpFlags::ACK), &block);
        p.on_segment(0, &seg, &mut |e| ev.push(e));
    };
    hold(&mut p, &mut ev, from(2, 1));
    for port in 0..10 {
        hold(&mut p, &mut ev, from(1, port));
    }
    assert_eq!(ended(&ev, 2), 0);
    assert!(p.buffered_bytes() <= 200_000);
    assert!(p.counters().flows_evicted_memory >= 6);
}

/// v1's SYN-ACK to `flow`'s client, window scale 7.
fn syn_ack(p: &mut Pipeline, events: &mut Vec<Event>, flow: FlowKey, client_isn: u32) {
    let seg = Segment {
        ack: client_isn.wrapping_add(1),
        window: 65535,
        window_scale: Some(7),
        ..Segment::new(
            FlowKey {
                src: flow.dst,
                dst: flow.src,
            },
            9_000,
            TcpFlags(TcpFlags::SYN | TcpFlags::ACK),
            b"",
        )
    };
    p.on_server_segment(0, &seg, &mut |e| events.push(e));
}

#[test]
fn a_syn_flood_from_one_source_leaves_another_sources_handshakes_pending() {
    let config = PipelineConfig {
        max_handshakes: 100,
        max_handshakes_per_source: 25,
        ..PipelineConfig::default()
    };
    let mut p = Pipeline::new(config).unwrap();
    let mut ev = Vec::new();
    for port in 0..20 {
        syn_ack(&mut p, &mut ev, from(2, port), 500);
    }
    // The flooder's SYNs all got SYN-ACKs from v1 (it never completes them).
    for port in 0..10_000 {
        syn_ack(&mut p, &mut ev, from(1, port), 700);
    }
    assert_eq!(p.pending_handshakes(), 45);
    let c = p.counters();
    assert_eq!(
        (c.handshakes_evicted, c.handshakes_evicted_source),
        (9_975, 9_975)
    );
    // Source 2's clients complete their handshakes: every flow starts.
    for port in 0..20 {
        let ack = Segment {
            ack: 9_001,
            window: 65535,
            ..Segment::new(from(2, port), 501, TcpFlags(TcpFlags::ACK), b"")
        };
        p.on_segment(0, &ack, &mut |e| ev.push(e));
    }
    assert_eq!(p.counters().flows_started, 20);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever a hostile source does (any number of flows, any amount held, interleaved in
    /// any order), a source that stays under half of each global cap and under its own shares
    /// never loses a flow.
    #[test]
    fn a_source_within_its_fair_share_is_never_evicted(
        hostile in prop::collection::vec((any::<u16>(), 0usize..20_000), 0..300),
        quiet in prop::collection::vec(0usize..3_000, 1..30),
        order in prop::collection::vec(any::<bool>(), 330),
    ) {
        let config = PipelineConfig {
            max_flows: 64,
            max_flows_per_source: 40,
            max_buffered_bytes: 400_000,
            max_buffered_per_source: 300_000,
            ..client_only()
        };
        let mut p = Pipeline::new(config).unwrap();
        let mut ev = Vec::new();
        let (mut h, mut q) = (hostile.iter(), quiet.iter().enumerate());
        for &hostile_next in &order {
            let (flow, held) = if hostile_next {
                match h.next() {
                    Some(&(port, held)) => (from(1, port), held),
                    None => continue,
                }
            } else {
                match q.next() {
                    Some((port, &held)) => (from(2, port as u16), held),
                    None => continue,
                }
            };
            syn(&mut p, &mut ev, flow);
            let data = vec![b'x'; held];
            let seg = Segment::new(flow, 1000, TcpFlags(TcpFlags::ACK), &data);
            p.on_segment(0, &seg, &mut |e| ev.push(e));
            prop_assert!(p.buffered_bytes() <= 400_000);
            prop_assert!(p.flow_count() <= 64);
        }
        prop_assert_eq!(ended(&ev, 2), 0);
    }
}
