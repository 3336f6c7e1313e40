//! h2c mode of a raw connection (`protocol: http2`): the client's bytes go through the
//! HTTP/2 core (`mirror_cores::http2`) instead of straight to v2, and each stream it yields
//! is replayed as a stream of the agent's own HTTP/2 connection to v2 (the `h2` crate), with
//! `:authority` rewritten. Every stream whose head was decoded is one request with one
//! outcome: answered by v2's status class, unanswered, or dropped by reason. Bodies are sent
//! as v2's flow-control window opens, never buffered beyond the in-flight budget.

use std::{
    collections::HashMap,
    future::poll_fn,
    net::SocketAddr,
    sync::{atomic::Ordering::Relaxed, Arc},
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use h2::{client::ResponseFuture, Reason, SendStream};
use mirror_cores::{
    http2::{rewrite_authority, ClientStream, Field, H2Config, H2Event},
    rewrite::HostRewrite,
};
use tokio::{
    net::TcpStream,
    sync::mpsc,
    task::{JoinHandle, JoinSet},
};

use super::{
    pool::StreamSlot,
    stats::{DropReason, Outcome, Unanswered},
    stream::{Cancel, Piece},
    ticket::Ticket,
    Shared,
};

/// A stream sent to v2 whose request is not complete yet.
struct Open {
    ticket: Ticket,
    send: SendStream<Bytes>,
    response: ResponseFuture,
}

/// The agent's connection to v2 for one client connection.
struct Upstream {
    sender: h2::client::SendRequest<Bytes>,
    driver: JoinHandle<()>,
    _slot: StreamSlot,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// One client connection in h2c mode; runs until its queue closes, then waits (up to the
/// response timeout) for the answers of the streams it sent.
pub(super) async fn run(
    mut queue: mpsc::Receiver<Piece>,
    cancel: Cancel,
    client: SocketAddr,
    rewrite: HostRewrite,
    shared: Arc<Shared>,
) {
    let mut replay = Replay {
        core: ClientStream::new(H2Config::default()),
        rewrite,
        scratch: BytesMut::new(),
        upstream: None,
        unreachable: None,
        open: HashMap::new(),
        answers: JoinSet::new(),
        client,
        shared: Arc::clone(&shared),
    };
    let mut events = Vec::new();
    let mut ended_cleanly = false;
    while let Some(piece) = queue.recv().await {
        match piece {
            Piece::Data(chunk) => {
                replay.core.data(&chunk.bytes, &mut |e| events.push(e));
                for event in events.drain(..) {
                    replay.event(event).await;
                }
            }
            Piece::End { fin } => {
                ended_cleanly = fin;
                break;
            }
        }
    }
    // Streams still open were cut short with the client's connection.
    let reason = if ended_cleanly {
        DropReason::Aborted
    } else {
        cancel.get().copied().unwrap_or(DropReason::Aborted)
    };
    for (_, mut open) in replay.open.drain() {
        open.send.send_reset(Reason::CANCEL);
        open.ticket.end(Outcome::Dropped(reason));
    }
    while replay.answers.join_next().await.is_some() {}
}

struct Replay {
    core: ClientStream,
    rewrite: HostRewrite,
    scratch: BytesMut,
    upstream: Option<Upstream>,
    /// Why v2 could not be reached, once that happened: later streams drop at once.
    unreachable: Option<DropReason>,
    open: HashMap<u32, Open>,
    answers: JoinSet<()>,
    client: SocketAddr,
    shared: Arc<Shared>,
}

impl Replay {
    async fn event(&mut self, event: H2Event) {
        let timeout = self.shared.config.response_timeout;
        match event {
            H2Event::Head {
                stream,
                mut fields,
                end_stream,
            } => {
                rewrite_authority(&mut fields, &self.rewrite, &mut self.scratch);
                let ticket = Ticket::issue(&self.shared.stats, None, self.client, &Bytes::new());
                let Some(request) = request(&fields) else {
                    // Not expressible as a request (pseudo-headers missing or unknown).
                    ticket.end(Outcome::Unanswered(Unanswered::Malformed));
                    return;
                };
                let sender = match self.sender().await {
                    Ok(sender) => sender,
                    Err(reason) => {
                        ticket.end(Outcome::Dropped(reason));
                        return;
                    }
                };
                let ready = tokio::time::timeout(timeout, sender.ready()).await;
                let mut sender = match ready {
                    Ok(Ok(sender)) => sender,
                    Ok(Err(_)) => {
                        self.upstream = None;
                        ticket.end(Outcome::Unanswered(Unanswered::Closed));
                        return;
                    }
                    Err(_) => {
                        ticket.end(Outcome::Unanswered(Unanswered::Timeout));
                        return;
                    }
                };
                match sender.send_request(request, end_stream) {
                    Ok((response, send)) if !end_stream => {
                        self.open.insert(
                            stream,
                            Open {
                                ticket,
                                send,
                                response,
                            },
                        );
                    }
                    Ok((response, _)) => self.answer(response, ticket),
                    Err(error) => ticket.end(Outcome::Unanswered(failed(&error))),
                }
            }
            H2Event::Data {
                stream,
                data,
                end_stream,
            } => {
                let Some(open) = self.open.get_mut(&stream) else {
                    return;
                };
                if let Err(outcome) = send_all(&mut open.send, data, end_stream, timeout).await {
                    if let Some(mut open) = self.open.remove(&stream) {
                        open.send.send_reset(Reason::CANCEL);
                        open.ticket.end(outcome);
                    }
                    return;
                }
                if end_stream {
                    if let Some(open) = self.open.remove(&stream) {
                        self.answer(open.response, open.ticket);
                    }
                }
            }
            H2Event::Trailers { stream, fields } => {
                let Some(mut open) = self.open.remove(&stream) else {
                    return;
                };
                match open.send.send_trailers(header_map(&fields)) {
                    Ok(()) => self.answer(open.response, open.ticket),
                    Err(error) => open.ticket.end(Outcome::Unanswered(failed(&error))),
                }
            }
            H2Event::Abort { stream, .. } => {
                if let Some(mut open) = self.open.remove(&stream) {
                    open.send.send_reset(Reason::CANCEL);
                    open.ticket.end(Outcome::Dropped(DropReason::Aborted));
                }
            }
            H2Event::Stopped(reason) => {
                tracing::debug!(?reason, client = %self.client, "h2c connection no longer followed");
                self.shared.stats.count_h2c_stopped();
                for (_, mut open) in self.open.drain() {
                    open.send.send_reset(Reason::CANCEL);
                    open.ticket.end(Outcome::Dropped(DropReason::Aborted));
                }
            }
        }
    }

    /// The connection to v2, made at the first stream.
    async fn sender(&mut self) -> Result<h2::client::SendRequest<Bytes>, DropReason> {
        if let Some(reason) = self.unreachable {
            return Err(reason);
        }
        if let Some(upstream) = &self.upstream {
            return Ok(upstream.sender.clone());
        }
        let (stream, slot) = match self.shared.pool.open_stream(self.client.ip()).await {
            Ok(opened) => opened,
            Err(reason) => {
                self.unreachable = Some(reason);
                return Err(reason);
            }
        };
        let timeout = self.shared.config.connect_timeout;
        let handshake = tokio::time::timeout(timeout, h2::client::handshake(stream)).await;
        let Ok(Ok((sender, connection))) = handshake else {
            self.unreachable = Some(DropReason::ShadowDown);
            return Err(DropReason::ShadowDown);
        };
        let driver = tokio::spawn(drive(connection));
        self.upstream = Some(Upstream {
            sender: sender.clone(),
            driver,
            _slot: slot,
        });
        Ok(sender)
    }

    /// Waits for v2's answer to a complete request on a task of its own.
    fn answer(&mut self, response: ResponseFuture, ticket: Ticket) {
        let timeout = self.shared.config.response_timeout;
        let stats = Arc::clone(&self.shared.stats);
        self.answers.spawn(async move {
            let outcome = match tokio::time::timeout(timeout, read_response(response)).await {
                Ok(Ok((status, grpc))) => {
                    match grpc {
                        Some(true) => stats.grpc_ok.fetch_add(1, Relaxed),
                        Some(false) => stats.grpc_error.fetch_add(1, Relaxed),
                        None => 0,
                    };
                    Outcome::Answered(status)
                }
                Ok(Err(error)) => Outcome::Unanswered(failed(&error)),
                Err(_) => Outcome::Unanswered(Unanswered::Timeout),
            };
            ticket.end(outcome);
        });
    }
}

async fn drive(connection: h2::client::Connection<TcpStream, Bytes>) {
    if let Err(error) = connection.await {
        tracing::debug!(%error, "h2c connection to v2 ended");
    }
}

/// v2's status and, for gRPC, whether its `grpc-status` (in the trailers, or in the head
/// of a trailers-only response) was 0, once the response (body and trailers read and thrown
/// away) is complete.
async fn read_response(response: ResponseFuture) -> Result<(u16, Option<bool>), h2::Error> {
    let response = response.await?;
    let status = response.status().as_u16();
    let mut grpc = grpc_ok(response.headers());
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    if let Some(trailers) = body.trailers().await? {
        grpc = grpc_ok(&trailers).or(grpc);
    }
    Ok((status, grpc))
}

fn grpc_ok(fields: &http::HeaderMap) -> Option<bool> {
    fields.get("grpc-status").map(|v| v.as_bytes() == b"0")
}

/// Sends `data` as v2's window allows, within `timeout` for each opening of it.
async fn send_all(
    send: &mut SendStream<Bytes>,
    mut data: Bytes,
    end_stream: bool,
    timeout: Duration,
) -> Result<(), Outcome> {
    while !data.is_empty() {
        send.reserve_capacity(data.len());
        let capacity = tokio::time::timeout(timeout, poll_fn(|cx| send.poll_capacity(cx))).await;
        let granted = match capacity {
            Err(_) => return Err(Outcome::Unanswered(Unanswered::Timeout)),
            Ok(None) => return Err(Outcome::Unanswered(Unanswered::Closed)),
            Ok(Some(Err(error))) => return Err(Outcome::Unanswered(failed(&error))),
            Ok(Some(Ok(granted))) => granted,
        };
        if granted == 0 {
            continue;
        }
        let part = data.split_to(granted.min(data.len()));
        send.send_data(part, end_stream && data.is_empty())
            .map_err(|error| Outcome::Unanswered(failed(&error)))?;
    }
    if end_stream && data.is_empty() {
        // Nothing was left to carry the flag (an empty last DATA frame).
        let _ = send.send_data(Bytes::new(), true);
    }
    Ok(())
}

fn failed(error: &h2::Error) -> Unanswered {
    if error.is_reset() {
        Unanswered::Reset
    } else {
        Unanswered::Closed
    }
}

/// The request a decoded head says, or `None` if it is not one (RFC 9113 8.3.1).
fn request(fields: &[Field]) -> Option<http::Request<()>> {
    let (mut method, mut scheme, mut authority, mut path) = (None, None, None, None);
    let mut headers = http::HeaderMap::new();
    for f in fields {
        match &f.name[..] {
            b":method" => method = Some(&f.value),
            b":scheme" => scheme = Some(&f.value),
            b":authority" => authority = Some(&f.value),
            b":path" => path = Some(&f.value),
            name if name.starts_with(b":") => return None,
            name => {
                let name = http::HeaderName::from_bytes(name).ok()?;
                let value = http::HeaderValue::from_bytes(&f.value).ok()?;
                headers.append(name, value);
            }
        }
    }
    let mut uri = http::Uri::builder()
        .scheme(std::str::from_utf8(scheme?).ok()?)
        .path_and_query(std::str::from_utf8(path?).ok()?);
    if let Some(authority) = authority {
        uri = uri.authority(std::str::from_utf8(authority).ok()?);
    }
    let mut request = http::Request::builder()
        .method(http::Method::from_bytes(method?).ok()?)
        .uri(uri.build().ok()?)
        .body(())
        .ok()?;
    *request.headers_mut() = headers;
    Some(request)
}

fn header_map(fields: &[Field]) -> http::HeaderMap {
    let mut map = http::HeaderMap::new();
    for f in fields {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(&f.name),
            http::HeaderValue::from_bytes(&f.value),
        ) {
            map.append(name, value);
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use std::sync::{atomic::Ordering::Relaxed, Mutex};

    use mirror_cores::{flow::FlowKey, pipeline::Event};
    use tokio::net::TcpListener;

    use super::*;
    use crate::relay::{Relay, RelayConfig, RelayStats};

    /// What the loopback v2 got per stream: `:authority`, path, body.
    type Got = Arc<Mutex<Vec<(String, String, Vec<u8>)>>>;

    /// An HTTP/2 v2 on loopback that answers each stream with `status` once its body is in,
    /// or resets streams whose path is `/reset`.
    async fn v2(status: u16) -> (SocketAddr, Got) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let got: Got = Arc::default();
        let record = Arc::clone(&got);
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let record = Arc::clone(&record);
                tokio::spawn(async move {
                    let Ok(mut conn) = h2::server::handshake(socket).await else {
                        return;
                    };
                    while let Some(Ok((request, mut respond))) = conn.accept().await {
                        let record = Arc::clone(&record);
                        tokio::spawn(async move {
                            let authority = request.uri().authority().unwrap().to_string();
                            let path = request.uri().path().to_owned();
                            if path == "/reset" {
                                respond.send_reset(Reason::REFUSED_STREAM);
                                return;
                            }
                            let mut body = request.into_body();
                            let mut bytes = Vec::new();
                            while let Some(Ok(chunk)) = body.data().await {
                                let _ = body.flow_control().release_capacity(chunk.len());
                                bytes.extend_from_slice(&chunk);
                            }
                            record.lock().unwrap().push((authority, path, bytes));
                            let response =
                                http::Response::builder().status(status).body(()).unwrap();
                            let _ = respond.send_response(response, true);
                        });
                    }
                });
            }
        });
        (addr, got)
    }

    /// A client connection's bytes: the preface, then each request as HPACK-encoded HEADERS
    /// (with END_STREAM when it has no body) and its body in DATA frames of 16 KiB.
    fn client_bytes(requests: &[(&str, &[u8])]) -> Vec<u8> {
        use mirror_cores::http2::frame::{FrameHeader, DATA, END_HEADERS, END_STREAM, HEADERS};
        let frame = |kind, flags, stream, payload: &[u8]| {
            let mut out = FrameHeader {
                len: payload.len() as u32,
                kind,
                flags,
                stream,
            }
            .encode()
            .to_vec();
            out.extend_from_slice(payload);
            out
        };
        let mut encoder = loona_hpack::Encoder::new();
        let mut out = mirror_cores::http2::frame::PREFACE.to_vec();
        for (i, (path, body)) in requests.iter().enumerate() {
            let stream = 2 * i as u32 + 1;
            let fields: [(&[u8], &[u8]); 4] = [
                (b":method", b"POST"),
                (b":scheme", b"http"),
                (b":authority", b"api:8080"),
                (b":path", path.as_bytes()),
            ];
            let block = encoder.encode(fields);
            let end = if body.is_empty() { END_STREAM } else { 0 };
            out.extend(frame(HEADERS, END_HEADERS | end, stream, &block));
            // DATA frames of the protocol's default largest size.
            let pieces: Vec<&[u8]> = body.chunks(16 << 10).collect();
            for (n, piece) in pieces.iter().enumerate() {
                let end = if n + 1 == pieces.len() { END_STREAM } else { 0 };
                out.extend(frame(DATA, end, stream, piece));
            }
        }
        out
    }

    fn h2c_relay(addr: SocketAddr) -> Relay {
        Relay::new(RelayConfig {
            shadow: addr.to_string(),
            connect_timeout: Duration::from_millis(500),
            // Generous: a loaded machine must not turn a slow answer into a failed test.
            response_timeout: Duration::from_secs(10),
            h2c: Some(HostRewrite::Suffix("-shadow".into())),
            ..RelayConfig::default()
        })
    }

    fn flow() -> FlowKey {
        FlowKey {
            src: "10.0.0.1:4000".parse().unwrap(),
            dst: "10.0.0.2:8080".parse().unwrap(),
        }
    }

    /// Hands `bytes` over in pieces of `piece`, then the client's FIN.
    fn send(relay: &mut Relay, bytes: &[u8], piece: usize) {
        for part in bytes.chunks(piece) {
            relay.handle(Event::StreamData {
                flow: flow(),
                data: Bytes::copy_from_slice(part),
            });
        }
        relay.handle(Event::FlowEnd {
            flow: flow(),
            reason: mirror_cores::outcome::EndReason::Fin,
        });
    }

    async fn settle(stats: &RelayStats, requests: u64) {
        for _ in 0..1500 {
            if stats.requests.load(Relaxed) >= requests && stats.pending() == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_stream_is_replayed_with_its_authority_rewritten_and_answered() {
        let (addr, got) = v2(204).await;
        let mut relay = h2c_relay(addr);
        let stats = relay.stats();
        let big = vec![7u8; 200_000];
        let bytes = client_bytes(&[("/a", b""), ("/b", b"hello"), ("/c", &big)]);
        send(&mut relay, &bytes, 1000);
        settle(&stats, 3).await;
        let timeouts = stats.unanswered_count(Unanswered::Timeout);
        assert_eq!(stats.answered_class(2), 3, "timeouts {timeouts}");
        assert_eq!(stats.pending(), 0);
        let mut got = got.lock().unwrap().clone();
        got.sort();
        let want = |path: &str, body: &[u8]| {
            ("api-shadow:8080".to_owned(), path.to_owned(), body.to_vec())
        };
        assert_eq!(
            got,
            [want("/a", b""), want("/b", b"hello"), want("/c", &big)]
        );
        relay.shutdown(Duration::from_secs(1)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reset_stream_is_unanswered_and_a_down_v2_drops_each_stream() {
        let (addr, _) = v2(200).await;
        let mut relay = h2c_relay(addr);
        let stats = relay.stats();
        send(
            &mut relay,
            &client_bytes(&[("/reset", b""), ("/ok", b"")]),
            7,
        );
        settle(&stats, 2).await;
        assert_eq!(stats.unanswered_count(Unanswered::Reset), 1);
        assert_eq!(stats.answered_class(2), 1);
        relay.shutdown(Duration::from_secs(1)).await;

        // Nothing listens there.
        let closed = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let mut relay = h2c_relay(closed);
        let stats = relay.stats();
        send(&mut relay, &client_bytes(&[("/a", b""), ("/b", b"x")]), 100);
        settle(&stats, 2).await;
        assert_eq!(stats.dropped_count(DropReason::ShadowDown), 2);
        assert_eq!(stats.pending(), 0);
        relay.shutdown(Duration::from_secs(1)).await;
    }
}
