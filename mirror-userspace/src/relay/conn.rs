//! One connection to v2. Its reader is a task of its own that frames v2's responses as they
//! come, whatever the writer is doing (a write blocked on a slow v2 never stops the reading
//! that would unblock it), and reports each answer and the connection's end as events.

use std::{
    io,
    net::SocketAddr,
    sync::{atomic::Ordering::Relaxed, Arc, Mutex, MutexGuard},
    time::Duration,
};

use tokio::{
    io::AsyncReadExt,
    net::{
        tcp::{OwnedReadHalf, OwnedWriteHalf},
        TcpSocket, TcpStream,
    },
    sync::{mpsc, OwnedSemaphorePermit},
    task::JoinHandle,
    time::Instant,
};

use super::{
    stats::{ConnectFailure, RelayStats},
    ResponseFramer,
};
use mirror_cores::http::Answer;

/// Bytes read from v2 at a time: large responses cost few wake-ups.
const READ_BUFFER: usize = 64 * 1024;

/// What the reader saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ReadEvent {
    /// A complete final response, with its status; `close`: v2 said it closes after it.
    Answered { status: u16, close: bool },
    /// v2 closed (`reset`: with RST) its side; nothing more will come.
    Closed { reset: bool },
    /// v2 sent something that is not a response to what was sent.
    Malformed,
}

#[derive(Debug, Default)]
struct ReadState {
    framer: ResponseFramer,
    /// Bytes of a response not yet whole have arrived (since the last answer).
    heard: bool,
}

/// Holds one of the connection cap's slots and the open-connections gauge while it lives.
#[derive(Debug)]
pub(super) struct Slot {
    _permit: OwnedSemaphorePermit,
    stats: Arc<RelayStats>,
}

impl Slot {
    pub(super) fn new(permit: OwnedSemaphorePermit, stats: &Arc<RelayStats>) -> Slot {
        stats.shadow_connections.fetch_add(1, Relaxed);
        Slot {
            _permit: permit,
            stats: Arc::clone(stats),
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.stats.shadow_connections.fetch_sub(1, Relaxed);
    }
}

#[derive(Debug)]
pub(super) struct Conn {
    /// `None` once reset: the socket then closes (with RST) when the reader's half goes.
    writer: Option<OwnedWriteHalf>,
    events: mpsc::Receiver<ReadEvent>,
    state: Arc<Mutex<ReadState>>,
    reader: JoinHandle<()>,
    /// Requests begun on this connection.
    pub(super) exchanges: u64,
    /// Of those, answered.
    pub(super) answers: u64,
    pub(super) idle_since: Instant,
    dead: bool,
    /// v2 said it closes after its last answer: no request may begin on it.
    closing: bool,
    _slot: Slot,
    /// Held until v2 first answers on this connection (the pool's bound on new connections).
    opening: Option<OwnedSemaphorePermit>,
}

impl Conn {
    /// Takes over a connected stream; must run inside the runtime its reader should use.
    pub(super) fn new(stream: TcpStream, slot: Slot) -> Conn {
        let (reader, writer) = stream.into_split();
        let state = Arc::new(Mutex::new(ReadState::default()));
        let (sender, events) = mpsc::channel(4);
        let reader = tokio::spawn(read_responses(reader, Arc::clone(&state), sender));
        Conn {
            writer: Some(writer),
            events,
            state,
            reader,
            exchanges: 0,
            answers: 0,
            idle_since: Instant::now(),
            dead: false,
            closing: false,
            _slot: slot,
            opening: None,
        }
    }

    /// Holds `permit` until v2 first answers.
    pub(super) fn opening(&mut self, permit: OwnedSemaphorePermit) {
        self.opening = Some(permit);
    }

    /// v2 answered a request on this connection (`close`: and said it closes after it).
    pub(super) fn answered(&mut self, close: bool) {
        self.answers += 1;
        self.closing |= close;
        self.opening = None;
    }

    /// A request starts: its response comes after those of the requests begun before it.
    pub(super) fn begin(&mut self, is_head: bool) {
        lock(&self.state).framer.request_sent(is_head);
        self.exchanges += 1;
    }

    /// Whether v2 sent any byte since its last whole response (or since the connection
    /// opened): the oldest unanswered request may be in progress.
    pub(super) fn heard_back(&self) -> bool {
        lock(&self.state).heard
    }

    /// Whether a new request may go out on this connection: v2 has not closed it (or said
    /// it would), sent anything unasked, or left a response unfinished.
    pub(super) fn usable(&mut self) -> bool {
        self.dead |= self.writer.is_none() || self.closing;
        while !self.dead {
            match self.events.try_recv() {
                Ok(_) | Err(mpsc::error::TryRecvError::Disconnected) => self.dead = true,
                Err(mpsc::error::TryRecvError::Empty) => break,
            }
        }
        !self.dead && lock(&self.state).framer.outstanding() == 0
    }

    /// The write half and the reader's events, to wait on both at once. After `Closed` or
    /// `Malformed` no event follows, and the connection is not to be used again.
    pub(super) fn halves(
        &mut self,
    ) -> Option<(&mut OwnedWriteHalf, &mut mpsc::Receiver<ReadEvent>)> {
        Some((self.writer.as_mut()?, &mut self.events))
    }

    /// Closes with RST (zero linger): v2 discards a partial request instead of waiting for
    /// the rest, and the node keeps no TIME_WAIT.
    pub(super) fn reset(mut self) {
        if let Some(writer) = self.writer.take() {
            let stream: &TcpStream = writer.as_ref();
            let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
            // No FIN first: the socket closes when the reader's half is dropped.
            writer.forget();
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // The read half goes with the task, the write half (FIN, unless reset) with `self`.
        self.reader.abort();
    }
}

fn lock(state: &Mutex<ReadState>) -> MutexGuard<'_, ReadState> {
    // Each update leaves the framer whole: recover from a poisoned lock.
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn read_responses(
    mut reader: OwnedReadHalf,
    state: Arc<Mutex<ReadState>>,
    events: mpsc::Sender<ReadEvent>,
) {
    let mut buf = vec![0u8; READ_BUFFER];
    let mut answers: Vec<Answer> = Vec::new();
    let last = loop {
        let read = reader.read(&mut buf).await;
        let (fed, last) = {
            let mut state = lock(&state);
            match read {
                Ok(0) => {
                    state.framer.closed(|answer| answers.push(answer));
                    (Ok(()), Some(ReadEvent::Closed { reset: false }))
                }
                Err(error) => {
                    let reset = error.kind() == io::ErrorKind::ConnectionReset;
                    (Ok(()), Some(ReadEvent::Closed { reset }))
                }
                Ok(n) => {
                    let fed = state.framer.feed(&buf[..n], |answer| answers.push(answer));
                    // After an answer, only what follows it counts (a response begun).
                    state.heard = if answers.is_empty() {
                        true
                    } else {
                        state.framer.mid_response()
                    };
                    (fed, None)
                }
            }
        };
        if let Some(last) = last {
            break last;
        }
        if !send_answers(&mut answers, &events).await {
            return;
        }
        if fed.is_err() {
            break ReadEvent::Malformed;
        }
    };
    if send_answers(&mut answers, &events).await {
        let _ = events.send(last).await;
    }
}

/// Reports `answers` in order; false once nobody listens.
async fn send_answers(answers: &mut Vec<Answer>, events: &mpsc::Sender<ReadEvent>) -> bool {
    for Answer { status, close } in answers.drain(..) {
        if events
            .send(ReadEvent::Answered { status, close })
            .await
            .is_err()
        {
            return false;
        }
    }
    true
}

/// Connects to one of `addrs` (in order) within `timeout`, sockets marked with `mark`.
pub(super) async fn connect(
    addrs: &[SocketAddr],
    mark: u32,
    timeout: Duration,
) -> Result<TcpStream, ConnectFailure> {
    let attempt = async {
        let mut last = ConnectFailure::Other;
        for addr in addrs {
            match connect_to(*addr, mark).await {
                Ok(stream) => return Ok(stream),
                Err(error) => {
                    tracing::debug!(%addr, %error, "shadow connect failed");
                    last = classify(&error);
                }
            }
        }
        Err(last)
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or(Err(ConnectFailure::TimedOut))
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

/// Which side a connect error is on.
pub(super) fn classify(error: &io::Error) -> ConnectFailure {
    match error.raw_os_error() {
        Some(libc::ECONNREFUSED) => ConnectFailure::Refused,
        Some(libc::ETIMEDOUT) => ConnectFailure::TimedOut,
        Some(libc::EHOSTUNREACH | libc::ENETUNREACH | libc::ECONNRESET | libc::ECONNABORTED) => {
            ConnectFailure::Unreachable
        }
        Some(libc::EADDRNOTAVAIL | libc::EADDRINUSE) => ConnectFailure::AddrUnavailable,
        Some(libc::EMFILE | libc::ENFILE) => ConnectFailure::FdLimit,
        Some(libc::ENOBUFS | libc::ENOMEM) => ConnectFailure::NoBuffers,
        _ => ConnectFailure::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_errors_are_told_from_remote_ones() {
        let os = io::Error::from_raw_os_error;
        assert_eq!(classify(&os(libc::ECONNREFUSED)), ConnectFailure::Refused);
        assert_eq!(
            classify(&os(libc::EADDRNOTAVAIL)),
            ConnectFailure::AddrUnavailable
        );
        assert_eq!(classify(&os(libc::EMFILE)), ConnectFailure::FdLimit);
        assert_eq!(classify(&os(libc::ENOBUFS)), ConnectFailure::NoBuffers);
        assert_eq!(
            classify(&os(libc::EHOSTUNREACH)),
            ConnectFailure::Unreachable
        );
    }
}
