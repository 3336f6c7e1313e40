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
    io,
    net::IpAddr,
    sync::{atomic::Ordering::Relaxed, Arc, OnceLock},
    time::Duration,
};

use bytes::Bytes;
use mirror_cores::{flow::FlowKey, outcome::EndReason};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    runtime::Handle,
    sync::mpsc,
    task::JoinSet,
    time::{sleep_until, Instant},
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
pub(super) enum Piece {
    Data(Chunk),
    /// The client's connection ended: with a FIN (`fin`) or a RST.
    End {
        fin: bool,
    },
}

/// Why the dispatcher gave up on a stream (read by its task when the queue closes early).
pub(super) type Cancel = Arc<OnceLock<DropReason>>;

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
            match shared.budget.reserve(flow.src.ip(), data) {
                Ok(chunk) => queue
                    .try_send(Piece::Data(chunk))
                    .err()
                    .map(|_| DropReason::QueueFull),
                Err(reason) => Some(reason),
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
    let (sender, receiver) = mpsc::channel(shared.config.queue_depth.max(1));
    let cancel = Cancel::default();
    match &shared.config.h2c {
        // h2c: one ticket per stream, issued as streams are decoded.
        Some(mirror) => tasks.spawn_on(
            super::h2c::run(
                receiver,
                Arc::clone(&cancel),
                flow.src,
                mirror.clone(),
                Arc::clone(shared),
            ),
            runtime,
        ),
        None => {
            let ticket = Ticket::issue(&shared.stats, None, flow.src, &Bytes::new());
            tasks.spawn_on(
                run(
                    flow.src.ip(),
                    receiver,
                    Arc::clone(&cancel),
                    ticket,
                    Arc::clone(shared),
                ),
                runtime,
            )
        }
    };
    Client {
        queue: Some(sender),
        cancel,
    }
}

async fn run(
    source: IpAddr,
    mut queue: mpsc::Receiver<Piece>,
    cancel: Cancel,
    ticket: Ticket,
    shared: Arc<Shared>,
) {
    let outcome = relay(source, &mut queue, &cancel, &shared).await;
    ticket.end(outcome);
}

/// Gives the stream of a client connection from `source` to v2 and says how it ended.
async fn relay(
    source: IpAddr,
    queue: &mut mpsc::Receiver<Piece>,
    cancel: &Cancel,
    shared: &Shared,
) -> Outcome {
    // Bytes queue (bounded) while the connection is made.
    let (mut stream, _slot) = match shared.pool.open_stream(source).await {
        Ok(opened) => opened,
        Err(reason) => return Outcome::Dropped(reason),
    };
    let (outcome, close) = exchange(&mut stream, queue, cancel, shared).await;
    if close == Close::Reset {
        // RST (zero linger): v2 never takes an incomplete stream for a complete one.
        let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    }
    outcome
}

/// How v2's connection is closed once the stream's outcome is known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Close {
    /// Both sides sent their FIN.
    Graceful,
    Reset,
}

/// Writes each piece as it comes, reading (and throwing away) v2's replies all the while so
/// that neither side can block the other.
async fn exchange(
    stream: &mut TcpStream,
    queue: &mut mpsc::Receiver<Piece>,
    cancel: &Cancel,
    shared: &Shared,
) -> (Outcome, Close) {
    let timeout = shared.config.response_timeout;
    let (mut reader, mut writer) = stream.split();
    let mut replies = Replies::default();
    loop {
        let piece = loop {
            tokio::select! {
                piece = queue.recv() => break piece,
                read = reader.read(&mut replies.buf), if replies.open() => replies.read(read),
            }
        };
        match piece {
            Some(Piece::Data(chunk)) => {
                let mut at = 0;
                let mut deadline = Instant::now() + timeout;
                while at < chunk.bytes.len() {
                    tokio::select! {
                        wrote = writer.write(&chunk.bytes[at..]) => match wrote {
                            Ok(0) => return (Outcome::Unanswered(Unanswered::Closed), Close::Reset),
                            Ok(n) => {
                                at += n;
                                deadline = Instant::now() + timeout;
                            }
                            Err(error) => {
                                return (Outcome::Unanswered(closed_by(&error)), Close::Reset)
                            }
                        },
                        read = reader.read(&mut replies.buf), if replies.open() => replies.read(read),
                        () = sleep_until(deadline) => {
                            return (Outcome::Unanswered(Unanswered::Timeout), Close::Reset)
                        }
                    }
                }
                shared.stats.bytes_sent.fetch_add(at as u64, Relaxed);
            }
            // The client reset its connection after v1 took these bytes: so does v2's.
            Some(Piece::End { fin: false }) => {
                return (Outcome::Answered(STREAM_TAKEN), Close::Reset)
            }
            Some(Piece::End { fin: true }) => {
                if writer.shutdown().await.is_err() {
                    return (Outcome::Unanswered(Unanswered::Reset), Close::Reset);
                }
                // v2 saw the whole stream once it closes its side after our FIN.
                let deadline = Instant::now() + timeout;
                while replies.open() {
                    tokio::select! {
                        read = reader.read(&mut replies.buf) => replies.read(read),
                        () = sleep_until(deadline) => {
                            return (Outcome::Unanswered(Unanswered::Timeout), Close::Reset)
                        }
                    }
                }
                return match replies.closed {
                    Some(Ok(())) => (Outcome::Answered(STREAM_TAKEN), Close::Graceful),
                    Some(Err(kind)) => (Outcome::Unanswered(closed_by_kind(kind)), Close::Reset),
                    None => (Outcome::Unanswered(Unanswered::Closed), Close::Reset),
                };
            }
            None => {
                let reason = cancel.get().copied().unwrap_or(DropReason::Shutdown);
                return (Outcome::Dropped(reason), Close::Reset);
            }
        }
    }
}

/// v2's side of the connection: read into a buffer that is thrown away, until it closes.
struct Replies {
    buf: Vec<u8>,
    /// How v2 closed its side, once it did: with a FIN (`Ok`) or an error.
    closed: Option<Result<(), io::ErrorKind>>,
}

impl Default for Replies {
    fn default() -> Self {
        Replies {
            buf: vec![0; DISCARD_BUFFER],
            closed: None,
        }
    }
}

impl Replies {
    fn open(&self) -> bool {
        self.closed.is_none()
    }

    fn read(&mut self, read: io::Result<usize>) {
        match read {
            Ok(0) => self.closed = Some(Ok(())),
            Ok(_) => {}
            Err(error) => self.closed = Some(Err(error.kind())),
        }
    }
}

fn closed_by(error: &io::Error) -> Unanswered {
    closed_by_kind(error.kind())
}

/// A reset is told from other closes (a write into a closed connection).
fn closed_by_kind(kind: io::ErrorKind) -> Unanswered {
    match kind {
        io::ErrorKind::ConnectionReset => Unanswered::Reset,
        _ => Unanswered::Closed,
    }
}

#[cfg(test)]
mod tests {
    use std::{net::SocketAddr, sync::Mutex};

    use mirror_cores::outcome::StopReason;
    use tokio::net::TcpListener;

    use super::*;
    use crate::{
        observe::Source,
        relay::{Relay, RelayConfig, RelayStats},
    };

    /// How one of v2's connections ended, and what it got.
    #[derive(Clone, Debug, PartialEq, Eq)]
    struct Received {
        bytes: Vec<u8>,
        /// The peer closed with a FIN (rather than a reset).
        fin: bool,
    }

    /// A v2 that keeps what each connection sends and answers every read with a line (to be
    /// thrown away); after the client's FIN it closes, or holds on for `linger`.
    async fn v2(linger: Duration) -> (SocketAddr, Arc<Mutex<Vec<Received>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let record = Arc::clone(&got);
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let record = Arc::clone(&record);
                tokio::spawn(async move {
                    let mut bytes = Vec::new();
                    let mut buf = vec![0u8; 8192];
                    // A reset shows in a read or, reported once, in a reply's write.
                    let fin = loop {
                        match conn.read(&mut buf).await {
                            Ok(0) => break true,
                            Ok(n) => {
                                bytes.extend_from_slice(&buf[..n]);
                                if conn.write_all(b"+OK\r\n").await.is_err() {
                                    break false;
                                }
                            }
                            Err(_) => break false,
                        }
                    };
                    record.lock().unwrap().push(Received { bytes, fin });
                    tokio::time::sleep(linger).await;
                });
            }
        });
        (addr, got)
    }

    fn config(addr: SocketAddr) -> RelayConfig {
        RelayConfig {
            shadow: addr.to_string(),
            connect_timeout: Duration::from_millis(500),
            response_timeout: Duration::from_millis(500),
            ..RelayConfig::default()
        }
    }

    fn flow(port: u16) -> FlowKey {
        FlowKey {
            src: SocketAddr::from(([10, 0, 0, 1], port)),
            dst: SocketAddr::from(([10, 0, 0, 2], 6379)),
        }
    }

    /// A connection's bytes: distinct per connection, so a mix-up shows.
    fn stream_bytes(port: u16, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u64 * 31 + u64::from(port)) as u8)
            .collect()
    }

    fn send(relay: &mut Relay, flow: FlowKey, bytes: &[u8], piece: usize) {
        for part in bytes.chunks(piece) {
            relay.handle(Event::StreamData {
                flow,
                data: Bytes::copy_from_slice(part),
            });
        }
    }

    async fn settle(stats: &RelayStats, got: &Mutex<Vec<Received>>, connections: usize) {
        for _ in 0..500 {
            if stats.pending() == 0 && got.lock().unwrap().len() >= connections {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Non-zero outcome counters by name (`answered_tcp`, `dropped_queue_full`, ...).
    fn outcomes(stats: &Arc<RelayStats>) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        stats.visit(&mut |s| {
            let name = match s.labels.first() {
                Some((_, label)) => format!("{}_{label}", s.name),
                None => s.name.to_owned(),
            };
            let counted = matches!(s.name, "requests" | "answered" | "unanswered" | "dropped");
            if counted && s.value > 0 {
                out.push((name, s.value));
            }
        });
        out
    }

    fn named(pairs: &[(&str, u64)]) -> Vec<(String, u64)> {
        pairs.iter().map(|(n, v)| (n.to_string(), *v)).collect()
    }

    use crate::relay::Event;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn streams_reach_v2_whole_and_in_order_and_are_answered_at_their_close() {
        let (addr, got) = v2(Duration::ZERO).await;
        let mut relay = Relay::new(config(addr));
        let stats = relay.stats();
        let ports = [1u16, 2, 3];
        for &port in &ports {
            send(&mut relay, flow(port), &stream_bytes(port, 200_000), 1448);
        }
        relay.handle(Event::FlowEnd {
            flow: flow(1),
            reason: EndReason::Fin,
        });
        relay.handle(Event::FlowEnd {
            flow: flow(2),
            reason: EndReason::Fin,
        });
        // A client RST: v2 took every byte v1 took, then its connection is reset too.
        relay.handle(Event::FlowEnd {
            flow: flow(3),
            reason: EndReason::Rst,
        });
        settle(&stats, &got, 3).await;
        assert_eq!(
            outcomes(&stats),
            named(&[("requests", 3), ("answered_tcp", 3)])
        );
        let mut received = got.lock().unwrap().clone();
        received.sort_by_key(|r| r.bytes.first().copied());
        assert_eq!(received.len(), 3);
        for (got, port) in received.iter().zip(ports) {
            let sent = stream_bytes(port, 200_000);
            if port == 3 {
                // Reset as the client's was: what v2 had not read yet is lost, as at v1.
                assert!(!got.fin && sent.starts_with(&got.bytes), "{port}");
            } else {
                assert!(got.fin && got.bytes == sent, "{port}");
            }
        }
        assert_eq!(stats.bytes_sent.load(Relaxed), 600_000);
        relay.shutdown(Duration::from_secs(1)).await;
        assert_eq!(stats.queued_bytes.load(Relaxed), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_v2_that_does_not_close_after_the_fin_leaves_the_stream_unanswered() {
        let (addr, got) = v2(Duration::from_secs(5)).await;
        let mut relay = Relay::new(config(addr));
        let stats = relay.stats();
        send(&mut relay, flow(1), b"*1\r\n$4\r\nPING\r\n", 100);
        relay.handle(Event::FlowEnd {
            flow: flow(1),
            reason: EndReason::Fin,
        });
        settle(&stats, &got, 1).await;
        assert_eq!(
            outcomes(&stats),
            named(&[("requests", 1), ("unanswered_timeout", 1)])
        );
        relay.shutdown(Duration::from_secs(1)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_queue_or_a_capture_gap_drops_the_stream_and_resets_v2() {
        let (addr, got) = v2(Duration::ZERO).await;
        let mut relay = Relay::new(RelayConfig {
            queue_depth: 2,
            ..config(addr)
        });
        let stats = relay.stats();
        // Far more pieces than the queue holds, handed over before the task runs.
        send(&mut relay, flow(1), &stream_bytes(1, 100_000), 100);
        relay.handle(Event::FlowEnd {
            flow: flow(1),
            reason: EndReason::Fin,
        });
        send(&mut relay, flow(2), b"*1\r\n$4\r\nPING\r\n", 100);
        relay.handle(Event::FlowEnd {
            flow: flow(2),
            reason: EndReason::Stopped(StopReason::StreamGap),
        });
        settle(&stats, &got, 2).await;
        assert_eq!(
            outcomes(&stats),
            named(&[
                ("requests", 2),
                ("dropped_queue_full", 1),
                ("dropped_aborted", 1)
            ])
        );
        // v2 never saw either stream end as if it were complete.
        let received = got.lock().unwrap().clone();
        assert_eq!(received.len(), 2);
        assert!(received.iter().all(|r| !r.fin), "{received:?}");
        relay.shutdown(Duration::from_secs(1)).await;
        assert_eq!(stats.queued_bytes.load(Relaxed), 0);
    }
}
