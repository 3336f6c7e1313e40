//! Which side of its connection a packet of a saved capture is: the client's (whole, fed to
//! the pipeline as client data) or v1's (its header is v1's acknowledgement).
//!
//! A live agent knows from the hook and the record's flag; a pcap file only has addresses. The
//! `--target`s say which endpoints are v1's; without them, v1's endpoints are learnt from the
//! handshakes in the file (the destination of a client's SYN, the source of a SYN-ACK), so a
//! connection whose handshake precedes the capture is not attributed until another
//! connection to the same endpoint shows its handshake.

use std::{collections::HashSet, net::SocketAddr};

use mirror_cores::flow::Segment;

use crate::capture::target::Target;

/// Most v1 endpoints learnt from handshakes; beyond, new ones are not learnt (and counted).
pub const MAX_LEARNT_ENDPOINTS: usize = 65_536;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// Client to v1: the request bytes.
    Client,
    /// v1 to client: its header only matters.
    Server,
    /// Neither endpoint is known to be v1's.
    Unknown,
}

#[derive(Debug)]
pub struct Sides {
    targets: Vec<Target>,
    learnt: HashSet<SocketAddr>,
    /// Endpoints not learnt because the set was full.
    pub not_learnt: u64,
}

impl Sides {
    /// With `targets`, only they are v1's; with none, v1's endpoints are learnt.
    pub fn new(targets: Vec<Target>) -> Self {
        Sides {
            targets,
            learnt: HashSet::new(),
            not_learnt: 0,
        }
    }

    pub fn side(&mut self, segment: &Segment<'_>) -> Side {
        let (src, dst) = (segment.flow.src, segment.flow.dst);
        if !self.targets.is_empty() {
            let is_target = |addr: SocketAddr| {
                self.targets
                    .iter()
                    .any(|target| target.contains(addr.ip(), addr.port()))
            };
            return if is_target(dst) {
                Side::Client
            } else if is_target(src) {
                Side::Server
            } else {
                Side::Unknown
            };
        }
        let flags = segment.flags;
        if flags.syn() && !flags.rst() {
            let server = if flags.ack() { src } else { dst };
            if !self.learnt.contains(&server) {
                if self.learnt.len() < MAX_LEARNT_ENDPOINTS {
                    self.learnt.insert(server);
                } else {
                    self.not_learnt += 1;
                }
            }
        }
        if self.learnt.contains(&dst) {
            Side::Client
        } else if self.learnt.contains(&src) {
            Side::Server
        } else {
            Side::Unknown
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mirror_cores::flow::{FlowKey, TcpFlags};

    fn segment(src: &str, dst: &str, flags: u8) -> Segment<'static> {
        Segment {
            flow: FlowKey {
                src: src.parse().unwrap(),
                dst: dst.parse().unwrap(),
            },
            seq: 1,
            ack: 1,
            window: 100,
            window_scale: None,
            flags: TcpFlags(flags),
            payload: b"",
        }
    }

    const SYN: u8 = 0x02;
    const ACK: u8 = 0x10;

    #[test]
    fn targets_say_which_side_is_v1() {
        let mut sides = Sides::new(vec!["10.0.0.0/24:80".parse().unwrap()]);
        assert_eq!(
            sides.side(&segment("10.1.0.5:4000", "10.0.0.7:80", ACK)),
            Side::Client
        );
        assert_eq!(
            sides.side(&segment("10.0.0.7:80", "10.1.0.5:4000", ACK)),
            Side::Server
        );
        assert_eq!(
            sides.side(&segment("10.1.0.5:4000", "10.0.0.7:81", ACK)),
            Side::Unknown
        );
    }

    #[test]
    fn without_targets_handshakes_teach_v1s_endpoints() {
        let mut sides = Sides::new(Vec::new());
        // Mid-stream, nothing is known yet.
        assert_eq!(
            sides.side(&segment("10.1.0.5:4000", "10.0.0.7:80", ACK)),
            Side::Unknown
        );
        assert_eq!(
            sides.side(&segment("10.1.0.5:4001", "10.0.0.7:80", SYN)),
            Side::Client
        );
        assert_eq!(
            sides.side(&segment("10.0.0.7:80", "10.1.0.5:4001", SYN | ACK)),
            Side::Server
        );
        // Now every connection to that endpoint is attributed, the earlier one included.
        assert_eq!(
            sides.side(&segment("10.1.0.5:4000", "10.0.0.7:80", ACK)),
            Side::Client
        );
        assert_eq!(
            sides.side(&segment("10.0.0.7:80", "10.1.0.5:4000", ACK)),
            Side::Server
        );
        // A SYN-ACK alone (the client's SYN missed) teaches its source too.
        assert_eq!(
            sides.side(&segment("10.0.0.8:8080", "10.1.0.5:4002", SYN | ACK)),
            Side::Server
        );
        assert_eq!(sides.not_learnt, 0);
    }
}
