//! Classic pcap files (nanosecond timestamps, Ethernet link type): `mirror capture --pcap`
//! writes what the kernel captured so Wireshark or tcpdump can read it, and the end-to-end
//! tests read it back to compare payloads byte for byte; `mirror replay` reads these files
//! and tcpdump's.

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

/// One packet read back from a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    pub unix_ns: u64,
    pub orig_len: u32,
    pub data: Vec<u8>,
}

/// What a file's packets start with. Anything else is refused when the file is opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkType {
    /// An Ethernet header: what `mirror capture` writes, and tcpdump on a veth or NIC.
    Ethernet,
    /// Linux "cooked" capture v1 (16-byte header, protocol at 14): tcpdump `-i any`.
    LinuxSll,
    /// Linux "cooked" capture v2 (20-byte header, protocol at 0): newer tcpdump `-i any`.
    LinuxSll2,
}

const LINKTYPE_LINUX_SLL: u32 = 113;
const LINKTYPE_LINUX_SLL2: u32 = 276;
const MAGIC_MICROS: u32 = 0xa1b2_c3d4;

/// Reads classic pcap files one packet at a time into a buffer it reuses: those [`Writer`]
/// writes, and tcpdump's (microsecond or nanosecond timestamps, either byte order). pcapng
/// is refused with a hint.
pub struct Reader<R: Read> {
    input: R,
    swapped: bool,
    nanos: bool,
    link: LinkType,
}

/// A packet borrowed from the reader's buffer.
#[derive(Clone, Copy, Debug)]
pub struct PacketRef<'a> {
    pub unix_ns: u64,
    pub orig_len: u32,
    pub data: &'a [u8],
}

fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

impl<R: Read> Reader<R> {
    /// Reads and checks the file header.
    pub fn new(mut input: R) -> io::Result<Self> {
        let mut header = [0u8; 24];
        input.read_exact(&mut header)?;
        let magic = u32::from_ne_bytes([header[0], header[1], header[2], header[3]]);
        let (swapped, nanos) = match magic {
            MAGIC_NANOS => (false, true),
            MAGIC_MICROS => (false, false),
            m if m.swap_bytes() == MAGIC_NANOS => (true, true),
            m if m.swap_bytes() == MAGIC_MICROS => (true, false),
            0x0a0d_0d0a => {
                return Err(invalid(
                    "a pcapng file: write classic pcap (tcpdump -w writes it; \
                     `editcap -F pcap IN OUT` converts)"
                        .to_owned(),
                ))
            }
            _ => return Err(invalid("not a pcap file (unknown magic number)".to_owned())),
        };
        let field = |bytes: [u8; 4]| {
            let value = u32::from_ne_bytes(bytes);
            if swapped {
                value.swap_bytes()
            } else {
                value
            }
        };
        let link = match field([header[20], header[21], header[22], header[23]]) & 0x0fff_ffff {
            LINKTYPE_ETHERNET => LinkType::Ethernet,
            LINKTYPE_LINUX_SLL => LinkType::LinuxSll,
            LINKTYPE_LINUX_SLL2 => LinkType::LinuxSll2,
            other => {
                return Err(invalid(format!(
                    "pcap link type {other} is not Ethernet (1) or Linux cooked (113, 276)"
                )))
            }
        };
        Ok(Reader {
            input,
            swapped,
            nanos,
            link,
        })
    }

    pub fn link_type(&self) -> LinkType {
        self.link
    }

    /// The next packet, read into `buffer` (grown as needed, never shrunk); `None` at the
    /// end of the file. A file cut inside a packet is an error.
    pub fn next_packet<'a>(
        &mut self,
        buffer: &'a mut Vec<u8>,
    ) -> io::Result<Option<PacketRef<'a>>> {
        let mut record = [0u8; 16];
        match self.input.read_exact(&mut record) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(error) => return Err(error),
        }
        let field = |i: usize| {
            let value =
                u32::from_ne_bytes([record[i], record[i + 1], record[i + 2], record[i + 3]]);
            if self.swapped {
                value.swap_bytes()
            } else {
                value
            }
        };
        let incl_len = field(8);
        if incl_len > MAX_RECORD {
            return Err(invalid("pcap record larger than 16 MiB".to_owned()));
        }
        let fraction = u64::from(field(4));
        let fraction_ns = if self.nanos {
            fraction
        } else {
            fraction * 1_000
        };
        let unix_ns = u64::from(field(0)) * 1_000_000_000 + fraction_ns;
        let orig_len = field(12);
        buffer.resize(incl_len as usize, 0);
        self.input.read_exact(buffer)?;
        Ok(Some(PacketRef {
            unix_ns,
            orig_len,
            data: buffer,
        }))
    }
}

/// A packet's bytes as an Ethernet frame, which the packet decoder reads: as they are, or
/// with a cooked header's protocol moved to where Ethernet has it (the addresses are not
/// read). `None`: shorter than its link header.
pub fn ethernet_frame<'a>(
    link: LinkType,
    data: &'a [u8],
    scratch: &'a mut Vec<u8>,
) -> Option<&'a [u8]> {
    match link {
        LinkType::Ethernet => Some(data),
        // SLL is 16 bytes with the protocol at 14: from byte 2 on it is Ethernet's layout.
        LinkType::LinuxSll => data.get(2..).filter(|frame| frame.len() >= 14),
        LinkType::LinuxSll2 => {
            let (protocol, payload) = (data.get(..2)?, data.get(20..)?);
            scratch.clear();
            scratch.extend_from_slice(&[0; 12]);
            scratch.extend_from_slice(protocol);
            scratch.extend_from_slice(payload);
            Some(scratch)
        }
    }
}

/// Reads every packet of a file (tests compare whole captures with it).
pub fn read_all(input: impl Read) -> io::Result<Vec<Packet>> {
    let mut reader = Reader::new(input)?;
    let mut buffer = Vec::new();
    let mut packets = Vec::new();
    while let Some(packet) = reader.next_packet(&mut buffer)? {
        packets.push(Packet {
            unix_ns: packet.unix_ns,
            orig_len: packet.orig_len,
            data: packet.data.to_vec(),
        });
    }
    Ok(packets)
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

    /// A tcpdump-style file: microsecond timestamps, the other byte order, a link type.
    fn foreign_file(link: u32, packets: &[(u32, u32, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for field in [MAGIC_MICROS, 0x0004_0002, 0, 0, 262_144, link] {
            out.extend_from_slice(&field.swap_bytes().to_ne_bytes());
        }
        for (secs, micros, data) in packets {
            let len = data.len() as u32;
            for field in [*secs, *micros, len, len] {
                out.extend_from_slice(&field.swap_bytes().to_ne_bytes());
            }
            out.extend_from_slice(data);
        }
        out
    }

    #[test]
    fn reads_microsecond_files_in_the_other_byte_order() {
        let file = foreign_file(
            1,
            &[(1_700_000_000, 250_000, b"abc"), (1_700_000_001, 1, b"")],
        );
        let packets = read_all(file.as_slice()).unwrap();
        assert_eq!(packets.len(), 2);
        assert_eq!(packets[0].unix_ns, 1_700_000_000_250_000_000);
        assert_eq!(packets[0].data, b"abc");
        assert_eq!(packets[1].unix_ns, 1_700_000_001_000_001_000);
        // Cut inside a packet: an error, not a silently shorter capture.
        assert!(read_all(&file[..file.len() - 17]).is_err());
    }

    #[test]
    fn cooked_headers_become_ethernet_layout() {
        let ip = [0x45u8, 0, 0, 20];
        let mut sll = vec![0u8; 14];
        sll.extend_from_slice(&[0x08, 0x00]);
        sll.extend_from_slice(&ip);
        let mut sll2 = vec![0x08, 0x00];
        sll2.extend_from_slice(&[0u8; 18]);
        sll2.extend_from_slice(&ip);
        for (link, code, data) in [
            (LinkType::LinuxSll, 113, sll),
            (LinkType::LinuxSll2, 276, sll2),
        ] {
            let file = foreign_file(code, &[(1, 0, &data)]);
            let mut reader = Reader::new(file.as_slice()).unwrap();
            assert_eq!(reader.link_type(), link);
            let mut buffer = Vec::new();
            let packet = reader.next_packet(&mut buffer).unwrap().unwrap();
            let mut scratch = Vec::new();
            let frame = ethernet_frame(link, packet.data, &mut scratch).unwrap();
            assert_eq!(frame.len(), 14 + ip.len());
            assert_eq!(&frame[12..14], &[0x08, 0x00]);
            assert_eq!(&frame[14..], &ip);
        }
        assert!(ethernet_frame(LinkType::LinuxSll2, &[8, 0, 1], &mut Vec::new()).is_none());
    }

    #[test]
    fn refuses_pcapng_and_other_link_types_by_name() {
        let mut pcapng = 0x0a0d_0d0au32.to_ne_bytes().to_vec();
        pcapng.resize(24, 0);
        let error = Reader::new(pcapng.as_slice()).err().unwrap();
        assert!(error.to_string().contains("pcapng"), "{error}");
        let error = Reader::new(foreign_file(101, &[]).as_slice())
            .err()
            .unwrap();
        assert!(error.to_string().contains("link type 101"), "{error}");
    }
}
