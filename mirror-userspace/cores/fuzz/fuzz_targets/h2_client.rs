//! The HTTP/2 client-direction core from arbitrary bytes (after the preface, or raw when the
//! first input byte is odd), cut where the input says: nothing panics, events keep their
//! per-stream grammar, memory stays within the frame and header-block bounds, open streams
//! within their bound, and cutting the bytes differently never changes the events.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mirror_cores::http2::{frame::PREFACE, ClientStream, H2Config, H2Event};
use std::collections::HashMap;

fn config() -> H2Config {
    H2Config {
        max_frame_bytes: 16 << 10,
        max_header_block: 8 << 10,
        max_streams: 8,
        max_body_bytes: 1 << 16,
        ..H2Config::default()
    }
}

/// Feeds `bytes` cut after each length in `cuts` (the rest in one piece); checks the
/// grammar and the bounds on the way.
fn run(bytes: &[u8], cuts: &[u8]) -> Vec<H2Event> {
    let mut conn = ClientStream::new(config());
    let mut events = Vec::new();
    let mut at = 0;
    let mut pieces: Vec<&[u8]> = Vec::new();
    for &cut in cuts {
        let end = (at + usize::from(cut)).min(bytes.len());
        pieces.push(&bytes[at..end]);
        at = end;
    }
    pieces.push(&bytes[at..]);
    for piece in pieces {
        conn.data(piece, &mut |e| events.push(e));
        let bound = piece.len() + config().max_frame_bytes + 9 + config().max_header_block;
        assert!(conn.memory() <= 2 * bound, "memory {}", conn.memory());
        assert!(conn.open_streams() <= config().max_streams);
    }
    check(&events);
    events
}

/// Per stream: a head, then data and at most one trailers, complete or aborted once;
/// nothing after `Stopped`.
fn check(events: &[H2Event]) {
    // Per stream: whether it is still open.
    let mut streams: HashMap<u32, bool> = HashMap::new();
    let mut stopped = false;
    for e in events {
        assert!(!stopped, "event after Stopped");
        match e {
            H2Event::Head {
                stream, end_stream, ..
            } => {
                assert!(streams.insert(*stream, !end_stream).is_none(), "second head");
            }
            H2Event::Data {
                stream, end_stream, ..
            } => {
                let open = streams.get_mut(stream).expect("data before head");
                assert!(*open, "data after the end");
                *open = !end_stream;
            }
            H2Event::Trailers { stream, .. } | H2Event::Abort { stream, .. } => {
                let open = streams.get_mut(stream).expect("end before head");
                assert!(*open, "second end");
                *open = false;
            }
            H2Event::Stopped(_) => stopped = true,
        }
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&n, rest)) = input.split_first() else {
        return;
    };
    let n = usize::from(n >> 1).min(rest.len());
    let (cuts, stream) = rest.split_at(n);
    let mut bytes = Vec::with_capacity(PREFACE.len() + stream.len());
    if input[0] & 1 == 0 {
        bytes.extend_from_slice(PREFACE);
    }
    bytes.extend_from_slice(stream);
    let cut = run(&bytes, cuts);
    let whole = run(&bytes, &[]);
    assert_eq!(cut, whole, "cutting the bytes changed the events");
});
