//! Framer rules, table by table, and a property test over arbitrary splits of pipelined
//! requests.

use super::*;
use crate::outcome::Counters;
use crate::test_support::{request, Rebuilt};
use proptest::prelude::*;

mod upgrade;

struct Harness {
    framer: Framer,
    config: FramerConfig,
    sampler: Sampler,
    counters: Counters,
    events: Vec<FrameEvent>,
}

impl Harness {
    fn new() -> Self {
        Self::with(FramerConfig::default(), 100.0)
    }

    fn with(config: FramerConfig, percent: f64) -> Self {
        Self {
            framer: Framer::new(),
            config,
            sampler: Sampler::new(percent, 1).unwrap(),
            counters: Counters::default(),
            events: Vec::new(),
        }
    }

    fn env(&mut self) -> (Env<'_>, &mut Framer, &mut Vec<FrameEvent>) {
        (
            Env {
                config: &self.config,
                sampler: &mut self.sampler,
                counters: &mut self.counters,
            },
            &mut self.framer,
            &mut self.events,
        )
    }

    fn feed(&mut self, data: &[u8]) -> &mut Self {
        let (mut env, framer, events) = self.env();
        framer.data(data, &mut env, &mut |e| events.push(e));
        self
    }

    fn gap(&mut self) -> &mut Self {
        let (mut env, framer, events) = self.env();
        framer.gap(10, &mut env, &mut |e| events.push(e));
        self
    }

    fn rebuilt(&self) -> Rebuilt {
        let mut r = Rebuilt::default();
        for e in &self.events {
            r.take(e.clone());
        }
        r
    }

    fn complete(&self) -> Vec<String> {
        self.rebuilt()
            .complete
            .into_iter()
            .map(|r| String::from_utf8(r).unwrap())
            .collect()
    }
}

#[test]
fn host_rewrite_keeps_every_other_byte() {
    for (head, want) in [
        (
            "GET /a?b HTTP/1.1\r\nHost: httpbin:8000\r\n\r\n",
            "GET /a?b HTTP/1.1\r\nHost: httpbin-shadow:8000\r\n\r\n",
        ),
        (
            "GET / HTTP/1.1\r\nHOST:  api:80 \r\nX-A:b\r\n\r\n",
            "GET / HTTP/1.1\r\nHOST:  api-shadow:80 \r\nX-A:b\r\n\r\n",
        ),
        (
            "GET / HTTP/1.1\r\nx-first: 1\r\nhost:api\r\naccept: */*\r\n\r\n",
            "GET / HTTP/1.1\r\nx-first: 1\r\nhost:api-shadow\r\naccept: */*\r\n\r\n",
        ),
        (
            "GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: [::1]-shadow:80\r\n\r\n",
        ),
        (
            "GET / HTTP/1.1\r\nHost: [::1]\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: [::1]-shadow\r\n\r\n",
        ),
        (
            "GET / HTTP/1.1\r\nHost: [2001:db8::1]:8080\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: [2001:db8::1]-shadow:8080\r\n\r\n",
        ),
        (
            "GET / HTTP/1.1\r\nHost:\t10.0.0.1\t\r\n\r\n",
            "GET / HTTP/1.1\r\nHost:\t10.0.0.1-shadow\t\r\n\r\n",
        ),
        (
            "GET / HTTP/1.1\nHost: api\n\n",
            "GET / HTTP/1.1\nHost: api-shadow\n\n",
        ),
        // Empty or absent Host: forwarded unchanged (and counted).
        (
            "GET / HTTP/1.1\r\nHost:\r\n\r\n",
            "GET / HTTP/1.1\r\nHost:\r\n\r\n",
        ),
        (
            "GET / HTTP/1.1\r\nHost: \r\n\r\n",
            "GET / HTTP/1.1\r\nHost: \r\n\r\n",
        ),
        (
            "GET / HTTP/1.0\r\nAccept: */*\r\n\r\n",
            "GET / HTTP/1.0\r\nAccept: */*\r\n\r\n",
        ),
    ] {
        let mut h = Harness::new();
        h.feed(head.as_bytes());
        assert_eq!(h.complete(), vec![want.to_owned()], "{head:?}");
        let missing = u64::from(!want.contains("-shadow"));
        assert_eq!(h.counters.requests_host_missing, missing, "{head:?}");
    }
}

#[test]
fn rewrite_modes() {
    let head = "GET / HTTP/1.1\r\nHost: api:80\r\n\r\n";
    for (rewrite, want) in [
        (HostRewrite::Suffix(".v2".into()), "Host: api.v2:80"),
        (
            HostRewrite::Fixed("shadow.local".into()),
            "Host: shadow.local\r",
        ),
        (HostRewrite::Keep, "Host: api:80"),
    ] {
        let mut h = Harness::with(
            FramerConfig {
                rewrite,
                ..FramerConfig::default()
            },
            100.0,
        );
        h.feed(head.as_bytes());
        assert!(h.complete()[0].contains(want), "{:?}", h.complete());
    }
}

#[test]
fn pipelined_mixed_requests_in_one_segment() {
    let wire = "GET /1 HTTP/1.1\r\nHost: a\r\n\r\n\
                POST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello\
                POST /3 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n0\r\nX-T: 1\r\n\r\n\
                \r\nDELETE /4 HTTP/1.0\r\n\r\n";
    let mut h = Harness::new();
    h.feed(wire.as_bytes());
    assert_eq!(
        h.complete(),
        vec![
            "GET /1 HTTP/1.1\r\nHost: a-shadow\r\n\r\n",
            "POST /2 HTTP/1.1\r\nHost: a-shadow\r\nContent-Length: 5\r\n\r\nhello",
            "POST /3 HTTP/1.1\r\nHost: a-shadow\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n0\r\nX-T: 1\r\n\r\n",
            "DELETE /4 HTTP/1.0\r\n\r\n",
        ]
    );
    assert_eq!(h.counters.requests_mirrored, 4);
    let bytes: usize = h.complete().iter().map(String::len).sum();
    assert_eq!(h.counters.bytes_mirrored, bytes as u64);
}

#[test]
fn expect_100_continue_hands_the_head_on_before_the_body() {
    let mut h = Harness::new();
    h.feed(b"PUT /u HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n");
    assert!(matches!(h.events.as_slice(), [FrameEvent::Head(_)]));
    h.feed(b"data");
    assert_eq!(h.events[1], FrameEvent::Body(Bytes::from_static(b"data")));
    assert_eq!(h.events[2], FrameEvent::End);
}

#[test]
fn body_streams_in_constant_memory() {
    let mut h = Harness::new();
    h.feed(b"POST /big HTTP/1.1\r\nHost: a\r\nContent-Length: 1073741824\r\n\r\n");
    let piece = vec![b'x'; 1460];
    let mut handed = 0;
    for _ in 0..20_000 {
        h.feed(&piece);
        for e in h.events.drain(..) {
            if let FrameEvent::Body(b) = e {
                handed += b.len();
            }
        }
        assert!(
            h.framer.memory() <= 4 * MIN_RESERVE,
            "{}",
            h.framer.memory()
        );
    }
    assert_eq!(handed, 20_000 * 1460);
    // One big delivery is taken in pieces too.
    h.feed(&vec![b'y'; 1 << 20]);
    assert!(h.framer.memory() <= 2 * FEED_PIECE, "{}", h.framer.memory());
}

#[test]
fn stop_table() {
    let cfg = FramerConfig {
        max_header_bytes: 256,
        ..FramerConfig::default()
    };
    for (wire, reason, counter) in [
        (
            "GET /chat HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            StopReason::Upgrade,
            "stopped_upgrade",
        ),
        (
            "CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
            StopReason::Connect,
            "stopped_connect",
        ),
        (
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00",
            StopReason::H2c,
            "stopped_h2c",
        ),
        (
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            StopReason::MultipleHost,
            "stopped_multiple_host",
        ),
        (
            "GET /\r\n\r\n",
            StopReason::InvalidHead,
            "stopped_invalid_head",
        ),
        (
            "\x16\x03\x01\x02\x00\x01\x00\x01\x7c\x03\x03\r\n\r\n",
            StopReason::InvalidHead,
            "stopped_invalid_head",
        ),
        (
            "POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            StopReason::LengthAndEncoding,
            "stopped_length_and_encoding",
        ),
        (
            "POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            StopReason::BadContentLength,
            "stopped_bad_content_length",
        ),
        (
            "POST / HTTP/1.1\r\nTransfer-Encoding: identity\r\n\r\n",
            StopReason::BadTransferEncoding,
            "stopped_bad_transfer_encoding",
        ),
    ] {
        let mut h = Harness::with(cfg.clone(), 100.0);
        h.feed(wire.as_bytes())
            .feed(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(h.events, vec![FrameEvent::Stopped(reason)], "{wire:?}");
        assert!(h.framer.is_stopped());
        let counted: Vec<_> = h.counters.iter().filter(|c| c.1 > 0).collect();
        assert_eq!(counted, vec![(counter, 1)], "{wire:?}");
    }
}

#[test]
fn oversized_head_stops_without_waiting_for_its_end() {
    let cfg = FramerConfig {
        max_header_bytes: 100,
        ..FramerConfig::default()
    };
    let mut h = Harness::with(cfg.clone(), 100.0);
    h.feed(b"GET / HTTP/1.1\r\nX-Long: ");
    h.feed(&[b'v'; 100]);
    assert_eq!(
        h.events,
        vec![FrameEvent::Stopped(StopReason::HeaderTooLarge)]
    );
    assert_eq!(h.framer.memory(), 0);
    // Exactly at the cap is accepted.
    let head = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "v".repeat(100 - 23));
    assert_eq!(head.len(), 100);
    let mut h = Harness::with(cfg, 100.0);
    h.feed(head.as_bytes());
    assert_eq!(h.complete().len(), 1);
}

#[test]
fn bad_chunk_aborts_the_request_and_stops() {
    let mut h = Harness::new();
    h.feed(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel");
    h.feed(b"lo\r\nzz\r\n");
    let r = h.rebuilt();
    assert_eq!((r.aborted, r.stopped), (1, Some(StopReason::BadChunk)));
    assert_eq!(h.counters.requests_aborted_invalid, 1);
    assert_eq!(h.counters.stopped_bad_chunk, 1);
}

#[test]
fn gap_in_a_body_aborts_and_the_next_request_line_resumes() {
    let mut h = Harness::new();
    h.feed(b"POST /1 HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nhel");
    h.gap();
    h.feed(b"GET /not-a-request\r\nmore body\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n");
    let r = h.rebuilt();
    assert_eq!(r.aborted, 1);
    assert_eq!(
        h.complete(),
        vec!["GET /2 HTTP/1.1\r\nHost: a-shadow\r\n\r\n"]
    );
    assert_eq!(h.counters.requests_aborted_gap, 1);
    assert_eq!(h.counters.gaps, 1);
    assert!(h.counters.resync_skipped_bytes >= 30);
}

#[test]
fn gap_in_a_head_discards_it_silently() {
    let mut h = Harness::new();
    h.feed(b"GET /1 HTTP/1.1\r\nHo");
    h.gap();
    h.feed(b"st: a\r\n\r\nGET /2 HTTP/1.1\r\n\r\n");
    assert_eq!(h.complete(), vec!["GET /2 HTTP/1.1\r\n\r\n"]);
    assert_eq!(h.rebuilt().aborted, 0);
    assert_eq!(h.counters.heads_discarded, 1);
}

#[test]
fn resync_finds_a_method_split_across_deliveries() {
    let mut h = Harness::new();
    h.gap();
    h.feed(b"junk\r\nPO");
    h.feed(b"ST /x HTTP/1.1\r\nContent-Length: 1\r\n\r\nz");
    assert_eq!(
        h.complete(),
        vec!["POST /x HTTP/1.1\r\nContent-Length: 1\r\n\r\nz"]
    );
    assert_eq!(h.counters.resync_skipped_bytes, 6);
}

#[test]
fn resync_does_not_start_mid_line() {
    let mut h = Harness::new();
    h.gap();
    h.feed(b"xGET /a HTTP/1.1\r\n\r\n");
    assert!(h.complete().is_empty());
    h.feed(b"GET /b HTTP/1.1\r\n\r\n");
    assert_eq!(h.complete(), vec!["GET /b HTTP/1.1\r\n\r\n"]);
}

/// Rejected candidates before one blank line share its search: the later, valid candidate
/// still ends at that blank line, and a too-large run of candidates is skipped, not fatal.
#[test]
fn rejected_resync_candidates_resume_the_head_end_search() {
    let mut h = Harness::new();
    h.framer = Framer::resyncing();
    h.feed(b"GET \nPUT \nGET /ok HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(
        h.complete(),
        vec!["GET /ok HTTP/1.1\r\nHost: a-shadow\r\n\r\n"]
    );
    assert_eq!(h.counters.resync_skipped_bytes, 10);
    let mut h = Harness::with(
        FramerConfig {
            max_header_bytes: 64,
            ..FramerConfig::default()
        },
        100.0,
    );
    h.framer = Framer::resyncing();
    for _ in 0..100 {
        h.feed(b"GET \n");
    }
    h.feed(b"\nGET /b HTTP/1.1\r\n\r\n");
    assert_eq!(h.complete(), vec!["GET /b HTTP/1.1\r\n\r\n"]);
    assert_eq!(h.counters.resync_skipped_bytes, 501);
    assert!(!h.framer.is_stopped());
}

#[test]
fn mid_stream_framer_starts_at_a_request_line() {
    let mut h = Harness::new();
    h.framer = Framer::resyncing();
    h.feed(b"GET /a HTTP/1.1\r\n\r\n");
    assert_eq!(h.complete(), vec!["GET /a HTTP/1.1\r\n\r\n"]);
}

#[test]
fn sampled_out_requests_are_skipped_whole() {
    let wire = "POST /1 HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc\
                POST /2 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nq\r\n0\r\n\r\n";
    let mut h = Harness::with(FramerConfig::default(), 0.0);
    for b in wire.as_bytes().chunks(5) {
        h.feed(b);
    }
    assert!(h.events.is_empty());
    assert_eq!(h.counters.requests_sampled_out, 2);
    assert_eq!(h.counters.bytes_sampled_out, wire.len() as u64);
    // Framing stayed correct: the next request is found.
    h.framer = std::mem::take(&mut h.framer);
    h.sampler = Sampler::new(100.0, 0).unwrap();
    h.feed(b"GET /3 HTTP/1.1\r\n\r\n");
    assert_eq!(h.complete(), vec!["GET /3 HTTP/1.1\r\n\r\n"]);
}

#[test]
fn close_mid_request_aborts_it() {
    let mut h = Harness::new();
    h.feed(b"POST / HTTP/1.1\r\nContent-Length: 9\r\n\r\nab");
    let (mut env, framer, events) = h.env();
    framer.close(AbortReason::Closed, &mut env, &mut |e| events.push(e));
    assert_eq!(
        h.events.last(),
        Some(&FrameEvent::Abort(AbortReason::Closed))
    );
    assert_eq!(h.counters.requests_aborted_closed, 1);
    assert_eq!(h.counters.bytes_aborted, 40);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Any split of a pipeline of requests frames to the same requests, rewritten.
    #[test]
    fn any_split_frames_the_same_requests(
        reqs in prop::collection::vec(request(), 1..8),
        cuts in prop::collection::vec(1usize..64, 1..40),
    ) {
        let wire: Vec<u8> = reqs.iter().flat_map(|r| r.wire.clone()).collect();
        let mut h = Harness::new();
        let (mut at, mut i) = (0, 0);
        while at < wire.len() {
            let end = (at + cuts[i % cuts.len()]).min(wire.len());
            h.feed(&wire[at..end]);
            at = end;
            i += 1;
        }
        let want: Vec<Vec<u8>> = reqs.iter().map(|r| r.mirrored.clone()).collect();
        let r = h.rebuilt();
        prop_assert_eq!(r.stopped, None);
        prop_assert!(!r.in_request());
        prop_assert_eq!(r.complete, want);
        prop_assert_eq!(h.counters.requests_mirrored, reqs.len() as u64);
    }

    /// Sampling skips whole requests: what is mirrored is exactly a subsequence of them.
    #[test]
    fn sampling_mirrors_a_subsequence(
        reqs in prop::collection::vec(request(), 1..8),
        percent in 0.0f64..=100.0,
        seed in any::<u64>(),
    ) {
        let wire: Vec<u8> = reqs.iter().flat_map(|r| r.wire.clone()).collect();
        let mut h = Harness::with(FramerConfig::default(), percent);
        h.sampler = Sampler::new(percent, seed).unwrap();
        for piece in wire.chunks(7) {
            h.feed(piece);
        }
        let got = h.rebuilt().complete;
        let mut wanted = reqs.iter().map(|r| &r.mirrored);
        for g in &got {
            prop_assert!(wanted.any(|w| w == g), "not a subsequence");
        }
        prop_assert_eq!(h.counters.requests_mirrored + h.counters.requests_sampled_out, reqs.len() as u64);
    }

    /// Arbitrary bytes never panic, and whatever is handed out is well-ordered.
    #[test]
    fn arbitrary_bytes_never_panic(
        chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 0..20),
        gaps in prop::collection::vec(any::<bool>(), 20),
    ) {
        let mut h = Harness::new();
        for (c, g) in chunks.iter().zip(gaps) {
            h.feed(c);
            if g {
                h.gap();
            }
        }
        h.rebuilt();
    }
}
