//! Decodes a captured Ethernet frame into a TCP [`Segment`].
//!
//! The kernel program already checked that the frame is TCP to a target, but userspace parses
//! again from the raw bytes (bounds-checked) rather than trusting a summary: the record is the
//! source of truth, and the same decoder serves pcap files.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use mirror_cores::flow::{FlowKey, Segment, TcpFlags};

const ETH_HLEN: usize = 14;
const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const IPPROTO_TCP: u8 = 6;
const IPV6_HLEN: usize = 40;
const TCP_MIN_HLEN: usize = 20;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PacketError {
    #[error("frame of {0} bytes ends inside a header")]
    Truncated(usize),
    #[error("not IPv4 or IPv6 (ethertype {0:#06x})")]
    NotIp(u16),
    #[error("not TCP (IP protocol {0})")]
    NotTcp(u8),
    #[error("IPv4 fragment")]
    Fragment,
    #[error("malformed {0} header")]
    Malformed(&'static str),
}

/// Parses an Ethernet frame carrying TCP over IPv4 or IPv6.
pub fn parse_ethernet(frame: &[u8]) -> Result<Segment<'_>, PacketError> {
    let truncated = || PacketError::Truncated(frame.len());
    let ether_type = u16::from_be_bytes(
        *frame
            .get(12..ETH_HLEN)
            .and_then(|b| b.first_chunk())
            .ok_or_else(truncated)?,
    );
    let l3 = &frame[ETH_HLEN..];
    match ether_type {
        ETH_P_IPV4 => parse_ipv4(l3).map_err(|e| relabel(e, frame.len())),
        ETH_P_IPV6 => parse_ipv6(l3).map_err(|e| relabel(e, frame.len())),
        other => Err(PacketError::NotIp(other)),
    }
}

fn relabel(error: PacketError, frame_len: usize) -> PacketError {
    match error {
        PacketError::Truncated(_) => PacketError::Truncated(frame_len),
        other => other,
    }
}

fn parse_ipv4(packet: &[u8]) -> Result<Segment<'_>, PacketError> {
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
    let payload = packet.get(ihl..end).ok_or(PacketError::Malformed("IPv4"))?;
    let src = Ipv4Addr::new(header[12], header[13], header[14], header[15]);
    let dst = Ipv4Addr::new(header[16], header[17], header[18], header[19]);
    parse_tcp(IpAddr::V4(src), IpAddr::V4(dst), payload)
}

fn parse_ipv6(packet: &[u8]) -> Result<Segment<'_>, PacketError> {
    let header: &[u8; IPV6_HLEN] = packet.first_chunk().ok_or(PacketError::Truncated(0))?;
    if header[0] >> 4 != 6 {
        return Err(PacketError::Malformed("IPv6"));
    }
    if header[6] != IPPROTO_TCP {
        return Err(PacketError::NotTcp(header[6]));
    }
    let payload_len = usize::from(u16::from_be_bytes([header[4], header[5]]));
    let end = if payload_len == 0 {
        packet.len()
    } else {
        IPV6_HLEN + payload_len
    };
    let payload = packet
        .get(IPV6_HLEN..end)
        .ok_or(PacketError::Malformed("IPv6"))?;
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src.copy_from_slice(&header[8..24]);
    dst.copy_from_slice(&header[24..40]);
    parse_tcp(
        IpAddr::V6(Ipv6Addr::from(src)),
        IpAddr::V6(Ipv6Addr::from(dst)),
        payload,
    )
}

fn parse_tcp(src: IpAddr, dst: IpAddr, segment: &[u8]) -> Result<Segment<'_>, PacketError> {
    let header: &[u8; TCP_MIN_HLEN] = segment.first_chunk().ok_or(PacketError::Truncated(0))?;
    let data_offset = usize::from(header[12] >> 4) * 4;
    if data_offset < TCP_MIN_HLEN {
        return Err(PacketError::Malformed("TCP"));
    }
    let options = segment
        .get(TCP_MIN_HLEN..data_offset)
        .ok_or(PacketError::Malformed("TCP"))?;
    let payload = &segment[data_offset..];
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
}
