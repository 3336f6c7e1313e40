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

use super::stats::{DropReason, Outcome, RelayStats, STREAM_TAKEN};
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
/// is slow to take fills only its own share and loses only its own mirroring. The bytes held
/// in all are the stats' `queued_bytes` gauge.
#[derive(Debug)]
pub(super) struct Budget {
    stats: Arc<RelayStats>,
    limit: usize,
    per_source: usize,
    /// Bytes held per source; a source holding nothing has no entry, so spoofed or
    /// short-lived sources leave nothing behind.
    sources: Mutex<HashMap<IpAddr, usize>>,
}

impl Budget {
    pub(super) fn new(limit: usize, per_source: usize, stats: Arc<RelayStats>) -> Arc<Budget> {
        Arc::new(Budget {
            stats,
            limit,
            per_source,
            sources: Mutex::default(),
        })
    }

    /// Takes `bytes` out of `source`'s share and of the global budget if they fit in both;
    /// the returned chunk gives them back. A piece is charged at least [`MIN_CHARGE`]: queued
    /// pieces then cost memory the budget bounds, however small a client makes them.
    pub(super) fn reserve(
        self: &Arc<Self>,
        source: IpAddr,
        bytes: Bytes,
    ) -> Result<Chunk, DropReason> {
        let charge = bytes.len().max(MIN_CHARGE);
        {
            let mut sources = self.lock();
            let held = sources.get(&source).copied().unwrap_or(0);
            match held.checked_add(charge) {
                Some(total) if total <= self.per_source => {
                    sources.insert(source, total);
                }
                _ => return Err(DropReason::SourceBudget),
            }
        }
        let global = self
            .stats
            .queued_bytes
            .fetch_update(Relaxed, Relaxed, |used| {
                let total = used.checked_add(charge)?;
                (total <= self.limit).then_some(total)
            });
        if global.is_err() {
            self.give_back_source(source, charge);
            return Err(DropReason::QueueFull);
        }
        Ok(Chunk {
            bytes,
            charge,
            source,
            budget: Arc::clone(self),
        })
    }

    fn give_back_source(&self, source: IpAddr, charge: usize) {
        let mut sources = self.lock();
        if let Some(held) = sources.get_mut(&source) {
            *held = held.saturating_sub(charge);
            if *held == 0 {
                sources.remove(&source);
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<IpAddr, usize>> {
        // Each update is one insert or remove: recover from a poisoned lock.
        self.sources
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    #[cfg(test)]
    pub(super) fn used(&self) -> usize {
        self.stats.queued_bytes.load(Relaxed)
    }

    #[cfg(test)]
    pub(super) fn used_by(&self, source: IpAddr) -> usize {
        self.lock().get(&source).copied().unwrap_or(0)
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
        self.budget.give_back_source(self.source, self.charge);
        self.budget
            .stats
            .queued_bytes
            .fetch_sub(self.charge, Relaxed);
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
        assert!(budget.lock().is_empty(), "no entry left for an idle source");
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

    #[test]
    fn a_source_over_its_share_is_refused_and_another_is_not() {
        let budget = Budget::new(10_000, 4_000, Arc::default());
        let mut held = Vec::new();
        while let Ok(chunk) = budget.reserve(pod(1), Bytes::from(vec![0; 1000])) {
            held.push(chunk);
        }
        assert_eq!(held.len(), 4);
        assert_eq!(
            budget.reserve(pod(1), Bytes::from(vec![0; 1])).err(),
            Some(DropReason::SourceBudget)
        );
        // The other pod has its whole share although the first is saturated.
        let other: Vec<Chunk> = (0..4)
            .map(|_| budget.reserve(pod(2), Bytes::from(vec![0; 1000])).unwrap())
            .collect();
        assert_eq!(
            (budget.used_by(pod(1)), budget.used_by(pod(2))),
            (4000, 4000)
        );
        // Once the first pod's bytes are answered, it may queue again.
        held.pop();
        assert!(budget.reserve(pod(1), Bytes::from(vec![0; 1000])).is_ok());
        drop((held, other));
    }
}
