//! Just enough of Ethernet (with up to two VLAN tags), IPv4, IPv6 (with its hop-by-hop, routing
//! and destination options headers) and TCP to find a packet's ports, addresses and flags.
//!
//! Each header is read whole: straight from the packet when it lies in the skb's linear part
//! (the common case, and the cheapest), else with `bpf_skb_load_bytes`: on veth the linear
//! part of a GSO skb often holds only the headers, and sometimes less. What the parser meets
//! and does not follow (fragments, deeper VLAN stacks, other IPv6 extension headers, frames
//! without an Ethernet header) is counted by kind, never passed over in silence.

use aya_ebpf::programs::TcContext;
use mirror_common::{Counter, TargetKey, FAMILY_IPV4, FAMILY_IPV6};
use network_types::{
    eth::EthHdr,
    ip::{IpProto, Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
};

use crate::maps::count;

/// More-fragments flag and fragment offset bits of IPv4's flags/offset field.
const IPV4_FRAGMENT_MASK: u16 = 0x3fff;
/// 802.1Q and 802.1ad tag protocol identifiers, as they sit in the frame (big-endian).
const ETH_P_8021Q: u16 = 0x8100u16.to_be();
const ETH_P_8021AD: u16 = 0x88a8u16.to_be();
const ETH_P_IP: u16 = 0x0800u16.to_be();
const ETH_P_IPV6: u16 = 0x86ddu16.to_be();
/// A VLAN tag: TCI then the next ethertype.
const VLAN_TAG_LEN: usize = 4;
/// Tags followed before giving up (a QinQ stack is two).
const MAX_VLAN_TAGS: usize = 2;
/// IPv6 extension headers followed before giving up.
const MAX_IPV6_EXT_HEADERS: usize = 4;
const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_ESP: u8 = 50;
const IPV6_AH: u8 = 51;
const IPV6_DEST_OPTIONS: u8 = 60;
const IPV6_MOBILITY: u8 = 135;
const IPV6_HIP: u8 = 139;
const IPV6_SHIM6: u8 = 140;
/// Hop-by-hop option carrying a 32-bit payload length (RFC 2675), which IPv6 BIG TCP uses.
const IPV6_JUMBO_OPTION: u8 = 0xc2;
const IPPROTO_TCP: u8 = IpProto::Tcp as u8;

/// The network-layer addresses of a packet, kept as read until the port pre-filter passed.
enum Addrs {
    V4 { src: [u8; 4], dst: [u8; 4] },
    V6 { src: [u8; 16], dst: [u8; 16] },
}

/// What the classifier needs to know about a TCP packet.
pub struct Segment {
    addrs: Addrs,
    pub tcp: TcpHdr,
    /// Where the TCP header starts, from the start of the frame.
    l4_offset: u32,
    /// Where the IP packet ends (its length as the IP header says, clamped to the skb).
    l3_end: u32,
}

impl Segment {
    /// Payload, SYN, FIN and RST matter to the stream rebuilder; a pure ACK does not.
    #[inline(always)]
    pub fn carries_stream_data(&self) -> bool {
        self.payload_len() > 0 || self.tcp.syn() | self.tcp.fin() | self.tcp.rst() != 0
    }

    #[inline(always)]
    fn payload_len(&self) -> u32 {
        self.l3_end.saturating_sub(self.headers_len())
    }

    /// Bytes from the start of the frame to the end of the TCP header, options included.
    #[inline(always)]
    pub fn headers_len(&self) -> u32 {
        self.l4_offset + u32::from(self.tcp.doff()) * 4
    }

    /// The port the pre-filter tests: the destination's (`forward`) or the source's.
    #[inline(always)]
    pub fn target_port(&self, forward: bool) -> u16 {
        u16::from_be_bytes(if forward {
            self.tcp.dest
        } else {
            self.tcp.source
        })
    }

    /// The trie key of the destination (`forward`) or of the source (v1's side).
    #[inline(always)]
    pub fn target_key(&self, forward: bool) -> TargetKey {
        let mut key = TargetKey {
            port: if forward {
                self.tcp.dest
            } else {
                self.tcp.source
            },
            ..TargetKey::default()
        };
        match &self.addrs {
            Addrs::V4 { src, dst } => {
                key.family = FAMILY_IPV4;
                key.addr[..4].copy_from_slice(if forward { dst } else { src });
            }
            Addrs::V6 { src, dst } => {
                key.family = FAMILY_IPV6;
                key.addr = if forward { *dst } else { *src };
            }
        }
        key
    }
}

/// What [`ipv4_in_place`] found.
pub enum InPlace {
    /// Not ours: another protocol, or a port no target has.
    Unwanted,
    /// A TCP segment whose port some target has.
    Segment(Segment),
}

/// The cheapest look at the common case, the node's other traffic included: an untagged IPv4
/// frame with no IP options and no fragmentation, read in place (single loads, no copies of
/// whole headers), the port pre-filter applied (`is_target_port` on the port the hook
/// tests). `None` for everything else, which takes the full parse.
#[inline(always)]
pub fn ipv4_in_place(
    ctx: &TcContext,
    forward: bool,
    is_target_port: impl Fn(u16) -> bool,
) -> Option<InPlace> {
    const IPV4_NO_OPTIONS: u8 = 0x45;
    const L4: usize = EthHdr::LEN + Ipv4Hdr::LEN;
    let data = ctx.data();
    if data + L4 + 4 > ctx.data_end() {
        return None;
    }
    // SAFETY: the `L4 + 4` bytes from `data` lie before `data_end` (checked just above, the
    // very comparison the verifier needs); `EthHdr` is read at the packet's start as any TC
    // program reads it, and the other reads are single bytes.
    let port = unsafe {
        if (*(data as *const EthHdr)).ether_type != ETH_P_IP {
            return None;
        }
        let ip = (data + EthHdr::LEN) as *const u8;
        if *ip != IPV4_NO_OPTIONS {
            return None;
        }
        if *ip.add(9) != IPPROTO_TCP {
            return Some(InPlace::Unwanted);
        }
        if u16::from_be_bytes([*ip.add(6), *ip.add(7)]) & IPV4_FRAGMENT_MASK != 0 {
            return None;
        }
        let ports = ip.add(Ipv4Hdr::LEN);
        let port = if forward { ports.add(2) } else { ports };
        u16::from_be_bytes([*port, *port.add(1)])
    };
    if !is_target_port(port) {
        return Some(InPlace::Unwanted);
    }
    if data + L4 + TcpHdr::LEN > ctx.data_end() {
        return None;
    }
    // SAFETY: the IPv4 and TCP headers lie before `data_end` (checked just above); both are
    // plain data.
    let (ip, tcp) = unsafe {
        (
            core::ptr::read_unaligned((data + EthHdr::LEN) as *const Ipv4Hdr),
            core::ptr::read_unaligned((data + L4) as *const TcpHdr),
        )
    };
    Some(InPlace::Segment(Segment {
        addrs: Addrs::V4 {
            src: ip.src_addr,
            dst: ip.dst_addr,
        },
        tcp,
        l4_offset: L4 as u32,
        l3_end: l3_end(
            ctx,
            EthHdr::LEN as u32,
            u32::from(u16::from_be_bytes(ip.tot_len)),
        ),
    }))
}

/// Parses a frame carrying TCP over IPv4 or IPv6; `None` for anything else. What the parser
/// cannot follow is counted by kind (see the module doc); other protocols are not.
#[inline(always)]
pub fn tcp_segment(ctx: &TcContext) -> Option<Segment> {
    let eth: EthHdr = header(ctx, 0)?;
    let mut ether_type = eth.ether_type;
    let mut l3_offset = EthHdr::LEN;
    if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
        ether_type = vlan_inner_type(ctx, &mut l3_offset)?;
    }
    if ether_type == ETH_P_IP {
        ipv4(ctx, l3_offset)
    } else if ether_type == ETH_P_IPV6 {
        ipv6(ctx, l3_offset)
    } else {
        count_if_not_ethernet(ctx);
        None
    }
}

/// Steps over the VLAN tags at `*offset - 2` on; returns the ethertype after them.
#[inline(always)]
fn vlan_inner_type(ctx: &TcContext, offset: &mut usize) -> Option<u16> {
    for _ in 0..MAX_VLAN_TAGS {
        // The tag's TCI sits where the ethertype would; the next ethertype follows it.
        let inner: u16 = header(ctx, *offset + 2)?;
        *offset += VLAN_TAG_LEN;
        if inner != ETH_P_8021Q && inner != ETH_P_8021AD {
            count(Counter::VlanTagged);
            return Some(inner);
        }
    }
    count(Counter::VlanTooDeep);
    None
}

/// An L3 device (WireGuard, tun, ipip) hands TC the IP header with no Ethernet header before
/// it: the kernel's protocol says IP, but bytes 12-13 (inside the IP source address) are no
/// IP ethertype.
#[inline(always)]
fn count_if_not_ethernet(ctx: &TcContext) {
    // SAFETY: `skb` is the context pointer the kernel passed in; `protocol` is readable.
    let protocol = unsafe { (*ctx.skb.skb).protocol } as u16;
    if protocol == ETH_P_IP || protocol == ETH_P_IPV6 {
        count(Counter::NoEthernet);
    }
}

#[inline(always)]
fn ipv4(ctx: &TcContext, l3_offset: usize) -> Option<Segment> {
    let ip: Ipv4Hdr = header(ctx, l3_offset)?;
    let ihl = usize::from(ip.ihl());
    if ip.version() != 4 || ihl < Ipv4Hdr::LEN {
        return None;
    }
    if ip.proto != IPPROTO_TCP {
        return None;
    }
    if u16::from_be_bytes(ip.frags) & IPV4_FRAGMENT_MASK != 0 {
        count(Counter::Fragments);
        return None;
    }
    let l4_offset = l3_offset + ihl;
    let tcp: TcpHdr = header(ctx, l4_offset)?;
    let total_len = u32::from(u16::from_be_bytes(ip.tot_len));
    Some(Segment {
        addrs: Addrs::V4 {
            src: ip.src_addr,
            dst: ip.dst_addr,
        },
        tcp,
        l4_offset: l4_offset as u32,
        l3_end: l3_end(ctx, l3_offset as u32, total_len),
    })
}

#[inline(always)]
fn ipv6(ctx: &TcContext, l3_offset: usize) -> Option<Segment> {
    let ip: Ipv6Hdr = header(ctx, l3_offset)?;
    if ip.vcf[0] >> 4 != 6 {
        return None;
    }
    let payload_len = u32::from(u16::from_be_bytes(ip.payload_len));
    // Length 0 (BIG TCP): the skb's length rules, unless a jumbo option says more precisely.
    let mut total_len = if payload_len == 0 {
        0
    } else {
        Ipv6Hdr::LEN as u32 + payload_len
    };
    let mut l4_offset = l3_offset + Ipv6Hdr::LEN;
    if ip.next_hdr != IPPROTO_TCP {
        let jumbo = ipv6_extensions(ctx, ip.next_hdr, &mut l4_offset)?;
        if payload_len == 0 && jumbo != 0 {
            total_len = (Ipv6Hdr::LEN as u32).saturating_add(jumbo);
        }
    }
    let tcp: TcpHdr = header(ctx, l4_offset)?;
    Some(Segment {
        addrs: Addrs::V6 {
            src: ip.src_addr,
            dst: ip.dst_addr,
        },
        tcp,
        l4_offset: l4_offset as u32,
        l3_end: l3_end(ctx, l3_offset as u32, total_len),
    })
}

/// Walks the extension headers starting with `next` at `*offset`, leaving `*offset` at the TCP
/// header; returns the jumbo payload length (0: none). `None` when TCP is not reached: other
/// protocols silently, fragments and headers it does not follow counted.
#[inline(always)]
fn ipv6_extensions(ctx: &TcContext, mut next: u8, offset: &mut usize) -> Option<u32> {
    let mut jumbo = 0u32;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        match next {
            IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTIONS => {
                // Next header, length in 8-byte units beyond the first 8, then the first
                // option (a jumbo option comes first in the kernel's own BIG TCP header).
                let ext: [u8; 8] = ctx.load(*offset).ok()?;
                if next == IPV6_HOP_BY_HOP && ext[2] == IPV6_JUMBO_OPTION && ext[3] == 4 {
                    jumbo = u32::from_be_bytes([ext[4], ext[5], ext[6], ext[7]]);
                    count(Counter::Ipv6Jumbo);
                }
                next = ext[0];
                *offset += (usize::from(ext[1]) + 1) * 8;
            }
            IPV6_FRAGMENT => {
                // The fragment header's first byte names the fragmented protocol.
                let fragment: [u8; 8] = ctx.load(*offset).ok()?;
                if fragment[0] == IPPROTO_TCP {
                    count(Counter::Fragments);
                }
                return None;
            }
            IPV6_ESP | IPV6_AH | IPV6_MOBILITY | IPV6_HIP | IPV6_SHIM6 => {
                count(Counter::Ipv6ExtUnparsed);
                return None;
            }
            IPPROTO_TCP => {
                count(Counter::Ipv6ExtHeaders);
                return Some(jumbo);
            }
            // Another upper-layer protocol (UDP, ICMPv6...): not ours.
            _ => return None,
        }
    }
    if next == IPPROTO_TCP {
        count(Counter::Ipv6ExtHeaders);
        return Some(jumbo);
    }
    count(Counter::Ipv6ExtUnparsed);
    None
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
        l3_offset.saturating_add(ip_len).min(ctx.len())
    }
}
