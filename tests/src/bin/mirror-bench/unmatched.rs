//! The kernel program's cost on packets it does not want: the agent is attached to the
//! client's veth and targets the fast service's port 8000, while the client loads port 9000 of
//! the same VIP. Every packet runs the program, none matches.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, Result};

use super::agent_summary::AgentStats;
use super::bed::{Backend, Bed, HOST_HEADER, UNMATCHED_PORT};
use super::load::{self, Conn, Load, Target};
use super::mode::start_agent;

#[derive(Clone, Debug, serde::Serialize)]
pub struct Unmatched {
    pub load: Load,
    pub agent: AgentStats,
}

pub fn run(bed: &Bed, dir: &Path, duration: Duration) -> Result<Unmatched> {
    let backend = Backend::Fast;
    let service = bed.service(backend);
    let agent = start_agent(bed, service, bed.shadow(backend))?;
    let other = SocketAddr::new(service.ip(), UNMATCHED_PORT);
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let target = Target {
        addr: other,
        path: backend.path(),
        host: HOST_HEADER,
    };
    let load = load::wrk(bed.client.ns(), dir, target, Conn::KeepAlive, duration)?;
    let summary = agent.stop(libc::SIGTERM)?;
    let line = summary
        .lines()
        .rfind(|line| line.starts_with("relay:"))
        .context("no agent summary")?;
    Ok(Unmatched {
        load,
        agent: AgentStats::parse(line)?,
    })
}
