//! Decodes a captured Ethernet frame into a TCP [`Segment`].
//!
//! The kernel program already checked that the frame is TCP to (or, header-only, from) a
//! target, but userspace parses again from the raw bytes (bounds-checked) rather than trusting
//! a summary: the record is the source of truth, and the same decoder serves pcap files. It
//! follows what the kernel program follows: up to two VLAN tags, and IPv6's hop-by-hop
//! (with BIG TCP's jumbo option), routing and destination options headers.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use mirror_cores::flow::{FlowKey, Segment, TcpFlags};

use super::record::Record;

const ETH_HLEN: usize = 14;
const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
const VLAN_TAG_LEN: usize = 4;
/// As many tags as the kernel program follows.
const MAX_VLAN_TAGS: usize = 2;
const IPPROTO_TCP: u8 = 6;
const IPV6_HLEN: usize = 40;
/// As many extension headers as the kernel program follows.
const MAX_IPV6_EXT_HEADERS: usize = 4;
const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_DEST_OPTIONS: u8 = 60;
const IPV6_JUMBO_OPTION: u8 = 0xc2;
const TCP_MIN_HLEN: usize = 20;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PacketError {
    #[error("frame of {0} bytes ends inside a header")]
    Truncated(usize),
    #[error("not IPv4 or IPv6 (ethertype {0:#06x})")]
    NotIp(u16),
    #[error("not TCP (IP protocol {0})")]
    NotTcp(u8),
    #[error("IP fragment")]
    Fragment,
    #[error("malformed {0} header")]
    Malformed(&'static str),
}

/// How much of the packet the frame holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Extent {
    /// All of it (up to Ethernet padding, trimmed by the IP length).
    Whole,
    /// The headers only, cut after the TCP header (a `RECORD_REVERSE` record): the IP length
    /// may say more than the frame holds, and the payload is empty.
    HeadersOnly,
}

/// Decodes a record's packet: whole, or header-only when the record is flagged reverse.
pub fn parse_record<'a>(record: &Record<'a>) -> Result<Segment<'a>, PacketError> {
    if record.reverse() {
        parse_headers(record.packet)
    } else {
        parse_ethernet(record.packet)
    }
}

/// Parses an Ethernet frame carrying TCP over IPv4 or IPv6, whole.
pub fn parse_ethernet(frame: &[u8]) -> Result<Segment<'_>, PacketError> {
    parse(frame, Extent::Whole)
}

/// Parses the headers of a frame cut after its TCP header (a reverse record, or a pcap
/// packet of v1's side): the IP length may say more than the frame holds; the payload is
/// empty.
pub fn parse_headers(frame: &[u8]) -> Result<Segment<'_>, PacketError> {
    parse(frame, Extent::HeadersOnly)
}

fn parse(frame: &[u8], extent: Extent) -> Result<Segment<'_>, PacketError> {
    let truncated = || PacketError::Truncated(frame.len());
    let ether_type_at = |offset: usize| {
        frame
            .get(offset..offset + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(truncated)
    };
    let mut l3_offset = ETH_HLEN;
    let mut ether_type = ether_type_at(l3_offset - 2)?;
    for _ in 0..MAX_VLAN_TAGS {
        if ether_type != ETH_P_8021Q && ether_type != ETH_P_8021AD {
            break;
        }
        l3_offset += VLAN_TAG_LEN;
        ether_type = ether_type_at(l3_offset - 2)?;
    }
    let l3 = &frame[l3_offset..];
    match ether_type {
        ETH_P_IPV4 => parse_ipv4(l3, extent).map_err(|e| relabel(e, frame.len())),
        ETH_P_IPV6 => parse_ipv6(l3, extent).map_err(|e| relabel(e, frame.len())),
        ETH_P_8021Q | ETH_P_8021AD => Err(PacketError::Malformed("VLAN (more than two tags)")),
        other => Err(PacketError::NotIp(other)),
    }
}

fn relabel(error: PacketError, frame_len: usize) -> PacketError {
    match error {
        PacketError::Truncated(_) => PacketError::Truncated(frame_len),
        other => other,
    }
}

/// The IP packet's bytes from `l4` to `end`, as far as the frame holds them when it holds
/// only the headers.
fn l4_bytes<'a>(
    packet: &'a [u8],
    l4: usize,
    end: usize,
    extent: Extent,
    what: &'static str,
) -> Result<&'a [u8], PacketError> {
    let end = match extent {
        Extent::Whole => end,
        Extent::HeadersOnly => end.min(packet.len()),
    };
    packet.get(l4..end).ok_or(PacketError::Malformed(what))
}

fn parse_ipv4(packet: &[u8], extent: Extent) -> Result<Segment<'_>, PacketError> {
    let header: &[u8; 20] = packet.first_chunk().ok_or(PacketError::Truncated(0))?;
    if header[0] >> 4 != 4 {
        return Err(PacketError::Malformed("IPv4"));
    }
    let ihl = usize::from(header[0] & 0x0f) * 4;
    if ihl < 20 || packet.len() < ihl {
        return Err(PacketError::Malformed("IPv4"));
    }
    if u16::from_be_bytes([header[6], header[7]]) & 0x3fff != 0 {
        return Err(PacketError::Fragment);
    }
    if header[9] != IPPROTO_TCP {
        return Err(PacketError::NotTcp(header[9]));
    }
    let total_len = usize::from(u16::from_be_bytes([header[2], header[3]]));
    // Total length 0 marks a BIG TCP super-packet: it runs to the end of the frame.
    let end = if total_len == 0 {
        packet.len()
    } else {
        total_len
    };
    let segment = l4_bytes(packet, ihl, end, extent, "IPv4")?;
    let src = Ipv4Addr::new(header[12], header[13], header[14], header[15]);
    let dst = Ipv4Addr::new(header[16], header[17], header[18], header[19]);
    parse_tcp(IpAddr::V4(src), IpAddr::V4(dst), segment, extent)
}

fn parse_ipv6(packet: &[u8], extent: Extent) -> Result<Segment<'_>, PacketError> {
    let header: &[u8; IPV6_HLEN] = packet.first_chunk().ok_or(PacketError::Truncated(0))?;
    if header[0] >> 4 != 6 {
        return Err(PacketError::Malformed("IPv6"));
    }
    let (l4, jumbo) = ipv6_extensions(packet, header[6])?;
    let payload_len = usize::from(u16::from_be_bytes([header[4], header[5]]));
    // Payload length 0: a BIG TCP super-packet, whose length is the jumbo option's if it
    // has one, else the frame's.
    let end = match (payload_len, jumbo) {
        (0, Some(jumbo)) => IPV6_HLEN.saturating_add(jumbo),
        (0, None) => packet.len(),
        (len, _) => IPV6_HLEN + len,
    };
    let segment = l4_bytes(packet, l4, end, extent, "IPv6")?;
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src.copy_from_slice(&header[8..24]);
    dst.copy_from_slice(&header[24..40]);
    parse_tcp(
        IpAddr::V6(Ipv6Addr::from(src)),
        IpAddr::V6(Ipv6Addr::from(dst)),
        segment,
        extent,
    )
}

/// Walks the extension headers from `next`: the offset of the TCP header in `packet`, and the
/// jumbo payload length if the hop-by-hop header starts with that option (as BIG TCP's does).
fn ipv6_extensions(packet: &[u8], mut next: u8) -> Result<(usize, Option<usize>), PacketError> {
    let mut offset = IPV6_HLEN;
    let mut jumbo = None;
    for _ in 0..=MAX_IPV6_EXT_HEADERS {
        match next {
            IPPROTO_TCP => return Ok((offset, jumbo)),
            IPV6_FRAGMENT => return Err(PacketError::Fragment),
            IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTIONS => {
                let ext: &[u8; 8] = packet
                    .get(offset..)
                    .and_then(|rest| rest.first_chunk())
                    .ok_or(PacketError::Malformed("IPv6 extension"))?;
                if next == IPV6_HOP_BY_HOP && ext[2] == IPV6_JUMBO_OPTION && ext[3] == 4 {
                    let len = u32::from_be_bytes([ext[4], ext[5], ext[6], ext[7]]);
                    jumbo = usize::try_from(len).ok();
                }
                next = ext[0];
                offset += (usize::from(ext[1]) + 1) * 8;
            }
            other => return Err(PacketError::NotTcp(other)),
        }
    }
    Err(PacketError::Malformed("IPv6 extension chain (too long)"))
}

fn parse_tcp(
    src: IpAddr,
    dst: IpAddr,
    segment: &[u8],
    extent: Extent,
) -> Result<Segment<'_>, PacketError> {
    let header: &[u8; TCP_MIN_HLEN] = segment.first_chunk().ok_or(PacketError::Truncated(0))?;
    let data_offset = usize::from(header[12] >> 4) * 4;
    if data_offset < TCP_MIN_HLEN {
        return Err(PacketError::Malformed("TCP"));
    }
    let options = segment
        .get(TCP_MIN_HLEN..data_offset)
        .ok_or(PacketError::Malformed("TCP"))?;
    let payload = match extent {
        Extent::Whole => &segment[data_offset..],
        Extent::HeadersOnly => &[],
    };
    let flags = TcpFlags(header[13]);
    Ok(Segment {
        flow: FlowKey {
            src: SocketAddr::new(src, u16::from_be_bytes([header[0], header[1]])),
            dst: SocketAddr::new(dst, u16::from_be_bytes([header[2], header[3]])),
        },
        seq: u32::from_be_bytes([header[4], header[5], header[6], header[7]]),
        ack: u32::from_be_bytes([header[8], header[9], header[10], header[11]]),
        window: u16::from_be_bytes([header[14], header[15]]),
        // RFC 7323: the option counts only on SYNs; elsewhere it is ignored.
        window_scale: flags.syn().then(|| window_scale(options)).flatten(),
        flags,
        payload,
    })
}

/// The window scale option's shift count, if `options` holds a well-formed one. Malformed
/// options end the walk: the segment still decodes, without a scale.
fn window_scale(mut options: &[u8]) -> Option<u8> {
    const END: u8 = 0;
    const NOP: u8 = 1;
    const WINDOW_SCALE: u8 = 3;
    while let Some((&kind, rest)) = options.split_first() {
        match kind {
            END => return None,
            NOP => options = rest,
            _ => {
                let len = usize::from(*rest.first()?);
                if len < 2 || options.len() < len {
                    return None;
                }
                if kind == WINDOW_SCALE && len == 3 {
                    // RFC 7323 section 2.3: a shift above 14 is used as 14.
                    return Some(options[2].min(14));
                }
                options = &options[len..];
            }
        }
    }
    None
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds an Ethernet + IPv4/IPv6 + TCP frame, with `padding` trailing bytes (Ethernet
    /// pads short frames; the decoder must trim them by the IP length).
    pub(crate) fn frame(
        flow: FlowKey,
        seq: u32,
        flags: u8,
        payload: &[u8],
        padding: usize,
    ) -> Vec<u8> {
        let mut out = vec![0u8; 12];
        let mut tcp = Vec::new();
        tcp.extend_from_slice(&flow.src.port().to_be_bytes());
        tcp.extend_from_slice(&flow.dst.port().to_be_bytes());
        tcp.extend_from_slice(&seq.to_be_bytes());
        tcp.extend_from_slice(&[0; 4]);
        tcp.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
        tcp.extend_from_slice(payload);
        match (flow.src.ip(), flow.dst.ip()) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                out.extend_from_slice(&ETH_P_IPV4.to_be_bytes());
                let total = u16::try_from(20 + tcp.len()).unwrap();
                out.extend_from_slice(&[0x45, 0]);
                out.extend_from_slice(&total.to_be_bytes());
                out.extend_from_slice(&[0, 0, 0x40, 0, 64, IPPROTO_TCP, 0, 0]);
                out.extend_from_slice(&src.octets());
                out.extend_from_slice(&dst.octets());
            }
            (IpAddr::V6(src), IpAddr::V6(dst)) => {
                out.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
                out.extend_from_slice(&[0x60, 0, 0, 0]);
                out.extend_from_slice(&u16::try_from(tcp.len()).unwrap().to_be_bytes());
                out.extend_from_slice(&[IPPROTO_TCP, 64]);
                out.extend_from_slice(&src.octets());
                out.extend_from_slice(&dst.octets());
            }
            _ => panic!("mixed families"),
        }
        out.extend_from_slice(&tcp);
        out.resize(out.len() + padding, 0);
        out
    }

    fn flow(src: &str, dst: &str) -> FlowKey {
        FlowKey {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
        }
    }

    #[test]
    fn parses_ipv4_and_trims_padding() {
        let key = flow("198.18.1.2:40000", "198.19.0.10:8000");
        let bytes = frame(
            key,
            1000,
            TcpFlags::ACK | TcpFlags::PSH,
            b"GET / HTTP/1.1\r\n",
            6,
        );
        let segment = parse_ethernet(&bytes).unwrap();
        assert_eq!(segment.flow, key);
        assert_eq!(segment.seq, 1000);
        assert_eq!(segment.flags, TcpFlags(TcpFlags::ACK | TcpFlags::PSH));
        assert_eq!(segment.payload, b"GET / HTTP/1.1\r\n");
    }

    #[test]
    fn parses_ipv6() {
        let key = flow("[fd00::2]:40000", "[fd00::10]:80");
        let bytes = frame(key, u32::MAX, TcpFlags::SYN, b"", 0);
        let segment = parse_ethernet(&bytes).unwrap();
        assert_eq!(segment.flow, key);
        assert_eq!(segment.seq, u32::MAX);
        assert!(segment.flags.syn());
        assert!(segment.payload.is_empty());
    }

    #[test]
    fn reads_ack_window_and_the_syn_window_scale() {
        let key = flow("198.19.0.10:8000", "198.18.1.2:40000");
        // A SYN-ACK whose four "payload" bytes become options (NOP, window scale 7) once
        // the data offset says the header is 24 bytes long.
        let mut bytes = frame(key, 5, TcpFlags::SYN | TcpFlags::ACK, &[1, 3, 3, 7], 0);
        let tcp = ETH_HLEN + 20;
        bytes[tcp + 8..tcp + 12].copy_from_slice(&1001u32.to_be_bytes());
        bytes[tcp + 12] = 0x60;
        bytes[tcp + 14..tcp + 16].copy_from_slice(&512u16.to_be_bytes());
        let segment = parse_ethernet(&bytes).unwrap();
        assert_eq!((segment.ack, segment.window), (1001, 512));
        assert_eq!(segment.window_scale, Some(7));
        assert!(segment.payload.is_empty());
        // The option means nothing without SYN, and a malformed option list yields no scale.
        bytes[tcp + 13] = TcpFlags::ACK;
        assert_eq!(parse_ethernet(&bytes).unwrap().window_scale, None);
        assert_eq!(window_scale(&[3, 1, 7]), None);
        assert_eq!(window_scale(&[3, 3, 20]), Some(14));
        assert_eq!(
            window_scale(&[8, 10, 0, 0, 0, 0, 0, 0, 0, 0, 3, 3, 2]),
            Some(2)
        );
    }

    #[test]
    fn big_tcp_zero_length_runs_to_frame_end() {
        let key = flow("198.18.1.2:40000", "198.19.0.10:8000");
        let mut bytes = frame(key, 1, TcpFlags::ACK, &[7; 100], 0);
        bytes[16] = 0;
        bytes[17] = 0;
        assert_eq!(parse_ethernet(&bytes).unwrap().payload, &[7; 100]);
    }

    #[test]
    fn rejects_non_tcp_and_never_panics_on_prefixes() {
        let key = flow("198.18.1.2:40000", "198.19.0.10:8000");
        let mut bytes = frame(key, 1, TcpFlags::ACK, b"abc", 0);
        for len in 0..bytes.len() {
            let _ = parse_ethernet(&bytes[..len]);
        }
        bytes[23] = 17;
        assert_eq!(parse_ethernet(&bytes), Err(PacketError::NotTcp(17)));
        bytes[12] = 0x08;
        bytes[13] = 0x06;
        assert_eq!(parse_ethernet(&bytes), Err(PacketError::NotIp(0x0806)));
    }

    /// Inserts `tags` VLAN tags (802.1ad outer, 802.1Q inner) after the MAC addresses.
    fn with_vlan_tags(frame: &[u8], tags: usize) -> Vec<u8> {
        let mut out = frame[..12].to_vec();
        for tag in 0..tags {
            let tpid = if tag + 1 < tags {
                ETH_P_8021AD
            } else {
                ETH_P_8021Q
            };
            out.extend_from_slice(&tpid.to_be_bytes());
            out.extend_from_slice(&(100 + tag as u16).to_be_bytes());
        }
        out.extend_from_slice(&frame[12..]);
        out
    }

    /// Inserts IPv6 extension headers (each `(type, bytes)`, bytes a multiple of 8 with the
    /// next-header and length fields filled in here) before the TCP header of an IPv6 frame.
    fn with_ipv6_extensions(frame: &[u8], extensions: &[(u8, Vec<u8>)]) -> Vec<u8> {
        let l3 = ETH_HLEN;
        let mut out = frame[..l3 + IPV6_HLEN].to_vec();
        let mut chain = Vec::new();
        for (index, (_, bytes)) in extensions.iter().enumerate() {
            let mut ext = bytes.clone();
            ext[0] = extensions
                .get(index + 1)
                .map_or(IPPROTO_TCP, |(kind, _)| *kind);
            ext[1] = u8::try_from(ext.len() / 8 - 1).unwrap();
            chain.extend_from_slice(&ext);
        }
        if let Some((first, _)) = extensions.first() {
            out[l3 + 6] = *first;
        }
        let payload_len = u16::from_be_bytes([out[l3 + 4], out[l3 + 5]]);
        let grown = payload_len + u16::try_from(chain.len()).unwrap();
        out[l3 + 4..l3 + 6].copy_from_slice(&grown.to_be_bytes());
        out.extend_from_slice(&chain);
        out.extend_from_slice(&frame[l3 + IPV6_HLEN..]);
        out
    }

    #[test]
    fn follows_one_and_two_vlan_tags_but_not_three() {
        let key = flow("198.18.1.2:40000", "198.19.0.10:8000");
        let plain = frame(key, 9, TcpFlags::ACK, b"tagged", 0);
        for tags in 1..=2 {
            let bytes = with_vlan_tags(&plain, tags);
            let segment = parse_ethernet(&bytes).unwrap();
            assert_eq!((segment.flow, segment.payload), (key, &b"tagged"[..]));
        }
        assert!(matches!(
            parse_ethernet(&with_vlan_tags(&plain, 3)),
            Err(PacketError::Malformed(_))
        ));
        let six = frame(
            flow("[fd00::2]:1", "[fd00::10]:80"),
            1,
            TcpFlags::SYN,
            b"",
            0,
        );
        assert!(parse_ethernet(&with_vlan_tags(&six, 2))
            .unwrap()
            .flags
            .syn());
    }

    #[test]
    fn follows_ipv6_extension_headers() {
        let key = flow("[fd00::2]:40000", "[fd00::10]:80");
        let plain = frame(key, 3, TcpFlags::ACK, b"GET / HTTP/1.1\r\n", 4);
        let bytes = with_ipv6_extensions(
            &plain,
            &[
                (IPV6_HOP_BY_HOP, vec![0; 8]),
                (IPV6_ROUTING, vec![0; 24]),
                (IPV6_DEST_OPTIONS, vec![0; 16]),
            ],
        );
        let segment = parse_ethernet(&bytes).unwrap();
        assert_eq!(segment.flow, key);
        assert_eq!(segment.payload, b"GET / HTTP/1.1\r\n", "padding trimmed");
        // Five extension headers are one more than the kernel program follows.
        let long = with_ipv6_extensions(&plain, &vec![(IPV6_DEST_OPTIONS, vec![0; 8]); 5]);
        assert!(matches!(
            parse_ethernet(&long),
            Err(PacketError::Malformed(_))
        ));
        let fragment = with_ipv6_extensions(&plain, &[(IPV6_FRAGMENT, vec![0; 8])]);
        assert_eq!(parse_ethernet(&fragment), Err(PacketError::Fragment));
        let esp = with_ipv6_extensions(&plain, &[(50, vec![0; 8])]);
        assert_eq!(parse_ethernet(&esp), Err(PacketError::NotTcp(50)));
        for len in 0..bytes.len() {
            let _ = parse_ethernet(&bytes[..len]);
        }
    }

    #[test]
    fn jumbo_option_gives_the_length_of_a_big_tcp_packet() {
        let key = flow("[fd00::2]:40000", "[fd00::10]:80");
        let plain = frame(key, 3, TcpFlags::ACK, &[5; 300], 0);
        let mut jumbo = vec![0, 0, IPV6_JUMBO_OPTION, 4];
        // The jumbo length counts the hop-by-hop header (8), TCP (20) and 200 payload bytes:
        // the last 100 captured bytes lie beyond it.
        jumbo.extend_from_slice(&(8u32 + 20 + 200).to_be_bytes());
        let mut bytes = with_ipv6_extensions(&plain, &[(IPV6_HOP_BY_HOP, jumbo)]);
        bytes[ETH_HLEN + 4..ETH_HLEN + 6].copy_from_slice(&[0, 0]);
        assert_eq!(parse_ethernet(&bytes).unwrap().payload, &[5; 200]);
    }

    #[test]
    fn header_only_frames_decode_with_an_empty_payload() {
        let key = flow("198.19.0.10:8000", "198.18.1.2:40000");
        let whole = frame(
            key,
            77,
            TcpFlags::ACK | TcpFlags::PSH,
            b"HTTP/1.1 200 OK\r\n",
            0,
        );
        let cut = &whole[..ETH_HLEN + 20 + 20];
        // A whole-frame decode refuses a frame shorter than its IP length...
        assert_eq!(parse_ethernet(cut), Err(PacketError::Malformed("IPv4")));
        // ...a reverse record's decode takes it, headers only.
        let header = mirror_common::RecordHeader {
            orig_len: u32::try_from(whole.len()).unwrap(),
            cap_len: u32::try_from(cut.len()).unwrap(),
            flags: mirror_common::RECORD_REVERSE,
            ..mirror_common::RecordHeader::default()
        };
        let record = Record {
            header,
            packet: cut,
        };
        let segment = parse_record(&record).unwrap();
        assert_eq!((segment.flow, segment.seq), (key, 77));
        assert!(segment.payload.is_empty());
        // Even a whole frame flagged reverse yields no payload: v1's bytes are never data.
        let record = Record {
            header,
            packet: &whole,
        };
        assert!(parse_record(&record).unwrap().payload.is_empty());
        // The TCP header itself must be there.
        let record = Record {
            header,
            packet: &whole[..ETH_HLEN + 20 + 10],
        };
        assert!(parse_record(&record).is_err());
        let six = frame(
            flow("[fd00::10]:80", "[fd00::2]:1"),
            5,
            TcpFlags::ACK,
            &[1; 50],
            0,
        );
        let record = Record {
            header,
            packet: &six[..ETH_HLEN + IPV6_HLEN + 20],
        };
        assert_eq!(parse_record(&record).unwrap().seq, 5);
    }
}
