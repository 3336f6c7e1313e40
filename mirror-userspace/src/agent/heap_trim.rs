//! Gives the allocator's free memory back to the kernel once a burst is over. At saturation
//! the relay's backlog grows the heap by tens of MiB (`cargo xtask bench --memory`: about 570
//! bytes of heap per request held for v2), and glibc keeps memory freed below the top of a heap
//! for reuse, so without a trim the agent would hold its peak for good. Only when the capture
//! path is quiet: trimming under load would make the reader fault the pages back in while the
//! ring fills.

use std::time::{Duration, Instant};

/// Free bytes in malloc's arenas above which a trim is worth the page faults of growing back.
const TRIM_ABOVE: usize = 8 << 20;

/// How often the free bytes are looked at: `mallinfo2` walks malloc's free lists.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Ring bytes per [`CHECK_EVERY`] below which the capture path counts as quiet: about a
/// thousand small requests a second.
const QUIET_BYTES: u64 = 1 << 20;

/// Trims the heap from the agent's loop, at most once per [`CHECK_EVERY`].
pub(super) struct HeapTrim {
    next: Instant,
    /// The ring's written bytes at the last check.
    written: u64,
}

impl HeapTrim {
    pub(super) fn new() -> HeapTrim {
        HeapTrim {
            next: Instant::now() + CHECK_EVERY,
            written: 0,
        }
    }

    /// Call from a timer with the ring's written bytes (`RingFill::written_bytes`): when a
    /// check is due, the ring took less than [`QUIET_BYTES`] since the last one and more than
    /// [`TRIM_ABOVE`] bytes lie free in malloc's arenas, returns their pages to the kernel.
    pub(super) fn tick(&mut self, now: Instant, written: u64) {
        if now < self.next {
            return;
        }
        self.next = now + CHECK_EVERY;
        let quiet = written.wrapping_sub(self.written) < QUIET_BYTES;
        self.written = written;
        if quiet {
            trim_when_free_above(TRIM_ABOVE);
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim_when_free_above(threshold: usize) {
    // SAFETY: both take no pointers; glibc locks each arena while it walks or trims it.
    let free = unsafe { libc::mallinfo2() }.fordblks;
    if free > threshold {
        // SAFETY: as above; 0 keeps no extra padding at the top of the heap.
        unsafe { libc::malloc_trim(0) };
    }
}

/// Other allocators (musl's) return freed memory themselves or have no such call.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim_when_free_above(_threshold: usize) {}
