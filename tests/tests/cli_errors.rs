//! End to end: the agent's errors say what is wrong and what to do, and exit non-zero.

use std::process::{Command, Output};

use mirror_tests::{agent::mirror_binary, require_root};

fn mirror(args: &[&str]) -> Output {
    Command::new(mirror_binary().expect("mirror binary"))
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run mirror")
}

fn assert_fails_saying(output: &Output, text: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "should fail: {stderr}");
    assert!(stderr.contains(text), "expected {text:?} in: {stderr}");
}

#[test]
fn bad_target_is_explained() {
    for (target, text) in [
        ("198.19.0.10", "has no port"),
        ("198.19.0.10:99999", "invalid port"),
        ("fd00::1:80", "IPv6 in brackets"),
        ("198.19.0.10/40:80", "prefix /40"),
    ] {
        let output = mirror(&["capture", "--iface", "lo", "--target", target]);
        assert_fails_saying(&output, text);
    }
}

#[test]
fn missing_interface_is_named() {
    if !require_root() {
        return;
    }
    let output = mirror(&[
        "capture",
        "--iface",
        "nonexistent0",
        "--target",
        "198.19.0.10:80",
    ]);
    assert_fails_saying(&output, "no network interface named \"nonexistent0\"");
}

#[test]
fn missing_privileges_are_explained() {
    if !require_root() {
        return;
    }
    // Drop to nobody with no capabilities at all.
    let output = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(mirror_binary().expect("mirror binary"))
        .args(["capture", "--iface", "lo", "--target", "198.19.0.10:80"])
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("setpriv (util-linux)");
    assert_fails_saying(&output, "not enough privileges");
    assert_fails_saying(&output, "CAP_BPF");
}
