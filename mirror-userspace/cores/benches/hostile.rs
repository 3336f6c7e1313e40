//! Cost of hostile input, per hostile byte or segment: request-line-shaped garbage on a flow
//! being resynchronised (against real pipelined GETs), and out-of-order segments far ahead in
//! the window. Each must stay linear: the time per byte or per segment must not grow with the
//! amount of input or the distance ahead.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mirror_cores::http::{Env, Framer, FramerConfig};
use mirror_cores::outcome::Counters;
use mirror_cores::reassembly::Reassembler;
use mirror_cores::sampling::Sampler;
use std::hint::black_box;
use std::time::Duration;

const MSS: usize = 1448;
const STREAM: usize = 1 << 20;

fn repeat(unit: &[u8], total: usize) -> Vec<u8> {
    unit.iter().copied().cycle().take(total).collect()
}

/// Feeds `stream` to a framer that joined mid-stream, in MSS-sized deliveries.
fn resync(stream: &[u8]) -> u64 {
    let config = FramerConfig::default();
    let mut sampler = Sampler::new(100.0, 0).expect("valid percent");
    let mut counters = Counters::default();
    let mut env = Env {
        config: &config,
        sampler: &mut sampler,
        counters: &mut counters,
    };
    let mut framer = Framer::resyncing();
    for piece in stream.chunks(MSS) {
        framer.data(piece, &mut env, &mut |e| {
            black_box(e);
        });
    }
    counters.resync_skipped_bytes + counters.requests_mirrored
}

/// One fresh flow per iteration takes `segments` one-byte segments spread over the 4 MiB window.
fn far_ahead(segments: u32) -> usize {
    let window = 4 << 20;
    let mut r = Reassembler::new(0, window);
    let step = (window - 1) / segments;
    for i in 0..segments {
        let res = r.push(window - 1 - i * step, b"x", &mut |d| {
            black_box(d);
        });
        black_box(res).ok();
    }
    r.memory()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("hostile");
    g.sample_size(10).measurement_time(Duration::from_secs(3));
    let garbage = repeat(b"GET \n", STREAM);
    let lines = repeat(b"GET /x HTTP/1.1\r\nHost\n", STREAM);
    let real = repeat(b"GET /a HTTP/1.1\r\nHost: api\r\n\r\n", STREAM);
    g.throughput(Throughput::Bytes(STREAM as u64));
    g.bench_function("resync_get_sp_lf_1MiB", |b| b.iter(|| resync(&garbage)));
    g.bench_function("resync_unterminated_heads_1MiB", |b| {
        b.iter(|| resync(&lines))
    });
    g.bench_function("resync_real_gets_1MiB", |b| b.iter(|| resync(&real)));
    for segments in [1u32, 8] {
        g.throughput(Throughput::Elements(u64::from(segments)));
        g.bench_function(
            format!("ooo_{segments}_one_byte_segments_4MiB_window"),
            |b| b.iter(|| far_ahead(segments)),
        );
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
