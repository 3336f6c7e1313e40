//! `mirror run --kubernetes`: the node agent. Discovery (crate mirror-discovery) watches the
//! API for the config's Service targets and this node's pods; this task turns each desired
//! state into live changes of the running capture: the pods' veths attached or detached
//! (`capture::live`), the kernel's targets and the dispatcher's policies updated (through the
//! same channel as a reloaded config file, so the capture loop applies them between two
//! records). It reacts to discovery's updates, to netlink link events (a veth that appears
//! after its pod was published) and to a periodic resync. The config's `interfaces` patterns
//! are attached live as well: the fallback where the API gives nothing.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
    time::Duration,
};

use mirror_discovery::{
    interfaces::pod_interfaces, ApiStatus, Capture, Client, Discovery, DiscoveryConfig,
    DiscoveryUpdate, MirrorPolicyObject,
};
use tokio::sync::mpsc;

use super::link_events::LinkEvents;
use crate::{
    capture::{
        classifier::Direction,
        live::{LiveAttachments, Place},
        target::Target,
    },
    control::{interfaces, parse_policy, MirrorConfig, PolicyConfig},
    observe::{health::Health, Registry, Sample, Source},
};

/// Everything is looked at again this often even without an event.
const RESYNC: Duration = Duration::from_secs(10);

#[derive(Clone, Debug, clap::Args)]
pub struct KubernetesOptions {
    /// Run as the Kubernetes node agent: follow the config's Service targets through the API
    /// (in-cluster service account, or $KUBECONFIG) and attach to this node's pods as they
    /// come and go.
    #[arg(long = "kubernetes", requires = "config")]
    pub enabled: bool,
    /// This node's name (default: $NODE_NAME, which the DaemonSet sets from the downward API).
    #[arg(long, value_name = "NAME")]
    pub node_name: Option<String>,
    /// Also follow `MirrorPolicy` objects (deploy/base/crd.yaml must be installed): each is
    /// read as a config-file policy named `namespace/name`.
    #[arg(long, requires = "enabled")]
    pub mirror_policies: bool,
    /// Where `capture: server` hooks a backend pod: `node`, the node side of its veth (TC
    /// egress sees the client's packets), or `pod`, the pod's own interface inside its network
    /// namespace (TC ingress; TCX only, kernel 6.6+), which Cilium's BPF host routing
    /// (bpf_redirect_peer) does not bypass. `pod` enters the pod's namespace to attach:
    /// CAP_SYS_ADMIN, and the runtime's namespace files in --netns-dir.
    #[arg(long, value_enum, default_value = "node")]
    pub server_hook: ServerHook,
    /// Where the container runtime keeps the pods' network namespace files (`--server-hook
    /// pod`); each is matched to its pod by the namespace id the node gives it.
    #[arg(long, value_name = "DIR", default_value = "/run/netns")]
    pub netns_dir: std::path::PathBuf,
}

/// Where `capture: server` attaches at a backend pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ServerHook {
    Node,
    Pod,
}

#[derive(Debug, thiserror::Error)]
pub enum KubernetesError {
    #[error("policy {0} targets a Service: run with --kubernetes (or give it an address target)")]
    NeedsKubernetes(String),
    #[error("--kubernetes needs the node's name: --node-name or $NODE_NAME")]
    NoNodeName,
    #[error(
        "one agent captures one side: policies {server} (capture: server) and {client} \
         (capture: client) cannot run together yet"
    )]
    MixedCapture { server: String, client: String },
    #[error("no Kubernetes API configuration (in-cluster service account or $KUBECONFIG)")]
    Client(#[source] mirror_discovery::kube::Error),
    #[error("the Kubernetes client's start-up task failed")]
    Task(#[source] tokio::task::JoinError),
}

/// Refuses Service targets without `--kubernetes`, and picks the hook that sees the client's
/// packets on the node side of a pod's veth: egress for `capture: server` (the packets go
/// into the server pod), ingress for `capture: client` (they come out of the client pod).
pub fn direction(
    config: &MirrorConfig,
    options: &KubernetesOptions,
    flag: Direction,
) -> Result<Direction, KubernetesError> {
    let services: Vec<_> = config
        .policies
        .iter()
        .filter_map(|p| p.service.as_ref())
        .collect();
    if !options.enabled {
        return match services.first() {
            Some(policy) => Err(KubernetesError::NeedsKubernetes(policy.name.clone())),
            None => Ok(flag),
        };
    }
    let server = services
        .iter()
        .find(|p| matches!(p.capture, Capture::Server));
    let server_side = capture_side(&Capture::Server, options.server_hook);
    let client = services
        .iter()
        .find(|p| matches!(p.capture, Capture::Client { .. }));
    match (server, client) {
        (Some(server), Some(client)) => Err(KubernetesError::MixedCapture {
            server: server.name.clone(),
            client: client.name.clone(),
        }),
        (Some(_), None) => Ok(server_side),
        (None, Some(_)) => Ok(Direction::Ingress),
        // MirrorPolicy objects only: the default side, the server's.
        (None, None) if options.mirror_policies => Ok(server_side),
        (None, None) => Ok(flag),
    }
}

/// The hook that sees the client's packets: on the node side of a pod's veth, egress for the
/// server (the packets go into the pod) and ingress for the client (they come out of it);
/// inside the server pod, ingress.
fn capture_side(capture: &Capture, hook: ServerHook) -> Direction {
    match (capture, hook) {
        (Capture::Server, ServerHook::Node) => Direction::Egress,
        (Capture::Server, ServerHook::Pod) | (Capture::Client { .. }, _) => Direction::Ingress,
    }
}

/// Whether this agent's pods are hooked inside their namespace.
fn inside_pods(config: &MirrorConfig, options: &KubernetesOptions) -> bool {
    let server = config
        .policies
        .iter()
        .filter_map(|p| p.service.as_ref())
        .any(|p| matches!(p.capture, Capture::Server));
    options.server_hook == ServerHook::Pod && (server || options.mirror_policies)
}

/// What the agent task is given.
pub struct AgentParts {
    pub options: KubernetesOptions,
    pub config: MirrorConfig,
    pub reloads: Option<mpsc::Receiver<MirrorConfig>>,
    pub live: LiveAttachments,
    pub registry: Registry,
    pub health: Arc<Health>,
}

/// Connects to the API and starts the agent task on `runtime`. The returned channel carries
/// the config to run with (the file's, its Service targets resolved) at every change. A
/// config with no Service target, without `--mirror-policies`, needs no API: only its
/// `interfaces` patterns are followed (the fallback on a node without API access).
pub async fn start(
    parts: AgentParts,
    runtime: &tokio::runtime::Handle,
) -> Result<mpsc::Receiver<MirrorConfig>, KubernetesError> {
    let stats = Arc::new(AgentStats::default());
    parts.registry.register("attach", parts.live.stats());
    let (sender, receiver) = mpsc::channel(4);
    let needs_api =
        parts.options.mirror_policies || parts.config.policies.iter().any(|p| p.service.is_some());
    if !needs_api {
        tracing::info!(
            "no Service targets: following the interface patterns only, without the API"
        );
        runtime.spawn(run(parts, None, stats, sender));
        return Ok(receiver);
    }
    let node = parts
        .options
        .node_name
        .clone()
        .or_else(|| std::env::var("NODE_NAME").ok())
        .filter(|n| !n.is_empty())
        .ok_or(KubernetesError::NoNodeName)?;
    // Made on the relay's runtime: the client's connection tasks run where it is made, and
    // must not take the capture thread.
    let client = runtime
        .spawn(Client::try_default())
        .await
        .map_err(KubernetesError::Task)?
        .map_err(KubernetesError::Client)?;
    parts.registry.register("kubernetes", stats.clone());
    tracing::info!(%node, "following the Kubernetes API for this node's pods");
    runtime.spawn(run(parts, Some((node, client)), stats, sender));
    Ok(receiver)
}

/// The agent's gauges (stage `kubernetes`).
#[derive(Debug, Default)]
struct AgentStats {
    /// 1 while every watch runs; 0 while syncing or while the API is unreachable.
    api_live: AtomicU64,
    pods: AtomicU64,
    /// Wanted pods whose interface was not found on the node.
    pods_without_interface: AtomicU64,
    resyncs: AtomicU64,
    mirror_policies: AtomicU64,
}

impl Source for AgentStats {
    fn visit(&self, out: &mut dyn FnMut(Sample)) {
        out(Sample::gauge(
            "api_live",
            "1 while the API watches run; 0 while they sync or the API is unreachable (the last known state is kept).",
            self.api_live.load(Relaxed),
        ));
        out(Sample::gauge(
            "pods",
            "Pods on this node the policies want captured.",
            self.pods.load(Relaxed),
        ));
        out(Sample::gauge(
            "pods_without_interface",
            "Wanted pods whose veth was not found on the node (yet).",
            self.pods_without_interface.load(Relaxed),
        ));
        out(Sample::gauge(
            "mirror_policies",
            "MirrorPolicy objects applied (ones that cannot be read are logged and left out).",
            self.mirror_policies.load(Relaxed),
        ));
        out(Sample::counter(
            "reconciles",
            "Times the attachments and targets were brought in line with the desired state.",
            self.resyncs.load(Relaxed),
        ));
    }
}

/// The agent loop; `api`: this node's name and the API client, if the policies need them.
async fn run(
    parts: AgentParts,
    api: Option<(String, Client)>,
    stats: Arc<AgentStats>,
    sender: mpsc::Sender<MirrorConfig>,
) {
    let AgentParts {
        options,
        mut config,
        mut reloads,
        mut live,
        health,
        ..
    } = parts;
    let start_discovery = |config: &MirrorConfig| {
        api.as_ref().map(|(node, client)| {
            Discovery::start(
                client.clone(),
                DiscoveryConfig {
                    node: node.clone(),
                    policies: service_policies(config),
                    mirror_policies: options.mirror_policies,
                },
            )
        })
    };
    let mut discovery = start_discovery(&config);
    // Without the API, an update that never changes (its sender kept for the loop's life).
    let (_no_api, no_updates) = tokio::sync::watch::channel(DiscoveryUpdate {
        desired: Default::default(),
        api: ApiStatus::Syncing,
        rejected_policies: 0,
        mirror_policies: Vec::new(),
    });
    let mut updates = discovery
        .as_ref()
        .map_or(no_updates.clone(), Discovery::updates);
    // The last state of watches that were in sync: what a restarted discovery (a reloaded
    // file naming other Services) keeps applying until its own first lists are in.
    let mut last_synced: Option<DiscoveryUpdate> = None;
    // The running discovery has been in sync at least once: its state is its own.
    let mut synced = false;
    let mut links = match LinkEvents::open() {
        Ok(links) => Some(links),
        Err(error) => {
            tracing::warn!(%error, "no netlink link events: new veths are seen at the periodic resync");
            None
        }
    };
    let mut resync = tokio::time::interval(RESYNC);
    let mut sent: Option<(u64, Vec<Vec<Target>>)> = None;
    // Bumped at every change of the policies themselves (file reloaded, MirrorPolicy objects).
    let mut generation = 0u64;
    let mut objects: Vec<MirrorPolicyObject> = Vec::new();
    let mut cluster_policies: Vec<PolicyConfig> = Vec::new();
    let mut api = ApiStatus::Syncing;
    loop {
        tokio::select! {
            changed = updates.changed() => if changed.is_err() { return },
            Some(reloaded) = next(&mut reloads) => {
                match direction(&reloaded, &options, live.direction()) {
                    Ok(side) if side == live.direction() => {}
                    Ok(_) => {
                        tracing::error!("config reload refused: its policies capture the other side; keeping the running config");
                        continue;
                    }
                    Err(error) => {
                        tracing::error!(%error, "config reload refused; keeping the running config");
                        continue;
                    }
                }
                if service_policies(&reloaded) != service_policies(&config) {
                    discovery = start_discovery(&reloaded);
                    synced = false;
                    updates = discovery.as_ref().map_or(no_updates.clone(), Discovery::updates);
                }
                config = reloaded;
                cluster_policies =
                    read_mirror_policies(&objects, &config, live.direction(), options.server_hook);
                generation += 1;
            }
            () = next_link_event(&mut links) => {}
            _ = resync.tick() => {}
        }
        let mut update: DiscoveryUpdate = updates.borrow_and_update().clone();
        synced |= update.api == ApiStatus::Live;
        if synced {
            last_synced = Some(update.clone());
        } else if let Some(last) = &last_synced {
            update = DiscoveryUpdate {
                api: update.api.clone(),
                ..last.clone()
            };
        }
        if update.mirror_policies != objects {
            objects = update.mirror_policies.clone();
            cluster_policies =
                read_mirror_policies(&objects, &config, live.direction(), options.server_hook);
            stats
                .mirror_policies
                .store(cluster_policies.len() as u64, Relaxed);
            generation += 1;
        }
        if update.api != api {
            api = update.api.clone();
            match &api {
                ApiStatus::Live => {
                    tracing::info!(pods = update.desired.pods.len(), "Kubernetes API in sync")
                }
                ApiStatus::Unreachable { error, .. } => {
                    tracing::warn!(%error, pods = update.desired.pods.len(), "Kubernetes API unreachable: keeping the last known pods and targets")
                }
                ApiStatus::Syncing => {}
            }
        }
        stats
            .api_live
            .store(u64::from(matches!(api, ApiStatus::Live)), Relaxed);
        stats.resyncs.fetch_add(1, Relaxed);
        // Targets and policies first, then the attachments: a new pod's first packets match.
        let resolved = resolve(&config, &cluster_policies, &update);
        let discovered: Vec<Vec<Target>> = resolved
            .policies
            .iter()
            .map(|p| p.discovered.clone())
            .collect();
        let now = (generation, discovered);
        if sent.as_ref() != Some(&now) {
            if let Err(error) = live.set_targets(&resolved.capture_targets()) {
                tracing::error!(%error, "targets not updated");
            }
            if sender.send(resolved).await.is_err() {
                return;
            }
            sent = Some(now);
        }
        let inside = inside_pods(&config, &options);
        if let Some(wanted) = wanted_interfaces(&config, &update, &stats, inside) {
            let attached = live.reconcile(&wanted);
            health.attached(&attached);
        }
    }
}

/// The config's Service policies, as discovery reads them.
fn service_policies(config: &MirrorConfig) -> Vec<mirror_discovery::ServicePolicy> {
    config
        .policies
        .iter()
        .filter_map(|p| p.service.clone())
        .collect()
}

/// The MirrorPolicy objects read as config-file policies named `namespace/name` (a Service in
/// the object's namespace unless it names another). One that cannot be read is logged and
/// left out; the others apply.
fn read_mirror_policies(
    objects: &[MirrorPolicyObject],
    config: &MirrorConfig,
    side: Direction,
    hook: ServerHook,
) -> Vec<PolicyConfig> {
    let mut policies = Vec::new();
    for object in objects {
        let name = format!("{}/{}", object.namespace, object.name);
        let mut entry = object.spec.clone();
        if let Some(service) = entry.pointer_mut("/target/service") {
            if let Some(fields) = service.as_object_mut() {
                fields
                    .entry("namespace")
                    .or_insert_with(|| object.namespace.clone().into());
            }
        }
        if let Some(fields) = entry.as_object_mut() {
            fields.insert("name".into(), name.clone().into());
        }
        let label = format!("MirrorPolicy {name}");
        match parse_policy(&entry.to_string(), &label) {
            Ok(policy) if config.policies.iter().any(|p| p.name == policy.name) => {
                tracing::warn!(policy = %name, "MirrorPolicy ignored: the config file has a policy of that name");
            }
            Ok(policy)
                if policy
                    .service
                    .as_ref()
                    .is_some_and(|s| capture_side(&s.capture, hook) != side) =>
            {
                tracing::warn!(policy = %name, "MirrorPolicy ignored: this agent captures the other side (one agent captures one side)");
            }
            Ok(policy) => policies.push(policy),
            Err(error) => tracing::warn!(%error, "MirrorPolicy ignored"),
        }
    }
    policies
}

/// `config` and the cluster's policies, each Service policy with its destinations as
/// discovered.
fn resolve(
    config: &MirrorConfig,
    cluster_policies: &[PolicyConfig],
    update: &DiscoveryUpdate,
) -> MirrorConfig {
    let mut resolved = config.clone();
    resolved.policies.extend(cluster_policies.iter().cloned());
    for policy in &mut resolved.policies {
        if policy.service.is_none() {
            continue;
        }
        policy.discovered = update
            .desired
            .policy_targets
            .get(&policy.name)
            .into_iter()
            .flatten()
            .map(|t| Target {
                addr: t.addr,
                prefix: if t.addr.is_ipv4() { 32 } else { 128 },
                port: t.port,
            })
            .collect();
    }
    resolved
}

/// The interfaces to be attached now: each wanted pod's node-side veth (by its namespace and
/// peer index), and whatever the config's patterns match. `None` when the node's links
/// could not be read: the attached ones stay.
fn wanted_interfaces(
    config: &MirrorConfig,
    update: &DiscoveryUpdate,
    stats: &AgentStats,
    inside: bool,
) -> Option<BTreeMap<String, Place>> {
    let mut wanted = BTreeMap::new();
    let pods = &update.desired.pods;
    let ips: BTreeSet<IpAddr> = pods.values().flat_map(|p| p.ips.iter().copied()).collect();
    stats.pods.store(pods.len() as u64, Relaxed);
    match pod_interfaces(&ips) {
        Ok(found) => {
            let missing = pods
                .values()
                .filter(|p| !p.ips.iter().any(|ip| found.contains_key(ip)))
                .count();
            stats.pods_without_interface.store(missing as u64, Relaxed);
            for interface in found.into_values() {
                let place = if inside {
                    Place::Pod {
                        netnsid: interface.netnsid,
                        ifindex: interface.pod_ifindex,
                        node_side: interface.node_name,
                    }
                } else {
                    Place::Node {
                        name: interface.node_name,
                        ifindex: interface.node_ifindex,
                    }
                };
                wanted.insert(place.key(), place);
            }
        }
        Err(error) => {
            tracing::warn!(%error, "listing the pods' interfaces failed; keeping the attached ones");
            return None;
        }
    }
    for (name, ifindex) in interfaces::present_matching(&config.interfaces) {
        wanted.insert(name.clone(), Place::Node { name, ifindex });
    }
    Some(wanted)
}

async fn next(reloads: &mut Option<mpsc::Receiver<MirrorConfig>>) -> Option<MirrorConfig> {
    match reloads {
        Some(receiver) => receiver.recv().await,
        None => std::future::pending().await,
    }
}

async fn next_link_event(links: &mut Option<LinkEvents>) {
    match links {
        Some(events) => {
            if let Err(error) = events.next().await {
                tracing::warn!(%error, "netlink link events stopped: new veths are seen at the periodic resync");
                *links = None;
            }
        }
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::parse;

    const SERVER: &str = "policies:\n- name: web\n  target: {service: {name: httpbin, port: 8000}}\n  mirrors:\n  - backend: v2:80\n";

    fn options(enabled: bool, mirror_policies: bool) -> KubernetesOptions {
        KubernetesOptions {
            enabled,
            node_name: None,
            mirror_policies,
            server_hook: ServerHook::Node,
            netns_dir: "/run/netns".into(),
        }
    }

    fn object(name: &str, spec: serde_json::Value) -> MirrorPolicyObject {
        MirrorPolicyObject {
            namespace: "shop".into(),
            name: name.into(),
            spec,
        }
    }

    #[test]
    fn the_captured_side_follows_the_policies_and_service_targets_need_the_flag() {
        let server = parse(SERVER, "t").unwrap();
        let client = parse(
            &SERVER.replace(
                "port: 8000}}\n",
                "port: 8000}}\n  capture: client\n  clients: {podSelector: {matchLabels: {app: sleep}}}\n",
            ),
            "t",
        )
        .unwrap();
        let d = |config, opts| direction(config, &opts, Direction::Ingress);
        assert_eq!(d(&server, options(true, false)).unwrap(), Direction::Egress);
        let inside = KubernetesOptions {
            server_hook: ServerHook::Pod,
            ..options(true, false)
        };
        assert_eq!(d(&server, inside).unwrap(), Direction::Ingress);
        assert_eq!(
            d(&client, options(true, false)).unwrap(),
            Direction::Ingress
        );
        assert!(matches!(
            d(&server, options(false, false)),
            Err(KubernetesError::NeedsKubernetes(name)) if name == "web"
        ));
        let mut both = server.clone();
        both.policies
            .extend(client.policies.iter().cloned().map(|mut p| {
                p.name = "callers".into();
                p
            }));
        assert!(matches!(
            d(&both, options(true, false)),
            Err(KubernetesError::MixedCapture { .. })
        ));
        let addresses = parse(
            "interfaces: [lo]\npolicies:\n- name: a\n  target: {address: 10.0.0.1, port: 80}\n  mirrors:\n  - backend: v2:80\n",
            "t",
        )
        .unwrap();
        assert_eq!(
            d(&addresses, options(true, false)).unwrap(),
            Direction::Ingress
        );
        assert_eq!(
            d(&addresses, options(true, true)).unwrap(),
            Direction::Egress
        );
    }

    #[test]
    fn mirror_policies_are_read_in_their_namespace_and_bad_ones_left_out() {
        let config = parse(SERVER, "t").unwrap();
        let objects = [
            object(
                "good",
                serde_json::json!({
                    "target": {"service": {"name": "httpbin", "port": 8000}},
                    "mirrors": [{"backend": "v2:80", "percent": 50}]
                }),
            ),
            object(
                "elsewhere",
                serde_json::json!({
                    "target": {"service": {"name": "httpbin", "namespace": "web", "port": 8000}},
                    "mirrors": [{"backend": "v2:80"}]
                }),
            ),
            // Refused by the parser: both percent and fraction.
            object(
                "bad",
                serde_json::json!({
                    "target": {"service": {"name": "httpbin", "port": 8000}},
                    "mirrors": [{"backend": "v2:80", "percent": 5, "fraction": {"numerator": 1}}]
                }),
            ),
            // The other side.
            object(
                "callers",
                serde_json::json!({
                    "target": {"service": {"name": "httpbin", "port": 8000}},
                    "capture": "client",
                    "clients": {"podSelector": {"matchLabels": {"app": "sleep"}}},
                    "mirrors": [{"backend": "v2:80"}]
                }),
            ),
            object(
                "address",
                serde_json::json!({
                    "target": {"address": "10.0.0.1", "port": 80},
                    "mirrors": [{"backend": "v2:80"}]
                }),
            ),
        ];
        let read = read_mirror_policies(&objects, &config, Direction::Egress, ServerHook::Node);
        let names: Vec<&str> = read.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["shop/good", "shop/elsewhere", "shop/address"]);
        let namespace = |i: usize| read[i].service.as_ref().unwrap().service.namespace.clone();
        assert_eq!(namespace(0), "shop");
        assert_eq!(namespace(1), "web");
        assert_eq!(read[0].policy.mirrors[0].share.as_percent(), 50.0);
        assert!(read[2].target.is_some());
    }

    #[test]
    fn service_policies_cover_what_was_discovered_for_them_only() {
        let config = parse(SERVER, "t").unwrap();
        let mut update = DiscoveryUpdate {
            desired: Default::default(),
            api: ApiStatus::Live,
            rejected_policies: 0,
            mirror_policies: Vec::new(),
        };
        let found = mirror_discovery::Target {
            addr: "10.244.1.5".parse().unwrap(),
            port: 80,
        };
        update
            .desired
            .policy_targets
            .insert("web".into(), [found].into());
        update.desired.policy_targets.insert(
            "other".into(),
            [mirror_discovery::Target { port: 81, ..found }].into(),
        );
        let resolved = resolve(&config, &[], &update);
        let web = &resolved.policies[0];
        assert_eq!(web.discovered.len(), 1);
        assert_eq!(web.discovered[0].to_string(), "10.244.1.5:80");
        let scope = web.scope();
        assert!(scope.contains(found.addr, 80));
        assert!(!scope.contains(found.addr, 81));
        // Nothing discovered: nothing covered (never "every destination").
        update.desired.policy_targets.clear();
        let resolved = resolve(&config, &[], &update);
        assert!(!resolved.policies[0].scope().contains(found.addr, 80));
    }
}
