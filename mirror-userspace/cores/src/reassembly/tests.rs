//! Table tests for the reassembler's rules, and property tests against a slow byte-map
//! reference.

use super::*;
use proptest::prelude::*;
use std::collections::BTreeMap;

/// What came out, with adjacent data joined and adjacent gaps summed, so that the same stream
/// compares equal however it was cut.
#[derive(Debug, Default, PartialEq, Eq)]
struct Output(Vec<Piece>);

#[derive(Debug, PartialEq, Eq)]
enum Piece {
    Data(Vec<u8>),
    Gap(u64),
}

impl Output {
    fn take(&mut self, d: Delivery<'_>) {
        match (d, self.0.last_mut()) {
            (Delivery::Data(b), Some(Piece::Data(v))) => v.extend_from_slice(b),
            (Delivery::Data(b), _) if !b.is_empty() => self.0.push(Piece::Data(b.to_vec())),
            (Delivery::Data(_), _) => {}
            (Delivery::Gap(n), Some(Piece::Gap(g))) => *g += u64::from(n),
            (Delivery::Gap(n), _) => self.0.push(Piece::Gap(u64::from(n))),
        }
    }
}

fn run(
    isn: u32,
    window: u32,
    segs: &[(u32, &[u8])],
) -> (Output, Vec<Result<Pushed, ReassemblyError>>) {
    let mut r = Reassembler::new(isn, window);
    let mut out = Output::default();
    let results = segs
        .iter()
        .map(|&(off, data)| r.push(isn.wrapping_add(off), data, &mut |d| out.take(d)))
        .collect();
    (out, results)
}

fn data(s: &str) -> Piece {
    Piece::Data(s.as_bytes().to_vec())
}

#[test]
fn in_order_is_delivered_at_once() {
    let (out, _) = run(1000, 64, &[(0, b"GET "), (4, b"/ HTTP/1.1")]);
    assert_eq!(out.0, vec![data("GET / HTTP/1.1")]);
}

#[test]
fn reordered_is_held_then_delivered() {
    let (out, res) = run(7, 64, &[(6, b"world"), (0, b"hello ")]);
    assert_eq!(out.0, vec![data("hello world")]);
    assert!(res.iter().all(Result::is_ok));
}

#[test]
fn retransmissions_and_overlaps_are_deduplicated() {
    let (out, res) = run(
        0,
        64,
        &[
            (0, b"abcd"),
            (0, b"abcd"),
            (2, b"cdef"),
            (8, b"ij"),
            (7, b"hij"),
            (5, b"fgh"),
        ],
    );
    assert_eq!(out.0, vec![data("abcdefghij")]);
    let dup: u32 = res.iter().map(|r| r.unwrap().duplicate).sum();
    // abcd again (4), cd (2), ij (2) inside hij, h (1) inside fgh and f (1) already delivered.
    assert_eq!(dup, 10);
}

#[test]
fn sequence_numbers_wrap() {
    let isn = u32::MAX - 3;
    let (out, _) = run(isn, 64, &[(6, b"ghij"), (0, b"abcdef"), (10, b"k")]);
    assert_eq!(out.0, vec![data("abcdefghijk")]);
}

#[test]
fn segment_past_the_window_turns_the_oldest_hole_into_a_gap() {
    // "cd" is never captured; "ef" is held; "ghijklmnop" would end past a window of 8.
    let (out, res) = run(0, 8, &[(0, b"ab"), (4, b"ef"), (6, b"ghijklmnop")]);
    assert_eq!(out.0, vec![data("ab"), Piece::Gap(2), data("efghijklmnop")]);
    assert_eq!(res[2].unwrap().gap, 2);
}

#[test]
fn far_segment_skips_several_holes_only_as_far_as_needed() {
    // Holds "c" at 2 and "f" at 5 (window 8); then "hijk" at 7 needs the stream to reach 3.
    let (out, _) = run(0, 8, &[(2, b"c"), (5, b"f"), (7, b"hijk")]);
    assert_eq!(out.0, vec![Piece::Gap(2), data("c")]);
    // "hijklm" at 7 needs the stream to reach 5: [0,2) and [3,5) are lost, "c" and "f" come
    // out, and the segment is then held at offset 1 rather than losing [6,7) too.
    let (out, _) = run(0, 8, &[(2, b"c"), (5, b"f"), (7, b"hijklm"), (6, b"g")]);
    assert_eq!(
        out.0,
        vec![Piece::Gap(2), data("c"), Piece::Gap(2), data("fghijklm")]
    );
}

#[test]
fn segment_starting_beyond_the_window_is_refused_and_moves_nothing() {
    // One forged segment about 2^31 ahead (or just past the window) must not make the genuine
    // stream that follows look old.
    for far in [8u32, 1 << 31, (1 << 31) - 1, u32::MAX / 2 + 7] {
        let (out, res) = run(100, 8, &[(far, b"zz"), (0, b"ab"), (2, b"cd")]);
        assert_eq!(out.0, vec![data("abcd")], "{far}");
        assert!(res.iter().all(|r| r.unwrap().gap == 0));
        let refused: u32 = res
            .iter()
            .map(|r| r.unwrap().beyond_window + r.unwrap().duplicate)
            .sum();
        assert_eq!(refused, 2, "{far}");
    }
}

#[test]
fn overlapping_retransmits_keep_what_v1s_receive_queue_keeps() {
    // Held out of order: the first received wins between out-of-order segments, and the
    // in-order segment replaces them where it overlaps them.
    let (out, _) = run(0, 64, &[(4, b"EFGH"), (2, b"cdefgh"), (6, b"GHIJ")]);
    assert!(out.0.is_empty());
    let (out, _) = run(0, 64, &[(4, b"EFGH"), (2, b"CDefgh"), (0, b"abcdefghij")]);
    assert_eq!(out.0, vec![data("abcdefghij")]);
    // An in-order segment shorter than the held bytes replaces only what it covers.
    let (out, _) = run(0, 64, &[(4, b"EFGH"), (0, b"abcdef")]);
    assert_eq!(out.0, vec![data("abcdefGH")]);
    // Delivered first: a later retransmission never changes anything.
    let (out, res) = run(0, 64, &[(0, b"abcd"), (2, b"XXYY")]);
    assert_eq!(out.0, vec![data("abcdYY")]);
    assert_eq!(res[1].unwrap().duplicate, 2);
}

#[test]
fn a_forged_segment_ahead_of_the_client_is_replaced_by_the_genuine_one_before_release() {
    // Gated (v1's acknowledgements release): bytes in order at the receiver are kept, a forged
    // segment held ahead of them is overwritten when the genuine segment reaches it.
    let mut r = Reassembler::gated(100, 1 << 22);
    let mut out = Output::default();
    r.push(100, b"GET /a", &mut |d| out.take(d)).unwrap();
    r.push(110, b"FORGED", &mut |d| out.take(d)).unwrap();
    r.push(106, b" HTTP/1.1\r\n", &mut |d| out.take(d)).unwrap();
    // A retransmit of in-order bytes with other bytes changes nothing.
    r.push(100, b"PUT /b", &mut |d| out.take(d)).unwrap();
    assert!(out.0.is_empty());
    r.release_to(118, &mut |d| out.take(d));
    assert_eq!(out.0, vec![data("GET /a HTTP/1.1\r\n")]);
}

#[test]
fn gated_stream_delivers_only_what_was_released() {
    let mut r = Reassembler::gated(10, 64);
    let mut out = Output::default();
    r.push(10, b"abcdef", &mut |d| out.take(d)).unwrap();
    assert!(out.0.is_empty());
    r.release_to(13, &mut |d| out.take(d));
    assert_eq!(out.0, vec![data("abc")]);
    // A release point going back is ignored; one past held bytes waits for them.
    r.release_to(11, &mut |d| out.take(d));
    r.release_to(20, &mut |d| out.take(d));
    assert_eq!(out.0, vec![data("abcdef")]);
    assert!(r.hole_pending());
    r.push(16, b"ghij", &mut |d| out.take(d)).unwrap();
    assert_eq!(out.0, vec![data("abcdefghij")]);
    // Released past bytes that never came: the hole is given up only as far as released.
    r.push(25, b"pq", &mut |d| out.take(d)).unwrap();
    r.release_to(23, &mut |d| out.take(d));
    assert_eq!(r.skip_front_hole(&mut |d| out.take(d)), 3);
    assert!(!r.hole_pending());
    assert_eq!(r.next_seq(), 23);
    r.release_to(27, &mut |d| out.take(d));
    assert_eq!(out.0.len(), 2, "{out:?}");
}

#[test]
fn held_memory_follows_the_bytes_not_the_offset() {
    let mut r = Reassembler::new(0, 4 << 20);
    r.push((4 << 20) - 1, b"x", &mut |_| {}).unwrap();
    assert_eq!(r.memory(), PAGE_COST);
    for i in 1..MAX_RANGES as u32 {
        r.push(i * 300_000, b"y", &mut |_| {}).unwrap();
    }
    assert_eq!(r.memory(), MAX_RANGES * PAGE_COST);
}

#[test]
fn jump_to_resumes_the_stream_further_on() {
    let mut r = Reassembler::new(0, 64);
    let mut out = Output::default();
    r.push(10, b"k", &mut |d| out.take(d)).unwrap();
    assert_eq!(r.jump_to(1000, &mut |d| out.take(d)), 999);
    r.push(1000, b"z", &mut |d| out.take(d)).unwrap();
    assert_eq!(
        out.0,
        vec![Piece::Gap(10), data("k"), Piece::Gap(989), data("z")]
    );
}

#[test]
fn old_data_is_ignored_without_gap() {
    let (out, res) = run(0, 8, &[(0, b"abc"), (0, b"a"), (1, b"bc")]);
    assert_eq!(out.0, vec![data("abc")]);
    assert_eq!(res[2].unwrap().duplicate, 2);
}

#[test]
fn out_of_slots_drops_the_out_of_order_segment_but_never_the_next_expected() {
    let mut segs: Vec<(u32, &[u8])> = (1..=MAX_RANGES as u32)
        .map(|i| (i * 2, &b"x"[..]))
        .collect();
    segs.push((100, b"y"));
    segs.push((0, b"00"));
    let (out, res) = run(0, 1000, &segs);
    assert_eq!(res[MAX_RANGES], Err(ReassemblyError::NoSlot(TooManyRanges)));
    assert!(res[MAX_RANGES + 1].is_ok());
    assert_eq!(out.0, vec![data("00x")]);
}

#[test]
fn skip_front_hole_gives_up_on_the_hole() {
    let mut r = Reassembler::new(0, 64);
    let mut out = Output::default();
    r.push(3, b"def", &mut |d| out.take(d)).unwrap();
    assert!(r.has_held());
    assert_eq!(r.skip_front_hole(&mut |d| out.take(d)), 3);
    assert!(!r.has_held());
    assert_eq!(r.skip_front_hole(&mut |d| out.take(d)), 0);
    assert_eq!(out.0, vec![Piece::Gap(3), data("def")]);
    assert_eq!(r.next_seq(), 6);
}

#[test]
fn memory_is_released_once_the_hole_fills() {
    let mut r = Reassembler::new(0, 1 << 22);
    let big = vec![7u8; 1 << 20];
    r.push(1, &big, &mut |_| {}).unwrap();
    assert!(r.memory() > 1 << 20);
    r.push(0, b"x", &mut |_| {}).unwrap();
    assert_eq!(r.memory(), 0);
}

/// The reference: a map from absolute stream offset to byte, delivering by walking it one
/// byte at a time; between held bytes the first received for an offset is kept, and the
/// in-order segment's bytes replace held ones. Slow and obviously right.
struct Model {
    next: u64,
    held: BTreeMap<u64, u8>,
    window: u64,
    out: Output,
}

impl Model {
    fn push(&mut self, start: u64, data: &[u8]) {
        let mut start = start;
        let mut data = data;
        loop {
            if start < self.next {
                let skip = ((self.next - start) as usize).min(data.len());
                data = &data[skip..];
                start += skip as u64;
            }
            if data.is_empty() {
                return;
            }
            if start - self.next >= self.window {
                return;
            }
            if start == self.next {
                for &b in data {
                    self.held.remove(&self.next);
                    self.out.take(Delivery::Data(&[b]));
                    self.next += 1;
                }
                self.drain();
                return;
            }
            if start + data.len() as u64 - self.next <= self.window {
                for (i, &b) in data.iter().enumerate() {
                    self.held.entry(start + i as u64).or_insert(b);
                }
                return;
            }
            let to = self.held.keys().next().map_or(start, |&k| k.min(start));
            self.out.take(Delivery::Gap((to - self.next) as u32));
            self.next = to;
            self.drain();
        }
    }

    fn drain(&mut self) {
        while let Some(b) = self.held.remove(&self.next) {
            self.out.take(Delivery::Data(&[b]));
            self.next += 1;
        }
    }
}

fn stream(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any segmentation (with overlaps), reordering within what the slots can track, and
    /// retransmission of anything already sent gives back the original bytes, no gap.
    #[test]
    fn any_cut_reorder_and_duplication_reassembles(
        len in 1usize..3000,
        cuts in prop::collection::vec(1usize..200, 1..60),
        overlaps in prop::collection::vec(0usize..20, 60),
        perm_keys in prop::collection::vec(any::<u8>(), 60),
        dups in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), any::<u8>()), 0..20),
        isn in any::<u32>(),
    ) {
        let bytes = stream(len);
        let mut segs = Vec::new();
        let (mut at, mut i) = (0, 0);
        while at < len {
            let end = (at + cuts[i % cuts.len()]).min(len);
            let ext = (end + overlaps[i % overlaps.len()]).min(len);
            segs.push((at, ext));
            at = end;
            i += 1;
        }
        // Shuffle within groups of MAX_RANGES segments: at most that many holes at once.
        let mut order = Vec::new();
        for group in (0..segs.len()).collect::<Vec<_>>().chunks(MAX_RANGES) {
            let mut g = group.to_vec();
            g.sort_by_key(|&k| perm_keys[k % perm_keys.len()]);
            order.extend(g);
        }
        let mut sent: Vec<(usize, usize)> = Vec::new();
        let mut wire = Vec::new();
        for (n, &k) in order.iter().enumerate() {
            wire.push(segs[k]);
            sent.push(segs[k]);
            for &(idx, a, b) in &dups {
                if usize::from(a) % order.len() == n {
                    let (s, e) = *idx.get(&sent);
                    let (x, y) = (s + usize::from(b) % (e - s), e - usize::from(a) % (e - s));
                    if x < y {
                        wire.push((x, y));
                    }
                }
            }
        }
        let mut r = Reassembler::new(isn, 1 << 20);
        let mut out = Output::default();
        for &(s, e) in &wire {
            let res = r.push(isn.wrapping_add(s as u32), &bytes[s..e], &mut |d| out.take(d));
            prop_assert!(res.is_ok(), "{res:?}");
        }
        prop_assert_eq!(out.0, vec![Piece::Data(bytes)]);
        prop_assert!(!r.has_held());
        prop_assert_eq!(r.next_seq(), isn.wrapping_add(len as u32));
    }

    /// Arbitrary segments, a small window, and every segment carrying its own version of the
    /// bytes (retransmits differ): deliveries and gaps match the reference.
    #[test]
    fn matches_reference(
        segs in prop::collection::vec((0u64..600, 0usize..90), 1..80),
        window in 16u32..400,
        isn in prop_oneof![any::<u32>(), (u32::MAX - 300)..=u32::MAX],
    ) {
        let bytes = stream(700);
        let mut r = Reassembler::new(isn, window);
        let mut model = Model { next: 0, held: BTreeMap::new(), window: u64::from(window), out: Output::default() };
        let mut out = Output::default();
        for (n, &(start, len)) in segs.iter().enumerate() {
            let s = start as usize;
            let data: Vec<u8> = bytes[s..(s + len).min(bytes.len())].iter().map(|b| b ^ n as u8).collect();
            let data = &data[..];
            // Offsets far behind the stream would read as "ahead" through the wrap; the real
            // reassembler sees 32-bit sequence space, the model 64-bit offsets: keep within.
            let seq = isn.wrapping_add(start as u32);
            match r.push(seq, data, &mut |d| out.take(d)) {
                Ok(_) => model.push(start, data),
                Err(ReassemblyError::NoSlot(_)) => {}
            }
            prop_assert_eq!(&out, &model.out);
        }
        prop_assert_eq!(r.next_seq(), isn.wrapping_add(model.next as u32));
    }

    /// A 4 MiB window, segments anywhere in and beyond it (some far ahead), different bytes on
    /// every retransmit: output matches the reference, and held memory follows the bytes held
    /// (at most two partly used pages per held range), never their offsets.
    #[test]
    fn four_mib_window_matches_reference_with_sparse_memory(
        segs in prop::collection::vec((prop_oneof![0u64..(8 << 20), 0u64..4096], 0usize..3000), 1..40),
        isn in any::<u32>(),
    ) {
        let window = 4u32 << 20;
        let mut r = Reassembler::new(isn, window);
        let mut model = Model { next: 0, held: BTreeMap::new(), window: u64::from(window), out: Output::default() };
        let mut out = Output::default();
        for (n, &(start, len)) in segs.iter().enumerate() {
            let data: Vec<u8> = (0..len).map(|i| ((start as usize + i) % 251) as u8 ^ n as u8).collect();
            let seq = isn.wrapping_add(start as u32);
            match r.push(seq, &data, &mut |d| out.take(d)) {
                Ok(_) => model.push(start, &data),
                Err(ReassemblyError::NoSlot(_)) => {}
            }
            prop_assert_eq!(&out, &model.out);
            let held = model.held.len();
            prop_assert!(r.memory() <= (held / PAGE + 2 * MAX_RANGES) * PAGE_COST, "{} for {} held", r.memory(), held);
        }
    }
}
