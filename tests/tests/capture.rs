//! End to end: `mirror capture` on a real veth in a network-namespace test-bed.
//!
//! Topology: client pod -> node -> server pod. The agent runs in the node namespace and
//! attaches to the node side of the client's veth, where packets leaving the client arrive on
//! ingress.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use mirror_tests::{
    agent::{counter, Agent},
    require_root,
    scenario::{ClientServer as Bed, CAPTURE_READY},
    stream::{flows, CapturedStream},
    Sink,
};

fn bed() -> Bed {
    Bed::new().expect("client and server")
}

trait CaptureBed {
    fn pcap(&self, name: &str) -> PathBuf;
    fn capture(&self, extra: &[String], pcap: &Path) -> Agent;
    fn curl(&self, args: &[&str]) -> String;
    fn server_v4(&self, port: u16) -> String;
}

impl CaptureBed for Bed {
    fn pcap(&self, name: &str) -> PathBuf {
        self.testbed.log_dir().join(name)
    }

    fn capture(&self, extra: &[String], pcap: &Path) -> Agent {
        let mut args = vec![
            "capture".to_owned(),
            "--iface".to_owned(),
            self.client.node_ifname().to_owned(),
            "--pcap".to_owned(),
            pcap.display().to_string(),
        ];
        args.extend(extra.iter().cloned());
        Agent::start(self.testbed.node(), "mirror-capture", &args, CAPTURE_READY)
            .expect("start mirror")
    }

    fn curl(&self, args: &[&str]) -> String {
        let mut argv = vec![
            "curl",
            "-sS",
            "--max-time",
            "60",
            "-H",
            "User-Agent: mirror-test",
        ];
        argv.extend_from_slice(args);
        self.client.ns().exec_ok(&argv).expect("curl")
    }

    fn server_v4(&self, port: u16) -> String {
        format!("{}:{port}", self.server.ipv4())
    }
}

fn only_flow(pcap: &Path) -> CapturedStream {
    let mut all = flows(pcap).expect("read pcap");
    assert_eq!(
        all.len(),
        1,
        "expected one captured flow, got {:?}",
        all.keys().collect::<Vec<_>>()
    );
    all.pop_first().expect("one flow").1
}

fn stop(agent: Agent) -> String {
    // Let the last records drain through the ring buffer before stopping.
    std::thread::sleep(Duration::from_millis(300));
    agent.stop(libc::SIGINT).expect("stop mirror")
}

#[test]
fn curl_get_is_captured_byte_exact() {
    if !require_root() {
        return;
    }
    let bed = bed();
    let pcap = bed.pcap("get.pcap");
    let agent = bed.capture(&["--target".into(), bed.server_v4(80)], &pcap);
    let url = format!("http://{}/exact?x=1", bed.server_v4(80));
    let verbose = bed
        .client
        .ns()
        .exec(&[
            "curl",
            "-sS",
            "-v",
            "-o",
            "/dev/null",
            "-H",
            "X-Probe: exact",
            &url,
        ])
        .expect("curl");
    assert!(verbose.status.success(), "curl failed");
    let summary = stop(agent);
    let stream = only_flow(&pcap);
    // curl -v prints the request head it sent as "> " lines.
    let expected: String = String::from_utf8_lossy(&verbose.stderr)
        .lines()
        .filter_map(|line| line.strip_prefix("> "))
        .map(|line| format!("{line}\r\n"))
        .collect();
    assert!(
        expected.starts_with("GET /exact?x=1 HTTP/1.1\r\n"),
        "{expected}"
    );
    assert!(expected.contains("X-Probe: exact\r\n"), "{expected}");
    assert_eq!(String::from_utf8_lossy(&stream.bytes), expected);
    assert!(stream.saw_syn && stream.saw_fin, "SYN and FIN are emitted");
    assert_eq!(
        counter(&summary, "ringbuf_full_drops"),
        Some(0),
        "{summary}"
    );
    assert!(
        counter(&summary, "pure_acks_skipped").unwrap_or(0) > 0,
        "{summary}"
    );
}

fn large_post_is_captured_whole(mib: usize) {
    if !require_root() {
        return;
    }
    let bed = bed();
    let body: Vec<u8> = (0..mib << 20)
        .map(|i| (i as u64).wrapping_mul(2_654_435_761).rotate_left(7) as u8)
        .collect();
    let body_path = bed.testbed.log_dir().join("body.bin");
    std::fs::write(&body_path, &body).expect("write body");
    let pcap = bed.pcap("post.pcap");
    let agent = bed.capture(
        &["--target".into(), bed.server_v4(80), "--quiet".into()],
        &pcap,
    );
    bed.curl(&[
        "-o",
        "/dev/null",
        "-H",
        "Content-Type: application/octet-stream",
        "--data-binary",
        &format!("@{}", body_path.display()),
        &format!("http://{}/upload", bed.server_v4(80)),
    ]);
    let summary = stop(agent);
    assert_eq!(counter(&summary, "truncations"), Some(0), "{summary}");
    assert_eq!(
        counter(&summary, "ringbuf_full_drops"),
        Some(0),
        "{summary}"
    );
    let stream = only_flow(&pcap);
    let head_end = stream
        .bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("request head")
        + 4;
    assert!(stream.bytes.starts_with(b"POST /upload HTTP/1.1\r\n"));
    assert_eq!(stream.bytes.len() - head_end, body.len(), "body length");
    assert!(stream.bytes[head_end..] == body[..], "body bytes differ");
    // GSO: the kernel hands TC super-packets, and they arrive whole.
    let records = stream.records;
    assert!(
        records < body.len() / 1448,
        "{records} records for {} bytes: expected GSO super-packets",
        body.len()
    );
}

#[test]
fn post_1_mib_is_captured_whole() {
    large_post_is_captured_whole(1);
}

#[test]
fn post_64_mib_is_captured_whole() {
    large_post_is_captured_whole(64);
}

#[test]
fn other_ports_and_addresses_are_not_captured() {
    if !require_root() {
        return;
    }
    let mut bed = bed();
    let other = bed.testbed.add_host("other").expect("other host");
    let _sink_81 = Sink::start(&bed.server, 81).expect("sink :81");
    let _other_sink = Sink::start(&other, 80).expect("sink on other");
    let pcap = bed.pcap("other.pcap");
    let agent = bed.capture(&["--target".into(), bed.server_v4(80)], &pcap);
    bed.curl(&[&format!("http://{}/", bed.server_v4(81))]);
    bed.curl(&[&format!("http://{}:80/", other.ipv4())]);
    let summary = stop(agent);
    assert!(flows(&pcap).expect("pcap").is_empty(), "nothing captured");
    assert_eq!(counter(&summary, "packets_matched"), Some(0), "{summary}");
    assert!(
        counter(&summary, "packets_seen").unwrap_or(0) > 0,
        "{summary}"
    );
}

#[test]
fn ipv6_target_is_captured() {
    if !require_root() {
        return;
    }
    let bed = bed();
    let pcap = bed.pcap("v6.pcap");
    let target = format!("[{}]:80", bed.server.ipv6());
    let agent = bed.capture(&["--target".into(), target.clone()], &pcap);
    bed.curl(&["-g", &format!("http://{target}/six")]);
    stop(agent);
    let stream = only_flow(&pcap);
    assert!(stream.bytes.starts_with(b"GET /six HTTP/1.1\r\n"));
}

#[test]
fn targets_change_while_attached() {
    if !require_root() {
        return;
    }
    let bed = bed();
    let _sink_81 = Sink::start(&bed.server, 81).expect("sink :81");
    let targets = bed.testbed.log_dir().join("targets");
    std::fs::write(&targets, format!("# initial\n{}\n", bed.server_v4(80))).expect("targets");
    let pcap = bed.pcap("reload.pcap");
    let mut agent = bed.capture(
        &["--targets-file".into(), targets.display().to_string()],
        &pcap,
    );
    bed.curl(&[&format!("http://{}/before-80", bed.server_v4(80))]);
    bed.curl(&[&format!("http://{}/before-81", bed.server_v4(81))]);
    std::fs::write(&targets, format!("{}\n", bed.server_v4(81))).expect("targets");
    // SIGHUP makes the reload immediate (a changed file is also noticed within a second).
    let pid = libc::pid_t::try_from(agent.pid()).expect("pid");
    // SAFETY: kill(2) on the agent we spawned.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    agent
        .wait_for_stderr("targets reloaded", Duration::from_secs(10))
        .expect("reload");
    bed.curl(&[&format!("http://{}/after-81", bed.server_v4(81))]);
    bed.curl(&[&format!("http://{}/after-80", bed.server_v4(80))]);
    let stdout = agent.stdout();
    stop(agent);
    let mut paths: Vec<String> = flows(&pcap)
        .expect("pcap")
        .values()
        .filter_map(|stream| {
            let line = stream.bytes.split(|b| *b == b'\r').next()?;
            Some(String::from_utf8_lossy(line).into_owned())
        })
        .collect();
    paths.sort();
    assert_eq!(
        paths,
        vec!["GET /after-81 HTTP/1.1", "GET /before-80 HTTP/1.1"],
        "captured requests; agent output:\n{stdout}"
    );
}
