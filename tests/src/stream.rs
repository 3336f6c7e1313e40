//! Rebuilds a client's byte stream from a pcap file the agent wrote, strictly: every byte
//! must be present, retransmitted bytes must agree, and no record may be truncated. This is
//! the test oracle for "the capture lost nothing", independent of the agent's reassembler.
//! Packets *from* a target (v1's side, captured header-only) are set apart.

use std::{collections::BTreeMap, net::SocketAddr, path::Path};

use anyhow::{bail, Context as _, Result};
use mirror_cores::flow::FlowKey;
use mirror_userspace::capture::{packet, pcap};

/// What the capture holds for one direction of one connection.
#[derive(Debug, Default)]
pub struct CapturedStream {
    /// Payload from the first byte after the SYN, in order.
    pub bytes: Vec<u8>,
    pub saw_syn: bool,
    pub saw_fin: bool,
    /// The SYN's sequence number.
    pub isn: Option<u32>,
    pub records: usize,
}

/// A flow being read: its ISN once the SYN is seen, and its payloads by offset from the ISN.
type Pending = (Option<u32>, BTreeMap<u64, Vec<u8>>, CapturedStream);

/// A packet of v1's side as the capture holds it: its headers only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReverseSegment {
    pub flow: FlowKey,
    pub flags: mirror_cores::flow::TcpFlags,
    pub seq: u32,
    pub ack: u32,
    pub window: u16,
    pub window_scale: Option<u8>,
    /// Bytes the capture holds, and the packet's length on the wire.
    pub captured: usize,
    pub orig_len: u32,
}

fn read(pcap_path: &Path) -> Result<Vec<pcap::Packet>> {
    let file =
        std::fs::File::open(pcap_path).with_context(|| format!("open {}", pcap_path.display()))?;
    Ok(pcap::read_all(std::io::BufReader::new(file))?)
}

/// The packets whose source is one of `targets` (v1 -> client), decoded header-only.
pub fn reverse_segments(pcap_path: &Path, targets: &[SocketAddr]) -> Result<Vec<ReverseSegment>> {
    let mut out = Vec::new();
    for captured in read(pcap_path)? {
        let segment = packet::parse_headers(&captured.data)?;
        if !targets.contains(&segment.flow.src) {
            continue;
        }
        out.push(ReverseSegment {
            flow: segment.flow,
            flags: segment.flags,
            seq: segment.seq,
            ack: segment.ack,
            window: segment.window,
            window_scale: segment.window_scale,
            captured: captured.data.len(),
            orig_len: captured.orig_len,
        });
    }
    Ok(out)
}

/// Every client flow in the file (packets whose source is none of `targets`), keyed by its
/// (client to server) key.
pub fn flows(
    pcap_path: &Path,
    targets: &[SocketAddr],
) -> Result<BTreeMap<FlowKey, CapturedStream>> {
    let packets = read(pcap_path)?;
    let mut runs: BTreeMap<FlowKey, Pending> = BTreeMap::new();
    for captured in &packets {
        if packet::parse_headers(&captured.data)
            .is_ok_and(|segment| targets.contains(&segment.flow.src))
        {
            continue;
        }
        if captured.data.len() != captured.orig_len as usize {
            bail!(
                "truncated record: {} of {} bytes",
                captured.data.len(),
                captured.orig_len
            );
        }
        let segment = packet::parse_ethernet(&captured.data)?;
        let (isn, payloads, stream) = runs.entry(segment.flow).or_default();
        stream.records += 1;
        if segment.flags.syn() {
            stream.saw_syn = true;
            stream.isn = Some(segment.seq);
            *isn = Some(segment.seq);
        }
        if segment.flags.fin() {
            stream.saw_fin = true;
        }
        if segment.payload.is_empty() {
            continue;
        }
        let Some(isn) = *isn else {
            bail!("{}: payload before the SYN", segment.flow);
        };
        let offset = u64::from(segment.seq.wrapping_sub(isn).wrapping_sub(1));
        payloads
            .entry(offset)
            .and_modify(|existing: &mut Vec<u8>| {
                if existing.len() < segment.payload.len() {
                    *existing = segment.payload.to_vec();
                }
            })
            .or_insert_with(|| segment.payload.to_vec());
    }
    let mut out = BTreeMap::new();
    for (flow, (_, payloads, mut stream)) in runs {
        for (offset, payload) in payloads {
            let have = stream.bytes.len() as u64;
            if offset > have {
                bail!("{flow}: gap of {} bytes at offset {have}", offset - have);
            }
            let overlap = usize::try_from(have - offset)?;
            let common = overlap.min(payload.len());
            let start = usize::try_from(offset)?;
            if stream.bytes[start..start + common] != payload[..common] {
                bail!("{flow}: retransmission at offset {offset} differs");
            }
            stream.bytes.extend_from_slice(&payload[common..]);
        }
        out.insert(flow, stream);
    }
    Ok(out)
}
