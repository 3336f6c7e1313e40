//! How far behind every relay of this process is, summed over mirrors and pipeline threads:
//! the bytes held for v2 (queued, or sent and not yet answered) and the client connections
//! holding or waiting for a connection to v2. Either grows when the relay falls behind: bytes
//! with large or many pipelined requests, connections with a connection per request (where
//! each request is a little data but a client connection of its own). Process-wide, like the
//! relay's threads whose priority follows them (`agent/relay_priority.rs`); every budget and
//! pool adds what it takes and takes it off again.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

static HELD: AtomicUsize = AtomicUsize::new(0);
static LEASED: AtomicUsize = AtomicUsize::new(0);

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

/// Client connections holding or waiting for a connection to v2, over every relay now.
pub fn leased_connections() -> usize {
    LEASED.load(Relaxed)
}

pub(super) fn lease() {
    LEASED.fetch_add(1, Relaxed);
}

pub(super) fn release() {
    // Each release is a lease's drop, so this never goes below zero.
    LEASED.fetch_sub(1, Relaxed);
}
