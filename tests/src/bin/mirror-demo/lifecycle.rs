//! The set-up's life beyond one run: refusing to start over a kept one, keeping it (`--keep`),
//! removing it (`--down`), and checking that nothing of it is left.

use std::path::Path;

use anyhow::{bail, Context as _, Result};
use mirror_tests::agent::Agent;
use mirror_tests::cleanup::{namespaces_with_prefix, NS_PREFIX};
use mirror_tests::remove_label;

use crate::cli::Options;
use crate::cluster::Cluster;
use crate::narrate::say;

/// Where `ip netns exec` finds the per-namespace `/etc` files the test-bed writes.
const NETNS_ETC_DIR: &str = "/etc/netns";

/// Fails if a set-up with this label exists. A kept demo is something the user asked for and may
/// be watching (`tail -f`), so it is not removed behind their back: they run `--down` first.
pub fn refuse_if_present(options: &Options) -> Result<()> {
    let left = leftovers(&options.label)?;
    if !left.is_empty() {
        bail!(
            "a demo set-up is already there ({}), left by `--keep` or by a run that was killed.\n\
             Remove it first with `{}`, then start the demo again.",
            left.join(", "),
            options.down_command()
        );
    }
    Ok(())
}

/// Leaves the cluster and the agent running and tells how to use them.
pub fn keep(cluster: Cluster, agent: Agent, options: &Options) {
    let sleep_ns = cluster.sleep.ns().name().to_owned();
    let v1_log = cluster.httpbin_v1.access_log_path().to_owned();
    let v2_log = cluster.httpbin_v2.access_log_path().to_owned();
    let agent_log = agent.process().stderr_path().to_owned();
    let agent_pid = agent.detach();
    let v1_pid = cluster.httpbin_v1.detach();
    let v2_pid = cluster.httpbin_v2.detach();
    let kept = cluster.testbed.keep();

    say(format!("namespaces: {}", kept.namespaces.join(" ")));
    say(format!(
        "running: agent pid {agent_pid} (mirroring 100%), httpbin-v1 pid {v1_pid}, httpbin-v2 \
         pid {v2_pid}"
    ));
    say("Send a request from the sleep pod:");
    say(format!(
        "    ip netns exec {sleep_ns} curl http://httpbin:8000/headers"
    ));
    say("Read the access logs (v2's lines say host=httpbin-shadow:8000):");
    say(format!("    cat {}", v1_log.display()));
    say(format!("    tail -f {}", v2_log.display()));
    say("The agent's log (its counters every 10 s):");
    say(format!("    tail -f {}", agent_log.display()));
    say(format!("Remove it all with: {}", options.down_command()));
}

/// Removes a kept set-up (`--down`) and checks that it is gone.
pub fn down(options: &Options) -> Result<()> {
    let removed = remove_label(&options.label)
        .with_context(|| format!("removing the set-up labelled {}", options.label))?;
    verify_removed(&options.label)?;
    if removed.is_empty() {
        say("No demo set-up was running; nothing to remove.");
    } else {
        say(format!(
            "Removed {} (their processes, veths, the agent's eBPF program, /etc/netns entries and \
             logs went with them).",
            removed.join(", ")
        ));
    }
    Ok(())
}

/// Fails unless no namespace and no `/etc/netns` directory of the set-up remains.
pub fn verify_removed(label: &str) -> Result<()> {
    let left = leftovers(label)?;
    if !left.is_empty() {
        bail!("left behind: {}", left.join(", "));
    }
    Ok(())
}

/// The set-up's namespaces and `/etc/netns` directories that exist now.
fn leftovers(label: &str) -> Result<Vec<String>> {
    let prefix = format!("{NS_PREFIX}{label}-");
    let mut left = namespaces_with_prefix(&prefix)?;
    match std::fs::read_dir(NETNS_ETC_DIR) {
        Ok(entries) => {
            for entry in entries {
                let name = entry?.file_name().to_string_lossy().into_owned();
                if name.starts_with(&prefix) {
                    left.push(Path::new(NETNS_ETC_DIR).join(name).display().to_string());
                }
            }
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(err).context(NETNS_ETC_DIR),
    }
    Ok(left)
}
