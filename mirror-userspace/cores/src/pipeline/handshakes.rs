//! Connections v1 answered (its SYN-ACK seen) whose client has not yet acknowledged the
//! SYN-ACK: a small bounded table, so that a SYN flood costs pending entries only, never the
//! flow table. A blind spoofer never completes a handshake: it does not see v1's ISN.

use super::lru::Lru;
use crate::flow::FlowKey;
use std::collections::HashMap;

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
    stamp: u64,
}

/// Pending handshakes, oldest first out when full or expired.
#[derive(Debug, Default)]
pub struct Handshakes {
    map: HashMap<FlowKey, Pending>,
    /// Oldest first; an entry is live while its stamp is its handshake's.
    order: Lru,
}

impl Handshakes {
    /// Records a SYN-ACK, replacing any earlier one for `key`. Returns how many pending
    /// handshakes were dropped to stay within `cap`.
    pub fn insert(&mut self, now_ns: u64, key: FlowKey, syn_ack: SynAck, cap: usize) -> u64 {
        let mut dropped = 0;
        while !self.map.contains_key(&key) && self.map.len() >= cap {
            if self.pop_front().is_none() {
                break;
            }
            dropped += 1;
        }
        let stamp = self.order.touch(key);
        let pending = Pending {
            syn_ack,
            seen_ns: now_ns,
            stamp,
        };
        self.map.insert(key, pending);
        let map = &self.map;
        self.order.compact(map.len(), |k, s| is_current(map, k, s));
        dropped
    }

    pub fn get(&self, key: &FlowKey) -> Option<&SynAck> {
        self.map.get(key).map(|p| &p.syn_ack)
    }

    pub fn take(&mut self, key: &FlowKey) -> Option<SynAck> {
        self.map.remove(key).map(|p| p.syn_ack)
    }

    pub fn len(&self) -> usize {
        self.map.len()
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
            self.pop_front();
            n += 1;
        }
        n
    }

    fn pop_front(&mut self) -> Option<FlowKey> {
        let map = &self.map;
        let key = self.order.pop_oldest(|k, s| is_current(map, k, s))?;
        self.map.remove(&key);
        Some(key)
    }
}

/// Whether `(key, stamp)` is the latest entry of a handshake still pending.
fn is_current(map: &HashMap<FlowKey, Pending>, key: &FlowKey, stamp: u64) -> bool {
    map.get(key).is_some_and(|p| p.stamp == stamp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(port: u16) -> FlowKey {
        FlowKey {
            src: ([10, 0, 0, 1], port).into(),
            dst: ([10, 0, 0, 2], 80).into(),
        }
    }

    #[test]
    fn bounded_oldest_first_and_expiring() {
        let mut h = Handshakes::default();
        let sa = SynAck {
            client_next: 1,
            server_isn: 100,
            window: 10,
            scale: 7,
        };
        assert_eq!(h.insert(0, key(1), sa, 2), 0);
        assert_eq!(h.insert(1, key(2), sa, 2), 0);
        assert_eq!(h.insert(2, key(3), sa, 2), 1);
        assert!(h.get(&key(1)).is_none());
        assert_eq!(
            h.get(&key(3)).map(|p| (p.server_isn, p.scale)),
            Some((100, 7))
        );
        assert_eq!(h.expire(11, 10), 1);
        assert_eq!(h.len(), 1);
        assert_eq!(h.take(&key(3)).map(|p| p.client_next), Some(1));
        assert_eq!(h.expire(100, 10), 0);
    }
}
