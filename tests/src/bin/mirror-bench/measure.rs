//! One measurement: start a mode's mirroring component, load the primary, let the mirror
//! drain, and collect what the client, the backends' logs, /proc and the agent say.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use mirror_tests::Netns;

use super::agent_summary::AgentStats;
use super::bed::{Backend, Bed, HOST_HEADER, SHADOW_HOST_HEADER};
use super::load::{self, Conn, Load, Target};
use super::mode::Mode;
use super::procstat;

/// How the primary is loaded.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub enum Offered {
    /// wrk, as fast as it goes.
    Saturate(Conn),
    /// mirror-load at this many requests per second (keep-alive).
    Rate(u64),
}

/// Everything one run measured.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Sample {
    pub round: u32,
    pub backend: Backend,
    pub mode: Mode,
    pub offered: Offered,
    pub load: Load,
    /// What the ideal mode's second load generator saw sending v2 the same load.
    pub shadow_load: Option<Load>,
    /// Requests v1 and v2 logged during the run (and, for v2, while the mirror drained).
    pub v1_requests: u64,
    pub v2_requests: u64,
    /// v2 requests whose Host name ends in `-shadow`.
    pub v2_shadow_host: u64,
    /// CPU seconds and peak resident KiB of the mirroring component (none for baseline).
    pub cpu_seconds: Option<f64>,
    pub peak_rss_kib: Option<u64>,
    pub agent: Option<AgentStats>,
}

impl Sample {
    pub fn completeness(&self) -> Option<f64> {
        (self.mode.mirrors() && self.v1_requests > 0)
            .then(|| self.v2_requests as f64 / self.v1_requests as f64)
    }

    /// CPU seconds the mirroring component spent per 1,000 requests it mirrored.
    pub fn cpu_per_1k(&self) -> Option<f64> {
        let cpu = self.cpu_seconds?;
        (self.v2_requests > 0).then(|| cpu * 1000.0 / self.v2_requests as f64)
    }
}

/// What one run is.
pub struct Plan<'a> {
    pub round: u32,
    pub backend: Backend,
    pub mode: Mode,
    pub offered: Offered,
    pub duration: Duration,
    /// The fixed-rate load generator.
    pub fixed_rate: &'a Path,
    pub envoy: &'a Path,
    /// Flags added to the mirror mode's `mirror run` (`--agent-args`).
    pub agent_args: &'a [String],
}

/// Longest wait for the mirror to catch up after the load stops.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(15);

pub fn run(bed: &Bed, plan: &Plan<'_>, dir: &Path) -> Result<Sample> {
    let (backend, mode) = (plan.backend, plan.mode);
    bed.forget_time_wait()?;
    let component = mode.start(bed, backend, plan.envoy, plan.agent_args, dir)?;
    let v1_from = bed.log_end(backend, 0)?;
    let v2_from = bed.log_end(backend, 1)?;
    let pid = component.pid();
    let cpu_before = pid.map(procstat::group_cpu_seconds).transpose()?;
    let primary = Target {
        addr: mode.entry(bed, backend),
        path: backend.path(),
        host: HOST_HEADER,
    };
    let (load, shadow_load) = if mode == Mode::Ideal {
        // The same load at the same time, straight to v2 from the node namespace.
        let shadow = Target {
            addr: bed.shadow(backend),
            path: backend.path(),
            host: SHADOW_HOST_HEADER,
        };
        let shadow_dir = dir.join("shadow-load");
        std::fs::create_dir_all(&shadow_dir)
            .with_context(|| format!("create {}", shadow_dir.display()))?;
        let node = bed.testbed.node();
        std::thread::scope(|scope| {
            let copy = scope.spawn(|| offer(node, &shadow_dir, plan, shadow));
            let load = offer(bed.client.ns(), dir, plan, primary);
            let copy = copy
                .join()
                .map_err(|_| anyhow::anyhow!("the shadow load's thread panicked"))?;
            anyhow::Ok((load?, Some(copy?)))
        })?
    } else {
        (offer(bed.client.ns(), dir, plan, primary)?, None)
    };
    drain(bed, backend, mode, v1_from, v2_from)?;
    let cpu_seconds = match (pid, cpu_before) {
        (Some(pid), Some(before)) => Some(procstat::group_cpu_seconds(pid)? - before),
        _ => None,
    };
    let peak_rss_kib = pid.map(procstat::group_peak_rss_kib).transpose()?;
    let summary = component.stop()?;
    let agent = summary.as_deref().map(AgentStats::parse).transpose()?;
    let v1_requests = bed.logged_since(backend, 0, v1_from)?;
    let v2_window = bed.logged_hosts_since(backend, 1, v2_from)?;
    Ok(Sample {
        round: plan.round,
        backend,
        mode,
        offered: plan.offered,
        load,
        shadow_load,
        v1_requests: v1_requests as u64,
        v2_requests: v2_window.len() as u64,
        v2_shadow_host: v2_window.iter().filter(|host| is_shadow(host)).count() as u64,
        cpu_seconds,
        peak_rss_kib,
        agent,
    })
}

/// Runs the plan's load against `target` from `ns`.
fn offer(ns: &Netns, dir: &Path, plan: &Plan<'_>, target: Target<'_>) -> Result<Load> {
    match plan.offered {
        Offered::Saturate(conn) => load::wrk(ns, dir, target, conn, plan.duration),
        Offered::Rate(rate) => load::fixed_rate(ns, plan.fixed_rate, target, rate, plan.duration),
    }
}

/// Waits until v1's log stops growing and, when mirroring, until v2 has as many requests as
/// v1 or stops growing for a second.
fn drain(bed: &Bed, backend: Backend, mode: Mode, v1_from: u64, v2_from: u64) -> Result<()> {
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    let mut last = (usize::MAX, usize::MAX);
    let mut stable_since = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let v1 = bed.logged_since(backend, 0, v1_from)?;
        let v2 = bed.logged_since(backend, 1, v2_from)?;
        if (v1, v2) != last {
            last = (v1, v2);
            stable_since = Instant::now();
        }
        let caught_up = !mode.mirrors() || v2 >= v1;
        let stable = stable_since.elapsed() >= Duration::from_secs(1);
        if (caught_up && stable_since.elapsed() >= Duration::from_millis(400))
            || stable
            || Instant::now() > deadline
        {
            return Ok(());
        }
    }
}

/// Whether a Host header names a shadow: `<name>-shadow`, with or without a port.
fn is_shadow(host: &str) -> bool {
    host.split(':')
        .next()
        .is_some_and(|name| name.ends_with("-shadow"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shadow_hosts_with_and_without_port() {
        assert!(is_shadow("httpbin-shadow:8000"));
        assert!(is_shadow("httpbin-shadow"));
        assert!(!is_shadow("httpbin:8000"));
        assert!(!is_shadow("-"));
    }
}
