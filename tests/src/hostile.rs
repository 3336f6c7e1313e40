//! What a hostile pod does to the agent, for the capture-trust tests and the bench: forged
//! IPv4/TCP segments sent from a raw socket (`IP_HDRINCL`) inside the pod's namespace, the
//! sequence numbers of the pod's own live connections (read in `TCP_REPAIR` mode, so forged
//! segments can sit anywhere relative to a real flow), a server that reads and discards
//! everything (so v1 acknowledges whatever garbage it is sent), and the agent's CPU time.

use std::{
    io::{Read as _, Write as _},
    mem::size_of,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{bail, Context as _, Result};

use crate::Netns;

/// TCP flag bits, as in the header's 13th byte.
pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;

/// One forged TCP segment.
#[derive(Clone, Copy, Debug)]
pub struct Forged<'a> {
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
    pub payload: &'a [u8],
}

impl Forged<'_> {
    /// The IPv4 packet: a 20-byte IP header (the kernel fills in its checksum and id), a
    /// 20-byte TCP header without options, and the payload.
    pub fn packet(&self) -> Vec<u8> {
        let total = 40 + self.payload.len();
        let mut packet = Vec::with_capacity(total);
        packet.extend_from_slice(&[0x45, 0]);
        packet.extend_from_slice(&u16::try_from(total).unwrap_or(u16::MAX).to_be_bytes());
        packet.extend_from_slice(&[0, 0, 0x40, 0, 64, 6, 0, 0]);
        packet.extend_from_slice(&self.src.ip().octets());
        packet.extend_from_slice(&self.dst.ip().octets());
        let tcp_start = packet.len();
        packet.extend_from_slice(&self.src.port().to_be_bytes());
        packet.extend_from_slice(&self.dst.port().to_be_bytes());
        packet.extend_from_slice(&self.seq.to_be_bytes());
        packet.extend_from_slice(&self.ack.to_be_bytes());
        packet.extend_from_slice(&[5 << 4, self.flags]);
        packet.extend_from_slice(&self.window.to_be_bytes());
        packet.extend_from_slice(&[0, 0, 0, 0]);
        packet.extend_from_slice(self.payload);
        let checksum = tcp_checksum(*self.src.ip(), *self.dst.ip(), &packet[tcp_start..]);
        packet[tcp_start + 16..tcp_start + 18].copy_from_slice(&checksum.to_be_bytes());
        packet
    }
}

/// RFC 793's checksum over the IPv4 pseudo-header and the segment (checksum field zero).
fn tcp_checksum(src: Ipv4Addr, dst: Ipv4Addr, segment: &[u8]) -> u16 {
    let mut sum: u64 = 0;
    let mut add = |bytes: &[u8]| {
        for pair in bytes.chunks(2) {
            let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
            sum += u64::from(word);
        }
    };
    add(&src.octets());
    add(&dst.octets());
    add(&[0, 6]);
    add(&u16::try_from(segment.len())
        .unwrap_or(u16::MAX)
        .to_be_bytes());
    add(segment);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A raw IPv4 socket that sends whole packets as built, source address included.
#[derive(Debug)]
pub struct RawSender {
    fd: OwnedFd,
}

impl RawSender {
    /// Opens the socket inside `ns` (it stays there, whichever thread sends).
    pub fn open(ns: &Netns) -> Result<RawSender> {
        let fd = ns.run(|| -> std::io::Result<OwnedFd> {
            // SAFETY: plain socket(2); the descriptor is owned at once.
            let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // SAFETY: `fd` is a fresh descriptor nobody else owns.
            Ok(unsafe { OwnedFd::from_raw_fd(fd) })
        })?;
        Ok(RawSender {
            fd: fd.context("raw socket (needs CAP_NET_RAW)")?,
        })
    }

    /// Sends one segment; a full socket buffer is waited out.
    pub fn send(&self, segment: &Forged<'_>) -> Result<()> {
        let packet = segment.packet();
        let dst = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(segment.dst.ip().octets()),
            },
            sin_zero: [0; 8],
        };
        loop {
            // SAFETY: the buffer and address outlive the call and their lengths are right.
            let sent = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    packet.as_ptr().cast(),
                    packet.len(),
                    0,
                    (&dst as *const libc::sockaddr_in).cast(),
                    size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            };
            if sent >= 0 {
                return Ok(());
            }
            let error = std::io::Error::last_os_error();
            if error.raw_os_error() == Some(libc::ENOBUFS) {
                std::thread::sleep(Duration::from_micros(200));
                continue;
            }
            return Err(error).context("send a forged segment");
        }
    }
}

/// Where a live connection stands: the next sequence number it will send and the next one it
/// expects from its peer (what it puts in the acknowledgement field).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LiveSequence {
    pub send_next: u32,
    pub receive_next: u32,
}

/// Reads `stream`'s sequence numbers by entering `TCP_REPAIR` mode for a moment (needs
/// CAP_NET_ADMIN; nothing is sent meanwhile). Call it with nothing left unsent.
pub fn live_sequence(stream: &TcpStream) -> Result<LiveSequence> {
    let fd = stream.as_raw_fd();
    let set = |option: libc::c_int, value: libc::c_int| -> Result<()> {
        // SAFETY: setsockopt with an int-sized value on a socket we own.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::IPPROTO_TCP,
                option,
                (&value as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error()).context("setsockopt TCP_REPAIR*");
        }
        Ok(())
    };
    let queue_seq = |queue: libc::c_int| -> Result<u32> {
        set(libc::TCP_REPAIR_QUEUE, queue)?;
        let mut value: u32 = 0;
        let mut len = size_of::<u32>() as libc::socklen_t;
        // SAFETY: getsockopt into a u32 whose size we pass.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_QUEUE_SEQ,
                (&mut value as *mut u32).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error()).context("getsockopt TCP_QUEUE_SEQ");
        }
        Ok(value)
    };
    set(libc::TCP_REPAIR, 1)?;
    let read = (|| {
        Ok(LiveSequence {
            send_next: queue_seq(2)?,    // TCP_SEND_QUEUE
            receive_next: queue_seq(1)?, // TCP_RECV_QUEUE
        })
    })();
    // Leaving repair mode sends one window probe (an old sequence number): harmless.
    set(libc::TCP_REPAIR, 0)?;
    read
}

/// `stream`'s local address, which must be IPv4.
pub fn local_v4(stream: &TcpStream) -> Result<SocketAddrV4> {
    match stream.local_addr()? {
        SocketAddr::V4(addr) => Ok(addr),
        other => bail!("{other} is not IPv4"),
    }
}

/// Sends `GET path` on a keep-alive connection to a `mirror-sink` and waits for its `ok`.
pub fn sink_get(stream: &mut TcpStream, path: &str) -> Result<()> {
    write!(stream, "GET {path} HTTP/1.1\r\nHost: httpbin:8000\r\n\r\n")?;
    stream.flush()?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 512];
    while !answer.ends_with(b"\r\n\r\nok\n") {
        let n = stream.read(&mut buf).context("read the sink's answer")?;
        if n == 0 {
            bail!(
                "the sink closed the connection: {:?}",
                String::from_utf8_lossy(&answer)
            );
        }
        answer.extend_from_slice(&buf[..n]);
    }
    if !answer.starts_with(b"HTTP/1.1 200") {
        bail!("unexpected answer {:?}", String::from_utf8_lossy(&answer));
    }
    Ok(())
}

/// A TCP server that reads every byte it is sent and answers nothing: v1 for garbage, so that
/// v1 acknowledges all of it. Stops (and closes its connections) when dropped.
#[derive(Debug)]
pub struct Discard {
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl Discard {
    /// Listens on `0.0.0.0:port` inside `ns`.
    pub fn start(ns: &Netns, port: u16) -> Result<Discard> {
        let listener = ns
            .run(move || TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)))?
            .with_context(|| format!("bind the discard server to port {port}"))?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let acceptor = std::thread::spawn(move || {
            let mut readers = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let flag = flag.clone();
                        readers.push(std::thread::spawn(move || discard(stream, &flag)));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
            for reader in readers {
                let _ = reader.join();
            }
        });
        Ok(Discard {
            stop,
            acceptor: Some(acceptor),
        })
    }
}

fn discard(mut stream: TcpStream, stop: &AtomicBool) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    let mut buf = vec![0u8; 64 << 10];
    while !stop.load(Ordering::Relaxed) {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(err)
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

impl Drop for Discard {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

/// A deterministic stream of numbers, so that a run of an attack can be repeated.
#[derive(Clone, Debug)]
pub struct Lcg(pub u64);

impl Lcg {
    pub fn next_u32(&mut self) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) as u32
    }
}

/// The attacks of issue 10, each returning how many packets it forged (v1 answers most of
/// them with one packet more). `dst` is the mirrored service.
pub mod attacks {
    use super::*;

    /// `count` SYNs from `src`'s ports 1024 and up, random sequence numbers.
    pub fn syn_flood(
        raw: &RawSender,
        src: Ipv4Addr,
        dst: SocketAddrV4,
        count: u32,
        rng: &mut Lcg,
    ) -> Result<u64> {
        for i in 0..count {
            raw.send(&Forged {
                src: SocketAddrV4::new(src, 1024 + (i % 64_512) as u16),
                dst,
                seq: rng.next_u32(),
                ack: 0,
                flags: SYN,
                window: 64_240,
                payload: &[],
            })?;
        }
        Ok(u64::from(count))
    }

    /// `count` whole requests (`GET /forged-N`), each a lone data segment of no connection.
    pub fn forged_data(
        raw: &RawSender,
        src: Ipv4Addr,
        dst: SocketAddrV4,
        count: u32,
        rng: &mut Lcg,
    ) -> Result<u64> {
        for i in 0..count {
            let request = format!("GET /forged-{i} HTTP/1.1\r\nHost: httpbin:8000\r\n\r\n");
            raw.send(&Forged {
                src: SocketAddrV4::new(src, 20_000 + (i % 40_000) as u16),
                dst,
                seq: rng.next_u32(),
                ack: rng.next_u32(),
                flags: ACK | PSH,
                window: 502,
                payload: request.as_bytes(),
            })?;
        }
        Ok(u64::from(count))
    }

    /// On each live flow, `per_flow` segments of 1 to 1000 bytes 64 KiB to 16 MiB ahead of
    /// what it sent (beyond any genuine request that follows), interleaved across flows.
    pub fn far_out_of_order(
        raw: &RawSender,
        flows: &[TcpStream],
        dst: SocketAddrV4,
        per_flow: usize,
        rng: &mut Lcg,
    ) -> Result<u64> {
        let payload = vec![b'x'; 1000];
        let places = places(flows)?;
        let mut sent = 0;
        for _ in 0..per_flow {
            for (src, live) in &places {
                let ahead = (64 << 10) + rng.next_u32() % (16 << 20);
                let len = 1 + rng.next_u32() as usize % payload.len();
                raw.send(&Forged {
                    src: *src,
                    dst,
                    seq: live.send_next.wrapping_add(ahead),
                    ack: live.receive_next,
                    flags: ACK | PSH,
                    window: 502,
                    payload: &payload[..len],
                })?;
                sent += 1;
            }
        }
        Ok(sent)
    }

    /// On each live flow, a request (`GET /poison`) about 2^31 ahead, four ways.
    pub fn far_ahead(raw: &RawSender, flows: &[TcpStream], dst: SocketAddrV4) -> Result<u64> {
        let poison = b"GET /poison HTTP/1.1\r\nHost: httpbin:8000\r\n\r\n";
        let mut sent = 0;
        for (src, live) in places(flows)? {
            for ahead in [1u32 << 31, (1 << 31) - 1, (1 << 31) + 1, (1 << 31) - 1500] {
                raw.send(&Forged {
                    src,
                    dst,
                    seq: live.send_next.wrapping_add(ahead),
                    ack: live.receive_next,
                    flags: ACK | PSH,
                    window: 502,
                    payload: poison,
                })?;
                sent += 1;
            }
        }
        Ok(sent)
    }

    /// On each live flow, RSTs (with and without ACK) in v1's window but not at its left edge
    /// (v1 answers with a challenge ACK, RFC 5961) and outside it, before and after.
    pub fn off_window_rsts(raw: &RawSender, flows: &[TcpStream], dst: SocketAddrV4) -> Result<u64> {
        let mut sent = 0;
        for (src, live) in places(flows)? {
            for offset in [
                1u32,
                1000,
                1 << 20,
                1 << 30,
                1 << 31,
                0u32.wrapping_sub(1000),
            ] {
                for flags in [RST, RST | ACK] {
                    raw.send(&Forged {
                        src,
                        dst,
                        seq: live.send_next.wrapping_add(offset),
                        ack: live.receive_next,
                        flags,
                        window: 0,
                        payload: &[],
                    })?;
                    sent += 1;
                }
            }
        }
        Ok(sent)
    }

    /// `bytes` of `GET \n` lines on a real connection (to a [`Discard`] server), then waits
    /// until the server has read them all and closed: v1 acknowledged every byte. Returns the
    /// number of full-sized segments that makes.
    pub fn garbage_lines(stream: &mut TcpStream, bytes: usize) -> Result<u64> {
        let garbage: Vec<u8> = b"GET \n".iter().copied().cycle().take(bytes).collect();
        stream.write_all(&garbage)?;
        stream.shutdown(std::net::Shutdown::Write)?;
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest);
        Ok(bytes.div_ceil(1448) as u64)
    }

    fn places(flows: &[TcpStream]) -> Result<Vec<(SocketAddrV4, LiveSequence)>> {
        flows
            .iter()
            .map(|s| Ok((local_v4(s)?, live_sequence(s)?)))
            .collect()
    }
}

/// Makes `ns` send no TCP RSTs of its own (an nft rule on its output hook), as a flooder
/// that never answers v1's SYN-ACKs does.
pub fn drop_own_rsts(ns: &Netns) -> Result<()> {
    let chain = "{ type filter hook output priority 0 ; }";
    for rule in [
        &["nft", "add", "table", "inet", "flood"][..],
        &["nft", "add", "chain", "inet", "flood", "out", chain],
        &[
            "nft", "add", "rule", "inet", "flood", "out", "tcp", "flags", "rst", "drop",
        ],
    ] {
        ns.exec_ok(rule)?;
    }
    Ok(())
}

/// User plus system CPU time `pid` (all its threads) has used so far, from `/proc/PID/stat`.
pub fn cpu_time(pid: u32) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("read /proc/{pid}/stat"))?;
    // Fields after the command name (which is in parentheses and may hold spaces): state is
    // field 3, utime 14 and stime 15.
    let after_name = stat
        .rsplit_once(") ")
        .map(|(_, rest)| rest)
        .with_context(|| format!("odd /proc/{pid}/stat: {stat}"))?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |index: usize| -> Result<u64> {
        fields
            .get(index - 3)
            .and_then(|field| field.parse().ok())
            .with_context(|| format!("field {index} of /proc/{pid}/stat: {stat}"))
    };
    let total = ticks(14)? + ticks(15)?;
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let per_second = u64::try_from(per_second)
        .ok()
        .filter(|hz| *hz > 0)
        .unwrap_or(100);
    Ok(Duration::from_nanos(total * 1_000_000_000 / per_second))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_of_a_segment_with_its_checksum_verifies_to_zero() {
        let segment = Forged {
            src: "198.18.1.2:40000".parse().expect("addr"),
            dst: "198.19.0.10:8000".parse().expect("addr"),
            seq: 0x0102_0304,
            ack: 0xa0b0_c0d0,
            flags: ACK | PSH,
            window: 502,
            payload: b"GET / HTTP/1.1\r\n\r\n!",
        };
        let packet = segment.packet();
        assert_eq!(packet.len(), 40 + segment.payload.len());
        assert_eq!(&packet[2..4], &(packet.len() as u16).to_be_bytes());
        assert_eq!(
            tcp_checksum(*segment.src.ip(), *segment.dst.ip(), &packet[20..]),
            0,
            "a correct checksum sums to all ones"
        );
    }

    #[test]
    fn cpu_time_of_this_process_grows_with_work() {
        let before = cpu_time(std::process::id()).expect("stat");
        let start = std::time::Instant::now();
        let mut x: u64 = 1;
        while start.elapsed() < Duration::from_millis(300) {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let after = cpu_time(std::process::id()).expect("stat");
        assert!(
            after >= before + Duration::from_millis(100),
            "{before:?} -> {after:?}"
        );
    }
}
