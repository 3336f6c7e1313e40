//! Framing throughput (bytes/s): pipelined small requests, one large Content-Length body,
//! and the whole pipeline (reassembly, framing, rewrite, events) on small requests.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mirror_cores::flow::{FlowKey, Segment, TcpFlags};
use mirror_cores::http::{Env, Framer, FramerConfig};
use mirror_cores::outcome::Counters;
use mirror_cores::pipeline::{Pipeline, PipelineConfig};
use mirror_cores::sampling::Sampler;
use std::hint::black_box;

const MSS: usize = 1448;

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
    let config = FramerConfig::default();
    let mut sampler = Sampler::new(100.0, 0).expect("valid percent");
    let mut counters = Counters::default();
    let mut env = Env {
        config: &config,
        sampler: &mut sampler,
        counters: &mut counters,
    };
    let mut framer = Framer::new();
    let mut events = 0usize;
    for seg in stream.chunks(MSS) {
        framer.data(seg, &mut env, &mut |e| {
            black_box(e);
            events += 1;
        });
    }
    events
}

fn pipeline(stream: &[u8]) -> u64 {
    let mut p = Pipeline::new(PipelineConfig::default()).expect("valid config");
    let flow = FlowKey {
        src: ([10, 0, 0, 1], 40_000).into(),
        dst: ([10, 0, 0, 2], 8000).into(),
    };
    let mut emit = |e| {
        black_box(e);
    };
    p.on_segment(
        0,
        &Segment::new(flow, 0, TcpFlags(TcpFlags::SYN), b""),
        &mut emit,
    );
    for (i, seg) in stream.chunks(MSS).enumerate() {
        let s = Segment::new(flow, 1 + (i * MSS) as u32, TcpFlags(TcpFlags::ACK), seg);
        p.on_segment(0, &s, &mut emit);
    }
    p.counters().requests_mirrored
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
    g.bench_function("pipeline_small_requests", |b| b.iter(|| pipeline(&small)));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
