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
/// Name of the one-entry configuration array.
pub const CONFIG_MAP: &str = "CONFIG";
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

/// Set when `cap_len < orig_len`.
pub const RECORD_TRUNCATED: u32 = 1;

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
    /// Destination port, network byte order.
    pub port: [u8; 2],
    /// [`FAMILY_IPV4`] or [`FAMILY_IPV6`].
    pub family: u8,
    /// Always zero; matched as part of the fixed prefix.
    pub reserved: u8,
    /// Destination address, network byte order.
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

/// Runtime configuration written by userspace into the one-entry config array.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Config {
    /// Packets whose `skb->mark` equals this are never captured (the agent marks its own
    /// shadow traffic). Zero disables the check.
    pub ignore_mark: u32,
    /// Nonzero enables aya-log diagnostics from the kernel program (off the hot path).
    pub log_enabled: u32,
    /// Zero: wake the reader for every record (the ring buffer's adaptive default). Otherwise
    /// wake it only once this many bytes wait unread; the reader polls on a timer in between,
    /// so a busy node pays one wake-up per batch, not one per packet.
    pub wakeup_bytes: u32,
}

/// Indices of the per-CPU counters.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Every packet the program ran on.
    Seen = 0,
    /// TCP packets whose destination is a target.
    Matched = 1,
    /// Records written to the ring buffer.
    Emitted = 2,
    /// Packet bytes written to the ring buffer (headers excluded).
    BytesEmitted = 3,
    /// Matched packets lost because the ring buffer was full.
    RingFull = 4,
    /// Records cut short because the packet exceeded [`MAX_CAPTURE_BYTES`].
    Truncated = 5,
    /// Matched packets lost because copying them out of the skb failed.
    LoadError = 6,
    /// Matched pure ACKs, deliberately not emitted.
    PureAck = 7,
    /// Packets skipped because they carried the agent's own mark.
    OwnTraffic = 8,
}

impl Counter {
    /// Number of counters (the per-CPU array's size).
    pub const COUNT: u32 = 9;
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
const _: () = assert!(core::mem::size_of::<Config>() == 12);
