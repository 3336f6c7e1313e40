//! The capture path alone, in requests per CPU second: keep-alive traffic of the fast backend at
//! saturation (nothing mirroring) recorded with `mirror capture --pcap` on the client's veth,
//! then replayed with `mirror replay --discard`: the same record decoding and pipeline as
//! `mirror run` (admission by v1's acknowledgements, reassembly, framing, Host rewrite), fed
//! from the file instead of the ring, its requests counted and dropped instead of relayed. No
//! kernel program, no relay, no v2: what one core of the capture path can carry; and the same
//! file with the pipeline sharded over 1, 2 and 4 threads behind one reader.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use mirror_tests::{
    agent::{counter, mirror_binary, Agent},
    scenario::CAPTURE_READY,
};

use super::bed::{Backend, Bed, HOST_HEADER};
use super::load::{self, Conn, Load, Target};

#[derive(Clone, Debug, serde::Serialize)]
pub struct CapturePath {
    /// The recorded load (nothing mirroring).
    pub load: Load,
    /// Records `mirror capture` wrote, and those the ring had no room for.
    pub records: u64,
    pub ring_drops: u64,
    pub pcap_bytes: u64,
    /// One entry per replay of the same file.
    pub replays: Vec<Replay>,
}

/// Pipeline threads a replay ran with: none (the reading thread runs the pipeline), or
/// `--capture-threads N` behind one reader.
pub const THREADS: [Option<u16>; 4] = [None, Some(1), Some(2), Some(4)];

#[derive(Clone, Debug, serde::Serialize)]
pub struct Replay {
    pub threads: Option<u16>,
    /// Requests the pipeline handed on whole.
    pub requests: u64,
    /// CPU time of the replaying thread, and wall time.
    pub cpu_seconds: f64,
    pub wall_seconds: f64,
}

impl Replay {
    pub fn per_cpu_second(&self) -> f64 {
        self.requests as f64 / self.cpu_seconds.max(1e-9)
    }

    pub fn per_second(&self) -> f64 {
        self.requests as f64 / self.wall_seconds.max(1e-9)
    }
}

impl CapturePath {
    /// The median over the replays with `threads` of `figure`.
    pub fn median(&self, threads: Option<u16>, figure: fn(&Replay) -> f64) -> Option<f64> {
        let mut values: Vec<f64> = self
            .replays
            .iter()
            .filter(|r| r.threads == threads)
            .map(figure)
            .collect();
        values.sort_by(f64::total_cmp);
        values.get(values.len() / 2).copied()
    }
}

pub fn run(bed: &Bed, dir: &Path, duration: Duration, replays: u32) -> Result<CapturePath> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let backend = Backend::Fast;
    let service = bed.service(backend);
    let pcap = dir.join("traffic.pcap");
    let args: Vec<String> = [
        "capture",
        "--quiet",
        "--iface",
        bed.client.node_ifname(),
        "--target",
        &service.to_string(),
        "--pcap",
        &pcap.display().to_string(),
    ]
    .map(str::to_owned)
    .to_vec();
    let capture = Agent::start(bed.testbed.node(), "mirror-capture", &args, CAPTURE_READY)?;
    let target = Target {
        addr: service,
        path: backend.path(),
        host: HOST_HEADER,
    };
    let load = load::wrk(bed.client.ns(), dir, target, Conn::KeepAlive, duration)?;
    let summary = capture.stop(libc::SIGINT)?;
    let get =
        |name: &str| counter(&summary, name).with_context(|| format!("no {name}= in: {summary}"));
    let (records, ring_drops) = (get("records")?, get("ringbuf_full_drops")?);
    let pcap_bytes = std::fs::metadata(&pcap)
        .with_context(|| format!("{}", pcap.display()))?
        .len();
    let mut runs = Vec::new();
    // Interleaved, so that no configuration always runs while the machine is busiest.
    for _ in 0..replays {
        for threads in THREADS {
            runs.push(replay(bed, &pcap, service, threads)?);
        }
    }
    Ok(CapturePath {
        load,
        records,
        ring_drops,
        pcap_bytes,
        replays: runs,
    })
}

/// One `mirror replay --discard` of the file; reads its closing line.
fn replay(
    bed: &Bed,
    pcap: &Path,
    service: std::net::SocketAddr,
    threads: Option<u16>,
) -> Result<Replay> {
    let mut argv = vec![
        mirror_binary()?.display().to_string(),
        "replay".to_owned(),
        pcap.display().to_string(),
        "--discard".to_owned(),
        "--target".to_owned(),
        service.to_string(),
    ];
    if let Some(threads) = threads {
        argv.extend(["--capture-threads".to_owned(), threads.to_string()]);
    }
    let out = bed.testbed.node().exec(&argv)?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        bail!("mirror replay failed: {stderr}");
    }
    let mut replay =
        parse_replay_line(&stderr).with_context(|| format!("no replay line in: {stderr}"))?;
    replay.threads = threads;
    Ok(replay)
}

/// `replay: N requests in W s (C s of CPU, all threads): ...`
fn parse_replay_line(stderr: &str) -> Option<Replay> {
    let line = stderr.lines().find_map(|l| l.strip_prefix("replay: "))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let requests = words.first()?.parse().ok()?;
    let wall_seconds = words.get(3)?.parse().ok()?;
    let cpu_seconds = words.get(5)?.trim_start_matches('(').parse().ok()?;
    Some(Replay {
        threads: None,
        requests,
        cpu_seconds,
        wall_seconds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_replay_line() {
        let stderr = "replaying x.pcap\nreplay: 1200 requests in 0.250 s (0.200 s of CPU, all \
                      threads): 6000 requests per CPU second, 4800 per second\nfile: packets=9\n";
        let replay = parse_replay_line(stderr).unwrap();
        assert_eq!(replay.requests, 1200);
        assert_eq!(replay.wall_seconds, 0.25);
        assert_eq!(replay.cpu_seconds, 0.2);
        assert_eq!(replay.per_cpu_second(), 6000.0);
        assert_eq!(replay.per_second(), 4800.0);
        assert!(parse_replay_line("replaying x.pcap\n").is_none());
    }
}
