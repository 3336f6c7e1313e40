//! Deciding whether a test that needs namespaces can run here.

use std::io::Write as _;
use std::sync::OnceLock;

/// Whether this process can build test-beds. If it cannot: under CI (env `CI` set) it panics,
/// because a test that needs root must fail there rather than pass without testing anything;
/// elsewhere it prints "skipped: needs root" to stderr and returns `false`, so a developer
/// without root can still run the other tests. Use as `if !require_root() { return; }`.
pub fn require_root() -> bool {
    static PROBE: OnceLock<Result<(), String>> = OnceLock::new();
    match PROBE.get_or_init(probe) {
        Ok(()) => true,
        Err(reason) if std::env::var_os("CI").is_some() => {
            panic!("this test needs root and network namespaces, and CI is set: {reason}")
        }
        Err(reason) => {
            // Written to the stream itself: libtest captures `eprintln!`, and a skip must be seen.
            let _ = writeln!(std::io::stderr(), "skipped: needs root ({reason})");
            false
        }
    }
}

/// Tries what test-beds do: being root and creating (then deleting) a namespace.
fn probe() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("not running as root".into());
    }
    crate::Testbed::new()
        .map(drop)
        .map_err(|err| format!("cannot create a network namespace: {err:#}"))
}
