//! Raw TCP mode: each captured client connection's bytes, in order, to a connection of its
//! own to v2, whose replies are read and thrown away. One outcome per connection, counted
//! like a request's: answered (class `tcp`) once v2 took every byte and the connection ended
//! as the client's did, unanswered when v2 stopped taking bytes, reset or never closed after
//! the client's FIN, dropped by reason when the bytes could not all be given to v2 (a full
//! queue or budget, the capture lost some, no connection to v2).
//!
//! The same bounds as requests: a bounded queue per connection and the relay's in-flight
//! byte budget; when either is full the connection is dropped whole (its v2 connection
//! reset) and counted, never waited for.

use std::{
    collections::HashMap,
    sync::{Arc, OnceLock},
};

use bytes::Bytes;
use mirror_cores::{flow::FlowKey, outcome::EndReason};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{tcp::OwnedWriteHalf, TcpStream},
    runtime::Handle,
    sync::mpsc,
    task::{JoinHandle, JoinSet},
};

use super::{
    stats::{DropReason, Outcome, Unanswered, STREAM_TAKEN},
    ticket::{Chunk, Ticket},
    Shared,
};

/// Bytes read from v2 at a time (and thrown away).
const DISCARD_BUFFER: usize = 16 * 1024;

/// What a stream's task is given, in order.
#[derive(Debug)]
enum Piece {
    Data(Chunk),
    /// The client's connection ended: with a FIN (`fin`) or a RST.
    End { fin: bool },
}

/// Why the dispatcher gave up on a stream (read by its task when the queue closes early).
type Cancel = Arc<OnceLock<DropReason>>;

/// One raw client connection, as the dispatcher sees it.
#[derive(Debug)]
struct Client {
    /// `None` once dropped: its remaining bytes are skipped.
    queue: Option<mpsc::Sender<Piece>>,
    cancel: Cancel,
}

/// The raw connections of one relay.
#[derive(Debug, Default)]
pub(super) struct Streams {
    clients: HashMap<FlowKey, Client>,
}

impl Streams {
    /// The next bytes of `flow`; its first ones issue its ticket and start its task.
    pub(super) fn data(
        &mut self,
        flow: FlowKey,
        data: Bytes,
        shared: &Arc<Shared>,
        tasks: &mut JoinSet<()>,
        runtime: &Handle,
    ) {
        let client = self
            .clients
            .entry(flow)
            .or_insert_with(|| start(flow, shared, tasks, runtime));
        let Some(queue) = &client.queue else {
            return;
        };
        let reason = if shared.pool.shadow_down() {
            Some(DropReason::ShadowDown)
        } else {
            match shared.budget.reserve(data) {
                Some(chunk) => queue
                    .try_send(Piece::Data(chunk))
                    .err()
                    .map(|_| DropReason::QueueFull),
                None => Some(DropReason::QueueFull),
            }
        };
        if let Some(reason) = reason {
            let _ = client.cancel.set(reason);
            client.queue = None;
        }
    }

    /// `flow` ended for the pipeline: a FIN or RST ends its stream to v2 the same way;
    /// anything else (eviction, expiry, a gap, a new connection) leaves it incomplete.
    pub(super) fn end(&mut self, flow: FlowKey, reason: EndReason) {
        let Some(client) = self.clients.remove(&flow) else {
            return;
        };
        let Some(queue) = client.queue else {
            return;
        };
        let fin = match reason {
            EndReason::Fin => true,
            EndReason::Rst => false,
            _ => {
                let _ = client.cancel.set(DropReason::Aborted);
                return;
            }
        };
        if queue.try_send(Piece::End { fin }).is_err() {
            let _ = client.cancel.set(DropReason::QueueFull);
        }
    }

    /// Shutdown: every stream still open is left incomplete.
    pub(super) fn shutdown(&mut self) {
        for (_, client) in self.clients.drain() {
            let _ = client.cancel.set(DropReason::Shutdown);
        }
    }
}

fn start(flow: FlowKey, shared: &Arc<Shared>, tasks: &mut JoinSet<()>, runtime: &Handle) -> Client {
    let ticket = Ticket::issue(&shared.stats, None, flow.src, &Bytes::new());
    let (sender, receiver) = mpsc::channel(shared.config.queue_depth.max(1));
    let cancel = Cancel::default();
    tasks.spawn_on(
        run(receiver, Arc::clone(&cancel), ticket, Arc::clone(shared)),
        runtime,
    );
    Client {
        queue: Some(sender),
        cancel,
    }
}

async fn run(mut queue: mpsc::Receiver<Piece>, cancel: Cancel, ticket: Ticket, shared: Arc<Shared>) {
    let outcome = relay(&mut queue, &cancel, &shared).await;
    ticket.end(outcome);
}

/// Gives the stream to v2 and says how it ended.
async fn relay(queue: &mut mpsc::Receiver<Piece>, cancel: &Cancel, shared: &Shared) -> Outcome {
    // Bytes queue (bounded) while the connection is made.
    let (stream, _slot) = match shared.pool.open_stream().await {
        Ok(opened) => opened,
        Err(reason) => return Outcome::Dropped(reason),
    };
    let (mut reader, mut writer) = stream.into_split();
    let mut discard = Discard(tokio::spawn(async move {
        let mut buf = vec![0u8; DISCARD_BUFFER];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(error) => return Err(error),
            }
        }
    }));
    let timeout = shared.config.response_timeout;
    loop {
        match queue.recv().await {
            Some(Piece::Data(chunk)) => {
                let write = tokio::time::timeout(timeout, writer.write_all(&chunk.bytes)).await;
                match write {
                    Ok(Ok(())) => {
                        let sent = chunk.bytes.len() as u64;
                        shared.stats.bytes_sent.fetch_add(sent, std::sync::atomic::Ordering::Relaxed);
                    }
                    Ok(Err(error)) => {
                        reset(writer);
                        return Outcome::Unanswered(closed_by(&error));
                    }
                    Err(_) => {
                        reset(writer);
                        return Outcome::Unanswered(Unanswered::Timeout);
                    }
                }
            }
            Some(Piece::End { fin: false }) => {
                // The client reset its connection after v1 took these bytes: so does v2's.
                reset(writer);
                return Outcome::Answered(STREAM_TAKEN);
            }
            Some(Piece::End { fin: true }) => {
                // v2 saw the whole stream once it closes its side after our FIN.
                if writer.shutdown().await.is_err() {
                    return Outcome::Unanswered(Unanswered::Reset);
                }
                return match tokio::time::timeout(timeout, discard.finished()).await {
                    Ok(Ok(())) => Outcome::Answered(STREAM_TAKEN),
                    Ok(Err(error)) => Outcome::Unanswered(closed_by(&error)),
                    Err(_) => Outcome::Unanswered(Unanswered::Timeout),
                };
            }
            None => {
                reset(writer);
                return Outcome::Dropped(cancel.get().copied().unwrap_or(DropReason::Shutdown));
            }
        }
    }
}

/// The task reading v2's replies; aborted (dropping its half of the socket) when the
/// stream's task is done with it.
struct Discard(JoinHandle<std::io::Result<()>>);

impl Discard {
    /// Waits for v2 to close its side.
    async fn finished(&mut self) -> std::io::Result<()> {
        match (&mut self.0).await {
            Ok(result) => result,
            Err(_) => Err(std::io::ErrorKind::Other.into()),
        }
    }
}

impl Drop for Discard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn closed_by(error: &std::io::Error) -> Unanswered {
    match error.kind() {
        std::io::ErrorKind::ConnectionReset => Unanswered::Reset,
        _ => Unanswered::Closed,
    }
}

/// Closes v2's connection with RST (zero linger), so v2 never takes an incomplete stream
/// for a complete one; the socket closes when the reading half goes too.
fn reset(writer: OwnedWriteHalf) {
    let stream: &TcpStream = writer.as_ref();
    let _ = socket2::SockRef::from(stream).set_linger(Some(std::time::Duration::ZERO));
    writer.forget();
}
