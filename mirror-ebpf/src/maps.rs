//! The program's maps, and the small helpers that read and bump them.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{lpm_trie::Key, Array, LpmTrie, PerCpuArray, RingBuf},
    programs::TcContext,
};
use mirror_common::{Config, Counter, TargetKey, TargetValue, DEFAULT_RING_BYTES};

/// Captured packets, each a `RecordHeader` followed by the packet bytes. Userspace may resize
/// it at load time.
#[map(name = "EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);

/// Destination prefixes and ports to capture; userspace edits it while attached.
#[map(name = "TARGETS")]
static TARGETS: LpmTrie<TargetKey, TargetValue> =
    LpmTrie::with_max_entries(1024, BPF_F_NO_PREALLOC);

/// One `u64` per [`Counter`], per CPU, so bumping needs no atomics.
#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

/// Runtime switches; see [`Config`].
#[map(name = "CONFIG")]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

#[inline(always)]
pub fn count(counter: Counter) {
    add(counter, 1);
}

#[inline(always)]
pub fn add(counter: Counter, n: u64) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: the pointer is this CPU's slot of a live map value; nothing else on this
        // CPU runs concurrently with a TC program.
        unsafe { *slot += n };
    }
}

#[inline(always)]
pub fn is_target(key: &TargetKey) -> bool {
    TARGETS.get(Key::new(TargetKey::FULL_BITS, *key)).is_some()
}

/// True for packets the agent itself sent (its shadow connections carry `Config::ignore_mark`).
#[inline(always)]
pub fn is_own_traffic(ctx: &TcContext) -> bool {
    let Some(config) = CONFIG.get(0) else {
        return false;
    };
    // SAFETY: `skb` is the context pointer the kernel passed in; `mark` is readable.
    let mark = unsafe { (*ctx.skb.skb).mark };
    config.ignore_mark != 0 && mark == config.ignore_mark
}

#[inline(always)]
pub fn log_enabled() -> bool {
    CONFIG.get(0).is_some_and(|config| config.log_enabled != 0)
}

/// See `Config::wakeup_bytes`.
#[inline(always)]
pub fn wakeup_bytes() -> u32 {
    CONFIG.get(0).map_or(0, |config| config.wakeup_bytes)
}
