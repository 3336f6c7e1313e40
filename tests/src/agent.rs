//! Runs the `mirror` binary inside a test-bed's node namespace, the way a DaemonSet pod runs
//! it on a node, and reads back what it reported.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::{Netns, Process};

/// The `mirror` binary: `$MIRROR_BIN` if set (`cargo xtask test` points it at the release
/// build, so the tests exercise what ships), else the one built alongside these tests.
pub fn mirror_binary() -> Result<PathBuf> {
    if let Some(binary) = std::env::var_os("MIRROR_BIN") {
        return Ok(PathBuf::from(binary));
    }
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let binary = target_dir.join(profile).join("mirror");
    if !binary.exists() {
        bail!(
            "{} is missing: build it first (`cargo build --bins`, or run `cargo xtask test`)",
            binary.display()
        );
    }
    Ok(binary)
}

/// A running agent. Dropping it kills it (SIGTERM, then SIGKILL).
#[derive(Debug)]
pub struct Agent {
    process: Option<Process>,
    /// The line it prints to stderr once attached.
    ready_marker: &'static str,
}

impl Agent {
    /// Starts `mirror <args>` in `ns` and waits until it has attached (or fails with its
    /// stderr). `ready_marker` is the stderr text that says it is capturing.
    pub fn start(
        ns: &Netns,
        label: &str,
        args: &[String],
        ready_marker: &'static str,
    ) -> Result<Agent> {
        let mut argv = vec![mirror_binary()?.display().to_string()];
        argv.extend(args.iter().cloned());
        let process = ns.spawn(label, &argv)?;
        Agent::adopt(process, ready_marker)
    }

    /// Takes over an agent started some other way (inside a container, say) and waits until it
    /// has attached, as [`Agent::start`] does.
    pub fn adopt(process: Process, ready_marker: &'static str) -> Result<Agent> {
        let mut agent = Agent {
            process: Some(process),
            ready_marker,
        };
        agent.wait_for_stderr(agent.ready_marker, Duration::from_secs(20))?;
        Ok(agent)
    }

    pub fn process(&self) -> &Process {
        self.process
            .as_ref()
            .expect("process is present until stopped")
    }

    /// Leaves the agent running after this guard is gone (a kept set-up) and returns its pid. It
    /// still dies when its namespace is removed.
    pub fn detach(mut self) -> u32 {
        self.process
            .take()
            .expect("process is present until stopped")
            .detach()
    }

    pub fn pid(&self) -> u32 {
        self.process().pid()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.process().stderr_path()).unwrap_or_default()
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.process().stdout_path()).unwrap_or_default()
    }

    /// Waits until stderr contains `text`; fails early if the agent exits.
    pub fn wait_for_stderr(&mut self, text: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.stderr().contains(text) {
                return Ok(());
            }
            let process = self.process.as_mut().context("agent already stopped")?;
            if let Some(status) = process.try_status()? {
                bail!(
                    "mirror exited ({status}) before printing {text:?}:\n{}",
                    self.stderr()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "mirror did not print {text:?} within {timeout:?}:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends `signal` and waits for the agent to exit; returns its stderr.
    pub fn stop(mut self, signal: i32) -> Result<String> {
        let process = self.process.take().context("agent already stopped")?;
        let pid = libc::pid_t::try_from(process.pid()).context("pid")?;
        // SAFETY: kill(2) with a pid we spawned and have not reaped.
        if unsafe { libc::kill(pid, signal) } != 0 {
            bail!("kill {pid}: {}", std::io::Error::last_os_error());
        }
        let mut process = process;
        let deadline = Instant::now() + Duration::from_secs(20);
        while process.try_status()?.is_none() {
            if Instant::now() > deadline {
                bail!("mirror did not exit after signal {signal}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(std::fs::read_to_string(process.stderr_path()).unwrap_or_default())
    }
}

/// Reads `name=value` pairs from the agent's summary lines.
/// Checks the relay's conservation law on a closing summary line: every request handed to the
/// relay ended in exactly one outcome (`requests = answered + unanswered + dropped`, none
/// pending), and every request the pipeline mirrored whole was handed to it. Returns the
/// number answered.
pub fn relay_conserved(summary: &str) -> Result<u64> {
    let get = |name: &str| {
        counter(summary, name).with_context(|| format!("no {name}= in the summary: {summary}"))
    };
    let (requests, answered) = (get("requests")?, get("answered")?);
    let (unanswered, dropped, pending) = (get("unanswered")?, get("dropped")?, get("pending")?);
    let mirrored = get("requests_mirrored")?;
    if pending != 0 || requests != answered + unanswered + dropped || requests < mirrored {
        bail!(
            "relay outcomes do not add up: requests={requests} answered={answered} \
             unanswered={unanswered} dropped={dropped} pending={pending} \
             (pipeline requests_mirrored={mirrored}): {summary}"
        );
    }
    Ok(answered)
}

pub fn counter(summary: &str, name: &str) -> Option<u64> {
    summary
        .split_whitespace()
        .filter_map(|field| field.split_once('='))
        .find(|(key, _)| *key == name)
        .and_then(|(_, value)| value.parse().ok())
}

/// A counter of one mirror in the agent's summary: stage `stage`, label `mirror` (samples
/// follow the label they belong to).
pub fn mirror_counter(summary: &str, stage: &str, mirror: &str, name: &str) -> u64 {
    let line = summary
        .lines()
        .rev()
        .find(|l| l.contains(&format!("{stage}: ")))
        .unwrap_or_else(|| panic!("no {stage} stage in {summary}"));
    let part = line
        .split(" | ")
        .find(|p| p.trim_start().starts_with(&format!("{stage}:")))
        .expect("stage part");
    let mut label = "";
    for token in part.split_whitespace().skip(1) {
        match token.split_once('=') {
            None => label = token,
            Some((key, value)) if label == mirror && key == name => {
                return value.parse().expect("number")
            }
            Some(_) => {}
        }
    }
    panic!("no {name} for {mirror} in {part}")
}
