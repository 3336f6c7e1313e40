//! Just enough of Ethernet, IPv4, IPv6 and TCP to find a packet's destination and flags.
//!
//! Headers are read with `bpf_skb_load_bytes` (`TcContext::load`), not direct packet access:
//! on veth the linear part of a GSO skb often holds only the headers, and sometimes less.

use aya_ebpf::programs::TcContext;
use mirror_common::{TargetKey, FAMILY_IPV4, FAMILY_IPV6};

const ETH_HLEN: usize = 14;
const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const IPPROTO_TCP: u8 = 6;
const IPV6_HLEN: usize = 40;

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;

/// What the classifier needs to know about a TCP packet.
pub struct Segment {
    /// The destination, as a full-length key of the targets trie.
    pub target: TargetKey,
    pub tcp_flags: u8,
    pub payload_len: u32,
}

impl Segment {
    /// Payload, SYN, FIN and RST matter to the stream rebuilder; a pure ACK does not.
    #[inline(always)]
    pub fn carries_stream_data(&self) -> bool {
        self.payload_len > 0 || self.tcp_flags & (TCP_SYN | TCP_FIN | TCP_RST) != 0
    }
}

/// Parses an Ethernet frame carrying TCP over IPv4 or IPv6; `None` for anything else
/// (other protocols, IPv4 fragments, IPv6 extension headers, unreadable headers).
#[inline(always)]
pub fn tcp_segment(ctx: &TcContext) -> Option<Segment> {
    let ether_type = u16::from_be(ctx.load::<u16>(12).ok()?);
    let mut target = TargetKey::default();
    let (l4_offset, l3_end) = match ether_type {
        ETH_P_IPV4 => {
            let version_ihl: u8 = ctx.load(ETH_HLEN).ok()?;
            if version_ihl >> 4 != 4 {
                return None;
            }
            let ihl = usize::from(version_ihl & 0x0f) * 4;
            if ihl < 20 {
                return None;
            }
            let total_len = u16::from_be(ctx.load::<u16>(ETH_HLEN + 2).ok()?);
            let frag = u16::from_be(ctx.load::<u16>(ETH_HLEN + 6).ok()?);
            // More-fragments flag or a fragment offset: not a whole TCP segment.
            if frag & 0x3fff != 0 {
                return None;
            }
            if ctx.load::<u8>(ETH_HLEN + 9).ok()? != IPPROTO_TCP {
                return None;
            }
            let dst: [u8; 4] = ctx.load(ETH_HLEN + 16).ok()?;
            target.family = FAMILY_IPV4;
            target.addr[..4].copy_from_slice(&dst);
            // BIG TCP IPv4 super-packets carry total length 0: the skb's length rules.
            let l3_end = if total_len == 0 {
                ctx.len()
            } else {
                (ETH_HLEN as u32 + u32::from(total_len)).min(ctx.len())
            };
            (ETH_HLEN + ihl, l3_end)
        }
        ETH_P_IPV6 => {
            if ctx.load::<u8>(ETH_HLEN).ok()? >> 4 != 6 {
                return None;
            }
            let payload_len = u16::from_be(ctx.load::<u16>(ETH_HLEN + 4).ok()?);
            if ctx.load::<u8>(ETH_HLEN + 6).ok()? != IPPROTO_TCP {
                return None;
            }
            target.addr = ctx.load(ETH_HLEN + 24).ok()?;
            target.family = FAMILY_IPV6;
            // BIG TCP IPv6 super-packets carry payload length 0 as well.
            let l3_end = if payload_len == 0 {
                ctx.len()
            } else {
                ((ETH_HLEN + IPV6_HLEN) as u32 + u32::from(payload_len)).min(ctx.len())
            };
            (ETH_HLEN + IPV6_HLEN, l3_end)
        }
        _ => return None,
    };
    target.port = ctx.load(l4_offset + 2).ok()?;
    let data_offset = usize::from(ctx.load::<u8>(l4_offset + 12).ok()? >> 4) * 4;
    let tcp_flags: u8 = ctx.load(l4_offset + 13).ok()?;
    let payload_start = (l4_offset + data_offset) as u32;
    Some(Segment {
        target,
        tcp_flags,
        payload_len: l3_end.saturating_sub(payload_start),
    })
}
