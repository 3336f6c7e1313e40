//! The bytes every relay of this process holds for v2 (queued, or sent and not yet
//! answered), summed over mirrors and pipeline threads: the one number that says whether
//! the relay keeps up. Process-wide, like the relay's threads whose priority follows it
//! (`agent/relay_priority.rs`); every budget adds what it charges and takes it off again.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

static HELD: AtomicUsize = AtomicUsize::new(0);

/// Bytes held for v2 by every relay of the process now (as the budgets charge them).
pub fn held_bytes() -> usize {
    HELD.load(Relaxed)
}

pub(super) fn add(bytes: usize) {
    HELD.fetch_add(bytes, Relaxed);
}

pub(super) fn remove(bytes: usize) {
    // Every removal follows the addition of at least as many bytes (a chunk gives back
    // what it was charged), so this never goes below zero.
    HELD.fetch_sub(bytes, Relaxed);
}
