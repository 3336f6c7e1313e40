//! The bench's test-bed: client, v1 and v2 pods on one node, each backend running on both
//! pods, and kube-proxy-like service VIPs leading to v1.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use anyhow::{Context as _, Result};
use mirror_tests::{hostile::Discard, Host, Httpbin, Netns, Sink, Testbed};

use super::nginx::{self, Nginx};

/// Port of the fast (nginx) backend in v1 and v2; httpbin has port 80.
const FAST_PORT: u16 = 8080;
/// Port of the digest sink used by the large-body runs.
pub const SINK_PORT: u16 = 9090;
/// Port every service VIP exposes, as in the relay tests' `httpbin:8000`.
pub const SERVICE_PORT: u16 = 8000;
/// A port of the fast backend's VIP that the agent is not told about: traffic the kernel
/// program sees but must not match.
pub const UNMATCHED_PORT: u16 = 9000;
/// Port of the nginx mirroring proxy on the node (the client's gateway address).
const NGINX_PROXY_PORT: u16 = 8081;
/// Port of the Envoy mirroring proxy on the node.
const ENVOY_PROXY_PORT: u16 = 8082;
/// Host header every client request carries; the shadow gets it with `-shadow` added.
pub const HOST_HEADER: &str = "httpbin:8000";
/// What the mirrors send v2 instead (Envoy's rule), and what the ideal mode's second load
/// generator sends.
pub const SHADOW_HOST_HEADER: &str = "httpbin-shadow:8000";

/// The backends the primary and shadow run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Backend {
    /// nginx answering 3 bytes: the backend costs little, so mirroring's cost shows.
    Fast,
    /// httpbin under one gunicorn worker: a realistic, slow service.
    Httpbin,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Fast => "fast",
            Backend::Httpbin => "httpbin",
        }
    }

    fn port(self) -> u16 {
        match self {
            Backend::Fast => FAST_PORT,
            Backend::Httpbin => mirror_tests::HTTPBIN_PORT,
        }
    }

    /// The request path the load generators ask for (Istio's task uses `/headers`).
    pub fn path(self) -> &'static str {
        match self {
            Backend::Fast => "/",
            Backend::Httpbin => "/headers",
        }
    }

    fn vip(self) -> Ipv4Addr {
        match self {
            Backend::Fast => Ipv4Addr::new(198, 19, 0, 10),
            Backend::Httpbin => Ipv4Addr::new(198, 19, 0, 11),
        }
    }
}

/// The VIP whose service leads to the sink in v1.
pub const SINK_VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 12);
/// The VIP whose service leads to a server in v1 that reads and discards everything (the
/// attack mix's garbage goes there, so that v1 acknowledges all of it).
pub const DISCARD_VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 13);
const DISCARD_PORT: u16 = 9191;

/// Everything the runs use. Dropping it stops the servers and removes the namespaces.
pub struct Bed {
    // Servers first: they stop before the namespaces go.
    httpbin: [Httpbin; 2],
    _fast: [Nginx; 2],
    pub sinks: [Sink; 2],
    _discard: Discard,
    fast_logs: [PathBuf; 2],
    pub client: Host,
    pub v1: Host,
    pub v2: Host,
    /// The attack mix's hostile pod.
    pub hostile: Host,
    pub testbed: Testbed,
}

impl Bed {
    pub fn new() -> Result<Self> {
        let mut testbed = Testbed::new()?;
        let client = testbed.add_host("client")?;
        let v1 = testbed.add_host("v1")?;
        let v2 = testbed.add_host("v2")?;
        let hostile = testbed.add_host("hostile")?;
        for backend in [Backend::Fast, Backend::Httpbin] {
            let vip = IpAddr::V4(backend.vip());
            testbed.add_service(vip, SERVICE_PORT, &v1, backend.port())?;
        }
        testbed.add_service(Backend::Fast.vip().into(), UNMATCHED_PORT, &v1, FAST_PORT)?;
        testbed.add_service(SINK_VIP.into(), SERVICE_PORT, &v1, SINK_PORT)?;
        testbed.add_service(DISCARD_VIP.into(), SERVICE_PORT, &v1, DISCARD_PORT)?;
        // nginx's mirror and the connection-close runs leave sockets in TIME_WAIT in the node
        // and client namespaces; without reuse their ephemeral ports run out within seconds.
        // (The `close, kernel-default sysctls` runs put the defaults back for a while.)
        for ns in [testbed.node(), client.ns()] {
            set_sysctls(ns, TUNED)?;
        }
        let (fast1, log1) = start_fast(&testbed, &v1)?;
        let (fast2, log2) = start_fast(&testbed, &v2)?;
        let httpbin = [Httpbin::start(&v1)?, Httpbin::start(&v2)?];
        let sinks = [Sink::start(&v1, SINK_PORT)?, Sink::start(&v2, SINK_PORT)?];
        let discard = Discard::start(v1.ns(), DISCARD_PORT)?;
        Ok(Self {
            httpbin,
            _fast: [fast1, fast2],
            sinks,
            _discard: discard,
            fast_logs: [log1, log2],
            client,
            v1,
            v2,
            hostile,
            testbed,
        })
    }

    /// Puts the kernel's default sysctls (`default`), or the tuned ones, in the node and
    /// client namespaces.
    pub fn default_sysctls(&self, default: bool) -> Result<()> {
        let values = if default { KERNEL_DEFAULT } else { TUNED };
        for ns in [self.testbed.node(), self.client.ns()] {
            set_sysctls(ns, values)?;
        }
        Ok(())
    }

    /// Ends the TIME_WAIT sockets earlier runs left in every namespace (`ss -K`), so that a run
    /// measures its own load, not the ports its predecessors hold: under the kernel's default
    /// sysctls (no TIME_WAIT reuse, 28k ports) the proxies' and the connection-per-request runs
    /// before it filled the node's port range, and every later connect from the node (the
    /// agent's to v2, the ideal's second load) crawled (the close run there mirrored 60% after
    /// them and 100% on a clean bed).
    pub fn forget_time_wait(&self) -> Result<()> {
        for ns in [
            self.testbed.node(),
            self.client.ns(),
            self.v1.ns(),
            self.v2.ns(),
        ] {
            ns.exec_ok(&["ss", "-K", "state", "time-wait"])
                .with_context(|| format!("ss -K state time-wait in {}", ns.name()))?;
        }
        Ok(())
    }

    /// The primary's service address for `backend` (what baseline and mirror runs load).
    pub fn service(&self, backend: Backend) -> SocketAddr {
        SocketAddr::new(backend.vip().into(), SERVICE_PORT)
    }

    /// Where `backend` listens in v1 (the proxies' primary upstream).
    pub fn primary(&self, backend: Backend) -> SocketAddr {
        SocketAddr::new(self.v1.ipv4().into(), backend.port())
    }

    /// Where `backend` listens in v2 (the shadow).
    pub fn shadow(&self, backend: Backend) -> SocketAddr {
        SocketAddr::new(self.v2.ipv4().into(), backend.port())
    }

    /// The node's address on the client's veth, where the proxies listen.
    fn gateway(&self) -> Ipv4Addr {
        let [a, b, c, _] = self.client.ipv4().octets();
        Ipv4Addr::new(a, b, c, 1)
    }

    pub fn nginx_proxy(&self) -> SocketAddr {
        SocketAddr::new(self.gateway().into(), NGINX_PROXY_PORT)
    }

    pub fn envoy_proxy(&self) -> SocketAddr {
        SocketAddr::new(self.gateway().into(), ENVOY_PROXY_PORT)
    }

    /// Where the access log of v1 (`pod` 0) or v2 (1) for `backend` ends now: a run's requests
    /// are the lines logged past it (a bench's fast log grows by millions of lines, so a run
    /// reads only its own).
    pub fn log_end(&self, backend: Backend, pod: usize) -> Result<u64> {
        match backend {
            Backend::Fast => {
                let path = &self.fast_logs[pod];
                Ok(std::fs::metadata(path)
                    .with_context(|| format!("stat {}", path.display()))?
                    .len())
            }
            Backend::Httpbin => self.httpbin[pod].access_log_len(),
        }
    }

    /// Host headers of the requests logged past `from` (a [`Self::log_end`]), in order.
    pub fn logged_hosts_since(
        &self,
        backend: Backend,
        pod: usize,
        from: u64,
    ) -> Result<Vec<String>> {
        match backend {
            Backend::Fast => Ok(mirror_tests::read_complete_lines_since(
                &self.fast_logs[pod],
                from,
            )?
            .lines()
            .map(str::to_owned)
            .collect()),
            Backend::Httpbin => Ok(self.httpbin[pod]
                .access_log_lines_since(from)?
                .into_iter()
                .map(|line| line.host)
                .collect()),
        }
    }

    /// How many requests were logged past `from`: one line each.
    pub fn logged_since(&self, backend: Backend, pod: usize, from: u64) -> Result<usize> {
        let path = match backend {
            Backend::Fast => &self.fast_logs[pod],
            Backend::Httpbin => self.httpbin[pod].access_log_path(),
        };
        Ok(mirror_tests::read_complete_lines_since(path, from)?
            .bytes()
            .filter(|&b| b == b'\n')
            .count())
    }
}

/// Starts the fast backend in `host`; returns it and its access log.
fn start_fast(testbed: &Testbed, host: &Host) -> Result<(Nginx, PathBuf)> {
    let dir = testbed.log_dir().join(format!("nginx-{}", host.name()));
    let log = dir.join("access.log");
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    std::fs::write(&log, "").with_context(|| format!("create {}", log.display()))?;
    let config = nginx::backend_config(&dir, FAST_PORT, &log);
    let probe = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), FAST_PORT);
    let server = Nginx::start(host.ns(), "nginx-backend", &dir, &config, probe)?;
    Ok((server, log))
}

/// `tcp_tw_reuse` and `ip_local_port_range`.
type Sysctls = (&'static str, &'static str);
const TUNED: Sysctls = ("1", "10000 65000");
/// What a new network namespace starts with.
const KERNEL_DEFAULT: Sysctls = ("2", "32768 60999");

fn set_sysctls(ns: &Netns, (tw_reuse, ports): Sysctls) -> Result<()> {
    ns.run(move || {
        std::fs::write("/proc/sys/net/ipv4/tcp_tw_reuse", tw_reuse)?;
        std::fs::write("/proc/sys/net/ipv4/ip_local_port_range", ports)
    })?
    .with_context(|| format!("sysctls in {}", ns.name()))
}
