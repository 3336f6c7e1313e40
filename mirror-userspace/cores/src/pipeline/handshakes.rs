//! Connections v1 answered (its SYN-ACK seen) whose client has not yet acknowledged the
//! SYN-ACK: a small bounded table, so that a SYN flood costs pending entries only, never the
//! flow table, and bounded per source address as well, so that one pod's flood costs only its
//! own share. A blind spoofer never completes a handshake: it does not see v1's ISN.

use super::lru::Lru;
use crate::flow::FlowKey;
use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;

/// What v1's SYN-ACK told us.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SynAck {
    /// The client's first data byte: the SYN-ACK's acknowledgement number.
    pub client_next: u32,
    /// v1's initial sequence number; the client's ACK of it completes the handshake.
    pub server_isn: u32,
    /// v1's receive window as advertised in the SYN-ACK (never scaled, RFC 7323 2.2).
    pub window: u16,
    /// The window scale v1 will apply from now on (0 when the SYN-ACK carried none).
    pub scale: u8,
}

#[derive(Debug)]
struct Pending {
    syn_ack: SynAck,
    seen_ns: u64,
    /// Its latest entry in the global order, and in its source's.
    stamp: u64,
    source_stamp: u64,
}

/// One source address's pending handshakes, oldest first.
#[derive(Debug, Default)]
struct Source {
    count: usize,
    order: Lru,
}

/// How many pending handshakes one insertion pushed out, and why.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Evicted {
    /// Because the source had its share: its own oldest.
    pub source: u64,
    /// Because the table was full: the oldest of the source holding most.
    pub table_full: u64,
}

/// Pending handshakes, bounded globally and per source address (the client, a pod): a source
/// over its share loses its own oldest; a full table takes the oldest of the source holding
/// most, so one pod's SYN flood never pushes out another pod's handshakes. Expiry goes by age,
/// oldest first, across sources.
#[derive(Debug, Default)]
pub struct Handshakes {
    map: HashMap<FlowKey, Pending>,
    /// Oldest first; an entry is live while its stamp is its handshake's.
    order: Lru,
    sources: HashMap<IpAddr, Source>,
    /// Sources by how many handshakes they have pending, to find the largest in O(log n).
    by_count: BTreeSet<(usize, IpAddr)>,
}

impl Handshakes {
    /// Records a SYN-ACK, replacing any earlier one for `key`, keeping at most `cap` pending
    /// in all and `per_source` for `key`'s source.
    pub fn insert(
        &mut self,
        now_ns: u64,
        key: FlowKey,
        syn_ack: SynAck,
        cap: usize,
        per_source: usize,
    ) -> Evicted {
        let mut evicted = Evicted::default();
        let ip = key.src.ip();
        if !self.map.contains_key(&key) {
            while self.count(ip) >= per_source.max(1) && self.pop_oldest_of(ip).is_some() {
                evicted.source += 1;
            }
            while self.map.len() >= cap.max(1) {
                let Some(largest) = self.by_count.last().map(|&(_, ip)| ip) else {
                    break;
                };
                if self.pop_oldest_of(largest).is_none() {
                    break;
                }
                evicted.table_full += 1;
            }
        }
        let stamp = self.order.touch(key);
        let source = self.sources.entry(ip).or_default();
        let source_stamp = source.order.touch(key);
        let pending = Pending {
            syn_ack,
            seen_ns: now_ns,
            stamp,
            source_stamp,
        };
        if self.map.insert(key, pending).is_none() {
            self.by_count.remove(&(source.count, ip));
            source.count += 1;
            self.by_count.insert((source.count, ip));
        }
        let map = &self.map;
        self.order.compact(map.len(), |k, s| is_current(map, k, s));
        source
            .order
            .compact(source.count, |k, s| is_source_current(map, k, s));
        evicted
    }

    pub fn get(&self, key: &FlowKey) -> Option<&SynAck> {
        self.map.get(key).map(|p| &p.syn_ack)
    }

    pub fn take(&mut self, key: &FlowKey) -> Option<SynAck> {
        let pending = self.map.remove(key)?;
        self.forget_one(key.src.ip());
        Some(pending.syn_ack)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Pending handshakes of source `ip`.
    pub fn count(&self, ip: IpAddr) -> usize {
        self.sources.get(&ip).map_or(0, |s| s.count)
    }

    /// Forgets handshakes pending for `timeout_ns` or longer; returns how many.
    pub fn expire(&mut self, now_ns: u64, timeout_ns: u64) -> u64 {
        let mut n = 0;
        loop {
            let map = &self.map;
            let Some((key, _)) = self.order.oldest(|k, s| is_current(map, k, s)) else {
                break;
            };
            if self
                .map
                .get(&key)
                .is_some_and(|p| now_ns.saturating_sub(p.seen_ns) < timeout_ns)
            {
                break;
            }
            self.take(&key);
            n += 1;
        }
        n
    }

    /// Forgets the oldest pending handshake of source `ip`.
    fn pop_oldest_of(&mut self, ip: IpAddr) -> Option<FlowKey> {
        let map = &self.map;
        let key = self
            .sources
            .get_mut(&ip)?
            .order
            .pop_oldest(|k, s| is_source_current(map, k, s))?;
        self.take(&key);
        Some(key)
    }

    /// One handshake of `ip` is gone from the map: update its source's count.
    fn forget_one(&mut self, ip: IpAddr) {
        let Some(source) = self.sources.get_mut(&ip) else {
            return;
        };
        self.by_count.remove(&(source.count, ip));
        source.count = source.count.saturating_sub(1);
        if source.count == 0 {
            self.sources.remove(&ip);
        } else {
            self.by_count.insert((source.count, ip));
        }
    }
}

/// Whether `(key, stamp)` is the latest global entry of a handshake still pending.
fn is_current(map: &HashMap<FlowKey, Pending>, key: &FlowKey, stamp: u64) -> bool {
    map.get(key).is_some_and(|p| p.stamp == stamp)
}

/// Whether `(key, stamp)` is the latest entry in its source's order of a handshake still pending.
fn is_source_current(map: &HashMap<FlowKey, Pending>, key: &FlowKey, stamp: u64) -> bool {
    map.get(key).is_some_and(|p| p.source_stamp == stamp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key_of(source: u8, port: u16) -> FlowKey {
        FlowKey {
            src: ([10, 0, 0, source], port).into(),
            dst: ([10, 0, 0, 200], 80).into(),
        }
    }

    fn key(port: u16) -> FlowKey {
        key_of(1, port)
    }

    const SA: SynAck = SynAck {
        client_next: 1,
        server_isn: 100,
        window: 10,
        scale: 7,
    };

    fn full(n: u64) -> Evicted {
        Evicted {
            source: 0,
            table_full: n,
        }
    }

    #[test]
    fn bounded_oldest_first_and_expiring() {
        let mut h = Handshakes::default();
        assert_eq!(h.insert(0, key(1), SA, 2, 2), full(0));
        assert_eq!(h.insert(1, key(2), SA, 2, 2), full(0));
        assert_eq!(h.insert(2, key(3), SA, 2, 4), full(1));
        assert!(h.get(&key(1)).is_none());
        assert_eq!(
            h.get(&key(3)).map(|p| (p.server_isn, p.scale)),
            Some((100, 7))
        );
        assert_eq!(h.expire(11, 10), 1);
        assert_eq!(h.len(), 1);
        assert_eq!(h.take(&key(3)).map(|p| p.client_next), Some(1));
        assert_eq!(h.expire(100, 10), 0);
        assert_eq!(h.count(key(3).src.ip()), 0);
    }

    #[test]
    fn a_flooding_source_loses_only_its_own_handshakes() {
        let mut h = Handshakes::default();
        for port in 0..5 {
            h.insert(0, key_of(2, port), SA, 100, 10);
        }
        let mut evicted = Evicted::default();
        for port in 0..1000 {
            let e = h.insert(1, key_of(1, port), SA, 100, 10);
            evicted.source += e.source;
            evicted.table_full += e.table_full;
        }
        assert_eq!(
            evicted,
            Evicted {
                source: 990,
                table_full: 0
            }
        );
        assert_eq!(h.count(key_of(1, 0).src.ip()), 10);
        assert!((990..1000).all(|port| h.get(&key_of(1, port)).is_some()));
        assert!((0..5).all(|port| h.get(&key_of(2, port)).is_some()));
    }

    #[test]
    fn a_full_table_takes_from_the_source_holding_most() {
        let mut h = Handshakes::default();
        for port in 0..6 {
            h.insert(0, key_of(1, port), SA, 10, 10);
        }
        for port in 0..4 {
            h.insert(1, key_of(2, port), SA, 10, 10);
        }
        // Source 3 is new; source 1 holds most, so its oldest go.
        assert_eq!(h.insert(2, key_of(3, 0), SA, 10, 10), full(1));
        assert_eq!(h.insert(3, key_of(3, 1), SA, 10, 10), full(1));
        assert!(h.get(&key_of(1, 0)).is_none() && h.get(&key_of(1, 1)).is_none());
        assert_eq!(h.count(key_of(2, 0).src.ip()), 4);
        // A SYN-ACK retransmitted for a pending handshake replaces it and evicts nothing.
        assert_eq!(h.insert(4, key_of(3, 1), SA, 10, 10), full(0));
        assert_eq!(h.len(), 10);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Insert { source: u8, port: u16 },
        Take { source: u8, port: u16 },
        Expire,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (1u8..5, 0u16..40).prop_map(|(source, port)| Op::Insert { source, port }),
            2 => (1u8..5, 0u16..40).prop_map(|(source, port)| Op::Take { source, port }),
            1 => Just(Op::Expire),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Against a reference (a list in insertion order): the caps hold, per-source counts
        /// match, a source under its share loses nothing to table pressure unless it held the
        /// most, and expiry removes exactly the old ones.
        #[test]
        fn shares_hold_against_a_reference(ops in proptest::collection::vec(op(), 1..400),
                                           cap in 1usize..30, per_source in 1usize..12) {
            let mut h = Handshakes::default();
            // (key, seen_ns), oldest first.
            let mut model: Vec<(FlowKey, u64)> = Vec::new();
            for (now, op) in (0u64..).zip(ops) {
                match op {
                    Op::Insert { source, port } => {
                        let k = key_of(source, port);
                        let ip = k.src.ip();
                        let before: Vec<(FlowKey, u64)> = model.clone();
                        let evicted = h.insert(now, k, SA, cap, per_source);
                        let mine = |m: &[(FlowKey, u64)]| m.iter().filter(|(x, _)| x.src.ip() == ip).count();
                        if let Some(i) = model.iter().position(|(x, _)| *x == k) {
                            model.remove(i);
                            prop_assert_eq!(evicted, Evicted::default());
                        } else {
                            while mine(&model) >= per_source {
                                let i = model.iter().position(|(x, _)| x.src.ip() == ip).unwrap();
                                model.remove(i);
                            }
                            while model.len() >= cap {
                                let mut counts: Vec<(usize, IpAddr)> = Vec::new();
                                for (x, _) in &model {
                                    let a = x.src.ip();
                                    if !counts.iter().any(|&(_, b)| b == a) {
                                        counts.push((model.iter().filter(|(y, _)| y.src.ip() == a).count(), a));
                                    }
                                }
                                let largest = counts.into_iter().max().unwrap().1;
                                let i = model.iter().position(|(x, _)| x.src.ip() == largest).unwrap();
                                model.remove(i);
                            }
                            let lost = before.len() - model.len();
                            prop_assert_eq!(evicted.source + evicted.table_full, lost as u64);
                        }
                        model.push((k, now));
                    }
                    Op::Take { source, port } => {
                        let k = key_of(source, port);
                        let found = model.iter().position(|(x, _)| *x == k);
                        prop_assert_eq!(h.take(&k).is_some(), found.is_some());
                        if let Some(i) = found {
                            model.remove(i);
                        }
                    }
                    Op::Expire => {
                        let timeout = 20;
                        let old = model.iter().filter(|(_, seen)| now.saturating_sub(*seen) >= timeout).count();
                        prop_assert_eq!(h.expire(now, timeout), old as u64);
                        model.retain(|(_, seen)| now.saturating_sub(*seen) < timeout);
                    }
                }
                prop_assert_eq!(h.len(), model.len());
                prop_assert!(h.len() <= cap);
                for source in 1u8..5 {
                    let ip = key_of(source, 0).src.ip();
                    let n = model.iter().filter(|(x, _)| x.src.ip() == ip).count();
                    prop_assert_eq!(h.count(ip), n);
                    prop_assert!(n <= per_source);
                }
                for (k, _) in &model {
                    prop_assert!(h.get(k).is_some());
                }
            }
        }
    }
}
