//! Reassembly throughput (bytes/s): a 1 MiB stream in 1448-byte segments, in order and
//! reordered (adjacent pairs swapped, and every 16th segment held back 4 places).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mirror_cores::reassembly::{Delivery, Reassembler};
use std::hint::black_box;

const MSS: usize = 1448;
const STREAM: usize = 1 << 20;

fn segments(reorder: bool) -> (Vec<u8>, Vec<(u32, std::ops::Range<usize>)>) {
    let data: Vec<u8> = (0..STREAM).map(|i| (i % 251) as u8).collect();
    let mut segs: Vec<_> = (0..STREAM)
        .step_by(MSS)
        .map(|at| (at as u32, at..(at + MSS).min(STREAM)))
        .collect();
    if reorder {
        for pair in segs.chunks_mut(2) {
            pair.reverse();
        }
        for i in (0..segs.len().saturating_sub(4)).step_by(16) {
            let s = segs.remove(i);
            segs.insert(i + 4, s);
        }
    }
    (data, segs)
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("reassembly");
    g.throughput(Throughput::Bytes(STREAM as u64));
    for (name, reorder) in [("in_order", false), ("reordered", true)] {
        let (data, segs) = segments(reorder);
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut r = Reassembler::new(1, 4 << 20);
                let mut delivered = 0usize;
                for (off, range) in &segs {
                    let res = r.push(1 + off, &data[range.clone()], &mut |d| {
                        if let Delivery::Data(b) = d {
                            delivered += b.len();
                        }
                    });
                    black_box(res).ok();
                }
                assert_eq!(delivered, STREAM);
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
