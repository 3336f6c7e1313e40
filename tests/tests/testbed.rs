//! Tests of the test-bed library itself, on real namespaces (root needed; see `require_root`).

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use mirror_tests::{
    cleanup_stale, remove_label, require_root, sha256_hex, Host, Httpbin, Netns, Sink, Testbed,
};

const WAIT: Duration = Duration::from_secs(10);

fn curl(ns: &Netns, args: &[&str]) -> String {
    let mut argv = vec!["curl", "-sS", "--fail", "--max-time", "20"];
    argv.extend_from_slice(args);
    ns.exec_ok(&argv).unwrap()
}

/// Sends `raw` on one connection from inside `from` and returns everything the server sent
/// until it closed the connection.
fn raw_exchange(from: &Host, to: SocketAddr, raw: Vec<u8>) -> String {
    from.ns()
        .run(move || {
            let mut stream = TcpStream::connect_timeout(&to, WAIT)?;
            stream.set_read_timeout(Some(WAIT))?;
            stream.write_all(&raw)?;
            let mut reply = String::new();
            stream.read_to_string(&mut reply)?;
            std::io::Result::Ok(reply)
        })
        .unwrap()
        .unwrap()
}

/// Waits until `pid` has exited (a zombie counts as exited); fails with its state otherwise.
fn process_gone_within(pid: u32, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat.rsplit_once(") ").map(|(_, rest)| &rest[..1]);
        if state.is_none_or(|s| s == "Z") {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("process {pid} still running: {stat}"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn netns_exists(name: &str) -> bool {
    Path::new("/var/run/netns").join(name).exists()
}

#[test]
fn client_reaches_server_over_ipv4_and_ipv6_through_the_node() {
    if !require_root() {
        return;
    }
    let mut tb = Testbed::new().unwrap();
    let client = tb.add_host("client").unwrap();
    let server = tb.add_host("server").unwrap();
    assert_eq!(client.ipv4().to_string(), "198.18.1.2");
    assert_eq!(server.ipv6().to_string(), "fd6d:6972:0:2::2");
    // The node-side interface exists in the node namespace under the reported name and index.
    let links = tb.node().exec_ok(&["ip", "-o", "link", "show"]).unwrap();
    let expected = format!("{}: {}@", server.node_ifindex(), server.node_ifname());
    assert!(links.contains(&expected), "{expected} not in {links}");
    assert!(server.node_ifname().len() <= 15);

    let sink = Sink::start(&server, 80).unwrap();
    curl(client.ns(), &[&format!("http://{}/v4", server.ipv4())]);
    curl(client.ns(), &[&format!("http://[{}]/v6", server.ipv6())]);
    // A Rust client on a namespace thread.
    let reply = raw_exchange(
        &client,
        SocketAddr::new(IpAddr::V6(server.ipv6()), 80),
        b"GET /rust HTTP/1.1\r\nHost: rust\r\nConnection: close\r\n\r\n".to_vec(),
    );
    assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");

    let records = sink.records().unwrap();
    let seen: Vec<_> = records
        .iter()
        .map(|r| (r.path.as_str(), r.peer.rsplit_once(':').unwrap().0))
        .collect();
    // Routed, not NATed: the server sees the client's own addresses.
    assert_eq!(
        seen,
        [
            ("/v4", client.ipv4().to_string().as_str()),
            ("/v6", format!("[{}]", client.ipv6()).as_str()),
            ("/rust", format!("[{}]", client.ipv6()).as_str()),
        ]
    );
}

#[test]
fn rust_threads_serve_and_connect_inside_namespaces() {
    if !require_root() {
        return;
    }
    let mut tb = Testbed::new().unwrap();
    let client = tb.add_host("client").unwrap();
    let server = tb.add_host("server").unwrap();
    // Upper-cases the first 4-byte message and returns who sent it; connections closed before
    // sending (the readiness probe) are skipped.
    let server_thread = server
        .ns()
        .thread(|| -> std::io::Result<IpAddr> {
            let listener = std::net::TcpListener::bind("[::]:9000")?;
            loop {
                let (mut conn, peer) = listener.accept()?;
                let mut message = [0u8; 4];
                if conn.read_exact(&mut message).is_ok() {
                    conn.write_all(&message.to_ascii_uppercase())?;
                    return Ok(peer.ip().to_canonical());
                }
            }
        })
        .unwrap();
    let addr = SocketAddr::new(IpAddr::V6(server.ipv6()), 9000);
    client.ns().wait_for_tcp(addr, WAIT).unwrap();
    assert!(!server_thread.is_finished());
    let reply = client
        .ns()
        .run(move || -> std::io::Result<[u8; 4]> {
            let mut stream = TcpStream::connect_timeout(&addr, WAIT)?;
            stream.write_all(b"ping")?;
            let mut reply = [0u8; 4];
            stream.read_exact(&mut reply)?;
            Ok(reply)
        })
        .unwrap()
        .unwrap();
    assert_eq!(&reply, b"PING");
    let peer = server_thread.join().unwrap().unwrap();
    assert_eq!(peer, IpAddr::V6(client.ipv6()));
}

#[test]
fn service_vip_is_dnated_to_the_backend() {
    if !require_root() {
        return;
    }
    let mut tb = Testbed::new().unwrap();
    let client = tb.add_host("client").unwrap();
    let backend = tb.add_host("backend").unwrap();
    let vip4 = tb
        .add_service("198.19.0.10".parse().unwrap(), 8000, &backend, 80)
        .unwrap();
    let vip6 = tb
        .add_service("fd6d:6972:ffff::10".parse().unwrap(), 8000, &backend, 80)
        .unwrap();
    assert!(tb
        .add_service("10.0.0.1".parse().unwrap(), 80, &backend, 80)
        .is_err());
    let sink = Sink::start(&backend, 80).unwrap();
    curl(client.ns(), &[&format!("http://{vip4}/via-vip4")]);
    curl(client.ns(), &[&format!("http://{vip6}/via-vip6")]);
    let records = sink.records().unwrap();
    let paths: Vec<_> = records.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, ["/via-vip4", "/via-vip6"]);
    assert_eq!(records[0].host.as_deref(), Some("198.19.0.10:8000"));
    // Nothing listens on port 8000 itself: only the DNAT rule leads there.
    let direct = client
        .ns()
        .exec(&[
            "curl",
            "-sS",
            "--max-time",
            "5",
            &format!("http://{}:8000/", backend.ipv4()),
        ])
        .unwrap();
    assert!(!direct.status.success());
}

#[test]
fn httpbin_answers_by_name_and_logs_the_host() {
    if !require_root() {
        return;
    }
    let mut tb = Testbed::new().unwrap();
    let client = tb.add_host("client").unwrap();
    let v1 = tb.add_host("v1").unwrap();
    let httpbin = Httpbin::start(&v1).unwrap();
    let vip = tb
        .add_service("198.19.0.10".parse().unwrap(), 8000, &v1, 80)
        .unwrap();
    tb.add_hosts_entry(&client, "httpbin", vip.ip()).unwrap();

    let body = curl(client.ns(), &["http://httpbin:8000/headers"]);
    assert!(body.contains(r#""Host": "httpbin:8000""#), "{body}");
    let lines = httpbin.wait_for_access_log(1, WAIT).unwrap();
    assert_eq!(lines.len(), 1, "{lines:?}");
    let line = &lines[0];
    assert_eq!(
        (line.method.as_str(), line.path.as_str(), line.status),
        ("GET", "/headers", 200)
    );
    assert_eq!(line.host, "httpbin:8000");
    assert_eq!(line.remote, client.ipv4().to_string());

    // Also over IPv6, straight to the pod.
    curl(client.ns(), &[&format!("http://[{}]/get", v1.ipv6())]);
    let lines = httpbin.wait_for_access_log(2, WAIT).unwrap();
    assert_eq!(lines[1].path, "/get");
    assert_eq!(lines[1].remote, client.ipv6().to_string());
}

#[test]
fn sink_records_bodies_byte_exact_and_in_order() {
    if !require_root() {
        return;
    }
    let mut tb = Testbed::new().unwrap();
    let client = tb.add_host("client").unwrap();
    let server = tb.add_host("server").unwrap();
    let sink = Sink::start(&server, 80).unwrap();
    let to = SocketAddr::new(IpAddr::V4(server.ipv4()), 80);

    // Pipelined on one connection: a chunked POST (with an extension and a trailer), a
    // Content-Length POST, then a GET that closes.
    let mut raw = Vec::new();
    raw.extend_from_slice(
        b"POST /chunked HTTP/1.1\r\nHost: sink\r\nTransfer-Encoding: chunked\r\n\r\n\
          5;ext=1\r\nhello\r\n1\r\n \r\n6\r\nworld!\r\n0\r\nX-Trailer: t\r\n\r\n",
    );
    raw.extend_from_slice(b"POST /length HTTP/1.1\r\nHost: sink\r\nContent-Length: 3\r\n\r\nabc");
    raw.extend_from_slice(b"GET /last HTTP/1.1\r\nHost: sink\r\nConnection: close\r\n\r\n");
    let reply = raw_exchange(&client, to, raw);
    assert_eq!(reply.matches("HTTP/1.1 200 OK").count(), 3, "{reply}");

    // 16 MiB of non-repeating bytes through curl (Content-Length, and Expect: 100-continue).
    let mut big = Vec::with_capacity(16 << 20);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while big.len() < 16 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        big.extend_from_slice(&x.to_le_bytes());
    }
    let file = tb.log_dir().join("big.bin");
    std::fs::write(&file, &big).unwrap();
    curl(
        client.ns(),
        &[
            "--data-binary",
            &format!("@{}", file.display()),
            &format!("http://{to}/big"),
        ],
    );

    let records = sink.wait_for_records(4, WAIT).unwrap();
    // Connection numbers are relative: the readiness probe of `Sink::start` took one.
    let first = records[0].conn;
    let summary: Vec<_> = records
        .iter()
        .map(|r| {
            (
                r.conn - first,
                r.index,
                r.method.as_str(),
                r.path.as_str(),
                r.body_len,
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (0, 0, "POST", "/chunked", 12),
            (0, 1, "POST", "/length", 3),
            (0, 2, "GET", "/last", 0),
            (1, 0, "POST", "/big", 16 << 20),
        ]
    );
    assert_eq!(records[0].sha256, sha256_hex(b"hello world!"));
    assert_eq!(records[1].sha256, sha256_hex(b"abc"));
    assert_eq!(records[2].sha256, sha256_hex(b""));
    assert_eq!(records[3].sha256, sha256_hex(&big));
    assert_eq!(records[0].host.as_deref(), Some("sink"));
}

#[test]
fn drop_removes_namespaces_processes_and_etc_dirs() {
    if !require_root() {
        return;
    }
    let mut tb = Testbed::new().unwrap();
    let client = tb.add_host("client").unwrap();
    tb.add_hosts_entry(&client, "example", "198.19.0.1".parse().unwrap())
        .unwrap();
    let etc_dir = Path::new("/etc/netns").join(client.ns().name());
    assert!(etc_dir.join("hosts").exists());
    let resolved = client
        .ns()
        .exec_ok(&["getent", "hosts", "example"])
        .unwrap();
    assert!(resolved.starts_with("198.19.0.1"), "{resolved}");
    let sleeper = client.ns().spawn("sleep", &["sleep", "600"]).unwrap();
    let pid = sleeper.pid();
    let names = tb.namespaces();
    let log_dir = tb.log_dir().to_owned();
    assert!(names.iter().all(|n| netns_exists(n)));

    drop(tb);
    assert!(names.iter().all(|n| !netns_exists(n)), "{names:?}");
    assert!(!etc_dir.exists());
    assert!(!log_dir.exists());
    // Killed with its namespace, even though its guard still lives (it stays a zombie until the
    // guard reaps it).
    process_gone_within(pid, WAIT).unwrap();
    drop(sleeper);
}

#[test]
fn stale_namespaces_of_dead_pids_are_removed() {
    if !require_root() {
        return;
    }
    // A pid that surely belonged to a process that has exited.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = child.id();
    child.wait().unwrap();
    let stale = format!("mirror-{dead_pid}-0-node");
    let out = std::process::Command::new("ip")
        .args(["netns", "add", &stale])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stale_etc = Path::new("/etc/netns").join(&stale);
    std::fs::create_dir_all(&stale_etc).unwrap();
    // A namespace of a live process (this one) must survive.
    let live = Testbed::new().unwrap();

    assert!(!netns_exists(&stale));
    assert!(!stale_etc.exists());
    assert!(netns_exists(&live.namespaces()[0]));
    cleanup_stale().unwrap();
    assert!(netns_exists(&live.namespaces()[0]));
}

#[test]
fn kept_labelled_setup_survives_until_removed_by_label() {
    if !require_root() {
        return;
    }
    let label = format!("kept{}", std::process::id());
    let mut tb = Testbed::with_label(&label).unwrap();
    let client = tb.add_host("client").unwrap();
    assert!(Testbed::with_label(&label).is_err(), "label in use");
    let pid = client
        .ns()
        .spawn("sleep", &["sleep", "600"])
        .unwrap()
        .detach();
    let kept = tb.keep();
    assert!(
        process_gone_within(pid, Duration::ZERO).is_err(),
        "detached process died"
    );
    assert_eq!(kept.namespaces.len(), 2);
    assert!(kept.namespaces.iter().all(|n| netns_exists(n)));
    // Stale-cleanup never takes a labelled set-up for a dead process's.
    cleanup_stale().unwrap();
    assert!(kept.namespaces.iter().all(|n| netns_exists(n)));

    let mut removed = remove_label(&label).unwrap();
    removed.sort();
    let mut expected = kept.namespaces.clone();
    expected.sort();
    assert_eq!(removed, expected);
    assert!(kept.namespaces.iter().all(|n| !netns_exists(n)));
    assert!(!kept.log_dir.exists());
    process_gone_within(pid, WAIT).unwrap();
}
