//! End to end: a pod's node-side interface is found from its address, by the pod's network
//! namespace id and the veth peer's ifindex over rtnetlink (mirror-discovery), on real
//! namespaces: every pod's own interface is `eth0`, ifindex 2, and the node-side names are
//! arbitrary (renamed here), so only the namespace tells them apart.

use std::{collections::BTreeSet, net::IpAddr};

use mirror_discovery::interfaces::pod_interfaces;
use mirror_tests::{require_root, Testbed};

#[test]
fn each_pod_address_maps_to_its_own_node_side_veth_whatever_its_name() {
    if !require_root() {
        return;
    }
    let mut testbed = Testbed::new().expect("testbed");
    let pods: Vec<_> = (0..3)
        .map(|n| testbed.add_host(&format!("pod{n}")).expect("pod"))
        .collect();
    // Names carry no meaning: rename one node-side veth the way another CNI would name it.
    let node = testbed.node();
    for argv in [
        vec!["ip", "link", "set", pods[1].node_ifname(), "down"],
        vec![
            "ip",
            "link",
            "set",
            pods[1].node_ifname(),
            "name",
            "cali0a1b2c3d",
        ],
        vec!["ip", "link", "set", "cali0a1b2c3d", "up"],
    ] {
        node.exec_ok(&argv).expect("rename the veth");
    }
    let mut ips: BTreeSet<IpAddr> = pods
        .iter()
        .flat_map(|pod| [IpAddr::V4(pod.ipv4()), IpAddr::V6(pod.ipv6())])
        .collect();
    // An address no pod holds is not found.
    let stranger: IpAddr = "198.51.100.7".parse().expect("address");
    ips.insert(stranger);

    let found = testbed
        .node()
        .run(move || pod_interfaces(&ips))
        .expect("run in the node namespace")
        .expect("netlink");

    assert!(!found.contains_key(&stranger));
    let mut namespaces = BTreeSet::new();
    for pod in &pods {
        for ip in [IpAddr::V4(pod.ipv4()), IpAddr::V6(pod.ipv6())] {
            let interface = found
                .get(&ip)
                .unwrap_or_else(|| panic!("{ip} of {} not found: {found:?}", pod.name()));
            assert_eq!(interface.node_ifindex, pod.node_ifindex(), "{ip}");
            let pod_side = pod.ns().ifindex("eth0").expect("eth0");
            assert_eq!(interface.pod_ifindex, pod_side, "{ip}");
            namespaces.insert(interface.netnsid);
        }
    }
    assert_eq!(namespaces.len(), pods.len(), "one namespace id per pod");
    assert_eq!(found[&IpAddr::V4(pods[1].ipv4())].node_name, "cali0a1b2c3d");
    assert_eq!(found.len(), 2 * pods.len());
}
