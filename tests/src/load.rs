//! A small fixed-rate HTTP/1.1 load generator that measures each request's latency, for tests
//! that compare the client's latency with and without the agent. Keep-alive connections, one
//! thread each, inside the client's namespace.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use crate::Netns;

/// Latencies of the requests that succeeded, sorted, and the count of those that did not.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub latencies: Vec<Duration>,
    pub errors: u64,
}

impl LoadReport {
    /// Adds another run's requests to this one's.
    pub fn absorb(&mut self, other: LoadReport) {
        self.latencies.extend(other.latencies);
        self.latencies.sort();
        self.errors += other.errors;
    }

    /// The `p`-th percentile (0 to 100) of the latencies; zero when there are none.
    pub fn percentile(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((p / 100.0) * (self.latencies.len() - 1) as f64).round() as usize;
        self.latencies[rank.min(self.latencies.len() - 1)]
    }
}

/// Sends `GET <path>` to `addr` at `rate` requests per second in total for `duration`, spread
/// over `connections` keep-alive connections opened from `ns`.
pub fn fixed_rate(
    ns: &Netns,
    addr: SocketAddr,
    host: &str,
    rate: u32,
    duration: Duration,
    connections: u32,
) -> Result<LoadReport> {
    let interval = Duration::from_secs_f64(f64::from(connections) / f64::from(rate.max(1)));
    let request = format!("GET /load HTTP/1.1\r\nHost: {host}\r\n\r\n").into_bytes();
    let mut threads = Vec::new();
    for index in 0..connections {
        let request = request.clone();
        threads.push(ns.thread(move || {
            // Stagger the connections so their requests interleave evenly.
            std::thread::sleep(interval.mul_f64(f64::from(index) / f64::from(connections)));
            run_connection(addr, &request, interval, duration)
        })?);
    }
    let mut report = LoadReport::default();
    for thread in threads {
        let part = thread.join()?;
        report.latencies.extend(part.latencies);
        report.errors += part.errors;
    }
    report.latencies.sort();
    Ok(report)
}

fn run_connection(
    addr: SocketAddr,
    request: &[u8],
    interval: Duration,
    duration: Duration,
) -> LoadReport {
    let mut report = LoadReport::default();
    let start = Instant::now();
    let mut stream: Option<TcpStream> = None;
    let mut next = start;
    let mut buf = vec![0u8; 64 * 1024];
    while next.duration_since(start) < duration {
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        next += interval;
        let sent = Instant::now();
        let outcome = match stream.as_mut() {
            Some(stream) => exchange(stream, request, &mut buf),
            None => {
                TcpStream::connect_timeout(&addr, Duration::from_secs(5)).and_then(|mut fresh| {
                    fresh.set_nodelay(true)?;
                    fresh.set_read_timeout(Some(Duration::from_secs(10)))?;
                    exchange(&mut fresh, request, &mut buf)?;
                    stream = Some(fresh);
                    Ok(())
                })
            }
        };
        match outcome {
            Ok(()) => report.latencies.push(sent.elapsed()),
            Err(_) => {
                report.errors += 1;
                stream = None;
            }
        }
    }
    report
}

/// Writes one request and reads one Content-Length-framed response.
fn exchange(stream: &mut TcpStream, request: &[u8], buf: &mut [u8]) -> std::io::Result<()> {
    stream.write_all(request)?;
    let mut have = 0;
    loop {
        let n = stream.read(&mut buf[have..])?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        have += n;
        let Some(head_end) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") else {
            if have == buf.len() {
                return Err(std::io::ErrorKind::InvalidData.into());
            }
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length:"))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or(0);
        let mut body_have = have - (head_end + 4);
        while body_have < length {
            let n = stream.read(&mut buf[..])?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            body_have += n;
        }
        return Ok(());
    }
}

/// Peak resident memory (VmHWM) of a process, in bytes.
pub fn peak_rss(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM")?;
    Ok(kib * 1024)
}

/// Path of the `mirror-load` binary (the bench's open-loop generator): `MIRROR_LOAD_BIN` if
/// set, else next to the running executable or one directory up (test binaries live in
/// `target/<profile>/deps`; `cargo build --bins` builds it).
pub fn load_binary() -> Result<std::path::PathBuf> {
    if let Some(path) = std::env::var_os("MIRROR_LOAD_BIN") {
        return Ok(path.into());
    }
    let exe = std::env::current_exe().context("locate the running executable")?;
    exe.ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join("mirror-load"))
        .find(|path| path.is_file())
        .with_context(|| format!("mirror-load not found next to {}", exe.display()))
}

/// Runs `mirror-load` with `args` in `ns` and returns what it printed (its `BENCH ...` line).
pub fn run_load(ns: &Netns, args: &[&str]) -> Result<String> {
    let load = load_binary()?;
    let mut argv = vec![load.as_os_str()];
    argv.extend(args.iter().map(std::ffi::OsStr::new));
    ns.exec_ok(&argv)
}

/// A field of `mirror-load`'s `BENCH ...` line.
pub fn bench_field(line: &str, name: &str) -> Option<u64> {
    line.split_whitespace()
        .find_map(|field| field.strip_prefix(name)?.strip_prefix('='))
        .and_then(|value| value.parse().ok())
}
