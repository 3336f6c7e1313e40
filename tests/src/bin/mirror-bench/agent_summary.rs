//! The agent's exit summary, read into the numbers the bench reports.

use anyhow::{Context as _, Result};
use mirror_tests::agent::counter;

/// What `mirror run` said about a run when it stopped.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct AgentStats {
    /// Requests the shadow answered (the relay framed its response).
    pub sent: u64,
    /// Requests it gave up on, all reasons together (queue full, shadow down, ...).
    pub dropped: u64,
    pub packets_seen: u64,
    pub packets_matched: u64,
    pub ringbuf_full_drops: u64,
    /// Runs and total run time of the kernel programs (`--bpf-stats`), over all programs.
    pub bpf_runs: u64,
    pub bpf_run_time_ns: u64,
    /// The whole line, for the reasons behind drops.
    pub summary: String,
}

impl AgentStats {
    /// Parses the summary line (`relay: ... | pipeline: ... | kernel: ... | bpf: ...`).
    pub fn parse(summary: &str) -> Result<Self> {
        let get = |name: &str| {
            counter(summary, name)
                .with_context(|| format!("no {name} in the agent summary: {summary}"))
        };
        let dropped = summary
            .split(" | ")
            .next()
            .unwrap_or("")
            .split_whitespace()
            .filter_map(|field| field.strip_prefix("dropped_")?.split_once('='))
            .filter_map(|(_, value)| value.parse::<u64>().ok())
            .sum();
        let bpf = summary.split_once("| bpf:").map_or("", |(_, rest)| rest);
        let sum = |name: &str| -> u64 {
            bpf.split_whitespace()
                .filter_map(|field| field.strip_prefix(name)?.strip_prefix('='))
                .filter_map(|value| value.parse::<u64>().ok())
                .sum()
        };
        Ok(Self {
            sent: get("answered")?,
            dropped,
            packets_seen: get("packets_seen")?,
            packets_matched: get("packets_matched")?,
            ringbuf_full_drops: get("ringbuf_full_drops")?,
            bpf_runs: sum("runs"),
            bpf_run_time_ns: sum("run_time_ns"),
            summary: summary.to_owned(),
        })
    }

    /// Average kernel program time per packet it ran on, in ns.
    pub fn ns_per_packet(&self) -> Option<f64> {
        (self.bpf_runs > 0).then(|| self.bpf_run_time_ns as f64 / self.bpf_runs as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_relay_kernel_and_bpf_fields() {
        let line =
            "relay: requests=13 answered=10 dropped=3 dropped_queue_full=2 dropped_shadow_down=1 \
                    shadow_connections=0 | pipeline: requests=12 | intake: records=30 | kernel: \
                    packets_seen=40 packets_matched=35 records_emitted=30 ringbuf_full_drops=0 \
                    | bpf: mirror_ingress runs=40 run_time_ns=8000 ns_per_run=200";
        let stats = AgentStats::parse(line).unwrap();
        assert_eq!((stats.sent, stats.dropped), (10, 3));
        assert_eq!((stats.packets_matched, stats.ringbuf_full_drops), (35, 0));
        assert_eq!((stats.bpf_runs, stats.bpf_run_time_ns), (40, 8000));
        assert_eq!(stats.ns_per_packet(), Some(200.0));
    }
}
