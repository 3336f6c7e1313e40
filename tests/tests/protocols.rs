//! End to end: protocols other than HTTP/1.1 on the namespace test-bed. Raw TCP mode
//! (`protocol: tcp`) with Debian's redis-server as v1 and v2: v2 receives each connection's
//! command stream as v1 received it, command for command (`MONITOR` on both; the order
//! across connections is not kept, as no mirror keeps it), every connection ends in one
//! counted outcome, and a connection already open when the agent starts is counted and not
//! mirrored. HTTP/2 with prior knowledge (`curl --http2-prior-knowledge`) on an HTTP policy
//! is counted as such and not mirrored; on an `http2` policy every stream is matched,
//! sampled and rewritten as an HTTP/1 request would be, and gRPC calls reach v2 whole.
//! `curl --http2` (an HTTP/1.1 request with `Upgrade: h2c`) against hypercorn: where v1
//! switched, v2 gets the upgrading request and the streams after it over HTTP/2,
//! `:authority` rewritten; where it did not, HTTP/1.1.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    time::{Duration, Instant},
};

use mirror_tests::{
    agent::{counter, mirror_binary, mirror_counter, relay_conserved, Agent},
    ensure_venv, require_root,
    scenario::{Scenario, READY, VIP},
    Host, Process, Sink,
};

/// Where v2's Redis listens (v1's is behind the VIP, on port 80).
const V2_PORT: u16 = 6379;

/// v1 and v2 each running redis-server, with a `MONITOR` recording every command it runs.
struct Bed {
    scenario: Scenario,
    _servers: Vec<Process>,
    v1_monitor: Process,
    v2_monitor: Process,
}

impl Bed {
    fn new() -> Bed {
        let scenario = Scenario::new().expect("scenario");
        let dir = scenario.testbed.log_dir().to_path_buf();
        let v1 = redis(&scenario.v1, 80, &dir, "v1");
        let v2 = redis(&scenario.v2, V2_PORT, &dir, "v2");
        let v1_monitor = monitor(&scenario.v1, 80, "v1");
        let v2_monitor = monitor(&scenario.v2, V2_PORT, "v2");
        Bed {
            scenario,
            _servers: vec![v1, v2],
            v1_monitor,
            v2_monitor,
        }
    }

    fn agent(&self) -> Agent {
        let mirrors = format!("  mirrors:\n  - backend: {}\n", self.backend());
        policy_agent(&self.scenario, "cache", "tcp", &mirrors)
    }

    fn backend(&self) -> String {
        format!("{}:{V2_PORT}", self.scenario.v2.ipv4())
    }

    /// A connection from the client to the VIP (v1's Redis).
    fn connect(&self) -> Redis {
        let vip: SocketAddr = format!("{VIP}:8000").parse().expect("vip");
        let stream = self
            .scenario
            .client
            .ns()
            .run(move || TcpStream::connect_timeout(&vip, Duration::from_secs(5)))
            .expect("client thread")
            .expect("connect to the VIP");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        Redis {
            reader: BufReader::new(stream.try_clone().expect("clone")),
            writer: stream,
        }
    }

    /// Waits until v1 and v2 each ran `expected` commands (or 20 s pass); returns both
    /// lists.
    fn commands(&self, expected: usize) -> (Vec<String>, Vec<String>) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let v1 = monitored(self.v1_monitor.stdout_path());
            let v2 = monitored(self.v2_monitor.stdout_path());
            let done = v1.len() >= expected && v2.len() >= expected;
            if done || Instant::now() > deadline {
                return (v1, v2);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn redis(host: &Host, port: u16, dir: &std::path::Path, label: &str) -> Process {
    let port_text = port.to_string();
    let dir_text = dir.display().to_string();
    let argv = [
        "redis-server",
        "--port",
        &port_text,
        "--bind",
        "0.0.0.0",
        "--protected-mode",
        "no",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        &dir_text,
    ];
    let process = host
        .ns()
        .spawn(&format!("redis-{label}"), &argv)
        .expect("redis-server (is redis-server installed?)");
    let addr = SocketAddr::from((host.ipv4(), port));
    host.ns()
        .wait_for_tcp(addr, Duration::from_secs(10))
        .expect("redis-server listening");
    process
}

/// `redis-cli MONITOR` against a host's own Redis, once it is recording.
fn monitor(host: &Host, port: u16, label: &str) -> Process {
    let ip = host.ipv4().to_string();
    let port_text = port.to_string();
    // Line-buffered: each command is in the file as soon as Redis ran it.
    let argv = [
        "stdbuf",
        "-oL",
        "redis-cli",
        "-h",
        &ip,
        "-p",
        &port_text,
        "MONITOR",
    ];
    let process = host
        .ns()
        .spawn(&format!("monitor-{label}"), &argv)
        .expect("redis-cli (is redis-tools installed?)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(process.stdout_path())
        .unwrap_or_default()
        .starts_with("OK")
    {
        assert!(Instant::now() < deadline, "MONITOR did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    process
}

/// The commands a MONITOR printed, without their time and client address (v1 sees the
/// client, v2 the agent).
fn monitored(path: &std::path::Path) -> Vec<String> {
    monitored_by_client(path)
        .into_iter()
        .map(|(_, c)| c)
        .collect()
}

/// `(client address, command)` per command a MONITOR printed.
fn monitored_by_client(path: &std::path::Path) -> Vec<(String, String)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let (_, rest) = line.split_once(" [")?;
            let (client, command) = rest.split_once("] ")?;
            Some((client.to_owned(), command.to_owned()))
        })
        .collect()
}

/// Each connection's commands, in order; the connections sorted (a mirror keeps the order
/// within a connection, not across connections).
fn per_connection(path: &std::path::Path) -> Vec<Vec<String>> {
    let mut order: Vec<String> = Vec::new();
    let mut commands: std::collections::HashMap<String, Vec<String>> = Default::default();
    for (client, command) in monitored_by_client(path) {
        if !commands.contains_key(&client) {
            order.push(client.clone());
        }
        commands.entry(client).or_default().push(command);
    }
    let mut all: Vec<Vec<String>> = order.iter().filter_map(|c| commands.remove(c)).collect();
    all.sort();
    all
}

/// Where two command lists first differ, with lines cut short (values are large).
fn first_difference(v1: &[String], v2: &[String]) -> String {
    let at = v1
        .iter()
        .zip(v2)
        .position(|(a, b)| a != b)
        .unwrap_or(v1.len().min(v2.len()));
    let cut = |list: &[String]| {
        list.get(at)
            .map_or("(none)".to_owned(), |c| c.chars().take(80).collect())
    };
    format!(
        "{} commands at v1, {} at v2; first difference at {at}: v1 {} / v2 {}",
        v1.len(),
        v2.len(),
        cut(v1),
        cut(v2)
    )
}

/// A RESP client on one connection.
struct Redis {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Redis {
    /// Sends one command and returns its reply, whole.
    fn call(&mut self, args: &[&[u8]]) -> Vec<u8> {
        let mut wire = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            wire.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            wire.extend_from_slice(arg);
            wire.extend_from_slice(b"\r\n");
        }
        self.writer.write_all(&wire).expect("write");
        let mut reply = Vec::new();
        self.reply(&mut reply);
        reply
    }

    fn reply(&mut self, out: &mut Vec<u8>) {
        let mut line = Vec::new();
        self.reader.read_until(b'\n', &mut line).expect("read");
        assert!(line.ends_with(b"\r\n"), "v1 closed: {line:?}");
        out.extend_from_slice(&line);
        let count = || -> i64 {
            std::str::from_utf8(&line[1..line.len() - 2])
                .expect("utf-8")
                .parse()
                .expect("a count")
        };
        match line[0] {
            b'$' if count() >= 0 => {
                let mut bulk = vec![0u8; count() as usize + 2];
                self.reader.read_exact(&mut bulk).expect("bulk");
                out.extend_from_slice(&bulk);
            }
            b'*' => {
                for _ in 0..count().max(0) {
                    self.reply(out);
                }
            }
            _ => {}
        }
    }
}

/// A value of `len` bytes, binary included, different per connection.
fn value(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|j| (j * 7 + i * 13) as u8).collect()
}

fn agent_counter(summary: &str, name: &str) -> u64 {
    let line = summary.lines().last().unwrap_or_default();
    counter(line, name).unwrap_or_else(|| panic!("no {name}= in {line}"))
}

#[test]
fn a_redis_command_stream_reaches_v2_as_v1_got_it() {
    if !require_root() {
        return;
    }
    let bed = Bed::new();
    let agent = bed.agent();
    let connections = 12;
    for i in 0..connections {
        let mut redis = bed.connect();
        // A 200 KB value spans many segments and several v1 windows.
        let big = value(i, if i % 3 == 0 { 200_000 } else { 100 });
        let key = format!("key:{i}");
        assert_eq!(redis.call(&[b"SET", key.as_bytes(), &big]), b"+OK\r\n");
        redis.call(&[b"INCR", b"counter"]);
        redis.call(&[b"RPUSH", b"list", key.as_bytes()]);
        let got = redis.call(&[b"GET", key.as_bytes()]);
        assert!(got.ends_with(&[&big[..], b"\r\n"].concat()));
        if i % 2 == 0 {
            // Redis closes first after QUIT; the others are closed by the client.
            assert_eq!(redis.call(&[b"QUIT"]), b"+OK\r\n");
        }
    }
    let expected = connections * 4 + connections / 2;
    let (v1, v2) = bed.commands(expected);
    std::thread::sleep(Duration::from_secs(1));
    let summary = agent.stop(libc::SIGTERM).expect("stop");
    assert_eq!(v1.len(), expected, "{}", first_difference(&v1, &v2));
    let v1 = per_connection(bed.v1_monitor.stdout_path());
    let v2 = per_connection(bed.v2_monitor.stdout_path());
    assert_eq!(v1.len(), connections);
    for (a, b) in v1.iter().zip(&v2) {
        assert!(a == b, "{}\n{summary}", first_difference(a, b));
    }
    assert_eq!(v2.len(), connections, "{summary}");
    // Every connection ended in one outcome: v2 took it whole.
    relay_conserved(&summary).expect("conservation");
    assert_eq!(
        agent_counter(&summary, "requests"),
        connections as u64,
        "{summary}"
    );
    assert_eq!(
        agent_counter(&summary, "answered_tcp"),
        connections as u64,
        "{summary}"
    );
    // The policy took every connection; every byte v1 acknowledged was written to v2.
    assert_eq!(
        agent_counter(&summary, "requests_mirrored"),
        connections as u64,
        "{summary}"
    );
    let streamed = agent_counter(&summary, "stream_bytes");
    assert_eq!(agent_counter(&summary, "bytes_sent"), streamed, "{summary}");
    assert!(streamed > 800_000, "{summary}");
    assert_eq!(
        agent_counter(&summary, "stopped_invalid_head"),
        0,
        "{summary}"
    );
    let v2_cli = |args: &[&str]| {
        let mut argv = vec!["redis-cli", "-h", "127.0.0.1", "-p", "6379"];
        argv.extend_from_slice(args);
        bed.scenario
            .v2
            .ns()
            .exec_ok(&argv)
            .expect("redis-cli on v2")
    };
    assert_eq!(v2_cli(&["GET", "counter"]).trim(), connections.to_string());
    assert_eq!(v2_cli(&["LLEN", "list"]).trim(), connections.to_string());
}

#[test]
fn a_connection_open_before_the_agent_is_counted_and_not_mirrored() {
    if !require_root() {
        return;
    }
    let bed = Bed::new();
    let mut early = bed.connect();
    assert_eq!(early.call(&[b"SET", b"early", b"1"]), b"+OK\r\n");
    let agent = bed.agent();
    // Its bytes after the agent started cannot be relayed from the connection's start.
    assert_eq!(early.call(&[b"SET", b"joined", b"1"]), b"+OK\r\n");
    let mut fresh = bed.connect();
    assert_eq!(fresh.call(&[b"SET", b"fresh", b"1"]), b"+OK\r\n");
    drop((early, fresh));
    let deadline = Instant::now() + Duration::from_secs(20);
    while monitored(bed.v2_monitor.stdout_path()).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(1));
    let summary = agent.stop(libc::SIGTERM).expect("stop");
    let (v1, v2) = bed.commands(1);
    assert_eq!(v1.len(), 3, "{v1:?}");
    assert_eq!(v2, [r#""SET" "fresh" "1""#], "{summary}");
    assert_eq!(
        agent_counter(&summary, "stream_joins_skipped"),
        1,
        "{summary}"
    );
    relay_conserved(&summary).expect("conservation");
    assert_eq!(agent_counter(&summary, "answered_tcp"), 1, "{summary}");
}

#[test]
fn h2c_on_an_http_policy_is_counted_and_not_mirrored() {
    if !require_root() {
        return;
    }
    let scenario = Scenario::new().expect("scenario");
    let _v1 = Sink::start(&scenario.v1, 80).expect("v1 sink");
    let v2 = Sink::start(&scenario.v2, 80).expect("v2 sink");
    let agent = scenario.agent(&[]);
    // An HTTP/1.1 request first: the connection after it is the one that speaks h2c.
    scenario.curl(&["-sS", "-o", "/dev/null", "http://httpbin:8000/before"]);
    let url = "http://httpbin:8000/h2c";
    let argv = [
        "curl",
        "-sS",
        "-m",
        "5",
        "--http2-prior-knowledge",
        "-o",
        "/dev/null",
        url,
    ];
    // v1 is an HTTP/1.1 server: curl's exchange fails, after v1 took the preface.
    let _ = scenario.client.ns().exec(&argv);
    v2.wait_for_records(1, Duration::from_secs(20))
        .expect("the HTTP/1.1 request at v2");
    std::thread::sleep(Duration::from_secs(1));
    let summary = agent.stop(libc::SIGTERM).expect("stop");
    assert_eq!(agent_counter(&summary, "stopped_h2c"), 1, "{summary}");
    assert_eq!(
        agent_counter(&summary, "stopped_invalid_head"),
        0,
        "{summary}"
    );
    let paths: Vec<String> = v2
        .records()
        .expect("v2")
        .into_iter()
        .map(|r| r.path)
        .collect();
    assert_eq!(paths, ["/before"], "{summary}");
    relay_conserved(&summary).expect("conservation");
}

/// What an `nghttpd -v` log says it received: per stream, `:authority`, `:path`, the
/// `x-mirror` field (empty if none) and the DATA payload bytes, in the order the streams
/// opened.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct H2Seen {
    authority: String,
    path: String,
    tag: String,
    data: u64,
}

fn nghttpd_seen(path: &std::path::Path) -> Vec<H2Seen> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    // Keyed by connection and stream: "[id=2]/1".
    let mut streams: Vec<(String, H2Seen)> = Vec::new();
    for line in text.lines() {
        let conn = line.split(']').next().unwrap_or_default();
        // "[id=2] [  0.553] recv (stream_id=1) :path: /a"
        if let Some((_, rest)) = line.split_once("recv (stream_id=") {
            let (stream, field) = rest.split_once(") ").unwrap_or_default();
            let key = format!("{conn}/{stream}");
            let at = match streams.iter().position(|(k, _)| *k == key) {
                Some(at) => at,
                None => {
                    streams.push((key, H2Seen::default()));
                    streams.len() - 1
                }
            };
            if let Some(v) = field.strip_prefix(":authority: ") {
                streams[at].1.authority = v.to_owned();
            } else if let Some(v) = field.strip_prefix(":path: ") {
                streams[at].1.path = v.to_owned();
            } else if let Some(v) = field.strip_prefix("x-mirror: ") {
                streams[at].1.tag = v.to_owned();
            }
            continue;
        }
        // "[id=2] [  0.560] recv DATA frame <length=16384, flags=0x00, stream_id=13>"
        if let Some((_, rest)) = line.split_once("recv DATA frame <length=") {
            let len: u64 = rest
                .split(',')
                .next()
                .and_then(|l| l.parse().ok())
                .unwrap_or(0);
            let stream = rest
                .split("stream_id=")
                .nth(1)
                .unwrap_or_default()
                .trim_end_matches('>');
            let key = format!("{conn}/{stream}");
            if let Some((_, seen)) = streams.iter_mut().find(|(k, _)| *k == key) {
                seen.data += len;
            }
        }
    }
    streams.into_iter().map(|(_, s)| s).collect()
}

fn nghttpd(host: &Host, port: u16, docroot: &std::path::Path, label: &str) -> Process {
    let port_text = port.to_string();
    let root = docroot.display().to_string();
    let argv = ["nghttpd", "--no-tls", "-v", "-d", &root, &port_text];
    let process = host
        .ns()
        .spawn(&format!("nghttpd-{label}"), &argv)
        .expect("nghttpd (is nghttp2-server installed?)");
    host.ns()
        .wait_for_tcp(
            SocketAddr::from((host.ipv4(), port)),
            Duration::from_secs(10),
        )
        .expect("nghttpd listening");
    process
}

#[test]
fn h2c_streams_reach_v2_with_authority_rewritten_and_whole_bodies() {
    if !require_root() {
        return;
    }
    let scenario = Scenario::new().expect("scenario");
    let dir = scenario.testbed.log_dir().to_path_buf();
    let docroot = dir.join("htdocs");
    std::fs::create_dir_all(&docroot).expect("docroot");
    std::fs::write(docroot.join("a"), "page a").expect("page");
    let v1 = nghttpd(&scenario.v1, 80, &docroot, "v1");
    let v2 = nghttpd(&scenario.v2, 8080, &docroot, "v2");
    let agent = policy_agent(
        &scenario,
        "grpc",
        "http2",
        &one_mirror(scenario.v2.ipv4(), 8080),
    );
    let body = dir.join("body");
    std::fs::write(&body, value(7, 100_000)).expect("body");
    let body_arg = format!("@{}", body.display());
    let run = |argv: &[&str]| {
        scenario.client.ns().exec_ok(argv).expect("h2c client");
    };
    let curl = ["curl", "-sS", "--http2-prior-knowledge", "-o", "/dev/null"];
    run(&[&curl[..], &["http://httpbin:8000/a"]].concat());
    run(&[
        &curl[..],
        &["--data-binary", &body_arg, "http://httpbin:8000/upload"],
    ]
    .concat());
    // Three streams on one connection: later heads use the HPACK dynamic table.
    run(&[
        "nghttp",
        "-n",
        "http://httpbin:8000/a?x=1",
        "http://httpbin:8000/b",
        "http://httpbin:8000/a?x=2",
    ]);
    let streams = 5;
    let deadline = Instant::now() + Duration::from_secs(20);
    while nghttpd_seen(v2.stdout_path()).len() < streams && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(1));
    let summary = agent.stop(libc::SIGTERM).expect("stop");
    let at_v1 = nghttpd_seen(v1.stdout_path());
    let at_v2 = nghttpd_seen(v2.stdout_path());
    assert_eq!(at_v1.len(), streams, "{at_v1:?}");
    let want: Vec<H2Seen> = at_v1
        .iter()
        .map(|s| H2Seen {
            authority: s.authority.replace("httpbin:8000", "httpbin-shadow:8000"),
            ..s.clone()
        })
        .collect();
    assert_eq!(at_v2, want, "{summary}");
    assert_eq!(at_v1[1].data, 100_000);
    relay_conserved(&summary).expect("conservation");
    assert_eq!(
        agent_counter(&summary, "requests"),
        streams as u64,
        "{summary}"
    );
    assert_eq!(
        agent_counter(&summary, "answered"),
        streams as u64,
        "{summary}"
    );
    assert_eq!(agent_counter(&summary, "h2c_stopped"), 0, "{summary}");
}

/// `mirror run --config` with one policy named `name`, its target the VIP, of `protocol`,
/// the rest of its keys (`mirrors`, `matches`, ...) as `rest` gives them.
fn policy_agent(scenario: &Scenario, name: &str, protocol: &str, rest: &str) -> Agent {
    let config = format!(
        "interfaces: [{iface}]\npolicies:\n- name: {name}\n  target: {{address: {VIP}, port: 8000}}\n  protocol: {protocol}\n{rest}",
        iface = scenario.client.node_ifname(),
    );
    let path = scenario.testbed.log_dir().join("mirror.yaml");
    std::fs::write(&path, config).expect("write config");
    let args: Vec<String> = [
        "run",
        "--config",
        &path.display().to_string(),
        "--grace-secs",
        "2",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    Agent::start(scenario.testbed.node(), "mirror-run", &args, READY).expect("agent")
}

/// A policy's `mirrors` with one backend, `host:port`.
fn one_mirror(host: impl std::fmt::Display, port: u16) -> String {
    format!("  mirrors:\n  - backend: {host}:{port}\n")
}

#[test]
fn h2c_streams_are_matched_sampled_and_modified_one_by_one() {
    if !require_root() {
        return;
    }
    let scenario = Scenario::new().expect("scenario");
    let docroot = scenario.testbed.log_dir().join("htdocs");
    std::fs::create_dir_all(docroot.join("kept")).expect("docroot");
    std::fs::write(docroot.join("kept/a"), "page a").expect("page");
    let v1 = nghttpd(&scenario.v1, 80, &docroot, "v1");
    let all = nghttpd(&scenario.v2, 8080, &docroot, "v2-all");
    let none = nghttpd(&scenario.v2, 8081, &docroot, "v2-none");
    let v2 = scenario.v2.ipv4();
    // One mirror takes every matching stream and marks it; the other takes none of them.
    let agent = policy_agent(
        &scenario,
        "h2",
        "http2",
        &format!(
            "  matches: [{{path: {{type: PathPrefix, value: /kept}}}}]\n  mirrors:\n  - backend: {v2}:8080\n    requestHeaderModifier: {{set: [{{name: X-Mirror, value: v2}}]}}\n  - backend: {v2}:8081\n    percent: 0\n"
        ),
    );
    let urls = ["/kept/a", "/other", "/kept/b?x=1", "/keptx", "/other/kept"];
    let url = |path: &str| format!("http://httpbin:8000{path}");
    let run = |argv: &[&str]| {
        scenario.client.ns().exec_ok(argv).expect("h2c client");
    };
    // A connection per stream, then three streams on one connection (later heads use the
    // HPACK dynamic table).
    for path in &urls[..2] {
        let curl = ["curl", "-sS", "--http2-prior-knowledge", "-o", "/dev/null"];
        run(&[&curl[..], &[url(path).as_str()]].concat());
    }
    let many: Vec<String> = urls[2..].iter().map(|p| url(p)).collect();
    let mut nghttp = vec!["nghttp", "-n"];
    nghttp.extend(many.iter().map(String::as_str));
    run(&nghttp);
    let kept = 2;
    let deadline = Instant::now() + Duration::from_secs(20);
    while nghttpd_seen(all.stdout_path()).len() < kept && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(1));
    let summary = agent.stop(libc::SIGTERM).expect("stop");
    let at_v1 = nghttpd_seen(v1.stdout_path());
    let paths: Vec<&str> = at_v1.iter().map(|s| s.path.as_str()).collect();
    assert_eq!(paths, urls, "one stream per URL at v1");
    let want: Vec<H2Seen> = at_v1
        .iter()
        .filter(|s| s.path.starts_with("/kept/"))
        .map(|s| H2Seen {
            authority: s.authority.replace("httpbin:8000", "httpbin-shadow:8000"),
            tag: "v2".to_owned(),
            ..s.clone()
        })
        .collect();
    assert_eq!(nghttpd_seen(all.stdout_path()), want, "{summary}");
    assert_eq!(nghttpd_seen(none.stdout_path()), [], "{summary}");
    // Each stream decided once per mirror, as an HTTP/1 request is.
    let unmatched = (urls.len() - kept) as u64;
    let decided = |backend: u16, name: &str| {
        mirror_counter(&summary, "policy", &format!("h2/{v2}:{backend}"), name)
    };
    assert_eq!(decided(8080, "requests_mirrored"), kept as u64, "{summary}");
    assert_eq!(decided(8080, "requests_sampled_out"), 0, "{summary}");
    assert_eq!(
        decided(8080, "requests_not_matched"),
        unmatched,
        "{summary}"
    );
    assert_eq!(decided(8081, "requests_mirrored"), 0, "{summary}");
    assert_eq!(
        decided(8081, "requests_sampled_out"),
        kept as u64,
        "{summary}"
    );
    assert_eq!(
        decided(8081, "requests_not_matched"),
        unmatched,
        "{summary}"
    );
    relay_conserved(&summary).expect("conservation");
    let relayed = |backend: u16, name: &str| {
        mirror_counter(&summary, "relay", &format!("h2/{v2}:{backend}"), name)
    };
    assert_eq!(relayed(8080, "requests"), kept as u64, "{summary}");
    assert_eq!(relayed(8080, "answered"), kept as u64, "{summary}");
    assert_eq!(relayed(8081, "requests"), 0, "{summary}");
    assert_eq!(agent_counter(&summary, "h2c_stopped"), 0, "{summary}");
}

/// A gRPC server (PyPI grpcio, no generated code: messages are raw bytes) that records each
/// call's method and messages, one JSON line per call, and answers unary calls with their
/// message and client-streaming calls with the number of messages.
const GRPC_SERVER: &str = r#"
import json, sys
from concurrent import futures
import grpc

port, log = int(sys.argv[1]), open(sys.argv[2], "a", buffering=1)

def record(method, messages):
    log.write(json.dumps({"method": method, "messages": [m.hex() for m in messages]}) + "\n")

def unary(request, context):
    record("Unary", [request])
    return request

def upload(requests, context):
    messages = list(requests)
    record("Upload", messages)
    return b"%d" % len(messages)

def fail(request, context):
    record("Fail", [request])
    context.abort(grpc.StatusCode.INVALID_ARGUMENT, "refused")

handler = grpc.method_handlers_generic_handler("mirror.Test", {
    "Unary": grpc.unary_unary_rpc_method_handler(unary),
    "Upload": grpc.stream_unary_rpc_method_handler(upload),
    "Fail": grpc.unary_unary_rpc_method_handler(fail),
})
server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
server.add_generic_rpc_handlers((handler,))
server.add_insecure_port("0.0.0.0:%d" % port)
server.start()
server.wait_for_termination()
"#;

/// Unary calls of growing sizes, a client-streaming call of four messages and a call the
/// server refuses (`grpc-status: 3`), on one channel (one HTTP/2 connection), each answer
/// checked.
const GRPC_CLIENT: &str = r#"
import sys
import grpc

with grpc.insecure_channel(sys.argv[1]) as channel:
    unary = channel.unary_unary("/mirror.Test/Unary")
    upload = channel.stream_unary("/mirror.Test/Upload")
    for i in range(5):
        message = bytes([i + 1]) * (3000 * i + 1)
        assert unary(message, timeout=10) == message
    messages = [bytes([j + 7]) * (20000 * j + 5) for j in range(4)]
    assert upload(iter(messages), timeout=10) == b"4"
    try:
        channel.unary_unary("/mirror.Test/Fail")(b"x", timeout=10)
        raise SystemExit("Fail succeeded")
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
"#;

fn grpc_calls(path: &std::path::Path) -> Vec<String> {
    let mut calls: Vec<String> = std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect();
    calls.sort();
    calls
}

#[test]
fn grpc_unary_and_client_streaming_calls_reach_v2_with_identical_messages() {
    if !require_root() {
        return;
    }
    let venv = ensure_venv().expect("python venv with grpcio");
    let python = venv.join("bin/python").display().to_string();
    let scenario = Scenario::new().expect("scenario");
    let dir = scenario.testbed.log_dir().to_path_buf();
    let server = dir.join("grpc_server.py");
    let client = dir.join("grpc_client.py");
    std::fs::write(&server, GRPC_SERVER).expect("server script");
    std::fs::write(&client, GRPC_CLIENT).expect("client script");
    let server_text = server.display().to_string();
    let start = |host: &Host, port: u16, label: &str| {
        let log = dir.join(format!("{label}.calls")).display().to_string();
        let port_text = port.to_string();
        let argv = [&python[..], &server_text, &port_text, &log];
        let process = host
            .ns()
            .spawn(&format!("grpc-{label}"), &argv)
            .expect("grpc server");
        host.ns()
            .wait_for_tcp(
                SocketAddr::from((host.ipv4(), port)),
                Duration::from_secs(30),
            )
            .expect("grpc server listening");
        (process, PathBuf::from(log))
    };
    let (_v1, v1_calls) = start(&scenario.v1, 80, "v1");
    let (_v2, v2_calls) = start(&scenario.v2, 50051, "v2");
    let agent = policy_agent(
        &scenario,
        "grpc",
        "http2",
        &one_mirror(scenario.v2.ipv4(), 50051),
    );
    let client_text = client.display().to_string();
    let target = format!("{VIP}:8000");
    scenario
        .client
        .ns()
        .exec_ok(&[&python[..], &client_text, &target])
        .expect("grpc client");
    let calls = 7;
    let deadline = Instant::now() + Duration::from_secs(20);
    while grpc_calls(&v2_calls).len() < calls && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(1));
    // `mirror status` on the node, as a person runs it: a row per method, failures below.
    let mirror = mirror_binary().expect("mirror").display().to_string();
    let status = scenario
        .testbed
        .node()
        .exec_ok(&[&mirror[..], "status", "--interval-secs", "0.2"])
        .expect("mirror status");
    let summary = agent.stop(libc::SIGTERM).expect("stop");
    let row = |label: &str, n: u64| format!("\n{label:<28}{n:>14}");
    for (label, n) in [
        ("grpc calls", None),
        ("/mirror.Test/Unary", Some(5)),
        ("/mirror.Test/Upload", Some(1)),
        ("/mirror.Test/Fail", Some(1)),
        ("  error", Some(1)),
    ] {
        let want = n.map_or(format!("\n{label}"), |n| row(label, n));
        assert!(status.contains(&want), "{want:?} in\n{status}");
    }
    let at_v1 = grpc_calls(&v1_calls);
    assert_eq!(at_v1.len(), calls);
    assert!(
        at_v1 == grpc_calls(&v2_calls),
        "v2's calls differ from v1's\n{summary}"
    );
    relay_conserved(&summary).expect("conservation");
    assert_eq!(
        agent_counter(&summary, "requests"),
        calls as u64,
        "{summary}"
    );
    assert_eq!(
        agent_counter(&summary, "answered_2xx"),
        calls as u64,
        "{summary}"
    );
    assert_eq!(
        agent_counter(&summary, "grpc_ok"),
        calls as u64 - 1,
        "{summary}"
    );
    assert_eq!(agent_counter(&summary, "grpc_error"), 1, "{summary}");
    // Per method, what v2 received: each method's calls counted under its name.
    let mirror = format!("grpc/{}:50051", scenario.v2.ipv4());
    let received = |method: &str| {
        let tag = format!("\"method\": \"{method}\"");
        grpc_calls(&v2_calls)
            .iter()
            .filter(|c| c.contains(&tag))
            .count() as u64
    };
    let methods = [("Unary", "ok"), ("Upload", "ok"), ("Fail", "error")];
    let all: u64 = methods.iter().map(|(m, _)| received(m)).sum();
    assert_eq!(all, calls as u64, "every call at v2 has one of the methods");
    for (method, kind) in methods {
        let label = format!("/mirror.Test/{method},{mirror}");
        let counted = |name: &str| mirror_counter(&summary, "relay", &label, name);
        assert_eq!(
            counted("grpc_calls"),
            received(method),
            "{method}: {summary}"
        );
        assert_eq!(
            counted(&format!("grpc_calls_{kind}")),
            received(method),
            "{method}: {summary}"
        );
    }
    assert_eq!(
        mirror_counter(&summary, "relay", &format!("other,{mirror}"), "grpc_calls"),
        0,
        "{summary}"
    );
}

/// One call, then (once `argv[2]` exists) another on the same channel.
const GRPC_TWO_CALLS: &str = r#"
import os, sys, time
import grpc

with grpc.insecure_channel(sys.argv[1]) as channel:
    unary = channel.unary_unary("/mirror.Test/Unary")
    assert unary(b"before", timeout=10) == b"before"
    while not os.path.exists(sys.argv[2]):
        time.sleep(0.05)
    assert unary(b"after", timeout=10) == b"after"
"#;

#[test]
fn a_grpc_channel_open_before_the_agent_is_counted_and_not_mirrored() {
    if !require_root() {
        return;
    }
    let venv = ensure_venv().expect("python venv with grpcio");
    let python = venv.join("bin/python").display().to_string();
    let scenario = Scenario::new().expect("scenario");
    let dir = scenario.testbed.log_dir().to_path_buf();
    let server = dir.join("grpc_server.py");
    let client = dir.join("grpc_two_calls.py");
    std::fs::write(&server, GRPC_SERVER).expect("server script");
    std::fs::write(&client, GRPC_TWO_CALLS).expect("client script");
    let mut servers = Vec::new();
    let mut logs = Vec::new();
    for (host, port, label) in [(&scenario.v1, 80, "v1"), (&scenario.v2, 50051, "v2")] {
        let log = dir.join(format!("{label}.calls"));
        let argv = [
            python.clone(),
            server.display().to_string(),
            port.to_string(),
            log.display().to_string(),
        ];
        servers.push(
            host.ns()
                .spawn(&format!("grpc-{label}"), &argv)
                .expect("grpc server"),
        );
        host.ns()
            .wait_for_tcp(
                SocketAddr::from((host.ipv4(), port)),
                Duration::from_secs(30),
            )
            .expect("grpc server listening");
        logs.push(log);
    }
    let go = dir.join("go");
    let argv = [
        python.clone(),
        client.display().to_string(),
        format!("{VIP}:8000"),
        go.display().to_string(),
    ];
    let mut caller = scenario
        .client
        .ns()
        .spawn("grpc-client", &argv)
        .expect("client");
    let deadline = Instant::now() + Duration::from_secs(20);
    while grpc_calls(&logs[0]).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let agent = policy_agent(
        &scenario,
        "grpc",
        "http2",
        &one_mirror(scenario.v2.ipv4(), 50051),
    );
    std::fs::write(&go, "").expect("go");
    let deadline = Instant::now() + Duration::from_secs(20);
    while caller.try_status().expect("client status").is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(1));
    let summary = agent.stop(libc::SIGTERM).expect("stop");
    assert_eq!(grpc_calls(&logs[0]).len(), 2, "both calls at v1");
    assert_eq!(grpc_calls(&logs[1]).len(), 0, "{summary}");
    assert_eq!(
        agent_counter(&summary, "stream_joins_skipped"),
        1,
        "{summary}"
    );
    assert_eq!(agent_counter(&summary, "requests"), 0, "{summary}");
}

/// An ASGI app for hypercorn (HTTP/1.1, h2c with prior knowledge, and `Upgrade: h2c`, which
/// it takes for requests without a body): records each request's HTTP version, method,
/// path, Host (from `:authority` under HTTP/2) and body length, one JSON line each.
const UPGRADE_APP: &str = r#"
import json, os

LOG = os.environ["MIRROR_REQUEST_LOG"]

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    host = dict(scope["headers"]).get(b"host", b"").decode()
    with open(LOG, "a", buffering=1) as log:
        log.write(json.dumps([scope["http_version"], scope["method"], scope["path"], host, len(body)]) + "\n")
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok\n"})
"#;

/// hypercorn serving [`UPGRADE_APP`] on `port`; returns it and its request log.
fn hypercorn(host: &Host, port: u16, dir: &std::path::Path, label: &str) -> (Process, PathBuf) {
    let venv = ensure_venv().expect("python venv with hypercorn");
    let app_dir = dir.join(format!("app-{label}"));
    std::fs::create_dir_all(&app_dir).expect("app dir");
    std::fs::write(app_dir.join("upgrade_app.py"), UPGRADE_APP).expect("app");
    let log = dir.join(format!("{label}.requests"));
    let bind = format!("0.0.0.0:{port}");
    let argv = [
        "env".to_owned(),
        format!("MIRROR_REQUEST_LOG={}", log.display()),
        format!("PYTHONPATH={}", app_dir.display()),
        venv.join("bin/hypercorn").display().to_string(),
        "--bind".to_owned(),
        bind,
        "upgrade_app:app".to_owned(),
    ];
    let process = host
        .ns()
        .spawn(&format!("hypercorn-{label}"), &argv)
        .expect("hypercorn");
    host.ns()
        .wait_for_tcp(
            SocketAddr::from((host.ipv4(), port)),
            Duration::from_secs(30),
        )
        .expect("hypercorn listening");
    (process, log)
}

/// `[version, method, path, host, body length]` per request a [`UPGRADE_APP`] logged,
/// sorted by path.
fn upgrade_requests(path: &std::path::Path) -> Vec<(String, String, String, String, u64)> {
    let mut requests: Vec<(String, String, String, String, u64)> = std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line
                .trim_matches(|c| c == '[' || c == ']')
                .split(", ")
                .collect();
            let text = |i: usize| fields.get(i).map(|f| f.trim_matches('"').to_owned());
            Some((
                text(0)?,
                text(1)?,
                text(2)?,
                text(3)?,
                text(4)?.parse().ok()?,
            ))
        })
        .collect();
    requests.sort_by(|a, b| a.2.cmp(&b.2));
    requests
}

/// Waits until `path` logged `count` requests (or 20 s pass).
fn wait_for_requests(path: &std::path::Path, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while upgrade_requests(path).len() < count && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(1));
}

/// `curl --http2` on `http://` URLs: an HTTP/1.1 request with `Upgrade: h2c` that v1 (and
/// v2: the same server) takes for requests without a body.
fn curl_http2(scenario: &Scenario, args: &[&str]) {
    let mut argv = vec!["curl", "-sS", "--fail", "-m", "20", "--http2"];
    argv.extend_from_slice(args);
    scenario.client.ns().exec_ok(&argv).expect("curl --http2");
}

/// `mirror run` under a config file with one `protocol: http` policy mirroring to v2:80.
fn http_policy_agent(scenario: &Scenario) -> Agent {
    policy_agent(scenario, "web", "http", &one_mirror(scenario.v2.ipv4(), 80))
}

#[test]
fn an_upgrade_to_h2c_is_mirrored_as_http2_and_a_refused_one_as_http1() {
    upgrade_on_http(false);
}

#[test]
fn an_upgrade_to_h2c_on_an_http_policy_is_mirrored_as_http2_and_a_refused_one_as_http1() {
    upgrade_on_http(true);
}

/// Flags (`--shadow`), or a config file's `http` policy (`policy`): the same traffic, the
/// same requests at v2.
fn upgrade_on_http(policy: bool) {
    if !require_root() {
        return;
    }
    let scenario = Scenario::new().expect("scenario");
    let dir = scenario.testbed.log_dir().to_path_buf();
    let (_v1, v1_log) = hypercorn(&scenario.v1, 80, &dir, "v1");
    let (_v2, v2_log) = hypercorn(&scenario.v2, 80, &dir, "v2");
    let agent = if policy {
        http_policy_agent(&scenario)
    } else {
        scenario.agent(&[])
    };
    // Upgraded on the first request; the second goes on the same connection as stream 3.
    curl_http2(
        &scenario,
        &[
            "-o",
            "/dev/null",
            "-o",
            "/dev/null",
            "http://httpbin:8000/a",
            "http://httpbin:8000/b",
        ],
    );
    // With a body v1 does not switch: the client goes on in HTTP/1.1 (here it closes).
    curl_http2(
        &scenario,
        &[
            "-o",
            "/dev/null",
            "--data-binary",
            "hello",
            "http://httpbin:8000/c",
        ],
    );
    scenario.curl(&["-o", "/dev/null", "http://httpbin:8000/d"]);
    let requests = 4;
    wait_for_requests(&v2_log, requests);
    let summary = agent.stop(libc::SIGTERM).expect("stop");
    let at_v1 = upgrade_requests(&v1_log);
    let row = |version: &str, method: &str, path: &str, host: &str, len: u64| {
        (
            version.to_owned(),
            method.to_owned(),
            path.to_owned(),
            host.to_owned(),
            len,
        )
    };
    assert_eq!(
        at_v1,
        [
            row("2", "GET", "/a", "httpbin:8000", 0),
            row("2", "GET", "/b", "httpbin:8000", 0),
            row("1.1", "POST", "/c", "httpbin:8000", 5),
            row("1.1", "GET", "/d", "httpbin:8000", 0),
        ]
    );
    let want: Vec<_> = at_v1
        .iter()
        .map(|(v, m, p, h, l)| row(v, m, p, &h.replace("httpbin", "httpbin-shadow"), *l))
        .collect();
    assert_eq!(upgrade_requests(&v2_log), want, "{summary}");
    relay_conserved(&summary).expect("conservation");
    assert_eq!(agent_counter(&summary, "requests"), 4, "{summary}");
    assert_eq!(agent_counter(&summary, "answered_2xx"), 4, "{summary}");
    assert_eq!(agent_counter(&summary, "upgrades_h2c"), 1, "{summary}");
    assert_eq!(
        agent_counter(&summary, "upgrades_h2c_refused"),
        1,
        "{summary}"
    );
    assert_eq!(agent_counter(&summary, "stopped_upgrade"), 0, "{summary}");
}

#[test]
fn an_upgrade_to_h2c_on_an_http2_policy_reaches_v2_as_stream_one() {
    if !require_root() {
        return;
    }
    let scenario = Scenario::new().expect("scenario");
    let dir = scenario.testbed.log_dir().to_path_buf();
    let (_v1, v1_log) = hypercorn(&scenario.v1, 80, &dir, "v1");
    let (_v2, v2_log) = hypercorn(&scenario.v2, 8080, &dir, "v2");
    let agent = policy_agent(
        &scenario,
        "web",
        "http2",
        &one_mirror(scenario.v2.ipv4(), 8080),
    );
    curl_http2(
        &scenario,
        &[
            "-o",
            "/dev/null",
            "-o",
            "/dev/null",
            "-o",
            "/dev/null",
            "http://httpbin:8000/a?q=1",
            "http://httpbin:8000/b",
            "http://httpbin:8000/c",
        ],
    );
    wait_for_requests(&v2_log, 3);
    let summary = agent.stop(libc::SIGTERM).expect("stop");
    let at_v1 = upgrade_requests(&v1_log);
    assert_eq!(at_v1.len(), 3, "{at_v1:?}");
    assert!(
        at_v1.iter().all(|r| r.0 == "2" && r.3 == "httpbin:8000"),
        "{at_v1:?}"
    );
    let want: Vec<_> = at_v1
        .iter()
        .map(|(v, m, p, _, l)| {
            (
                v.clone(),
                m.clone(),
                p.clone(),
                "httpbin-shadow:8000".to_owned(),
                *l,
            )
        })
        .collect();
    assert_eq!(upgrade_requests(&v2_log), want, "{summary}");
    relay_conserved(&summary).expect("conservation");
    assert_eq!(agent_counter(&summary, "requests"), 3, "{summary}");
    assert_eq!(agent_counter(&summary, "answered_2xx"), 3, "{summary}");
    assert_eq!(agent_counter(&summary, "h2c_stopped"), 0, "{summary}");
}
