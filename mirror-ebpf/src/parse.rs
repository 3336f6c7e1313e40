//! Just enough of Ethernet, IPv4, IPv6 and TCP to find a packet's destination and flags.
//!
//! Each header is read whole: straight from the packet when it lies in the skb's linear part
//! (the common case, and the cheapest), else with `bpf_skb_load_bytes`: on veth the linear
//! part of a GSO skb often holds only the headers, and sometimes less.

use aya_ebpf::programs::TcContext;
use mirror_common::{TargetKey, FAMILY_IPV4, FAMILY_IPV6};
use network_types::{
    eth::{EthHdr, EtherType},
    ip::{IpProto, Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
};

/// More-fragments flag and fragment offset bits of IPv4's flags/offset field.
const IPV4_FRAGMENT_MASK: u16 = 0x3fff;

/// What the classifier needs to know about a TCP packet.
pub struct Segment {
    /// The destination, as a full-length key of the targets trie.
    pub target: TargetKey,
    /// SYN, FIN or RST set.
    pub control: bool,
    pub payload_len: u32,
}

impl Segment {
    /// Payload, SYN, FIN and RST matter to the stream rebuilder; a pure ACK does not.
    #[inline(always)]
    pub fn carries_stream_data(&self) -> bool {
        self.payload_len > 0 || self.control
    }
}

/// Parses an Ethernet frame carrying TCP over IPv4 or IPv6; `None` for anything else
/// (other protocols, IPv4 fragments, IPv6 extension headers, unreadable headers).
#[inline(always)]
pub fn tcp_segment(ctx: &TcContext) -> Option<Segment> {
    let eth: EthHdr = header(ctx, 0)?;
    let mut target = TargetKey::default();
    let (l4_offset, l3_end) = if eth.ether_type == EtherType::Ipv4 as u16 {
        let ip: Ipv4Hdr = header(ctx, EthHdr::LEN)?;
        let ihl = usize::from(ip.ihl());
        if ip.version() != 4 || ihl < Ipv4Hdr::LEN || ip.proto != IpProto::Tcp as u8 {
            return None;
        }
        if u16::from_be_bytes(ip.frags) & IPV4_FRAGMENT_MASK != 0 {
            return None;
        }
        target.family = FAMILY_IPV4;
        target.addr[..4].copy_from_slice(&ip.dst_addr);
        let total_len = u32::from(u16::from_be_bytes(ip.tot_len));
        (
            EthHdr::LEN + ihl,
            l3_end(ctx, EthHdr::LEN as u32, total_len),
        )
    } else if eth.ether_type == EtherType::Ipv6 as u16 {
        let ip: Ipv6Hdr = header(ctx, EthHdr::LEN)?;
        if ip.vcf[0] >> 4 != 6 || ip.next_hdr != IpProto::Tcp as u8 {
            return None;
        }
        target.family = FAMILY_IPV6;
        target.addr = ip.dst_addr;
        let payload_len = u32::from(u16::from_be_bytes(ip.payload_len));
        let l4 = EthHdr::LEN + Ipv6Hdr::LEN;
        let total_len = if payload_len == 0 {
            0
        } else {
            Ipv6Hdr::LEN as u32 + payload_len
        };
        (l4, l3_end(ctx, EthHdr::LEN as u32, total_len))
    } else {
        return None;
    };
    let tcp: TcpHdr = header(ctx, l4_offset)?;
    target.port = tcp.dest;
    let payload_start = (l4_offset + usize::from(tcp.doff()) * 4) as u32;
    Some(Segment {
        target,
        control: tcp.syn() | tcp.fin() | tcp.rst() != 0,
        payload_len: l3_end.saturating_sub(payload_start),
    })
}

/// Reads a `T` at `offset`: directly when the linear data holds it, else through the helper.
#[inline(always)]
fn header<T: Copy>(ctx: &TcContext, offset: usize) -> Option<T> {
    let start = ctx.data() + offset;
    if start + core::mem::size_of::<T>() <= ctx.data_end() {
        // SAFETY: the bytes lie between `data` and `data_end`, which the kernel guarantees
        // readable (and the verifier checks this very comparison); `T` is plain data.
        Some(unsafe { core::ptr::read_unaligned(start as *const T) })
    } else {
        ctx.load(offset).ok()
    }
}

/// Where the IP packet ends. BIG TCP super-packets carry length 0: the skb's length rules.
#[inline(always)]
fn l3_end(ctx: &TcContext, l3_offset: u32, ip_len: u32) -> u32 {
    if ip_len == 0 {
        ctx.len()
    } else {
        (l3_offset + ip_len).min(ctx.len())
    }
}
