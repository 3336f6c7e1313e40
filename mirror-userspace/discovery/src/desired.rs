//! The desired state: which pods on this node to hook and what to capture at each, as a pure
//! function of the policies and of the Services, EndpointSlices and Pods last seen.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use k8s_openapi::api::{
    core::v1::{Pod, Service},
    discovery::v1::{Endpoint, EndpointSlice},
};

use crate::policy::{selects, Capture, ServicePolicy, ServicePort, ServiceRef};

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The objects discovery has seen (the watches' caches).
#[derive(Debug, Clone, Copy)]
pub struct Cluster<'a> {
    /// The node this agent runs on (`$NODE_NAME`).
    pub node: &'a str,
    pub services: &'a [&'a Service],
    pub slices: &'a [&'a EndpointSlice],
    /// Pods on this node. Others are ignored even if given (a server that does not apply the
    /// field selector, or a stale cache, must not make the agent hook another node's pod).
    pub pods: &'a [&'a Pod],
}

/// A pod, by namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PodKey {
    pub namespace: String,
    pub name: String,
}

/// A TCP destination to capture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Target {
    pub addr: IpAddr,
    pub port: u16,
}

/// What to do at one pod on this node.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PodCapture {
    /// The pod's addresses: what finds its network namespace, hence its veth, on the node.
    pub ips: BTreeSet<IpAddr>,
    /// Destinations to capture on the pod's interface.
    pub targets: BTreeSet<Target>,
    /// The policies asking for it (`namespace/name`).
    pub policies: BTreeSet<String>,
}

/// Every pod on this node to hook, and what to capture there.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DesiredState {
    pub pods: BTreeMap<PodKey, PodCapture>,
    /// Each policy's destinations (over all its pods): what tells one policy's requests from
    /// another's once captured. A policy that found nothing is absent.
    pub policy_targets: BTreeMap<String, BTreeSet<Target>>,
}

impl DesiredState {
    /// Every target over all pods: what the kernel's target set must hold.
    pub fn targets(&self) -> BTreeSet<Target> {
        self.pods
            .values()
            .flat_map(|pod| pod.targets.iter().copied())
            .collect()
    }

    fn add(&mut self, pod: PodKey, ips: &[IpAddr], targets: &[Target], policy: &str) {
        let entry = self.pods.entry(pod).or_default();
        entry.ips.extend(ips.iter().copied());
        entry.targets.extend(targets.iter().copied());
        entry.policies.insert(policy.to_string());
        self.policy_targets
            .entry(policy.to_string())
            .or_default()
            .extend(targets.iter().copied());
    }
}

/// The desired state for `policies` given what the cluster shows.
///
/// - `capture: server`: every endpoint of the Service whose `nodeName` is this node and that
///   is serving (a terminating endpoint that still serves keeps its capture until it stops),
///   with the target port its own slice resolved (a named target port may be a different
///   number on each pod); the capture is at that endpoint's pod, matching its addresses.
/// - `capture: client`: every running pod on this node that the selector picks in the
///   policy's namespace, matching the Service's cluster IPs (both families) with the Service
///   port, and every serving endpoint (on any node) with its target port.
///
/// A Service that does not exist, a port it does not have, or a slice without that port give
/// nothing. Host-network pods are skipped: they have no veth to hook.
pub fn desired_state(policies: &[ServicePolicy], cluster: &Cluster<'_>) -> DesiredState {
    let mut desired = DesiredState::default();
    let local_pods: BTreeMap<PodKey, &Pod> = cluster
        .pods
        .iter()
        .filter(|pod| pod_node(pod) == Some(cluster.node))
        .filter_map(|pod| Some((pod_key(pod)?, *pod)))
        .collect();
    for policy in policies {
        let Some(service) = find_service(cluster.services, &policy.service) else {
            continue;
        };
        let Some(port) = service_port(service, &policy.service.port) else {
            continue;
        };
        let endpoints = endpoints(cluster.slices, &policy.service, port.name);
        match &policy.capture {
            Capture::Server => {
                for endpoint in endpoints
                    .iter()
                    .filter(|e| e.node == Some(cluster.node) && e.pod.is_some())
                {
                    let Some(pod) = &endpoint.pod else { continue };
                    if local_pods.get(pod).is_some_and(|p| host_network(p)) {
                        continue;
                    }
                    let targets: Vec<Target> = endpoint
                        .addrs
                        .iter()
                        .map(|&addr| Target {
                            addr,
                            port: endpoint.port,
                        })
                        .collect();
                    desired.add(pod.clone(), &endpoint.addrs, &targets, &policy.name);
                }
            }
            Capture::Client { pod_selector } => {
                let mut targets: Vec<Target> = cluster_ips(service)
                    .map(|addr| Target {
                        addr,
                        port: port.number,
                    })
                    .collect();
                targets.extend(
                    endpoints
                        .iter()
                        .flat_map(|e| e.addrs.iter().map(|&addr| Target { addr, port: e.port })),
                );
                if targets.is_empty() {
                    continue;
                }
                for (key, pod) in &local_pods {
                    let labels = pod.metadata.labels.clone().unwrap_or_default();
                    if key.namespace != policy.service.namespace
                        || !selects(pod_selector, &labels)
                        || host_network(pod)
                        || !running(pod)
                    {
                        continue;
                    }
                    let ips = pod_ips(pod);
                    if ips.is_empty() {
                        continue;
                    }
                    desired.add(key.clone(), &ips, &targets, &policy.name);
                }
            }
        }
    }
    desired
}

// === Services ===

/// A Service port as the policy resolved it: its number, and its name (which EndpointSlice
/// ports carry).
struct ResolvedPort<'a> {
    number: u16,
    name: Option<&'a str>,
}

fn find_service<'a>(services: &[&'a Service], target: &ServiceRef) -> Option<&'a Service> {
    services.iter().copied().find(|service| {
        service.metadata.namespace.as_deref() == Some(target.namespace.as_str())
            && service.metadata.name.as_deref() == Some(target.name.as_str())
    })
}

fn service_port<'a>(service: &'a Service, wanted: &ServicePort) -> Option<ResolvedPort<'a>> {
    let ports = service.spec.as_ref()?.ports.as_deref()?;
    let port = ports.iter().find(|port| {
        tcp(port.protocol.as_deref())
            && match wanted {
                ServicePort::Number(number) => port.port == i32::from(*number),
                ServicePort::Name(name) => port.name.as_deref() == Some(name.as_str()),
            }
    })?;
    Some(ResolvedPort {
        number: u16::try_from(port.port).ok()?,
        name: port.name.as_deref().filter(|name| !name.is_empty()),
    })
}

/// The Service's cluster IPs (one per family), none for a headless Service.
fn cluster_ips(service: &Service) -> impl Iterator<Item = IpAddr> + '_ {
    let spec = service.spec.as_ref();
    let listed = spec.and_then(|spec| spec.cluster_ips.as_deref());
    let single = spec.and_then(|spec| spec.cluster_ip.as_ref());
    listed
        .into_iter()
        .flatten()
        .chain(single)
        .filter_map(|ip| ip.parse().ok())
        .collect::<BTreeSet<IpAddr>>()
        .into_iter()
}

fn tcp(protocol: Option<&str>) -> bool {
    // The API defaults an absent protocol to TCP.
    protocol.is_none_or(|p| p == "TCP")
}

// === EndpointSlices ===

/// One serving endpoint of the Service, with the target port its slice gives.
struct ServingEndpoint<'a> {
    addrs: Vec<IpAddr>,
    port: u16,
    node: Option<&'a str>,
    pod: Option<PodKey>,
}

/// The serving endpoints of `service` over all its slices (one per address family at least,
/// more in large Services), each with its slice's number for the port named `port_name`.
fn endpoints<'a>(
    slices: &[&'a EndpointSlice],
    service: &ServiceRef,
    port_name: Option<&str>,
) -> Vec<ServingEndpoint<'a>> {
    let mut found = Vec::new();
    for slice in slices {
        let labels = slice.metadata.labels.as_ref();
        if slice.metadata.namespace.as_deref() != Some(service.namespace.as_str())
            || labels.and_then(|l| l.get(SERVICE_NAME_LABEL)) != Some(&service.name)
            || !matches!(slice.address_type.as_str(), "IPv4" | "IPv6")
        {
            continue;
        }
        let Some(port) = slice_port(slice, port_name) else {
            continue;
        };
        for endpoint in slice.endpoints.iter().filter(|e| serving(e)) {
            let addrs: Vec<IpAddr> = endpoint
                .addresses
                .iter()
                .filter_map(|a| a.parse().ok())
                .collect();
            if addrs.is_empty() {
                continue;
            }
            let pod = endpoint
                .target_ref
                .as_ref()
                .filter(|r| r.kind.as_deref() == Some("Pod"))
                .and_then(|r| {
                    Some(PodKey {
                        namespace: r
                            .namespace
                            .clone()
                            .unwrap_or_else(|| service.namespace.clone()),
                        name: r.name.clone()?,
                    })
                });
            found.push(ServingEndpoint {
                addrs,
                port,
                node: endpoint.node_name.as_deref(),
                pod,
            });
        }
    }
    found
}

/// The slice's number for the Service port named `name` (`None`: the Service's only, unnamed
/// port, which slices list with an empty or absent name).
fn slice_port(slice: &EndpointSlice, name: Option<&str>) -> Option<u16> {
    slice
        .ports
        .as_deref()?
        .iter()
        .find(|port| {
            tcp(port.protocol.as_deref()) && port.name.as_deref().filter(|n| !n.is_empty()) == name
        })
        .and_then(|port| u16::try_from(port.port?).ok())
}

/// Whether the endpoint accepts requests. `serving` is the condition for that (a terminating
/// pod may still serve its connections); absent, the API says to take `ready`, and absent
/// too, to assume it is.
fn serving(endpoint: &Endpoint) -> bool {
    let conditions = endpoint.conditions.as_ref();
    conditions
        .and_then(|c| c.serving.or(c.ready))
        .unwrap_or(true)
}

// === Pods ===

fn pod_key(pod: &Pod) -> Option<PodKey> {
    Some(PodKey {
        namespace: pod.metadata.namespace.clone()?,
        name: pod.metadata.name.clone()?,
    })
}

fn pod_node(pod: &Pod) -> Option<&str> {
    pod.spec.as_ref()?.node_name.as_deref()
}

fn host_network(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|spec| spec.host_network)
        .unwrap_or(false)
}

fn running(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    phase == Some("Running") && pod.metadata.deletion_timestamp.is_none()
}

fn pod_ips(pod: &Pod) -> Vec<IpAddr> {
    let status = pod.status.as_ref();
    let listed = status
        .and_then(|s| s.pod_ips.as_deref())
        .into_iter()
        .flatten();
    let single = status.and_then(|s| s.pod_ip.as_ref());
    listed
        .map(|ip| &ip.ip)
        .chain(single)
        .filter_map(|ip| ip.parse().ok())
        .collect::<BTreeSet<IpAddr>>()
        .into_iter()
        .collect()
}

#[cfg(test)]
#[path = "desired_tests.rs"]
mod tests;
