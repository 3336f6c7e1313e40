//! Framing throughput (bytes/s): pipelined small requests, one large Content-Length body,
//! and the whole pipeline (reassembly, framing, rewrite, events) on small requests, gated by
//! v1's acknowledgements (the default) and client-only.

mod common;

use common::{feed, MSS};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mirror_cores::flow::{FlowKey, Segment, TcpFlags};
use mirror_cores::http::Framer;
use mirror_cores::pipeline::{Admission, Pipeline, PipelineConfig};
use std::hint::black_box;

fn small_requests(total: usize) -> Vec<u8> {
    let one = b"GET /api/v1/items?id=42 HTTP/1.1\r\nHost: httpbin:8000\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n\
POST /api/v1/items HTTP/1.1\r\nHost: httpbin:8000\r\nContent-Type: application/json\r\nContent-Length: 27\r\n\r\n{\"name\":\"widget\",\"qty\":10}\n";
    one.iter()
        .copied()
        .cycle()
        .take(total / one.len() * one.len())
        .collect()
}

fn large_body(body: usize) -> Vec<u8> {
    let mut v =
        format!("PUT /upload HTTP/1.1\r\nHost: api\r\nContent-Length: {body}\r\n\r\n").into_bytes();
    v.resize(v.len() + body, b'x');
    v
}

fn frame(stream: &[u8]) -> usize {
    feed(Framer::new(), stream).0
}

/// The stream through a whole pipeline. Ack-gated: after a handshake, v1 acknowledges each
/// segment (one header-only segment per client segment, as v1's delayed ACKs would be at most).
fn pipeline(stream: &[u8], admission: Admission) -> u64 {
    let config = PipelineConfig::default().with_admission(admission);
    let mut p = Pipeline::new(config).expect("valid config");
    let flow = FlowKey {
        src: ([10, 0, 0, 1], 40_000).into(),
        dst: ([10, 0, 0, 2], 8000).into(),
    };
    let server = |ack: u32, flags: u8| Segment {
        ack,
        window: u16::MAX,
        window_scale: Some(7),
        ..Segment::new(
            FlowKey {
                src: flow.dst,
                dst: flow.src,
            },
            500,
            TcpFlags(flags),
            b"",
        )
    };
    let client = |seq: u32, payload| Segment {
        ack: 501,
        ..Segment::new(flow, seq, TcpFlags(TcpFlags::ACK), payload)
    };
    let gated = admission == Admission::AckedByV1;
    let mut emit = |e| {
        black_box(e);
    };
    p.on_segment(
        0,
        &Segment::new(flow, 0, TcpFlags(TcpFlags::SYN), b""),
        &mut emit,
    );
    if gated {
        p.on_server_segment(0, &server(1, TcpFlags::SYN | TcpFlags::ACK), &mut emit);
        p.on_segment(0, &client(1, b""), &mut emit);
    }
    for (i, seg) in stream.chunks(MSS).enumerate() {
        let seq = 1 + (i * MSS) as u32;
        p.on_segment(0, &client(seq, seg), &mut emit);
        if gated {
            let ack = server(seq + seg.len() as u32, TcpFlags::ACK);
            p.on_server_segment(0, &ack, &mut emit);
        }
    }
    let mirrored = p.counters().requests_mirrored;
    assert!(mirrored > 0, "the benchmark must mirror what it sends");
    mirrored
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("framing");
    let small = small_requests(1 << 20);
    g.throughput(Throughput::Bytes(small.len() as u64));
    g.bench_function("pipelined_small_requests", |b| b.iter(|| frame(&small)));
    let large = large_body(1 << 22);
    g.throughput(Throughput::Bytes(large.len() as u64));
    g.bench_function("large_body", |b| b.iter(|| frame(&large)));
    g.throughput(Throughput::Bytes(small.len() as u64));
    g.bench_function("pipeline_small_requests", |b| {
        b.iter(|| pipeline(&small, Admission::AckedByV1))
    });
    g.bench_function("pipeline_small_requests_client_only", |b| {
        b.iter(|| pipeline(&small, Admission::ClientOnly))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
