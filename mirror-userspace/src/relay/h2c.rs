//! h2c mode of a raw connection (`protocol: http2`): the client's bytes go through the
//! HTTP/2 core (`mirror_cores::http2`) instead of straight to v2, and each stream it yields
//! is decided by the mirror's policy as an HTTP/1 request is (matches on `:method`, `:path`
//! and fields, the mirror's share per stream) and, if taken, rewritten (`hostRewrite` on
//! `:authority`, `requestHeaderModifier` on the fields) and replayed as a stream of the
//! agent's own HTTP/2 connection to v2 (the `h2` crate). Every stream taken is one request
//! with one outcome: answered by v2's status class, unanswered, or dropped by reason; a gRPC
//! call is also counted under its method (`grpc_methods`), and its `grpc-timeout` bounds how
//! long v2's answer is waited for. Bodies are sent as v2's flow-control window opens, never
//! buffered beyond the in-flight budget.

use std::{
    collections::HashMap,
    future::poll_fn,
    net::SocketAddr,
    sync::{atomic::Ordering::Relaxed, Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::{Bytes, BytesMut};
use h2::{client::ResponseFuture, Reason, SendStream};
use mirror_cores::{
    http2::{grpc, rewrite_stream, ClientStream, Field, H2Config, H2Event},
    policy::{consistent_hash, Coin, MirrorRewrite, MirrorRule, Policy, Share, Verdict},
    rewrite::HostRewrite,
};
use tokio::{
    net::TcpStream,
    sync::mpsc,
    task::{JoinHandle, JoinSet},
};

use super::{
    grpc_methods::CallEnd,
    pool::StreamSlot,
    stats::{DropReason, Outcome, RelayStats, Unanswered},
    stream::{Cancel, Piece},
    ticket::Ticket,
    Shared,
};
use crate::agent::mirror_stats::MirrorCounters;

/// What one mirror's relay decides per h2c stream: its policy (swapped on a reload) and
/// where the decisions are counted, as the dispatcher counts HTTP/1 requests'.
#[derive(Clone, Debug)]
pub struct H2cMirror {
    rule: Arc<Mutex<Rule>>,
    decided: Arc<MirrorCounters>,
    seed: u64,
}

#[derive(Clone, Debug)]
struct Rule {
    policy: Arc<Policy>,
    /// This mirror's index in `policy.mirrors`.
    mirror: usize,
}

impl H2cMirror {
    /// Mirror `mirror` of `policy`. Each connection's coin is seeded from `seed` and the
    /// client's address, so every mirror of a connection draws the same sequence and makes
    /// the choices the dispatcher's one coin makes for HTTP/1 requests (independent shares
    /// stay independent, consistent sampling without its header still takes subsets).
    pub fn new(
        policy: Arc<Policy>,
        mirror: usize,
        decided: Arc<MirrorCounters>,
        seed: u64,
    ) -> H2cMirror {
        H2cMirror {
            rule: Arc::new(Mutex::new(Rule { policy, mirror })),
            decided,
            seed,
        }
    }

    /// Every stream, its `:authority` rewritten by `host`: without a config file (flags),
    /// for connections upgraded to h2c (`Upgrade: h2c`), whose streams the relay replays.
    pub fn all(host: HostRewrite, seed: u64) -> H2cMirror {
        let policy = Policy {
            matches: Vec::new(),
            sampling: Default::default(),
            mirrors: vec![MirrorRule {
                share: Share::ALL,
                rewrite: MirrorRewrite {
                    host,
                    headers: Default::default(),
                },
            }],
        };
        H2cMirror::new(Arc::new(policy), 0, Arc::default(), seed)
    }

    /// A reload's policy, for every stream whose head the relay decodes from now on (bytes
    /// already queued when the reload came included): a long-lived channel follows reloads.
    pub fn set_policy(&self, policy: Arc<Policy>, mirror: usize) {
        *self.lock() = Rule { policy, mirror };
    }

    fn rule(&self) -> Rule {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Rule> {
        // An assignment cannot leave the rule half-changed.
        self.rule
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn coin(&self, client: SocketAddr) -> Coin {
        Coin::new(self.seed ^ consistent_hash(client.to_string().as_bytes()))
    }
}

/// Streams of one client connection sent to v2 and not answered yet, at most; a stream
/// beyond is dropped (`queue_full`). Without a bound, a client opening streams faster than v2
/// answers them (h2load saturating v1) grows the agent's memory without end: 1.2 GB in two
/// seconds in the h2c bench before this bound.
const MAX_AWAITING_STREAMS: usize = 1024;

/// What an answer task read: the stream's outcome and, when v2 answered, how its call ended.
type Answer = (Outcome, Option<CallEnd>);

/// A stream sent to v2 whose request is not complete yet.
struct Open {
    call: Call,
    send: SendStream<Bytes>,
    response: ResponseFuture,
}

/// One stream this mirror took: its ticket and, for a gRPC call, what is counted of it and
/// the deadline its client set.
struct Call {
    ticket: Ticket,
    grpc: Option<GrpcCall>,
    /// When the client's `grpc-timeout` runs out.
    deadline: Option<Instant>,
}

/// A gRPC call's count under its method: made once, when it is dropped, with the end it was
/// given (`NoStatus` unless v2 answered with a `grpc-status`), so no exit misses it.
struct GrpcCall {
    stats: Arc<RelayStats>,
    method: Option<Box<str>>,
    end: CallEnd,
}

impl Drop for GrpcCall {
    fn drop(&mut self) {
        self.stats
            .grpc_methods
            .count(self.method.as_deref(), self.end);
    }
}

impl Call {
    fn new(fields: &[Field], client: SocketAddr, stats: &Arc<RelayStats>) -> Call {
        let ticket = Ticket::issue(stats, None, client, &Bytes::new());
        if !grpc::is_grpc(fields) {
            return Call {
                ticket,
                grpc: None,
                deadline: None,
            };
        }
        let deadline = match grpc::grpc_timeout(fields) {
            Ok(timeout) => timeout.and_then(|t| Instant::now().checked_add(t)),
            Err(grpc::BadTimeout) => {
                stats.grpc_timeout_invalid.fetch_add(1, Relaxed);
                None
            }
        };
        Call {
            ticket,
            grpc: Some(GrpcCall {
                stats: Arc::clone(stats),
                method: grpc::grpc_method(fields).map(Into::into),
                end: CallEnd::NoStatus,
            }),
            deadline,
        }
    }

    fn end(self, outcome: Outcome) {
        self.ticket.end(outcome);
    }

    /// How long v2's answer is waited for: the response timeout, or less if the client's
    /// deadline comes first.
    fn wait(&self, response_timeout: Duration) -> Duration {
        self.deadline.map_or(response_timeout, |deadline| {
            response_timeout.min(deadline.saturating_duration_since(Instant::now()))
        })
    }
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
    mirror: H2cMirror,
    shared: Arc<Shared>,
) {
    let mut replay = Replay {
        core: ClientStream::new(H2Config::default()),
        coin: mirror.coin(client),
        mirror,
        scratch: BytesMut::new(),
        upstream: None,
        unreachable: None,
        open: HashMap::new(),
        answers: JoinSet::new(),
        awaiting: HashMap::new(),
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
        open.call.end(Outcome::Dropped(reason));
    }
    while let Some(answer) = replay.answers.join_next_with_id().await {
        replay.answered(answer);
    }
}

struct Replay {
    core: ClientStream,
    mirror: H2cMirror,
    coin: Coin,
    scratch: BytesMut,
    upstream: Option<Upstream>,
    /// Why v2 could not be reached, once that happened: later streams drop at once.
    unreachable: Option<DropReason>,
    open: HashMap<u32, Open>,
    /// v2's answers being read, one task each; their tickets are in `awaiting`, so that a
    /// replay dropped at shutdown counts each as `shutdown` at once.
    answers: JoinSet<Answer>,
    awaiting: HashMap<tokio::task::Id, Call>,
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
                if !self.take(&mut fields) {
                    return;
                }
                let call = Call::new(&fields, self.client, &self.shared.stats);
                while let Some(answer) = self.answers.try_join_next_with_id() {
                    self.answered(answer);
                }
                if self.awaiting.len() + self.open.len() >= MAX_AWAITING_STREAMS {
                    call.end(Outcome::Dropped(DropReason::QueueFull));
                    return;
                }
                let Some(request) = request(&fields) else {
                    // Not expressible as a request (pseudo-headers missing or unknown).
                    call.end(Outcome::Unanswered(Unanswered::Malformed));
                    return;
                };
                let sender = match self.sender().await {
                    Ok(sender) => sender,
                    Err(reason) => {
                        call.end(Outcome::Dropped(reason));
                        return;
                    }
                };
                let ready = tokio::time::timeout(timeout, sender.ready()).await;
                let mut sender = match ready {
                    Ok(Ok(sender)) => sender,
                    Ok(Err(_)) => {
                        self.upstream = None;
                        call.end(Outcome::Unanswered(Unanswered::Closed));
                        return;
                    }
                    Err(_) => {
                        call.end(Outcome::Unanswered(Unanswered::Timeout));
                        return;
                    }
                };
                match sender.send_request(request, end_stream) {
                    Ok((response, send)) if !end_stream => {
                        self.open.insert(
                            stream,
                            Open {
                                call,
                                send,
                                response,
                            },
                        );
                    }
                    Ok((response, _)) => self.answer(response, call),
                    Err(error) => call.end(Outcome::Unanswered(failed(&error))),
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
                        open.call.end(outcome);
                    }
                    return;
                }
                if end_stream {
                    if let Some(open) = self.open.remove(&stream) {
                        self.answer(open.response, open.call);
                    }
                }
            }
            H2Event::Trailers { stream, fields } => {
                let Some(mut open) = self.open.remove(&stream) else {
                    return;
                };
                match open.send.send_trailers(header_map(&fields)) {
                    Ok(()) => self.answer(open.response, open.call),
                    Err(error) => open.call.end(Outcome::Unanswered(failed(&error))),
                }
            }
            H2Event::Abort { stream, .. } => {
                if let Some(mut open) = self.open.remove(&stream) {
                    open.send.send_reset(Reason::CANCEL);
                    open.call.end(Outcome::Dropped(DropReason::Aborted));
                }
            }
            H2Event::Stopped(reason) => {
                tracing::debug!(?reason, client = %self.client, "h2c connection no longer followed");
                self.shared.stats.count_h2c_stopped();
                for (_, mut open) in self.open.drain() {
                    open.send.send_reset(Reason::CANCEL);
                    open.call.end(Outcome::Dropped(DropReason::Aborted));
                }
            }
        }
    }

    /// Whether this mirror takes the stream (counted either way); if so, its head rewritten.
    fn take(&mut self, fields: &mut Vec<Field>) -> bool {
        let rule = self.mirror.rule();
        let mut verdict = Verdict::NotMatched;
        rule.policy
            .decide_request(&fields[..], &mut self.coin, |i, v| {
                if i == rule.mirror {
                    verdict = v;
                }
            });
        let decided = &self.mirror.decided;
        let rewrite = rule.policy.mirrors.get(rule.mirror).map(|m| &m.rewrite);
        match (verdict, rewrite) {
            (Verdict::Take, Some(rewrite)) => {
                decided.requests_mirrored.fetch_add(1, Relaxed);
                rewrite_stream(fields, rewrite, &mut self.scratch);
                true
            }
            (Verdict::SampledOut, _) => {
                decided.requests_sampled_out.fetch_add(1, Relaxed);
                false
            }
            _ => {
                decided.requests_not_matched.fetch_add(1, Relaxed);
                false
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

    /// Waits for v2's answer to a complete request on a task of its own, within the
    /// response timeout and the client's gRPC deadline.
    fn answer(&mut self, response: ResponseFuture, call: Call) {
        let timeout = call.wait(self.shared.config.response_timeout);
        let stats = Arc::clone(&self.shared.stats);
        let task = self.answers.spawn(async move {
            match tokio::time::timeout(timeout, read_response(response)).await {
                Ok(Ok((status, grpc))) => {
                    let end = match grpc {
                        Some(true) => {
                            stats.grpc_ok.fetch_add(1, Relaxed);
                            CallEnd::Ok
                        }
                        Some(false) => {
                            stats.grpc_error.fetch_add(1, Relaxed);
                            CallEnd::Error
                        }
                        None => CallEnd::NoStatus,
                    };
                    (Outcome::Answered(status), Some(end))
                }
                Ok(Err(error)) => (Outcome::Unanswered(failed(&error)), None),
                Err(_) => (Outcome::Unanswered(Unanswered::Timeout), None),
            }
        });
        self.awaiting.insert(task.id(), call);
    }

    /// An answer task finished: its ticket ends with what it read (a task that panicked or
    /// was aborted leaves its ticket to count as `shutdown`).
    fn answered(&mut self, answer: Result<(tokio::task::Id, Answer), tokio::task::JoinError>) {
        match answer {
            Ok((id, (outcome, end))) => {
                if let Some(mut call) = self.awaiting.remove(&id) {
                    if let (Some(counted), Some(end)) = (&mut call.grpc, end) {
                        counted.end = end;
                    }
                    call.end(outcome);
                }
            }
            // Dropped unended: counted as `shutdown`.
            Err(error) => drop(self.awaiting.remove(&error.id())),
        }
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
    use std::sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Mutex,
    };

    use mirror_cores::{flow::FlowKey, pipeline::Event};
    use tokio::net::TcpListener;

    use super::*;
    use crate::relay::{Relay, RelayConfig, RelayStats};
    use mirror_cores::policy::{HeaderModifier, PathMatch, RequestMatch};

    /// What the loopback v2 got per stream: `:authority`, path, its `x-mirror` fields, body.
    type Got = Arc<Mutex<Vec<(String, String, Vec<String>, Vec<u8>)>>>;

    /// An HTTP/2 v2 on loopback that answers each stream with `status` once its body is in,
    /// or resets streams whose path is `/reset`. gRPC calls get trailers with `grpc-status`
    /// 3 if their method is `Fail`, 0 otherwise; streams whose path is `/slow` are answered
    /// after 3 s, and those whose path is `/hold` never.
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
                            let tags = request
                                .headers()
                                .get_all("x-mirror")
                                .iter()
                                .map(|v| v.to_str().unwrap().to_owned())
                                .collect();
                            if path == "/reset" {
                                respond.send_reset(Reason::REFUSED_STREAM);
                                return;
                            }
                            if path == "/hold" {
                                std::future::pending::<()>().await;
                            }
                            let is_grpc = request.headers().contains_key("content-type");
                            let mut body = request.into_body();
                            let mut bytes = Vec::new();
                            while let Some(Ok(chunk)) = body.data().await {
                                let _ = body.flow_control().release_capacity(chunk.len());
                                bytes.extend_from_slice(&chunk);
                            }
                            let failed = path.ends_with("/Fail");
                            if path == "/slow" {
                                tokio::time::sleep(Duration::from_secs(3)).await;
                            }
                            record.lock().unwrap().push((authority, path, tags, bytes));
                            let response =
                                http::Response::builder().status(status).body(()).unwrap();
                            let Ok(mut sending) = respond.send_response(response, !is_grpc) else {
                                return;
                            };
                            if is_grpc {
                                let mut trailers = http::HeaderMap::new();
                                let code = if failed { "3" } else { "0" };
                                trailers.insert("grpc-status", code.parse().unwrap());
                                let _ = sending.send_trailers(trailers);
                            }
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
        let plain: Vec<Request> = requests
            .iter()
            .map(|&(path, body)| (path, &[][..], body))
            .collect();
        client_bytes_with(&plain)
    }

    /// A request of a test client: path, fields after the pseudo-headers, body.
    type Request<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a [u8]);

    /// [`client_bytes`], each request's head with its fields after its pseudo-headers.
    fn client_bytes_with(requests: &[Request]) -> Vec<u8> {
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
        for (i, (path, extra, body)) in requests.iter().enumerate() {
            let stream = 2 * i as u32 + 1;
            let mut fields: Vec<(&[u8], &[u8])> = vec![
                (b":method", b"POST"),
                (b":scheme", b"http"),
                (b":authority", b"api:8080"),
                (b":path", path.as_bytes()),
            ];
            fields.extend(extra.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())));
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

    /// A policy of one mirror that takes every stream.
    fn h2c_mirror(rewrite: MirrorRewrite) -> H2cMirror {
        let policy = Policy {
            matches: vec![],
            sampling: Default::default(),
            mirrors: vec![MirrorRule {
                share: Share::ALL,
                rewrite,
            }],
        };
        H2cMirror::new(Arc::new(policy), 0, Arc::default(), 0)
    }

    fn h2c_relay(addr: SocketAddr) -> Relay {
        relay_for(
            addr,
            h2c_mirror(MirrorRewrite {
                host: HostRewrite::Suffix("-shadow".into()),
                headers: Default::default(),
            }),
        )
    }

    fn relay_for(addr: SocketAddr, mirror: H2cMirror) -> Relay {
        Relay::new(RelayConfig {
            shadow: addr.to_string(),
            connect_timeout: Duration::from_millis(500),
            // Generous: a loaded machine must not turn a slow answer into a failed test.
            response_timeout: Duration::from_secs(10),
            h2c: Some(mirror),
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
            (
                "api-shadow:8080".to_owned(),
                path.to_owned(),
                vec![],
                body.to_vec(),
            )
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn streams_v2_does_not_answer_are_bounded_and_each_counted_at_shutdown() {
        let (addr, _) = v2(200).await;
        let mut relay = h2c_relay(addr);
        let stats = relay.stats();
        let streams = MAX_AWAITING_STREAMS + 6;
        let holds: Vec<(&str, &[u8])> = vec![("/hold", b""); streams];
        send(&mut relay, &client_bytes(&holds), 4096);
        for _ in 0..1500 {
            if stats.requests.load(Relaxed) >= streams as u64 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(stats.dropped_count(DropReason::QueueFull), 6);
        relay.shutdown(Duration::from_millis(200)).await;
        assert_eq!(
            stats.dropped_count(DropReason::Shutdown),
            MAX_AWAITING_STREAMS as u64
        );
        assert_eq!(stats.pending(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn streams_are_matched_sampled_and_modified_one_by_one() {
        let (addr, got) = v2(200).await;
        let kept = RequestMatch {
            path: Some(PathMatch::prefix("/kept").unwrap()),
            ..RequestMatch::default()
        };
        let set =
            HeaderModifier::new(vec![("X-Mirror".into(), "v2".into())], vec![], vec![]).unwrap();
        let rule = |share| MirrorRule {
            share,
            rewrite: MirrorRewrite {
                host: HostRewrite::Keep,
                headers: set.clone(),
            },
        };
        let policy = Arc::new(Policy {
            matches: vec![kept],
            sampling: Default::default(),
            mirrors: vec![rule(Share::ALL), rule(Share::percent(0.0).unwrap())],
        });
        let decided: Vec<Arc<MirrorCounters>> = vec![Arc::default(), Arc::default()];
        let bytes = client_bytes(&[
            ("/kept/a", b""),
            ("/other", b"not sent"),
            ("/kept/b", b"body"),
            ("/keptx", b""),
        ]);
        let mut all_stats = Vec::new();
        for (i, counters) in decided.iter().enumerate() {
            let mirror = H2cMirror::new(Arc::clone(&policy), i, Arc::clone(counters), 9);
            let mut relay = relay_for(addr, mirror);
            let stats = relay.stats();
            send(&mut relay, &bytes, 50);
            if i == 0 {
                settle(&stats, 2).await;
            }
            relay.shutdown(Duration::from_secs(2)).await;
            all_stats.push(stats);
        }
        let load = |c: &AtomicU64| c.load(Relaxed);
        let counts = |c: &MirrorCounters| {
            (
                load(&c.requests_mirrored),
                load(&c.requests_sampled_out),
                load(&c.requests_not_matched),
            )
        };
        // The matched streams taken by the 100 % mirror, left out by the 0 % one; the
        // other two not matched by either.
        assert_eq!(counts(&decided[0]), (2, 0, 2));
        assert_eq!(counts(&decided[1]), (0, 2, 2));
        assert_eq!(all_stats[0].requests.load(Relaxed), 2);
        assert_eq!(all_stats[0].answered_class(2), 2);
        assert_eq!(all_stats[1].requests.load(Relaxed), 0);
        let mut got = got.lock().unwrap().clone();
        got.sort();
        let tag = vec!["v2".to_owned()];
        assert_eq!(
            got,
            [
                ("api:8080".into(), "/kept/a".into(), tag.clone(), vec![]),
                ("api:8080".into(), "/kept/b".into(), tag, b"body".to_vec()),
            ]
        );
    }

    const GRPC: (&str, &str) = ("content-type", "application/grpc");

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn grpc_calls_are_counted_per_method() {
        use crate::relay::grpc_methods::OTHER;
        let (addr, _) = v2(200).await;
        let mut relay = h2c_relay(addr);
        let stats = relay.stats();
        let message: &[u8] = b"\0\0\0\0\x01x";
        let bytes = client_bytes_with(&[
            ("/s.S/A", &[GRPC], message),
            ("/s.S/A", &[GRPC], b""),
            ("/s.S/Fail", &[GRPC], message),
            ("/a/b/c", &[GRPC], message),
            ("/plain", &[], b""),
        ]);
        send(&mut relay, &bytes, 64);
        settle(&stats, 5).await;
        assert_eq!(stats.answered_class(2), 5);
        let m = &stats.grpc_methods;
        assert_eq!(m.calls("/s.S/A", CallEnd::Ok), 2);
        assert_eq!(m.calls("/s.S/Fail", CallEnd::Error), 1);
        // Not a `/Service/Method` path: under `other`. The plain stream is no gRPC call.
        assert_eq!(m.calls(OTHER, CallEnd::Ok), 1);
        let mut total = 0;
        m.visit(&mut |s| total += s.value);
        assert_eq!(total, 4);
        assert_eq!(
            (stats.grpc_ok.load(Relaxed), stats.grpc_error.load(Relaxed)),
            (3, 1)
        );
        relay.shutdown(Duration::from_secs(1)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_grpc_timeout_bounds_the_wait_for_the_answer() {
        use crate::relay::grpc_methods::OTHER;
        let (addr, _) = v2(200).await;
        // A 10 s response timeout: only the client's 200 ms deadline can end the first call
        // before v2 answers it at 3 s.
        let mut relay = h2c_relay(addr);
        let stats = relay.stats();
        let bytes = client_bytes_with(&[
            ("/slow", &[GRPC, ("grpc-timeout", "200m")], b""),
            ("/slow", &[GRPC, ("grpc-timeout", "soon")], b""),
        ]);
        send(&mut relay, &bytes, 1000);
        settle(&stats, 2).await;
        assert_eq!(stats.unanswered_count(Unanswered::Timeout), 1);
        assert_eq!(
            stats.answered_class(2),
            1,
            "the bad grpc-timeout is ignored"
        );
        assert_eq!(stats.grpc_timeout_invalid.load(Relaxed), 1);
        let m = &stats.grpc_methods;
        assert_eq!(m.calls(OTHER, CallEnd::NoStatus), 1);
        assert_eq!(m.calls(OTHER, CallEnd::Ok), 1);
        relay.shutdown(Duration::from_secs(1)).await;
    }
}
