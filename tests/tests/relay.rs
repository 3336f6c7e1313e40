//! End to end: `mirror run` replays captured requests to a real shadow, on the namespace
//! test-bed with real httpbin under gunicorn, as in Istio's mirroring task.

use std::time::Duration;

use mirror_tests::{agent::Agent, require_root, Host, Httpbin, Sink, Testbed};

const READY: &str = "mirroring to";
const VIP: &str = "198.19.0.10";

/// client -> service VIP:8000 (DNAT to v1:80) and a shadow v2.
struct Scenario {
    testbed: Testbed,
    client: Host,
    v2: Host,
}

impl Scenario {
    fn new() -> (Scenario, Host) {
        let mut testbed = Testbed::new().expect("test-bed");
        let client = testbed.add_host("client").expect("client");
        let v1 = testbed.add_host("v1").expect("v1");
        let v2 = testbed.add_host("v2").expect("v2");
        let vip = testbed
            .add_service(VIP.parse().expect("vip"), 8000, &v1, 80)
            .expect("service");
        testbed
            .add_hosts_entry(&client, "httpbin", vip.ip())
            .expect("hosts entry");
        (
            Scenario {
                testbed,
                client,
                v2,
            },
            v1,
        )
    }

    fn agent(&self, extra: &[&str]) -> Agent {
        let mut args: Vec<String> = [
            "run",
            "--iface",
            self.client.node_ifname(),
            "--target",
            &format!("{VIP}:8000"),
            "--shadow",
            &format!("{}:80", self.v2.ipv4()),
            "--grace-secs",
            "2",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        Agent::start(self.testbed.node(), "mirror-run", &args, READY).expect("start mirror run")
    }

    fn curl(&self, args: &[&str]) -> String {
        let mut argv = vec!["curl", "-sS", "--fail", "--max-time", "60"];
        argv.extend_from_slice(args);
        self.client.ns().exec_ok(&argv).expect("curl")
    }
}

#[test]
fn seed_scenario_v2_gets_the_request_with_shadow_host() {
    if !require_root() {
        return;
    }
    let (scenario, v1) = Scenario::new();
    let httpbin_v1 = Httpbin::start(&v1).expect("httpbin v1");
    let httpbin_v2 = Httpbin::start(&scenario.v2).expect("httpbin v2");

    // Step 1: no agent. v1 logs the request; v2 logs nothing.
    let without = scenario.curl(&["http://httpbin:8000/headers"]);
    httpbin_v1
        .wait_for_access_log(1, Duration::from_secs(10))
        .expect("v1 logs");
    std::thread::sleep(Duration::from_millis(500));
    assert!(httpbin_v2.access_log_lines().expect("v2 log").is_empty());

    // Step 2: mirror 100% to v2.
    let agent = scenario.agent(&[]);
    let with = scenario.curl(&["http://httpbin:8000/headers"]);
    let v2_lines = httpbin_v2
        .wait_for_access_log(1, Duration::from_secs(10))
        .expect("v2 logs the mirrored request");
    let v1_lines = httpbin_v1
        .wait_for_access_log(2, Duration::from_secs(10))
        .expect("v1 logs both");
    let summary = agent.stop(libc::SIGTERM).expect("stop agent");

    assert_eq!(v1_lines.len(), 2);
    assert!(v1_lines.iter().all(|line| line.host == "httpbin:8000"));
    assert_eq!(
        v2_lines.len(),
        1,
        "exactly one mirrored request: {v2_lines:?}"
    );
    assert_eq!(v2_lines[0].method, "GET");
    assert_eq!(v2_lines[0].path, "/headers");
    assert_eq!(v2_lines[0].host, "httpbin-shadow:8000");
    // The client only ever sees v1's answer, unchanged by mirroring.
    assert_eq!(without, with, "the client's response changed");
    assert!(with.contains("\"Host\": \"httpbin:8000\""), "{with}");
    assert!(summary.contains("sent=1 "), "{summary}");
}

fn body(len: usize, seed: u64) -> Vec<u8> {
    (0..len)
        .map(|i| ((i as u64).wrapping_mul(6_364_136_223_846_793_005) ^ seed).rotate_left(17) as u8)
        .collect()
}

#[test]
fn post_bodies_reach_v2_byte_exact_plain_and_chunked() {
    if !require_root() {
        return;
    }
    let (scenario, v1) = Scenario::new();
    let _v1 = Sink::start(&v1, 80).expect("v1 sink");
    let v2 = Sink::start(&scenario.v2, 80).expect("v2 sink");
    let agent = scenario.agent(&[]);
    let sizes = [1 << 10, 1 << 20, 64 << 20];
    let mut expected = Vec::new();
    for (i, size) in sizes.iter().enumerate() {
        let data = body(*size, i as u64);
        let path = scenario.testbed.log_dir().join(format!("body-{i}"));
        std::fs::write(&path, &data).expect("write body");
        let file = format!("@{}", path.display());
        // Plain (Content-Length), then chunked (Transfer-Encoding: chunked).
        scenario.curl(&[
            "-o",
            "/dev/null",
            "--data-binary",
            &file,
            &format!("http://httpbin:8000/plain-{i}"),
        ]);
        scenario.curl(&[
            "-o",
            "/dev/null",
            "-H",
            "Transfer-Encoding: chunked",
            "--data-binary",
            &file,
            &format!("http://httpbin:8000/chunked-{i}"),
        ]);
        let digest = mirror_tests::sha256_hex(&data);
        expected.push((format!("/plain-{i}"), *size as u64, digest.clone()));
        expected.push((format!("/chunked-{i}"), *size as u64, digest));
    }
    let records = v2
        .wait_for_records(expected.len(), Duration::from_secs(60))
        .expect("v2 received every request");
    let summary = agent.stop(libc::SIGTERM).expect("stop");
    let mut got: Vec<(String, u64, String)> = records
        .iter()
        .map(|r| (r.path.clone(), r.body_len, r.sha256.clone()))
        .collect();
    got.sort();
    expected.sort();
    assert_eq!(got, expected, "agent: {summary}");
    assert!(records
        .iter()
        .all(|r| r.host.as_deref() == Some("httpbin-shadow:8000")));
}
