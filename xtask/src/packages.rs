//! The system packages each task needs (which program comes from which Debian package, and
//! why), and installing the missing ones with apt-get when run as root on Debian or Ubuntu, so
//! that the README's commands need nothing by hand on a fresh machine. Elsewhere a task fails
//! naming what is missing and the command that installs it.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Result};

/// The tasks that run programs of the machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Task {
    Demo,
    Test,
    Bench,
}

/// How to tell whether something a task needs is there.
#[derive(Clone, Copy)]
enum Probe {
    /// A program on PATH.
    Program(&'static str),
    /// `python3 -m venv` with pip: Debian ships `venv`'s `ensurepip` separately.
    PythonVenv,
}

/// One thing a task needs, the Debian package that provides it, and what for.
struct Need {
    probe: Probe,
    package: &'static str,
    why: &'static str,
    /// Installed with its recommended packages (podman needs its network and storage helpers);
    /// everything else is installed without.
    recommends: bool,
}

/// A program on PATH, from `package`, for `why`.
const fn program(name: &'static str, package: &'static str, why: &'static str) -> Need {
    Need {
        probe: Probe::Program(name),
        package,
        why,
        recommends: false,
    }
}

/// `need`, installed with its recommended packages.
const fn with_recommends(need: Need) -> Need {
    Need {
        recommends: true,
        ..need
    }
}

/// What the namespace test-bed runs: the demo, the tests and the bench all build on it.
const TESTBED: &[Need] = &[
    program("ip", "iproute2", "namespaces, veths, routes"),
    program("tc", "iproute2", "qdiscs"),
    program("nft", "nftables", "the services' DNAT"),
    program("curl", "curl", "the client pod's requests"),
    program("python3", "python3", "httpbin"),
    Need {
        probe: Probe::PythonVenv,
        package: "python3-venv",
        why: "httpbin's virtualenv",
        recommends: false,
    },
];

/// What the tests add to the test-bed: the runtime image is built and run (tests/tests/image.rs).
const TEST: &[Need] = &[
    with_recommends(program("podman", "podman", "the image tests")),
    with_recommends(program("runc", "runc", "the image tests' runtime")),
    program(
        "redis-server",
        "redis-server",
        "raw TCP mode's v1 and v2 (tests/tests/protocols.rs)",
    ),
    program(
        "redis-cli",
        "redis-tools",
        "MONITOR on raw TCP mode's v1 and v2",
    ),
    program(
        "nghttpd",
        "nghttp2-server",
        "h2c mode's v1 and v2 (tests/tests/protocols.rs)",
    ),
    program(
        "nghttp",
        "nghttp2-client",
        "several h2c streams on one connection",
    ),
];

/// What the bench adds to the test-bed.
const BENCH: &[Need] = &[
    program("nginx", "nginx", "the fast backend and nginx's mirror"),
    program("wrk", "wrk", "the saturating load"),
    program(
        "bpftool",
        "bpftool",
        "the kernel program timed in isolation",
    ),
    program("h2load", "nghttp2-client", "the HTTP/2 load (h2load)"),
    program(
        "nghttpd",
        "nghttp2-server",
        "the HTTP/2 backend in v1 and v2",
    ),
];

impl Task {
    fn name(self) -> &'static str {
        match self {
            Task::Demo => "demo",
            Task::Test => "test",
            Task::Bench => "bench",
        }
    }

    fn needs(self) -> impl Iterator<Item = &'static Need> {
        let extra: &[Need] = match self {
            Task::Demo => &[],
            Task::Test => TEST,
            Task::Bench => BENCH,
        };
        TESTBED.iter().chain(extra)
    }
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Installs what `task` needs and the machine lacks (apt-get update once, then an install of
/// exactly the missing packages), or fails naming them where it cannot install.
pub fn ensure(task: Task) -> Result<()> {
    let wanted = missing(task);
    if wanted.is_empty() {
        return Ok(());
    }
    let names = packages(&wanted);
    if !can_install() {
        bail!("{}", advice(task, &wanted));
    }
    println!(
        "cargo xtask {}: installing {} with apt-get, for {}:",
        task.name(),
        names.join(" "),
        reasons(&wanted)
    );
    crate::run(apt().args(["update", "-qq"]))?;
    for recommends in [false, true] {
        let group: Vec<&Need> = wanted
            .iter()
            .copied()
            .filter(|need| need.recommends == recommends)
            .collect();
        if group.is_empty() {
            continue;
        }
        let mut install = apt();
        install.args(["install", "-y", "-qq"]);
        if !recommends {
            install.arg("--no-install-recommends");
        }
        crate::run(install.args(packages(&group)))?;
    }
    let still = missing(task);
    if !still.is_empty() {
        bail!(
            "apt-get installed {} but {} still missing",
            names.join(" "),
            programs(&still)
        );
    }
    Ok(())
}

/// Like [`ensure`] without installing: the message that says what is missing and how to
/// install it, if anything is.
pub fn check(task: Task) -> Option<String> {
    let wanted = missing(task);
    (!wanted.is_empty()).then(|| advice(task, &wanted))
}

fn missing(task: Task) -> Vec<&'static Need> {
    task.needs().filter(|need| !present(need.probe)).collect()
}

fn advice(task: Task, missing: &[&Need]) -> String {
    let packages = packages(missing).join(" ");
    let how = if is_root() {
        format!(
            "This is not Debian or Ubuntu (no /etc/debian_version or apt-get): install the \
             packages that provide them (on Debian: {packages})."
        )
    } else {
        format!(
            "Run the task as root to have it install them, or on Debian or Ubuntu: \
             apt-get install -y {packages}"
        )
    };
    format!(
        "the {} needs {}, which {} missing.\n{how}",
        task.name(),
        programs(missing),
        if missing.len() == 1 { "is" } else { "are" },
    )
}

fn programs(missing: &[&Need]) -> String {
    let names: Vec<&str> = missing
        .iter()
        .map(|need| match need.probe {
            Probe::Program(program) => program,
            Probe::PythonVenv => "python3 -m venv",
        })
        .collect();
    names.join(", ")
}

/// The packages of `missing`, each once, in order.
fn packages(missing: &[&Need]) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for need in missing {
        if !out.contains(&need.package) {
            out.push(need.package);
        }
    }
    out
}

fn reasons(missing: &[&Need]) -> String {
    let why: Vec<String> = missing
        .iter()
        .map(|need| format!("{} ({})", need.why, need.package))
        .collect();
    why.join(", ")
}

fn can_install() -> bool {
    is_root() && Path::new("/etc/debian_version").exists() && on_path("apt-get")
}

fn apt() -> Command {
    let mut cmd = Command::new("apt-get");
    cmd.env("DEBIAN_FRONTEND", "noninteractive");
    cmd
}

fn present(probe: Probe) -> bool {
    match probe {
        Probe::Program(program) => on_path(program),
        Probe::PythonVenv => python_has_venv(),
    }
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| is_executable(&dir.join(program)))
    })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    path.metadata()
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// Whether `python3 -m venv` can make a virtualenv with pip.
fn python_has_venv() -> bool {
    Command::new("python3")
        .args(["-c", "import venv, ensurepip"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_needs_the_testbed_and_the_bench_its_load_tools() {
        for task in [Task::Demo, Task::Test, Task::Bench] {
            let packages: Vec<&str> = task.needs().map(|n| n.package).collect();
            assert!(packages.contains(&"nftables") && packages.contains(&"python3-venv"));
            assert_eq!(packages.contains(&"wrk"), task == Task::Bench);
            assert_eq!(packages.contains(&"podman"), task == Task::Test);
        }
    }

    #[test]
    fn packages_are_listed_once_in_order() {
        let needs: Vec<&Need> = TESTBED.iter().collect();
        assert_eq!(
            packages(&needs),
            ["iproute2", "nftables", "curl", "python3", "python3-venv"]
        );
    }

    #[test]
    fn advice_names_the_programs_and_the_apt_line() {
        let missing: Vec<&Need> = TESTBED[2..4].iter().collect();
        let text = advice(Task::Demo, &missing);
        assert!(text.starts_with("the demo needs nft, curl, which are missing."));
        assert!(text.contains("nftables curl"));
    }
}
