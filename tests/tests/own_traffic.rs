//! End to end: the agent never captures its own shadow traffic, even when the node's rules
//! set the mark bits that kube-proxy (0x4000, 0x8000), Calico (0xffff0000) and Cilium (0x0f00)
//! use on the agent's packets: the kernel compares only the bits of `--shadow-mark-mask`.

use mirror_tests::{agent::counter, require_root, scenario::Scenario};

/// Every CNI bit named above, set on each packet the node sends.
const CNI_BITS: &str = "0xffffcf00";
const TABLE: &str = "mirror_cni_bits";

#[test]
fn cni_mark_bits_on_the_agents_packets_cause_no_loop() {
    if !require_root() {
        return;
    }
    // The worst case for a loop, as in the relay tests: v2 is itself the target, captured on
    // the hook the agent's shadow connections leave through (egress of v2's node-side veth).
    let scenario = Scenario::new().expect("scenario");
    let node = scenario.testbed.node();
    for rule in [
        vec!["nft", "add", "table", "inet", TABLE],
        vec![
            "nft",
            "add",
            "chain",
            "inet",
            TABLE,
            "out",
            "{ type filter hook output priority -150 ; }",
        ],
        vec![
            "nft", "add", "rule", "inet", TABLE, "out", "counter", "meta", "mark", "set", "mark",
            "or", CNI_BITS,
        ],
    ] {
        node.exec_ok(&rule).expect("nft rule");
    }
    let (records, summary) = scenario.once_through_a_loop("mirror-cni-bits");
    assert_eq!(
        records.len(),
        2,
        "no mirror of a mirror: {records:?}\n{summary}"
    );
    assert!(
        counter(&summary, "own_traffic_skipped").unwrap_or(0) > 0,
        "{summary}"
    );
    // The rule did touch the agent's packets (the only ones the node itself sends here).
    let (marked, chain) = node.nft_counted(TABLE, "out").expect("nft list");
    assert!(marked > 0, "the rule marked nothing:\n{chain}");
}
