//! HTTP/2 frame headers (RFC 9113 section 4.1): the 9 bytes in front of every frame, and the
//! frame types and flags the client's direction carries.

/// The client connection preface (RFC 9113 section 3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Bytes of a frame header.
pub const HEADER_LEN: usize = 9;

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const PRIORITY: u8 = 0x2;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PUSH_PROMISE: u8 = 0x5;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const CONTINUATION: u8 = 0x9;

pub const END_STREAM: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
pub const PADDED: u8 = 0x8;
pub const PRIORITY_FLAG: u8 = 0x20;

/// One frame's header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// Payload bytes that follow the header.
    pub len: u32,
    pub kind: u8,
    pub flags: u8,
    /// The reserved bit is cleared.
    pub stream: u32,
}

impl FrameHeader {
    /// Reads a header from exactly [`HEADER_LEN`] bytes.
    pub fn parse(b: &[u8; HEADER_LEN]) -> FrameHeader {
        FrameHeader {
            len: u32::from_be_bytes([0, b[0], b[1], b[2]]),
            kind: b[3],
            flags: b[4],
            stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
        }
    }

    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    /// Writes this header (tests build client streams with it).
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let len = self.len.to_be_bytes();
        let stream = (self.stream & 0x7fff_ffff).to_be_bytes();
        [
            len[1], len[2], len[3], self.kind, self.flags, stream[0], stream[1], stream[2],
            stream[3],
        ]
    }
}

/// The part of a HEADERS or DATA payload that is not padding or priority: `None` if the
/// padding or priority fields do not fit (a protocol error).
pub fn content(header: &FrameHeader, payload: &[u8]) -> Option<std::ops::Range<usize>> {
    let mut start = 0usize;
    let mut pad = 0usize;
    if header.has(PADDED) {
        pad = usize::from(*payload.first()?);
        start = 1;
    }
    if header.kind == HEADERS && header.has(PRIORITY_FLAG) {
        start += 5;
    }
    let end = payload.len().checked_sub(pad)?;
    (start <= end).then_some(start..end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_and_the_reserved_bit_is_ignored() {
        let h = FrameHeader {
            len: 0x01_02_03,
            kind: HEADERS,
            flags: END_HEADERS | END_STREAM,
            stream: 7,
        };
        let mut wire = h.encode();
        assert_eq!(FrameHeader::parse(&wire), h);
        wire[5] |= 0x80;
        assert_eq!(FrameHeader::parse(&wire).stream, 7);
    }

    #[test]
    fn padding_and_priority_are_cut_off_or_refused() {
        let padded = FrameHeader {
            len: 0,
            kind: DATA,
            flags: PADDED,
            stream: 1,
        };
        assert_eq!(content(&padded, &[2, b'a', b'b', 0, 0]), Some(1..3));
        assert_eq!(content(&padded, &[5, b'a']), None);
        assert_eq!(content(&padded, &[]), None);
        let prio = FrameHeader {
            kind: HEADERS,
            flags: PRIORITY_FLAG,
            ..padded
        };
        assert_eq!(content(&prio, &[0, 0, 0, 3, 16, b'x']), Some(5..6));
        assert_eq!(content(&prio, &[0, 0]), None);
    }
}
