//! The program's maps and read-only configuration, and the small helpers that read and bump
//! them.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{lpm_trie::Key, Array, LpmTrie, PerCpuArray, RingBuf},
    programs::TcContext,
};
use mirror_common::{
    Config, Counter, TargetKey, TargetValue, DEFAULT_RING_BYTES, DIRECTION_INGRESS,
    PORT_BITMAP_WORDS,
};

/// Captured packets, each a `RecordHeader` followed by the packet bytes. Userspace may resize
/// it at load time.
#[map(name = "EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);

/// Target prefixes and ports to capture; userspace edits it while attached.
#[map(name = "TARGETS")]
static TARGETS: LpmTrie<TargetKey, TargetValue> =
    LpmTrie::with_max_entries(1024, BPF_F_NO_PREALLOC);

/// One bit per port that some target has (see `PORT_BITMAP_WORDS`): the pre-filter that lets
/// the node's other traffic leave before the trie. Userspace keeps it a superset of the
/// trie's ports while it edits both.
#[map(name = "PORTS")]
static PORTS: Array<u32> = Array::with_max_entries(PORT_BITMAP_WORDS, 0);

/// One `u64` per [`Counter`], per CPU, so bumping needs no atomics.
#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

/// Set by userspace at load time (`.rodata`, frozen): the verifier knows its values and drops
/// the code they turn off.
#[no_mangle]
static CONFIG: Config = Config {
    ignore_mark: 0,
    ignore_mark_mask: 0,
    log_enabled: 0,
    wakeup_bytes: 0,
    forward_direction: DIRECTION_INGRESS,
    reverse_enabled: 0,
};

/// The load-time configuration, whole: read only once a packet matched.
#[inline(always)]
pub fn config() -> Config {
    // SAFETY: a plain read of a static; volatile so the compiler does not fold in the
    // compile-time defaults that userspace replaces at load.
    unsafe { core::ptr::read_volatile(&CONFIG) }
}

/// `Config::forward_direction` alone: one load on the path every packet takes.
#[inline(always)]
pub fn forward_direction() -> u32 {
    // SAFETY: as in `config`, for one field.
    unsafe { core::ptr::read_volatile(core::ptr::addr_of!(CONFIG.forward_direction)) }
}

/// `Config::reverse_enabled` alone.
#[inline(always)]
pub fn reverse_enabled() -> bool {
    // SAFETY: as in `config`, for one field.
    unsafe { core::ptr::read_volatile(core::ptr::addr_of!(CONFIG.reverse_enabled)) != 0 }
}

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

/// The pre-filter: does some target have this port?
#[inline(always)]
pub fn is_target_port(port: u16) -> bool {
    PORTS
        .get(u32::from(port) >> 5)
        .is_some_and(|word| word & (1 << (port & 31)) != 0)
}

#[inline(always)]
pub fn is_target(key: &TargetKey) -> bool {
    TARGETS.get(Key::new(TargetKey::FULL_BITS, *key)).is_some()
}

/// True for packets the agent itself sent: its shadow connections carry the configured mark
/// bits, which are compared under their mask so that other bits set or cleared on the way
/// (by kube-proxy, Calico or Cilium rules) do not matter.
#[inline(always)]
pub fn is_own_traffic(ctx: &TcContext, config: &Config) -> bool {
    if config.ignore_mark == 0 {
        return false;
    }
    // SAFETY: `skb` is the context pointer the kernel passed in; `mark` is readable.
    let mark = unsafe { (*ctx.skb.skb).mark };
    mark & config.ignore_mark_mask == config.ignore_mark & config.ignore_mark_mask
}
