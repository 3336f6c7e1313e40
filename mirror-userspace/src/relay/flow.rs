//! The task of one captured client connection: takes its requests from the dispatcher's
//! queue and gives them to v2 in order on a connection from the pool, and ends each in
//! exactly one outcome.
//!
//! Requests the client connection has queued go out back to back on its connection (up to
//! [`PIPELINE_DEPTH`] unanswered), so v2 sees the client's pipelining and a v2 slower than v1
//! is not held to one round trip per request; once v2 is known to close connections after
//! some answers, no more than that many go out on one ([`Depth`]). When v2 closes the
//! connection, the fate of every request on it is known from the order of answers: those
//! answered were answered; those written after an answer that said `Connection: close`, and,
//! if v2 closed with a FIN without a byte after an answer (keep-alive limit, idle timeout)
//! or before any byte of a request was written, the rest, were not taken up and are written
//! once more, in order, on a new connection; otherwise (a reset among them: Linux resets a
//! connection closed with requests unread and drops what v2 had not sent yet, which may be
//! the answer to one it processed) the oldest unanswered one and every one written after it
//! are counted unanswered, and only those not yet written go on.

use std::{
    collections::VecDeque,
    net::IpAddr,
    sync::{
        atomic::{AtomicU64, AtomicU8, Ordering::Relaxed},
        Arc,
    },
    time::Duration,
};

use bytes::Bytes;
use tokio::{
    sync::{mpsc, oneshot},
    time::{sleep_until, Instant},
};

use super::{
    conn::{Conn, ReadEvent},
    pool::InUse,
    stats::{DropReason, Outcome, Unanswered},
    ticket::{Chunk, Ticket},
    Shared,
};

/// Request bytes kept after they are written, so the request can be written again if v2
/// closes before taking it up; a larger request gives its bytes back as they are written,
/// and is not re-sent. At most a quarter of the budget, so a large request always fits.
const REPLAY_LIMIT: usize = 1 << 20;

/// Requests written on one connection before the oldest of them is answered, at most: enough
/// for a v2 slower than v1 to catch up, few enough that what a v2 closing early discards
/// costs little writing again.
const PIPELINE_DEPTH: usize = 8;

/// How often a connection at v2's learnt keep-alive limit may carry one request more, to
/// see whether v2 still closes there.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// How far requests may go out ahead of v2's answers on one connection, learnt from v2.
/// While v2 is not known to close connections, up to [`PIPELINE_DEPTH`] go out unanswered.
/// A connection v2 closed (saying so or not) after `k` answers while requests on it were
/// unanswered shows a keep-alive limit: from then on a connection carries at most `k`
/// requests, so nothing goes out behind the answer v2 closes after (nothing is written in
/// vain, or lost in a reset). A connection that answers more than `k` shows the limit gone;
/// so that a wrong lesson (a v2 restarting resets connections whatever they carried) is not
/// kept for ever, once every [`PROBE_EVERY`] a connection at the limit carries one request
/// more, written once all before it are answered (if v2 does close there, its FIN is
/// usually read first, and the request goes on a new connection).
#[derive(Debug)]
pub(super) struct Depth {
    /// Answers v2 gives on one connection before closing it; `u64::MAX`: none known.
    limit: AtomicU64,
    started: Instant,
    /// Milliseconds since `started` from which the next probe may go.
    next_probe_ms: AtomicU64,
}

impl Default for Depth {
    fn default() -> Self {
        Depth {
            limit: AtomicU64::new(u64::MAX),
            started: Instant::now(),
            next_probe_ms: AtomicU64::new(0),
        }
    }
}

impl Depth {
    /// Whether one more request may begin, at `now`, on a connection that has begun
    /// `exchanges` and had `answers` of them answered.
    fn may_begin(&self, exchanges: u64, answers: u64, now: Instant) -> bool {
        let unanswered = exchanges.saturating_sub(answers);
        if !self.spent(exchanges) {
            return unanswered < PIPELINE_DEPTH as u64;
        }
        unanswered == 0 && self.probe_due(now)
    }

    /// Whether a connection that has begun `exchanges` is at v2's keep-alive limit.
    fn spent(&self, exchanges: u64) -> bool {
        exchanges >= self.limit.load(Relaxed)
    }

    /// A connection has had `answers` answered.
    fn answered(&self, answers_on_conn: u64) {
        if answers_on_conn > self.limit.load(Relaxed) {
            self.limit.store(u64::MAX, Relaxed);
        }
    }

    /// v2 closed a connection, at `now`, after `answers_on_conn` answers with requests on it
    /// unanswered.
    fn closed_after(&self, answers_on_conn: u64, now: Instant) {
        self.limit.store(answers_on_conn.max(1), Relaxed);
        self.next_probe_ms
            .store(self.ms_at(now).saturating_add(ms(PROBE_EVERY)), Relaxed);
    }

    /// Takes the probe if it is due at `now`.
    fn probe_due(&self, now: Instant) -> bool {
        let now = self.ms_at(now);
        let next = self.next_probe_ms.load(Relaxed);
        now >= next
            && self
                .next_probe_ms
                .compare_exchange(next, now.saturating_add(ms(PROBE_EVERY)), Relaxed, Relaxed)
                .is_ok()
    }

    fn ms_at(&self, now: Instant) -> u64 {
        ms(now.saturating_duration_since(self.started))
    }
}

fn ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

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
/// that its requests reach v2 before this one's; `source` is the client's address, whose
/// share of the connections to v2 the task's connection counts in.
pub(super) async fn run(
    source: IpAddr,
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
    let mut line = VecDeque::new();
    loop {
        if line.is_empty() {
            match next_request(&mut queue).await {
                Some(request) => line.push_back(request),
                None => break,
            }
        }
        conn = serve(source, &mut line, conn, &mut queue, &cancel, &shared).await;
    }
    if let Some(conn) = conn {
        if shared.depth.spent(conn.exchanges) {
            // v2 closes it after the answers it has given.
            conn.reset();
        } else {
            shared.pool.release(conn);
        }
    }
    drop(done);
}

/// The next request, skipping what is left of one given up on.
async fn next_request(queue: &mut mpsc::Receiver<Piece>) -> Option<Request> {
    loop {
        if let Piece::Head { chunk, ticket } = queue.recv().await? {
            return Some(Request::new(chunk, ticket));
        }
    }
}

/// One request: the pieces received and not yet given back (all of them while it may be
/// written again), and its ticket while it has no outcome.
struct Request {
    chunks: Vec<Chunk>,
    complete: bool,
    ticket: Option<Ticket>,
    is_head: bool,
    /// It was written on an earlier connection, which v2 closed before taking it up.
    resent: bool,
    /// Every byte of it is still held: it can be written again from the start.
    replayable: bool,
    /// Where writing it on the current connection has got to.
    cursor: Cursor,
    /// Its response is expected on the current connection.
    begun: bool,
    /// v2 accepted bytes of it on the current connection.
    written_any: bool,
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
            cursor: Cursor::default(),
            begun: false,
            written_any: false,
        }
    }

    fn push(&mut self, chunk: Chunk) {
        if let Some(ticket) = &mut self.ticket {
            ticket.body(chunk.bytes.len());
        }
        self.chunks.push(chunk);
    }

    /// `n` more bytes at the cursor were written. Past `replay_limit` held, written chunks
    /// are given back to the budget as soon as they are written.
    fn written(&mut self, n: usize, replay_limit: usize) {
        self.written_any = true;
        self.cursor.offset += n;
        if self.replayable {
            let held: usize = self.chunks.iter().map(|chunk| chunk.bytes.len()).sum();
            self.replayable = held <= replay_limit;
        }
        if self.replayable {
            return;
        }
        let mut done = self.cursor.chunk;
        if self
            .chunks
            .get(self.cursor.chunk)
            .is_some_and(|chunk| self.cursor.offset >= chunk.bytes.len())
        {
            done += 1;
            self.cursor.offset = 0;
        }
        self.chunks.drain(..done.min(self.chunks.len()));
        self.cursor.chunk = 0;
    }

    fn end(&mut self, outcome: Outcome) {
        if let Some(ticket) = self.ticket.take() {
            ticket.end(outcome);
        }
    }

    fn ended(&self) -> bool {
        self.ticket.is_none()
    }

    /// The bytes at the cursor not yet written, up to the end of their chunk.
    fn unwritten(&mut self) -> Option<Bytes> {
        while let Some(chunk) = self.chunks.get(self.cursor.chunk) {
            if self.cursor.offset < chunk.bytes.len() {
                return Some(chunk.bytes.slice(self.cursor.offset..));
            }
            self.cursor.chunk += 1;
            self.cursor.offset = 0;
        }
        None
    }

    /// Complete and written whole on the current connection.
    fn sent(&mut self) -> bool {
        self.complete && self.unwritten().is_none()
    }

    /// The connection it was on is gone: it starts again on the next one.
    fn move_on(&mut self) {
        self.resent |= self.written_any;
        self.cursor = Cursor::default();
        self.begun = false;
        self.written_any = false;
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

/// How the requests' time on one connection ended.
enum Attempt {
    /// Every request has its outcome and the connection may carry the next one.
    Reusable,
    /// The connection cannot be used again (`reset`: close it with RST); the requests left
    /// without an outcome go on a new one.
    Broken { reset: bool },
}

/// Gives the requests of `line`, and those queued behind them, to v2 (on `conn` if it is
/// still good) until each has an outcome; returns the connection if it can carry the next
/// request.
async fn serve(
    source: IpAddr,
    line: &mut VecDeque<Request>,
    mut conn: Option<InUse>,
    queue: &mut mpsc::Receiver<Piece>,
    cancel: &Cancel,
    shared: &Shared,
) -> Option<InUse> {
    loop {
        let fresh = line.front().is_some_and(|request| request.resent);
        let kept = conn.take().filter(|_| !fresh);
        let mut current = match kept.and_then(|mut kept| kept.usable().then_some(kept)) {
            Some(kept) => kept,
            None => match shared.pool.acquire(source, fresh).await {
                Ok(fresh) => fresh,
                Err(reason) => {
                    for request in line.iter_mut() {
                        request.end(Outcome::Dropped(reason));
                    }
                    skip_rest(line, queue).await;
                    return None;
                }
            },
        };
        match attempt(&mut current, line, queue, cancel, shared).await {
            Attempt::Reusable => return Some(current),
            Attempt::Broken { reset } => {
                if reset {
                    current.reset();
                }
                if line.iter().all(Request::ended) {
                    skip_rest(line, queue).await;
                    return None;
                }
                line.retain(|request| !request.ended());
                for request in line.iter_mut() {
                    if request.written_any {
                        shared.stats.resent.fetch_add(1, Relaxed);
                    }
                    request.move_on();
                }
            }
        }
    }
}

/// Every request of `line` has its outcome: takes the rest of the newest off the queue.
async fn skip_rest(line: &mut VecDeque<Request>, queue: &mut mpsc::Receiver<Piece>) {
    if let Some(newest) = line.back_mut() {
        newest.skip_rest(queue).await;
    }
    line.clear();
}

/// Writes the requests of `line` in order (pieces still arriving are written as they come,
/// and requests queued behind them join the line up to [`PIPELINE_DEPTH`]) while the
/// connection's reader matches answers to them. The write timeout measures progress: it runs
/// only while bytes wait to be written, and restarts whenever v2 accepts some; the oldest
/// request written whole must be answered within the response timeout.
async fn attempt(
    conn: &mut Conn,
    line: &mut VecDeque<Request>,
    queue: &mut mpsc::Receiver<Piece>,
    cancel: &Cancel,
    shared: &Shared,
) -> Attempt {
    let timeout = shared.config.response_timeout;
    let replay_limit = REPLAY_LIMIT.min(shared.config.max_inflight_bytes / 4);
    // Answers during this attempt: while v2 makes progress, what it then leaves untaken may be
    // written again even if it was before.
    let mut progress = false;
    let mut write_failed = false;
    // A write failed with ECONNRESET: v2 reset the connection. The error is told once, to
    // the writer or the reader, whichever asks first; the other then sees only the end (the
    // reader an EOF), so the reader's word alone does not say it was no reset.
    let mut reset_seen = false;
    let mut queue_closed = false;
    // The newest request was given up on after some of it was written: once the older ones
    // have their outcomes, the connection is reset so v2 never takes it for whole.
    let mut poisoned = false;
    let mut stall_deadline = Instant::now() + timeout;
    let mut was_pending = false;
    let mut answer_deadline: Option<Instant> = None;
    loop {
        let stop_writing = write_failed || poisoned;
        while let Some(oldest) = line.front_mut() {
            if !(oldest.ended() && oldest.complete && (stop_writing || oldest.sent())) {
                break;
            }
            line.pop_front();
        }
        if line.is_empty() {
            return match (poisoned, write_failed) {
                (true, _) => Attempt::Broken { reset: true },
                (false, true) => Attempt::Broken { reset: false },
                (false, false) => Attempt::Reusable,
            };
        }
        // The request being written: the oldest not complete and written whole.
        let writing = if stop_writing {
            None
        } else {
            line.iter_mut().position(|request| !request.sent())
        };
        let pending = match writing.and_then(|at| line.get_mut(at)) {
            Some(request) if request.begun => request.unwritten(),
            Some(request)
                if shared
                    .depth
                    .may_begin(conn.exchanges, conn.answers, Instant::now()) =>
            {
                if conn.exchanges > 0 {
                    shared.stats.connections_reused.fetch_add(1, Relaxed);
                }
                conn.begin(request.is_head);
                request.begun = true;
                request.unwritten()
            }
            // v2 closes this connection after the answers it has given: the rest go on a
            // new one.
            Some(_) if conn.exchanges == conn.answers => return Attempt::Broken { reset: true },
            // It goes out once v2 has answered more.
            Some(_) | None => None,
        };
        if pending.is_some() && !was_pending {
            // Bytes to write again after a wait for the client: the stall clock starts now.
            stall_deadline = Instant::now() + timeout;
        }
        was_pending = pending.is_some();
        if let Some(awaited) = line.iter_mut().find(|request| !request.ended()) {
            if awaited.begun && (stop_writing || awaited.sent()) {
                answer_deadline.get_or_insert_with(|| Instant::now() + timeout);
            }
        }
        let newest_open = line.back().is_some_and(|request| !request.complete);
        let pull = !queue_closed && (newest_open || (!stop_writing && line.len() < PIPELINE_DEPTH));
        let Some((writer, events)) = conn.halves() else {
            fail_written(line, Unanswered::Reset);
            return Attempt::Broken { reset: false };
        };
        tokio::select! {
            piece = queue.recv(), if pull => match piece {
                Some(Piece::Body(chunk)) => {
                    if let Some(newest) = line.back_mut().filter(|request| !request.complete) {
                        newest.push(chunk);
                    }
                }
                Some(Piece::End) => {
                    if let Some(newest) = line.back_mut() {
                        newest.complete = true;
                    }
                }
                Some(Piece::Head { chunk, ticket }) => {
                    if newest_open {
                        stray(ticket);
                    } else {
                        line.push_back(Request::new(chunk, ticket));
                    }
                }
                None => {
                    queue_closed = true;
                    if let Some(newest) = line.back_mut().filter(|request| !request.complete) {
                        // The dispatcher gave up on this request (queue full, capture gap,
                        // shutdown): v2 must not take what it got for a whole request.
                        newest.end(Outcome::Dropped(cancel.reason()));
                        newest.complete = true;
                        if newest.written_any {
                            poisoned = true;
                        } else {
                            line.pop_back();
                        }
                    }
                }
            },
            written = write_some(writer, pending.as_ref()), if pending.is_some() => match written {
                Ok(n) => {
                    if let Some(request) = writing.and_then(|at| line.get_mut(at)) {
                        request.written(n, replay_limit);
                    }
                    stall_deadline = Instant::now() + timeout;
                    shared.stats.bytes_sent.fetch_add(n as u64, Relaxed);
                }
                // v2 closed or reset: the reader says what it answered first.
                Err(error) => {
                    write_failed = true;
                    reset_seen |= error.kind() == std::io::ErrorKind::ConnectionReset;
                    answer_deadline.get_or_insert_with(|| Instant::now() + timeout);
                }
            },
            () = sleep_until(stall_deadline), if pending.is_some() => {
                fail_written(line, Unanswered::Timeout);
                return Attempt::Broken { reset: true };
            }
            () = sleep_until(answer_deadline.unwrap_or(stall_deadline)),
                if answer_deadline.is_some() =>
            {
                fail_written(line, Unanswered::Timeout);
                return Attempt::Broken { reset: true };
            }
            event = events.recv() => match event {
                Some(ReadEvent::Answered { status, close }) => {
                    shared.pool.alive();
                    conn.answered(close);
                    shared.depth.answered(conn.answers);
                    progress = true;
                    answer_deadline = None;
                    if let Some(awaited) = line.iter_mut().find(|request| !request.ended()) {
                        awaited.end(Outcome::Answered(status));
                    }
                    if close {
                        return announced_close(conn, line, &shared.depth);
                    }
                }
                Some(ReadEvent::Malformed) => {
                    fail_written(line, Unanswered::Malformed);
                    return Attempt::Broken { reset: true };
                }
                Some(ReadEvent::Closed { reset }) => {
                    return closed(conn, line, reset || reset_seen, progress, &shared.depth);
                }
                None => return closed(conn, line, true, progress, &shared.depth),
            },
        }
    }
}

/// Ends, with `cause`, every request without an outcome that v2 may have taken up (bytes of
/// it were written); the others may go on a new connection.
fn fail_written(line: &mut VecDeque<Request>, cause: Unanswered) {
    for request in line.iter_mut().filter(|request| request.written_any) {
        request.end(Outcome::Unanswered(cause));
    }
}

/// Whether requests begun on this connection are still unanswered: v2 closing now cuts
/// them off, and shows the keep-alive limit to learn.
fn cut_off(line: &VecDeque<Request>) -> bool {
    line.iter().any(|request| request.begun && !request.ended())
}

/// v2 answered with `Connection: close`: it processes no request sent after the one it
/// answered (RFC 9112, section 9.6), so those written after it go on a new connection, even
/// if the close comes as a reset (one too large to hold for writing again is unanswered).
/// The connection is reset: v2 is done with it, and the node keeps no TIME_WAIT.
fn announced_close(conn: &Conn, line: &mut VecDeque<Request>, depth: &Depth) -> Attempt {
    if cut_off(line) {
        depth.closed_after(conn.answers, Instant::now());
    }
    for request in line.iter_mut().filter(|request| request.written_any) {
        if !request.replayable {
            request.end(Outcome::Unanswered(Unanswered::Closed));
        }
    }
    Attempt::Broken { reset: true }
}

/// v2 closed the connection while requests of `line` were without an outcome; `progress`:
/// it answered some of them first.
fn closed(
    conn: &Conn,
    line: &mut VecDeque<Request>,
    reset: bool,
    progress: bool,
    depth: &Depth,
) -> Attempt {
    let cause = if reset {
        Unanswered::Reset
    } else {
        Unanswered::Closed
    };
    let Some(awaited) = line.iter().find(|request| !request.ended()) else {
        return Attempt::Broken { reset: false };
    };
    if cut_off(line) {
        depth.closed_after(conn.answers, Instant::now());
    }
    // v2 closed with a FIN right after an answer without a byte for the next request, or
    // before any byte of the oldest unanswered one was written: it took none of them up, and
    // they may be written again. Once only unless v2 answered some on the way, so a v2 that
    // closes every connection at once cannot make a request go round for ever. A reset is no
    // such proof: v2 closing with requests unread makes Linux reset the connection and drop
    // what v2 had not sent yet, which may be the answer to a request it processed.
    let untaken = !conn.heard_back() && (conn.answers > 0 || !awaited.written_any);
    for request in line.iter_mut().filter(|request| request.written_any) {
        if reset || !untaken || (request.resent && !progress) || !request.replayable {
            request.end(Outcome::Unanswered(cause));
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_depth_follows_what_v2_answers_before_closing() {
        let depth = Depth::default();
        let now = Instant::now();
        // Nothing known: up to PIPELINE_DEPTH unanswered on a connection, however long.
        let deep = PIPELINE_DEPTH as u64;
        assert!(depth.may_begin(1000 + deep - 1, 1000, now));
        assert!(!depth.may_begin(1000 + deep, 1000, now));
        // v2 closed after 3: three requests per connection, back to back, then no more.
        depth.closed_after(3, now);
        assert!(depth.may_begin(2, 0, now));
        assert!(depth.spent(3));
        assert!(!depth.may_begin(3, 3, now));
        // A v2 closing before any answer still gets one request per connection.
        depth.closed_after(0, now);
        assert!(depth.may_begin(0, 0, now));
        assert!(!depth.may_begin(1, 1, now));
        // A connection answering more than that shows the limit gone.
        depth.answered(1);
        assert!(!depth.may_begin(1, 1, now));
        depth.answered(2);
        assert!(depth.may_begin(5, 2, now));
    }

    #[test]
    fn a_connection_at_the_limit_carries_one_more_once_in_a_while() {
        let depth = Depth::default();
        let now = Instant::now();
        depth.closed_after(2, now);
        assert!(!depth.may_begin(2, 2, now));
        let later = now + PROBE_EVERY;
        // Only once all before it are answered, and only one connection per interval.
        assert!(!depth.may_begin(2, 1, later));
        assert!(depth.may_begin(2, 2, later));
        assert!(!depth.may_begin(2, 2, later));
        assert!(depth.may_begin(2, 2, later + PROBE_EVERY));
    }
}
