//! Forged bytes held out of order, later overlapped by the genuine ones, under ack-gated
//! admission and the default 4 MiB window: what reaches the framer is exactly the stream v1
//! acknowledged under the documented overlap rule (what v1's receive queue keeps: the
//! in-order segment replaces bytes held out of order), checked against a byte-map reference
//! of a receiver that follows it. Forged bytes planted ahead of the client and covered by the
//! genuine segment that reaches them never reach the framer. Forged bytes a receiver would
//! queue do: those that arrive at the in-order point before the genuine ones, and those that
//! extend past the genuine segment filling the hole before them (Linux's out-of-order queue
//! makes them in order then). If v1 never got them (anti-spoofing after the hook dropped
//! them), v2 gets them once v1 acknowledges those offsets: the limit of a capture that sees
//! v1's direction without its payload.
//!
//! The forged bytes are the genuine ones upper-cased, so every version of the stream frames
//! as the same requests (methods, `HTTP/1.1` and digits do not change; header names are
//! case-insensitive) and the reference can say which version of each byte v2 must get.

use super::*;
use crate::reassembly::MAX_RANGES;

const ACK: u8 = TcpFlags::ACK;
const S_ISN: u32 = 90_000;
const WINDOW: usize = 4 << 20;
/// Forged segments at most: with the contiguous range each needs at most one of the
/// reassembler's range slots, so none is dropped for want of one (that rule has its own tests).
const MAX_FORGED: usize = MAX_RANGES - 2;

/// Requests `(path, body length, seed)` as the client sends them: lower-case path and body.
fn wire(requests: &[(String, usize, u64)]) -> (Vec<u8>, Vec<usize>) {
    let mut wire = Vec::new();
    let mut ends = Vec::new();
    for (path, body, seed) in requests {
        if *body == 0 {
            wire.extend_from_slice(
                format!("GET /{path} HTTP/1.1\r\nHost: api:80\r\n\r\n").as_bytes(),
            );
        } else {
            wire.extend_from_slice(
                format!("POST /{path} HTTP/1.1\r\nHost: api:80\r\nContent-Length: {body}\r\n\r\n")
                    .as_bytes(),
            );
            let mut x = *seed | 1;
            wire.extend((0..*body).map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                b'a' + (x % 26) as u8
            }));
        }
        ends.push(wire.len());
    }
    (wire, ends)
}

/// A request of the reference stream as the pipeline hands it on: the Host line (the second,
/// `Host: api:80` in any case) with `-shadow` after its name.
fn mirrored(request: &[u8]) -> Vec<u8> {
    let host_line = request
        .iter()
        .position(|&b| b == b'\n')
        .expect("request line")
        + 1;
    let at = host_line + "Host: api".len();
    [&request[..at], b"-shadow", &request[at..]].concat()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Genuine segments in order, each acknowledged by v1, with forged segments (upper-cased
    /// versions of the same bytes, or anything up to the window's end) inserted anywhere:
    /// mostly just ahead of what the client has sent, so that genuine segments later overlap
    /// them, some anywhere in the 4 MiB window. v1 is modelled as a receiver that got every
    /// segment: in-order bytes are kept, an in-order segment replaces held out-of-order bytes,
    /// and between out-of-order versions the first wins; it acknowledges only the genuine
    /// stream's bytes.
    #[test]
    fn the_framer_gets_what_v1s_receive_queue_kept(
        requests in prop::collection::vec(
            ("[a-z]{1,12}", prop_oneof![Just(0usize), 1usize..4096, 100_000usize..400_000], any::<u64>()),
            1..5,
        ),
        cut in prop_oneof![Just(536usize), Just(1448), 100usize..20_000, Just(65_536)],
        forged in prop::collection::vec(
            (any::<prop::sample::Index>(), any::<bool>(), 0usize..8192, 0usize..WINDOW, 1usize..4096),
            0..=MAX_FORGED,
        ),
        isn in any::<u32>(),
    ) {
        let (genuine, ends) = wire(&requests);
        let upper = |at: usize| genuine.get(at).map_or(b'X', u8::to_ascii_uppercase);
        let segments: Vec<(usize, usize)> = (0..genuine.len())
            .step_by(cut)
            .map(|start| (start, (start + cut).min(genuine.len())))
            .collect();
        // Forged segments by the genuine segment they precede: (start, bytes).
        let mut before: Vec<Vec<(usize, Vec<u8>)>> = vec![Vec::new(); segments.len() + 1];
        for (at, near, ahead, anywhere, len) in &forged {
            let at = at.index(segments.len() + 1);
            let sent = segments.get(at).map_or(genuine.len(), |s| s.0);
            let start = if *near { sent + ahead } else { *anywhere }.min(WINDOW - len);
            before[at].push((start, (start..start + len).map(upper).collect()));
        }
        let mut h = H::new(PipelineConfig::default());
        h.handshake(1, isn, S_ISN);
        let base = isn.wrapping_add(1);
        let seq = |offset: usize| base.wrapping_add(offset as u32);
        // v1's first window update, scaled (8 MiB): the SYN-ACK's 65,535 bytes are not.
        h.server(0, 1, S_ISN + 1, seq(0), 65535, ACK);
        // The reference receiver: each byte of the genuine stream as v1 keeps it, and the end
        // of its in-order bytes.
        let mut kept: Vec<Option<u8>> = vec![None; genuine.len()];
        let mut in_order = 0usize;
        let mut receive = |start: usize, bytes: &[u8]| {
            let at_front = start <= in_order;
            let len = kept.len();
            for (at, byte) in (start..).zip(bytes).take_while(|(at, _)| *at < len) {
                if at < in_order {
                    continue;
                }
                if at_front {
                    kept[at] = Some(*byte);
                } else {
                    kept[at].get_or_insert(*byte);
                }
            }
            while kept.get(in_order).is_some_and(Option::is_some) {
                in_order += 1;
            }
        };
        for (i, segment) in segments.iter().chain([&(genuine.len(), genuine.len())]).enumerate() {
            for (start, bytes) in &before[i] {
                h.client(1, seq(*start), S_ISN + 1, ACK, bytes);
                receive(*start, bytes);
            }
            let (start, end) = *segment;
            if start == end {
                continue;
            }
            h.client(1, seq(start), S_ISN + 1, ACK, &genuine[start..end]);
            receive(start, &genuine[start..end]);
            h.server(0, 1, S_ISN + 1, seq(end), 65535, ACK);
        }
        let stream: Vec<u8> = kept.into_iter().map(|b| b.expect("every genuine byte arrived")).collect();
        let mut from = 0;
        let want: Vec<Vec<u8>> = ends
            .iter()
            .map(|&end| {
                let request = mirrored(&stream[from..end]);
                from = end;
                request
            })
            .collect();
        let got = h.flows().remove(&key(1)).map(|f| f.0.complete).unwrap_or_default();
        prop_assert_eq!(got.len(), want.len());
        for (i, (got, want)) in got.iter().zip(&want).enumerate() {
            prop_assert!(got == want, "request {} differs from what v1 kept", i);
        }
        let c = h.p.counters();
        prop_assert_eq!(c.segments_dropped_no_slot, 0);
        // Forged bytes past the genuine stream were held, never acknowledged, never framed.
        h.expire(1000 * SEC);
        prop_assert_eq!((h.p.flow_count(), h.p.buffered_bytes()), (0, 0));
    }
}
