//! CPU time and peak memory of a process group, read from `/proc`: what the mirroring component
//! (the agent, or nginx's master and workers, or Envoy) costs.

use std::path::Path;

use anyhow::{Context as _, Result};

/// CPU seconds (user + system) used so far by every live process in group `pgid`. nginx forks
/// its workers into the master's group, so the group covers all of it.
pub fn group_cpu_seconds(pgid: u32) -> Result<f64> {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let mut total = 0u64;
    for stat in group_members(pgid)? {
        total += stat.utime + stat.stime;
    }
    Ok(total as f64 / ticks)
}

/// Sum over the group's processes of their peak resident set (`VmHWM`), in KiB. For nginx it
/// counts pages the workers share with the master more than once: an upper bound.
pub fn group_peak_rss_kib(pgid: u32) -> Result<u64> {
    let mut total = 0;
    for stat in group_members(pgid)? {
        let path = format!("/proc/{}/status", stat.pid);
        // A process that exited since the scan has nothing left to count.
        let Ok(status) = std::fs::read_to_string(&path) else {
            continue;
        };
        total += status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .with_context(|| format!("no VmHWM in {path}"))?;
    }
    Ok(total)
}

struct Stat {
    pid: u32,
    utime: u64,
    stime: u64,
}

fn group_members(pgid: u32) -> Result<Vec<Stat>> {
    let mut members = Vec::new();
    for entry in std::fs::read_dir("/proc").context("read /proc")? {
        let entry = entry?;
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some((pgrp, stat)) = read_stat(&entry.path(), pid) {
            if pgrp == pgid {
                members.push(stat);
            }
        }
    }
    anyhow::ensure!(!members.is_empty(), "no process in group {pgid}");
    Ok(members)
}

/// Parses `/proc/<pid>/stat`: the fields after the parenthesised command name, which may itself
/// hold spaces. Returns the process group and the CPU times; `None` if the process is gone.
fn read_stat(dir: &Path, pid: u32) -> Option<(u32, Stat)> {
    let text = std::fs::read_to_string(dir.join("stat")).ok()?;
    parse_stat(&text, pid)
}

fn parse_stat(text: &str, pid: u32) -> Option<(u32, Stat)> {
    let fields: Vec<&str> = text[text.rfind(')')? + 2..].split(' ').collect();
    // After the name: state(3) ppid(4) pgrp(5) ... utime(14) stime(15), numbered from pid = 1.
    let pgrp = fields.get(2)?.parse().ok()?;
    let utime = fields.get(11)?.parse().ok()?;
    let stime = fields.get(12)?.parse().ok()?;
    Some((pgrp, Stat { pid, utime, stime }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_spaces_in_the_name() {
        let text = "42 (nginx: worker) S 41 41 41 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 1 0";
        let (pgrp, stat) = parse_stat(text, 42).unwrap();
        assert_eq!((pgrp, stat.utime, stat.stime), (41, 7, 3));
    }
}
