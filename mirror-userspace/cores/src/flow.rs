//! What a captured TCP segment looks like once decoded: the vocabulary shared by the
//! packet decoder, the reassembler and the relay.

use std::net::SocketAddr;

/// One direction of a TCP connection: client to server for the packets we capture.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    pub src: SocketAddr,
    pub dst: SocketAddr,
}

impl std::fmt::Display for FlowKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} > {}", self.src, self.dst)
    }
}

/// TCP header flags, as on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
pub struct TcpFlags(pub u8);

impl TcpFlags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;

    pub fn fin(self) -> bool {
        self.0 & Self::FIN != 0
    }
    pub fn syn(self) -> bool {
        self.0 & Self::SYN != 0
    }
    pub fn rst(self) -> bool {
        self.0 & Self::RST != 0
    }
    pub fn ack(self) -> bool {
        self.0 & Self::ACK != 0
    }
}

impl std::fmt::Display for TcpFlags {
    /// tcpdump's notation: `S`, `F`, `R`, `P`, and `.` for ACK.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (bit, c) in [
            (Self::SYN, 'S'),
            (Self::FIN, 'F'),
            (Self::RST, 'R'),
            (Self::PSH, 'P'),
            (Self::ACK, '.'),
        ] {
            if self.0 & bit != 0 {
                write!(f, "{c}")?;
            }
        }
        Ok(())
    }
}

/// A decoded TCP segment, borrowing its payload from the capture record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment<'a> {
    pub flow: FlowKey,
    /// Sequence number of the first payload byte (of the SYN itself for a SYN).
    pub seq: u32,
    /// Acknowledgement number (meaningful when `flags.ack()`): the next byte the sender of
    /// this segment expects from its peer.
    pub ack: u32,
    /// The receive window the sender advertises, unscaled, as on the wire.
    pub window: u16,
    /// The window scale option (RFC 7323), present only on SYN and SYN-ACK segments.
    pub window_scale: Option<u8>,
    pub flags: TcpFlags,
    pub payload: &'a [u8],
}

impl<'a> Segment<'a> {
    /// A segment with no acknowledgement, window or options: what tests and benchmarks of the
    /// client direction need.
    pub fn new(flow: FlowKey, seq: u32, flags: TcpFlags, payload: &'a [u8]) -> Self {
        Segment {
            flow,
            seq,
            ack: 0,
            window: 0,
            window_scale: None,
            flags,
            payload,
        }
    }
}
