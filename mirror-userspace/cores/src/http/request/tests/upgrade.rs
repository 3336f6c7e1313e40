//! `Upgrade: h2c` requests: held until the client's next bytes say whether v1 switched; the
//! connection preface hands everything from the request on to the h2c core, anything else
//! frames the request as an ordinary HTTP/1.1 one.

use super::*;

const UPGRADE: &str =
    "GET /up HTTP/1.1\r\nHost: api:8080\r\nConnection: Upgrade, HTTP2-Settings\r\n\
    Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n";

fn rewritten(head: &str) -> String {
    head.replace("Host: api:8080", "Host: api-shadow:8080")
}

fn suffix() -> FramerConfig {
    FramerConfig {
        rewrite: crate::rewrite::HostRewrite::Suffix("-shadow".into()),
        ..FramerConfig::default()
    }
}

/// The upgrade, the preface and a SETTINGS frame, then some frame bytes.
fn switched() -> Vec<u8> {
    let mut wire = UPGRADE.as_bytes().to_vec();
    wire.extend_from_slice(crate::http2::frame::PREFACE);
    wire.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    wire.extend_from_slice(&[0, 0, 2, 1, 5, 0, 0, 0, 3, 0x82, 0x84]);
    wire
}

#[test]
fn the_preface_after_the_upgrade_hands_the_connection_on_as_it_was_sent() {
    let mut h = Harness::with(suffix(), 100.0);
    let wire = switched();
    h.feed(&wire[..UPGRADE.len() + 5]);
    assert!(h.events.is_empty(), "{:?}", h.events);
    h.feed(&wire[UPGRADE.len() + 5..]);
    h.feed(b"more");
    let r = h.rebuilt();
    assert!(r.complete.is_empty() && r.stopped.is_none());
    // Unrewritten: the h2c core takes the request as stream 1 and rewrites `:authority`.
    assert_eq!(r.h2c, [&wire[..], b"more"].concat());
    assert_eq!(h.counters.upgrades_h2c, 1);
    assert_eq!(h.counters.stream_bytes, wire.len() as u64 + 4);
    assert_eq!(h.counters.requests_mirrored, 0);
    // A gap: HTTP/2 cannot be resynchronised.
    h.gap();
    assert_eq!(h.rebuilt().stopped, Some(StopReason::StreamGap));
}

#[test]
fn a_client_that_goes_on_in_http1_has_its_upgrade_mirrored_as_http1() {
    let mut h = Harness::with(suffix(), 100.0);
    let next = "GET /next HTTP/1.1\r\nHost: api:8080\r\n\r\n";
    h.feed(UPGRADE.as_bytes());
    assert!(h.events.is_empty());
    h.feed(next.as_bytes());
    assert_eq!(h.complete(), [rewritten(UPGRADE), rewritten(next)]);
    assert_eq!(h.counters.upgrades_h2c_refused, 1);
    assert_eq!(h.counters.requests_mirrored, 2);

    // With a body; the client closes without another byte: still an HTTP/1.1 request.
    let post = UPGRADE
        .replace("GET", "POST")
        .replace("\r\n\r\n", "\r\nContent-Length: 3\r\n\r\n");
    let mut h = Harness::with(suffix(), 100.0);
    h.feed(post.as_bytes()).feed(b"ab");
    let (mut env, framer, events) = h.env();
    framer.close(AbortReason::Closed, &mut env, &mut |e| events.push(e));
    assert!(h.complete().is_empty());
    assert_eq!(h.counters.heads_discarded, 1);
    let mut h = Harness::with(suffix(), 100.0);
    h.feed(post.as_bytes()).feed(b"abc");
    let (mut env, framer, events) = h.env();
    framer.close(AbortReason::Closed, &mut env, &mut |e| events.push(e));
    assert_eq!(h.complete(), [rewritten(&post) + "abc"]);
}

#[test]
fn upgrades_that_cannot_be_held_stop_and_sampled_out_ones_are_skipped() {
    let big = UPGRADE.replace(
        "\r\n\r\n",
        &format!("\r\nContent-Length: {}\r\n\r\n", MAX_UPGRADE_BODY + 1),
    );
    let mut h = Harness::new();
    h.feed(big.as_bytes());
    assert_eq!(h.rebuilt().stopped, Some(StopReason::Upgrade));
    assert_eq!(h.counters.stopped_upgrade, 1);

    let mut h = Harness::with(FramerConfig::default(), 0.0);
    h.feed(&switched()).feed(b"more");
    assert!(h.events.is_empty());
    assert_eq!(h.counters.upgrades_h2c, 1);
    assert_eq!(h.counters.requests_sampled_out, 1);
    assert_eq!(h.framer.memory(), 0);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Requests before the upgrade are framed as usual, and the upgrade hands on the same
    /// bytes whatever the segmentation.
    #[test]
    fn any_split_of_requests_then_an_upgrade(
        reqs in prop::collection::vec(request(), 0..4),
        cuts in prop::collection::vec(1usize..40, 1..60),
    ) {
        let tail = switched();
        let mut wire: Vec<u8> = reqs.iter().flat_map(|r| r.wire.clone()).collect();
        wire.extend_from_slice(&tail);
        let mut h = Harness::new();
        let (mut at, mut i) = (0, 0);
        while at < wire.len() {
            let end = (at + cuts[i % cuts.len()]).min(wire.len());
            h.feed(&wire[at..end]);
            at = end;
            i += 1;
        }
        let r = h.rebuilt();
        let want: Vec<Vec<u8>> = reqs.iter().map(|r| r.mirrored.clone()).collect();
        prop_assert_eq!(r.stopped, None);
        prop_assert_eq!(r.complete, want);
        prop_assert_eq!(r.h2c, tail);
    }
}
