//! The HTTP/1.1 `Upgrade: h2c` start: the upgrading request is stream 1, the frames after
//! the preface go on from stream 3, whatever the segmentation; a client that goes on in
//! HTTP/1.1 (v1 did not switch) stops the connection after stream 1.

use proptest::prelude::*;

use super::*;

/// `curl --http2 http://api:8080/up` with a body of `body` bytes (none: a GET).
fn upgrade_request(body: &[u8]) -> Vec<u8> {
    let (method, length) = if body.is_empty() {
        ("GET", String::new())
    } else {
        ("POST", format!("Content-Length: {}\r\n", body.len()))
    };
    let mut bytes = format!(
        "{method} /up HTTP/1.1\r\nHost: api:8080\r\nUser-Agent: curl/7.88.1\r\n\
         Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\
         HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n{length}\r\n"
    )
    .into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

fn stream_one(method: &str, body: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let length = body.len().to_string();
    let mut fields = vec![
        (":method", method),
        (":scheme", "http"),
        (":authority", "api:8080"),
        (":path", "/up"),
        ("user-agent", "curl/7.88.1"),
    ];
    if !body.is_empty() {
        fields.push(("content-length", &length));
    }
    pairs(&fields)
}

/// The upgrading request, then the preface, SETTINGS and two streams (3 with a body).
fn upgraded_connection(body: &[u8]) -> Vec<u8> {
    let mut bytes = upgrade_request(body);
    let mut w = Wire::new();
    w.headers(3, &get("/next"), false, 100);
    w.frame(DATA, END_STREAM, 3, b"three");
    w.headers(5, &get("/last"), true, 100);
    bytes.extend_from_slice(&w.bytes);
    bytes
}

#[test]
fn the_upgrading_request_is_stream_one_and_the_frames_go_on_after_it() {
    for body in [&b""[..], b"hello"] {
        let (events, conn) = feed(H2Config::default(), &upgraded_connection(body), &[]);
        let (streams, stopped) = rebuild(&events);
        assert_eq!(stopped, None);
        let method = if body.is_empty() { "GET" } else { "POST" };
        assert_eq!(streams[&1].fields, stream_one(method, body));
        assert_eq!(streams[&1].body, body);
        assert!(streams[&1].complete);
        assert_eq!(streams[&3].fields, get("/next"));
        assert_eq!(streams[&3].body, b"three");
        assert!(streams[&5].complete);
        let c = conn.counters();
        assert_eq!((c.upgrades, c.streams, c.streams_complete), (1, 3, 3));
        assert_eq!(conn.open_streams(), 0);
    }
}

#[test]
fn a_client_that_goes_on_in_http1_stops_after_stream_one() {
    let mut bytes = upgrade_request(b"");
    bytes.extend_from_slice(b"GET /next HTTP/1.1\r\nHost: api:8080\r\n\r\n");
    let (events, conn) = feed(H2Config::default(), &bytes, &[]);
    let (streams, stopped) = rebuild(&events);
    assert_eq!(stopped, Some(H2Stop::NotSwitched));
    assert_eq!(streams.keys().copied().collect::<Vec<_>>(), [1]);
    assert!(conn.is_stopped());
    // Only the first bytes of the preface so far: v1's answer is not known yet.
    let mut bytes = upgrade_request(b"");
    bytes.extend_from_slice(&PREFACE[..10]);
    let (events, conn) = feed(H2Config::default(), &bytes, &[]);
    assert_eq!(rebuild(&events).1, None);
    assert!(!conn.is_stopped());
}

#[test]
fn what_the_upgrade_path_refuses() {
    let stop = |bytes: &[u8]| rebuild(&feed(H2Config::default(), bytes, &[3]).0).1;
    // Plain HTTP/1.1, another protocol asked for, settings missing: not h2c.
    assert_eq!(
        stop(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
        Some(H2Stop::NotPreface)
    );
    assert_eq!(
        stop(b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nHTTP2-Settings: AAMAAABk\r\n\r\n"),
        Some(H2Stop::NotPreface)
    );
    // A head that never ends stops at the header block bound.
    let config = H2Config {
        max_header_block: 100,
        ..H2Config::default()
    };
    let long = [&b"GET / HTTP/1.1\r\nX: "[..], &[b'a'; 200]].concat();
    let (events, _) = feed(config, &long, &[10, 10]);
    assert_eq!(rebuild(&events).1, Some(H2Stop::NotPreface));
    // Chunked upgrade bodies are not followed.
    assert_eq!(
        stop(b"POST / HTTP/1.1\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABk\r\nTransfer-Encoding: chunked\r\n\r\n"),
        Some(H2Stop::Protocol)
    );
    // After the switch, stream 1 is the client's no more: new HEADERS on it break the order.
    let mut bytes = upgrade_request(b"");
    let mut w = Wire::new();
    w.headers(1, &get("/again"), true, 100);
    bytes.extend_from_slice(&w.bytes);
    assert_eq!(stop(&bytes), Some(H2Stop::Protocol));
    // An upgrade body over the stream bound: stream 1 is cut, the connection goes on.
    let config = H2Config {
        max_body_bytes: 3,
        ..H2Config::default()
    };
    let (events, _) = feed(config, &upgraded_connection(b"hello"), &[]);
    let (streams, stopped) = rebuild(&events);
    assert_eq!(stopped, None);
    assert_eq!(streams[&1].aborted, Some(StreamAbort::BodyTooLarge));
    assert!(streams[&5].complete);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// The upgraded connection cut into any segments yields what it yields in one piece.
    #[test]
    fn any_segmentation_of_an_upgraded_connection(
        body in prop::collection::vec(any::<u8>(), 0..2000),
        cuts in prop::collection::vec(1usize..64, 0..80),
    ) {
        let bytes = upgraded_connection(&body);
        let (events, conn) = feed(H2Config::default(), &bytes, &cuts);
        let (whole, _) = feed(H2Config::default(), &bytes, &[]);
        let (streams, stopped) = rebuild(&events);
        prop_assert_eq!(stopped, None);
        prop_assert_eq!(&streams[&1].body, &body);
        prop_assert!(streams.values().all(|s| s.complete));
        prop_assert_eq!(rebuild(&whole).0, streams);
        prop_assert_eq!(conn.counters().upgrades, 1);
    }

    /// Arbitrary bytes after an upgrading head: never a panic, memory within the bounds.
    #[test]
    fn hostile_bytes_after_an_upgrade_stay_bounded(
        bytes in prop::collection::vec(any::<u8>(), 0..4000),
        cuts in prop::collection::vec(1usize..200, 0..30),
    ) {
        let config = H2Config { max_frame_bytes: 1024, ..H2Config::default() };
        let mut wire = upgrade_request(b"");
        wire.extend_from_slice(&bytes);
        let (events, conn) = feed(config, &wire, &cuts);
        rebuild(&events);
        prop_assert!(conn.memory() <= 64 << 10);
    }
}
