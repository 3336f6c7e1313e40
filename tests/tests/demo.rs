//! End to end: the `mirror-demo` binary behind `cargo xtask demo` plays Istio's mirroring task,
//! says what the task says it should, and leaves nothing behind: when it ends, on Ctrl-C, and
//! after `--keep` then `--down`.
//!
//! Each test uses its own label, so they run in parallel and never touch a kept `demo` set-up.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use mirror_tests::{remove_label, require_root};

/// Generous: the first run may create httpbin's virtualenv from PyPI.
const DEMO_TIMEOUT: Duration = Duration::from_secs(300);

/// Built by cargo for this package's tests.
const DEMO: &str = env!("CARGO_BIN_EXE_mirror-demo");

struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs the demo with `args` to completion (killing it after [`DEMO_TIMEOUT`]).
fn run_demo(args: &[&str]) -> Run {
    let dir = std::env::temp_dir();
    let name = format!("mirror-demo-test-{}", args.join("_").replace('-', ""));
    let (out_path, err_path) = (
        dir.join(format!("{name}.out")),
        dir.join(format!("{name}.err")),
    );
    let mut child = Command::new(DEMO)
        .args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .expect("start mirror-demo");
    let deadline = Instant::now() + DEMO_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("mirror-demo {args:?} still running after {DEMO_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let run = Run {
        status,
        stdout: std::fs::read_to_string(&out_path).unwrap(),
        stderr: std::fs::read_to_string(&err_path).unwrap(),
    };
    let _ = std::fs::remove_file(out_path);
    let _ = std::fs::remove_file(err_path);
    run
}

/// Runs the demo and fails the test, with its output, unless it succeeds.
fn run_demo_ok(args: &[&str]) -> Run {
    let run = run_demo(args);
    assert!(
        run.status.success(),
        "{}\n{}\n{}",
        run.status,
        run.stdout,
        run.stderr
    );
    run
}

/// The part of the transcript under the heading that starts with `== <title>`.
fn section<'a>(transcript: &'a str, title: &str) -> &'a str {
    let start = transcript
        .find(&format!("== {title}"))
        .unwrap_or_else(|| panic!("no section {title:?} in:\n{transcript}"));
    let rest = &transcript[start..];
    let end = rest[3..].find("\n== ").map_or(rest.len(), |i| i + 3);
    &rest[..end]
}

/// The lines of `who`'s access log as printed under its caption (`(empty)` gives none).
fn log_lines<'a>(section: &'a str, who: &str) -> Vec<&'a str> {
    let mut lines = section.lines();
    lines
        .find(|line| line.starts_with(&format!("{who}'s access log")))
        .unwrap_or_else(|| panic!("no {who} access log in:\n{section}"));
    lines
        .take_while(|line| line.starts_with("    "))
        .map(str::trim)
        .filter(|line| *line != "(empty)")
        .collect()
}

/// `name=<number>` from the transcript.
fn number_after(text: &str, prefix: &str) -> u64 {
    let start = text
        .find(prefix)
        .unwrap_or_else(|| panic!("no {prefix:?} in:\n{text}"))
        + prefix.len();
    text[start..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|digits| digits.parse().ok())
        .unwrap_or_else(|| panic!("no number after {prefix:?}"))
}

/// What exists of a set-up: namespaces, `/etc/netns` directories and its log directory.
fn leftovers(label: &str) -> Vec<String> {
    let prefix = format!("mirror-{label}-");
    let mut left = Vec::new();
    for dir in ["/var/run/netns", "/etc/netns"] {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries {
                let name = entry.unwrap().file_name().to_string_lossy().into_owned();
                if name.starts_with(&prefix) {
                    left.push(format!("{dir}/{name}"));
                }
            }
        }
    }
    let log_dir = std::env::temp_dir().join(format!("mirror-{label}"));
    if log_dir.exists() {
        left.push(log_dir.display().to_string());
    }
    left
}

/// Whether `pid` runs (a zombie waiting for init to reap it does not).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim()
            .starts_with('Z')
    })
}

fn wait_until_dead(pids: &[u32]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while pids.iter().any(|pid| alive(*pid)) {
        assert!(Instant::now() < deadline, "still running: {pids:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Removes what an earlier, failed run of this test may have kept.
fn start_clean(label: &str) {
    remove_label(label).expect("remove an earlier run's set-up");
}

#[test]
fn demo_shows_the_task_and_cleans_up() {
    if !require_root() {
        return;
    }
    let label = "demotestrun";
    start_clean(label);
    let run = run_demo_ok(&["--label", label]);
    let out = &run.stdout;

    let step1 = section(out, "Step 1");
    let v1 = log_lines(step1, "httpbin-v1");
    assert_eq!(v1.len(), 1, "{step1}");
    assert!(
        v1[0].contains("\"GET /headers HTTP/1.1\" 200") && v1[0].ends_with("host=httpbin:8000")
    );
    assert!(log_lines(step1, "httpbin-v2").is_empty(), "{step1}");

    let step2 = section(out, "Step 2");
    let v1 = log_lines(step2, "httpbin-v1");
    assert_eq!(v1.len(), 2, "{step2}");
    assert!(
        v1.iter().all(|line| line.ends_with("host=httpbin:8000")),
        "{step2}"
    );
    let v2 = log_lines(step2, "httpbin-v2");
    assert_eq!(v2.len(), 1, "{step2}");
    assert!(v2[0].contains("\"GET /headers HTTP/1.1\" 200"), "{step2}");
    assert!(v2[0].ends_with("host=httpbin-shadow:8000"), "{step2}");
    assert!(step2.contains("\"Host\": \"httpbin:8000\""), "{step2}");
    assert!(step2.contains("requests_mirrored=1 "), "{step2}");

    let step3 = section(out, "Step 3");
    let received = number_after(step3, "v2 received ");
    assert!((30..=70).contains(&received), "{step3}");
    // Every copy the agent made reached v2, and the relay counted each one answered: against
    // gunicorn, which closes every connection after answering, too.
    assert_eq!(
        number_after(step3, "requests_mirrored="),
        received,
        "{step3}"
    );
    assert_eq!(number_after(step3, " answered="), received, "{step3}");
    assert!(!step3.contains("note: the agent copied"), "{step3}");
    assert_eq!(number_after(step3, "requests_sampled_out="), 100 - received);
    assert_eq!(number_after(step3, "httpbin-v1 logged "), 100, "{step3}");

    assert!(section(out, "Clean-up").contains("Removed mirror-demotestrun-node"));
    assert_eq!(leftovers(label), Vec::<String>::new());
}

#[test]
fn keep_leaves_a_working_set_up_until_down() {
    if !require_root() {
        return;
    }
    let label = "demotestkeep";
    start_clean(label);
    let run = run_demo_ok(&["--keep", "--label", label]);
    let out = &run.stdout;
    let kept = section(out, "The set-up stays up");
    let pids: Vec<u32> = ["agent pid ", "httpbin-v1 pid ", "httpbin-v2 pid "]
        .iter()
        .map(|prefix| u32::try_from(number_after(kept, prefix)).unwrap())
        .collect();
    assert!(pids.iter().all(|pid| alive(*pid)), "{pids:?}\n{kept}");
    assert_eq!(leftovers(label).len(), 4 + 1 + 1, "{:?}", leftovers(label));

    // The printed commands work: a curl from sleep reaches v1 and its copy reaches v2.
    let curl = kept
        .lines()
        .map(str::trim)
        .find(|line| line.starts_with("ip netns exec mirror-demotestkeep-sleep curl "))
        .unwrap_or_else(|| panic!("no curl command in:\n{kept}"));
    let v2_log = kept
        .lines()
        .find_map(|line| line.trim().strip_prefix("tail -f "))
        .map(PathBuf::from)
        .expect("v2's log path");
    let shadow_lines = |log: &Path| {
        std::fs::read_to_string(log)
            .unwrap()
            .lines()
            .filter(|line| line.ends_with("host=httpbin-shadow:8000"))
            .count()
    };
    let before = shadow_lines(&v2_log);
    let argv: Vec<&str> = curl.split_whitespace().collect();
    let answer = Command::new(argv[0]).args(&argv[1..]).output().unwrap();
    assert!(answer.status.success(), "{answer:?}");
    assert!(String::from_utf8_lossy(&answer.stdout).contains("\"Host\": \"httpbin:8000\""));
    let deadline = Instant::now() + Duration::from_secs(10);
    while shadow_lines(&v2_log) == before {
        assert!(Instant::now() < deadline, "the kept agent mirrored nothing");
        std::thread::sleep(Duration::from_millis(50));
    }

    // A second demo refuses to start over it and says how to remove it.
    let again = run_demo(&["--label", label]);
    assert!(!again.status.success());
    assert!(again.stderr.contains("--down"), "{}", again.stderr);
    assert!(
        pids.iter().all(|pid| alive(*pid)),
        "the refused run hurt the kept set-up"
    );

    let down = run_demo(&["--down", "--label", label]);
    assert!(down.status.success(), "{}", down.stderr);
    assert!(
        down.stdout.contains("Removed mirror-demotestkeep-"),
        "{}",
        down.stdout
    );
    assert_eq!(leftovers(label), Vec::<String>::new());
    wait_until_dead(&pids);
    let twice = run_demo(&["--down", "--label", label]);
    assert!(twice.status.success() && twice.stdout.contains("nothing to remove"));
}

#[test]
fn ctrl_c_removes_the_set_up() {
    if !require_root() {
        return;
    }
    let label = "demotestint";
    start_clean(label);
    let mut child = Command::new(DEMO)
        .args(["--label", label])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start mirror-demo");
    // Interrupt once the agent runs: every kind of process the demo starts is then alive.
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut in_step2 = false;
    for line in stdout.lines() {
        let line = line.unwrap();
        in_step2 |= line.starts_with("== Step 2");
        if in_step2 && line.contains("mirroring to") {
            break;
        }
    }
    assert!(in_step2, "the demo ended before step 2");
    let node = format!("mirror-{label}-node");
    let pids = Command::new("ip")
        .args(["netns", "pids", &node])
        .output()
        .unwrap();
    let pids: Vec<u32> = String::from_utf8_lossy(&pids.stdout)
        .split_whitespace()
        .map(|pid| pid.parse().unwrap())
        .collect();
    assert!(!pids.is_empty(), "no agent in {node}");
    assert!(!leftovers(label).is_empty());

    // SAFETY: signalling our own child.
    assert_eq!(
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) },
        0
    );
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{status}");
    assert_eq!(leftovers(label), Vec::<String>::new());
    wait_until_dead(&pids);
}
