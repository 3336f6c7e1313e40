//! Finding and removing what test-beds leave behind.
//!
//! Every network namespace a test-bed creates is named `mirror-<owner>-<role>`:
//!
//! * ephemeral test-beds use `mirror-<pid>-<n>-<role>`: the owning process id lets a later run
//!   recognise leftovers of a process that died without cleaning up ([`cleanup_stale`]);
//! * kept set-ups (the demo) use `mirror-<label>-<role>` with a label that starts with a letter,
//!   so stale-cleanup never touches them and [`remove_label`] removes them on request.
//!
//! Removing a namespace means: kill every process inside it (they would otherwise keep it alive
//! after `ip netns del`), delete it (which also deletes the veths in it, so the root namespace is
//! left untouched), and remove its `/etc/netns/<name>` directory.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::{Mutex, Once};

use anyhow::{bail, Context as _, Result};

/// Prefix shared by every namespace this library creates.
pub const NS_PREFIX: &str = "mirror-";

/// Where `ip netns` keeps named namespaces.
const NETNS_RUN_DIR: &str = "/var/run/netns";

/// Where `ip netns exec` looks for per-namespace files to bind-mount over `/etc`.
pub(crate) const NETNS_ETC_DIR: &str = "/etc/netns";

/// Name prefixes of the live, not-kept test-beds of this process, by test-bed id. The signal
/// handler removes these; a kept test-bed leaves the registry.
static LIVE: Mutex<BTreeMap<u64, String>> = Mutex::new(BTreeMap::new());

/// Records a live test-bed's name prefix so that a signal removes it.
pub(crate) fn register(id: u64, prefix: &str) {
    install_signal_handler();
    live().insert(id, prefix.to_owned());
}

/// Forgets a test-bed that was removed or deliberately kept.
pub(crate) fn unregister(id: u64) {
    live().remove(&id);
}

fn live() -> std::sync::MutexGuard<'static, BTreeMap<u64, String>> {
    // A panic while holding the lock cannot leave the map inconsistent, so poisoning is moot.
    LIVE.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Installs, once per process, a handler that on SIGINT, SIGTERM or SIGHUP removes every live
/// test-bed (namespaces, their processes, `/etc/netns` and log directories) and exits with
/// 128 + the signal number, as a shell would report it. Without it an interrupted test run would
/// leak namespaces and servers until the next run's stale-cleanup. (A namespace being created
/// at that very moment can still escape; the next run's stale-cleanup removes it.)
fn install_signal_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let mut signals = match signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) {
            Ok(signals) => signals,
            Err(err) => {
                eprintln!("mirror-tests: cannot install signal handler: {err}");
                return;
            }
        };
        std::thread::Builder::new()
            .name("testbed-signals".into())
            .spawn(move || {
                if let Some(signal) = signals.forever().next() {
                    // Hold the lock until exit so that no test-bed is created or dropped meanwhile.
                    let live = live();
                    for prefix in live.values() {
                        if let Err(err) = remove_prefix(prefix) {
                            eprintln!("mirror-tests: cleanup of {prefix}* failed: {err:#}");
                        }
                        let _ = std::fs::remove_dir_all(log_dir_for(prefix));
                    }
                    std::process::exit(128 + signal);
                }
            })
            .expect("spawn the signal thread");
    });
}

/// Name prefix of an ephemeral test-bed: `mirror-<pid>-<n>-`.
pub(crate) fn pid_prefix(pid: u32, n: u64) -> String {
    format!("{NS_PREFIX}{pid}-{n}-")
}

/// Name prefix of a kept (labelled) set-up: `mirror-<label>-`.
pub(crate) fn label_prefix(label: &str) -> Result<String> {
    let ok = label.starts_with(|c: char| c.is_ascii_lowercase())
        && label.len() <= 16
        && label
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !ok {
        bail!("label {label:?} must be 1-16 lowercase letters/digits starting with a letter");
    }
    Ok(format!("{NS_PREFIX}{label}-"))
}

/// Names of all existing named network namespaces that start with `prefix`.
pub fn namespaces_with_prefix(prefix: &str) -> Result<Vec<String>> {
    let mut names = Vec::new();
    let entries = match std::fs::read_dir(NETNS_RUN_DIR) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(names),
        Err(err) => return Err(err).context(NETNS_RUN_DIR),
    };
    for entry in entries {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.starts_with(prefix) {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// Removes leftovers of test-bed processes that died without cleaning up: namespaces (and their
/// `/etc/netns` directories) named `mirror-<pid>-...` whose pid is no longer alive. Returns the
/// removed namespace names. Called by every `Testbed::new`.
pub fn cleanup_stale() -> Result<Vec<String>> {
    let mut dead = std::collections::BTreeSet::new();
    for name in namespaces_with_prefix(NS_PREFIX)?
        .into_iter()
        .chain(etc_dirs_with_prefix(NS_PREFIX)?)
    {
        if let Some(pid) = owner_pid(&name) {
            if !pid_alive(pid) {
                dead.insert(pid);
            }
        }
    }
    let mut removed = Vec::new();
    for pid in dead {
        removed.extend(remove_all_of_pid(pid)?);
    }
    Ok(removed)
}

/// The owning pid encoded in an ephemeral namespace name, if the name follows that scheme.
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(NS_PREFIX)?;
    let (pid, _) = rest.split_once('-')?;
    pid.parse().ok()
}

fn pid_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks whether the process exists; nothing is delivered.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Removes every namespace (with its processes and `/etc/netns` directory) of the ephemeral
/// test-beds owned by `pid`. Returns the removed namespace names.
pub fn remove_all_of_pid(pid: u32) -> Result<Vec<String>> {
    remove_prefix(&format!("{NS_PREFIX}{pid}-"))
}

/// Removes a set-up kept with `Testbed::keep` under `label` (e.g. `cargo xtask demo --down` with
/// label `demo`): its namespaces, the processes in them, its `/etc/netns` directories and its
/// log directory.
/// Returns the removed namespace names; removing nothing is not an error.
pub fn remove_label(label: &str) -> Result<Vec<String>> {
    let prefix = label_prefix(label)?;
    let removed = remove_prefix(&prefix)?;
    let log_dir = log_dir_for(&prefix);
    if let Err(err) = std::fs::remove_dir_all(&log_dir) {
        if err.kind() != std::io::ErrorKind::NotFound {
            return Err(err).with_context(|| format!("remove {}", log_dir.display()));
        }
    }
    Ok(removed)
}

/// The log directory of the test-bed whose names start with `prefix`.
pub(crate) fn log_dir_for(prefix: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(prefix.trim_end_matches('-'))
}

/// Removes all namespaces and `/etc/netns` directories whose name starts with `prefix`.
pub(crate) fn remove_prefix(prefix: &str) -> Result<Vec<String>> {
    let names = namespaces_with_prefix(prefix)?;
    let mut errors = Vec::new();
    for name in &names {
        if let Err(err) = remove_namespace(name) {
            errors.push(format!("{name}: {err:#}"));
        }
    }
    for dir in etc_dirs_with_prefix(prefix)? {
        let path = Path::new(NETNS_ETC_DIR).join(&dir);
        if let Err(err) = std::fs::remove_dir_all(&path) {
            if err.kind() != std::io::ErrorKind::NotFound {
                errors.push(format!("{}: {err}", path.display()));
            }
        }
    }
    if !errors.is_empty() {
        bail!("cleanup of {prefix}* incomplete: {}", errors.join("; "));
    }
    Ok(names)
}

fn etc_dirs_with_prefix(prefix: &str) -> Result<Vec<String>> {
    let entries = match std::fs::read_dir(NETNS_ETC_DIR) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(err).context(NETNS_ETC_DIR),
    };
    let mut dirs = Vec::new();
    for entry in entries {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.starts_with(prefix) {
            dirs.push(name);
        }
    }
    Ok(dirs)
}

/// Kills every process in namespace `name` (except this one) and deletes the namespace.
fn remove_namespace(name: &str) -> Result<()> {
    let out = Command::new("ip")
        .args(["netns", "pids", name])
        .output()
        .context("run ip netns pids")?;
    let own = std::process::id();
    for pid in String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|pid| pid.parse::<libc::pid_t>().ok())
    {
        if u32::try_from(pid) != Ok(own) {
            // SAFETY: sending a signal has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    let out = Command::new("ip")
        .args(["netns", "delete", name])
        .output()
        .context("run ip netns delete")?;
    // A concurrent cleanup may have won the race; only a namespace that still exists is a failure.
    if !out.status.success() && Path::new(NETNS_RUN_DIR).join(name).exists() {
        bail!(
            "ip netns delete {name}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pid_only_for_numeric_owners() {
        assert_eq!(owner_pid("mirror-1234-0-node"), Some(1234));
        assert_eq!(owner_pid("mirror-demo-node"), None);
        assert_eq!(owner_pid("other-1234-0-node"), None);
    }

    #[test]
    fn labels_cannot_look_like_pids() {
        assert_eq!(label_prefix("demo").unwrap(), "mirror-demo-");
        assert!(label_prefix("1234").is_err());
        assert!(label_prefix("Demo").is_err());
        assert!(label_prefix("a-b").is_err());
        assert!(label_prefix("").is_err());
    }
}
