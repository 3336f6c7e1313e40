//! The mirror access log: one JSON line per mirrored request and what became of it at v2, so
//! users can grep what v2 got. Where the outcome is known (the dispatcher on the capture loop,
//! or a shadow connection task) an entry is queued as it is (the head is shared, not copied);
//! one writer task formats and writes the lines. The queue is bounded: when the writer falls
//! behind, entries are dropped and counted, never waited for.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use tokio::{
    io::{AsyncWrite, AsyncWriteExt},
    sync::mpsc,
};

use super::{Sample, Source};

/// Entries queued for the writer before new ones are dropped.
const QUEUE_LINES: usize = 4096;

/// Where the log goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    Stdout,
    File(PathBuf),
}

impl std::str::FromStr for Destination {
    type Err = std::convert::Infallible;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(match text {
            "-" => Destination::Stdout,
            path => Destination::File(PathBuf::from(path)),
        })
    }
}

/// What happened to one mirrored request, as the relay knows it.
#[derive(Debug)]
pub struct Entry {
    pub client: SocketAddr,
    /// The request head as sent to v2 (request line and headers, Host rewritten).
    pub head: Bytes,
    /// Request bytes written to v2 (head and body).
    pub bytes: u64,
    /// `answered`, `unanswered`, or `dropped`.
    pub outcome: &'static str,
    /// v2's status, when it answered.
    pub status: Option<u16>,
    /// From the request's last byte written to v2's status line, when it answered.
    pub latency: Option<Duration>,
    /// Why, when it was dropped or went unanswered.
    pub reason: Option<&'static str>,
}

/// The log's handle, shared by every shadow connection.
#[derive(Debug)]
pub struct AccessLog {
    queue: mpsc::Sender<(SystemTime, Entry)>,
    /// Log one request in this many (1: all).
    every: u64,
    seen: AtomicU64,
    queued: AtomicU64,
    dropped: AtomicU64,
}

impl AccessLog {
    /// Opens `destination` and starts the writer task (inside a tokio runtime).
    pub async fn start(destination: &Destination, every: u64) -> std::io::Result<AccessLog> {
        let writer: Box<dyn AsyncWrite + Send + Unpin> = match destination {
            Destination::Stdout => Box::new(tokio::io::stdout()),
            Destination::File(path) => Box::new(
                tokio::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .await?,
            ),
        };
        let (queue, lines) = mpsc::channel(QUEUE_LINES);
        tokio::spawn(write_lines(lines, writer));
        Ok(AccessLog {
            queue,
            every: every.max(1),
            seen: AtomicU64::new(0),
            queued: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        })
    }

    /// Logs `entry` if it is sampled in; never waits. `entry` is only called when it is.
    pub fn record(&self, entry: impl FnOnce() -> Entry) {
        if !self.seen.fetch_add(1, Relaxed).is_multiple_of(self.every) {
            return;
        }
        match self.queue.try_send((SystemTime::now(), entry())) {
            Ok(()) => self.queued.fetch_add(1, Relaxed),
            Err(_) => self.dropped.fetch_add(1, Relaxed),
        };
    }
}

impl Source for AccessLog {
    fn visit(&self, out: &mut dyn FnMut(Sample)) {
        out(Sample::counter(
            "lines",
            "Access log lines queued for writing.",
            self.queued.load(Relaxed),
        ));
        out(Sample::counter(
            "lines_dropped",
            "Access log lines dropped because the writer fell behind.",
            self.dropped.load(Relaxed),
        ));
    }
}

async fn write_lines(
    mut entries: mpsc::Receiver<(SystemTime, Entry)>,
    mut writer: Box<dyn AsyncWrite + Send + Unpin>,
) {
    let mut buffer = Vec::with_capacity(64 * 1024);
    while let Some((time, entry)) = entries.recv().await {
        buffer.clear();
        buffer.extend_from_slice(format_line(&entry, time).as_bytes());
        // Take whatever else is queued: one write for a burst.
        while let Ok((time, entry)) = entries.try_recv() {
            buffer.extend_from_slice(format_line(&entry, time).as_bytes());
        }
        if let Err(error) = async {
            writer.write_all(&buffer).await?;
            writer.flush().await
        }
        .await
        {
            tracing::warn!(%error, "access log write failed; access log stopped");
            return;
        }
    }
}

/// One JSON object and a newline. Method, path and Host come from the head as sent; no other
/// header is read (header values carry credentials).
fn format_line(entry: &Entry, now: SystemTime) -> String {
    let (method, path, host) = request_fields(&entry.head);
    let time = now
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |since| since.as_secs_f64());
    let mut line = serde_json::json!({
        "time": time,
        "client": entry.client.to_string(),
        "method": method,
        "path": path,
        "host": host,
        "bytes": entry.bytes,
        "outcome": entry.outcome,
        "status": entry.status,
        "latency_seconds": entry.latency.map(|latency| latency.as_secs_f64()),
        "reason": entry.reason,
    })
    .to_string();
    line.push('\n');
    line
}

/// Method, target and Host value of a request head (lossy UTF-8; empty when absent).
fn request_fields(head: &[u8]) -> (String, String, String) {
    let mut lines = head.split(|&byte| byte == b'\n');
    let request_line = lines.next().unwrap_or_default();
    let mut words = request_line
        .split(|&byte| byte == b' ')
        .map(|word| String::from_utf8_lossy(word.trim_ascii()).into_owned());
    let method = words.next().unwrap_or_default();
    let path = words.next().unwrap_or_default();
    let host = lines
        .map(<[u8]>::trim_ascii)
        .find_map(|line| {
            let (name, value) = line.split_at(line.iter().position(|&b| b == b':')?);
            name.eq_ignore_ascii_case(b"host")
                .then(|| String::from_utf8_lossy(value[1..].trim_ascii()).into_owned())
        })
        .unwrap_or_default();
    (method, path, host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_names_the_request_and_its_outcome_and_no_other_header() {
        let entry = Entry {
            client: "10.0.0.1:40000".parse().unwrap(),
            head: Bytes::from_static(
                b"GET /headers?a=1 HTTP/1.1\r\nAuthorization: Bearer x\r\nhOsT: httpbin-shadow:8000\r\n\r\n",
            ),
            bytes: 80,
            outcome: "answered",
            status: Some(200),
            latency: Some(Duration::from_millis(3)),
            reason: None,
        };
        let line = format_line(&entry, UNIX_EPOCH + Duration::from_secs(5));
        assert!(line.ends_with('\n'));
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(value["time"], 5.0);
        assert_eq!(value["client"], "10.0.0.1:40000");
        assert_eq!(value["method"], "GET");
        assert_eq!(value["path"], "/headers?a=1");
        assert_eq!(value["host"], "httpbin-shadow:8000");
        assert_eq!(value["status"], 200);
        assert_eq!(value["latency_seconds"], 0.003);
        assert_eq!(value["outcome"], "answered");
        assert!(!line.contains("Bearer"), "{line}");
    }

    #[test]
    fn heads_without_host_or_garbage_give_empty_fields() {
        assert_eq!(
            request_fields(b"\xff\xfe"),
            ("\u{fffd}\u{fffd}".into(), String::new(), String::new())
        );
        assert_eq!(
            request_fields(b"GET / HTTP/1.1\r\nX: y\r\n\r\n"),
            ("GET".into(), "/".into(), String::new())
        );
    }

    #[tokio::test]
    async fn samples_one_in_every_and_counts_what_it_queued() {
        let path = std::env::temp_dir().join(format!("mirror-access-{}.log", std::process::id()));
        let log = AccessLog::start(&Destination::File(path.clone()), 2)
            .await
            .unwrap();
        let entry = || Entry {
            client: "10.0.0.1:1".parse().unwrap(),
            head: Bytes::from_static(b"GET /x HTTP/1.1\r\n\r\n"),
            bytes: 1,
            outcome: "dropped",
            status: None,
            latency: None,
            reason: Some("shadow_down"),
        };
        for _ in 0..5 {
            log.record(entry);
        }
        assert_eq!(log.queued.load(Relaxed), 3);
        drop(log);
        let mut text = String::new();
        for _ in 0..100 {
            text = std::fs::read_to_string(&path).unwrap_or_default();
            if text.lines().count() == 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = std::fs::remove_file(&path);
        assert_eq!(text.lines().count(), 3, "{text}");
        assert!(text.contains("\"reason\":\"shadow_down\""), "{text}");
    }
}
