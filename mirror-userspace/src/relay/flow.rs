//! The task of one captured client connection: takes its requests from the dispatcher's
//! queue and gives them to v2 one at a time, in order, on a connection from the pool, and
//! ends each in exactly one outcome.
//!
//! One request is in flight per connection (as Envoy's HTTP/1 pool does), so when v2 closes
//! the connection the fate of every request is known: the one in flight was answered, or v2
//! closed before sending a byte of its answer on a connection that had already carried a
//! request (it closed after the previous answer: keep-alive limit, idle timeout,
//! `Connection: close`) and it is written once more on a new connection, or it is counted
//! unanswered. Requests behind it were never written and simply go on the next connection.

use std::sync::{
    atomic::{AtomicU8, Ordering::Relaxed},
    Arc,
};

use bytes::Bytes;
use tokio::{
    sync::{mpsc, oneshot},
    time::{sleep_until, Instant},
};

use super::{
    conn::{Conn, ReadEvent},
    stats::{DropReason, Outcome, Unanswered},
    ticket::{Chunk, Ticket},
    Shared,
};

/// Request bytes kept after they are written, so the request can be written again if v2
/// closes before taking it up; a larger request gives its bytes back as they are written,
/// and is not re-sent. At most a quarter of the budget, so a large request always fits.
const REPLAY_LIMIT: usize = 1 << 20;

/// A piece of a request, queued for its client connection's task.
#[derive(Debug)]
pub(super) enum Piece {
    /// Request line and headers; starts a request.
    Head {
        chunk: Chunk,
        ticket: Ticket,
    },
    Body(Chunk),
    /// The request is complete.
    End,
}

/// Why the dispatcher closed a queue in the middle of a request (read by the task when it
/// finds the queue closed there).
#[derive(Debug, Default)]
pub(super) struct Cancel(AtomicU8);

impl Cancel {
    pub(super) fn set(&self, reason: DropReason) {
        self.0.store(reason as u8 + 1, Relaxed);
    }

    fn reason(&self) -> DropReason {
        usize::from(self.0.load(Relaxed))
            .checked_sub(1)
            .and_then(|i| DropReason::ALL.get(i).copied())
            .unwrap_or(DropReason::Aborted)
    }
}

/// Runs until the dispatcher closes the queue and every request in it has an outcome.
/// `after` is the previous task of the same client connection, which must finish first so
/// that its requests reach v2 before this one's.
pub(super) async fn run(
    mut queue: mpsc::Receiver<Piece>,
    cancel: Arc<Cancel>,
    after: Option<oneshot::Receiver<()>>,
    shared: Arc<Shared>,
    done: oneshot::Sender<()>,
) {
    if let Some(after) = after {
        let _ = after.await;
    }
    let mut conn = None;
    while let Some(piece) = queue.recv().await {
        let Piece::Head { chunk, ticket } = piece else {
            continue;
        };
        let request = Request::new(chunk, ticket);
        conn = serve(request, conn, &mut queue, &cancel, &shared).await;
    }
    if let Some(conn) = conn {
        shared.pool.release(conn);
    }
    drop(done);
}

/// One request: the pieces received and not yet given back (all of them while it may be
/// written again), and its ticket while it has no outcome.
struct Request {
    chunks: Vec<Chunk>,
    complete: bool,
    ticket: Option<Ticket>,
    is_head: bool,
    resent: bool,
    /// Every byte of it is still held: it can be written again from the start.
    replayable: bool,
}

impl Request {
    fn new(head: Chunk, ticket: Ticket) -> Request {
        Request {
            is_head: head.bytes.starts_with(b"HEAD "),
            chunks: vec![head],
            complete: false,
            ticket: Some(ticket),
            resent: false,
            replayable: true,
        }
    }

    /// `n` more bytes at `cursor` were written. Past `replay_limit` held, written chunks
    /// are given back to the budget as soon as they are written.
    fn written(&mut self, cursor: &mut Cursor, n: usize, replay_limit: usize) {
        cursor.offset += n;
        if self.replayable {
            let held: usize = self.chunks.iter().map(|chunk| chunk.bytes.len()).sum();
            self.replayable = held <= replay_limit;
        }
        if self.replayable {
            return;
        }
        let mut done = cursor.chunk;
        if self
            .chunks
            .get(cursor.chunk)
            .is_some_and(|chunk| cursor.offset >= chunk.bytes.len())
        {
            done += 1;
            cursor.offset = 0;
        }
        self.chunks.drain(..done.min(self.chunks.len()));
        cursor.chunk = 0;
    }

    fn end(&mut self, outcome: Outcome) {
        if let Some(ticket) = self.ticket.take() {
            ticket.end(outcome);
        }
    }

    fn ended(&self) -> bool {
        self.ticket.is_none()
    }

    /// The bytes at `cursor` not yet written, up to the end of their chunk.
    fn unwritten(&self, cursor: &mut Cursor) -> Option<Bytes> {
        while let Some(chunk) = self.chunks.get(cursor.chunk) {
            if cursor.offset < chunk.bytes.len() {
                return Some(chunk.bytes.slice(cursor.offset..));
            }
            cursor.chunk += 1;
            cursor.offset = 0;
        }
        None
    }

    /// Takes the rest of this request off the queue once it can no longer go anywhere.
    async fn skip_rest(&mut self, queue: &mut mpsc::Receiver<Piece>) {
        while !self.complete {
            match queue.recv().await {
                Some(Piece::Body(_)) => {}
                Some(Piece::End) | None => self.complete = true,
                Some(Piece::Head { ticket, .. }) => stray(ticket),
            }
        }
    }
}

/// A head while a request is still open: the dispatcher always ends or cancels a request
/// before the next one, so this is only here to keep the count whatever happens.
fn stray(ticket: Ticket) {
    ticket.end(Outcome::Dropped(DropReason::Aborted));
}

#[derive(Debug, Default)]
struct Cursor {
    chunk: usize,
    offset: usize,
}

/// How one attempt at a request on one connection ended.
enum Attempt {
    /// The request has its outcome and the connection may carry the next one.
    Reusable,
    /// The connection cannot be used again; `reset`: close it with RST.
    Broken { reset: bool },
    /// v2 closed before taking up the request: write it again on a new connection.
    Again,
}

/// Gives `request` to v2 (on `conn` if it is still good) and returns the connection if it
/// can carry the next request.
async fn serve(
    mut request: Request,
    mut conn: Option<Conn>,
    queue: &mut mpsc::Receiver<Piece>,
    cancel: &Cancel,
    shared: &Shared,
) -> Option<Conn> {
    loop {
        let kept = conn.take().filter(|_| !request.resent);
        let mut current = match kept.and_then(|mut kept| kept.usable().then_some(kept)) {
            Some(kept) => kept,
            None => match shared.pool.acquire(request.resent).await {
                Ok(fresh) => fresh,
                Err(reason) => {
                    request.end(Outcome::Dropped(reason));
                    request.skip_rest(queue).await;
                    return None;
                }
            },
        };
        if current.exchanges > 0 {
            shared.stats.connections_reused.fetch_add(1, Relaxed);
        }
        match attempt(&mut current, &mut request, queue, cancel, shared).await {
            Attempt::Reusable => return Some(current),
            Attempt::Broken { reset } => {
                if reset {
                    current.reset();
                }
                request.skip_rest(queue).await;
                return None;
            }
            Attempt::Again => {
                shared.stats.resent.fetch_add(1, Relaxed);
                request.resent = true;
            }
        }
    }
}

/// Writes `request` (pieces still arriving are written as they come) while the connection's
/// reader watches for the answer. The write timeout measures progress: it runs only while
/// bytes wait to be written, and restarts whenever v2 accepts some.
async fn attempt(
    conn: &mut Conn,
    request: &mut Request,
    queue: &mut mpsc::Receiver<Piece>,
    cancel: &Cancel,
    shared: &Shared,
) -> Attempt {
    let timeout = shared.config.response_timeout;
    let replay_limit = REPLAY_LIMIT.min(shared.config.max_inflight_bytes / 4);
    conn.begin(request.is_head);
    let reused = conn.exchanges > 1;
    let mut cursor = Cursor::default();
    let mut written_any = false;
    let mut write_failed = false;
    let mut stall_deadline = Instant::now() + timeout;
    let mut answer_deadline: Option<Instant> = None;
    loop {
        let pending = if write_failed {
            None
        } else {
            request.unwritten(&mut cursor)
        };
        if pending.is_none() && request.complete {
            if request.ended() {
                return if write_failed {
                    Attempt::Broken { reset: false }
                } else {
                    Attempt::Reusable
                };
            }
            answer_deadline.get_or_insert_with(|| Instant::now() + timeout);
        }
        let Some((writer, events)) = conn.halves() else {
            request.end(Outcome::Unanswered(Unanswered::Reset));
            return Attempt::Broken { reset: false };
        };
        tokio::select! {
            piece = queue.recv(), if !request.complete => match piece {
                Some(Piece::Body(chunk)) => {
                    if let Some(ticket) = &mut request.ticket {
                        ticket.body(chunk.bytes.len());
                    }
                    request.chunks.push(chunk);
                }
                Some(Piece::End) => request.complete = true,
                Some(Piece::Head { ticket, .. }) => stray(ticket),
                None => {
                    // The dispatcher gave up on this request (queue full, capture gap,
                    // shutdown): v2 must not take what it got for a whole request.
                    request.end(Outcome::Dropped(cancel.reason()));
                    request.complete = true;
                    return Attempt::Broken { reset: true };
                }
            },
            written = write_some(writer, pending.as_ref()), if pending.is_some() => match written {
                Ok(n) => {
                    request.written(&mut cursor, n, replay_limit);
                    written_any = true;
                    stall_deadline = Instant::now() + timeout;
                    shared.stats.bytes_sent.fetch_add(n as u64, Relaxed);
                }
                // v2 closed or reset: the reader says whether it answered first.
                Err(_) => {
                    write_failed = true;
                    answer_deadline.get_or_insert_with(|| Instant::now() + timeout);
                }
            },
            () = sleep_until(stall_deadline), if pending.is_some() => {
                request.end(Outcome::Unanswered(Unanswered::Timeout));
                return Attempt::Broken { reset: true };
            }
            () = sleep_until(answer_deadline.unwrap_or(stall_deadline)),
                if answer_deadline.is_some() && !request.ended() =>
            {
                request.end(Outcome::Unanswered(Unanswered::Timeout));
                return Attempt::Broken { reset: true };
            }
            event = events.recv() => match event {
                Some(ReadEvent::Answered(status)) => {
                    shared.pool.alive();
                    request.end(Outcome::Answered(status));
                    answer_deadline = None;
                }
                Some(ReadEvent::Malformed) => {
                    request.end(Outcome::Unanswered(Unanswered::Malformed));
                    return Attempt::Broken { reset: true };
                }
                Some(ReadEvent::Closed { reset }) => {
                    return closed(conn, request, reset, reused, written_any);
                }
                None => return closed(conn, request, true, reused, written_any),
            },
        }
    }
}

/// v2 closed the connection during `request`.
fn closed(
    conn: &Conn,
    request: &mut Request,
    reset: bool,
    reused: bool,
    written_any: bool,
) -> Attempt {
    if request.ended() {
        return Attempt::Broken { reset: false };
    }
    // Nothing of it was written, or v2 closed right after answering the previous request
    // without a byte for this one: v2 did not take it up. Once only, so a v2 that closes
    // every connection at once cannot make a request go round for ever.
    if !conn.heard_back() && (reused || !written_any) && !request.resent && request.replayable {
        return Attempt::Again;
    }
    let cause = if reset {
        Unanswered::Reset
    } else {
        Unanswered::Closed
    };
    request.end(Outcome::Unanswered(cause));
    Attempt::Broken { reset: false }
}

async fn write_some(
    writer: &mut tokio::net::tcp::OwnedWriteHalf,
    bytes: Option<&Bytes>,
) -> std::io::Result<usize> {
    use tokio::io::AsyncWriteExt as _;
    match bytes {
        Some(bytes) => writer.write(bytes).await,
        None => std::future::pending().await,
    }
}
