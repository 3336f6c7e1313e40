//! End to end: `mirror run --capture-threads 2` on the namespace test-bed, two client pods
//! calling the service (each client's address is one shard's): v2 gets every request of
//! both, in order per connection, the counters of both threads summed under the usual names.
//! And with `--config`: a policy dispatcher per thread, a reload that reaches both, and the
//! per-mirror counters summed over the threads.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use mirror_tests::{
    agent::{counter, mirror_counter, relay_conserved, Agent},
    require_root,
    scenario::{READY, VIP},
    Host, Sink, Testbed,
};
use mirror_userspace::observe::scrape::Scrape;

/// Requests per client, on one keep-alive connection.
const PER_CLIENT: usize = 20;

#[test]
fn two_pipeline_threads_mirror_every_request_of_two_clients() {
    if !require_root() {
        return;
    }
    let mut testbed = Testbed::new().expect("test-bed");
    let clients = [
        testbed.add_host("clienta").expect("client a"),
        testbed.add_host("clientb").expect("client b"),
    ];
    let v1 = testbed.add_host("v1").expect("v1");
    let v2 = testbed.add_host("v2").expect("v2");
    let vip = testbed
        .add_service(VIP.parse().expect("vip"), 8000, &v1, 80)
        .expect("service");
    let _v1 = Sink::start(&v1, 80).expect("v1 sink");
    let v2_sink = Sink::start(&v2, 80).expect("v2 sink");
    let mut args: Vec<String> = ["run", "--capture-threads", "2"]
        .map(str::to_owned)
        .to_vec();
    for client in &clients {
        args.extend(["--iface".to_owned(), client.node_ifname().to_owned()]);
    }
    args.extend(
        [
            "--target",
            &vip.to_string(),
            "--shadow",
            &format!("{}:80", v2.ipv4()),
            "--grace-secs",
            "2",
        ]
        .map(str::to_owned),
    );
    let agent = Agent::start(testbed.node(), "mirror-run", &args, READY).expect("start agent");
    std::thread::scope(|scope| {
        for (c, client) in clients.iter().enumerate() {
            scope.spawn(move || {
                let mut argv = vec!["curl".to_owned(), "-sS".to_owned(), "--fail".to_owned()];
                for i in 0..PER_CLIENT {
                    argv.extend(["-o".to_owned(), "/dev/null".to_owned()]);
                    argv.push(format!("http://{vip}/c{c}-{i}"));
                }
                client.ns().exec_ok(&argv).expect("curl");
            });
        }
    });
    let records = v2_sink.wait_for_records(2 * PER_CLIENT, Duration::from_secs(20));
    let summary = agent.stop(libc::SIGTERM).expect("stop agent");
    let records = records.unwrap_or_else(|error| panic!("v2: {error}\n{summary}"));
    for c in 0..clients.len() {
        let paths: Vec<&str> = records
            .iter()
            .filter(|r| r.path.starts_with(&format!("/c{c}-")))
            .map(|r| r.path.as_str())
            .collect();
        let expected: Vec<String> = (0..PER_CLIENT).map(|i| format!("/c{c}-{i}")).collect();
        assert_eq!(paths, expected, "client {c}, in order: {summary}");
    }
    assert_eq!(
        relay_conserved(&summary).expect("conserved"),
        (2 * PER_CLIENT) as u64,
        "{summary}"
    );
    assert_eq!(counter(&summary, "threads"), Some(2), "{summary}");
    assert_eq!(
        counter(&summary, "records_dropped_queue_full"),
        Some(0),
        "{summary}"
    );
    assert_eq!(
        counter(&summary, "requests_mirrored"),
        Some((2 * PER_CLIENT) as u64),
        "{summary}"
    );
}

/// Clients of the config test: four addresses, so that (sharded by a per-process random
/// hash) both threads carry some of them; the agent is restarted until they do.
const CLIENTS: usize = 4;
/// Requests per client in each phase, before and after the reload.
const PER_PHASE: usize = 10;

/// GETs `paths` from the VIP on one keep-alive connection from `client`.
fn get_all(client: &Host, vip: &str, paths: &[String]) {
    let mut argv = vec!["curl".to_owned(), "-sS".to_owned(), "--fail".to_owned()];
    for path in paths {
        argv.extend(["-o".to_owned(), "/dev/null".to_owned()]);
        argv.push(format!("http://{vip}{path}"));
    }
    client.ns().exec_ok(&argv).expect("curl");
}

/// Waits until `sink` holds `n` records whose path starts with `prefix`; returns them.
fn wait_paths(sink: &Sink, prefix: &str, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let paths: Vec<String> = sink
            .records()
            .expect("sink records")
            .into_iter()
            .map(|r| r.path)
            .filter(|p| p.starts_with(prefix))
            .collect();
        if paths.len() >= n || Instant::now() > deadline {
            return paths;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The agent's `/metrics` (default admin address, inside the node namespace).
fn metrics(testbed: &Testbed) -> Scrape {
    let body = testbed
        .node()
        .exec_ok(&[
            "curl",
            "-sS",
            "--max-time",
            "10",
            "http://127.0.0.1:9477/metrics",
        ])
        .expect("curl /metrics");
    Scrape::parse(&body).expect("/metrics parses")
}

/// Writes `text` to `path` at once (a rename), as a config management tool would.
fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write config");
    std::fs::rename(&tmp, path).expect("rename config");
}

#[test]
fn two_pipeline_threads_under_a_config_follow_a_reload_and_sum_per_mirror_counters() {
    if !require_root() {
        return;
    }
    let mut testbed = Testbed::new().expect("test-bed");
    let clients: Vec<Host> = (0..CLIENTS)
        .map(|c| testbed.add_host(&format!("cl{c}")).expect("client"))
        .collect();
    let v1 = testbed.add_host("v1").expect("v1");
    let v2 = testbed.add_host("v2").expect("v2");
    let vip = testbed
        .add_service(VIP.parse().expect("vip"), 8000, &v1, 80)
        .expect("service");
    let _v1 = Sink::start(&v1, 80).expect("v1 sink");
    let (a_sink, b_sink) = (
        Sink::start(&v2, 80).expect("mirror A sink"),
        Sink::start(&v2, 81).expect("mirror B sink"),
    );
    let (a, b) = (format!("{}:80", v2.ipv4()), format!("{}:81", v2.ipv4()));
    let ifaces: Vec<&str> = clients.iter().map(Host::node_ifname).collect();
    let config = |b_percent: u32| {
        format!(
            "interfaces: [{}]\npolicies:\n- name: web\n  target: {{address: {VIP}, port: 8000}}\n  mirrors:\n  - backend: {a}\n    percent: 100\n  - backend: {b}\n    percent: {b_percent}\n",
            ifaces.join(", ")
        )
    };
    let path = testbed.log_dir().join("mirror.yaml");
    replace_file(&path, &config(100));
    let args: Vec<String> = [
        "run",
        "--capture-threads",
        "2",
        "--config",
        &path.display().to_string(),
        "--grace-secs",
        "2",
    ]
    .map(str::to_owned)
    .to_vec();
    let vip = vip.to_string();
    let each_client = |phase: &str| {
        std::thread::scope(|scope| {
            for (c, client) in clients.iter().enumerate() {
                let vip = &vip;
                scope.spawn(move || {
                    let paths: Vec<String> = (0..PER_PHASE)
                        .map(|i| format!("/{phase}-c{c}-{i}"))
                        .collect();
                    get_all(client, vip, &paths);
                });
            }
        });
    };
    // One request per client first; a new agent (a new hash) until both threads carry one.
    let mut attempt = 0;
    let mut agent = loop {
        attempt += 1;
        let agent = Agent::start(testbed.node(), "mirror-run", &args, READY).expect("agent");
        let probe = format!("/probe{attempt}-");
        for (c, client) in clients.iter().enumerate() {
            get_all(client, &vip, &[format!("{probe}c{c}")]);
        }
        assert_eq!(wait_paths(&a_sink, &probe, CLIENTS).len(), CLIENTS);
        let scrape = metrics(&testbed);
        let per_thread: Vec<f64> = ["0", "1"]
            .map(|t| {
                scrape.sum(
                    "mirror_shards_thread_records_queued_total",
                    &[("thread", t)],
                )
            })
            .to_vec();
        if per_thread.iter().all(|&records| records > 0.0) {
            break agent;
        }
        let summary = agent.stop(libc::SIGTERM).expect("stop agent");
        assert!(
            attempt < 6,
            "one thread carried every client {attempt} times: {summary}"
        );
    };
    let probes = CLIENTS as u64;

    // Before the reload both mirrors take every request.
    each_client("p1");
    let phase = CLIENTS * PER_PHASE;
    assert_eq!(wait_paths(&a_sink, "/p1-", phase).len(), phase);
    assert_eq!(wait_paths(&b_sink, "/p1-", phase).len(), phase);
    // B's share to 0: every thread's dispatcher must apply it from its next request on.
    replace_file(&path, &config(0));
    agent
        .wait_for_stderr("config reloaded", Duration::from_secs(10))
        .expect("reloaded");
    each_client("p2");
    assert_eq!(wait_paths(&a_sink, "/p2-", phase).len(), phase);
    // Give B the time it would need to get (wrongly) any of the second phase's.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(wait_paths(&b_sink, "/p2-", 0), Vec::<String>::new());

    // /metrics: one sample per mirror, the threads' sum.
    let scrape = metrics(&testbed);
    let mirrored = |mirror: &str| {
        let label = format!("web/{mirror}");
        let samples: Vec<f64> = scrape
            .matching(
                "mirror_policy_requests_mirrored_total",
                &[("mirror", &label)],
            )
            .map(|s| s.value)
            .collect();
        assert_eq!(samples.len(), 1, "{label}: {samples:?}");
        samples[0] as u64
    };
    let phase = phase as u64;
    assert_eq!(mirrored(&a), probes + 2 * phase);
    assert_eq!(mirrored(&b), probes + phase);

    let summary = agent.stop(libc::SIGTERM).expect("stop agent");
    assert_eq!(counter(&summary, "threads"), Some(2), "{summary}");
    assert_eq!(
        counter(&summary, "records_dropped_queue_full"),
        Some(0),
        "{summary}"
    );
    let (label_a, label_b) = (format!("web/{a}"), format!("web/{b}"));
    let policy = |label: &str, name: &str| mirror_counter(&summary, "policy", label, name);
    assert_eq!(
        policy(&label_a, "requests_mirrored"),
        probes + 2 * phase,
        "{summary}"
    );
    assert_eq!(policy(&label_a, "requests_sampled_out"), 0, "{summary}");
    assert_eq!(
        policy(&label_b, "requests_mirrored"),
        probes + phase,
        "{summary}"
    );
    assert_eq!(policy(&label_b, "requests_sampled_out"), phase, "{summary}");
    // Each mirror's relay, summed over the threads, conserves its requests: every one
    // mirrored answered, none pending.
    for label in [&label_a, &label_b] {
        let relay = |name: &str| mirror_counter(&summary, "relay", label, name);
        let requests = relay("requests");
        assert_eq!(
            requests,
            policy(label, "requests_mirrored"),
            "{label}: {summary}"
        );
        assert_eq!(
            requests,
            relay("answered") + relay("unanswered") + relay("dropped"),
            "{label}: {summary}"
        );
        assert_eq!(relay("answered"), requests, "{label}: {summary}");
        assert_eq!(relay("pending"), 0, "{label}: {summary}");
    }
    // What each mirror received: its share, before and after the reload.
    let received =
        |sink: &Sink| ["/p1-", "/p2-"].map(|prefix| wait_paths(sink, prefix, 0).len() as u64);
    assert_eq!(received(&a_sink), [phase, phase]);
    assert_eq!(received(&b_sink), [phase, 0]);
}
