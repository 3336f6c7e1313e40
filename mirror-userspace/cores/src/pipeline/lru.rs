//! Which flow was active least recently, in amortised O(1) per segment: a queue of
//! (flow, stamp) with stale entries skipped lazily, instead of a linked list or a scan.

use crate::flow::FlowKey;
use std::collections::VecDeque;

/// A lazily cleaned recency queue. Each touch appends `(flow, stamp)`; the flow remembers its
/// latest stamp, so any older entry for it is stale. Entries of removed flows are stale too.
/// The queue is compacted when stale entries outnumber live flows, which bounds it to about
/// twice the flows it orders (plus `SLACK`): one queue per source address stays small even
/// when many sources hold one flow each.
/// Stale entries tolerated beyond the live count before compacting. Any positive slack keeps
/// compaction amortised O(1) per touch (each one removes at least `live + SLACK` entries).
const SLACK: usize = 8;

#[derive(Debug, Default)]
pub struct Lru {
    queue: VecDeque<(FlowKey, u64)>,
    clock: u64,
}

impl Lru {
    /// Records activity of `flow`; returns the stamp the flow must remember.
    pub fn touch(&mut self, flow: FlowKey) -> u64 {
        self.clock += 1;
        self.queue.push_back((flow, self.clock));
        self.clock
    }

    /// Removes and returns the least recently touched flow for which `current(flow, stamp)`
    /// holds (the entry is its latest). `None` once no live entry is left.
    pub fn pop_oldest(&mut self, current: impl Fn(&FlowKey, u64) -> bool) -> Option<FlowKey> {
        let (flow, _) = self.oldest(current)?;
        self.queue.pop_front();
        Some(flow)
    }

    /// The least recently touched live flow and its stamp, left in place; stale entries in
    /// front of it are dropped on the way.
    pub fn oldest(&mut self, current: impl Fn(&FlowKey, u64) -> bool) -> Option<(FlowKey, u64)> {
        while let Some(&(flow, stamp)) = self.queue.front() {
            if current(&flow, stamp) {
                return Some((flow, stamp));
            }
            self.queue.pop_front();
        }
        None
    }

    /// Drops stale entries once they make up more than half the queue (plus slack).
    pub fn compact(&mut self, live: usize, current: impl Fn(&FlowKey, u64) -> bool) {
        if self.queue.len() > 2 * live + SLACK {
            self.queue.retain(|(flow, stamp)| current(flow, *stamp));
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.queue.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn key(port: u16) -> FlowKey {
        FlowKey {
            src: ([10, 0, 0, 1], port).into(),
            dst: ([10, 0, 0, 2], 80).into(),
        }
    }

    #[test]
    fn oldest_by_last_touch_skipping_stale_entries() {
        let mut lru = Lru::default();
        let mut latest = HashMap::new();
        for p in [1, 2, 3, 1] {
            latest.insert(key(p), lru.touch(key(p)));
        }
        latest.remove(&key(2));
        let current = |k: &FlowKey, s: u64| latest.get(k) == Some(&s);
        assert_eq!(lru.pop_oldest(current), Some(key(3)));
        assert_eq!(lru.pop_oldest(current), Some(key(1)));
        assert_eq!(lru.pop_oldest(current), None);
    }

    #[test]
    fn compaction_bounds_the_queue() {
        let mut lru = Lru::default();
        let mut stamp = 0;
        for _ in 0..10_000 {
            stamp = lru.touch(key(1));
            lru.compact(1, |_, s| s == stamp);
        }
        assert!(lru.len() <= 2 + SLACK + 1, "{}", lru.len());
        assert_eq!(lru.pop_oldest(|_, s| s == stamp), Some(key(1)));
    }
}
