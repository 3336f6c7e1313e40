//! Types shared by the kernel program and the userspace agent.
//!
//! Everything here is `#[repr(C)]`, `Copy`, built from fixed-width integers and free of implicit
//! padding, so the kernel and userspace agree on every byte.
#![no_std]

/// Name of the ring buffer map that carries captured packets.
pub const EVENTS_MAP: &str = "EVENTS";
/// Name of the LPM trie map holding the capture targets.
pub const TARGETS_MAP: &str = "TARGETS";
/// Name of the per-CPU counter array.
pub const COUNTERS_MAP: &str = "COUNTERS";
/// Name of the target-port bitmap (see [`PORT_BITMAP_WORDS`]).
pub const PORTS_MAP: &str = "PORTS";
/// Name of the read-only global holding the program's [`Config`], set at load time.
pub const CONFIG_GLOBAL: &str = "CONFIG";
/// Program that captures on an ingress hook.
pub const INGRESS_PROGRAM: &str = "mirror_ingress";
/// Program that captures on an egress hook.
pub const EGRESS_PROGRAM: &str = "mirror_egress";

/// Default ring buffer size: 64 MiB holds a full 64 MiB burst of small segments and dozens of
/// 512 KiB GSO super-packets while userspace catches up.
pub const DEFAULT_RING_BYTES: u32 = 64 << 20;

/// The largest packet the kernel program captures whole (Ethernet header included).
///
/// The kernel's `GSO_MAX_SIZE` (BIG TCP) is just under 512 KiB, so no TCP skb reaches this; a
/// larger one is captured truncated, flagged [`RECORD_TRUNCATED`] and counted.
pub const MAX_CAPTURE_BYTES: u32 = 513 * 1024;

/// Header of every ring buffer record; the packet bytes follow it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RecordHeader {
    /// `bpf_ktime_get_ns()`: monotonic nanoseconds since boot.
    pub timestamp_ns: u64,
    /// Interface the packet was seen on.
    pub ifindex: u32,
    /// [`DIRECTION_INGRESS`] or [`DIRECTION_EGRESS`].
    pub direction: u32,
    /// `skb->len`: the packet's full length, Ethernet header included.
    pub orig_len: u32,
    /// How many packet bytes follow the header (`<= orig_len`).
    pub cap_len: u32,
    /// `RECORD_*` bits.
    pub flags: u32,
    /// Keeps the header a multiple of 8 bytes; always zero.
    pub reserved: u32,
}

/// The header's size in bytes.
pub const RECORD_HEADER_LEN: usize = core::mem::size_of::<RecordHeader>();

/// Set when the packet was cut because it exceeded the largest record (`cap_len < orig_len`
/// and bytes a stream rebuilder needs are missing).
pub const RECORD_TRUNCATED: u32 = 1;
/// Set on a record of a packet *from* a target (v1 -> client: v1's side of a mirrored
/// connection), seen on the reverse hook. Such a record is header-only: the frame is cut right
/// after the TCP header, options included, so `cap_len < orig_len` whenever the packet carried
/// payload and the IP length says more than the record holds. It carries what following v1's
/// side needs (sequence, acknowledgement, window, flags, the SYN-ACK's window scale), never
/// v1's payload. [`RECORD_TRUNCATED`] is set on it only if even the headers did not fit.
pub const RECORD_REVERSE: u32 = 2;

/// The largest header-only record: Ethernet, two VLAN tags, IPv6 with extension headers and
/// a TCP header with options fit, a longer header chain is cut (and flagged truncated).
pub const MAX_REVERSE_CAPTURE_BYTES: u32 = 512;

/// The packet was seen on an ingress hook.
pub const DIRECTION_INGRESS: u32 = 0;
/// The packet was seen on an egress hook.
pub const DIRECTION_EGRESS: u32 = 1;

/// Address family tags in [`TargetKey::family`].
pub const FAMILY_IPV4: u8 = 4;
/// See [`FAMILY_IPV4`].
pub const FAMILY_IPV6: u8 = 6;

/// Key of the targets LPM trie.
///
/// The trie matches bit prefixes in field order, so the exact fields (port, family) come first
/// and the address last: a key's prefix length is [`TargetKey::FIXED_BITS`] plus the address
/// prefix. IPv4 addresses occupy the first four bytes of `addr`, the rest zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
pub struct TargetKey {
    /// The target's port, network byte order (a packet's destination port on the forward hook,
    /// its source port on the reverse hook).
    pub port: [u8; 2],
    /// [`FAMILY_IPV4`] or [`FAMILY_IPV6`].
    pub family: u8,
    /// Always zero; matched as part of the fixed prefix.
    pub reserved: u8,
    /// The target's address, network byte order (destination forward, source reverse).
    pub addr: [u8; 16],
}

impl TargetKey {
    /// Bits of port, family and reserved that every key matches exactly.
    pub const FIXED_BITS: u32 = 32;
    /// Prefix length of a full-length lookup key.
    pub const FULL_BITS: u32 = Self::FIXED_BITS + 128;
}

/// Value stored for each target: which `--target` it came from, for diagnostics.
pub type TargetValue = u32;

/// Words of the target-port bitmap: one bit per TCP port, bit `port % 32` of word
/// `port / 32`. A packet whose port has no bit set leaves before the targets trie is searched.
pub const PORT_BITMAP_WORDS: u32 = 65536 / 32;

/// The program's configuration: a read-only global (`.rodata`) that userspace sets once at
/// load time, so the verifier sees constants and prunes the branches they turn off, and the
/// hot path reads no map for it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Config {
    /// Packets whose `skb->mark` has these bits (under [`Config::ignore_mark_mask`]) are the
    /// agent's own and never captured. Zero disables the check.
    pub ignore_mark: u32,
    /// The mark bits compared with [`Config::ignore_mark`]: rules that set or clear other bits
    /// (kube-proxy's 0x4000 masquerade bit, Calico's 0xffff0000 bits, Cilium's 0x0f00 magic)
    /// leave the comparison alone.
    pub ignore_mark_mask: u32,
    /// Nonzero enables aya-log diagnostics from the kernel program (off the hot path).
    pub log_enabled: u32,
    /// Zero: wake the reader for every record (the ring buffer's adaptive default). Otherwise
    /// wake it only once this many bytes wait unread; the reader polls on a timer in between,
    /// so a busy node pays one wake-up per batch, not one per packet.
    pub wakeup_bytes: u32,
    /// The hook that sees client -> target packets ([`DIRECTION_INGRESS`] or
    /// [`DIRECTION_EGRESS`]). The other hook matches packets *from* targets (v1's side) and
    /// emits them header-only, flagged [`RECORD_REVERSE`], if [`Config::reverse_enabled`].
    pub forward_direction: u32,
    /// Nonzero: capture v1's side of mirrored connections on the reverse hook.
    pub reverse_enabled: u32,
}

/// Indices of the per-CPU counters.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Every packet the program ran on.
    Seen = 0,
    /// TCP packets whose destination is a target (client -> v1), on the forward hook.
    Matched = 1,
    /// Records of forward packets written to the ring buffer.
    Emitted = 2,
    /// Packet bytes written to the ring buffer, both directions (record headers excluded).
    BytesEmitted = 3,
    /// Forward packets lost because the ring buffer was full.
    RingFull = 4,
    /// Records cut short because the packet exceeded [`MAX_CAPTURE_BYTES`].
    Truncated = 5,
    /// Matched packets lost because copying them out of the skb failed.
    LoadError = 6,
    /// Matched pure ACKs, deliberately not emitted.
    PureAck = 7,
    /// Packets skipped because they carried the agent's own mark.
    OwnTraffic = 8,
    /// TCP packets from a target (v1 -> client) seen on the reverse hook.
    ReverseMatched = 9,
    /// Header-only records of reverse packets written to the ring buffer.
    ReverseEmitted = 10,
    /// Reverse packets lost because the ring buffer was full.
    ReverseRingFull = 11,
    /// Frames parsed through one or two 802.1Q / 802.1ad VLAN tags left in the frame.
    VlanTagged = 12,
    /// Frames with more VLAN tags than the parser follows (two): not parsed.
    VlanTooDeep = 13,
    /// IPv6 packets parsed through hop-by-hop, routing or destination options headers.
    Ipv6ExtHeaders = 14,
    /// IPv6 packets whose hop-by-hop header carried a jumbo payload option (BIG TCP).
    Ipv6Jumbo = 15,
    /// TCP in IPv4 or IPv6 fragments: counted, not parsed (TCP is not fragmented in practice).
    Fragments = 16,
    /// IPv6 packets whose header chain the parser does not follow: another extension header
    /// (AH, ESP, mobility...) or more than it walks. Not parsed.
    Ipv6ExtUnparsed = 17,
    /// Frames without an Ethernet header (an L3 device: WireGuard, tun, ipip): counted, not
    /// parsed.
    NoEthernet = 18,
}

impl Counter {
    /// Number of counters (the per-CPU array's size).
    pub const COUNT: u32 = 19;
    /// All counters, in index order.
    pub const ALL: [Counter; Self::COUNT as usize] = [
        Counter::Seen,
        Counter::Matched,
        Counter::Emitted,
        Counter::BytesEmitted,
        Counter::RingFull,
        Counter::Truncated,
        Counter::LoadError,
        Counter::PureAck,
        Counter::OwnTraffic,
        Counter::ReverseMatched,
        Counter::ReverseEmitted,
        Counter::ReverseRingFull,
        Counter::VlanTagged,
        Counter::VlanTooDeep,
        Counter::Ipv6ExtHeaders,
        Counter::Ipv6Jumbo,
        Counter::Fragments,
        Counter::Ipv6ExtUnparsed,
        Counter::NoEthernet,
    ];

    /// A stable snake_case name for logs and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::Seen => "packets_seen",
            Counter::Matched => "packets_matched",
            Counter::Emitted => "records_emitted",
            Counter::BytesEmitted => "bytes_emitted",
            Counter::RingFull => "ringbuf_full_drops",
            Counter::Truncated => "truncations",
            Counter::LoadError => "load_errors",
            Counter::PureAck => "pure_acks_skipped",
            Counter::OwnTraffic => "own_traffic_skipped",
            Counter::ReverseMatched => "reverse_matched",
            Counter::ReverseEmitted => "reverse_records_emitted",
            Counter::ReverseRingFull => "reverse_ringbuf_full_drops",
            Counter::VlanTagged => "vlan_tagged",
            Counter::VlanTooDeep => "vlan_too_deep",
            Counter::Ipv6ExtHeaders => "ipv6_ext_headers",
            Counter::Ipv6Jumbo => "ipv6_jumbo",
            Counter::Fragments => "fragments",
            Counter::Ipv6ExtUnparsed => "ipv6_ext_unparsed",
            Counter::NoEthernet => "no_ethernet",
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all three are repr(C), Copy, made of integers, with no padding.
    unsafe impl aya::Pod for super::RecordHeader {}
    unsafe impl aya::Pod for super::TargetKey {}
    unsafe impl aya::Pod for super::Config {}
}

const _: () = assert!(RECORD_HEADER_LEN == 32);
const _: () = assert!(core::mem::size_of::<TargetKey>() == 20);
const _: () = assert!(core::mem::size_of::<Config>() == 24);
