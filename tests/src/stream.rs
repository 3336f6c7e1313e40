//! Rebuilds a client's byte stream from a pcap file the agent wrote, strictly: every byte
//! must be present, retransmitted bytes must agree, and no record may be truncated. This is
//! the test oracle for "the capture lost nothing", independent of the agent's reassembler.

use std::{collections::BTreeMap, path::Path};

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
    pub records: usize,
}

/// A flow being read: its ISN once the SYN is seen, and its payloads by offset from the ISN.
type Pending = (Option<u32>, BTreeMap<u64, Vec<u8>>, CapturedStream);

/// Every flow in the file, keyed by its (client to server) key.
pub fn flows(pcap_path: &Path) -> Result<BTreeMap<FlowKey, CapturedStream>> {
    let file =
        std::fs::File::open(pcap_path).with_context(|| format!("open {}", pcap_path.display()))?;
    let packets = pcap::read_all(std::io::BufReader::new(file))?;
    let mut runs: BTreeMap<FlowKey, Pending> = BTreeMap::new();
    for captured in &packets {
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
