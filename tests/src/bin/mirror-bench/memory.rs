//! The agent's memory by ring size: `mirror run` mirroring the fast backend at saturation
//! (keep-alive) with each `--ring-mib`, its memory read from `smaps_rollup` at the end of the
//! load (each physical page once: the ring's data pages are mapped twice, so RSS counts them
//! twice) and the kernel's ring drops, so the default ring size can be the smallest that
//! drops nothing at the node's saturation rate; and end to end with the pipeline sharded
//! (`--capture-threads`).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, Result};

use super::agent_summary::AgentStats;
use super::bed::{Backend, Bed, HOST_HEADER};
use super::load::{self, Conn, Load, Target};
use super::mode::start_agent_with;
use super::procstat::{self, Memory};

#[derive(Clone, Debug, serde::Serialize)]
pub struct RingRun {
    pub ring_mib: u32,
    /// `--capture-threads`.
    pub threads: u16,
    pub load: Load,
    pub memory: Memory,
    pub agent: AgentStats,
}

/// Runs the agent once per (ring size, capture threads) in `runs`.
pub fn run(
    bed: &Bed,
    dir: &Path,
    duration: Duration,
    configs: &[(u32, u16)],
) -> Result<Vec<RingRun>> {
    let backend = Backend::Fast;
    let service = bed.service(backend);
    let mut runs = Vec::new();
    for &(ring_mib, threads) in configs {
        let dir = dir.join(format!("ring-{ring_mib}-threads-{threads}"));
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let extra = [
            "--ring-mib".to_owned(),
            ring_mib.to_string(),
            "--capture-threads".to_owned(),
            threads.to_string(),
        ];
        let agent = start_agent_with(bed, service, bed.shadow(backend), &extra)?;
        let target = Target {
            addr: service,
            path: backend.path(),
            host: HOST_HEADER,
        };
        let load = load::wrk(bed.client.ns(), &dir, target, Conn::KeepAlive, duration)?;
        let memory = procstat::memory(agent.pid())?;
        let summary = agent.stop(libc::SIGTERM)?;
        let line = summary
            .lines()
            .rfind(|line| line.starts_with("relay:"))
            .context("no agent summary")?;
        runs.push(RingRun {
            ring_mib,
            threads,
            load,
            memory,
            agent: AgentStats::parse(line)?,
        });
    }
    Ok(runs)
}
