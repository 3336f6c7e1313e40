//! End to end: traffic of the seed scenario recorded with `mirror capture --pcap` on the
//! client's veth, then `mirror replay` of that file to a real v2 (a sink) with no agent
//! running: v2 gets every request, Host rewritten, bodies byte for byte, outcomes conserved.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use mirror_tests::{
    agent::{counter, mirror_binary, relay_conserved, Agent},
    require_root,
    scenario::{Scenario, CAPTURE_READY, VIP},
    sha256_hex, Sink,
};
use mirror_userspace::capture::{packet, pcap};

/// The requests the client makes while the capture runs: (path, body length).
const REQUESTS: [(&str, usize); 5] = [
    ("/ka-0", 0),
    ("/ka-1", 0),
    ("/ka-2", 0),
    ("/plain", 100 << 10),
    ("/chunked", 300 << 10),
];
/// The client pauses this long before its last request, so pacing can be seen.
const PAUSE: Duration = Duration::from_millis(1200);

fn body(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i.wrapping_mul(131) >> 3) as u8).collect()
}

/// Records the client's requests (both directions, as `mirror capture` saves them) with no
/// agent running; v2 must have seen none of them.
fn record(scenario: &Scenario, v2: &Sink) -> PathBuf {
    let pcap = scenario.testbed.log_dir().join("recorded.pcap");
    let args: Vec<String> = [
        "capture",
        "--quiet",
        "--iface",
        scenario.client.node_ifname(),
        "--target",
        &format!("{VIP}:8000"),
        "--pcap",
        &pcap.display().to_string(),
    ]
    .map(str::to_owned)
    .to_vec();
    let capture = Agent::start(
        scenario.testbed.node(),
        "mirror-capture",
        &args,
        CAPTURE_READY,
    )
    .expect("start mirror capture");
    let mut keep_alive = vec!["-o", "/dev/null"];
    let urls: Vec<String> = REQUESTS[..3]
        .iter()
        .map(|(path, _)| format!("http://httpbin:8000{path}"))
        .collect();
    for url in &urls {
        keep_alive.extend(["-o", "/dev/null", url.as_str()]);
    }
    scenario.curl(&keep_alive[2..]);
    let file = scenario.testbed.log_dir().join("body");
    std::fs::write(&file, body(REQUESTS[3].1)).expect("body");
    let data = format!("@{}", file.display());
    scenario.curl(&[
        "-o",
        "/dev/null",
        "--data-binary",
        &data,
        "http://httpbin:8000/plain",
    ]);
    std::thread::sleep(PAUSE);
    std::fs::write(&file, body(REQUESTS[4].1)).expect("body");
    scenario.curl(&[
        "-o",
        "/dev/null",
        "-H",
        "Transfer-Encoding: chunked",
        "--data-binary",
        &data,
        "http://httpbin:8000/chunked",
    ]);
    std::thread::sleep(Duration::from_millis(300));
    let summary = capture.stop(libc::SIGINT).expect("stop capture");
    assert!(
        counter(&summary, "reverse_records").unwrap_or(0) > 0,
        "v1's side was captured: {summary}"
    );
    assert!(v2.records().expect("v2 records").is_empty(), "no agent ran");
    pcap
}

/// Runs `mirror replay FILE ARGS...` in the node namespace to its end; returns its stderr.
fn replay(scenario: &Scenario, file: &Path, extra: &[&str]) -> String {
    let mut argv = vec![
        mirror_binary()
            .expect("mirror binary")
            .display()
            .to_string(),
        "replay".to_owned(),
        file.display().to_string(),
    ];
    argv.extend(extra.iter().map(|arg| arg.to_string()));
    let out = scenario
        .testbed
        .node()
        .exec(&argv)
        .expect("run mirror replay");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "mirror replay failed: {stderr}");
    stderr
}

/// The requests v2 should hold: path, body length, body digest.
fn expected() -> Vec<(String, u64, String)> {
    let mut expected: Vec<_> = REQUESTS
        .iter()
        .map(|(path, len)| (path.to_string(), *len as u64, sha256_hex(&body(*len))))
        .collect();
    expected.sort();
    expected
}

/// Waits for `count` records at v2 and checks the last `REQUESTS.len()` of them.
fn assert_v2_got_every_request(v2: &Sink, count: usize, summary: &str) {
    let records = v2
        .wait_for_records(count, Duration::from_secs(30))
        .unwrap_or_else(|error| panic!("v2 did not get every request: {error}\n{summary}"));
    assert_eq!(records.len(), count, "{summary}");
    let latest = &records[count - REQUESTS.len()..];
    let mut got: Vec<_> = latest
        .iter()
        .map(|r| (r.path.clone(), r.body_len, r.sha256.clone()))
        .collect();
    got.sort();
    assert_eq!(got, expected(), "{summary}");
    assert!(
        latest
            .iter()
            .all(|r| r.host.as_deref() == Some("httpbin-shadow:8000")),
        "{latest:?}"
    );
    assert_eq!(
        relay_conserved(summary).expect("conserved"),
        REQUESTS.len() as u64,
        "{summary}"
    );
    assert_eq!(
        counter(summary, "requests_mirrored"),
        Some(REQUESTS.len() as u64),
        "{summary}"
    );
}

#[test]
fn recorded_capture_replays_every_request_to_v2_as_fast_paced_sharded_and_under_a_config() {
    if !require_root() {
        return;
    }
    let scenario = Scenario::new().expect("scenario");
    let _v1 = Sink::start(&scenario.v1, 80).expect("v1 sink");
    let v2 = Sink::start(&scenario.v2, 80).expect("v2 sink");
    let pcap = record(&scenario, &v2);
    let shadow = format!("{}:80", scenario.v2.ipv4());

    // As fast as possible, v1's endpoints learnt from the handshakes.
    let summary = replay(&scenario, &pcap, &["--shadow", &shadow]);
    assert_v2_got_every_request(&v2, REQUESTS.len(), &summary);
    assert_eq!(
        counter(&summary, "unattributed_packets"),
        Some(0),
        "{summary}"
    );

    // At four times the recorded pace, v1 named: the client's pause is kept, shortened.
    let started = Instant::now();
    let target = format!("{VIP}:8000");
    let summary = replay(
        &scenario,
        &pcap,
        &["--shadow", &shadow, "--target", &target, "--speed", "4"],
    );
    let took = started.elapsed();
    assert_v2_got_every_request(&v2, 2 * REQUESTS.len(), &summary);
    assert!(took >= PAUSE / 4, "paced replay took {took:?}");

    // Sharded over two pipeline threads (each with its own relay): the same requests.
    let summary = replay(
        &scenario,
        &pcap,
        &["--shadow", &shadow, "--capture-threads", "2"],
    );
    assert_v2_got_every_request(&v2, 3 * REQUESTS.len(), &summary);
    assert_eq!(counter(&summary, "threads"), Some(2), "{summary}");
    assert_eq!(
        counter(&summary, "records_dropped_queue_full"),
        Some(0),
        "{summary}"
    );

    // Sharded under a config file (a policy dispatcher per thread): the same requests.
    let config = scenario.testbed.log_dir().join("replay.yaml");
    std::fs::write(
        &config,
        format!(
            "interfaces: [{iface}]\npolicies:\n- name: replayed\n  target: {{address: {VIP}, \
             port: 8000}}\n  mirrors:\n  - backend: {shadow}\n",
            iface = scenario.client.node_ifname(),
        ),
    )
    .expect("write config");
    let config = config.display().to_string();
    let summary = replay(
        &scenario,
        &pcap,
        &["--config", &config, "--capture-threads", "2"],
    );
    assert_v2_got_every_request(&v2, 4 * REQUESTS.len(), &summary);
    assert_eq!(counter(&summary, "threads"), Some(2), "{summary}");
}

/// Writes the packets of `file` that come from the client (not from VIP:8000) to a new file.
fn client_direction_only(file: &Path) -> PathBuf {
    let packets = pcap::read_all(std::fs::File::open(file).expect("open")).expect("read");
    let vip: std::net::SocketAddr = format!("{VIP}:8000").parse().expect("vip");
    let out = file.with_file_name("client-only.pcap");
    let mut writer = pcap::Writer::new(std::fs::File::create(&out).expect("create"), 1 << 20)
        .expect("pcap header");
    let mut kept = 0;
    for captured in &packets {
        let segment = packet::parse_headers(&captured.data).expect("a TCP packet");
        if segment.flow.src != vip {
            writer
                .write(captured.unix_ns, &captured.data, captured.orig_len)
                .expect("write");
            kept += 1;
        }
    }
    writer.flush().expect("flush");
    assert!(
        kept > 0 && kept < packets.len(),
        "{kept} of {}",
        packets.len()
    );
    out
}

#[test]
fn a_capture_of_the_client_direction_only_admits_nothing_unless_no_reverse() {
    if !require_root() {
        return;
    }
    let scenario = Scenario::new().expect("scenario");
    let _v1 = Sink::start(&scenario.v1, 80).expect("v1 sink");
    let v2 = Sink::start(&scenario.v2, 80).expect("v2 sink");
    let one_way = client_direction_only(&record(&scenario, &v2));
    let shadow = format!("{}:80", scenario.v2.ipv4());

    let summary = replay(&scenario, &one_way, &["--shadow", &shadow]);
    assert!(summary.contains("no packets of v1's side"), "{summary}");
    assert_eq!(counter(&summary, "requests_mirrored"), Some(0), "{summary}");
    assert_eq!(relay_conserved(&summary).expect("conserved"), 0);
    std::thread::sleep(Duration::from_millis(300));
    assert!(v2.records().expect("v2 records").is_empty());

    let summary = replay(&scenario, &one_way, &["--shadow", &shadow, "--no-reverse"]);
    assert_v2_got_every_request(&v2, REQUESTS.len(), &summary);
}
