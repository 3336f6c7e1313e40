//! Classic pcap files (nanosecond timestamps, Ethernet link type): `mirror capture --pcap`
//! writes what the kernel captured so Wireshark or tcpdump can read it, and the end-to-end
//! tests read it back to compare payloads byte for byte.

use std::io::{self, Read, Write};

/// Magic of a nanosecond-resolution pcap file, written in native byte order.
const MAGIC_NANOS: u32 = 0xa1b2_3c4d;
const LINKTYPE_ETHERNET: u32 = 1;
/// The largest record we accept when reading: far above any skb the kernel builds.
const MAX_RECORD: u32 = 16 << 20;

pub struct Writer<W: Write> {
    out: W,
}

impl<W: Write> Writer<W> {
    /// Writes the file header; `snaplen` is the largest record the file will hold.
    pub fn new(mut out: W, snaplen: u32) -> io::Result<Self> {
        let mut header = Vec::with_capacity(24);
        header.extend_from_slice(&MAGIC_NANOS.to_ne_bytes());
        header.extend_from_slice(&2u16.to_ne_bytes());
        header.extend_from_slice(&4u16.to_ne_bytes());
        header.extend_from_slice(&0i32.to_ne_bytes());
        header.extend_from_slice(&0u32.to_ne_bytes());
        header.extend_from_slice(&snaplen.to_ne_bytes());
        header.extend_from_slice(&LINKTYPE_ETHERNET.to_ne_bytes());
        out.write_all(&header)?;
        Ok(Writer { out })
    }

    /// Appends one packet: `data` as captured, `orig_len` as it was on the wire.
    pub fn write(&mut self, unix_ns: u64, data: &[u8], orig_len: u32) -> io::Result<()> {
        let incl_len = u32::try_from(data.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "packet over 4 GiB"))?;
        let secs = u32::try_from(unix_ns / 1_000_000_000).unwrap_or(u32::MAX);
        let nanos = (unix_ns % 1_000_000_000) as u32;
        let mut header = [0u8; 16];
        header[..4].copy_from_slice(&secs.to_ne_bytes());
        header[4..8].copy_from_slice(&nanos.to_ne_bytes());
        header[8..12].copy_from_slice(&incl_len.to_ne_bytes());
        header[12..].copy_from_slice(&orig_len.to_ne_bytes());
        self.out.write_all(&header)?;
        self.out.write_all(data)
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// One packet read back from a file we wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    pub unix_ns: u64,
    pub orig_len: u32,
    pub data: Vec<u8>,
}

/// Reads a file written by [`Writer`] (native byte order, nanosecond timestamps).
pub fn read_all(mut input: impl Read) -> io::Result<Vec<Packet>> {
    let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
    let mut header = [0u8; 24];
    input.read_exact(&mut header)?;
    if u32::from_ne_bytes([header[0], header[1], header[2], header[3]]) != MAGIC_NANOS {
        return Err(invalid("not a native-order nanosecond pcap file"));
    }
    let mut packets = Vec::new();
    loop {
        let mut record = [0u8; 16];
        match input.read_exact(&mut record) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => return Ok(packets),
            Err(error) => return Err(error),
        }
        let field =
            |i: usize| u32::from_ne_bytes([record[i], record[i + 1], record[i + 2], record[i + 3]]);
        let incl_len = field(8);
        if incl_len > MAX_RECORD {
            return Err(invalid("pcap record larger than 16 MiB"));
        }
        let mut data = vec![0u8; incl_len as usize];
        input.read_exact(&mut data)?;
        packets.push(Packet {
            unix_ns: u64::from(field(0)) * 1_000_000_000 + u64::from(field(4)),
            orig_len: field(12),
            data,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let mut writer = Writer::new(Vec::new(), 1 << 20).unwrap();
        writer
            .write(1_700_000_000_123_456_789, b"frame one", 9)
            .unwrap();
        writer
            .write(1_700_000_001_000_000_001, &[0xAB; 70_000], 80_000)
            .unwrap();
        let bytes = writer.out;
        let packets = read_all(bytes.as_slice()).unwrap();
        assert_eq!(packets.len(), 2);
        assert_eq!(packets[0].unix_ns, 1_700_000_000_123_456_789);
        assert_eq!(packets[0].data, b"frame one");
        assert_eq!(packets[1].orig_len, 80_000);
        assert_eq!(packets[1].data, vec![0xAB; 70_000]);
    }

    #[test]
    fn rejects_foreign_files() {
        assert!(read_all(&[0u8; 24][..]).is_err());
        assert!(read_all(&[0u8; 3][..]).is_err());
    }
}
