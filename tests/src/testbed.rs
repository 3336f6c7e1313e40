//! An emulated Kubernetes node: a "node" network namespace that routes between "pod"
//! namespaces, each joined to it by a veth pair, plus kube-proxy-like service VIPs.
//!
//! Address plan (the same in every test-bed; namespaces keep concurrent test-beds apart):
//!
//! | what                  | IPv4               | IPv6                      |
//! |-----------------------|--------------------|---------------------------|
//! | pod `i` (from 1)      | `198.18.i.2/24`    | `fd6d:6972:0:i::2/64`     |
//! | its gateway (node)    | `198.18.i.1/24`    | `fd6d:6972:0:i::1/64`     |
//! | service VIPs          | `198.19.0.0/16`    | `fd6d:6972:ffff::/48`     |
//!
//! 198.18.0.0/15 is reserved for benchmarking (RFC 2544) and fd00::/8 is unique-local, so no
//! packet of ours can be mistaken for, or routed to, a real network.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{bail, Context as _, Result};

use crate::cleanup::{self, NETNS_ETC_DIR};
use crate::netns::{ip, Netns};

/// Most hosts one test-bed can hold: pod `i` uses the /24 `198.18.i.0`.
pub const MAX_HOSTS: usize = 254;

/// Numbers the test-beds of this process so their names differ.
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// One emulated node and its pods. Dropping it kills every process in its namespaces and deletes
/// them (and with them every veth), their `/etc/netns` directories, and its log directory
/// (which is kept, and its path printed, when the thread is panicking, to help debugging).
#[derive(Debug)]
pub struct Testbed {
    id: u64,
    prefix: String,
    node: Netns,
    hosts: Vec<Host>,
    log_dir: PathBuf,
    /// Extra `/etc/hosts` lines per host namespace, rewritten in full on each addition.
    host_entries: BTreeMap<String, Vec<(String, IpAddr)>>,
    kept: bool,
}

/// A pod: a namespace joined to the node by a veth pair.
#[derive(Clone, Debug)]
pub struct Host {
    name: String,
    ns: Netns,
    ipv4: Ipv4Addr,
    ipv6: Ipv6Addr,
    node_ifname: String,
    node_ifindex: u32,
}

/// What remains of a test-bed after [`Testbed::keep`]: the names needed to inspect it and to
/// remove it later.
#[derive(Clone, Debug)]
pub struct Kept {
    /// Name prefix shared by its namespaces and `/etc/netns` directories.
    pub prefix: String,
    /// Its namespaces.
    pub namespaces: Vec<String>,
    /// Where its processes log.
    pub log_dir: PathBuf,
}

impl Testbed {
    /// Creates an ephemeral test-bed (namespaces `mirror-<pid>-<n>-*`) after removing leftovers
    /// of dead processes.
    pub fn new() -> Result<Self> {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        Self::create(id, cleanup::pid_prefix(std::process::id(), id))
    }

    /// Creates a test-bed meant to be kept after this process ends (the demo): its namespaces are
    /// `mirror-<label>-*`, never taken for stale, and removed by [`crate::remove_label`]. Fails if
    /// a set-up with this label already exists.
    pub fn with_label(label: &str) -> Result<Self> {
        let prefix = cleanup::label_prefix(label)?;
        let existing = cleanup::namespaces_with_prefix(&prefix)?;
        if !existing.is_empty() {
            bail!("a set-up labelled {label:?} already exists ({existing:?}); remove it first");
        }
        Self::create(NEXT_ID.fetch_add(1, Ordering::Relaxed), prefix)
    }

    fn create(id: u64, prefix: String) -> Result<Self> {
        match cleanup::cleanup_stale() {
            Ok(removed) if !removed.is_empty() => {
                eprintln!("mirror-tests: removed stale namespaces {removed:?}");
            }
            Ok(_) => {}
            Err(err) => eprintln!("mirror-tests: stale cleanup incomplete: {err:#}"),
        }
        let log_dir = cleanup::log_dir_for(&prefix);
        if log_dir.exists() {
            std::fs::remove_dir_all(&log_dir)
                .with_context(|| format!("clear {}", log_dir.display()))?;
        }
        std::fs::create_dir_all(&log_dir)
            .with_context(|| format!("create {}", log_dir.display()))?;
        // Registered before anything exists, so a signal during set-up still cleans up.
        cleanup::register(id, &prefix);
        let node_name = format!("{prefix}node");
        // From here on, an error drops `testbed`, which removes whatever was made.
        let testbed = Self {
            id,
            node: Netns::new(&node_name, &log_dir),
            prefix,
            hosts: Vec::new(),
            log_dir,
            host_entries: BTreeMap::new(),
            kept: false,
        };
        create_namespace(&testbed.node)?;
        // The node routes between pods, as a Kubernetes node does.
        write_sysctls(
            &testbed.node,
            &[
                ("net/ipv4/ip_forward", "1"),
                ("net/ipv6/conf/all/forwarding", "1"),
            ],
        )?;
        Ok(testbed)
    }

    /// Adds a pod namespace called `<prefix><name>` and joins it to the node. `name` is 1-12
    /// lowercase letters or digits (it also names the node-side interface, limited to 15 bytes).
    pub fn add_host(&mut self, name: &str) -> Result<Host> {
        let valid = !name.is_empty()
            && name.len() <= 12
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        if !valid || name == "node" {
            bail!("host name {name:?} must be 1-12 lowercase letters/digits and not \"node\"");
        }
        if self.hosts.iter().any(|h| h.name == name) {
            bail!("host {name:?} already exists");
        }
        if self.hosts.len() >= MAX_HOSTS {
            bail!("a test-bed holds at most {MAX_HOSTS} hosts");
        }
        let index = u8::try_from(self.hosts.len() + 1).expect("bounded by MAX_HOSTS");
        let ns = Netns::new(&format!("{}{name}", self.prefix), &self.log_dir);
        create_namespace(&ns)?;

        let node = self.node.name();
        let pod = ns.name();
        let node_ifname = node_ifname(index, name);
        let (gw4, ipv4) = (pod_v4(index, 1), pod_v4(index, 2));
        let (gw6, ipv6) = (pod_v6(index, 1), pod_v6(index, 2));
        // Created inside the node namespace with the peer placed straight into the pod, so the
        // root namespace never holds either end.
        ip(&[
            "-n",
            node,
            "link",
            "add",
            &node_ifname,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            pod,
        ])?;
        ip(&[
            "-n",
            node,
            "addr",
            "add",
            &format!("{gw4}/24"),
            "dev",
            &node_ifname,
        ])?;
        ip(&[
            "-n",
            node,
            "-6",
            "addr",
            "add",
            &format!("{gw6}/64"),
            "dev",
            &node_ifname,
            "nodad",
        ])?;
        ip(&["-n", node, "link", "set", &node_ifname, "up"])?;
        ip(&[
            "-n",
            pod,
            "addr",
            "add",
            &format!("{ipv4}/24"),
            "dev",
            "eth0",
        ])?;
        ip(&[
            "-n",
            pod,
            "-6",
            "addr",
            "add",
            &format!("{ipv6}/64"),
            "dev",
            "eth0",
            "nodad",
        ])?;
        ip(&["-n", pod, "link", "set", "eth0", "up"])?;
        ip(&[
            "-n",
            pod,
            "route",
            "add",
            "default",
            "via",
            &gw4.to_string(),
        ])?;
        ip(&[
            "-n",
            pod,
            "-6",
            "route",
            "add",
            "default",
            "via",
            &gw6.to_string(),
        ])?;
        let node_ifindex = self.node.ifindex(&node_ifname)?;
        let host = Host {
            name: name.to_owned(),
            ns,
            ipv4,
            ipv6,
            node_ifname,
            node_ifindex,
        };
        self.hosts.push(host.clone());
        Ok(host)
    }

    /// Makes `vip:port` lead to `backend:backend_port` the way kube-proxy does: DNAT in the
    /// node's prerouting (traffic from pods) and output (traffic from the node itself) hooks.
    /// The VIP's family picks the backend's address; VIPs must lie in `198.19.0.0/16` or
    /// `fd6d:6972:ffff::/48`. Returns the service address.
    pub fn add_service(
        &mut self,
        vip: IpAddr,
        port: u16,
        backend: &Host,
        backend_port: u16,
    ) -> Result<SocketAddr> {
        let (family_match, target) = match vip {
            IpAddr::V4(v4) => {
                if v4.octets()[..2] != [198, 19] {
                    bail!("IPv4 VIP {v4} is outside 198.19.0.0/16");
                }
                (
                    format!("ip daddr {v4}"),
                    format!("dnat ip to {}:{backend_port}", backend.ipv4),
                )
            }
            IpAddr::V6(v6) => {
                if v6.segments()[..3] != [0xfd6d, 0x6972, 0xffff] {
                    bail!("IPv6 VIP {v6} is outside fd6d:6972:ffff::/48");
                }
                (
                    format!("ip6 daddr {v6}"),
                    format!("dnat ip6 to [{}]:{backend_port}", backend.ipv6),
                )
            }
        };
        let rule = format!("{family_match} tcp dport {port} {target}");
        // Declaring the table and chains again is a no-op, so each service is one atomic file.
        let ruleset = format!(
            "table inet mirror_services {{\n\
             \tchain prerouting {{ type nat hook prerouting priority dstnat; policy accept; }}\n\
             \tchain output {{ type nat hook output priority -100; policy accept; }}\n\
             }}\n\
             add rule inet mirror_services prerouting {rule}\n\
             add rule inet mirror_services output {rule}\n"
        );
        let file = self.log_dir.join(format!("service-{vip}-{port}.nft"));
        std::fs::write(&file, ruleset).with_context(|| format!("write {}", file.display()))?;
        self.node
            .exec_ok(&[Path::new("nft"), Path::new("-f"), &file])
            .context("nft (is nftables installed?)")?;
        Ok(SocketAddr::new(vip, port))
    }

    /// Makes `name` resolve to `addr` for commands run in `host` through `ip netns exec` (which
    /// bind-mounts `/etc/netns/<ns>/hosts` over `/etc/hosts`). Rust threads from
    /// [`Netns::thread`] do not see it: they should use addresses.
    pub fn add_hosts_entry(&mut self, host: &Host, name: &str, addr: IpAddr) -> Result<()> {
        if name.is_empty() || name.contains(char::is_whitespace) {
            bail!("bad host name {name:?}");
        }
        let entries = self
            .host_entries
            .entry(host.ns.name().to_owned())
            .or_default();
        entries.push((name.to_owned(), addr));
        let mut text = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost\n");
        for (name, addr) in entries.iter() {
            text.push_str(&format!("{addr}\t{name}\n"));
        }
        let dir = Path::new(NETNS_ETC_DIR).join(host.ns.name());
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        std::fs::write(dir.join("hosts"), text)
            .with_context(|| format!("write {}/hosts", dir.display()))
    }

    /// The node namespace (where pods' veth peers live and where the agent attaches).
    pub fn node(&self) -> &Netns {
        &self.node
    }

    /// The hosts added so far, in order.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// All namespaces of this test-bed: the node first, then the hosts.
    pub fn namespaces(&self) -> Vec<String> {
        std::iter::once(self.node.name())
            .chain(self.hosts.iter().map(|h| h.ns.name()))
            .map(str::to_owned)
            .collect()
    }

    /// Where spawned processes of this test-bed write their logs.
    pub fn log_dir(&self) -> &Path {
        &self.log_dir
    }

    /// Leaves everything in place when the test-bed goes away, and says what was left. Processes
    /// survive only if their guards are detached ([`crate::Process::detach`]). A labelled
    /// test-bed ([`Testbed::with_label`]) stays until [`crate::remove_label`]; an ephemeral one
    /// only until a later run's stale-cleanup notices this process is gone.
    pub fn keep(mut self) -> Kept {
        self.kept = true;
        cleanup::unregister(self.id);
        Kept {
            prefix: self.prefix.clone(),
            namespaces: self.namespaces(),
            log_dir: self.log_dir.clone(),
        }
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        if let Err(err) = cleanup::remove_prefix(&self.prefix) {
            eprintln!("mirror-tests: {err:#}");
        }
        cleanup::unregister(self.id);
        if std::thread::panicking() {
            eprintln!(
                "mirror-tests: keeping logs of the failed test-bed in {}",
                self.log_dir.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.log_dir);
        }
    }
}

impl Host {
    /// The name given to [`Testbed::add_host`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The host's namespace, to run things in.
    pub fn ns(&self) -> &Netns {
        &self.ns
    }

    /// Address of its `eth0`.
    pub fn ipv4(&self) -> Ipv4Addr {
        self.ipv4
    }

    /// IPv6 address of its `eth0`.
    pub fn ipv6(&self) -> Ipv6Addr {
        self.ipv6
    }

    /// Name of the node-side end of its veth (in the node namespace): where a TC program sees the
    /// pod's traffic, as on a Kubernetes node.
    pub fn node_ifname(&self) -> &str {
        &self.node_ifname
    }

    /// Interface index of [`Host::node_ifname`] in the node namespace.
    pub fn node_ifindex(&self) -> u32 {
        self.node_ifindex
    }
}

/// `n<index>-<name>`, cut to the kernel's 15-byte limit; the untruncated index keeps it unique.
fn node_ifname(index: u8, name: &str) -> String {
    let mut ifname = format!("n{index}-{name}");
    ifname.truncate(15);
    ifname
}

fn pod_v4(index: u8, last: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, index, last)
}

fn pod_v6(index: u8, last: u16) -> Ipv6Addr {
    Ipv6Addr::new(0xfd6d, 0x6972, 0, u16::from(index), 0, 0, 0, last)
}

/// Creates a namespace with loopback up and IPv6 duplicate address detection off (addresses are
/// unique by construction, and DAD would hold them "tentative" for a second or more).
fn create_namespace(ns: &Netns) -> Result<()> {
    ip(&["netns", "add", ns.name()])?;
    write_sysctls(
        ns,
        &[
            ("net/ipv6/conf/all/accept_dad", "0"),
            ("net/ipv6/conf/default/accept_dad", "0"),
        ],
    )?;
    ip(&["-n", ns.name(), "link", "set", "lo", "up"])
}

/// Writes `/proc/sys` entries from inside `ns` (the `net` ones are per namespace).
fn write_sysctls(ns: &Netns, settings: &[(&'static str, &'static str)]) -> Result<()> {
    let settings = settings.to_vec();
    ns.run(move || -> Result<()> {
        for (key, value) in settings {
            let path = Path::new("/proc/sys").join(key);
            std::fs::write(&path, value).with_context(|| format!("write {}", path.display()))?;
        }
        Ok(())
    })?
    .with_context(|| format!("sysctls in {}", ns.name()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ifnames_fit_ifnamsiz_and_stay_unique() {
        assert_eq!(node_ifname(1, "client"), "n1-client");
        assert_eq!(node_ifname(254, "abcdefghijkl"), "n254-abcdefghij");
        assert_ne!(
            node_ifname(25, "abcdefghijkl"),
            node_ifname(254, "abcdefghijkl")
        );
    }
}
