//! End to end: `mirror capture` on a real veth in a network-namespace test-bed.
//!
//! Topology: client pod -> node -> server pod. The agent runs in the node namespace and
//! attaches to the node side of the client's veth, where packets leaving the client arrive on
//! ingress.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use mirror_tests::{
    agent::{counter, Agent},
    require_root,
    scenario::{ClientServer as Bed, CAPTURE_READY},
    stream::{flows, reverse_segments, CapturedStream, ReverseSegment},
    Sink,
};
use mirror_userspace::capture::{packet, pcap};

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

fn only_flow(pcap: &Path, target: SocketAddr) -> CapturedStream {
    let mut all = flows(pcap, &[target]).expect("read pcap");
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
    let stream = only_flow(&pcap, bed.server_v4(80).parse().expect("addr"));
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
    let stream = only_flow(&pcap, bed.server_v4(80).parse().expect("addr"));
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
    let target = bed.server_v4(80).parse().expect("addr");
    assert!(
        flows(&pcap, &[target]).expect("pcap").is_empty(),
        "nothing captured"
    );
    assert_eq!(counter(&summary, "packets_matched"), Some(0), "{summary}");
    assert_eq!(counter(&summary, "reverse_matched"), Some(0), "{summary}");
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
    let stream = only_flow(&pcap, target.parse().expect("addr"));
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
    let targets = [80, 81].map(|port| bed.server_v4(port).parse().expect("addr"));
    let mut paths: Vec<String> = flows(&pcap, &targets)
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

/// The record line `mirror capture` prints for a header-only segment of v1's side.
fn reverse_lines(stdout: &str) -> Vec<&str> {
    stdout
        .lines()
        .filter(|line| line.contains(" reverse "))
        .collect()
}

/// v1's header-only segments in the pcap (from `targets`), each also printed by `mirror
/// capture` as one `reverse` line.
fn reverse_records(pcap: &Path, targets: &[SocketAddr], stdout: &str) -> Vec<ReverseSegment> {
    let reverse = reverse_segments(pcap, targets).expect("pcap");
    assert_eq!(
        reverse_lines(stdout).len(),
        reverse.len(),
        "one line per record: {reverse:?}\n{stdout}"
    );
    reverse
}

#[test]
fn v1_handshake_and_acks_are_captured_header_only() {
    if !require_root() {
        return;
    }
    let bed = bed();
    let target: SocketAddr = bed.server_v4(80).parse().expect("addr");
    let pcap = bed.pcap("reverse.pcap");
    let agent = bed.capture(&["--target".into(), target.to_string()], &pcap);
    bed.curl(&["-o", "/dev/null", &format!("http://{target}/reverse")]);
    std::thread::sleep(Duration::from_millis(300));
    let stdout = agent.stdout();
    let summary = stop(agent);
    let client = only_flow(&pcap, target);
    let isn = client.isn.expect("the client's SYN");
    let reverse = reverse_records(&pcap, &[target], &stdout);
    let syn_ack = reverse
        .iter()
        .find(|segment| segment.flags.syn())
        .unwrap_or_else(|| panic!("no SYN-ACK among {reverse:?}"));
    assert!(syn_ack.flags.ack(), "{syn_ack:?}");
    assert_eq!(syn_ack.ack, isn.wrapping_add(1), "{syn_ack:?}");
    assert!(syn_ack.window_scale.is_some(), "{syn_ack:?}");
    // v1 acknowledges the whole request (and, once the client closes, its FIN).
    let request_end = isn
        .wrapping_add(1)
        .wrapping_add(u32::try_from(client.bytes.len()).expect("len"));
    assert!(
        reverse.iter().any(|segment| segment.ack == request_end),
        "no ACK of the request's end {request_end}: {reverse:?}"
    );
    // Header-only: Ethernet + IPv4 + TCP with options, never v1's payload.
    for segment in &reverse {
        assert!(segment.captured <= 14 + 20 + 60, "{segment:?}");
        assert!(segment.window > 0, "{segment:?}");
    }
    assert!(
        reverse
            .iter()
            .any(|segment| u32::try_from(segment.captured).expect("len") < segment.orig_len),
        "the response's payload was cut: {reverse:?}"
    );
    assert!(
        reverse_lines(&stdout)
            .iter()
            .any(|line| line.contains(&format!(" ack {request_end} ")) && line.contains(" win ")),
        "{stdout}"
    );
    assert_eq!(
        counter(&summary, "reverse_records_emitted"),
        Some(u64::try_from(reverse.len()).expect("count")),
        "{summary}"
    );
    assert_eq!(
        counter(&summary, "reverse_ringbuf_full_drops"),
        Some(0),
        "{summary}"
    );
}

#[test]
fn no_reverse_captures_only_the_client_side() {
    if !require_root() {
        return;
    }
    let bed = bed();
    let target: SocketAddr = bed.server_v4(80).parse().expect("addr");
    let pcap = bed.pcap("forward-only.pcap");
    let agent = bed.capture(
        &["--target".into(), target.to_string(), "--no-reverse".into()],
        &pcap,
    );
    bed.curl(&["-o", "/dev/null", &format!("http://{target}/forward-only")]);
    let stdout = agent.stdout();
    let summary = stop(agent);
    assert!(only_flow(&pcap, target)
        .bytes
        .starts_with(b"GET /forward-only"));
    assert!(reverse_records(&pcap, &[target], &stdout).is_empty());
    assert_eq!(counter(&summary, "reverse_matched"), Some(0), "{summary}");
}

// === Kernel parser, through BPF_PROG_TEST_RUN ===

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;

/// A TCP header (20 bytes, no options) and payload.
fn tcp(src_port: u16, dst_port: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&src_port.to_be_bytes());
    out.extend_from_slice(&dst_port.to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    out.extend_from_slice(payload);
    out
}

/// An Ethernet frame with `vlan_tags` 802.1Q tags around `l3`.
fn ethernet(ether_type: u16, vlan_tags: usize, l3: &[u8]) -> Vec<u8> {
    let mut out = vec![0x02; 6];
    out.extend_from_slice(&[0x04; 6]);
    for _ in 0..vlan_tags {
        out.extend_from_slice(&[0x81, 0x00, 0x00, 0x64]);
    }
    out.extend_from_slice(&ether_type.to_be_bytes());
    out.extend_from_slice(l3);
    out
}

fn ipv4(src: std::net::Ipv4Addr, dst: std::net::Ipv4Addr, frags: u16, l4: &[u8]) -> Vec<u8> {
    let total = u16::try_from(20 + l4.len()).expect("len");
    let mut out = vec![0x45, 0];
    out.extend_from_slice(&total.to_be_bytes());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&frags.to_be_bytes());
    out.extend_from_slice(&[64, 6, 0, 0]);
    out.extend_from_slice(&src.octets());
    out.extend_from_slice(&dst.octets());
    out.extend_from_slice(l4);
    out
}

/// IPv6 with `extensions` (type, 8-byte-multiple body whose first two bytes are filled in
/// here) before `l4`; `payload_len` overrides the computed payload length (0: BIG TCP).
fn ipv6(
    src: std::net::Ipv6Addr,
    dst: std::net::Ipv6Addr,
    extensions: &[(u8, Vec<u8>)],
    l4: &[u8],
    payload_len: Option<u16>,
) -> Vec<u8> {
    let mut chain = Vec::new();
    for (index, (_, body)) in extensions.iter().enumerate() {
        let mut ext = body.clone();
        ext[0] = extensions.get(index + 1).map_or(6, |(kind, _)| *kind);
        ext[1] = u8::try_from(ext.len() / 8 - 1).expect("len");
        chain.extend_from_slice(&ext);
    }
    let next = extensions.first().map_or(6, |(kind, _)| *kind);
    let len = payload_len.unwrap_or(u16::try_from(chain.len() + l4.len()).expect("len"));
    let mut out = vec![0x60, 0, 0, 0];
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&[next, 64]);
    out.extend_from_slice(&src.octets());
    out.extend_from_slice(&dst.octets());
    out.extend_from_slice(&chain);
    out.extend_from_slice(l4);
    out
}

/// The id of our program on `hook` ("mirror_ingress" / "mirror_egress") of the client's veth.
fn program_id(bed: &Bed, program: &str) -> String {
    let out = bed
        .testbed
        .node()
        .exec_ok(&[
            mirror_tests::agent::mirror_binary()
                .expect("mirror binary")
                .display()
                .to_string(),
            "attached".to_owned(),
            "--iface".to_owned(),
            bed.client.node_ifname().to_owned(),
        ])
        .expect("mirror attached");
    out.lines()
        .find(|line| line.contains(program))
        .and_then(|line| line.rsplit_once(" id "))
        .map(|(_, id)| id.trim().to_owned())
        .unwrap_or_else(|| panic!("no {program} in: {out}"))
}

/// Runs the program once on `frame` (BPF_PROG_TEST_RUN): it counts and emits as for a real
/// packet, into the live ring buffer.
fn test_run(bed: &Bed, id: &str, frame: &[u8], name: &str) {
    let file = bed.testbed.log_dir().join(format!("{name}.frame"));
    std::fs::write(&file, frame).expect("write frame");
    bed.testbed
        .node()
        .exec_ok(&[
            "bpftool",
            "prog",
            "run",
            "id",
            id,
            "data_in",
            &file.display().to_string(),
        ])
        .expect("bpftool prog run");
}

#[test]
fn kernel_parser_follows_vlan_tags_and_ipv6_extension_headers() {
    if !require_root() {
        return;
    }
    let bed = bed();
    let (client4, server4) = (bed.client.ipv4(), bed.server.ipv4());
    let (client6, server6) = (bed.client.ipv6(), bed.server.ipv6());
    let pcap = bed.pcap("parser.pcap");
    let agent = bed.capture(
        &[
            "--target".into(),
            bed.server_v4(80),
            "--target".into(),
            format!("[{server6}]:80"),
        ],
        &pcap,
    );
    let ingress = program_id(&bed, "mirror_ingress");
    let egress = program_id(&bed, "mirror_egress");
    let request = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes();
    let to_v4 = |port, path: &str| tcp(40000, port, 0x18, &request(path));
    let hop_by_hop = (0u8, vec![0u8; 8]);
    let routing = (43u8, vec![0u8; 24]);
    let dest_options = (60u8, vec![0u8; 16]);
    let mut jumbo = vec![0, 0, 0xc2, 4];
    let jumbo_tcp = tcp(40001, 80, 0x18, &request("/jumbo"));
    jumbo.extend_from_slice(&(8 + u32::try_from(jumbo_tcp.len()).expect("len")).to_be_bytes());
    // A client GET to v1 over IPv4 behind `tags` VLAN tags, IPv4 flags `frags`.
    let over_v4 = |tags, frags, path: &str| {
        ethernet(
            ETH_P_IPV4,
            tags,
            &ipv4(client4, server4, frags, &to_v4(80, path)),
        )
    };
    // A client GET to v1 over IPv6 through the extension headers `chain`.
    let over_v6 = |chain: &[(u8, Vec<u8>)], port, path: &str| {
        ethernet(
            ETH_P_IPV6,
            0,
            &ipv6(
                client6,
                server6,
                chain,
                &tcp(port, 80, 0x18, &request(path)),
                None,
            ),
        )
    };
    let frames: Vec<(&str, &str, Vec<u8>)> = vec![
        ("vlan1", &ingress, over_v4(1, 0x4000, "/vlan1")),
        ("vlan2", &ingress, over_v4(2, 0x4000, "/vlan2")),
        ("vlan3", &ingress, over_v4(3, 0x4000, "/vlan3")),
        ("frag4", &ingress, over_v4(0, 0x2000, "/frag4")),
        (
            "ext6",
            &ingress,
            over_v6(&[hop_by_hop, routing, dest_options.clone()], 40002, "/ext6"),
        ),
        (
            "jumbo6",
            &ingress,
            ethernet(
                ETH_P_IPV6,
                0,
                &ipv6(client6, server6, &[(0, jumbo)], &jumbo_tcp, Some(0)),
            ),
        ),
        (
            "frag6",
            &ingress,
            over_v6(&[(44, vec![0; 8])], 40003, "/frag6"),
        ),
        ("ah6", &ingress, over_v6(&[(51, vec![0; 8])], 40004, "/ah6")),
        (
            "reverse-vlan-ext6",
            &egress,
            ethernet(
                ETH_P_IPV6,
                1,
                &ipv6(
                    server6,
                    client6,
                    &[dest_options],
                    &tcp(80, 40002, 0x10, b"HTTP/1.1 200 OK\r\n"),
                    None,
                ),
            ),
        ),
    ];
    for (name, id, frame) in &frames {
        test_run(&bed, id, frame, name);
    }
    std::thread::sleep(Duration::from_millis(300));
    let stdout = agent.stdout();
    let summary = stop(agent);
    for (name, expected) in [
        ("vlan_tagged", 3),
        ("vlan_too_deep", 1),
        ("fragments", 2),
        ("ipv6_ext_headers", 3),
        ("ipv6_jumbo", 1),
        ("ipv6_ext_unparsed", 1),
        ("records_emitted", 4),
        ("reverse_records_emitted", 1),
    ] {
        assert_eq!(
            counter(&summary, name),
            Some(expected),
            "{name}: {summary}\n{stdout}"
        );
    }
    // What the kernel emitted, userspace decodes (these frames have no handshake, so the
    // strict stream oracle does not apply: read the payloads one by one).
    let file = std::fs::File::open(&pcap).expect("pcap");
    let packets = pcap::read_all(std::io::BufReader::new(file)).expect("read pcap");
    let mut payloads: Vec<String> = packets
        .iter()
        .filter_map(|captured| packet::parse_ethernet(&captured.data).ok())
        .map(|segment| String::from_utf8_lossy(segment.payload).into_owned())
        .collect();
    payloads.sort();
    let expected: Vec<String> = ["/ext6", "/jumbo", "/vlan1", "/vlan2"]
        .iter()
        .map(|path| String::from_utf8_lossy(&request(path)).into_owned())
        .collect();
    assert_eq!(payloads, expected, "{stdout}");
    let targets = [
        bed.server_v4(80).parse().expect("addr"),
        format!("[{server6}]:80").parse().expect("addr"),
    ];
    let reverse = reverse_records(&pcap, &targets, &stdout);
    assert_eq!(reverse.len(), 1, "{reverse:?}");
    assert_eq!(reverse[0].captured, 14 + 4 + 40 + 16 + 20, "{reverse:?}");
}

#[test]
fn frames_without_an_ethernet_header_are_counted() {
    if !require_root() {
        return;
    }
    // An L3 device (tun, as WireGuard's): TC sees the IP header first. It has no reader, so
    // what is sent through it goes nowhere; the node's own connection attempt is the packet.
    let bed = bed();
    let node = bed.testbed.node();
    for command in [
        &["ip", "tuntap", "add", "dev", "mtun0", "mode", "tun"][..],
        &["ip", "addr", "add", "198.18.250.1/30", "dev", "mtun0"],
        &["ip", "link", "set", "mtun0", "up"],
    ] {
        node.exec_ok(command).expect("tun device");
    }
    let args: Vec<String> = [
        "capture",
        "--iface",
        "mtun0",
        "--direction",
        "egress",
        "--target",
        "198.18.250.2:80",
    ]
    .map(str::to_owned)
    .to_vec();
    let agent = Agent::start(node, "mirror-capture-tun", &args, CAPTURE_READY).expect("start");
    let attempt = node
        .exec(&["curl", "-sS", "--max-time", "1", "http://198.18.250.2/"])
        .expect("curl");
    assert!(!attempt.status.success(), "nothing answers behind the tun");
    let summary = stop(agent);
    assert!(
        counter(&summary, "no_ethernet").unwrap_or(0) > 0,
        "{summary}"
    );
    assert_eq!(counter(&summary, "packets_matched"), Some(0), "{summary}");
}
