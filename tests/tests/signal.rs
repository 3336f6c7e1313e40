//! SIGTERM to a process holding a test-bed removes the test-bed and exits with 143.
//!
//! Without a libtest harness, because the child is this same binary: run with
//! `MIRROR_SIGNAL_CHILD=1` it builds a test-bed, prints its namespaces and waits to be killed.

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use mirror_tests::{require_root, Testbed};

fn main() {
    if std::env::var_os("MIRROR_SIGNAL_CHILD").is_some() {
        child();
    }
    if !require_root() {
        println!("test sigterm_removes_live_testbeds ... ignored (needs root)");
        return;
    }
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env("MIRROR_SIGNAL_CHILD", "1")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let (log_dir, names) = line.trim().split_once(' ').expect("log dir and names");
    let names: Vec<&str> = names.split(' ').collect();
    assert_eq!(names.len(), 2, "child said {line:?}");
    assert!(Path::new(log_dir).is_dir());
    assert!(names.iter().all(|n| netns_exists(n)));

    // SAFETY: signalling our own child.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(143), "{status}");
    assert!(names.iter().all(|n| !netns_exists(n)), "{names:?}");
    assert!(!Path::new(log_dir).exists());
    println!("test sigterm_removes_live_testbeds ... ok");
    println!("1 passed, 0 failed");
}

fn child() -> ! {
    let mut tb = Testbed::new().unwrap();
    tb.add_host("client").unwrap();
    println!("{} {}", tb.log_dir().display(), tb.namespaces().join(" "));
    // The signal handler exits the process long before this; the bound only matters if the
    // parent died without signalling.
    std::thread::sleep(Duration::from_secs(60));
    std::process::exit(1)
}

fn netns_exists(name: &str) -> bool {
    Path::new("/var/run/netns").join(name).exists()
}
