//! The connection core over byte vectors: table tests of what stops a connection and what
//! drops a stream, and a property test that any interleaving of streams, cut into any
//! segments, yields every request exactly as it was encoded.

use std::collections::BTreeMap;

use loona_hpack::Encoder;
use proptest::prelude::*;

use super::frame::*;
use super::*;

mod upgrade;

/// Builds a client's byte stream frame by frame, HPACK-encoding with one dynamic table.
struct Wire {
    encoder: Encoder<'static>,
    bytes: Vec<u8>,
}

impl Wire {
    fn new() -> Wire {
        let mut bytes = PREFACE.to_vec();
        bytes.extend(frame_bytes(SETTINGS, 0, 0, &[0, 4, 0, 1, 0, 0]));
        Wire {
            encoder: Encoder::new(),
            bytes,
        }
    }

    fn frame(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) -> &mut Self {
        self.bytes.extend(frame_bytes(kind, flags, stream, payload));
        self
    }

    /// A header block in HEADERS and CONTINUATION frames of at most `piece` bytes.
    fn headers(&mut self, stream: u32, fields: &[(Vec<u8>, Vec<u8>)], end: bool, piece: usize) {
        let block = self
            .encoder
            .encode(fields.iter().map(|(n, v)| (&n[..], &v[..])));
        let pieces: Vec<&[u8]> = if block.is_empty() {
            vec![&[]]
        } else {
            block.chunks(piece.max(1)).collect()
        };
        for (i, part) in pieces.iter().enumerate() {
            let last = i + 1 == pieces.len();
            let mut flags = if last { END_HEADERS } else { 0 };
            let kind = if i == 0 { HEADERS } else { CONTINUATION };
            if i == 0 && end {
                flags |= END_STREAM;
            }
            self.frame(kind, flags, stream, part);
        }
    }
}

fn frame_bytes(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let header = FrameHeader {
        len: payload.len() as u32,
        kind,
        flags,
        stream,
    };
    let mut out = header.encode().to_vec();
    out.extend_from_slice(payload);
    out
}

fn pairs(fields: &[(&str, &str)]) -> Vec<(Vec<u8>, Vec<u8>)> {
    fields
        .iter()
        .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect()
}

/// One stream as the events rebuild it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Rebuilt {
    fields: Vec<(Vec<u8>, Vec<u8>)>,
    body: Vec<u8>,
    trailers: Option<Vec<(Vec<u8>, Vec<u8>)>>,
    complete: bool,
    aborted: Option<StreamAbort>,
}

fn owned(fields: &[Field]) -> Vec<(Vec<u8>, Vec<u8>)> {
    fields
        .iter()
        .map(|f| (f.name.to_vec(), f.value.to_vec()))
        .collect()
}

/// Per stream, what the events say; checks their order on the way.
fn rebuild(events: &[H2Event]) -> (BTreeMap<u32, Rebuilt>, Option<H2Stop>) {
    let mut streams: BTreeMap<u32, Rebuilt> = BTreeMap::new();
    let mut stopped = None;
    for e in events {
        assert!(stopped.is_none(), "event after Stopped: {e:?}");
        match e {
            H2Event::Head {
                stream,
                fields,
                end_stream,
            } => {
                assert!(!streams.contains_key(stream), "second head");
                streams.insert(
                    *stream,
                    Rebuilt {
                        fields: owned(fields),
                        complete: *end_stream,
                        ..Rebuilt::default()
                    },
                );
            }
            H2Event::Data {
                stream,
                data,
                end_stream,
            } => {
                let s = streams.get_mut(stream).expect("data before head");
                assert!(!s.complete && s.aborted.is_none());
                s.body.extend_from_slice(data);
                s.complete = *end_stream;
            }
            H2Event::Trailers { stream, fields } => {
                let s = streams.get_mut(stream).expect("trailers before head");
                assert!(!s.complete && s.aborted.is_none());
                s.trailers = Some(owned(fields));
                s.complete = true;
            }
            H2Event::Abort { stream, reason } => {
                let s = streams.get_mut(stream).expect("abort before head");
                assert!(!s.complete && s.aborted.is_none());
                s.aborted = Some(*reason);
            }
            H2Event::Stopped(reason) => stopped = Some(*reason),
        }
    }
    (streams, stopped)
}

fn feed(config: H2Config, bytes: &[u8], cuts: &[usize]) -> (Vec<H2Event>, ClientStream) {
    let mut conn = ClientStream::new(config);
    let mut events = Vec::new();
    let mut at = 0;
    for &cut in cuts {
        let end = (at + cut).min(bytes.len());
        conn.data(&bytes[at..end], &mut |e| events.push(e));
        at = end;
    }
    conn.data(&bytes[at..], &mut |e| events.push(e));
    (events, conn)
}

fn get(path: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    pairs(&[
        (":method", "GET"),
        (":scheme", "http"),
        (":authority", "api:8080"),
        (":path", path),
    ])
}

#[test]
fn requests_with_bodies_trailers_and_continuations_are_assembled() {
    let mut w = Wire::new();
    let post = pairs(&[
        (":method", "POST"),
        (":scheme", "http"),
        (":authority", "grpc.svc:50051"),
        (":path", "/pkg.Svc/Upload"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]);
    w.headers(1, &post, false, 5);
    w.frame(WINDOW_UPDATE, 0, 0, &[0, 1, 0, 0]);
    w.headers(3, &get("/b"), true, 100);
    w.frame(DATA, 0, 1, b"\x00\x00\x00\x00\x02hi");
    w.frame(PING, 0, 0, &[0; 8]);
    // Padded DATA: only the content counts.
    w.frame(DATA, PADDED, 1, b"\x03\x00\x00\x00\x00\x01!pad");
    w.headers(1, &pairs(&[("grpc-timeout", "1S")]), true, 100);
    let (events, conn) = feed(H2Config::default(), &w.bytes, &[]);
    let (streams, stopped) = rebuild(&events);
    assert_eq!(stopped, None);
    assert_eq!(streams[&1].fields, post);
    assert_eq!(
        streams[&1].body,
        b"\x00\x00\x00\x00\x02hi\x00\x00\x00\x00\x01!"
    );
    assert_eq!(streams[&1].trailers, Some(pairs(&[("grpc-timeout", "1S")])));
    assert!(streams[&1].complete && streams[&3].complete);
    assert_eq!(streams[&3].fields, get("/b"));
    let c = conn.counters();
    assert_eq!((c.streams, c.streams_complete), (2, 2));
    assert_eq!(conn.open_streams(), 0);
}

#[test]
fn what_cannot_be_followed_stops_the_connection() {
    let stop = |bytes: &[u8]| {
        let (events, conn) = feed(H2Config::default(), bytes, &[]);
        assert!(conn.is_stopped());
        rebuild(&events).1
    };
    // Joined after the preface, or HTTP/1.1: not the preface.
    assert_eq!(stop(b"GET / HTTP/1.1\r\n\r\n"), Some(H2Stop::NotPreface));
    let mut w = Wire::new();
    w.headers(1, &get("/a"), false, 100);
    let joined = w.bytes[PREFACE.len() + 15..].to_vec();
    assert_eq!(stop(&joined), Some(H2Stop::NotPreface));
    // A CONTINUATION out of place, a stream id going back, a PUSH_PROMISE.
    let mut w = Wire::new();
    w.frame(CONTINUATION, END_HEADERS, 1, b"");
    assert_eq!(stop(&w.bytes), Some(H2Stop::Protocol));
    let mut w = Wire::new();
    w.headers(5, &get("/a"), true, 100);
    w.headers(3, &get("/b"), true, 100);
    assert_eq!(stop(&w.bytes), Some(H2Stop::Protocol));
    let mut w = Wire::new();
    w.frame(PUSH_PROMISE, END_HEADERS, 1, &[0, 0, 0, 2]);
    assert_eq!(stop(&w.bytes), Some(H2Stop::Protocol));
    // Garbage HPACK (an index past both tables), an oversized frame.
    let mut w = Wire::new();
    w.frame(HEADERS, END_HEADERS, 1, &[0xff, 0xff, 0x7f]);
    assert_eq!(stop(&w.bytes), Some(H2Stop::Hpack));
    let mut w = Wire::new();
    w.bytes.extend_from_slice(
        &FrameHeader {
            len: 2 << 20,
            kind: DATA,
            flags: 0,
            stream: 1,
        }
        .encode(),
    );
    assert_eq!(stop(&w.bytes), Some(H2Stop::FrameTooLarge));
    // A gap: the dynamic table is lost with it.
    let mut conn = ClientStream::new(H2Config::default());
    let mut events = Vec::new();
    conn.data(PREFACE, &mut |e| events.push(e));
    conn.gap(10, &mut |e| events.push(e));
    assert_eq!(events, [H2Event::Stopped(H2Stop::Gap)]);
}

#[test]
fn streams_over_a_bound_are_dropped_alone_and_the_table_stays_in_step() {
    let config = H2Config {
        max_header_list: 300,
        max_streams: 1,
        max_body_bytes: 10,
        ..H2Config::default()
    };
    let mut w = Wire::new();
    let mut big = get("/big");
    big.push((b"x-big".to_vec(), vec![b'v'; 400]));
    // Stream 1 is over the header bound, but its block still feeds the dynamic table.
    w.headers(1, &big, true, 100);
    w.headers(3, &get("/open"), false, 100);
    // Over the stream bound while 3 is open.
    w.headers(5, &get("/extra"), false, 100);
    w.frame(DATA, END_STREAM, 5, b"ignored");
    w.frame(DATA, 0, 3, b"0123456789x");
    // The client resets a stream after its head.
    w.headers(7, &get("/reset"), false, 100);
    w.frame(RST_STREAM, 0, 7, &[0, 0, 0, 8]);
    // Decoded with entries the earlier blocks added.
    w.headers(9, &big[..4], true, 100);
    let (events, conn) = feed(config, &w.bytes, &[]);
    let (streams, stopped) = rebuild(&events);
    assert_eq!(stopped, None);
    assert_eq!(streams.keys().copied().collect::<Vec<_>>(), [3, 7, 9]);
    assert_eq!(streams[&3].aborted, Some(StreamAbort::BodyTooLarge));
    assert_eq!(streams[&7].aborted, Some(StreamAbort::Reset));
    assert_eq!(streams[&9].fields, get("/big"));
    let c = conn.counters();
    assert_eq!(
        (
            c.streams_over_headers,
            c.streams_over_limit,
            c.streams_cut,
            c.streams_reset
        ),
        (1, 1, 1, 1)
    );
    assert_eq!(c.data_bytes_ignored, 7 + 11);
}

/// One generated request.
#[derive(Clone, Debug)]
struct Req {
    fields: Vec<(Vec<u8>, Vec<u8>)>,
    body: Vec<u8>,
    trailers: Option<Vec<(Vec<u8>, Vec<u8>)>>,
}

fn req() -> impl Strategy<Value = Req> {
    let name = prop::sample::select(vec!["content-type", "x-id", "accept", "te", "x-trace"]);
    let value = "[ -~]{0,40}";
    let extra = prop::collection::vec((name, value), 0..4);
    let path = "/[a-z/]{0,20}";
    let method = prop::sample::select(vec!["GET", "POST", "PUT"]);
    let trailer = prop::option::of(prop::collection::vec(
        ("grpc-[a-z]{1,8}", "[ -~]{0,20}"),
        1..3,
    ));
    (
        method,
        path,
        extra,
        prop::collection::vec(any::<u8>(), 0..3000),
        trailer,
    )
        .prop_map(|(method, path, extra, body, trailers)| {
            let mut fields = pairs(&[
                (":method", method),
                (":scheme", "http"),
                (":authority", "svc:80"),
                (":path", &path),
            ]);
            fields.extend(
                extra
                    .into_iter()
                    .map(|(n, v)| (n.as_bytes().to_vec(), v.into_bytes())),
            );
            let owned = |t: Vec<(String, String)>| {
                t.into_iter()
                    .map(|(n, v)| (n.into_bytes(), v.into_bytes()))
                    .collect()
            };
            Req {
                fields,
                body,
                trailers: trailers.map(owned),
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Streams interleaved at random (header blocks split into CONTINUATIONs, bodies into
    /// DATA frames), the whole connection cut into random segments: every stream comes out
    /// as it went in, the same as when fed in one piece.
    #[test]
    fn any_interleaving_and_segmentation_yields_every_request(
        reqs in prop::collection::vec(req(), 1..6),
        order in prop::collection::vec(any::<prop::sample::Index>(), 0..40),
        piece in 1usize..64,
        data_piece in 1usize..700,
        cuts in prop::collection::vec(1usize..300, 0..60),
    ) {
        // Per stream, its frames in order; then interleave keeping each stream's order.
        enum Step { Headers(usize), Data(usize, usize, usize), Trailers(usize) }
        let mut queues: Vec<Vec<Step>> = reqs.iter().enumerate().map(|(i, r)| {
            let mut q = vec![Step::Headers(i)];
            let mut at = 0;
            while at < r.body.len() {
                let end = (at + data_piece).min(r.body.len());
                q.push(Step::Data(i, at, end));
                at = end;
            }
            if r.trailers.is_some() { q.push(Step::Trailers(i)); }
            q.reverse();
            q
        }).collect();
        let mut schedule = Vec::new();
        let mut picks = order.iter();
        while queues.iter().any(|q| !q.is_empty()) {
            let live: Vec<usize> = (0..queues.len()).filter(|&i| !queues[i].is_empty()).collect();
            let pick = picks.next().map_or(live[0], |p| live[p.index(live.len())]);
            // Streams open in id order: a stream's head waits for every earlier one's.
            let first_unopened = queues.iter().position(|q| matches!(q.last(), Some(Step::Headers(_))));
            let pick = match (queues[pick].last(), first_unopened) {
                (Some(Step::Headers(_)), Some(first)) => first,
                _ => pick,
            };
            if let Some(step) = queues[pick].pop() { schedule.push(step); }
        }
        let id = |i: usize| 2 * i as u32 + 1;
        let mut w = Wire::new();
        for step in schedule {
            match step {
                Step::Headers(i) => {
                    let r = &reqs[i];
                    let end = r.body.is_empty() && r.trailers.is_none();
                    w.headers(id(i), &r.fields, end, piece);
                }
                Step::Data(i, from, to) => {
                    let r = &reqs[i];
                    let end = to == r.body.len() && r.trailers.is_none();
                    w.frame(DATA, if end { END_STREAM } else { 0 }, id(i), &r.body[from..to]);
                }
                Step::Trailers(i) => {
                    let t = reqs[i].trailers.clone().unwrap_or_default();
                    w.headers(id(i), &t, true, piece);
                }
            }
        }
        let (events, conn) = feed(H2Config::default(), &w.bytes, &cuts);
        let (whole, _) = feed(H2Config::default(), &w.bytes, &[]);
        let (streams, stopped) = rebuild(&events);
        prop_assert_eq!(stopped, None);
        prop_assert_eq!(streams.len(), reqs.len());
        for (i, r) in reqs.iter().enumerate() {
            let s = &streams[&id(i)];
            prop_assert_eq!(&s.fields, &r.fields);
            prop_assert_eq!(&s.body, &r.body);
            prop_assert_eq!(&s.trailers, &r.trailers);
            prop_assert!(s.complete);
        }
        prop_assert_eq!(rebuild(&whole).0, streams);
        prop_assert_eq!(conn.open_streams(), 0);
        prop_assert!(conn.memory() <= 64 << 10, "{}", conn.memory());
    }

    /// Arbitrary bytes after the preface, cut anywhere: never a panic, memory within the
    /// bounds, and once stopped nothing more.
    #[test]
    fn hostile_bytes_stay_bounded(
        bytes in prop::collection::vec(any::<u8>(), 0..4000),
        cuts in prop::collection::vec(1usize..200, 0..30),
    ) {
        let config = H2Config { max_frame_bytes: 1024, ..H2Config::default() };
        let mut wire = PREFACE.to_vec();
        wire.extend_from_slice(&bytes);
        let (events, conn) = feed(config, &wire, &cuts);
        rebuild(&events);
        prop_assert!(conn.memory() <= 64 << 10);
        prop_assert!(conn.open_streams() <= 256);
    }
}
