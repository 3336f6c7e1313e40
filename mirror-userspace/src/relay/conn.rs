//! One shadow connection: writes the queued requests of one captured client connection to
//! v2, reads and frames v2's responses (counted, then discarded), and resets the connection
//! if a request cannot be completed, so v2 never receives half a request as a whole one.

use std::{
    collections::VecDeque,
    io,
    net::SocketAddr,
    sync::{atomic::Ordering::Relaxed, Arc},
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{lookup_host, TcpSocket, TcpStream},
    sync::mpsc,
    time::{timeout, Instant},
};

use super::{log_dropped, DropReason, Message, ResponseFramer, Shared};
use crate::observe::access_log::Entry;
use bytes::Bytes;
use mirror_cores::flow::FlowKey;

/// Most queued messages taken for one write.
const MAX_BATCH: usize = 64;
/// Pieces up to this size are copied together before writing; larger ones go out directly.
const COALESCE_BYTES: usize = 64 * 1024;

/// Runs until the dispatcher closes the queue (the client connection ended) and everything
/// queued is written, or until v2 fails.
pub(super) async fn run(flow: FlowKey, mut queue: mpsc::Receiver<Message>, shared: Arc<Shared>) {
    let outcome = match connect(&shared).await {
        Ok(stream) => {
            shared.stats.connections_opened.fetch_add(1, Relaxed);
            shared.connected();
            relay(flow, stream, &mut queue, &shared).await
        }
        Err(error) => {
            shared.stats.connect_failures.fetch_add(1, Relaxed);
            shared.connect_failed();
            tracing::debug!(%flow, %error, "shadow connect failed");
            Err(DropReason::ShadowDown)
        }
    };
    if let Err(reason) = outcome {
        // Whatever is still queued will not be sent: release its budget and count its
        // requests under the reason the connection failed.
        queue.close();
        while let Some(message) = queue.recv().await {
            shared.stats.queued_bytes.fetch_sub(message.len(), Relaxed);
            if let Message::Head(head) = message {
                shared.stats.dropped(reason);
                log_dropped(&shared, flow, head, reason);
            }
        }
    }
    shared.stats.shadow_connections.fetch_sub(1, Relaxed);
}

async fn connect(shared: &Shared) -> io::Result<TcpStream> {
    let attempt = async {
        let mut last_error = io::Error::new(
            io::ErrorKind::NotFound,
            "shadow address resolved to nothing",
        );
        for addr in lookup_host(shared.config.shadow.as_str()).await? {
            match connect_to(addr, shared.config.mark).await {
                Ok(stream) => return Ok(stream),
                Err(error) => last_error = error,
            }
        }
        Err(last_error)
    };
    timeout(shared.config.connect_timeout, attempt)
        .await
        .unwrap_or_else(|_| {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "shadow connect timed out",
            ))
        })
}

async fn connect_to(addr: SocketAddr, mark: u32) -> io::Result<TcpStream> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if mark != 0 {
        socket2::SockRef::from(&socket).set_mark(mark)?;
    }
    socket.set_nodelay(true)?;
    socket.connect(addr).await
}

/// Writes queued requests and reads responses until the queue closes between requests
/// (`Ok`) or something fails (`Err` with the reason to count queued requests under).
async fn relay(
    flow: FlowKey,
    stream: TcpStream,
    queue: &mut mpsc::Receiver<Message>,
    shared: &Shared,
) -> Result<(), DropReason> {
    let (mut reader, mut writer) = stream.into_split();
    let mut framer = ResponseFramer::default();
    let mut buf = vec![0u8; 4 * 1024];
    let mut in_request = false;
    // Requests written and not yet answered, oldest first (v2 answers in order).
    let mut awaiting = Awaiting::new(flow);
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut scratch = Vec::with_capacity(COALESCE_BYTES);
    let response_timeout = shared.config.response_timeout;
    // When v2 must have answered the oldest outstanding request by.
    let mut deadline: Option<Instant> = None;
    let result = loop {
        let wait_response = async {
            match deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            // Queued messages first: v2 may answer and close as soon as it has a request's
            // last byte, before the (empty) end marker of that request is taken from the
            // queue; handling the marker first keeps the request counted as sent.
            biased;
            message = queue.recv() => {
                let Some(first) = message else {
                    // Closed mid-request: the request can never complete.
                    break if in_request { Err(DropReason::Aborted) } else { Ok(()) };
                };
                // Take what else is already queued and write it with as few syscalls as
                // possible: under load, many small requests share one write.
                batch.clear();
                batch.push(first);
                while batch.len() < MAX_BATCH {
                    match queue.try_recv() {
                        Ok(message) => batch.push(message),
                        Err(_) => break,
                    }
                }
                let len: usize = batch.iter().map(Message::len).sum();
                let written = write_batch(&mut writer, &batch, &mut scratch, response_timeout).await;
                shared.stats.queued_bytes.fetch_sub(len, Relaxed);
                if let Err(error) = written {
                    tracing::debug!(%error, "shadow write failed");
                    // Lost: the request being written, and every request the batch started.
                    let heads = batch.iter().filter(|m| matches!(m, Message::Head(_))).count();
                    for _ in 0..heads + usize::from(in_request) {
                        shared.stats.dropped(DropReason::WriteFailed);
                    }
                    break Err(DropReason::WriteFailed);
                }
                shared.stats.bytes_sent.fetch_add(len as u64, Relaxed);
                for message in batch.drain(..) {
                    match message {
                        Message::Head(head) => {
                            in_request = true;
                            framer.request_sent(head.starts_with(b"HEAD "));
                            awaiting.head(head);
                        }
                        Message::Body(body) => awaiting.body(body.len()),
                        Message::End => {
                            in_request = false;
                            awaiting.sent();
                            shared.stats.sent.fetch_add(1, Relaxed);
                            deadline.get_or_insert_with(|| Instant::now() + response_timeout);
                        }
                    }
                }
            }
            read = reader.read(&mut buf) => {
                let n = match read {
                    Ok(0) | Err(_) => {
                        framer.closed(|status| awaiting.answered(status, shared));
                        if framer.outstanding() > 0 {
                            shared.stats.response_errors.fetch_add(1, Relaxed);
                        }
                        // v2 closed its side: the connection cannot carry more requests.
                        break fail(in_request, shared);
                    }
                    Ok(n) => n,
                };
                let fed = framer.feed(&buf[..n], |status| awaiting.answered(status, shared));
                if let Err(error) = fed {
                    tracing::debug!(%error, "unparseable shadow response");
                    shared.stats.response_errors.fetch_add(1, Relaxed);
                    break fail(in_request, shared);
                }
                deadline = (framer.outstanding() > 0).then(|| Instant::now() + response_timeout);
            }
            () = wait_response => {
                shared.stats.response_timeouts.fetch_add(1, Relaxed);
                break fail(in_request, shared);
            }
        }
    };
    match result {
        Ok(()) => {
            // Let v2 answer what was sent, within the response timeout, then close.
            let _ = writer.shutdown().await;
            let drain = async {
                while framer.outstanding() > 0 {
                    match reader.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if framer
                                .feed(&buf[..n], |status| awaiting.answered(status, shared))
                                .is_err()
                            {
                                break;
                            }
                        }
                    }
                }
            };
            if timeout(response_timeout, drain).await.is_err() {
                shared.stats.response_timeouts.fetch_add(1, Relaxed);
            }
        }
        Err(_) => reset(reader, writer),
    }
    awaiting.unanswered(shared);
    result
}

/// A request written to v2 whose response has not been read.
#[derive(Debug)]
struct Written {
    head: Bytes,
    bytes: u64,
    /// When its last byte was written (`None` while it is being written).
    at: Option<Instant>,
}

/// The connection's requests awaiting v2's answer, for the latency histogram and the access
/// log (one call each, whatever the relay does around them).
#[derive(Debug)]
struct Awaiting {
    client: std::net::SocketAddr,
    requests: VecDeque<Written>,
}

impl Awaiting {
    fn new(flow: FlowKey) -> Self {
        Awaiting {
            client: flow.src,
            requests: VecDeque::new(),
        }
    }

    fn head(&mut self, head: Bytes) {
        let bytes = head.len() as u64;
        self.requests.push_back(Written {
            head,
            bytes,
            at: None,
        });
    }

    fn body(&mut self, len: usize) {
        if let Some(request) = self.requests.back_mut() {
            request.bytes += len as u64;
        }
    }

    fn sent(&mut self) {
        if let Some(request) = self.requests.back_mut() {
            request.at = Some(Instant::now());
        }
    }

    /// v2 answered the oldest request with `status`.
    fn answered(&mut self, status: u16, shared: &Shared) {
        let request = self.requests.pop_front();
        let latency = request.as_ref().and_then(|r| r.at).map(|at| at.elapsed());
        if let Some(latency) = latency {
            shared.stats.response_latency.observe(latency);
        }
        shared.stats.response(status);
        if let Some(request) = request {
            self.log(&request, "answered", Some(status), latency, shared);
        }
    }

    /// The connection is over: whatever is still awaited was sent but never answered.
    fn unanswered(&mut self, shared: &Shared) {
        while let Some(request) = self.requests.pop_front() {
            if request.at.is_some() {
                self.log(&request, "unanswered", None, None, shared);
            }
        }
    }

    fn log(
        &self,
        request: &Written,
        outcome: &'static str,
        status: Option<u16>,
        latency: Option<Duration>,
        shared: &Shared,
    ) {
        if let Some(access_log) = &shared.config.access_log {
            access_log.record(|| Entry {
                client: self.client,
                head: request.head.clone(),
                bytes: request.bytes,
                outcome,
                status,
                latency,
                reason: None,
            });
        }
    }
}

/// The connection failed: the request being written (if any) is lost, and so is everything
/// still queued (counted by the caller under the returned reason).
fn fail(in_request: bool, shared: &Shared) -> Result<(), DropReason> {
    if in_request {
        shared.stats.dropped(DropReason::WriteFailed);
    }
    Err(DropReason::WriteFailed)
}

/// Writes the bytes of `batch` in order: small pieces are copied together into `scratch`
/// (reused across calls) and written at once, large ones are written as they are.
async fn write_batch(
    writer: &mut tokio::net::tcp::OwnedWriteHalf,
    batch: &[Message],
    scratch: &mut Vec<u8>,
    limit: Duration,
) -> io::Result<()> {
    let write = async {
        scratch.clear();
        for message in batch {
            let bytes = match message {
                Message::Head(bytes) | Message::Body(bytes) => bytes,
                Message::End => continue,
            };
            if scratch.len() + bytes.len() <= COALESCE_BYTES {
                scratch.extend_from_slice(bytes);
                continue;
            }
            if !scratch.is_empty() {
                writer.write_all(scratch).await?;
                scratch.clear();
            }
            writer.write_all(bytes).await?;
        }
        if !scratch.is_empty() {
            writer.write_all(scratch).await?;
        }
        Ok(())
    };
    timeout(limit, write).await.unwrap_or_else(|_| {
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "shadow write timed out",
        ))
    })
}

/// Closes with RST (zero linger) so v2 discards a partial request instead of waiting for it.
fn reset(reader: tokio::net::tcp::OwnedReadHalf, writer: tokio::net::tcp::OwnedWriteHalf) {
    if let Ok(stream) = reader.reunite(writer) {
        let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    }
}
