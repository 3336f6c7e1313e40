//! Starting the mirror agent the way the DaemonSet would: in the node namespace, on the node side
//! of the sleep pod's veth, with the service as target and v2's pod as shadow.

use anyhow::{Context as _, Result};
use mirror_tests::agent::{counter, mirror_binary, Agent};
use mirror_tests::HTTPBIN_PORT;

use crate::cluster::Cluster;
use crate::narrate::{block, command, say};

/// What `mirror run` prints on stderr once its program is attached.
const READY: &str = "mirroring to";

/// Starts `mirror run` mirroring `percent`% of the requests, showing the command and what the
/// agent said on start-up.
pub fn start(cluster: &Cluster, percent: u32) -> Result<Agent> {
    let binary = mirror_binary()?;
    // Shown without the `tests/..` detour, as a user would type it.
    let binary = binary.canonicalize().unwrap_or(binary);
    let args: Vec<String> = [
        "run",
        "--iface",
        cluster.sleep.node_ifname(),
        "--target",
        &cluster.service.to_string(),
        "--shadow",
        &format!("{}:{HTTPBIN_PORT}", cluster.v2.ipv4()),
        "--percent",
        &percent.to_string(),
        // The grace is only spent while requests wait for v2's answer: httpbin's one sync
        // worker, on a busy machine, can still be answering the last few when the agent stops
        // (measured: one request past a 2 s grace), and those would count as dropped.
        "--grace-secs",
        "10",
        // A kept agent's log then shows its counters every 10 s.
        "--log-interval-secs",
        "10",
    ]
    .iter()
    .map(|arg| arg.to_string())
    .collect();
    let mut shown = vec![
        "ip".to_owned(),
        "netns".to_owned(),
        "exec".to_owned(),
        cluster.testbed.node().name().to_owned(),
        binary.display().to_string(),
    ];
    shown.extend(args.iter().cloned());
    command(&shown.iter().map(String::as_str).collect::<Vec<_>>());
    let agent = Agent::start(cluster.testbed.node(), "mirror-run", &args, READY)
        .context("starting the mirror agent (`mirror run`)")?;
    say("the agent says:");
    block(&agent.stderr());
    Ok(agent)
}

/// Stops the agent with SIGTERM, as Kubernetes stops a pod, and returns its closing summary
/// line (`relay: ... | pipeline: ... | kernel: ...`).
pub fn stop(agent: Agent) -> Result<String> {
    let stderr = agent
        .stop(libc::SIGTERM)
        .context("stopping the mirror agent")?;
    stderr
        .lines()
        .rev()
        .find(|line| line.starts_with("relay:"))
        .map(str::to_owned)
        .with_context(|| format!("the agent printed no summary line:\n{stderr}"))
}

/// The summary's counters that tell this story, as `name=value`: requests seen and sampled, what
/// reached v2 and what it answered, what was dropped, and what the kernel program matched. The
/// full line has some sixty counters, mostly zeros here.
const STORY_COUNTERS: &[(&str, &[&str])] = &[
    (
        "pipeline",
        &["requests_mirrored", "requests_sampled_out", "gaps"],
    ),
    (
        "relay",
        &[
            "requests",
            "answered",
            "answered_2xx",
            "unanswered",
            "resent",
        ],
    ),
    (
        "kernel",
        &["packets_matched", "records_emitted", "ringbuf_full_drops"],
    ),
];

/// Prints [`STORY_COUNTERS`] from the agent's summary line, plus its `dropped_*` counters in
/// one sum with the reasons that are not zero.
pub fn show_counters(summary: &str) {
    for (part, names) in STORY_COUNTERS {
        let mut line = format!("{part}:");
        for name in *names {
            match counter(summary, name) {
                Some(value) => line.push_str(&format!(" {name}={value}")),
                None => line.push_str(&format!(" {name}=?")),
            }
        }
        if *part == "relay" {
            line.push_str(&dropped(summary));
        }
        say(format!("    {line}"));
    }
}

/// ` dropped=N`, followed by ` (reason=n, ...)` when N is not zero.
fn dropped(summary: &str) -> String {
    let reasons: Vec<(&str, u64)> = summary
        .split_whitespace()
        .filter_map(|field| field.split_once('='))
        .filter_map(|(name, value)| Some((name.strip_prefix("dropped_")?, value.parse().ok()?)))
        .filter(|(_, value)| *value > 0)
        .collect();
    let total: u64 = reasons.iter().map(|(_, value)| value).sum();
    if total == 0 {
        return " dropped=0".to_owned();
    }
    let listed: Vec<String> = reasons
        .iter()
        .map(|(reason, value)| format!("{reason}={value}"))
        .collect();
    format!(" dropped={total} ({})", listed.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropped_sums_and_names_the_reasons() {
        let summary =
            "relay: answered=3 dropped=3 dropped_queue_full=1 dropped_aborted=0 dropped_shutdown=2";
        assert_eq!(dropped(summary), " dropped=3 (queue_full=1, shutdown=2)");
        assert_eq!(
            dropped("relay: answered=3 dropped=0 dropped_aborted=0"),
            " dropped=0"
        );
    }
}
