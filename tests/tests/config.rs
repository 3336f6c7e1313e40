//! End to end: `mirror run --config FILE` on the namespace test-bed. Two mirrors on v2 (two
//! sinks, ports 80 and 81), per-mirror shares, header rules checked byte for byte against the
//! head v1 received, path matches, consistent sampling, and a reload under load.

use std::{
    io::{BufRead, BufReader, Read, Write},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering::Relaxed},
        Arc,
    },
    time::Duration,
};

use mirror_tests::{
    agent::{mirror_counter, Agent},
    require_root,
    scenario::{Scenario, READY, VIP},
    Sink, SinkRecord,
};

/// The v1 sink, and mirror sinks A (v2:80) and B (v2:81).
struct Bed {
    scenario: Scenario,
    v1: Sink,
    a: Sink,
    b: Sink,
}

impl Bed {
    fn new() -> Bed {
        let scenario = Scenario::new().expect("scenario");
        let v1 = Sink::start(&scenario.v1, 80).expect("v1 sink");
        let a = Sink::start(&scenario.v2, 80).expect("mirror A sink");
        let b = Sink::start(&scenario.v2, 81).expect("mirror B sink");
        Bed { scenario, v1, a, b }
    }

    fn backend(&self, port: u16) -> String {
        format!("{}:{port}", self.scenario.v2.ipv4())
    }

    /// A config with one policy for the VIP; `mirrors` and `extra` are YAML indented for
    /// the policy's list entry.
    fn config(&self, mirrors: &str, extra: &str) -> String {
        format!(
            "interfaces: [{iface}]\npolicies:\n- name: web\n  target: {{address: {VIP}, port: 8000}}\n{extra}  mirrors:\n{mirrors}",
            iface = self.scenario.client.node_ifname(),
        )
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.scenario.testbed.log_dir().join(name);
        std::fs::write(&path, text).expect("write config");
        path
    }

    fn agent(&self, config: &Path) -> Agent {
        let args: Vec<String> = [
            "run",
            "--config",
            &config.display().to_string(),
            "--grace-secs",
            "2",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        Agent::start(self.scenario.testbed.node(), "mirror-run", &args, READY).expect("start agent")
    }

    /// Sends `heads` on one keep-alive connection to the VIP, each after the previous answer.
    fn send(&self, heads: Vec<String>) {
        let vip = format!("{VIP}:8000");
        self.scenario
            .client
            .ns()
            .run(move || exchange_all(&vip, &heads))
            .expect("client thread");
    }
}

/// Writes each request and reads the sink's fixed answer (`Content-Length: 3`).
fn exchange_all(vip: &str, heads: &[String]) {
    let stream = std::net::TcpStream::connect(vip).expect("connect");
    let mut writer = stream.try_clone().expect("clone");
    let mut reader = BufReader::new(stream);
    for head in heads {
        writer.write_all(head.as_bytes()).expect("write");
        let mut line = String::new();
        loop {
            line.clear();
            reader.read_line(&mut line).expect("read");
            assert!(!line.is_empty(), "v1 closed the connection");
            if line == "\r\n" {
                break;
            }
        }
        let mut body = [0u8; 3];
        reader.read_exact(&mut body).expect("body");
    }
}

fn get(path: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: httpbin:8000\r\nUser-Agent: test\r\n{extra}\r\n")
}

fn paths(records: &[SinkRecord]) -> Vec<String> {
    let mut p: Vec<String> = records.iter().map(|r| r.path.clone()).collect();
    p.sort();
    p
}

#[test]
fn two_mirrors_take_their_shares_with_their_own_header_rules() {
    if !require_root() {
        return;
    }
    let bed = Bed::new();
    let (a, b) = (bed.backend(80), bed.backend(81));
    let mirrors = format!(
        "  - backend: {a}\n    percent: 100\n    requestHeaderModifier:\n      set: [{{name: x-mirrored, value: \"true\"}}]\n      add: [{{name: x-env, value: staging}}]\n      remove: [authorization]\n  - backend: {b}\n    fraction: {{numerator: 1, denominator: 2}}\n    hostRewrite: {{keep: true}}\n"
    );
    let config = bed.write("mirror.yaml", &bed.config(&mirrors, ""));
    let agent = bed.agent(&config);
    let n = 200;
    let heads = (0..n)
        .map(|i| {
            get(
                &format!("/r{i:03}"),
                "Authorization: Bearer secret\r\nX-Mirrored: no\r\nAccept: */*\r\n",
            )
        })
        .collect();
    bed.send(heads);
    let at_v1 = bed
        .v1
        .wait_for_records(n, Duration::from_secs(20))
        .expect("v1");
    let at_a = bed
        .a
        .wait_for_records(n, Duration::from_secs(20))
        .expect("A got all");
    std::thread::sleep(Duration::from_secs(1));
    let summary = agent.stop(libc::SIGTERM).expect("stop");
    let at_b = bed.b.records().expect("B");
    let label_a = format!("web/{a}");
    let label_b = format!("web/{b}");

    // Every request at A, about half at B, the counters exact and conserved.
    assert_eq!(at_a.len(), n, "{summary}");
    assert!(
        (60..=140).contains(&at_b.len()),
        "{} of {n} at B: {summary}",
        at_b.len()
    );
    assert_eq!(
        mirror_counter(&summary, "policy", &label_a, "requests_mirrored"),
        n as u64
    );
    assert_eq!(
        mirror_counter(&summary, "policy", &label_a, "requests_sampled_out"),
        0
    );
    let b_mirrored = mirror_counter(&summary, "policy", &label_b, "requests_mirrored");
    let b_out = mirror_counter(&summary, "policy", &label_b, "requests_sampled_out");
    assert_eq!(b_mirrored, at_b.len() as u64, "{summary}");
    assert_eq!(b_mirrored + b_out, n as u64, "{summary}");
    assert_eq!(
        mirror_counter(&summary, "relay", &label_a, "answered"),
        n as u64
    );
    assert_eq!(
        mirror_counter(&summary, "relay", &label_b, "answered"),
        b_mirrored
    );

    // Byte for byte: A gets v1's head with Host suffixed, Authorization removed, X-Mirrored
    // set in place and X-Env added last; B gets v1's head unchanged.
    let original = |path: &str| {
        at_v1
            .iter()
            .find(|r| r.path == path)
            .unwrap_or_else(|| panic!("{path} not at v1"))
            .head
            .clone()
    };
    for r in &at_a {
        let want = original(&r.path)
            .replace("Host: httpbin:8000\r\n", "Host: httpbin-shadow:8000\r\n")
            .replace("Authorization: Bearer secret\r\n", "")
            .replace("X-Mirrored: no\r\n", "X-Mirrored: true\r\n")
            .replace(
                "Accept: */*\r\n\r\n",
                "Accept: */*\r\nx-env: staging\r\n\r\n",
            );
        assert_eq!(r.head, want);
    }
    for r in &at_b {
        assert_eq!(r.head, original(&r.path));
    }
}

#[test]
fn a_path_match_mirrors_only_matching_requests() {
    if !require_root() {
        return;
    }
    let bed = Bed::new();
    let a = bed.backend(80);
    let extra = "  matches:\n  - path: {type: PathPrefix, value: /api}\n";
    let config = bed.write(
        "mirror.yaml",
        &bed.config(&format!("  - backend: {a}\n"), extra),
    );
    let agent = bed.agent(&config);
    let mut heads = Vec::new();
    for i in 0..10 {
        heads.push(get(&format!("/api/{i}"), ""));
        heads.push(get(&format!("/apix/{i}"), ""));
        heads.push(get(&format!("/other/{i}"), ""));
    }
    bed.send(heads);
    bed.v1
        .wait_for_records(30, Duration::from_secs(20))
        .expect("v1");
    bed.a
        .wait_for_records(10, Duration::from_secs(20))
        .expect("A");
    std::thread::sleep(Duration::from_secs(1));
    let summary = agent.stop(libc::SIGTERM).expect("stop");
    let want: Vec<String> = (0..10).map(|i| format!("/api/{i}")).collect();
    assert_eq!(paths(&bed.a.records().expect("A")), want, "{summary}");
    let label = format!("web/{a}");
    assert_eq!(
        mirror_counter(&summary, "policy", &label, "requests_mirrored"),
        10
    );
    assert_eq!(
        mirror_counter(&summary, "policy", &label, "requests_not_matched"),
        20
    );
}

#[test]
fn consistent_sampling_sends_the_same_requests_to_both_mirrors() {
    if !require_root() {
        return;
    }
    let bed = Bed::new();
    let (a, b) = (bed.backend(80), bed.backend(81));
    let mirrors = format!("  - backend: {a}\n    percent: 50\n  - backend: {b}\n    percent: 50\n");
    let extra = "  sampling: {consistentBy: header, header: x-request-id}\n";
    let config = bed.write("mirror.yaml", &bed.config(&mirrors, extra));
    let agent = bed.agent(&config);
    let n = 100;
    let heads = (0..n)
        .map(|i| get(&format!("/c{i:03}"), &format!("X-Request-Id: req-{i}\r\n")))
        .collect();
    bed.send(heads);
    bed.v1
        .wait_for_records(n, Duration::from_secs(20))
        .expect("v1");
    std::thread::sleep(Duration::from_secs(2));
    let summary = agent.stop(libc::SIGTERM).expect("stop");
    let (at_a, at_b) = (bed.a.records().expect("A"), bed.b.records().expect("B"));
    assert!(
        (25..=75).contains(&at_a.len()),
        "{} of {n}: {summary}",
        at_a.len()
    );
    assert_eq!(paths(&at_a), paths(&at_b), "{summary}");
}

/// Points `link` at a fresh directory holding `text` as `mirror.yaml`, the way the kubelet
/// updates a ConfigMap volume: a new timestamped directory, then an atomic rename of the
/// `..data` symlink.
fn configmap_update(dir: &Path, version: &str, text: &str) {
    let data = dir.join(format!("..{version}"));
    std::fs::create_dir_all(&data).expect("mkdir");
    std::fs::write(data.join("mirror.yaml"), text).expect("write");
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(format!("..{version}"), &tmp).expect("symlink");
    std::fs::rename(&tmp, dir.join("..data")).expect("swap ..data");
    let file = dir.join("mirror.yaml");
    if std::fs::symlink_metadata(&file).is_err() {
        std::os::unix::fs::symlink("..data/mirror.yaml", &file).expect("symlink file");
    }
}

#[test]
fn reload_under_load_changes_a_percentage_and_conserves_requests() {
    if !require_root() {
        return;
    }
    let bed = Bed::new();
    let a = bed.backend(80);
    let dir = bed.scenario.testbed.log_dir().join("configmap");
    let full = bed.config(&format!("  - backend: {a}\n    percent: 100\n"), "");
    configmap_update(&dir, "v1", &full);
    let mut agent = bed.agent(&dir.join("mirror.yaml"));
    let vip = format!("{VIP}:8000");
    // Load until told to stop: batches of 10 requests per connection, 50 ms apart.
    let stop = Arc::new(AtomicBool::new(false));
    let stop_load = Arc::clone(&stop);
    let load = bed
        .scenario
        .client
        .ns()
        .thread(move || {
            let mut sent = 0usize;
            while !stop_load.load(Relaxed) {
                let batch: Vec<String> = (sent..sent + 10)
                    .map(|i| get(&format!("/l{i:05}"), ""))
                    .collect();
                exchange_all(&vip, &batch);
                sent += batch.len();
                std::thread::sleep(Duration::from_millis(50));
            }
            sent
        })
        .expect("load");
    bed.v1
        .wait_for_records(100, Duration::from_secs(20))
        .expect("some load first");
    // A bad file first: refused, the running config kept.
    configmap_update(&dir, "v2", &full.replace("percent: 100", "percent: 150"));
    agent
        .wait_for_stderr("config not reloaded", Duration::from_secs(10))
        .expect("bad reload refused");
    configmap_update(&dir, "v3", &full.replace("percent: 100", "percent: 0"));
    agent
        .wait_for_stderr("config reloaded", Duration::from_secs(10))
        .expect("reloaded");
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Relaxed);
    let n = load.join().expect("load done");
    bed.v1
        .wait_for_records(n, Duration::from_secs(20))
        .expect("v1 got all");
    std::thread::sleep(Duration::from_secs(1));
    let summary = agent.stop(libc::SIGTERM).expect("stop");
    let label = format!("web/{a}");
    let mirrored = mirror_counter(&summary, "policy", &label, "requests_mirrored");
    let sampled_out = mirror_counter(&summary, "policy", &label, "requests_sampled_out");
    let at_a = bed.a.records().expect("A").len() as u64;
    // Every request decided exactly once, every mirrored one answered and received once.
    assert_eq!(mirrored + sampled_out, n as u64, "{summary}");
    assert!(mirrored >= 100 && sampled_out > 0, "{summary}");
    assert_eq!(
        mirror_counter(&summary, "relay", &label, "answered"),
        mirrored,
        "{summary}"
    );
    assert_eq!(at_a, mirrored, "{summary}");
    // What was mirrored is a prefix of the load: nothing after the reload took effect.
    let got = paths(&bed.a.records().expect("A"));
    let want: Vec<String> = (0..mirrored).map(|i| format!("/l{i:05}")).collect();
    assert_eq!(got, want);
}

/// `mirror` run outside any namespace, for the commands that need no root.
fn mirror(args: &[&str]) -> std::process::Output {
    std::process::Command::new(mirror_tests::agent::mirror_binary().expect("mirror binary"))
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run mirror")
}

#[test]
fn config_check_prints_policies_and_refuses_bad_files_with_their_line() {
    let dir = std::env::temp_dir().join(format!("mirror-config-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let good = "interfaces: [lo]\npolicies:\n- name: web\n  target: {address: 10.96.0.0/16, port: 80}\n  mirrors:\n  - backend: v2:80\n    percent: 25\n";
    std::fs::write(dir.join("good.yaml"), good).expect("write");
    std::fs::write(
        dir.join("bad.yaml"),
        good.replace("percent: 25", "percent: 150"),
    )
    .expect("write");
    let ok = mirror(&[
        "config",
        "check",
        &dir.join("good.yaml").display().to_string(),
    ]);
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(stdout.contains("policy web -> 10.96.0.0/16:80"), "{stdout}");
    assert!(
        stdout.contains("mirror v2:80: 25% host suffix -shadow"),
        "{stdout}"
    );
    let bad = mirror(&[
        "config",
        "check",
        &dir.join("bad.yaml").display().to_string(),
    ]);
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success());
    assert!(
        stderr.contains("bad.yaml:6:5: percent: percent must be within 0..=100, got 150"),
        "{stderr}"
    );
    // Flags that say what to mirror are refused next to a file.
    let both = mirror(&[
        "run",
        "--config",
        &dir.join("good.yaml").display().to_string(),
        "--shadow",
        "v2:80",
    ]);
    let stderr = String::from_utf8_lossy(&both.stderr);
    assert!(!both.status.success());
    assert!(
        stderr.contains("'--config <FILE>' cannot be used with '--shadow"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
