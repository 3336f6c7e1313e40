//! End to end: a hostile pod attacks the capture while a well-behaved pod's requests are
//! mirrored. The hostile pod has its own namespace and veth and the agent is attached to it like
//! to any pod; it forges segments from a raw socket, and reads the sequence numbers of its own
//! live connections to place them. After each attack: v2 got nothing that v1 did not accept,
//! every request of the well-behaved pod was mirrored and answered (outcomes conserved), and the
//! agent's CPU time for the attack (stated in the output) stayed under a bound that a quadratic
//! or per-offset cost would break.
//!
//! The bound is `CPU_BASE` plus `CPU_PER_PACKET` for each packet the attack puts on the wire
//! (the forged ones and v1's answers to them): generous for a debug build on a shared machine,
//! yet the costs issue 10 measured (8.8 s for 1 MiB of `GET \n`, 525 us per segment 4 MiB
//! ahead) exceed it many times over.

use std::{
    collections::BTreeSet,
    io::Write as _,
    net::{Ipv4Addr, SocketAddrV4, TcpStream},
    time::{Duration, Instant},
};

use mirror_tests::{
    agent::{counter, relay_conserved, Agent},
    hostile::{
        attacks, cpu_time, drop_own_rsts, sink_get, Discard, Forged, Lcg, RawSender, ACK, PSH, SYN,
    },
    require_root,
    scenario::{READY, VIP},
    Host, Process, Sink, Testbed,
};

/// A second service, for garbage: DNAT to a discard server in v1 that acknowledges everything.
const DISCARD_VIP: &str = "198.19.0.11";
const PORT: u16 = 8000;
const GOOD_REQUESTS: usize = 100;
const CPU_BASE: Duration = Duration::from_secs(1);
const CPU_PER_PACKET: Duration = Duration::from_micros(40);

/// client and hostile pods -> service VIP (v1's sink, or its discard server), agent attached to
/// both pods' veths, mirroring to v2's sink.
struct Bed {
    testbed: Testbed,
    client: Host,
    hostile: Host,
    v1: Sink,
    v2: Sink,
    _discard: Discard,
}

impl Bed {
    fn new() -> Bed {
        let mut testbed = Testbed::new().expect("testbed");
        let client = testbed.add_host("client").expect("client");
        let v1_host = testbed.add_host("v1").expect("v1");
        let v2_host = testbed.add_host("v2").expect("v2");
        let hostile = testbed.add_host("hostile").expect("hostile");
        testbed
            .add_service(VIP.parse().expect("vip"), PORT, &v1_host, 80)
            .expect("service");
        testbed
            .add_service(DISCARD_VIP.parse().expect("vip"), PORT, &v1_host, 81)
            .expect("discard service");
        let v1 = Sink::start(&v1_host, 80).expect("v1 sink");
        let v2 = Sink::start(&v2_host, 80).expect("v2 sink");
        let discard = Discard::start(v1_host.ns(), 81).expect("discard server");
        Bed {
            testbed,
            client,
            hostile,
            v1,
            v2,
            _discard: discard,
        }
    }

    fn agent(&self) -> Agent {
        self.agent_with(&[])
    }

    /// The agent with `extra` flags after the usual ones.
    fn agent_with(&self, extra: &[&str]) -> Agent {
        let args: Vec<String> = [
            "run",
            "--iface",
            self.client.node_ifname(),
            "--iface",
            self.hostile.node_ifname(),
            "--target",
            &format!("{VIP}:{PORT}"),
            "--target",
            &format!("{DISCARD_VIP}:{PORT}"),
            "--shadow",
            &format!("{}:80", self.v2_host_ip()),
            "--grace-secs",
            "2",
        ]
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .collect();
        Agent::start(self.testbed.node(), "mirror-hostile", &args, READY).expect("start agent")
    }

    /// A raw socket in the hostile pod, for the forged segments.
    fn raw(&self) -> RawSender {
        RawSender::open(self.hostile.ns()).expect("raw socket")
    }

    fn v2_host_ip(&self) -> Ipv4Addr {
        self.testbed.hosts()[2].ipv4()
    }

    fn vip() -> SocketAddrV4 {
        SocketAddrV4::new(VIP.parse().expect("vip"), PORT)
    }

    /// The well-behaved pod: `GOOD_REQUESTS` requests at 50 a second, each on a new
    /// connection (so handshakes go on during the attack), with curl.
    fn good_load(&self, round: &str) -> Process {
        let url = format!("http://{VIP}:{PORT}/{round}-[1-{GOOD_REQUESTS}]");
        self.client
            .ns()
            .spawn(
                "good-load",
                &[
                    "curl",
                    "-sS",
                    "--fail",
                    "--max-time",
                    "30",
                    "--rate",
                    "50/s",
                    "-H",
                    "Connection: close",
                    &url,
                ],
            )
            .expect("curl")
    }

    /// `count` keep-alive connections from the hostile pod, each with one genuine request
    /// accepted by v1 already, so the agent follows them; and the paths of those requests.
    fn live_flows(&self, count: usize) -> (Vec<TcpStream>, Vec<String>) {
        let vip = Bed::vip();
        let mut streams = self
            .hostile
            .ns()
            .run(move || {
                (0..count)
                    .map(|_| TcpStream::connect(vip))
                    .collect::<std::io::Result<Vec<_>>>()
            })
            .expect("hostile ns")
            .expect("connect");
        let mut paths = Vec::new();
        for (i, stream) in streams.iter_mut().enumerate() {
            stream.set_nodelay(true).expect("nodelay");
            let path = format!("/hostile-before-{i}");
            sink_get(stream, &path).expect("genuine request");
            paths.push(path);
        }
        (streams, paths)
    }
}

fn wait_for_exit(process: &mut Process, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while process.try_status().expect("status").is_none() {
        assert!(Instant::now() < deadline, "the good load did not finish");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One round of the good load (`GOOD_REQUESTS` requests, paths `/<round>-<n>`) with `attack`
/// run meanwhile: waits until v2 has every path in `expected` plus the round's and the
/// attack's genuine ones (added to `expected`), lets anything forged arrive too, and returns
/// the agent's CPU time over the round and how many packets the attack put on the wire.
fn round(
    bed: &Bed,
    agent: &Agent,
    round: &str,
    expected: &mut BTreeSet<String>,
    attack: impl FnOnce() -> (u64, Vec<String>),
) -> anyhow::Result<(Duration, u64)> {
    let mut load = bed.good_load(round);
    std::thread::sleep(Duration::from_millis(300));
    let cpu_before = cpu_time(agent.pid())?;
    let (packets, genuine) = attack();
    wait_for_exit(&mut load, Duration::from_secs(60));
    expected.extend((1..=GOOD_REQUESTS).map(|i| format!("/{round}-{i}")));
    expected.extend(genuine);
    bed.v2
        .wait_for_records(expected.len(), Duration::from_secs(30))?;
    // Anything forged would have had time to arrive too.
    std::thread::sleep(Duration::from_secs(1));
    Ok((cpu_time(agent.pid())? - cpu_before, packets))
}

/// Runs one attack while the agent mirrors the good load: a round of the load alone first
/// (its CPU time is the baseline), then a round with `attack` (which returns how many packets
/// it put on the wire and the paths of the genuine requests v1 accepted from the hostile pod
/// meanwhile). Checks what reached v2 and states the agent's CPU time for the attack: the
/// second round's less the first's. `before` are the hostile pod's genuine requests sent
/// earlier.
fn attack_run(
    name: &str,
    bed: &Bed,
    agent: Agent,
    before: Vec<String>,
    attack: impl FnOnce() -> (u64, Vec<String>),
) -> String {
    let mut expected: BTreeSet<String> = before.into_iter().collect();
    let rounds = round(bed, &agent, "baseline", &mut expected, || (0, Vec::new())).and_then(
        |(baseline, _)| {
            round(bed, &agent, "good", &mut expected, attack)
                .map(|(attacked, packets)| (baseline, attacked, packets))
        },
    );
    let summary = agent.stop(libc::SIGTERM).expect("stop agent");
    let (baseline, attacked, packets) =
        rounds.unwrap_or_else(|error| panic!("{name}: {error:#}\n{summary}"));
    let cpu = attacked.saturating_sub(baseline);

    let at_v1: BTreeSet<String> = bed.v1.paths().expect("v1 records").into_iter().collect();
    let at_v2 = bed.v2.paths().expect("v2 records");
    let not_accepted: Vec<&String> = at_v2.iter().filter(|p| !at_v1.contains(*p)).collect();
    assert!(
        not_accepted.is_empty(),
        "{name}: v2 got requests v1 never accepted: {not_accepted:?}\n{summary}"
    );
    let mut sorted = at_v2.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        expected.iter().cloned().collect::<Vec<_>>(),
        "{name}: v2 got other requests than the genuine ones\n{summary}"
    );
    let answered = relay_conserved(&summary).expect("outcomes conserved");
    assert_eq!(answered, expected.len() as u64, "{summary}");
    assert_eq!(
        counter(&summary, "requests"),
        Some(expected.len() as u64),
        "{summary}"
    );

    let bound = CPU_BASE + CPU_PER_PACKET * u32::try_from(packets).unwrap_or(u32::MAX);
    let per_packet_ns = cpu.as_nanos() / u128::from(packets.max(1));
    eprintln!(
        "{name}: {packets} packets on the wire; agent CPU (utime+stime) for the attack {:.0} ms \
         ({:.0} ms with {GOOD_REQUESTS} good requests, less {:.0} ms for them alone) = \
         {per_packet_ns} ns/packet (bound {bound:?}); v2 got the {} genuine requests only",
        cpu.as_secs_f64() * 1e3,
        attacked.as_secs_f64() * 1e3,
        baseline.as_secs_f64() * 1e3,
        expected.len()
    );
    assert!(
        cpu <= bound,
        "{name}: agent CPU {cpu:?} for {packets} packets exceeds {bound:?}\n{summary}"
    );
    summary
}

#[test]
fn a_garbage_request_lines_on_a_joined_connection() {
    if !require_root() {
        return;
    }
    let bed = Bed::new();
    let discard_vip = SocketAddrV4::new(DISCARD_VIP.parse().expect("vip"), PORT);
    // Opened before the agent starts: the agent joins it mid-stream.
    let mut joined = bed
        .hostile
        .ns()
        .run(move || TcpStream::connect(discard_vip))
        .expect("hostile ns")
        .expect("connect");
    joined.write_all(b"hello ").expect("first bytes");
    let agent = bed.agent();
    let name = "(a) 1 MiB of `GET \\n` lines";
    let summary = attack_run(name, &bed, agent, Vec::new(), || {
        // Waits until v1 (the discard server) has read, and so acknowledged, all of it.
        let packets = attacks::garbage_lines(&mut joined, 1 << 20).expect("garbage");
        (packets, Vec::new())
    });
    assert!(
        counter(&summary, "midstream_joins").unwrap_or(0) >= 1,
        "the agent joined the connection: {summary}"
    );
    assert!(
        counter(&summary, "resync_skipped_bytes").unwrap_or(0) > 0,
        "the garbage was scanned: {summary}"
    );
}

#[test]
fn b_far_out_of_order_segments_on_many_flows() {
    if !require_root() {
        return;
    }
    const FLOWS: usize = 200;
    const PER_FLOW: usize = 50;
    let bed = Bed::new();
    let agent = bed.agent();
    let (mut flows, before) = bed.live_flows(FLOWS);
    let raw = bed.raw();
    let mut rng = Lcg(10);
    let summary = attack_run("(b) far out-of-order segments", &bed, agent, before, || {
        let sent = attacks::far_out_of_order(&raw, &flows, Bed::vip(), PER_FLOW, &mut rng)
            .expect("attack");
        // v1 answers each with a duplicate acknowledgement; then every flow still works.
        let mut genuine = Vec::new();
        for (i, stream) in flows.iter_mut().enumerate() {
            let path = format!("/hostile-after-{i}");
            sink_get(stream, &path).expect("genuine request after the attack");
            genuine.push(path);
        }
        (2 * sent, genuine)
    });
    let held = counter(&summary, "segments_beyond_window").unwrap_or(0);
    eprintln!("(b): segments_beyond_window={held}");
}

#[test]
fn c_forged_data_without_a_handshake() {
    if !require_root() {
        return;
    }
    const FORGED: u32 = 10_000;
    let bed = Bed::new();
    let agent = bed.agent();
    let raw = bed.raw();
    let mut rng = Lcg(3);
    let src = bed.hostile.ipv4();
    let name = "(c) forged data, no handshake";
    attack_run(name, &bed, agent, Vec::new(), || {
        let sent = attacks::forged_data(&raw, src, Bed::vip(), FORGED, &mut rng).expect("attack");
        // v1 answers each with a RST.
        (2 * sent, Vec::new())
    });
}

/// `AFTER` genuine requests on `stream` after an attack on it, all accepted by v1.
fn genuine_after(stream: &mut TcpStream) -> Vec<String> {
    const AFTER: usize = 100;
    let genuine: Vec<String> = (0..AFTER).map(|i| format!("/hostile-after-{i}")).collect();
    for path in &genuine {
        sink_get(stream, path).expect("v1 kept the connection");
    }
    genuine
}

/// `attack` on one live flow of the hostile pod, which then carries `genuine_after`'s
/// requests (v1 answers each forged segment): `attack_run`'s summary.
fn attack_run_on_a_live_flow(
    name: &str,
    attack: impl FnOnce(&RawSender, &[TcpStream], SocketAddrV4) -> anyhow::Result<u64>,
) -> String {
    let bed = Bed::new();
    let agent = bed.agent();
    let (mut flows, before) = bed.live_flows(1);
    let raw = bed.raw();
    attack_run(name, &bed, agent, before, || {
        let sent = attack(&raw, &flows, Bed::vip()).expect("attack");
        (2 * sent, genuine_after(&mut flows[0]))
    })
}

#[test]
fn d_a_segment_two_to_the_31_ahead_on_a_live_flow() {
    if !require_root() {
        return;
    }
    // The issue measured 0 heads for the next 100 valid requests: all must be mirrored.
    let summary = attack_run_on_a_live_flow("(d) segment 2^31 ahead", attacks::far_ahead);
    // Counted as beyond the window, not followed: nothing was poisoned.
    for name in ["duplicate_bytes", "far_jumps", "segments_beyond_window"] {
        eprintln!("(d): {name}={}", counter(&summary, name).unwrap_or(0));
    }
}

#[test]
fn e_off_window_rsts_on_a_live_flow() {
    if !require_root() {
        return;
    }
    let summary = attack_run_on_a_live_flow("(e) off-window RSTs", attacks::off_window_rsts);
    assert!(
        counter(&summary, "rst_ignored").unwrap_or(0) >= 1,
        "{summary}"
    );
}

#[test]
fn f_syn_flood_of_65536_syns() {
    if !require_root() {
        return;
    }
    const SYNS: u32 = 65_536;
    let bed = Bed::new();
    // A real flooder does not answer v1's SYN-ACKs: the hostile pod's kernel sends no RSTs,
    // so every SYN-ACK stays a pending handshake for the agent.
    drop_own_rsts(bed.hostile.ns()).expect("nft");
    let agent = bed.agent();
    let raw = bed.raw();
    let mut rng = Lcg(6);
    let src = bed.hostile.ipv4();
    let summary = attack_run("(f) SYN flood", &bed, agent, Vec::new(), || {
        let sent = attacks::syn_flood(&raw, src, Bed::vip(), SYNS, &mut rng).expect("attack");
        (2 * sent, Vec::new())
    });
    assert!(
        counter(&summary, "handshakes_seen").unwrap_or(0) > u64::from(SYNS) / 2,
        "v1 answered the flood and the agent saw it: {summary}"
    );
    // Far more than one source's share (16,384) of pending handshakes: the flooder lost its
    // own, never the good pod's.
    assert!(
        counter(&summary, "handshakes_evicted_source").unwrap_or(0) >= u64::from(SYNS) / 2,
        "{summary}"
    );
}

/// A request forged with another pod's source address, denied by an anti-spoofing rule in
/// front of v1 (as a CNI has), never reaches v2, although the agent's hook sees it first.
#[test]
fn forged_source_denied_in_front_of_v1_never_reaches_v2() {
    if !require_root() {
        return;
    }
    let bed = Bed::new();
    let node = bed.testbed.node();
    let table = "antispoof";
    let rule = format!(
        "iifname \"{}\" ip saddr != {} counter drop",
        bed.hostile.node_ifname(),
        bed.hostile.ipv4()
    );
    let ruleset = format!(
        "table inet {table} {{\n\tchain guard {{ type filter hook forward priority 0; }}\n}}\n\
         add rule inet {table} guard {rule}\n"
    );
    let file = bed.testbed.log_dir().join("antispoof.nft");
    std::fs::write(&file, ruleset).expect("write ruleset");
    node.exec_ok(&[std::path::Path::new("nft"), "-f".as_ref(), &file])
        .expect("nft");
    let agent = bed.agent();
    let raw = bed.raw();
    let client = SocketAddrV4::new(bed.client.ipv4(), 41_000);
    let vip = Bed::vip();
    attack_run(
        "forged source, denied by nftables",
        &bed,
        agent,
        Vec::new(),
        || {
            let (isn, v1_isn) = (1_000_000u32, 5_000_000u32);
            let request = b"GET /spoofed HTTP/1.1\r\nHost: httpbin:8000\r\n\r\n";
            let len = request.len() as u32;
            let segments = [
                // The client's half of a handshake and the request...
                (client, vip, isn, 0, SYN, &[][..]),
                (client, vip, isn + 1, v1_isn + 1, ACK, &[][..]),
                (client, vip, isn + 1, v1_isn + 1, ACK | PSH, &request[..]),
                // ...and v1's half, as if v1 had accepted it.
                (vip, client, v1_isn, isn + 1, SYN | ACK, &[][..]),
                (vip, client, v1_isn + 1, isn + 1 + len, ACK, &[][..]),
            ];
            for (src, dst, seq, ack, flags, payload) in segments {
                raw.send(&Forged {
                    src,
                    dst,
                    seq,
                    ack,
                    flags,
                    window: 502,
                    payload,
                })
                .expect("send");
            }
            (segments.len() as u64, Vec::new())
        },
    );
    let (denied, listed) = node.nft_counted(table, "guard").expect("nft list");
    assert_eq!(denied, 5, "the rule denied every forged packet:\n{listed}");
}

#[test]
fn g_many_connections_from_one_pod_leave_the_others_their_shadow_connections() {
    if !require_root() {
        return;
    }
    // 64 shadow connections, 16 per pod. The hostile pod keeps 200 connections to v1 open,
    // one request each: every one of them would keep a shadow connection while it lives, so
    // without the share the well-behaved pod would find none free.
    const HOSTILE: usize = 200;
    const SHARE: usize = 16;
    let bed = Bed::new();
    let agent = bed.agent_with(&[
        "--max-shadow-connections",
        "64",
        "--max-shadow-connections-per-source",
        &SHARE.to_string(),
    ]);
    let (flows, hostile) = bed.live_flows(HOSTILE);
    let mut load = bed.good_load("good");
    wait_for_exit(&mut load, Duration::from_secs(60));
    let got = bed
        .v2
        .wait_for_records(GOOD_REQUESTS + SHARE, Duration::from_secs(30));
    // Anything more would have had time to arrive too.
    std::thread::sleep(Duration::from_secs(1));
    drop(flows);
    let summary = agent.stop(libc::SIGTERM).expect("stop agent");
    got.unwrap_or_else(|error| panic!("{error:#}\n{summary}"));
    let at_v2: BTreeSet<String> = bed.v2.paths().expect("v2 records").into_iter().collect();
    let good: BTreeSet<String> = (1..=GOOD_REQUESTS).map(|i| format!("/good-{i}")).collect();
    assert!(at_v2.is_superset(&good), "{at_v2:?}\n{summary}");
    let hostile_at_v2 = at_v2.iter().filter(|path| hostile.contains(*path)).count();
    assert_eq!(hostile_at_v2, SHARE, "{summary}");
    assert_eq!(at_v2.len(), GOOD_REQUESTS + SHARE, "{summary}");
    assert_eq!(
        relay_conserved(&summary).expect("outcomes conserved"),
        (GOOD_REQUESTS + SHARE) as u64,
        "{summary}"
    );
    assert_eq!(
        counter(&summary, "requests"),
        Some((GOOD_REQUESTS + HOSTILE) as u64),
        "{summary}"
    );
    assert_eq!(
        counter(&summary, "dropped_source_connections"),
        Some((HOSTILE - SHARE) as u64),
        "{summary}"
    );
    eprintln!(
        "(g) {HOSTILE} connections from one pod, {SHARE} shadow connections each: v2 got all \
         {GOOD_REQUESTS} of the other pod's requests and {SHARE} of the {HOSTILE}"
    );
}
