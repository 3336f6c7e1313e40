//! Cost of hostile input, per hostile byte or segment: request-line-shaped garbage on a flow
//! being resynchronised (against real pipelined GETs), out-of-order segments far ahead in the
//! window, and whole-pipeline attacks (SYN flood, forged data with no handshake, far-ahead and
//! off-window segments on live flows). Each must stay linear: the time per byte or per
//! segment must not grow with the amount of input or the distance ahead.

mod common;

use common::feed;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mirror_cores::flow::{FlowKey, Segment, TcpFlags};
use mirror_cores::http::Framer;
use mirror_cores::pipeline::{Pipeline, PipelineConfig};
use mirror_cores::reassembly::Reassembler;
use std::hint::black_box;
use std::time::Duration;
const STREAM: usize = 1 << 20;

fn repeat(unit: &[u8], total: usize) -> Vec<u8> {
    unit.iter().copied().cycle().take(total).collect()
}

/// Feeds `stream` to a framer that joined mid-stream, in MSS-sized deliveries.
fn resync(stream: &[u8]) -> u64 {
    let (_, counters) = feed(Framer::resyncing(), stream);
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

const ATTACK: u32 = 10_000;

fn flow(i: u32) -> FlowKey {
    FlowKey {
        src: ([10, 1, (i >> 16) as u8, (i >> 8) as u8], i as u16).into(),
        dst: ([10, 0, 0, 2], 80).into(),
    }
}

/// `ATTACK` segments made by `make` through a default (ack-gated) pipeline that already has
/// one live flow, flow(0), joined and acknowledged up to sequence 1.
fn attack(make: impl Fn(u32) -> (FlowKey, u32, u8, &'static [u8])) -> usize {
    let mut p = Pipeline::new(PipelineConfig::default()).expect("valid config");
    let mut emit = |e| {
        black_box(e);
    };
    let live = flow(0);
    let server = FlowKey {
        src: live.dst,
        dst: live.src,
    };
    let ack = Segment {
        ack: 1,
        window: 65535,
        ..Segment::new(server, 9, TcpFlags(TcpFlags::ACK), b"")
    };
    p.on_server_segment(0, &ack, &mut emit);
    for i in 0..ATTACK {
        let (key, seq, flags, payload) = make(i);
        p.on_segment(
            0,
            &Segment::new(key, seq, TcpFlags(flags), payload),
            &mut emit,
        );
    }
    p.flow_count() + p.buffered_bytes()
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
    g.throughput(Throughput::Elements(u64::from(ATTACK)));
    g.bench_function("pipeline_syn_flood_per_syn", |b| {
        b.iter(|| attack(|i| (flow(i + 1), i, TcpFlags::SYN, b"")))
    });
    g.bench_function("pipeline_forged_data_no_handshake_per_segment", |b| {
        b.iter(|| attack(|i| (flow(i + 1), i, TcpFlags::ACK, b"GET / HTTP/1.1\r\n\r\n")))
    });
    g.bench_function("pipeline_far_ahead_on_live_flow_per_segment", |b| {
        b.iter(|| attack(|i| (flow(0), (1 << 31) + i * 1000, TcpFlags::ACK, b"x")))
    });
    g.bench_function("pipeline_ooo_in_window_on_live_flow_per_segment", |b| {
        b.iter(|| attack(|i| (flow(0), 2 + (i * 4099) % (4 << 20), TcpFlags::ACK, b"x")))
    });
    g.bench_function("pipeline_off_window_rst_per_segment", |b| {
        b.iter(|| attack(|i| (flow(0), 1000 + i, TcpFlags::RST, b"")))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
