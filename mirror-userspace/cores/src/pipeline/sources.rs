//! Fair shares of the flow table per source address (the pod): each source's flow count,
//! buffered bytes and recency order, so that a source over its share loses only its own flows,
//! and global pressure takes from the largest consumer, never from a smaller one.

use super::lru::Lru;
use crate::flow::FlowKey;
use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;

/// Sources whose eviction tallies are remembered after their flows are gone: the offenders
/// worth printing, bounded so that spoofed sources cannot grow the table.
const MAX_OFFENDERS: usize = 256;

/// Most tallies [`Sources::tallies`] returns.
pub const MAX_TALLIES: usize = 32;

/// What one source holds and what it lost, for the status line and logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceTally {
    pub addr: IpAddr,
    /// Flows tracked now (tombstones included).
    pub flows: usize,
    /// Bytes its flows buffer now.
    pub buffered_bytes: usize,
    /// Its flows evicted so far (over its own share, or as the largest consumer under global
    /// pressure).
    pub flows_evicted: u64,
}

#[derive(Debug, Default)]
struct Source {
    flows: usize,
    bytes: usize,
    lru: Lru,
}

/// Per-source accounting. Sources are indexed by flows and by bytes so that the largest is
/// found in O(log sources); a source with no flow left is forgotten (its eviction tally
/// stays in a bounded map).
#[derive(Debug, Default)]
pub struct Sources {
    map: HashMap<IpAddr, Source>,
    by_flows: BTreeSet<(usize, IpAddr)>,
    by_bytes: BTreeSet<(usize, IpAddr)>,
    evicted: HashMap<IpAddr, u64>,
}

impl Sources {
    pub fn flows(&self, ip: IpAddr) -> usize {
        self.map.get(&ip).map_or(0, |s| s.flows)
    }

    pub fn bytes(&self, ip: IpAddr) -> usize {
        self.map.get(&ip).map_or(0, |s| s.bytes)
    }

    pub fn add_flow(&mut self, ip: IpAddr) {
        let s = self.map.entry(ip).or_default();
        self.by_flows.remove(&(s.flows, ip));
        s.flows += 1;
        self.by_flows.insert((s.flows, ip));
        if s.bytes == 0 {
            self.by_bytes.insert((0, ip));
        }
    }

    pub fn remove_flow(&mut self, ip: IpAddr) {
        let Some(s) = self.map.get_mut(&ip) else {
            return;
        };
        self.by_flows.remove(&(s.flows, ip));
        s.flows = s.flows.saturating_sub(1);
        if s.flows == 0 {
            self.by_bytes.remove(&(s.bytes, ip));
            self.map.remove(&ip);
        } else {
            self.by_flows.insert((s.flows, ip));
        }
    }

    /// One of the source's flows went from `old` to `new` buffered bytes.
    pub fn change_bytes(&mut self, ip: IpAddr, old: usize, new: usize) {
        if old == new {
            return;
        }
        let Some(s) = self.map.get_mut(&ip) else {
            return;
        };
        self.by_bytes.remove(&(s.bytes, ip));
        s.bytes = s.bytes - old.min(s.bytes) + new;
        self.by_bytes.insert((s.bytes, ip));
    }

    /// Records activity of `key`; returns the stamp the flow must remember.
    pub fn touch(&mut self, key: FlowKey) -> u64 {
        self.map.entry(key.src.ip()).or_default().lru.touch(key)
    }

    /// The least recently active live flow of `ip` (see [`Lru::pop_oldest`]).
    pub fn pop_oldest(
        &mut self,
        ip: IpAddr,
        current: impl Fn(&FlowKey, u64) -> bool,
    ) -> Option<FlowKey> {
        self.map.get_mut(&ip)?.lru.pop_oldest(current)
    }

    pub fn compact(&mut self, ip: IpAddr, current: impl Fn(&FlowKey, u64) -> bool) {
        if let Some(s) = self.map.get_mut(&ip) {
            s.lru.compact(s.flows, current);
        }
    }

    /// The source with the most flows.
    pub fn largest_by_flows(&self) -> Option<IpAddr> {
        self.by_flows.last().map(|&(_, ip)| ip)
    }

    /// The source with the most buffered bytes.
    pub fn largest_by_bytes(&self) -> Option<IpAddr> {
        self.by_bytes.last().map(|&(_, ip)| ip)
    }

    pub fn record_eviction(&mut self, ip: IpAddr) {
        if !self.evicted.contains_key(&ip) && self.evicted.len() >= MAX_OFFENDERS {
            let least = self
                .evicted
                .iter()
                .min_by_key(|&(_, &n)| n)
                .map(|(&a, _)| a);
            if let Some(a) = least {
                self.evicted.remove(&a);
            }
        }
        *self.evicted.entry(ip).or_default() += 1;
    }

    /// Up to `n` (at most [`MAX_TALLIES`]) sources worth showing: the largest by flows, by
    /// bytes and by evictions, most evicted first, then by bytes.
    pub fn tallies(&self, n: usize) -> Vec<SourceTally> {
        let n = n.min(MAX_TALLIES);
        let mut evicted: Vec<_> = self.evicted.iter().map(|(&a, &c)| (c, a)).collect();
        evicted.sort_unstable_by(|a, b| b.cmp(a));
        let mut addrs: Vec<IpAddr> = evicted.iter().take(n).map(|&(_, a)| a).collect();
        addrs.extend(self.by_bytes.iter().rev().take(n).map(|&(_, a)| a));
        addrs.extend(self.by_flows.iter().rev().take(n).map(|&(_, a)| a));
        addrs.sort_unstable();
        addrs.dedup();
        let mut out: Vec<SourceTally> = addrs
            .into_iter()
            .map(|addr| SourceTally {
                addr,
                flows: self.flows(addr),
                buffered_bytes: self.bytes(addr),
                flows_evicted: self.evicted.get(&addr).copied().unwrap_or(0),
            })
            .collect();
        out.sort_unstable_by(|a, b| {
            (b.flows_evicted, b.buffered_bytes, b.flows).cmp(&(
                a.flows_evicted,
                a.buffered_bytes,
                a.flows,
            ))
        });
        out.truncate(n);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    #[test]
    fn largest_follows_counts_and_forgets_empty_sources() {
        let mut s = Sources::default();
        s.add_flow(ip(1));
        s.add_flow(ip(2));
        s.add_flow(ip(2));
        s.change_bytes(ip(1), 0, 500);
        assert_eq!(s.largest_by_flows(), Some(ip(2)));
        assert_eq!(s.largest_by_bytes(), Some(ip(1)));
        s.change_bytes(ip(1), 500, 0);
        s.remove_flow(ip(1));
        assert_eq!(s.flows(ip(1)), 0);
        assert_eq!(s.largest_by_bytes(), Some(ip(2)));
        s.remove_flow(ip(2));
        s.remove_flow(ip(2));
        assert_eq!(s.largest_by_flows(), None);
        assert_eq!(s.largest_by_bytes(), None);
    }

    #[test]
    fn offender_tallies_are_bounded() {
        let mut s = Sources::default();
        for i in 0..2000u32 {
            s.record_eviction(IpAddr::from(i.to_be_bytes()));
        }
        s.record_eviction(ip(9));
        s.record_eviction(ip(9));
        assert!(s.evicted.len() <= MAX_OFFENDERS);
        let top = s.tallies(100);
        assert_eq!(top.len(), MAX_TALLIES);
        assert_eq!((top[0].addr, top[0].flows_evicted), (ip(9), 2));
    }
}
