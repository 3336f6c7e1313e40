//! End to end: nothing of ours stays attached after the agent exits, however it exits, and the
//! client's traffic flows throughout.

use std::time::Duration;

use mirror_tests::{
    agent::{mirror_binary, Agent},
    require_root,
    scenario::{ClientServer as Bed, CAPTURE_READY},
};

fn bed() -> Bed {
    Bed::new().expect("client and server")
}

trait DetachBed {
    fn start(&self, attach: &str) -> Agent;
    fn attachments(&self) -> String;
    fn tc_filters(&self) -> String;
    fn assert_traffic_flows(&self);
}

impl DetachBed for Bed {
    fn start(&self, attach: &str) -> Agent {
        let args: Vec<String> = [
            "capture",
            "--quiet",
            "--attach",
            attach,
            "--iface",
            self.client.node_ifname(),
            "--target",
            &format!("{}:80", self.server.ipv4()),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        Agent::start(self.testbed.node(), "mirror", &args, CAPTURE_READY).expect("start mirror")
    }

    /// What is attached to the client's node-side veth: TCX programs (`mirror attached`:
    /// Debian 12's bpftool predates TCX) and netlink filters (`tc`).
    fn attachments(&self) -> String {
        let tcx = self
            .testbed
            .node()
            .exec_ok(&[
                mirror_binary()
                    .expect("mirror binary")
                    .display()
                    .to_string(),
                "attached".to_owned(),
                "--iface".to_owned(),
                self.client.node_ifname().to_owned(),
            ])
            .expect("mirror attached");
        format!("{tcx}\n{}", self.tc_filters())
    }

    /// The netlink tc filters on the client's node-side veth.
    fn tc_filters(&self) -> String {
        let dev = self.client.node_ifname();
        let node = self.testbed.node();
        let mut tc = String::new();
        for hook in ["ingress", "egress"] {
            // No clsact qdisc means no filter: tc fails, and that is "nothing attached".
            if let Ok(out) = node.exec_ok(&["tc", "filter", "show", "dev", dev, hook]) {
                tc.push_str(&out);
            }
        }
        tc
    }

    fn assert_traffic_flows(&self) {
        self.client
            .ns()
            .exec_ok(&[
                "curl",
                "-sSf",
                "--max-time",
                "10",
                &format!("http://{}:80/still-flowing", self.server.ipv4()),
            ])
            .expect("client traffic flows");
    }
}

fn assert_detached_after(signal: i32, attach: &str) {
    if !require_root() {
        return;
    }
    let bed = bed();
    let agent = bed.start(attach);
    // Both hooks: the client's side on ingress, v1's side (header-only) on egress.
    let attached = bed.attachments();
    assert!(
        attached.contains("mirror_ingress") && attached.contains("mirror_egress"),
        "attached while running:\n{attached}"
    );
    bed.assert_traffic_flows();
    agent.stop(signal).expect("stop");
    assert!(
        !bed.attachments().contains("mirror_"),
        "still attached after signal {signal}:\n{}",
        bed.attachments()
    );
    bed.assert_traffic_flows();
}

#[test]
fn tcx_is_detached_after_sigterm() {
    assert_detached_after(libc::SIGTERM, "tcx");
}

#[test]
fn tcx_is_detached_after_sigkill() {
    assert_detached_after(libc::SIGKILL, "tcx");
}

#[test]
fn netlink_is_detached_after_sigterm() {
    assert_detached_after(libc::SIGTERM, "netlink");
}

#[test]
fn netlink_filter_left_by_sigkill_is_replaced_at_next_start() {
    if !require_root() {
        return;
    }
    let bed = bed();
    bed.start("netlink").stop(libc::SIGKILL).expect("kill");
    // The kernel keeps a netlink filter after its owner dies; ours passes every packet on.
    assert!(bed.attachments().contains("mirror_ingress"));
    bed.assert_traffic_flows();
    let mut agent = bed.start("netlink");
    agent
        .wait_for_stderr("removed a stale mirror filter", Duration::from_secs(5))
        .expect("stale filter replaced");
    let filters = bed.tc_filters();
    assert_eq!(
        filters
            .lines()
            .filter(|line| line.contains("mirror_ingress"))
            .count(),
        1,
        "exactly one filter of ours:\n{filters}"
    );
    agent.stop(libc::SIGTERM).expect("stop");
    assert!(
        !bed.attachments().contains("mirror_"),
        "{}",
        bed.attachments()
    );
    bed.assert_traffic_flows();
}
