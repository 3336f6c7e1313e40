//! The relay against scripted v2s on real loopback sockets: each test asserts every outcome
//! counter that is not zero, and what v2 received.

use std::{
    net::SocketAddr,
    sync::{atomic::Ordering::Relaxed, Arc, Mutex},
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpSocket, TcpStream},
};

use super::*;
use crate::observe::Source;

/// What the scripted v2 does on each connection.
#[derive(Clone, Copy, Debug)]
enum Script {
    /// Answers each request once it is whole; closes the connection after `close_after`
    /// answers (saying `Connection: close` in the last one if `say_close`).
    Answer {
        close_after: Option<usize>,
        say_close: bool,
    },
    /// Takes `chunk` bytes at a time with `pause` in between, and answers each request.
    SlowReader { chunk: usize, pause: Duration },
    /// Answers with a body of this many bytes as soon as it has a head, before reading the
    /// request's body.
    EarlyResponse(usize),
    /// Reads this many bytes, then resets the connection.
    ResetAfter(usize),
    /// Answers one request with `Connection: close`, and closes this long after (as a
    /// worker doing its bookkeeping first).
    CloseLate(Duration),
    /// Answers this many requests, takes the next one whole (v2 received it), and resets the
    /// connection instead of answering it.
    AnswerThenReset(usize),
    /// Accepts and reads nothing.
    Stall,
    /// Answers only once this many whole requests (without bodies) have arrived, then all of
    /// them: only a relay that pipelines gets anything answered.
    Batches(usize),
}

impl Script {
    /// Answers every request and keeps the connection open.
    const KEEP_ALIVE: Script = Script::Answer {
        close_after: None,
        say_close: false,
    };
    /// Answers one request per connection, saying `Connection: close`.
    const CLOSE_EACH: Script = Script::Answer {
        close_after: Some(1),
        say_close: true,
    };
}

/// A scripted v2 on loopback; `received` lists the paths of the requests it took whole.
struct V2 {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<String>>>,
    connections: Arc<std::sync::atomic::AtomicUsize>,
    /// Most connections open at once.
    most_open: Arc<std::sync::atomic::AtomicUsize>,
}

impl V2 {
    async fn start(script: Script) -> V2 {
        let socket = TcpSocket::new_v4().unwrap();
        if let Script::SlowReader { chunk, .. } = script {
            // Small buffers, so that what v2 has not read yet is mostly still to be written.
            socket.set_recv_buffer_size(chunk as u32).unwrap();
        }
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(1024).unwrap();
        let v2 = V2 {
            addr: listener.local_addr().unwrap(),
            received: Arc::default(),
            connections: Arc::default(),
            most_open: Arc::default(),
        };
        let received = Arc::clone(&v2.received);
        let connections = Arc::clone(&v2.connections);
        let most_open = Arc::clone(&v2.most_open);
        let open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                // Each answer leaves at once (no Nagle delay): what the relay is told, and
                // what a reset of v2's own may drop unsent, does not depend on timing.
                stream.set_nodelay(true).unwrap();
                connections.fetch_add(1, Relaxed);
                most_open.fetch_max(open.fetch_add(1, Relaxed) + 1, Relaxed);
                let (received, open) = (Arc::clone(&received), Arc::clone(&open));
                tokio::spawn(async move {
                    serve(stream, script, received).await;
                    open.fetch_sub(1, Relaxed);
                });
            }
        });
        v2
    }

    fn received(&self) -> Vec<String> {
        self.received.lock().unwrap().clone()
    }
}

async fn serve(mut stream: TcpStream, script: Script, received: Arc<Mutex<Vec<String>>>) {
    if let Script::Batches(size) = script {
        return serve_batches(stream, size, received).await;
    }
    let mut buf = Vec::new();
    let mut answered = 0;
    let read_size = match script {
        Script::SlowReader { chunk, .. } => chunk,
        _ => 64 * 1024,
    };
    let mut chunk = vec![0u8; read_size];
    loop {
        let head_end = loop {
            if let Some(at) = find(&buf, b"\r\n\r\n") {
                break at + 4;
            }
            if !read_more(&mut stream, &mut buf, &mut chunk, script).await {
                return;
            }
            if reset_if_past_limit(&stream, &buf, script) {
                return;
            }
        };
        if matches!(script, Script::Stall) {
            std::future::pending::<()>().await;
        }
        let (path, body_len) = parse_head(&buf[..head_end]);
        if let Script::EarlyResponse(len) = script {
            // Received once its head is: the answer goes out before the body is read, and
            // the relay may count it before this task gets back from writing.
            received.lock().unwrap().push(path.clone());
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n");
            stream.write_all(head.as_bytes()).await.unwrap();
            stream.write_all(&vec![b'x'; len]).await.unwrap();
        }
        while buf.len() < head_end + body_len {
            if !read_more(&mut stream, &mut buf, &mut chunk, script).await {
                return;
            }
            if reset_if_past_limit(&stream, &buf, script) {
                return;
            }
        }
        buf.drain(..head_end + body_len);
        if !matches!(script, Script::EarlyResponse(_)) {
            received.lock().unwrap().push(path);
        }
        if matches!(script, Script::AnswerThenReset(limit) if answered == limit) {
            let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
            return;
        }
        answered += 1;
        let (closing, say_close) = match script {
            Script::Answer {
                close_after,
                say_close,
            } => (close_after == Some(answered), say_close),
            Script::CloseLate(_) => (true, true),
            _ => (false, false),
        };
        if !matches!(script, Script::EarlyResponse(_)) {
            let connection = if closing && say_close {
                "Connection: close\r\n"
            } else {
                ""
            };
            let response = format!("HTTP/1.1 200 OK\r\n{connection}Content-Length: 2\r\n\r\nok");
            if stream.write_all(response.as_bytes()).await.is_err() {
                return;
            }
        }
        if closing {
            if let Script::CloseLate(pause) = script {
                tokio::time::sleep(pause).await;
            }
            return;
        }
    }
}

async fn serve_batches(mut stream: TcpStream, size: usize, received: Arc<Mutex<Vec<String>>>) {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let mut heads = Vec::new();
        while heads.len() < size {
            match find(&buf, b"\r\n\r\n") {
                Some(at) => {
                    heads.push(parse_head(&buf[..at + 4]).0);
                    buf.drain(..at + 4);
                }
                None => match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                },
            }
        }
        let answers = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".repeat(size);
        received.lock().unwrap().extend(heads);
        if stream.write_all(answers.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// `ResetAfter(limit)`: once `limit` bytes arrived (head or body, however the reads split
/// them), close with a RST instead of answering.
fn reset_if_past_limit(stream: &TcpStream, buf: &[u8], script: Script) -> bool {
    let Script::ResetAfter(limit) = script else {
        return false;
    };
    if buf.len() < limit {
        return false;
    }
    let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
    true
}

async fn read_more(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    chunk: &mut [u8],
    script: Script,
) -> bool {
    if let Script::SlowReader { pause, .. } = script {
        tokio::time::sleep(pause).await;
    }
    match stream.read(chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The path and Content-Length of a request head (the tests' own requests).
fn parse_head(head: &[u8]) -> (String, usize) {
    let text = std::str::from_utf8(head).unwrap();
    let path = text.split(' ').nth(1).unwrap().to_owned();
    let len = text
        .lines()
        .find_map(|line| line.strip_prefix("Content-Length: "))
        .map_or(0, |len| len.trim().parse().unwrap());
    (path, len)
}

fn config(addr: SocketAddr) -> RelayConfig {
    RelayConfig {
        shadow: addr.to_string(),
        connect_timeout: Duration::from_millis(500),
        response_timeout: Duration::from_secs(1),
        ..RelayConfig::default()
    }
}

fn flow(port: u16) -> FlowKey {
    FlowKey {
        src: SocketAddr::from(([10, 0, 0, 1], port)),
        dst: SocketAddr::from(([10, 0, 0, 2], 80)),
    }
}

/// Hands one whole request (a POST if `body` is not zero) to the relay.
fn request(relay: &mut Relay, flow: FlowKey, path: &str, body: usize) {
    let head = if body == 0 {
        format!("GET {path} HTTP/1.1\r\nHost: v2\r\n\r\n")
    } else {
        format!("POST {path} HTTP/1.1\r\nHost: v2\r\nContent-Length: {body}\r\n\r\n")
    };
    relay.request_head(flow, Bytes::from(head));
    let data = Bytes::from(vec![b'b'; body]);
    let mut at = 0;
    while at < body {
        let end = (at + 64 * 1024).min(body);
        relay.request_body(flow, data.slice(at..end));
        at = end;
    }
    relay.request_end(flow);
}

/// Waits until every request has an outcome (or `limit` passes).
async fn settle(relay: &Relay, limit: Duration) {
    let stats = relay.stats();
    let deadline = tokio::time::Instant::now() + limit;
    while stats.pending() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The outcome counters that are not zero, as the status line reads them (a family's total,
/// then its members: `dropped`, `dropped_shadow_down`).
fn outcomes(stats: &Arc<RelayStats>) -> Vec<(&'static str, u64)> {
    let registry = crate::observe::Registry::default();
    registry.register("relay", Arc::clone(stats) as Arc<dyn Source>);
    let line = crate::observe::status::status_line(&registry);
    line.split_whitespace()
        .filter_map(|field| field.split_once('='))
        .take_while(|(name, _)| *name != "resent")
        .filter_map(|(name, value)| Some((name, value.parse::<u64>().ok()?)))
        .filter(|(_, value)| *value > 0)
        // A test's few names, kept for the comparisons' `&'static str`.
        .map(|(name, value)| (&*Box::leak(name.to_owned().into_boxed_str()), value))
        .collect()
}

fn paths(prefix: &str, count: usize) -> Vec<String> {
    (0..count).map(|i| format!("/{prefix}-{i}")).collect()
}

/// Hands one request for each of `paths`, in order, on one client connection.
fn requests(relay: &mut Relay, flow: FlowKey, paths: &[String], body: usize) {
    for path in paths {
        request(relay, flow, path, body);
    }
}

/// Hands one request for each of `paths` on a client connection of its own, which then ends.
fn one_per_connection(relay: &mut Relay, paths: &[String]) {
    for (port, path) in (3000..).zip(paths) {
        request(relay, flow(port), path, 0);
        relay.flow_end(flow(port));
    }
}

/// The outcomes of `count` requests that were all answered 2xx.
fn all_answered(count: u64) -> [(&'static str, u64); 3] {
    [
        ("requests", count),
        ("answered", count),
        ("answered_2xx", count),
    ]
}

/// A relay (with the tests' `config`) and the scripted v2 it replays to: what most tests
/// start from. Its fields stay readable after `relay` is moved out to be shut down.
struct Bed {
    v2: V2,
    relay: Relay,
    stats: Arc<RelayStats>,
}

impl Bed {
    async fn start(script: Script) -> Bed {
        Bed::tuned(script, |config| config).await
    }

    /// As `start`, with `tune` changing the config first.
    async fn tuned(script: Script, tune: impl FnOnce(RelayConfig) -> RelayConfig) -> Bed {
        let v2 = V2::start(script).await;
        let relay = Relay::new(tune(config(v2.addr)));
        let stats = relay.stats();
        Bed { v2, relay, stats }
    }

    /// Waits until every request has an outcome (or `limit` passes): the outcomes then.
    async fn settled(&self, limit: Duration) -> Vec<(&'static str, u64)> {
        settle(&self.relay, limit).await;
        outcomes(&self.stats)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_requests_are_answered_in_order_on_one_connection() {
    let mut bed = Bed::start(Script::KEEP_ALIVE).await;
    for path in paths("ka", 20) {
        request(&mut bed.relay, flow(1), &path, 100);
    }
    assert_eq!(bed.settled(Duration::from_secs(10)).await, all_answered(20));
    assert_eq!(bed.v2.received(), paths("ka", 20));
    assert_eq!(bed.v2.connections.load(Relaxed), 1);
    assert_eq!(bed.stats.connections_reused.load(Relaxed), 19);
    bed.relay.shutdown(Duration::from_secs(1)).await;
    assert_eq!(bed.stats.shadow_connections.load(Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_requests_of_a_client_connection_are_pipelined() {
    let mut bed = Bed::start(Script::Batches(4)).await;
    requests(&mut bed.relay, flow(3), &paths("pipelined", 24), 0);
    assert_eq!(bed.settled(Duration::from_secs(10)).await, all_answered(24));
    assert_eq!(bed.v2.received(), paths("pipelined", 24));
    assert_eq!(bed.v2.connections.load(Relaxed), 1);
    assert_eq!(bed.stats.resent.load(Relaxed), 0);
    assert_eq!(bed.stats.connections_reused.load(Relaxed), 23);
    bed.relay.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_closing_after_every_response_still_gets_every_request_once_in_order() {
    // v2 says `Connection: close` in every answer: what the relay pipelined behind the first
    // one comes back, and from then on each connection carries one request. (A v2 that does
    // not say so: below.)
    let mut bed = Bed::start(Script::CLOSE_EACH).await;
    requests(&mut bed.relay, flow(2), &paths("close", 200), 0);
    assert_eq!(
        bed.settled(Duration::from_secs(20)).await,
        all_answered(200)
    );
    assert_eq!(bed.v2.received(), paths("close", 200));
    bed.relay.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_connections_wait_for_answers_instead_of_flooding_v2() {
    // v2 closes after every response: each request needs a new connection, and 300 client
    // connections have one each at once.
    let mut bed = Bed::start(Script::CLOSE_EACH).await;
    one_per_connection(&mut bed.relay, &paths("burst", 300));
    assert_eq!(
        bed.settled(Duration::from_secs(20)).await,
        all_answered(300)
    );
    // 64 wait for a first answer at most; v2 may not have closed an answered one yet when
    // the next opens. Without the bound, all 300 open at once.
    let most_open = bed.v2.most_open.load(Relaxed);
    assert!(most_open < 100, "{most_open} connections open at once");
    let mut received = bed.v2.received();
    received.sort();
    let mut expected = paths("burst", 300);
    expected.sort();
    assert_eq!(received, expected);
    bed.relay.shutdown(Duration::from_secs(1)).await;
}

/// The value of counter `name` in `outcomes` (0 if not there).
fn count(outcomes: &[(&str, u64)], name: &str) -> u64 {
    outcomes
        .iter()
        .find(|(n, _)| *n == name)
        .map_or(0, |(_, value)| *value)
}

/// Hands `per_client` requests of `clients` client connections to the relay, interleaved.
fn interleaved(relay: &mut Relay, clients: u16, per_client: usize) {
    for i in 0..per_client {
        for client in 0..clients {
            let path = format!("/c{client}-{i}");
            request(relay, flow(10 + client), &path, 10);
        }
    }
}

/// What v2 received holds no request twice, and each client connection's in order.
fn assert_once_each_in_order(received: &[String], clients: u16, per_client: usize) {
    let mut distinct = received.to_vec();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), received.len(), "{received:?}");
    for client in 0..clients {
        let prefix = format!("/c{client}-");
        let own: Vec<_> = received.iter().filter(|p| p.starts_with(&prefix)).collect();
        let expected = paths(&format!("c{client}"), per_client);
        let mut sorted = own.clone();
        sorted.sort_by_key(|path| expected.iter().position(|e| e == *path));
        assert_eq!(own, sorted, "client {client} out of order: {received:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_closing_after_a_few_responses_gets_the_rest_on_new_connections() {
    // v2 says `Connection: close` in its 3rd answer: what the relay pipelined behind it was
    // not taken up, whether the close comes as a FIN or, with those requests unread, as a
    // reset.
    let mut bed = Bed::start(Script::Answer {
        close_after: Some(3),
        say_close: true,
    })
    .await;
    interleaved(&mut bed.relay, 3, 10);
    assert_eq!(bed.settled(Duration::from_secs(10)).await, all_answered(30));
    let received = bed.v2.received();
    assert_eq!(received.len(), 30, "{received:?}");
    assert_once_each_in_order(&received, 3, 10);
    bed.relay.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_closing_unannounced_on_pipelined_requests_never_gets_one_twice() {
    // v2 closes after 1 or 3 answers without saying so. Requests the relay pipelined behind
    // the last come back (a FIN: v2 took none up) or are lost (a reset, which cannot tell
    // them from one v2 processed): never twice. Once v2 is known to close after k, a
    // connection carries k, and only a rare race (the next request reaching v2 before its
    // close) loses one more.
    for close_after in [1, 3] {
        let mut bed = Bed::start(Script::Answer {
            close_after: Some(close_after),
            say_close: false,
        })
        .await;
        interleaved(&mut bed.relay, 3, 10);
        let got = bed.settled(Duration::from_secs(10)).await;
        let answered = count(&got, "answered");
        assert_eq!(count(&got, "requests"), 30, "{got:?}");
        assert_eq!(answered + count(&got, "unanswered_reset"), 30, "{got:?}");
        let received = bed.v2.received();
        // v2 answered each request it took whole (each answer leaves before its close).
        assert_eq!(received.len() as u64, answered, "{got:?} {received:?}");
        assert_once_each_in_order(&received, 3, 10);
        bed.relay.shutdown(Duration::from_secs(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_after_answers_is_no_proof_and_nothing_is_sent_twice() {
    // On each connection v2 answers 2 requests, takes the 3rd whole and resets: the relay
    // sees two answers and a reset. The 3rd was processed; a relay that took the reset for
    // "v2 took nothing after its last answer" writes it again.
    let mut bed = Bed::start(Script::AnswerThenReset(2)).await;
    interleaved(&mut bed.relay, 1, 10);
    let got = bed.settled(Duration::from_secs(10)).await;
    let (answered, reset) = (count(&got, "answered"), count(&got, "unanswered_reset"));
    assert_eq!(count(&got, "requests"), 10, "{got:?}");
    assert_eq!(answered + reset, 10, "{got:?}");
    assert!(reset >= 1, "{got:?}");
    assert_eq!(bed.stats.resent.load(Relaxed), 0);
    let received = bed.v2.received();
    assert_once_each_in_order(&received, 1, 10);
    // The one v2 took on the first reset connection, besides those it answered; once v2 is
    // known to close after 2, a connection gets a 3rd only as a probe, once a second.
    let took = received.len() as u64;
    assert!(
        answered < took && took <= answered + reset,
        "{got:?} {received:?}"
    );
    bed.relay.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_v2_said_it_closes_is_never_written_to_again() {
    // 300 client connections of one request each, v2 closing 20 ms after every response
    // with `Connection: close`: a connection that said close is neither kept nor pooled, so
    // no request is written onto one v2 is closing (and then written again).
    // What is counted here is writes, not time: room for a machine under load.
    let mut bed = Bed::tuned(Script::CloseLate(Duration::from_millis(20)), |config| {
        RelayConfig {
            response_timeout: Duration::from_secs(10),
            ..config
        }
    })
    .await;
    one_per_connection(&mut bed.relay, &paths("once", 300));
    assert_eq!(
        bed.settled(Duration::from_secs(20)).await,
        all_answered(300)
    );
    assert_eq!(bed.stats.resent.load(Relaxed), 0);
    assert_eq!(bed.v2.received().len(), 300);
    assert_eq!(bed.v2.connections.load(Relaxed), 300);
    bed.relay.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_connections_one_after_another_share_pooled_connections() {
    let mut bed = Bed::start(Script::KEEP_ALIVE).await;
    for i in 0..50 {
        request(&mut bed.relay, flow(1000 + i), &format!("/short-{i}"), 0);
        bed.relay.flow_end(flow(1000 + i));
        settle(&bed.relay, Duration::from_secs(5)).await;
    }
    assert_eq!(outcomes(&bed.stats), all_answered(50));
    // Each flow's task gives the connection back when it ends; the next one takes it.
    let connections = bed.v2.connections.load(Relaxed);
    assert!(connections <= 2, "{connections} connections");
    bed.relay.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_gets_a_large_upload_whole() {
    // 32 MiB at 256 KiB per 20 ms takes over 2.5 s: longer than the 1 s write timeout,
    // which measures progress, not the whole write (what the kernel buffers, up to 4 MiB,
    // takes v2 about 0.3 s to read at the end).
    let mut bed = Bed::start(Script::SlowReader {
        chunk: 256 * 1024,
        pause: Duration::from_millis(20),
    })
    .await;
    request(&mut bed.relay, flow(3), "/upload", 32 << 20);
    assert_eq!(bed.settled(Duration::from_secs(10)).await, all_answered(1));
    assert_eq!(bed.v2.received(), ["/upload"]);
    bed.relay.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v2_that_stops_reading_times_the_request_out() {
    let mut bed = Bed::start(Script::Stall).await;
    request(&mut bed.relay, flow(4), "/stuck", 8 << 20);
    request(&mut bed.relay, flow(4), "/stuck-get", 0);
    assert_eq!(
        bed.settled(Duration::from_secs(10)).await,
        [
            ("requests", 2),
            ("unanswered", 2),
            ("unanswered_timeout", 2)
        ]
    );
    assert_eq!(bed.relay.shared.budget.used(), 0);
    bed.relay.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_large_response_during_an_upload_does_not_stall_either_side() {
    let mut bed = Bed::start(Script::EarlyResponse(8 << 20)).await;
    request(&mut bed.relay, flow(5), "/both-ways", 8 << 20);
    request(&mut bed.relay, flow(5), "/next", 0);
    assert_eq!(bed.settled(Duration::from_secs(10)).await, all_answered(2));
    assert_eq!(bed.v2.received(), ["/both-ways", "/next"]);
    bed.relay.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_mid_request_is_unanswered_and_not_sent_again() {
    let mut bed = Bed::start(Script::ResetAfter(1000)).await;
    request(&mut bed.relay, flow(6), "/reset", 1 << 20);
    // The RST reaches the writer (EPIPE, "closed") or the reader (ECONNRESET, "reset") first,
    // as the scheduler has it: either way the request is unanswered, once, and not re-sent.
    let got = bed.settled(Duration::from_secs(10)).await;
    assert!(
        got == [("requests", 1), ("unanswered", 1), ("unanswered_reset", 1)]
            || got == [("requests", 1), ("unanswered", 1), ("unanswered_closed", 1)],
        "{got:?}"
    );
    assert_eq!(bed.stats.resent.load(Relaxed), 0);
    assert_eq!(bed.v2.connections.load(Relaxed), 1);
    bed.relay.shutdown(Duration::from_secs(1)).await;
}

/// Hands 8 requests on one client connection to a relay replaying to `addr`, where v2 never
/// takes a connection, and asserts that all 8 are dropped as `shadow_down`: the relay.
async fn eight_taken_for_down(addr: SocketAddr) -> Relay {
    let mut relay = Relay::new(config(addr));
    requests(&mut relay, flow(7), &paths("unheard", 8), 0);
    settle(&relay, Duration::from_secs(10)).await;
    assert_eq!(
        outcomes(&relay.stats()),
        [("requests", 8), ("dropped", 8), ("dropped_shadow_down", 8)]
    );
    relay
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_v2_drops_requests_as_shadow_down_and_backs_off() {
    let addr = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    };
    let relay = eight_taken_for_down(addr).await;
    let stats = relay.stats();
    // Five refusals in a row, then no more connects during the back-off.
    assert_eq!(stats.connect_failures(ConnectFailure::Refused), 5);
    relay.shutdown(Duration::from_secs(1)).await;
}

/// A listener whose accept queue (backlog 1) is full: a connect to it times out.
async fn full_accept_queue() -> (TcpListener, Vec<TcpStream>) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut queued = Vec::new();
    // The kernel completes handshakes until the queue holds more than the backlog.
    for _ in 0..3 {
        if let Ok(Ok(stream)) =
            tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr)).await
        {
            queued.push(stream);
        }
    }
    (listener, queued)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_accept_queue_while_v2_answers_is_busy_not_down() {
    // v2 serves one keep-alive connection and accepts nothing more: every other connect
    // finds its accept queue full, while v2 keeps answering.
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Arc::<Mutex<Vec<String>>>::default();
    let served = Arc::clone(&received);
    let accepting = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        tokio::spawn(serve(stream, Script::KEEP_ALIVE, served));
        std::future::pending::<()>().await;
    });
    let mut relay = Relay::new(config(addr));
    request(&mut relay, flow(1), "/alive-0", 0);
    settle(&relay, Duration::from_secs(5)).await;
    for i in 0..20 {
        request(&mut relay, flow(2000 + i), &format!("/queued-{i}"), 0);
    }
    // An answer every 100 ms on the served connection, past the connect timeout (500 ms).
    for i in 1..=15 {
        request(&mut relay, flow(1), &format!("/alive-{i}"), 0);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    settle(&relay, Duration::from_secs(10)).await;
    let stats = relay.stats();
    // The connects the kernel completed into the queue carried a request nobody read.
    let queued = stats.connections_opened.load(Relaxed) - 1;
    assert!((1..=3).contains(&queued), "{queued} connects completed");
    let busy = 20 - queued;
    assert_eq!(
        outcomes(&stats),
        [
            ("requests", 36),
            ("answered", 16),
            ("answered_2xx", 16),
            ("unanswered", queued),
            ("unanswered_timeout", queued),
            ("dropped", busy),
            ("dropped_shadow_busy", busy),
        ]
    );
    assert_eq!(stats.connect_failures(ConnectFailure::TimedOut), busy);
    assert!(!relay.shared.pool.shadow_down());
    assert_eq!(received.lock().unwrap().len(), 16);
    relay.shutdown(Duration::from_secs(1)).await;
    accepting.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_timeouts_with_no_sign_of_life_take_v2_for_down() {
    let (listener, _queued) = full_accept_queue().await;
    let relay = eight_taken_for_down(listener.local_addr().unwrap()).await;
    let stats = relay.stats();
    // Five timeouts in a row, then no more connects during the back-off.
    assert_eq!(stats.connect_failures(ConnectFailure::TimedOut), 5);
    assert_eq!(stats.connections_opened.load(Relaxed), 0);
    relay.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborted_queue_full_and_shutdown_requests_are_dropped_by_reason() {
    let mut bed = Bed::tuned(Script::Stall, |config| RelayConfig {
        queue_depth: 2,
        response_timeout: Duration::from_secs(30),
        ..config
    })
    .await;
    let relay = &mut bed.relay;
    // Aborted: head and some body, then the capture gives up on it.
    relay.request_head(
        flow(8),
        Bytes::from_static(b"POST /gap HTTP/1.1\r\nContent-Length: 100\r\n\r\n"),
    );
    relay.request_body(flow(8), Bytes::from_static(b"partial"));
    relay.request_abort(flow(8));
    // Queue full: more pieces than the queue holds, handed over at once.
    relay.request_head(
        flow(9),
        Bytes::from_static(b"POST /big HTTP/1.1\r\nContent-Length: 50\r\n\r\n"),
    );
    for _ in 0..50 {
        relay.request_body(flow(9), Bytes::from_static(b"x"));
    }
    relay.request_end(flow(9));
    // Shutdown: a whole request v2 never answers.
    request(relay, flow(10), "/never", 0);
    bed.relay.shutdown(Duration::from_millis(300)).await;
    assert_eq!(
        outcomes(&bed.stats),
        [
            ("requests", 3),
            ("dropped", 3),
            ("dropped_queue_full", 1),
            ("dropped_aborted", 1),
            ("dropped_shutdown", 1)
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_byte_budget_drops_what_does_not_fit_and_gets_it_all_back() {
    let mut bed = Bed::tuned(Script::KEEP_ALIVE, |config| RelayConfig {
        max_inflight_bytes: 100 << 10,
        ..config
    })
    .await;
    request(&mut bed.relay, flow(11), "/too-big", 1 << 20);
    request(&mut bed.relay, flow(11), "/fits", 10);
    assert_eq!(
        bed.settled(Duration::from_secs(5)).await,
        [
            ("requests", 2),
            ("answered", 1),
            ("answered_2xx", 1),
            ("dropped", 1),
            ("dropped_queue_full", 1)
        ]
    );
    assert_eq!(bed.v2.received(), ["/fits"]);
    assert_eq!(bed.relay.shared.budget.used(), 0);
    bed.relay.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_larger_than_the_budget_streams_through_it() {
    let budget = 2 << 20;
    let mut bed = Bed::tuned(Script::KEEP_ALIVE, |config| RelayConfig {
        max_inflight_bytes: budget,
        ..config
    })
    .await;
    let relay = &mut bed.relay;
    let body = 8 << 20;
    relay.request_head(
        flow(12),
        Bytes::from(format!(
            "POST /large HTTP/1.1\r\nContent-Length: {body}\r\n\r\n"
        )),
    );
    // As the capture would: pieces arrive as the client sends them, not all at once.
    let piece = Bytes::from(vec![b'b'; 64 * 1024]);
    let feed = async {
        for _ in 0..body / piece.len() {
            while relay.shared.budget.used() + piece.len() > budget {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            relay.request_body(flow(12), piece.clone());
        }
    };
    tokio::time::timeout(Duration::from_secs(10), feed)
        .await
        .expect("the budget comes back as the request is written");
    relay.request_end(flow(12));
    assert_eq!(bed.settled(Duration::from_secs(10)).await, all_answered(1));
    assert_eq!(bed.v2.received(), ["/large"]);
    bed.relay.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_requests_in_flight_be_answered() {
    let mut bed = Bed::start(Script::CLOSE_EACH).await;
    one_per_connection(&mut bed.relay, &paths("last", 51));
    bed.relay.shutdown(Duration::from_secs(2)).await;
    assert_eq!(outcomes(&bed.stats), all_answered(51));
    assert_eq!(bed.v2.received().len(), 51);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_over_its_byte_share_loses_its_own_requests_only() {
    // A v2 that never answers: nothing hands bytes back while the requests are handed over,
    // so what each pod may hold is exact.
    let mut bed = Bed::tuned(Script::Stall, |config| RelayConfig {
        max_inflight_bytes: 1 << 20,
        max_inflight_bytes_per_source: 100 << 10,
        ..config
    })
    .await;
    let from = |pod: u8, port: u16| FlowKey {
        src: SocketAddr::from(([10, 0, 1, pod], port)),
        ..flow(port)
    };
    // Pod 1 hands over 2 MiB at once: it may borrow beyond its share all but the headroom
    // (64 KiB of 1 MiB). Each request holds 20 KiB of body and a head charged 256 bytes, so
    // 47 fit in 960 KiB and 53 are its own loss. Pod 2, after it, still gets its 3 requests
    // in: the headroom is kept for it.
    for (port, path) in (100..).zip(paths("noisy", 100)) {
        request(&mut bed.relay, from(1, port), &path, 20 << 10);
    }
    for (port, path) in (200..).zip(paths("quiet", 3)) {
        request(&mut bed.relay, from(2, port), &path, 20 << 10);
    }
    assert_eq!(
        bed.settled(Duration::from_secs(10)).await,
        [
            ("requests", 103),
            ("unanswered", 50),
            ("unanswered_timeout", 50),
            ("dropped", 53),
            ("dropped_source_budget", 53)
        ]
    );
    assert_eq!(bed.relay.shared.budget.used(), 0);
    bed.relay.shutdown(Duration::from_secs(1)).await;
}

/// Waits until `done` holds (or five seconds pass), looking every 10 ms.
async fn wait_until(done: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !done() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_over_its_connection_share_loses_its_own_requests_only() {
    let mut bed = Bed::tuned(Script::KEEP_ALIVE, |config| RelayConfig {
        max_connections: 8,
        max_connections_per_source: 4,
        ..config
    })
    .await;
    let (noisy, quiet) = (
        std::net::IpAddr::from([10, 0, 1, 1]),
        std::net::IpAddr::from([10, 0, 1, 2]),
    );
    let from = |source: std::net::IpAddr, port: u16| FlowKey {
        src: SocketAddr::new(source, port),
        ..flow(port)
    };
    // Pod 1 opens 10 client connections that stay open, so each keeps its connection to v2:
    // 4 get one, the other 6 lose their request. Pod 2's 4, after them, all get theirs
    // although the global cap has only 4 left.
    for (port, path) in (100..).zip(paths("noisy", 10)) {
        request(&mut bed.relay, from(noisy, port), &path, 0);
    }
    settle(&bed.relay, Duration::from_secs(10)).await;
    for (port, path) in (200..).zip(paths("quiet", 4)) {
        request(&mut bed.relay, from(quiet, port), &path, 0);
    }
    assert_eq!(
        bed.settled(Duration::from_secs(10)).await,
        [
            ("requests", 14),
            ("answered", 8),
            ("answered_2xx", 8),
            ("dropped", 6),
            ("dropped_source_connections", 6),
        ]
    );
    let shared = Arc::clone(&bed.relay.shared);
    let pool = &shared.pool;
    assert_eq!((pool.in_use_by(noisy), pool.in_use_by(quiet)), (4, 4));
    let mut quiet_received: Vec<String> = bed
        .v2
        .received()
        .into_iter()
        .filter(|path| path.starts_with("/quiet"))
        .collect();
    quiet_received.sort();
    assert_eq!(quiet_received, paths("quiet", 4));
    assert_eq!(bed.v2.received().len(), 8);
    assert_eq!(bed.v2.connections.load(Relaxed), 8);
    // Once pod 1's client connections end, their connections go idle and count for nobody;
    // its next one takes an idle one.
    for port in 100..110 {
        bed.relay.flow_end(from(noisy, port));
    }
    wait_until(|| pool.in_use_by(noisy) == 0).await;
    assert_eq!((pool.in_use_by(noisy), pool.sources_in_use()), (0, 1));
    request(&mut bed.relay, from(noisy, 300), "/noisy-again", 0);
    assert_eq!(
        bed.settled(Duration::from_secs(10)).await,
        [
            ("requests", 15),
            ("answered", 9),
            ("answered_2xx", 9),
            ("dropped", 6),
            ("dropped_source_connections", 6),
        ]
    );
    assert_eq!(
        bed.v2.connections.load(Relaxed),
        8,
        "the idle one was reused"
    );
    bed.relay.flow_end(from(noisy, 300));
    for port in 200..204 {
        bed.relay.flow_end(from(quiet, port));
    }
    wait_until(|| pool.sources_in_use() == 0).await;
    assert_eq!(pool.sources_in_use(), 0, "no entry left for an idle source");
    bed.relay.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_pod_may_queue_more_than_its_share() {
    let mut bed = Bed::tuned(Script::KEEP_ALIVE, |config| RelayConfig {
        max_inflight_bytes: 1 << 20,
        max_inflight_bytes_per_source: 256 << 10,
        ..config
    })
    .await;
    // 768 KiB handed over before any connection to v2 is up: three times the pod's share,
    // queued whole since no other pod needs the budget.
    request(&mut bed.relay, flow(100), "/upload", 768 << 10);
    assert_eq!(bed.settled(Duration::from_secs(10)).await, all_answered(1));
    assert_eq!(bed.v2.received(), ["/upload"]);
    bed.relay.flow_end(flow(100));
    bed.relay.shutdown(Duration::from_secs(1)).await;
    assert_eq!(bed.stats.queued_bytes.load(Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_connections_count_in_their_pods_share_too() {
    let v2 = V2::start(Script::Stall).await;
    let stats = Arc::new(RelayStats::default());
    let pool = pool::Pool::new(
        RelayConfig {
            max_connections: 4,
            max_connections_per_source: 2,
            ..config(v2.addr)
        },
        Arc::clone(&stats),
    );
    let (a, b, c) = (
        std::net::IpAddr::from([10, 0, 1, 1]),
        std::net::IpAddr::from([10, 0, 1, 2]),
        std::net::IpAddr::from([10, 0, 1, 3]),
    );
    let mut a_held = vec![
        pool.open_stream(a).await.unwrap(),
        pool.open_stream(a).await.unwrap(),
    ];
    assert_eq!(
        pool.open_stream(a).await.err(),
        Some(DropReason::SourceConnections)
    );
    let _b_held = [
        pool.open_stream(b).await.unwrap(),
        pool.open_stream(b).await.unwrap(),
    ];
    assert_eq!(
        pool.open_stream(b).await.err(),
        Some(DropReason::SourceConnections)
    );
    // The cap is full: a third pod waits the connect timeout for a slot; one of the first
    // pod's closing gives it one.
    assert_eq!(pool.open_stream(c).await.err(), Some(DropReason::ConnLimit));
    assert_eq!(pool.in_use_by(c), 0, "a refused connect holds nothing");
    a_held.pop();
    assert_eq!(pool.in_use_by(a), 1);
    let _c_held = pool.open_stream(c).await.unwrap();
    assert_eq!(
        (pool.in_use_by(a), pool.in_use_by(b), pool.in_use_by(c)),
        (1, 2, 1)
    );
    assert_eq!(stats.shadow_connections.load(Relaxed), 4);
    assert_eq!(stats.connections_opened.load(Relaxed), 5);
}
