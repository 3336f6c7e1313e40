//! The API watches: reflectors over Services, EndpointSlices, this node's Pods and (if asked)
//! MirrorPolicies; after every change the desired state is recomputed from their caches and
//! published. When the API goes away the caches, hence the desired state, stay as last seen,
//! and the status says so until the watches resume.

use std::{sync::Arc, time::SystemTime};

use futures::{stream::BoxStream, StreamExt as _};
use k8s_openapi::api::{
    core::v1::{Pod, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    api::{Api, ApiResource, DynamicObject, GroupVersionKind},
    runtime::{
        reflector::{self, Store},
        watcher, WatchStreamExt as _,
    },
    Client, ResourceExt as _,
};
use tokio::sync::watch as channel;

use crate::{
    desired::{desired_state, Cluster, DesiredState, SERVICE_NAME_LABEL},
    policy::ServicePolicy,
};

/// What discovery watches, for one node.
#[derive(Debug, Clone)]
pub struct DiscoveryConfig {
    /// This node's name (`$NODE_NAME` from the downward API).
    pub node: String,
    /// Policies from the config file whose target is a Service.
    pub policies: Vec<ServicePolicy>,
    /// Also read `MirrorPolicy` objects (needs the CRD installed: deploy/base/crd.yaml).
    pub mirror_policies: bool,
}

/// Whether the published state is current.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiStatus {
    /// The first lists are not all in yet; nothing is published but an empty state.
    Syncing,
    /// Every watch is running.
    Live,
    /// A watch failed (the API is unreachable, or refuses): the state is the last known one.
    Unreachable { since: SystemTime, error: String },
}

/// One published state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveryUpdate {
    pub desired: DesiredState,
    pub api: ApiStatus,
    /// MirrorPolicy objects that could not be read (each logged when seen), not in `desired`.
    pub rejected_policies: usize,
    /// Every MirrorPolicy object as the API holds it, in namespace/name order: the agent
    /// reads their mirrors, matches and sampling as it reads a config file's policies.
    pub mirror_policies: Vec<MirrorPolicyObject>,
}

/// A `MirrorPolicy` object: its name and its spec, unread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorPolicyObject {
    pub namespace: String,
    pub name: String,
    pub spec: serde_json::Value,
}

/// The running watches; they stop when this is dropped.
#[derive(Debug)]
pub struct Discovery {
    updates: channel::Receiver<DiscoveryUpdate>,
    task: tokio::task::JoinHandle<()>,
}

impl Discovery {
    /// Starts the watches on the current tokio runtime.
    pub fn start(client: Client, config: DiscoveryConfig) -> Discovery {
        let (tx, updates) = channel::channel(DiscoveryUpdate {
            desired: DesiredState::default(),
            api: ApiStatus::Syncing,
            rejected_policies: 0,
            mirror_policies: Vec::new(),
        });
        let task = tokio::spawn(run(client, config, tx));
        Discovery { updates, task }
    }

    /// The latest state and every change after it.
    pub fn updates(&self) -> channel::Receiver<DiscoveryUpdate> {
        self.updates.clone()
    }
}

impl Drop for Discovery {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// === the watch loop ===

/// Which watch an event came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Services,
    Slices,
    Pods,
    Policies,
}

/// What a watch reported: a change (`listed`: its cache is complete and current), or a failure.
enum Signal {
    Changed { kind: Kind, listed: bool },
    Failed { kind: Kind, error: String },
}

struct Caches {
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    pods: Store<Pod>,
    policies: Option<Store<DynamicObject>>,
}

fn mirror_policy_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("mirror.dev", "v1alpha1", "MirrorPolicy"),
        "mirrorpolicies",
    )
}

fn signals<K>(
    kind: Kind,
    writer: reflector::store::Writer<K>,
    api: Api<K>,
    config: watcher::Config,
) -> BoxStream<'static, Signal>
where
    K: kube::Resource
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Send + Sync,
{
    reflector::reflector(writer, watcher(api, config))
        .default_backoff()
        .map(move |event| match event {
            Ok(watcher::Event::InitDone | watcher::Event::Apply(_) | watcher::Event::Delete(_)) => {
                Signal::Changed { kind, listed: true }
            }
            Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => Signal::Changed {
                kind,
                listed: false,
            },
            Err(error) => Signal::Failed {
                kind,
                error: error.to_string(),
            },
        })
        .boxed()
}

async fn run(client: Client, config: DiscoveryConfig, tx: channel::Sender<DiscoveryUpdate>) {
    let (services, services_writer) = reflector::store();
    let (slices, slices_writer) = reflector::store();
    let (pods, pods_writer) = reflector::store();
    let mut streams = vec![
        signals(
            Kind::Services,
            services_writer,
            Api::<Service>::all(client.clone()),
            watcher::Config::default(),
        ),
        signals(
            Kind::Slices,
            slices_writer,
            Api::<EndpointSlice>::all(client.clone()),
            watcher::Config::default().labels(SERVICE_NAME_LABEL),
        ),
        signals(
            Kind::Pods,
            pods_writer,
            Api::<Pod>::all(client.clone()),
            watcher::Config::default().fields(&format!("spec.nodeName={}", config.node)),
        ),
    ];
    let mut policies = None;
    if config.mirror_policies {
        let resource = mirror_policy_resource();
        let writer = reflector::store::Writer::new(resource.clone());
        policies = Some(writer.as_reader());
        streams.push(signals(
            Kind::Policies,
            writer,
            Api::<DynamicObject>::all_with(client, &resource),
            watcher::Config::default(),
        ));
    }
    let caches = Caches {
        services,
        slices,
        pods,
        policies,
    };
    let mut pending: Vec<Kind> = vec![Kind::Services, Kind::Slices, Kind::Pods];
    if config.mirror_policies {
        pending.push(Kind::Policies);
    }
    let mut api = ApiStatus::Syncing;
    let mut signals = futures::stream::select_all(streams);
    while let Some(signal) = signals.next().await {
        match signal {
            // A (re)list has started or is under way: the caches change only when it is done,
            // and nothing says the API answered yet (the watcher reports a restart before it
            // asks), so the status stays as it is.
            Signal::Changed { listed: false, .. } => continue,
            Signal::Changed { kind, .. } => {
                pending.retain(|k| *k != kind);
                if !pending.is_empty() {
                    continue;
                }
                if let ApiStatus::Unreachable { .. } = api {
                    tracing::info!("Kubernetes API reachable again; following its changes");
                }
                api = ApiStatus::Live;
            }
            Signal::Failed { kind, error } => {
                if !matches!(api, ApiStatus::Unreachable { .. }) {
                    let pods = tx.borrow().desired.pods.len();
                    tracing::warn!(
                        watch = ?kind,
                        %error,
                        "Kubernetes API unreachable; keeping the last known state ({pods} pods) until it is back"
                    );
                    api = ApiStatus::Unreachable {
                        since: SystemTime::now(),
                        error,
                    };
                } else if let ApiStatus::Unreachable { error: last, .. } = &mut api {
                    *last = error;
                }
                // The caches keep what they had: the same state, marked stale (receivers wake
                // only when the status says something new, not at every retry).
                tx.send_if_modified(|current| {
                    let changed = current.api != api;
                    if changed {
                        current.api = api.clone();
                    }
                    changed
                });
                continue;
            }
        }
        let update = compute(&config, &caches, api.clone());
        tx.send_if_modified(|current| {
            let changed = *current != update;
            if changed {
                *current = update;
            }
            changed
        });
    }
}

fn compute(config: &DiscoveryConfig, caches: &Caches, api: ApiStatus) -> DiscoveryUpdate {
    let mut policies = config.policies.clone();
    let mut rejected_policies = 0;
    let mut mirror_policies = Vec::new();
    for object in caches.policies.iter().flat_map(Store::state) {
        let namespace = object.namespace().unwrap_or_default();
        let spec = object.data.get("spec").cloned().unwrap_or_default();
        mirror_policies.push(MirrorPolicyObject {
            namespace: namespace.clone(),
            name: object.name_any(),
            spec: spec.clone(),
        });
        match ServicePolicy::from_mirror_policy(&object.name_any(), &namespace, &spec) {
            Ok(Some(policy)) => policies.push(policy),
            Ok(None) => {}
            Err(error) => {
                rejected_policies += 1;
                tracing::warn!(%error, "MirrorPolicy ignored");
            }
        }
    }
    let services: Vec<Arc<Service>> = caches.services.state();
    let slices: Vec<Arc<EndpointSlice>> = caches.slices.state();
    let pods: Vec<Arc<Pod>> = caches.pods.state();
    let services: Vec<&Service> = services.iter().map(Arc::as_ref).collect();
    let slices: Vec<&EndpointSlice> = slices.iter().map(Arc::as_ref).collect();
    let pods: Vec<&Pod> = pods.iter().map(Arc::as_ref).collect();
    let desired = desired_state(
        &policies,
        &Cluster {
            node: &config.node,
            services: &services,
            slices: &slices,
            pods: &pods,
        },
    );
    mirror_policies.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    DiscoveryUpdate {
        desired,
        api,
        rejected_policies,
        mirror_policies,
    }
}
