//! `mirror-demo`: Istio's "Mirroring" task played on the namespace test-bed and narrated for a
//! newcomer. `cargo xtask demo` installs and builds what it needs, then runs it; the end-to-end
//! test runs it directly.
//!
//! It lives in the test-bed's package, not in xtask, because the test-bed links the agent's
//! library, whose build script needs the eBPF toolchain that xtask itself has to install first.

mod agent;
mod cli;
mod cluster;
mod lifecycle;
mod narrate;
mod progress;
mod steps;

use std::process::ExitCode;

use anyhow::{bail, Context as _, Result};

use cli::Options;
use narrate::{heading, say};

fn main() -> ExitCode {
    // The agent inherits it: its log lines are shown and kept in files, where colour codes
    // would be noise. Set before any thread exists.
    std::env::set_var("NO_COLOR", "1");
    // Help and bad arguments exit here (status 0 and 2), as clap does everywhere.
    let options = <Options as clap::Parser>::parse();
    let result = require_root().and_then(|()| {
        if options.down {
            lifecycle::down(&options)
        } else {
            play(&options)
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            report(&err);
            ExitCode::FAILURE
        }
    }
}

/// The whole story: set-up, the three steps, then clean-up or `--keep`.
fn play(options: &Options) -> Result<()> {
    lifecycle::refuse_if_present(options)?;
    heading("Set-up: the cluster of Istio's task, emulated with network namespaces");
    let cluster = cluster::create(&options.label).context("set-up")?;
    steps::without_mirroring(&cluster).context("step 1 (no mirroring)")?;
    steps::mirror_all(&cluster).context("step 2 (mirroring 100%)")?;
    let sampled = steps::mirror_half(&cluster).context("step 3 (mirroring 50%)")?;
    recap(sampled);
    if options.keep {
        heading("The set-up stays up (--keep)");
        let agent = steps::mirror_all_again(&cluster).context("restarting the agent for --keep")?;
        lifecycle::keep(cluster, agent, options);
        return Ok(());
    }
    heading("Clean-up");
    let namespaces = cluster.testbed.namespaces();
    drop(cluster);
    lifecycle::verify_removed(&options.label).context("clean-up")?;
    say(format!(
        "Removed {} with the servers, the agent's eBPF program, the veths and the nftables rules \
         in them. (`--keep` leaves it all running instead.)",
        namespaces.join(", ")
    ));
    Ok(())
}

/// What the run showed, in the task's terms.
fn recap(sampled: usize) {
    heading("What happened");
    say("- The client only ever talked to the service and always got v1's answer (Host httpbin:8000).");
    say("- With mirroring at 100%, v2 received a copy of the request with Host httpbin-shadow:8000;");
    say("  its reply went nowhere.");
    say(format!(
        "- At 50%, v2 received {sampled} of {} requests.",
        steps::SAMPLED_REQUESTS
    ));
    say("- No proxy sat in the request path: a TC eBPF program on the sleep pod's veth copied the");
    say("  packets, and the agent in the node rebuilt and replayed the requests.");
}

fn require_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "needs root: it creates network namespaces and loads an eBPF program. Run it as root, \
             e.g. `sudo -E env \"PATH=$PATH\" cargo xtask demo`."
        );
    }
    Ok(())
}

/// Says which step failed, then why, outermost reason first. A failed run has already removed
/// its set-up (the test-bed does it when dropped).
fn report(err: &anyhow::Error) {
    let mut chain = err.chain();
    if let Some(step) = chain.next() {
        eprintln!("\nmirror demo failed: {step}");
    }
    for cause in chain {
        eprintln!("  because: {cause}");
    }
}
