//! Finding a pod's interface on the node: the node-side veth whose peer is the pod's interface,
//! matched by the pod's network namespace (its id as the node sees it) and the peer's ifindex,
//! both read over rtnetlink from the node's namespace. Never by name, which each CNI prefixes
//! its own way and lets users change; no entering other namespaces either (CAP_NET_ADMIN is
//! enough to read another namespace's addresses by its id).

use std::{
    collections::{BTreeMap, BTreeSet},
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

/// A link in the node's namespace, with where its peer lives (for veths and the like).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeLink {
    pub ifindex: u32,
    pub name: String,
    /// The peer's namespace id as this namespace numbers it (`IFLA_LINK_NETNSID`); `None`
    /// when the peer is in this namespace or the link has none.
    pub peer_netnsid: Option<i32>,
    /// The peer's ifindex in its namespace (`IFLA_LINK`).
    pub peer_ifindex: Option<u32>,
}

/// An address on an interface of a peer namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddress {
    pub ifindex: u32,
    pub addr: IpAddr,
}

/// Where a pod address lives, seen from the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInterface {
    /// The node-side interface to attach to.
    pub node_ifindex: u32,
    pub node_name: String,
    /// The pod's namespace id, as the node numbers it.
    pub netnsid: i32,
    /// The pod-side interface's ifindex, in the pod's namespace.
    pub pod_ifindex: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum InterfaceError {
    #[error("netlink socket: {0}")]
    Socket(#[source] io::Error),
    #[error("netlink {request}: {source}")]
    Request {
        request: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("netlink {request}: malformed reply ({reason})")]
    Malformed {
        request: &'static str,
        reason: &'static str,
    },
}

/// Pure: for each of `ips`, the node link whose peer (namespace id, ifindex) carries it.
/// Addresses found in no peer namespace, or on an interface no node link pairs with (a pod on
/// a bridge's far side, a host-network address), are left out.
pub fn match_pod_interfaces(
    links: &[NodeLink],
    peer_addresses: &BTreeMap<i32, Vec<PeerAddress>>,
    ips: &BTreeSet<IpAddr>,
) -> BTreeMap<IpAddr, PodInterface> {
    let mut found = BTreeMap::new();
    for (&netnsid, addresses) in peer_addresses {
        for address in addresses.iter().filter(|a| ips.contains(&a.addr)) {
            let link = links.iter().find(|link| {
                link.peer_netnsid == Some(netnsid) && link.peer_ifindex == Some(address.ifindex)
            });
            if let Some(link) = link {
                found.insert(
                    address.addr,
                    PodInterface {
                        node_ifindex: link.ifindex,
                        node_name: link.name.clone(),
                        netnsid,
                        pod_ifindex: address.ifindex,
                    },
                );
            }
        }
    }
    found
}

/// Reads the current namespace's links and each peer namespace's addresses, and matches
/// `ips` to their node-side interfaces (see [`match_pod_interfaces`]).
pub fn pod_interfaces(
    ips: &BTreeSet<IpAddr>,
) -> Result<BTreeMap<IpAddr, PodInterface>, InterfaceError> {
    let socket = Netlink::open()?;
    let links = socket.links()?;
    let mut peer_addresses = BTreeMap::new();
    for netnsid in links.iter().filter_map(|l| l.peer_netnsid) {
        if let std::collections::btree_map::Entry::Vacant(entry) = peer_addresses.entry(netnsid) {
            entry.insert(socket.addresses_in(netnsid)?);
        }
    }
    Ok(match_pod_interfaces(&links, &peer_addresses, ips))
}

/// The file, among the namespace files in `dir` (a container runtime's `/run/netns`), of the
/// network namespace the current one numbers `netnsid`: what entering a pod's namespace
/// needs, found without its processes (no hostPID). `None` when no file there is that one.
pub fn netns_file(
    dir: &std::path::Path,
    netnsid: i32,
) -> Result<Option<std::fs::File>, InterfaceError> {
    let socket = Netlink::open()?;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(None);
    };
    for entry in entries.flatten() {
        let Ok(file) = std::fs::File::open(entry.path()) else {
            continue;
        };
        if socket.netnsid_of(&file)? == Some(netnsid) {
            return Ok(Some(file));
        }
    }
    Ok(None)
}

// === rtnetlink, by hand: two dump requests, one plain request and their replies ===

const NLMSG_HDR: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const RTM_NEWADDR: u16 = 20;
const RTM_GETADDR: u16 = 22;
const IFINFOMSG_LEN: usize = 16;
const IFADDRMSG_LEN: usize = 8;
const IFLA_IFNAME: u16 = 3;
const IFLA_LINK: u16 = 5;
const IFLA_LINK_NETNSID: u16 = 37;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_TARGET_NETNSID: u16 = 10;
const RTM_NEWNSID: u16 = 88;
const RTM_GETNSID: u16 = 90;
const RTGENMSG_LEN: usize = 4;
const NETNSA_NSID: u16 = 1;
const NETNSA_FD: u16 = 3;
const SOL_NETLINK: libc::c_int = 270;
const NETLINK_GET_STRICT_CHK: libc::c_int = 12;
/// Replies are read into a buffer this large; a dump never sends more per datagram.
const RECV_BUFFER: usize = 64 * 1024;

struct Netlink {
    fd: OwnedFd,
}

impl Netlink {
    fn open() -> Result<Netlink, InterfaceError> {
        // SAFETY: socket(2) with constant arguments; the fd is owned below.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(InterfaceError::Socket(io::Error::last_os_error()));
        }
        // SAFETY: fd is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let on: libc::c_int = 1;
        // Strict checking is what makes the kernel honour IFA_TARGET_NETNSID in a dump.
        // SAFETY: setsockopt reads one c_int from a live local.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                SOL_NETLINK,
                NETLINK_GET_STRICT_CHK,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(InterfaceError::Socket(io::Error::last_os_error()));
        }
        Ok(Netlink { fd })
    }

    fn links(&self) -> Result<Vec<NodeLink>, InterfaceError> {
        let request = dump_request(RTM_GETLINK, &[0u8; IFINFOMSG_LEN], &[]);
        let mut links = Vec::new();
        self.dump("RTM_GETLINK", &request, RTM_NEWLINK, |body| {
            if let Some(link) = parse_link(body) {
                links.push(link);
            }
        })?;
        Ok(links)
    }

    fn addresses_in(&self, netnsid: i32) -> Result<Vec<PeerAddress>, InterfaceError> {
        let attr = attribute(IFA_TARGET_NETNSID, &netnsid.to_ne_bytes());
        let request = dump_request(RTM_GETADDR, &[0u8; IFADDRMSG_LEN], &attr);
        let mut addresses = Vec::new();
        self.dump("RTM_GETADDR", &request, RTM_NEWADDR, |body| {
            addresses.extend(parse_address(body));
        })?;
        Ok(addresses)
    }

    /// The id this namespace gives the namespace of `file`; `None` if it gave it none (it
    /// numbers only the namespaces it has links to) or the file is no namespace.
    fn netnsid_of(&self, file: &std::fs::File) -> Result<Option<i32>, InterfaceError> {
        let fd = u32::try_from(file.as_raw_fd()).unwrap_or(u32::MAX);
        let attr = attribute(NETNSA_FD, &fd.to_ne_bytes());
        let mut request = dump_request(RTM_GETNSID, &[0u8; RTGENMSG_LEN], &attr);
        // A plain request, not a dump: NLM_F_REQUEST alone.
        request[6..8].copy_from_slice(&NLM_F_REQUEST.to_ne_bytes());
        let mut id = None;
        let answered = self.dump("RTM_GETNSID", &request, RTM_NEWNSID, |body| {
            id = body
                .get(RTGENMSG_LEN..)
                .into_iter()
                .flat_map(attributes)
                .find(|(kind, _)| *kind == NETNSA_NSID)
                .and_then(|(_, payload)| u32_at(payload, 0))
                .map(|id| id as i32)
                .filter(|id| *id >= 0);
        });
        match answered {
            Ok(()) => Ok(id),
            // Not a network namespace (EINVAL, EBADF...): not the one.
            Err(InterfaceError::Request { .. }) => Ok(None),
            Err(other) => Err(other),
        }
    }

    /// Sends a dump request and hands each reply body of type `reply` to `each`, until done.
    fn dump(
        &self,
        name: &'static str,
        request: &[u8],
        reply: u16,
        mut each: impl FnMut(&[u8]),
    ) -> Result<(), InterfaceError> {
        let failed = |source| InterfaceError::Request {
            request: name,
            source,
        };
        // Not a dump (NLM_F_REQUEST alone): one reply, no NLMSG_DONE.
        let plain = u16_at(request, 6) == Some(NLM_F_REQUEST);
        let malformed = |reason| InterfaceError::Malformed {
            request: name,
            reason,
        };
        // SAFETY: a zeroed sockaddr_nl is valid; family set below (pid 0: the kernel).
        let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: sendto reads `request` and the address struct, both alive for the call.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                request.as_ptr().cast(),
                request.len(),
                0,
                (&kernel as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(failed(io::Error::last_os_error()));
        }
        let mut buffer = vec![0u8; RECV_BUFFER];
        loop {
            // SAFETY: recv writes at most buffer.len() bytes into the buffer we own.
            let len = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buffer.as_mut_ptr().cast(),
                    buffer.len(),
                    libc::MSG_TRUNC,
                )
            };
            let len = usize::try_from(len).map_err(|_| failed(io::Error::last_os_error()))?;
            if len > buffer.len() {
                return Err(malformed("reply larger than the receive buffer"));
            }
            for message in messages(&buffer[..len]) {
                let (kind, body) = message.ok_or_else(|| malformed("truncated message"))?;
                match kind {
                    NLMSG_DONE => return Ok(()),
                    NLMSG_ERROR => {
                        let errno = body
                            .get(..4)
                            .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                            .ok_or_else(|| malformed("short error message"))?;
                        if errno != 0 {
                            return Err(failed(io::Error::from_raw_os_error(-errno)));
                        }
                    }
                    kind if kind == reply => {
                        each(body);
                        // A plain request has one reply and no NLMSG_DONE after it.
                        if plain {
                            return Ok(());
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

fn dump_request(kind: u16, header: &[u8], attributes: &[u8]) -> Vec<u8> {
    let len = NLMSG_HDR + header.len() + attributes.len();
    let mut message = Vec::with_capacity(len);
    message.extend_from_slice(&(len as u32).to_ne_bytes());
    message.extend_from_slice(&kind.to_ne_bytes());
    message.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    message.extend_from_slice(&1u32.to_ne_bytes()); // sequence number
    message.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel assigns ours
    message.extend_from_slice(header);
    message.extend_from_slice(attributes);
    message
}

fn attribute(kind: u16, payload: &[u8]) -> Vec<u8> {
    let len = 4 + payload.len();
    let mut attr = Vec::with_capacity(align(len));
    attr.extend_from_slice(&(len as u16).to_ne_bytes());
    attr.extend_from_slice(&kind.to_ne_bytes());
    attr.extend_from_slice(payload);
    attr.resize(align(len), 0);
    attr
}

fn align(len: usize) -> usize {
    (len + 3) & !3
}

fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

/// The netlink messages in one datagram as (type, body); `None` for one that does not fit.
fn messages(datagram: &[u8]) -> impl Iterator<Item = Option<(u16, &[u8])>> {
    let mut rest = datagram;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let Some(len) = u32_at(rest, 0).map(|l| l as usize) else {
            rest = &[];
            return Some(None);
        };
        let (Some(kind), true) = (u16_at(rest, 4), (NLMSG_HDR..=rest.len()).contains(&len)) else {
            rest = &[];
            return Some(None);
        };
        let body = &rest[NLMSG_HDR..len];
        rest = rest.get(align(len)..).unwrap_or_default();
        Some(Some((kind, body)))
    })
}

/// The (type, payload) attributes after a fixed header; stops at the first malformed one.
fn attributes(mut rest: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let len = usize::from(u16_at(rest, 0)?);
        let kind = u16_at(rest, 2)?;
        if len < 4 || len > rest.len() {
            return None;
        }
        let payload = &rest[4..len];
        rest = rest.get(align(len)..).unwrap_or_default();
        Some((kind, payload))
    })
}

fn parse_link(body: &[u8]) -> Option<NodeLink> {
    let ifindex = u32::try_from(i32::from_ne_bytes(body.get(4..8)?.try_into().ok()?)).ok()?;
    let mut link = NodeLink {
        ifindex,
        name: String::new(),
        peer_netnsid: None,
        peer_ifindex: None,
    };
    for (kind, payload) in attributes(body.get(IFINFOMSG_LEN..)?) {
        match kind {
            IFLA_IFNAME => {
                let name = payload.split(|b| *b == 0).next().unwrap_or_default();
                link.name = String::from_utf8_lossy(name).into_owned();
            }
            IFLA_LINK => link.peer_ifindex = u32_at(payload, 0),
            IFLA_LINK_NETNSID => {
                link.peer_netnsid = u32_at(payload, 0).map(|id| id as i32).filter(|id| *id >= 0)
            }
            _ => {}
        }
    }
    Some(link)
}

fn parse_address(body: &[u8]) -> Option<PeerAddress> {
    let family = *body.first()?;
    let ifindex = u32_at(body, 4)?;
    let mut local = None;
    let mut address = None;
    for (kind, payload) in attributes(body.get(IFADDRMSG_LEN..)?) {
        let addr = match (i32::from(family), payload.len()) {
            (libc::AF_INET, 4) => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(payload).ok()?)),
            (libc::AF_INET6, 16) => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(payload).ok()?)),
            _ => continue,
        };
        match kind {
            IFA_LOCAL => local = Some(addr),
            IFA_ADDRESS => address = Some(addr),
            _ => {}
        }
    }
    // On point-to-point links IFA_ADDRESS is the far end; IFA_LOCAL is ours when present.
    Some(PeerAddress {
        ifindex,
        addr: local.or(address)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(ifindex: u32, name: &str, peer: Option<(i32, u32)>) -> NodeLink {
        NodeLink {
            ifindex,
            name: name.into(),
            peer_netnsid: peer.map(|p| p.0),
            peer_ifindex: peer.map(|p| p.1),
        }
    }

    #[test]
    fn pods_are_matched_by_namespace_and_peer_ifindex_not_by_name() {
        // Every pod's interface is ifindex 2 in its own namespace; only the namespace id tells
        // them apart. Names are whatever the CNI chose.
        let links = [
            link(1, "lo", None),
            link(7, "cali1234", Some((0, 2))),
            link(8, "lxcabcd", Some((1, 2))),
            link(9, "eth0", None),
        ];
        let peer_addresses = BTreeMap::from([
            (
                0,
                vec![
                    PeerAddress {
                        ifindex: 1,
                        addr: "127.0.0.1".parse().unwrap(),
                    },
                    PeerAddress {
                        ifindex: 2,
                        addr: "10.244.1.5".parse().unwrap(),
                    },
                    PeerAddress {
                        ifindex: 2,
                        addr: "fd00:10:244:1::5".parse().unwrap(),
                    },
                ],
            ),
            (
                1,
                vec![PeerAddress {
                    ifindex: 2,
                    addr: "10.244.1.6".parse().unwrap(),
                }],
            ),
        ]);
        let ips: BTreeSet<IpAddr> = ["10.244.1.5", "fd00:10:244:1::5", "10.244.1.6", "10.244.9.9"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let found = match_pod_interfaces(&links, &peer_addresses, &ips);
        let by_ip = |ip: &str| {
            found
                .get(&ip.parse::<IpAddr>().unwrap())
                .map(|p| p.node_ifindex)
        };
        assert_eq!(by_ip("10.244.1.5"), Some(7));
        assert_eq!(by_ip("fd00:10:244:1::5"), Some(7));
        assert_eq!(by_ip("10.244.1.6"), Some(8));
        assert_eq!(by_ip("10.244.9.9"), None, "an address in no peer namespace");
        assert_eq!(found.len(), 3);
    }

    #[test]
    fn replies_are_parsed_and_malformed_ones_stop_cleanly() {
        let mut body = vec![0u8; IFINFOMSG_LEN];
        body[4..8].copy_from_slice(&7i32.to_ne_bytes());
        body.extend(attribute(IFLA_IFNAME, b"veth0\0"));
        body.extend(attribute(IFLA_LINK, &2u32.to_ne_bytes()));
        body.extend(attribute(IFLA_LINK_NETNSID, &3i32.to_ne_bytes()));
        let message = dump_request(RTM_NEWLINK, &body, &[]);
        let parsed: Vec<_> = messages(&message).collect();
        assert_eq!(parsed.len(), 1);
        let (kind, reply) = parsed[0].expect("whole message");
        assert_eq!(kind, RTM_NEWLINK);
        assert_eq!(parse_link(reply), Some(link(7, "veth0", Some((3, 2)))));

        let mut addr = vec![libc::AF_INET as u8, 32, 0, 0];
        addr.extend_from_slice(&2u32.to_ne_bytes());
        addr.extend(attribute(IFA_ADDRESS, &[10, 244, 1, 5]));
        assert_eq!(
            parse_address(&addr),
            Some(PeerAddress {
                ifindex: 2,
                addr: "10.244.1.5".parse().unwrap()
            })
        );

        // A cut datagram is reported as a truncated message, never read past its end; cut
        // bodies parse to fewer attributes or nothing, without panicking.
        for cut in 1..message.len() {
            assert_eq!(
                messages(&message[..cut]).collect::<Vec<_>>(),
                vec![None],
                "cut at {cut}"
            );
            let _ = parse_link(&body[..cut.min(body.len())]);
            let _ = parse_address(&addr[..cut.min(addr.len())]);
        }
        assert_eq!(messages(&[]).count(), 0);
        // A length field that claims more than is there.
        let mut lying = message.clone();
        lying[0..4].copy_from_slice(&(message.len() as u32 + 100).to_ne_bytes());
        assert_eq!(messages(&lying).collect::<Vec<_>>(), vec![None]);
    }
}
