//! One keep-alive connection (or, with `close`, a connection per request) working through the
//! schedule: wait for a request's due time, send it, read its whole answer (framed by the
//! agent's own response framer), record the latency.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mirror_cores::http::ResponseFramer;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use super::schedule::{Schedule, Tally};

/// Largest response head scanned for `Connection: close`.
const MAX_HEAD: usize = 16 * 1024;

pub async fn drive(
    addr: SocketAddr,
    request: Arc<[u8]>,
    schedule: Arc<Schedule>,
    timeout: Duration,
    close: bool,
) -> Tally {
    let mut tally = Tally::default();
    let mut conn = Connection {
        addr,
        // Connected before the first request is due, as a client with a warm pool would be.
        stream: if close {
            None
        } else {
            TcpStream::connect(addr).await.ok()
        },
        buf: vec![0; 64 * 1024],
        head: Vec::new(),
        await_close: close,
    };
    // When the connection finished its previous request: it was free from then on.
    let mut free_since = Instant::now();
    while let Some(due) = schedule.take() {
        tokio::time::sleep_until(due.into()).await;
        let sent = Instant::now();
        // Latency counts from the due time when the connection was still busy then (the
        // server's slowness delayed this request), otherwise from the send: the timer's
        // millisecond granularity is the generator's own delay, not the server's.
        let from = if free_since > due { due } else { sent };
        let outcome = tokio::time::timeout(timeout, conn.exchange(&request)).await;
        let done = Instant::now();
        free_since = done;
        match outcome {
            Ok(Ok(status)) => {
                tally.latencies_us.push(micros(done - from));
                tally.last_answer = Some(done);
                if !(200..300).contains(&status) {
                    tally.errors += 1;
                }
            }
            Ok(Err(_)) | Err(_) => {
                tally.errors += 1;
                conn.stream = None;
            }
        }
        // What is left of the connection after a failure is not waited for.
        conn.stream = conn.stream.take().filter(|_| !close);
    }
    tally
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

struct Connection {
    addr: SocketAddr,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
    /// The answer's head so far, to see whether the server closes after it.
    head: Vec<u8>,
    /// When the server says it closes, wait for its FIN before closing this side: the server
    /// keeps the TIME_WAIT, not the client's ports.
    await_close: bool,
}

impl Connection {
    /// Sends one request (connecting first if needed) and reads its answer; returns its status.
    async fn exchange(&mut self, request: &[u8]) -> io::Result<u16> {
        let stream = match &mut self.stream {
            Some(stream) => stream,
            None => self.stream.insert(TcpStream::connect(self.addr).await?),
        };
        stream.write_all(request).await?;
        let mut framer = ResponseFramer::default();
        framer.request_sent(false);
        self.head.clear();
        let mut status = None;
        loop {
            let n = stream.read(&mut self.buf).await?;
            if n == 0 {
                framer.closed(|answer| status = Some(answer.status));
                self.stream = None;
                return status.ok_or_else(|| io::ErrorKind::UnexpectedEof.into());
            }
            let input = &self.buf[..n];
            if self.head.len() < MAX_HEAD {
                let room = MAX_HEAD - self.head.len();
                self.head.extend_from_slice(&input[..n.min(room)]);
            }
            framer
                .feed(input, |answer| status = Some(answer.status))
                .map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err))?;
            if let Some(code) = status {
                if closes(&self.head) {
                    if let Some(mut stream) = self.stream.take().filter(|_| self.await_close) {
                        while stream.read(&mut self.buf).await? > 0 {}
                    }
                }
                return Ok(code);
            }
        }
    }
}

/// Whether a response head says the server closes the connection after it.
fn closes(head: &[u8]) -> bool {
    let end = head
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(head.len());
    head[..end].split(|&b| b == b'\n').any(|line| {
        let line = String::from_utf8_lossy(line).to_ascii_lowercase();
        line.strip_prefix("connection:")
            .is_some_and(|value| value.split(',').any(|token| token.trim() == "close"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_close_is_seen_in_the_head_only() {
        assert!(closes(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n"));
        assert!(closes(
            b"HTTP/1.1 200 OK\r\nconnection: Keep-Alive, Close\r\n\r\n"
        ));
        assert!(!closes(
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\n\r\n"
        ));
        assert!(!closes(b"HTTP/1.1 200 OK\r\n\r\nConnection: close\r\n"));
    }
}
