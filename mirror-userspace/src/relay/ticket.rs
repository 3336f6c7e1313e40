//! Exactly-once accounting, by ownership: every mirrored request travels with a [`Ticket`]
//! that counts its outcome when consumed, and every queued piece of it holds its share of the
//! in-flight byte budget in a [`Chunk`] that gives it back when dropped. A ticket dropped
//! without an outcome (its task was cancelled at shutdown) counts as `dropped_shutdown`, so
//! no exit can leave a request uncounted or count one twice.

use std::sync::{
    atomic::{AtomicUsize, Ordering::Relaxed},
    Arc,
};

use bytes::Bytes;

use super::stats::{DropReason, Outcome, RelayStats};

/// One mirrored request's claim to exactly one outcome.
#[derive(Debug)]
pub(super) struct Ticket {
    stats: Arc<RelayStats>,
    ended: bool,
}

impl Ticket {
    /// Counts a request handed to the relay.
    pub(super) fn issue(stats: &Arc<RelayStats>) -> Ticket {
        stats.requests.fetch_add(1, Relaxed);
        Ticket {
            stats: Arc::clone(stats),
            ended: false,
        }
    }

    pub(super) fn end(mut self, outcome: Outcome) {
        self.ended = true;
        self.stats.outcome(outcome);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.ended {
            self.stats.outcome(Outcome::Dropped(DropReason::Shutdown));
        }
    }
}

/// Request bytes not yet answered, over all connections, against a fixed limit.
#[derive(Debug)]
pub(super) struct Budget {
    used: AtomicUsize,
    limit: usize,
}

impl Budget {
    pub(super) fn new(limit: usize) -> Arc<Budget> {
        Arc::new(Budget {
            used: AtomicUsize::new(0),
            limit,
        })
    }

    /// Takes `bytes` out of the budget if they fit; the returned chunk gives them back. A
    /// piece is charged at least [`MIN_CHARGE`]: queued pieces then cost memory the budget
    /// bounds, however small a client makes them.
    pub(super) fn reserve(self: &Arc<Self>, bytes: Bytes) -> Option<Chunk> {
        let charge = bytes.len().max(MIN_CHARGE);
        self.used
            .fetch_update(Relaxed, Relaxed, |used| {
                let total = used.checked_add(charge)?;
                (total <= self.limit).then_some(total)
            })
            .ok()?;
        Some(Chunk {
            bytes,
            charge,
            budget: Arc::clone(self),
        })
    }

    #[cfg(test)]
    pub(super) fn used(&self) -> usize {
        self.used.load(Relaxed)
    }
}

/// What a queued piece costs beyond its bytes (the `Bytes` handle, its allocation's header,
/// a queue slot), rounded up: the least a piece is charged.
pub(super) const MIN_CHARGE: usize = 256;

/// Bytes of a request, charged to the budget for as long as they are held.
#[derive(Debug)]
pub(super) struct Chunk {
    pub(super) bytes: Bytes,
    charge: usize,
    budget: Arc<Budget>,
}

impl Drop for Chunk {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.charge, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_counts_once_and_a_lost_one_counts_as_shutdown() {
        let stats = Arc::new(RelayStats::default());
        Ticket::issue(&stats).end(Outcome::Answered(200));
        drop(Ticket::issue(&stats));
        assert_eq!(stats.requests.load(Relaxed), 2);
        assert_eq!(stats.answered(), 1);
        assert_eq!(stats.dropped_count(DropReason::Shutdown), 1);
        assert_eq!(stats.pending(), 0);
    }

    #[test]
    fn chunks_give_their_bytes_back() {
        let budget = Budget::new(1000);
        let a = budget.reserve(Bytes::from(vec![0; 600])).unwrap();
        assert!(budget.reserve(Bytes::from(vec![0; 401])).is_none());
        let b = budget.reserve(Bytes::from(vec![0; 400])).unwrap();
        assert_eq!(budget.used(), 1000);
        drop(a);
        drop(b);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn small_pieces_are_charged_their_overhead() {
        let budget = Budget::new(2 * MIN_CHARGE);
        let a = budget.reserve(Bytes::from_static(b"x")).unwrap();
        let b = budget.reserve(Bytes::from_static(b"y")).unwrap();
        assert!(budget.reserve(Bytes::from_static(b"z")).is_none());
        assert_eq!(budget.used(), 2 * MIN_CHARGE);
        drop((a, b));
        assert_eq!(budget.used(), 0);
    }
}
