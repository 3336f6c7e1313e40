//! End to end: `mirror run --capture-threads 2` on the namespace test-bed, two client pods
//! calling the service (each client's address is one shard's): v2 gets every request of
//! both, in order per connection, the counters of both threads summed under the usual names.

use std::time::Duration;

use mirror_tests::{
    agent::{counter, relay_conserved, Agent},
    require_root,
    scenario::{READY, VIP},
    Sink, Testbed,
};

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
