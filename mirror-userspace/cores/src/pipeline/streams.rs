//! Raw TCP mode: the destinations whose connections are relayed as byte streams instead of
//! being framed as HTTP/1.1. A stream connection's bytes reach the relay in order, once v1
//! acknowledged them, as [`Event::StreamData`](super::Event::StreamData). What cannot be
//! relayed faithfully is counted, never guessed: a connection first seen mid-stream (its
//! start is unknown) is not mirrored at all, and one whose capture lost bytes stops being
//! mirrored at the gap.

use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;

use super::Event;
use crate::flow::FlowKey;
use crate::outcome::{Counters, StopReason};
use crate::reassembly::Delivery;

/// One destination (an address or prefix, and a port) relayed in raw TCP mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamTarget {
    pub addr: IpAddr,
    /// Prefix length; the address's own length for a single address.
    pub prefix: u8,
    pub port: u16,
}

impl StreamTarget {
    /// Whether connections to `dst` are relayed as streams.
    pub fn contains(&self, dst: SocketAddr) -> bool {
        dst.port() == self.port
            && match (dst.ip(), self.addr) {
                (IpAddr::V4(d), IpAddr::V4(t)) => {
                    masked(u128::from(u32::from(d)), 32, self.prefix)
                        == masked(u128::from(u32::from(t)), 32, self.prefix)
                }
                (IpAddr::V6(d), IpAddr::V6(t)) => {
                    masked(u128::from(d), 128, self.prefix)
                        == masked(u128::from(t), 128, self.prefix)
                }
                _ => false,
            }
    }
}

/// The top `prefix` bits of a `width`-bit address (a prefix beyond the width keeps all).
fn masked(addr: u128, width: u32, prefix: u8) -> u128 {
    let drop = width.saturating_sub(u32::from(prefix));
    addr.checked_shr(drop)
        .unwrap_or(0)
        .checked_shl(drop)
        .unwrap_or(0)
}

/// Hands one reassembler delivery of a stream flow to the relay. A gap stops the flow: the
/// bytes after it would reach v2 as if they followed the bytes before it. Nothing is handed
/// on once stopped.
pub(super) fn deliver(
    d: Delivery<'_>,
    flow: FlowKey,
    counters: &mut Counters,
    stopped: &mut Option<StopReason>,
    emit: &mut impl FnMut(Event),
) {
    if stopped.is_some() {
        return;
    }
    match d {
        Delivery::Data([]) => {}
        Delivery::Data(bytes) => {
            counters.stream_bytes = counters.stream_bytes.wrapping_add(bytes.len() as u64);
            emit(Event::StreamData {
                flow,
                data: Bytes::copy_from_slice(bytes),
            });
        }
        Delivery::Gap(n) => {
            counters.gaps = counters.gaps.wrapping_add(1);
            counters.gap_bytes = counters.gap_bytes.wrapping_add(u64::from(n));
            StopReason::StreamGap.count(counters);
            *stopped = Some(StopReason::StreamGap);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(addr: &str, prefix: u8, port: u16) -> StreamTarget {
        StreamTarget {
            addr: addr.parse().unwrap(),
            prefix,
            port,
        }
    }

    #[test]
    fn prefixes_and_ports_select_destinations() {
        let net = target("10.96.0.0", 16, 6379);
        assert!(net.contains("10.96.3.4:6379".parse().unwrap()));
        assert!(!net.contains("10.97.3.4:6379".parse().unwrap()));
        assert!(!net.contains("10.96.3.4:6380".parse().unwrap()));
        assert!(!net.contains("[::ffff:10.96.3.4]:6379".parse().unwrap()));
        let one = target("fd00::1", 128, 5432);
        assert!(one.contains("[fd00::1]:5432".parse().unwrap()));
        assert!(!one.contains("[fd00::2]:5432".parse().unwrap()));
        let all = target("0.0.0.0", 0, 9092);
        assert!(all.contains("192.0.2.1:9092".parse().unwrap()));
    }
}
