//! The kernel program's own cost, free of the test-bed's noise: the agent's attached program is
//! run on crafted frames with `BPF_PROG_TEST_RUN` (`bpftool prog run ... repeat N`), which
//! reports the average time per run with caches warm and nothing else in the way.
//!
//! It runs on a `mirror capture` agent, not `mirror run`: the crafted request frames reach the
//! ring buffer, and a capture only counts them, where `run` would replay them to v2.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use anyhow::{bail, Context as _, Result};
use mirror_tests::agent::{mirror_binary, Agent};
use mirror_tests::scenario::CAPTURE_READY;

use super::bed::{Backend, Bed, UNMATCHED_PORT};

/// Runs per frame: 100k request records (about 55 MB) fit the 64 MiB ring buffer (asked for, not left to the default), so every
/// run of the matched request pays for a real copy, never for a full ring (the capture drains
/// it between frames; reverse records are 160 bytes each).
const REPEAT: u32 = 100_000;

#[derive(Clone, Debug, serde::Serialize)]
pub struct Isolated {
    /// (what the frame is, average ns per run)
    pub frames: Vec<(String, u64)>,
}

pub fn run(bed: &Bed, dir: &Path) -> Result<Isolated> {
    let service = bed.service(Backend::Fast);
    let args: Vec<String> = [
        "capture",
        "--quiet",
        "--iface",
        bed.client.node_ifname(),
        "--target",
        &service.to_string(),
        "--ring-mib",
        "64",
    ]
    .map(str::to_owned)
    .to_vec();
    let agent = Agent::start(bed.testbed.node(), "mirror-capture", &args, CAPTURE_READY)?;
    let ingress = program_id(bed, "mirror_ingress")?;
    let egress = program_id(bed, "mirror_egress")?;
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let client = SocketAddr::new(IpAddr::V4(bed.client.ipv4()), 40000);
    let request =
        b"GET / HTTP/1.1\r\nHost: httpbin:8000\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n";
    let unmatched = SocketAddr::new(service.ip(), UNMATCHED_PORT);
    let response = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    // Ingress sees the client's packets, egress v1's (header-only records).
    let cases = [
        (
            "request to the target (copied to the ring)",
            ingress,
            frame(client, service, 0x18, request)?,
        ),
        (
            "pure ACK to the target (matched, not copied)",
            ingress,
            frame(client, service, 0x10, b"")?,
        ),
        (
            "request to another port (unmatched)",
            ingress,
            frame(client, unmatched, 0x18, request)?,
        ),
        (
            "v1's ACK, egress (reverse: headers copied)",
            egress,
            frame(service, client, 0x10, b"")?,
        ),
        (
            "v1's response, egress (reverse: headers copied)",
            egress,
            frame(service, client, 0x18, response)?,
        ),
        (
            "response from another port, egress (unmatched)",
            egress,
            frame(unmatched, client, 0x18, response)?,
        ),
    ];
    let mut frames = Vec::new();
    for (index, (what, id, bytes)) in cases.iter().enumerate() {
        let file = dir.join(format!("frame-{index}.bin"));
        std::fs::write(&file, bytes).with_context(|| format!("write {}", file.display()))?;
        let out = bed.testbed.node().exec_ok(&[
            "bpftool".to_owned(),
            "prog".to_owned(),
            "run".to_owned(),
            "id".to_owned(),
            id.to_string(),
            "data_in".to_owned(),
            file.display().to_string(),
            "repeat".to_owned(),
            REPEAT.to_string(),
        ])?;
        frames.push(((*what).to_owned(), average_ns(&out)?));
    }
    agent.stop(libc::SIGTERM)?;
    Ok(Isolated { frames })
}

/// The id of `program` on the client's node-side veth, from `mirror attached`.
fn program_id(bed: &Bed, program: &str) -> Result<u32> {
    let out = bed.testbed.node().exec_ok(&[
        mirror_binary()?.display().to_string(),
        "attached".to_owned(),
        "--iface".to_owned(),
        bed.client.node_ifname().to_owned(),
    ])?;
    out.lines()
        .find(|line| line.contains(program))
        .and_then(|line| line.rsplit_once(" id "))
        .and_then(|(_, id)| id.trim().parse().ok())
        .with_context(|| format!("no {program} program in: {out}"))
}

/// bpftool prints `duration (average): 46ns`.
fn average_ns(out: &str) -> Result<u64> {
    let Some(rest) = out.split("duration (average):").nth(1) else {
        bail!("no average duration in bpftool's output: {out}");
    };
    rest.trim()
        .trim_end_matches(|c: char| !c.is_ascii_digit())
        .parse()
        .with_context(|| format!("bad duration in: {out}"))
}

/// An Ethernet + IPv4 + TCP frame from `src` to `dst` with `flags` and `payload`.
fn frame(src: SocketAddr, dst: SocketAddr, flags: u8, payload: &[u8]) -> Result<Vec<u8>> {
    let (IpAddr::V4(src_ip), IpAddr::V4(dst_ip)) = (src.ip(), dst.ip()) else {
        bail!("IPv4 frames only");
    };
    let total = u16::try_from(20 + 20 + payload.len())?;
    let mut out = vec![0u8; 12];
    out.extend_from_slice(&0x0800u16.to_be_bytes());
    out.extend_from_slice(&[0x45, 0]);
    out.extend_from_slice(&total.to_be_bytes());
    out.extend_from_slice(&[0, 0, 0x40, 0, 64, 6, 0, 0]);
    out.extend_from_slice(&src_ip.octets());
    out.extend_from_slice(&dst_ip.octets());
    out.extend_from_slice(&src.port().to_be_bytes());
    out.extend_from_slice(&dst.port().to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    out.extend_from_slice(payload);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bpftool_duration() {
        let out = "Return value: 4294967295, duration (average): 46ns\n";
        assert_eq!(average_ns(out).unwrap(), 46);
        assert!(average_ns("Return value: 0\n").is_err());
    }
}
