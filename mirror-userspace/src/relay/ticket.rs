//! Exactly-once accounting, by ownership: every mirrored request travels with a [`Ticket`]
//! that counts its outcome when consumed, and every queued piece of it holds its share of the
//! in-flight byte budget in a [`Chunk`] that gives it back when dropped. A ticket dropped
//! without an outcome (its task was cancelled at shutdown) counts as `dropped_shutdown`, so
//! no exit can leave a request uncounted or count one twice. The ticket's end is also where
//! the latency of an answered request is observed and the access log gets its one entry.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{atomic::Ordering::Relaxed, Arc, Mutex, MutexGuard},
    time::Instant,
};

use bytes::Bytes;

use super::{
    backlog,
    stats::{DropReason, Outcome, RelayStats, STREAM_TAKEN},
};
use crate::observe::access_log::{AccessLog, Entry};

/// One mirrored request's claim to exactly one outcome.
#[derive(Debug)]
pub(super) struct Ticket {
    stats: Arc<RelayStats>,
    ended: bool,
    /// When the request was handed to the relay: the start of its latency.
    issued: Instant,
    /// What its access-log entry needs, when an access log is configured.
    log: Option<Logged>,
}

/// A request as the access log reports it.
#[derive(Debug)]
struct Logged {
    access_log: Arc<AccessLog>,
    client: SocketAddr,
    head: Bytes,
    bytes: u64,
}

impl Ticket {
    /// Counts a request handed to the relay; `head` is kept (a reference count) only when
    /// `access_log` is set.
    pub(super) fn issue(
        stats: &Arc<RelayStats>,
        access_log: Option<&Arc<AccessLog>>,
        client: SocketAddr,
        head: &Bytes,
    ) -> Ticket {
        stats.requests.fetch_add(1, Relaxed);
        Ticket {
            stats: Arc::clone(stats),
            ended: false,
            issued: Instant::now(),
            log: access_log.map(|access_log| Logged {
                access_log: Arc::clone(access_log),
                client,
                head: head.clone(),
                bytes: head.len() as u64,
            }),
        }
    }

    /// `len` more body bytes of the request were received (for the access log).
    pub(super) fn body(&mut self, len: usize) {
        if let Some(log) = &mut self.log {
            log.bytes += len as u64;
        }
    }

    pub(super) fn end(mut self, outcome: Outcome) {
        self.finish(outcome);
    }

    /// The one place a request's outcome is counted, timed and logged.
    fn finish(&mut self, outcome: Outcome) {
        self.ended = true;
        self.stats.outcome(outcome);
        let latency = match outcome {
            // A raw connection's lifetime is no response latency.
            Outcome::Answered(STREAM_TAKEN) => None,
            Outcome::Answered(_) => {
                let latency = self.issued.elapsed();
                self.stats.response_latency.observe(latency);
                Some(latency)
            }
            _ => None,
        };
        if let Some(log) = self.log.take() {
            let (kind, status, reason) = match outcome {
                Outcome::Answered(status) => ("answered", Some(status), None),
                Outcome::Unanswered(cause) => ("unanswered", None, Some(cause.label())),
                Outcome::Dropped(reason) => ("dropped", None, Some(reason.label())),
            };
            log.access_log.record(|| Entry {
                client: log.client,
                head: log.head,
                bytes: log.bytes,
                outcome: kind,
                status,
                latency,
                reason,
            });
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.ended {
            self.finish(Outcome::Dropped(DropReason::Shutdown));
        }
    }
}

/// Request bytes not yet answered, over all connections against a fixed limit, and per
/// source address (the client's pod) against its share, so that one pod whose requests v2
/// is slow to take cannot starve the others. The bytes held in all are the stats'
/// `queued_bytes` gauge.
///
/// A share is a floor, not a ceiling: a source may hold more than its share (borrow) while
/// the budget keeps room beyond it for every other source's unused share and a headroom
/// ([`Budget::headroom`]) for sources holding nothing yet. So one pod's large upload may use
/// nearly the whole budget while nobody else needs it (v2 falling behind the capture queues
/// most of the upload: the bench's 64 MiB upload was dropped under a hard ceiling of half the
/// budget), and a second pod's requests still fit: in the headroom at once, and up to its
/// whole share as the borrower's bytes drain, since nobody borrows what a source within its
/// share is owed. Bytes are never taken back, only not lent again: held bytes are answered or
/// time out, so a borrower gives room back within the response timeout.
#[derive(Debug)]
pub(super) struct Budget {
    stats: Arc<RelayStats>,
    limit: usize,
    per_source: usize,
    headroom: usize,
    held: Mutex<Held>,
}

/// What the sources hold, updated under one lock with the global gauge.
#[derive(Debug, Default)]
struct Held {
    /// Bytes held per source; a source holding nothing has no entry, so spoofed or
    /// short-lived sources leave nothing behind.
    sources: HashMap<IpAddr, usize>,
    /// The sum over `sources` of what each holds below its share (what the budget owes them).
    owed: usize,
}

impl Budget {
    pub(super) fn new(limit: usize, per_source: usize, stats: Arc<RelayStats>) -> Arc<Budget> {
        Arc::new(Budget {
            stats,
            limit,
            per_source,
            headroom: Budget::headroom(limit, per_source),
            held: Mutex::default(),
        })
    }

    /// What borrowing leaves free for sources holding nothing: a sixteenth of the budget
    /// (4 MiB of the default 64), at most one share. Enough for many small requests of pods
    /// that arrive while one pod borrows, little enough that a lone upload may use 15/16.
    pub(super) fn headroom(limit: usize, per_source: usize) -> usize {
        (limit / 16).min(per_source)
    }

    /// Takes `bytes` out of the global budget and of `source`'s share, or beyond its share if
    /// the budget can lend them (see [`Budget`]); the returned chunk gives them back. A piece
    /// is charged at least [`MIN_CHARGE`]: queued pieces then cost memory the budget bounds,
    /// however small a client makes them.
    pub(super) fn reserve(
        self: &Arc<Self>,
        source: IpAddr,
        bytes: Bytes,
    ) -> Result<Chunk, DropReason> {
        let charge = bytes.len().max(MIN_CHARGE);
        {
            let mut held = self.lock();
            let was = held.sources.get(&source).copied();
            // What the budget owes this source now (nothing if it holds nothing yet).
            let owed_now = was.map_or(0, |was| self.owed(was));
            let was = was.unwrap_or(0);
            let used = self.stats.queued_bytes.load(Relaxed);
            let total = was.checked_add(charge).ok_or(DropReason::SourceBudget)?;
            let after = used.checked_add(charge).ok_or(DropReason::QueueFull)?;
            if total > self.per_source {
                let owed_to_others = held.owed.saturating_sub(owed_now);
                let keep_free = owed_to_others.saturating_add(self.headroom);
                if after.saturating_add(keep_free) > self.limit {
                    return Err(DropReason::SourceBudget);
                }
            } else if after > self.limit {
                return Err(DropReason::QueueFull);
            }
            held.owed = held.owed.saturating_sub(owed_now) + self.owed(total);
            held.sources.insert(source, total);
            self.stats.queued_bytes.store(after, Relaxed);
            backlog::add(charge);
        }
        Ok(Chunk {
            bytes,
            charge,
            source,
            budget: Arc::clone(self),
        })
    }

    /// What a source holding `held` is owed below its share.
    fn owed(&self, held: usize) -> usize {
        self.per_source.saturating_sub(held)
    }

    fn give_back(&self, source: IpAddr, charge: usize) {
        let mut held = self.lock();
        let Some(was) = held.sources.get(&source).copied() else {
            return;
        };
        let now = was.saturating_sub(charge);
        // A source that no longer holds anything is owed nothing: it has no entry.
        let owed_after = if now == 0 { 0 } else { self.owed(now) };
        held.owed = held.owed.saturating_sub(self.owed(was)) + owed_after;
        if now == 0 {
            held.sources.remove(&source);
        } else {
            held.sources.insert(source, now);
        }
        let used = self.stats.queued_bytes.load(Relaxed);
        self.stats
            .queued_bytes
            .store(used.saturating_sub(was - now), Relaxed);
        backlog::remove(was - now);
    }

    fn lock(&self) -> MutexGuard<'_, Held> {
        // Each update is one insert or remove and its sums: recover from a poisoned lock.
        self.held
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    #[cfg(test)]
    pub(super) fn used(&self) -> usize {
        self.stats.queued_bytes.load(Relaxed)
    }

    #[cfg(test)]
    pub(super) fn used_by(&self, source: IpAddr) -> usize {
        self.lock().sources.get(&source).copied().unwrap_or(0)
    }
}

/// What a queued piece costs beyond its bytes (the `Bytes` handle, its allocation's header,
/// a queue slot), rounded up: the least a piece is charged.
pub(super) const MIN_CHARGE: usize = 256;

/// Bytes of a request, charged to the budget (and its source's share) for as long as they
/// are held.
#[derive(Debug)]
pub(super) struct Chunk {
    pub(super) bytes: Bytes,
    charge: usize,
    source: IpAddr,
    budget: Arc<Budget>,
}

impl Drop for Chunk {
    fn drop(&mut self) {
        self.budget.give_back(self.source, self.charge);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_counts_once_and_a_lost_one_counts_as_shutdown() {
        let stats = Arc::new(RelayStats::default());
        let client = SocketAddr::from(([127, 0, 0, 1], 40000));
        let head = Bytes::from_static(b"GET / HTTP/1.1\r\n\r\n");
        Ticket::issue(&stats, None, client, &head).end(Outcome::Answered(200));
        drop(Ticket::issue(&stats, None, client, &head));
        assert_eq!(stats.requests.load(Relaxed), 2);
        assert_eq!(stats.answered(), 1);
        assert_eq!(stats.dropped_count(DropReason::Shutdown), 1);
        assert_eq!(stats.pending(), 0);
        assert_eq!(stats.response_latency.sample().count, 1);
    }

    fn pod(n: u8) -> IpAddr {
        IpAddr::from([198, 18, n, 2])
    }

    #[test]
    fn chunks_give_their_bytes_back() {
        let budget = Budget::new(1000, 1000, Arc::default());
        let a = budget.reserve(pod(1), Bytes::from(vec![0; 600])).unwrap();
        assert_eq!(
            budget.reserve(pod(2), Bytes::from(vec![0; 401])).err(),
            Some(DropReason::QueueFull)
        );
        assert_eq!(budget.used_by(pod(2)), 0, "a refused piece holds nothing");
        let b = budget.reserve(pod(1), Bytes::from(vec![0; 400])).unwrap();
        assert_eq!((budget.used(), budget.used_by(pod(1))), (1000, 1000));
        drop(a);
        drop(b);
        assert_eq!((budget.used(), budget.used_by(pod(1))), (0, 0));
        assert!(
            budget.lock().sources.is_empty(),
            "no entry left for an idle source"
        );
        assert_eq!(budget.lock().owed, 0);
    }

    #[test]
    fn small_pieces_are_charged_their_overhead() {
        let budget = Budget::new(2 * MIN_CHARGE, usize::MAX, Arc::default());
        let a = budget.reserve(pod(1), Bytes::from_static(b"x")).unwrap();
        let b = budget.reserve(pod(1), Bytes::from_static(b"y")).unwrap();
        assert!(budget.reserve(pod(1), Bytes::from_static(b"z")).is_err());
        assert_eq!(budget.used(), 2 * MIN_CHARGE);
        drop((a, b));
        assert_eq!(budget.used(), 0);
    }

    /// Reserves `size`-byte pieces for `source` until one is refused; returns them and why.
    fn fill(budget: &Arc<Budget>, source: IpAddr, size: usize) -> (Vec<Chunk>, DropReason) {
        let mut held = Vec::new();
        loop {
            match budget.reserve(source, Bytes::from(vec![0; size])) {
                Ok(chunk) => held.push(chunk),
                Err(reason) => return (held, reason),
            }
        }
    }

    #[test]
    fn a_lone_source_borrows_all_but_the_headroom() {
        // Share 4,000 of 16,000; headroom 1,000.
        let budget = Budget::new(16_000, 4_000, Arc::default());
        assert_eq!(budget.headroom, 1_000);
        let (held, refused) = fill(&budget, pod(1), 1000);
        assert_eq!((held.len(), refused), (15, DropReason::SourceBudget));
        assert_eq!((budget.used(), budget.used_by(pod(1))), (15_000, 15_000));
        drop(held);
        assert_eq!(budget.used(), 0);
        assert_eq!(budget.lock().owed, 0);
    }

    #[test]
    fn a_borrower_cannot_starve_a_second_source() {
        let budget = Budget::new(16_000, 4_000, Arc::default());
        let (mut greedy, _) = fill(&budget, pod(1), 1000);
        assert_eq!(greedy.len(), 15);
        // A second pod's first piece fits at once, in the headroom; then the budget is full.
        let (mut quiet, refused) = fill(&budget, pod(2), 1000);
        assert_eq!((quiet.len(), refused), (1, DropReason::QueueFull));
        // As the borrower's bytes are answered, it may not take them again: the second pod is
        // owed 3,000 more of its share, and gets them.
        greedy.truncate(12);
        assert_eq!(
            budget.reserve(pod(1), Bytes::from(vec![0; 1000])).err(),
            Some(DropReason::SourceBudget)
        );
        let (more, refused) = fill(&budget, pod(2), 1000);
        assert_eq!((more.len(), refused), (3, DropReason::SourceBudget));
        quiet.extend(more);
        assert_eq!(
            (budget.used_by(pod(1)), budget.used_by(pod(2))),
            (12_000, 4_000)
        );
        // The headroom comes back before the borrower can borrow again: a third pod gets it.
        greedy.truncate(11);
        assert!(budget.reserve(pod(1), Bytes::from(vec![0; 1000])).is_err());
        let third = budget.reserve(pod(3), Bytes::from(vec![0; 1000])).unwrap();
        // At its share, the second pod borrows nothing while the third is owed most of its.
        assert_eq!(
            budget.reserve(pod(2), Bytes::from(vec![0; 1])).err(),
            Some(DropReason::SourceBudget)
        );
        drop((greedy, quiet, third));
        assert_eq!((budget.used(), budget.lock().owed), (0, 0));
        assert!(budget.lock().sources.is_empty());
    }

    #[test]
    fn a_share_of_the_whole_budget_never_borrows() {
        let budget = Budget::new(10_000, 10_000, Arc::default());
        let (held, refused) = fill(&budget, pod(1), 1000);
        assert_eq!((held.len(), refused), (10, DropReason::SourceBudget));
        assert_eq!(
            budget.reserve(pod(2), Bytes::from(vec![0; 1000])).err(),
            Some(DropReason::QueueFull)
        );
        drop(held);
        assert_eq!((budget.used(), budget.lock().owed), (0, 0));
    }

    fn held_by(held: &[(u8, Chunk)], source: u8) -> usize {
        held.iter()
            .filter(|(s, _)| *s == source)
            .map(|(_, c)| c.charge)
            .sum()
    }

    /// Random reserves and gives-back over a few sources, against a model that recomputes
    /// every sum from scratch: the same decisions, the same bookkeeping, the limit never
    /// passed.
    #[test]
    fn decisions_match_a_model_recomputed_from_scratch() {
        const LIMIT: usize = 64_000;
        const SHARE: usize = 16_000;
        let budget = Budget::new(LIMIT, SHARE, Arc::default());
        let headroom = Budget::headroom(LIMIT, SHARE);
        let mut held: Vec<(u8, Chunk)> = Vec::new();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let source = (x % 4) as u8;
            if x.is_multiple_of(3) && !held.is_empty() {
                held.swap_remove((x >> 8) as usize % held.len());
                continue;
            }
            let size = (x >> 16) as usize % 6000;
            let charge = size.max(MIN_CHARGE);
            let by = |n: u8| held_by(&held, n);
            let used: usize = held.iter().map(|(_, c)| c.charge).sum();
            let owed_to_others: usize = (0..4u8)
                .filter(|&n| n != source && by(n) > 0)
                .map(|n| SHARE.saturating_sub(by(n)))
                .sum();
            let want = if by(source) + charge > SHARE {
                (used + charge + owed_to_others + headroom <= LIMIT)
                    .then_some(())
                    .ok_or(DropReason::SourceBudget)
            } else {
                (used + charge <= LIMIT)
                    .then_some(())
                    .ok_or(DropReason::QueueFull)
            };
            let got = budget.reserve(pod(source), Bytes::from(vec![0; size]));
            assert_eq!(got.as_ref().map(|_| ()).map_err(|r| *r), want);
            if let Ok(chunk) = got {
                held.push((source, chunk));
            }
            let used: usize = held.iter().map(|(_, c)| c.charge).sum();
            assert!(used <= LIMIT);
            assert_eq!(budget.used(), used);
            let owed: usize = (0..4u8)
                .map(|n| held_by(&held, n))
                .filter(|&h| h > 0)
                .map(|h| SHARE.saturating_sub(h))
                .sum();
            assert_eq!(budget.lock().owed, owed);
        }
        held.clear();
        assert_eq!((budget.used(), budget.lock().owed), (0, 0));
    }
}
