//! Copies a packet into the ring buffer as one record.
//!
//! `bpf_ringbuf_reserve` needs a size the verifier knows, so records come in fixed size
//! classes: the packet goes into the smallest class that holds it whole, and only a packet
//! larger than the largest class (`MAX_CAPTURE_BYTES`) is cut, flagged and counted.

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::bpf_ktime_get_ns,
    programs::TcContext,
};
use aya_log_ebpf::warn;
use mirror_common::{
    Counter, RecordHeader, MAX_CAPTURE_BYTES, RECORD_HEADER_LEN, RECORD_TRUNCATED,
};

use crate::maps::{add, count, log_enabled, wakeup_bytes, EVENTS};

/// One ring buffer record of a size class: header, then up to `N` packet bytes.
#[repr(C)]
struct Record<const N: usize> {
    header: RecordHeader,
    data: [u8; N],
}

const _: () = assert!(RECORD_HEADER_LEN.is_multiple_of(8));

/// Emits the whole packet (from the Ethernet header) to the ring buffer.
#[inline(always)]
pub fn packet(ctx: &TcContext, direction: u32) {
    let len = ctx.len();
    // Classes grow by about 4x: a record wastes at most 3/4 of its space, and small packets
    // (requests, SYNs) stay small. 1514 is a full Ethernet frame; 66 KiB a default 64 KiB GSO
    // skb with its headers; 513 KiB a BIG TCP one.
    if len <= 128 {
        emit::<128>(ctx, direction, len)
    } else if len <= 512 {
        emit::<512>(ctx, direction, len)
    } else if len <= 1536 {
        emit::<1536>(ctx, direction, len)
    } else if len <= 4096 {
        emit::<4096>(ctx, direction, len)
    } else if len <= 9216 {
        emit::<9216>(ctx, direction, len)
    } else if len <= 16384 {
        emit::<16384>(ctx, direction, len)
    } else if len <= 33792 {
        emit::<33792>(ctx, direction, len)
    } else if len <= 67584 {
        emit::<67584>(ctx, direction, len)
    } else if len <= 135168 {
        emit::<135168>(ctx, direction, len)
    } else if len <= 270336 {
        emit::<270336>(ctx, direction, len)
    } else {
        emit::<{ MAX_CAPTURE_BYTES as usize }>(ctx, direction, len)
    }
}

#[inline(always)]
fn emit<const N: usize>(ctx: &TcContext, direction: u32, len: u32) {
    let Some(mut entry) = EVENTS.reserve::<Record<N>>(0) else {
        count(Counter::RingFull);
        return;
    };
    let (cap_len, flags) = if len > N as u32 {
        count(Counter::Truncated);
        (N as u32, RECORD_TRUNCATED)
    } else {
        (len, 0)
    };
    let record = entry.as_mut_ptr();
    // SAFETY: `record` points at `size_of::<Record<N>>()` bytes the ring buffer reserved for
    // us; we write the header and at most `N` bytes of data before submitting.
    let loaded = unsafe {
        (*record).header = RecordHeader {
            // SAFETY: a helper with no arguments or preconditions.
            timestamp_ns: bpf_ktime_get_ns(),
            ifindex: (*ctx.skb.skb).ifindex,
            direction,
            orig_len: len,
            cap_len,
            flags,
            reserved: 0,
        };
        load_bytes(ctx, (*record).data.as_mut_ptr(), cap_len, N as u32)
    };
    if loaded {
        add(Counter::BytesEmitted, u64::from(cap_len));
        count(Counter::Emitted);
        entry.submit(wakeup_flags());
    } else {
        count(Counter::LoadError);
        if log_enabled() {
            warn!(ctx, "bpf_skb_load_bytes failed for a {} byte packet", len);
        }
        entry.discard(0);
    }
}

/// Ring buffer submit flags: the default adaptive wake-up, or (when userspace asked for
/// batching) no wake-up until enough bytes wait.
#[inline(always)]
fn wakeup_flags() -> u64 {
    let threshold = wakeup_bytes();
    if threshold == 0 {
        0
    } else if EVENTS.query(u64::from(BPF_RB_AVAIL_DATA)) >= u64::from(threshold) {
        u64::from(BPF_RB_FORCE_WAKEUP)
    } else {
        u64::from(BPF_RB_NO_WAKEUP)
    }
}

/// Copies `len` bytes from the start of the packet to `dst`, which holds `cap` bytes.
///
/// # Safety
/// `dst` must be valid for `cap` bytes of writes.
#[inline(always)]
unsafe fn load_bytes(ctx: &TcContext, dst: *mut u8, len: u32, cap: u32) -> bool {
    // The verifier must see `0 < len <= cap` on the very register passed to the helper.
    if len == 0 || len > cap {
        return false;
    }
    // SAFETY: `dst` has room for `cap >= len` bytes (caller's contract); the helper checks the
    // skb side itself.
    let ret =
        unsafe { aya_ebpf::helpers::bpf_skb_load_bytes(ctx.skb.skb.cast(), 0, dst.cast(), len) };
    ret == 0
}
