//! The five ways of serving the primary, and starting and stopping the mirroring component
//! each one runs (none, our agent, an nginx proxy, an Envoy proxy; the ideal mirror has no
//! component: its copy of the load comes from a second load generator).

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context as _, Result};
use mirror_tests::{agent::Agent, Testbed};

use super::bed::{Backend, Bed};
use super::envoy::{self, Envoy};
use super::nginx::{self, Nginx};

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Mode {
    /// client -> v1 through the service VIP, nothing mirrored.
    Baseline,
    /// The same path with `mirror run` attached to the client's veth, mirroring 100% to v2.
    Mirror,
    /// client -> nginx (node) -> v1, nginx's `mirror` copying to v2.
    Nginx,
    /// client -> Envoy (node) -> v1, `request_mirror_policies` copying to v2.
    Envoy,
    /// A perfect mirror that costs nothing: client -> v1 as in baseline while a second load
    /// generator in the node namespace (where the agent runs) sends v2 the same load with the
    /// shadow Host. What separates `mirror` from it is the agent's own cost; what separates it
    /// from `baseline` is v2 doing the same work again on the same cores.
    Ideal,
}

pub const MODES: [Mode; 5] = [
    Mode::Baseline,
    Mode::Ideal,
    Mode::Mirror,
    Mode::Nginx,
    Mode::Envoy,
];

/// The running mirroring component of a mode.
pub enum Component {
    None,
    Agent(Agent),
    Nginx(Nginx),
    Envoy(Envoy),
}

impl Mode {
    /// Whether the mode copies the primary's requests to v2 (so completeness means something).
    pub fn mirrors(self) -> bool {
        matches!(self, Mode::Mirror | Mode::Nginx | Mode::Envoy)
    }

    pub fn name(self) -> &'static str {
        match self {
            Mode::Baseline => "baseline",
            Mode::Mirror => "mirror",
            Mode::Nginx => "nginx",
            Mode::Envoy => "envoy",
            Mode::Ideal => "ideal",
        }
    }

    /// Where the client sends its requests in this mode.
    pub fn entry(self, bed: &Bed, backend: Backend) -> SocketAddr {
        match self {
            Mode::Baseline | Mode::Mirror | Mode::Ideal => bed.service(backend),
            Mode::Nginx => bed.nginx_proxy(),
            Mode::Envoy => bed.envoy_proxy(),
        }
    }

    /// Starts this mode's mirroring component for `backend`, with its files under `dir`
    /// (`agent_args`: more flags for the agent).
    pub fn start(
        self,
        bed: &Bed,
        backend: Backend,
        envoy_bin: &Path,
        agent_args: &[String],
        dir: &Path,
    ) -> Result<Component> {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let node = bed.testbed.node();
        let (primary, shadow) = (bed.primary(backend), bed.shadow(backend));
        Ok(match self {
            Mode::Baseline | Mode::Ideal => Component::None,
            Mode::Mirror => Component::Agent(start_agent_with(
                bed,
                bed.service(backend),
                shadow,
                agent_args,
            )?),
            Mode::Nginx => {
                let listen = bed.nginx_proxy();
                let config = nginx::proxy_config(dir, listen, primary, shadow);
                Component::Nginx(Nginx::start(node, "nginx-proxy", dir, &config, listen)?)
            }
            Mode::Envoy => {
                let listen = bed.envoy_proxy();
                let config = envoy::config(listen, primary, shadow);
                Component::Envoy(Envoy::start(node, envoy_bin, dir, &config, listen)?)
            }
        })
    }
}

/// Runs `mirror run` in the node namespace on the client's veth, capturing `target` and
/// replaying to `shadow`, with BPF run-time statistics on (they cost a few ns per run; every
/// mirror run pays them, so ratios stay comparable).
pub fn start_agent(bed: &Bed, target: SocketAddr, shadow: SocketAddr) -> Result<Agent> {
    start_agent_with(bed, target, shadow, &[])
}

/// [`start_agent`] with more flags (a ring size, say).
pub fn start_agent_with(
    bed: &Bed,
    target: SocketAddr,
    shadow: SocketAddr,
    extra: &[String],
) -> Result<Agent> {
    let mut args: Vec<String> = [
        "run",
        "--iface",
        bed.client.node_ifname(),
        "--target",
        &target.to_string(),
        "--shadow",
        &shadow.to_string(),
        "--bpf-stats",
    ]
    .map(str::to_owned)
    .to_vec();
    args.extend_from_slice(extra);
    start_run(&bed.testbed, "mirror-run", args)
}

/// Starts `mirror run` (as `name`) in the node namespace with `args` and the flags every bench
/// run of it has: `--grace-secs 5` and `--log-interval-secs 3600`.
pub fn start_run(testbed: &Testbed, name: &str, mut args: Vec<String>) -> Result<Agent> {
    args.extend(["--grace-secs", "5", "--log-interval-secs", "3600"].map(str::to_owned));
    Agent::start(testbed.node(), name, &args, "mirroring to")
}

impl Component {
    /// The process group whose CPU and memory count as the cost of mirroring.
    pub fn pid(&self) -> Option<u32> {
        match self {
            Component::None => None,
            Component::Agent(agent) => Some(agent.pid()),
            Component::Nginx(nginx) => Some(nginx.process.pid()),
            Component::Envoy(envoy) => Some(envoy.process.pid()),
        }
    }

    /// Stops it; for the agent returns its summary line (the last line of its stderr).
    pub fn stop(self) -> Result<Option<String>> {
        match self {
            Component::Agent(agent) => {
                let stderr = agent.stop(libc::SIGTERM)?;
                let summary = stderr.lines().rfind(|line| line.starts_with("relay:"));
                Ok(Some(
                    summary
                        .context("no summary in the agent's stderr")?
                        .to_owned(),
                ))
            }
            // The guards stop the proxies.
            Component::None | Component::Nginx(_) | Component::Envoy(_) => Ok(None),
        }
    }
}
