//! The desired state computed from recorded objects (fixtures/, in the API's JSON form).

use std::collections::BTreeSet;

use k8s_openapi::{
    api::{
        core::v1::{Pod, Service},
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::apis::meta::v1::LabelSelector,
};
use serde::Deserialize;
use serde_json::json;

use super::*;
use crate::policy::{Capture, ServicePolicy, ServicePort, ServiceRef};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Fixture {
    services: Vec<Service>,
    endpoint_slices: Vec<EndpointSlice>,
    pods: Vec<Pod>,
}

fn fixture() -> Fixture {
    serde_json::from_str(include_str!("../fixtures/httpbin-two-nodes.json")).expect("fixture")
}

fn state(fixture: &Fixture, node: &str, policies: &[ServicePolicy]) -> DesiredState {
    let services: Vec<&Service> = fixture.services.iter().collect();
    let slices: Vec<&EndpointSlice> = fixture.endpoint_slices.iter().collect();
    let pods: Vec<&Pod> = fixture.pods.iter().collect();
    desired_state(
        policies,
        &Cluster {
            node,
            services: &services,
            slices: &slices,
            pods: &pods,
        },
    )
}

fn server(port: ServicePort) -> ServicePolicy {
    ServicePolicy {
        name: "default/httpbin".into(),
        service: ServiceRef {
            namespace: "default".into(),
            name: "httpbin".into(),
            port,
        },
        capture: Capture::Server,
    }
}

fn client(selector: serde_json::Value) -> ServicePolicy {
    let pod_selector: LabelSelector = serde_json::from_value(selector).expect("selector");
    ServicePolicy {
        capture: Capture::Client { pod_selector },
        ..server(ServicePort::Number(8000))
    }
}

fn key(name: &str) -> PodKey {
    PodKey {
        namespace: "default".into(),
        name: name.into(),
    }
}

fn target(addr: &str, port: u16) -> Target {
    Target {
        addr: addr.parse().expect("address"),
        port,
    }
}

fn ips(addrs: &[&str]) -> BTreeSet<std::net::IpAddr> {
    addrs.iter().map(|a| a.parse().expect("address")).collect()
}

#[test]
fn server_capture_is_at_this_nodes_serving_endpoints_with_each_slices_target_port() {
    let desired = state(&fixture(), "node-1", &[server(ServicePort::Number(8000))]);
    let pods: Vec<&str> = desired.pods.keys().map(|k| k.name.as_str()).collect();
    // b is on node-2; d is terminating and no longer serving; c is terminating but serving.
    assert_eq!(pods, ["httpbin-v1-a", "httpbin-v1-c", "httpbin-v1-e"]);

    let a = &desired.pods[&key("httpbin-v1-a")];
    // Dual-stack: the IPv4 and the IPv6 slice each give one address of the same pod.
    assert_eq!(a.ips, ips(&["10.244.1.5", "fd00:10:244:1::5"]));
    assert_eq!(
        a.targets,
        BTreeSet::from([target("10.244.1.5", 80), target("fd00:10:244:1::5", 80)])
    );
    assert_eq!(a.policies, BTreeSet::from(["default/httpbin".to_string()]));
    // The named target port `http` is 8080 on e: its own slice says so.
    assert_eq!(
        desired.pods[&key("httpbin-v1-e")].targets,
        BTreeSet::from([target("10.244.1.9", 8080)])
    );
    assert_eq!(
        desired.pods[&key("httpbin-v1-c")].targets,
        BTreeSet::from([target("10.244.1.6", 80)])
    );

    // The other node's agent hooks b alone.
    let other = state(&fixture(), "node-2", &[server(ServicePort::Number(8000))]);
    assert_eq!(
        other
            .pods
            .keys()
            .map(|k| k.name.as_str())
            .collect::<Vec<_>>(),
        ["httpbin-v1-b"]
    );
    assert_eq!(
        other.targets(),
        BTreeSet::from([target("10.244.2.7", 80), target("fd00:10:244:2::7", 80)])
    );
}

#[test]
fn a_service_port_by_name_is_the_same_as_by_number_and_a_missing_one_is_nothing() {
    let fixture = fixture();
    let by_number = state(&fixture, "node-1", &[server(ServicePort::Number(8000))]);
    let by_name = state(
        &fixture,
        "node-1",
        &[server(ServicePort::Name("http".into()))],
    );
    assert_eq!(by_number, by_name);
    let metrics = state(&fixture, "node-1", &[server(ServicePort::Number(9090))]);
    assert_eq!(
        metrics.targets(),
        BTreeSet::from([
            target("10.244.1.5", 9090),
            target("10.244.1.6", 9090),
            target("10.244.1.9", 9090),
            target("fd00:10:244:1::5", 9090)
        ])
    );
    for missing in [ServicePort::Number(80), ServicePort::Name("grpc".into())] {
        assert_eq!(
            state(&fixture, "node-1", &[server(missing)]),
            DesiredState::default()
        );
    }
}

#[test]
fn client_capture_is_at_selected_local_callers_with_cluster_ips_and_every_endpoint() {
    let desired = state(
        &fixture(),
        "node-1",
        &[client(json!({"matchLabels": {"app": "sleep"}}))],
    );
    // sleep-2 is on node-2, sleep-pending has no address yet, sleep-other-ns is in another
    // namespace than the policy's.
    assert_eq!(
        desired
            .pods
            .keys()
            .map(|k| k.name.as_str())
            .collect::<Vec<_>>(),
        ["sleep-1"]
    );
    let sleep = &desired.pods[&key("sleep-1")];
    assert_eq!(sleep.ips, ips(&["10.244.1.20", "fd00:10:244:1::14"]));
    assert_eq!(
        sleep.targets,
        BTreeSet::from([
            target("10.96.0.10", 8000),
            target("fd00:10:96::a", 8000),
            // Every serving endpoint, whatever its node, at its own target port.
            target("10.244.1.5", 80),
            target("10.244.2.7", 80),
            target("10.244.1.6", 80),
            target("10.244.1.9", 8080),
            target("fd00:10:244:1::5", 80),
            target("fd00:10:244:2::7", 80),
        ])
    );
    let nobody = state(
        &fixture(),
        "node-1",
        &[client(json!({"matchLabels": {"app": "nobody"}}))],
    );
    assert_eq!(nobody, DesiredState::default());
}

#[test]
fn changes_to_the_objects_change_the_desired_state() {
    let policies = [server(ServicePort::Number(8000))];

    // Scale down: e's slice loses its endpoint.
    let mut fixture = fixture();
    fixture.endpoint_slices[1].endpoints.clear();
    let desired = state(&fixture, "node-1", &policies);
    assert!(!desired.pods.contains_key(&key("httpbin-v1-e")));
    assert_eq!(desired.pods.len(), 2);

    // Scale up: a new pod on node-1 joins the first slice.
    fixture.endpoint_slices[0].endpoints.push(
        serde_json::from_value(json!({
            "addresses": ["10.244.1.40"], "conditions": {"ready": true, "serving": true},
            "nodeName": "node-1", "targetRef": {"kind": "Pod", "name": "httpbin-v1-f", "namespace": "default"}
        }))
        .expect("endpoint"),
    );
    let desired = state(&fixture, "node-1", &policies);
    assert_eq!(
        desired.pods[&key("httpbin-v1-f")].targets,
        BTreeSet::from([target("10.244.1.40", 80)])
    );

    // A pod that turns out to use the host's network has no veth: nothing to hook.
    fixture.pods[0].spec.as_mut().expect("spec").host_network = Some(true);
    assert!(!state(&fixture, "node-1", &policies)
        .pods
        .contains_key(&key("httpbin-v1-a")));

    // The Service goes: its leftover slices count for nothing.
    fixture
        .services
        .retain(|s| s.metadata.name.as_deref() != Some("httpbin"));
    assert_eq!(
        state(&fixture, "node-1", &policies),
        DesiredState::default()
    );
}

#[test]
fn slices_of_other_services_and_namespaces_are_not_mixed_in() {
    let mut fixture = fixture();
    // A slice in another namespace that claims the same service name.
    let mut stray = fixture.endpoint_slices[0].clone();
    stray.metadata.namespace = Some("web".into());
    stray.endpoints[0].addresses = vec!["10.244.1.99".into()];
    fixture.endpoint_slices.push(stray);
    let desired = state(&fixture, "node-1", &[server(ServicePort::Number(8000))]);
    let all = desired.targets();
    assert!(!all.contains(&target("10.244.1.99", 80)), "{all:?}");
    // other's endpoint on node-1 (10.244.1.30) is not httpbin's.
    assert!(!all
        .iter()
        .any(|t| t.addr == "10.244.1.30".parse::<std::net::IpAddr>().unwrap()));
}
