//! Set-up the framing and hostile-input benches share: a framer fed a stream as TCP would
//! deliver it.

use std::hint::black_box;

use mirror_cores::http::{Env, Framer, FramerConfig};
use mirror_cores::outcome::Counters;
use mirror_cores::sampling::Sampler;

/// One Ethernet-sized TCP segment's payload: the size of each delivery.
pub const MSS: usize = 1448;

/// Feeds `stream` to `framer` in MSS-sized deliveries, under the default limits with every
/// request sampled in; returns how many events it gave and its counters.
pub fn feed(mut framer: Framer, stream: &[u8]) -> (usize, Counters) {
    let config = FramerConfig::default();
    let mut sampler = Sampler::new(100.0, 0).expect("valid percent");
    let mut counters = Counters::default();
    let mut env = Env {
        config: &config,
        sampler: &mut sampler,
        counters: &mut counters,
    };
    let mut events = 0usize;
    for piece in stream.chunks(MSS) {
        framer.data(piece, &mut env, &mut |e| {
            black_box(e);
            events += 1;
        });
    }
    (events, counters)
}
