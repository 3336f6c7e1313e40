//! The seed scenario's topology, shared by the end-to-end tests: a client pod calls a service
//! VIP (DNAT to v1, as kube-proxy does), and `mirror run` on the node copies to v2.

use anyhow::Result;

use std::time::Duration;

use crate::{agent::Agent, Host, Sink, SinkRecord, Testbed};

/// Printed by `mirror capture` once it is attached.
pub const CAPTURE_READY: &str = "capturing; Ctrl-C to stop";
/// Printed by `mirror run` once it is attached and mirroring.
pub const READY: &str = "mirroring to";
/// The service address; `httpbin` resolves to it in the client.
pub const VIP: &str = "198.19.0.10";

/// client -> service VIP:8000 (DNAT to v1:80) and a shadow v2.
pub struct Scenario {
    pub testbed: Testbed,
    pub client: Host,
    pub v1: Host,
    pub v2: Host,
}

impl Scenario {
    pub fn new() -> Result<Scenario> {
        let mut testbed = Testbed::new()?;
        let client = testbed.add_host("client")?;
        let v1 = testbed.add_host("v1")?;
        let v2 = testbed.add_host("v2")?;
        let vip = testbed.add_service(VIP.parse()?, 8000, &v1, 80)?;
        testbed.add_hosts_entry(&client, "httpbin", vip.ip())?;
        Ok(Scenario {
            testbed,
            client,
            v1,
            v2,
        })
    }

    /// Starts `mirror run` attached to the client's veth, mirroring the VIP to v2:80.
    pub fn agent(&self, extra: &[&str]) -> Agent {
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

    /// The worst case for a loop: `mirror run` (named `name`) captures v2:80 itself, on the
    /// hook the agent's shadow connections leave through (egress of v2's node-side veth), and
    /// mirrors it to v2:80. One request from the client, then the agent stopped once v2 has
    /// it and its mirror (and a second more for anything else): v2's records and the summary.
    pub fn once_through_a_loop(&self, name: &str) -> (Vec<SinkRecord>, String) {
        let v2 = Sink::start(&self.v2, 80).expect("v2 sink");
        let v2_addr = format!("{}:80", self.v2.ipv4());
        let args: Vec<String> = [
            "run",
            "--iface",
            self.v2.node_ifname(),
            "--direction",
            "egress",
            "--target",
            &v2_addr,
            "--shadow",
            &v2_addr,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let agent = Agent::start(self.testbed.node(), name, &args, READY).expect("agent");
        self.curl(&["-o", "/dev/null", &format!("http://{v2_addr}/once")]);
        v2.wait_for_records(2, Duration::from_secs(10))
            .expect("the request and its mirror");
        std::thread::sleep(Duration::from_secs(1));
        let summary = agent.stop(libc::SIGTERM).expect("stop");
        (v2.records().expect("records"), summary)
    }

    /// curl from the client; fails the test on any error.
    pub fn curl(&self, args: &[&str]) -> String {
        let mut argv = vec!["curl", "-sS", "--fail", "--max-time", "60"];
        argv.extend_from_slice(args);
        self.client.ns().exec_ok(&argv).expect("curl")
    }
}

/// The capture tests' topology: a client pod, and a server pod with a sink on port 80.
pub struct ClientServer {
    pub testbed: Testbed,
    pub client: Host,
    pub server: Host,
    pub sink: Sink,
}

impl ClientServer {
    pub fn new() -> Result<ClientServer> {
        let mut testbed = Testbed::new()?;
        let client = testbed.add_host("client")?;
        let server = testbed.add_host("server")?;
        let sink = Sink::start(&server, 80)?;
        Ok(ClientServer {
            testbed,
            client,
            server,
            sink,
        })
    }
}
