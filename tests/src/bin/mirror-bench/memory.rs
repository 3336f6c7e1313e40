//! The agent's memory by ring size: `mirror run` mirroring the fast backend (keep-alive) at a
//! fixed rate and at saturation with each `--ring-mib`, its memory read from `smaps` at the end
//! of the load (each physical page once: the ring's data pages are mapped twice, so RSS counts
//! them twice) beside the relay's backlog at that moment (what the heap holds), again once the
//! backlog has drained (what the agent gives back), and the kernel's ring drops, so the default
//! ring size can be the smallest that drops nothing at the node's saturation rate; and end to
//! end with the pipeline sharded (`--capture-threads`).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use mirror_tests::agent::Agent;

use super::agent_summary::AgentStats;
use super::bed::{Backend, Bed, HOST_HEADER};
use super::load::{self, Conn, Load, Target};
use super::measure::Offered;
use super::mode::start_agent_with;
use super::procstat::{self, Memory};

/// One agent run of the memory section.
#[derive(Clone, Copy, Debug)]
pub struct MemoryPlan {
    pub ring_mib: u32,
    /// `--capture-threads`.
    pub threads: u16,
    /// Saturation (wrk, keep-alive) or a fixed rate (mirror-load).
    pub offered: Offered,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct RingRun {
    pub ring_mib: u32,
    pub threads: u16,
    pub offered: Offered,
    pub load: Load,
    /// At the end of the load.
    pub memory: Memory,
    /// The relay's backlog at the end of the load, from the agent's /metrics.
    pub backlog: Backlog,
    /// Once the backlog drained and the agent sat idle for a few seconds.
    pub idle: Memory,
    pub agent: AgentStats,
}

/// Requests the relay held (queued, or sent and not answered) and the bytes charged for them.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Backlog {
    pub pending: u64,
    pub queued_bytes: u64,
}

/// The agent's admin endpoint, in the node namespace where it runs.
const METRICS: &str = "http://127.0.0.1:9477/metrics";

/// Runs the agent once per plan; `fixed_rate` is the mirror-load binary.
pub fn run(
    bed: &Bed,
    dir: &Path,
    duration: Duration,
    fixed_rate: &Path,
    plans: &[MemoryPlan],
) -> Result<Vec<RingRun>> {
    let backend = Backend::Fast;
    let service = bed.service(backend);
    let mut runs = Vec::new();
    for plan in plans {
        let label = match plan.offered {
            Offered::Saturate(_) => "saturation".to_owned(),
            Offered::Rate(rate) => format!("rate-{rate}"),
        };
        let dir = dir.join(format!(
            "ring-{}-threads-{}-{label}",
            plan.ring_mib, plan.threads
        ));
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let extra = [
            "--ring-mib".to_owned(),
            plan.ring_mib.to_string(),
            "--capture-threads".to_owned(),
            plan.threads.to_string(),
        ];
        let agent = start_agent_with(bed, service, bed.shadow(backend), &extra)?;
        let target = Target {
            addr: service,
            path: backend.path(),
            host: HOST_HEADER,
        };
        let load = match plan.offered {
            Offered::Saturate(conn) => load::wrk(bed.client.ns(), &dir, target, conn, duration)?,
            Offered::Rate(rate) => {
                load::fixed_rate(bed.client.ns(), fixed_rate, target, rate, duration)?
            }
        };
        let memory = procstat::memory(agent.pid())?;
        let backlog = backlog(bed)?;
        let idle = idle_memory(bed, &agent)?;
        let summary = agent.stop(libc::SIGTERM)?;
        let line = summary
            .lines()
            .rfind(|line| line.starts_with("relay:"))
            .context("no agent summary")?;
        runs.push(RingRun {
            ring_mib: plan.ring_mib,
            threads: plan.threads,
            offered: plan.offered,
            load,
            memory,
            backlog,
            idle,
            agent: AgentStats::parse(line)?,
        });
    }
    Ok(runs)
}

/// The plans of a run: every ring size at `rate` and at saturation on one thread, then the
/// default ring at saturation on each of `threads`.
pub fn plans(ring_sizes: &[u32], rate: u64, threads: &[u16], default_ring: u32) -> Vec<MemoryPlan> {
    let saturate = Offered::Saturate(Conn::KeepAlive);
    let mut plans = Vec::new();
    for &ring_mib in ring_sizes {
        for offered in [Offered::Rate(rate), saturate] {
            plans.push(MemoryPlan {
                ring_mib,
                threads: 1,
                offered,
            });
        }
    }
    plans.extend(threads.iter().map(|&threads| MemoryPlan {
        ring_mib: default_ring,
        threads,
        offered: saturate,
    }));
    plans
}

/// The relay's backlog now (every mirror's summed).
fn backlog(bed: &Bed) -> Result<Backlog> {
    let text = bed
        .testbed
        .node()
        .exec_ok(&["curl", "-sS", "--max-time", "5", METRICS])?;
    Ok(Backlog {
        pending: gauge(&text, "mirror_relay_pending"),
        queued_bytes: gauge(&text, "mirror_relay_queued_bytes"),
    })
}

/// Waits (up to 30 s) for the relay's backlog to drain, lets the agent sit idle long enough
/// for its idle-time work, then reads its memory.
fn idle_memory(bed: &Bed, agent: &Agent) -> Result<Memory> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while backlog(bed)?.pending > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(3));
    procstat::memory(agent.pid())
}

/// Sum of a Prometheus gauge family's samples (labelled or not) in `text`.
fn gauge(text: &str, family: &str) -> u64 {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(family)?;
            let value = match rest.strip_prefix('{') {
                Some(labelled) => labelled.split_once("} ")?.1,
                None => rest.strip_prefix(' ')?,
            };
            value.trim().parse::<f64>().ok()
        })
        .sum::<f64>() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_a_gauge_family_over_its_labels_and_no_other_family() {
        let text = "# HELP mirror_relay_pending x\nmirror_relay_pending{mirror=\"a\"} 3\n\
                    mirror_relay_pending{mirror=\"b\"} 4\nmirror_relay_pending_total 9\n\
                    mirror_relay_queued_bytes 1024\n";
        assert_eq!(gauge(text, "mirror_relay_pending"), 7);
        assert_eq!(gauge(text, "mirror_relay_queued_bytes"), 1024);
        assert_eq!(gauge(text, "mirror_relay_absent"), 0);
    }
}
