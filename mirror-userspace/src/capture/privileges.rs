//! Checks, before touching the kernel, that we may load BPF programs and attach them.

/// Capability bits (linux/capability.h).
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// True if the effective capabilities allow loading and attaching our programs: CAP_NET_ADMIN
/// for TC, plus CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN, which implies both).
pub fn can_load_bpf() -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        // Cannot tell: let the kernel decide.
        return true;
    };
    let Some(effective) = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
    else {
        return true;
    };
    let has = |cap: u32| effective & (1u64 << cap) != 0;
    has(CAP_NET_ADMIN) && (has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)))
}
