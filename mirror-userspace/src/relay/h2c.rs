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
    conn::Slot,
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
    _slot: Slot,
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
        let (stream, slot) = match self.shared.pool.open_stream().await {
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
