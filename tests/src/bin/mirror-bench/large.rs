//! Large bodies through the agent: one 1 GiB upload and many 1 MiB uploads, with the sink as
//! v1 and v2. Checks that v2 got every body byte-exact and that the agent's memory stays flat
//! (bodies stream through it; nothing buffers a whole request).

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use sha2::{Digest as _, Sha256};

use super::agent_summary::AgentStats;
use super::bed::{Bed, HOST_HEADER, SERVICE_PORT, SINK_VIP};
use super::mode::start_agent;
use super::procstat;

/// What the client sent: path, body length and SHA-256 of each request.
type Sent = Vec<(String, u64, String)>;

/// Sizes of the large-body run.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct LargePlan {
    pub big_bytes: u64,
    pub small_count: u64,
    pub small_bytes: u64,
}

/// What the large-body run found.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LargeResult {
    pub plan: LargePlan,
    /// Client-side time of the big upload and of all the small ones.
    pub big_seconds: f64,
    pub small_seconds: f64,
    pub v1_requests: u64,
    pub v2_requests: u64,
    /// v2 requests whose path, length and SHA-256 match what the client sent.
    pub v2_exact: u64,
    /// The agent's peak resident KiB once attached and idle, after the small uploads, and
    /// after the big one.
    pub rss_idle_kib: u64,
    pub rss_after_small_kib: u64,
    pub rss_after_big_kib: u64,
    pub agent: AgentStats,
}

/// A deterministic body: the same bytes for the same `(seed, len)` on every run.
fn fill(buf: &mut [u8], offset: u64, seed: u64) {
    for (i, byte) in buf.iter_mut().enumerate() {
        let x = (offset + i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ seed;
        *byte = (x >> 29) as u8;
    }
}

/// POSTs a generated body of `len` bytes on `stream` and reads the reply; returns its SHA-256.
fn post(
    stream: &mut TcpStream,
    reader: &mut BufReader<TcpStream>,
    path: &str,
    len: u64,
    seed: u64,
) -> Result<String> {
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {HOST_HEADER}\r\nContent-Type: application/octet-stream\r\nContent-Length: {len}\r\n\r\n"
    )?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 << 10];
    let mut sent = 0;
    while sent < len {
        let n = buf
            .len()
            .min(usize::try_from(len - sent).unwrap_or(usize::MAX));
        fill(&mut buf[..n], sent, seed);
        hasher.update(&buf[..n]);
        stream.write_all(&buf[..n])?;
        sent += n as u64;
    }
    read_reply(reader).with_context(|| format!("reply to POST {path}"))?;
    Ok(mirror_tests::hex(&hasher.finalize()))
}

/// Reads one response (head and Content-Length body) and fails unless it is a 200.
fn read_reply(reader: &mut BufReader<TcpStream>) -> Result<()> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    if !line.starts_with("HTTP/1.1 200") {
        bail!("status line {line:?}");
    }
    let mut length = 0usize;
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().context("Content-Length")?;
            }
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body)?;
    Ok(())
}

/// Uploads the bodies from the client pod with the agent mirroring to v2's sink.
pub fn run(bed: &Bed, plan: LargePlan) -> Result<LargeResult> {
    let service = SocketAddr::new(SINK_VIP.into(), SERVICE_PORT);
    let shadow = SocketAddr::new(bed.v2.ipv4().into(), super::bed::SINK_PORT);
    let v1_before = bed.sinks[0].records()?.len();
    let v2_before = bed.sinks[1].records()?.len();
    let agent = start_agent(bed, service, shadow)?;
    let pid = agent.pid();
    let rss_idle_kib = procstat::group_peak_rss_kib(pid)?;
    let upload = move |count: u64, len: u64, prefix: &'static str| {
        move || -> Result<(Sent, f64)> {
            let started = Instant::now();
            let mut stream = TcpStream::connect_timeout(&service, Duration::from_secs(5))?;
            stream.set_read_timeout(Some(Duration::from_secs(120)))?;
            let mut reader = BufReader::new(stream.try_clone()?);
            let mut sent = Vec::new();
            for i in 0..count {
                let path = format!("/{prefix}-{i}");
                let digest = post(&mut stream, &mut reader, &path, len, i)?;
                sent.push((path, len, digest));
            }
            Ok((sent, started.elapsed().as_secs_f64()))
        }
    };
    let client = bed.client.ns();
    let (mut expected, small_seconds) =
        client.run(upload(plan.small_count, plan.small_bytes, "small"))??;
    let rss_after_small_kib = procstat::group_peak_rss_kib(pid)?;
    let (big, big_seconds) = client.run(upload(1, plan.big_bytes, "big"))??;
    expected.extend(big);
    let total = expected.len();
    let v2 = wait_for(bed, 1, v2_before + total)?;
    let rss_after_big_kib = procstat::group_peak_rss_kib(pid)?;
    let summary = agent.stop(libc::SIGTERM)?;
    let line = summary
        .lines()
        .rfind(|line| line.starts_with("relay:"))
        .context("no agent summary")?;
    let v1 = bed.sinks[0].records()?;
    let mut got: Sent = v2[v2_before..]
        .iter()
        .filter(|r| {
            r.host
                .as_deref()
                .is_some_and(|h| h.starts_with("httpbin-shadow"))
        })
        .map(|r| (r.path.clone(), r.body_len, r.sha256.clone()))
        .collect();
    got.sort();
    expected.sort();
    let v2_exact = got
        .iter()
        .filter(|r| expected.binary_search(r).is_ok())
        .count();
    Ok(LargeResult {
        plan,
        big_seconds,
        small_seconds,
        v1_requests: (v1.len() - v1_before) as u64,
        v2_requests: (v2.len() - v2_before) as u64,
        v2_exact: v2_exact as u64,
        rss_idle_kib,
        rss_after_small_kib,
        rss_after_big_kib,
        agent: AgentStats::parse(line)?,
    })
}

/// Waits until sink `pod` holds `count` records, or its log stops growing for 5 s (a lost
/// request must show as incomplete, not hang the bench).
fn wait_for(bed: &Bed, pod: usize, count: usize) -> Result<Vec<mirror_tests::SinkRecord>> {
    let mut last = 0;
    let mut since = Instant::now();
    loop {
        let records = bed.sinks[pod].records()?;
        if records.len() >= count || since.elapsed() > Duration::from_secs(5) {
            return Ok(records);
        }
        if records.len() != last {
            last = records.len();
            since = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
