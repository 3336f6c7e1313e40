//! CPU time and peak memory of a process group, read from `/proc`: what the mirroring component
//! (the agent, or nginx's master and workers, or Envoy) costs; and the agent's memory counted
//! by physical page (`smaps_rollup`), not by mapping.

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

/// Memory of one process as `/proc/PID/smaps_rollup` gives it, in KiB.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Memory {
    /// Resident set: a page mapped twice (the ring buffer's data pages are) counts twice.
    pub rss_kib: u64,
    /// Proportional set: each physical page once, shared ones divided among their mappers.
    pub pss_kib: u64,
    /// Pages no other process maps, each once.
    pub private_kib: u64,
    /// PSS of the BPF map mappings (`anon_inode:bpf-map`): the ring buffer's pages, allocated
    /// in full by the kernel when the map is made, whatever the load.
    pub ring_pss_kib: u64,
    /// PSS of the anonymous mappings: the heap, malloc's arenas and the threads' stacks.
    pub anon_pss_kib: u64,
}

/// Reads `smaps_rollup` of `pid` (now, not a peak), and from `smaps` the share of the ring
/// buffer and of the anonymous mappings.
pub fn memory(pid: u32) -> Result<Memory> {
    let path = format!("/proc/{pid}/smaps_rollup");
    let text = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    let memory = parse_smaps_rollup(&text).with_context(|| format!("no Rss/Pss in {path}"))?;
    let path = format!("/proc/{pid}/smaps");
    let text = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    let (ring_pss_kib, anon_pss_kib) = pss_by_kind(&text);
    Ok(Memory {
        ring_pss_kib,
        anon_pss_kib,
        ..memory
    })
}

/// PSS in KiB of the BPF map mappings and of the anonymous ones, from `smaps` text: each
/// mapping's header line (`start-end perms offset dev inode [name]`) is followed by its fields.
fn pss_by_kind(text: &str) -> (u64, u64) {
    let (mut ring, mut anon) = (0, 0);
    let mut kind = None;
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or_default();
        if first.contains('-') && !first.ends_with(':') {
            let name = words.nth(4).unwrap_or_default();
            kind = if name == "anon_inode:bpf-map" {
                Some(&mut ring)
            } else if name.is_empty()
                || name.starts_with("[heap]")
                || name.starts_with("[stack")
                || name.starts_with("[anon")
            {
                Some(&mut anon)
            } else {
                None
            };
        } else if first == "Pss:" {
            if let (Some(total), Some(kib)) = (
                kind.as_deref_mut(),
                words.next().and_then(|n| n.parse::<u64>().ok()),
            ) {
                *total += kib;
            }
        }
    }
    (ring, anon)
}

fn parse_smaps_rollup(text: &str) -> Option<Memory> {
    let field = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
    };
    Some(Memory {
        rss_kib: field("Rss")?,
        pss_kib: field("Pss")?,
        private_kib: field("Private_Clean")? + field("Private_Dirty")?,
        ..Memory::default()
    })
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
    fn reads_smaps_rollup() {
        let text = "55f0-7ffd ---p 00000000 00:00 0   [rollup]\nRss:              137000 kB\n\
                    Pss:               72000 kB\nPss_Anon:          8000 kB\n\
                    Shared_Clean:       1000 kB\nPrivate_Clean:      2000 kB\n\
                    Private_Dirty:     70000 kB\n";
        let memory = parse_smaps_rollup(text).unwrap();
        assert_eq!((memory.rss_kib, memory.pss_kib), (137_000, 72_000));
        assert_eq!(memory.private_kib, 72_000);
        assert!(parse_smaps_rollup("Rss: 1 kB\n").is_none());
    }

    #[test]
    fn splits_pss_between_the_ring_and_anonymous_mappings() {
        let text = "7f00-7f01 rw-s 00000000 00:0f 1063 anon_inode:bpf-map\nRss: 4 kB\nPss: 4 kB\n\
                    7f01-7f09 r--s 00001000 00:0f 1063 anon_inode:bpf-map\nPss: 16388 kB\n\
                    5600-5700 rw-p 00000000 00:00 0 [heap]\nPss: 900 kB\n\
                    7e00-7e40 rw-p 00000000 00:00 0 \nPss: 3000 kB\n\
                    5500-5600 r-xp 00000000 fd:00 77 /usr/bin/mirror\nPss: 5000 kB\n";
        assert_eq!(pss_by_kind(text), (16_392, 3_900));
    }

    #[test]
    fn parses_stat_with_spaces_in_the_name() {
        let text = "42 (nginx: worker) S 41 41 41 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 1 0";
        let (pgrp, stat) = parse_stat(text, 42).unwrap();
        assert_eq!((pgrp, stat.utime, stat.stime), (41, 7, 3));
    }
}
