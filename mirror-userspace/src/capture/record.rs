//! Decodes one ring buffer record: a `RecordHeader` followed by the captured packet bytes.
//!
//! The bytes come from the kernel, but they are still checked: a malformed record is an
//! error the reader counts, never a panic or an out-of-bounds read.

use mirror_common::{RecordHeader, RECORD_HEADER_LEN, RECORD_REVERSE, RECORD_TRUNCATED};

/// A record borrowed from the ring buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    pub header: RecordHeader,
    /// The captured packet bytes, from the Ethernet header on: exactly `header.cap_len`.
    pub packet: &'a [u8],
}

impl Record<'_> {
    pub fn truncated(&self) -> bool {
        self.header.flags & RECORD_TRUNCATED != 0
    }

    /// A header-only record of a packet from a target (v1's side); see `RECORD_REVERSE`.
    pub fn reverse(&self) -> bool {
        self.header.flags & RECORD_REVERSE != 0
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("record of {len} bytes is shorter than its {RECORD_HEADER_LEN}-byte header")]
    ShortHeader { len: usize },
    #[error("record claims {cap_len} captured bytes but carries {available}")]
    ShortData { cap_len: u32, available: usize },
    #[error("record claims {cap_len} captured bytes of a {orig_len}-byte packet")]
    CapturedMoreThanSent { cap_len: u32, orig_len: u32 },
}

/// Splits a ring buffer item into its header and packet bytes.
pub fn decode(item: &[u8]) -> Result<Record<'_>, RecordError> {
    let (header, rest) = item
        .split_first_chunk::<RECORD_HEADER_LEN>()
        .ok_or(RecordError::ShortHeader { len: item.len() })?;
    let u32_at = |offset: usize| {
        u32::from_ne_bytes([
            header[offset],
            header[offset + 1],
            header[offset + 2],
            header[offset + 3],
        ])
    };
    let mut timestamp = [0u8; 8];
    timestamp.copy_from_slice(&header[..8]);
    let header = RecordHeader {
        timestamp_ns: u64::from_ne_bytes(timestamp),
        ifindex: u32_at(8),
        direction: u32_at(12),
        orig_len: u32_at(16),
        cap_len: u32_at(20),
        flags: u32_at(24),
        reserved: u32_at(28),
    };
    if header.cap_len > header.orig_len {
        return Err(RecordError::CapturedMoreThanSent {
            cap_len: header.cap_len,
            orig_len: header.orig_len,
        });
    }
    let packet = usize::try_from(header.cap_len)
        .ok()
        .and_then(|len| rest.get(..len))
        .ok_or(RecordError::ShortData {
            cap_len: header.cap_len,
            available: rest.len(),
        })?;
    Ok(Record { header, packet })
}

/// Appends a record as the kernel writes it (header, then the packet bytes), for captures
/// read back from a file and handed on as ring records.
pub fn encode(header: &RecordHeader, packet: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&header.timestamp_ns.to_ne_bytes());
    for field in [
        header.ifindex,
        header.direction,
        header.orig_len,
        header.cap_len,
        header.flags,
        header.reserved,
    ] {
        out.extend_from_slice(&field.to_ne_bytes());
    }
    out.extend_from_slice(packet);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(header: RecordHeader, data: &[u8], slack: usize) -> Vec<u8> {
        let mut out = Vec::new();
        super::encode(&header, data, &mut out);
        out.resize(out.len() + slack, 0xAA);
        out
    }

    #[test]
    fn decodes_header_and_exact_packet_bytes() {
        let header = RecordHeader {
            timestamp_ns: 7,
            ifindex: 3,
            direction: 1,
            orig_len: 5,
            cap_len: 5,
            flags: 0,
            reserved: 0,
        };
        // Size classes leave slack after the packet; it must not leak into the packet.
        let item = encode(header, b"hello", 100);
        let record = decode(&item).unwrap();
        assert_eq!(record.header, header);
        assert_eq!(record.packet, b"hello");
        assert!(!record.truncated());
        assert!(!record.reverse());
        let reverse = RecordHeader {
            flags: RECORD_REVERSE,
            orig_len: 1500,
            ..header
        };
        let item = encode(reverse, b"hello", 0);
        let record = decode(&item).unwrap();
        assert!(record.reverse() && !record.truncated());
    }

    #[test]
    fn rejects_malformed_records() {
        assert_eq!(decode(&[0; 31]), Err(RecordError::ShortHeader { len: 31 }));
        let header = RecordHeader {
            orig_len: 10,
            cap_len: 10,
            ..RecordHeader::default()
        };
        assert_eq!(
            decode(&encode(header, b"short", 0)),
            Err(RecordError::ShortData {
                cap_len: 10,
                available: 5
            })
        );
        let header = RecordHeader {
            orig_len: 2,
            cap_len: 5,
            ..RecordHeader::default()
        };
        assert!(matches!(
            decode(&encode(header, b"hello", 0)),
            Err(RecordError::CapturedMoreThanSent { .. })
        ));
    }

    #[test]
    fn never_panics_on_any_prefix() {
        let header = RecordHeader {
            orig_len: 64,
            cap_len: 40,
            ..RecordHeader::default()
        };
        let item = encode(header, &[1; 40], 0);
        for len in 0..=item.len() {
            let _ = decode(&item[..len]);
        }
    }
}
