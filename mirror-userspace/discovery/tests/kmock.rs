//! Discovery against a Kubernetes API: kmock's stateful emulator (PyPI, in a virtualenv made
//! on first use), on loopback. Services, EndpointSlices and Pods are created, changed and
//! deleted through the API; the published desired state follows each change, and when the
//! API goes away it stays as last known and says so.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use k8s_openapi::api::{
    core::v1::{Pod, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    api::{Api, DeleteParams, Patch, PatchParams, PostParams},
    Client, Config,
};
use mirror_discovery::{
    ApiStatus, Discovery, DiscoveryConfig, DiscoveryUpdate, PodKey, ServicePolicy, ServicePort,
    ServiceRef, Target,
};
use serde_json::json;
use tokio::sync::watch;

const KMOCK_PIN: &str = "kmock==0.8";

/// The emulator's process; killed on drop.
struct Kmock {
    child: Child,
    port: u16,
}

impl Kmock {
    /// Starts the emulator, or returns `None` (a skip) where Python's venv is unavailable and
    /// CI is not set.
    fn start() -> Option<Kmock> {
        let python = venv()?;
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/kmock_server.py");
        let mut child = Command::new(python)
            .arg(script)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start kmock");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("kmock stdout"))
            .read_line(&mut line)
            .expect("kmock prints its port");
        let port = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("kmock port {line:?}"));
        Some(Kmock { child, port })
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Kmock {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The virtualenv's python with kmock installed (made once, under target/). Tests of this
/// file run in parallel: one makes the virtualenv while the others wait.
fn venv() -> Option<PathBuf> {
    static MAKING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = MAKING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/kmock-venv");
    let python = dir.join("bin/python");
    let ready = |python: &Path| {
        Command::new(python)
            .args(["-c", "import kmock"])
            .output()
            .is_ok_and(|out| out.status.success())
    };
    if ready(&python) {
        return Some(python);
    }
    let made = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&dir)
        .status()
        .is_ok_and(|s| s.success())
        && Command::new(dir.join("bin/pip"))
            .args(["install", "--quiet", KMOCK_PIN])
            .status()
            .is_ok_and(|s| s.success());
    if made && ready(&python) {
        return Some(python);
    }
    if std::env::var_os("CI").is_some() {
        panic!("this test needs python3-venv and {KMOCK_PIN} from PyPI, and CI is set");
    }
    let _ = writeln!(
        std::io::stderr(),
        "skipped: cannot make a venv with {KMOCK_PIN}"
    );
    None
}

fn client(port: u16) -> Client {
    let url = format!("http://127.0.0.1:{port}").parse().expect("url");
    Client::try_from(Config::new(url)).expect("client")
}

fn httpbin_policy() -> ServicePolicy {
    ServicePolicy {
        name: "default/httpbin".into(),
        service: ServiceRef {
            namespace: "default".into(),
            name: "httpbin".into(),
            port: ServicePort::Number(8000),
        },
        capture: mirror_discovery::Capture::Server,
    }
}

fn service() -> Service {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "httpbin", "namespace": "default", "resourceVersion": "1"},
        "spec": {"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                 "ports": [{"name": "http", "port": 8000, "protocol": "TCP", "targetPort": "http"}],
                 "selector": {"app": "httpbin"}}
    }))
    .expect("service")
}

fn endpoint(pod: &str, ip: &str, node: &str) -> serde_json::Value {
    json!({"addresses": [ip], "conditions": {"ready": true, "serving": true, "terminating": false},
           "nodeName": node, "targetRef": {"kind": "Pod", "name": pod, "namespace": "default"}})
}

fn slice(endpoints: Vec<serde_json::Value>) -> EndpointSlice {
    serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "httpbin-abcde", "namespace": "default", "resourceVersion": "1",
                     "labels": {"kubernetes.io/service-name": "httpbin"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
        "endpoints": endpoints
    }))
    .expect("slice")
}

fn pod(name: &str, ip: &str, node: &str) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "resourceVersion": "1",
                     "labels": {"app": "httpbin", "version": "v1"}},
        "spec": {"nodeName": node, "containers": [{"name": "httpbin", "image": "httpbin"}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}
    }))
    .expect("pod")
}

/// The pods in the desired state, with their targets as `ip:port`.
fn hooked(update: &DiscoveryUpdate) -> Vec<(String, Vec<String>)> {
    update
        .desired
        .pods
        .iter()
        .map(|(PodKey { name, .. }, capture)| {
            let targets = capture
                .targets
                .iter()
                .map(|Target { addr, port }| format!("{addr}:{port}"))
                .collect();
            (name.clone(), targets)
        })
        .collect()
}

async fn wait_for(
    updates: &mut watch::Receiver<DiscoveryUpdate>,
    what: &str,
    done: impl FnMut(&DiscoveryUpdate) -> bool,
) -> DiscoveryUpdate {
    let result = tokio::time::timeout(Duration::from_secs(20), updates.wait_for(done))
        .await
        .map(|waited| waited.map(|update| update.clone()));
    match result {
        Ok(Ok(update)) => update,
        Ok(Err(_)) => panic!("discovery stopped while waiting for {what}"),
        Err(_) => panic!("no {what} within 20 s; last: {:?}", *updates.borrow()),
    }
}

fn owned(pairs: &[(&str, &[&str])]) -> Vec<(String, Vec<String>)> {
    pairs
        .iter()
        .map(|(pod, targets)| {
            (
                pod.to_string(),
                targets.iter().map(|t| t.to_string()).collect(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn desired_state_follows_the_api_and_outlives_it() {
    let Some(mut kmock) = Kmock::start() else {
        return;
    };
    let client = client(kmock.port);
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let create = PostParams::default();

    services
        .create(&create, &service())
        .await
        .expect("create service");
    pods.create(&create, &pod("httpbin-v1-a", "10.244.1.5", "node-1"))
        .await
        .expect("create pod");
    pods.create(&create, &pod("httpbin-v1-b", "10.244.2.7", "node-2"))
        .await
        .expect("create pod");
    slices
        .create(
            &create,
            &slice(vec![
                endpoint("httpbin-v1-a", "10.244.1.5", "node-1"),
                endpoint("httpbin-v1-b", "10.244.2.7", "node-2"),
            ]),
        )
        .await
        .expect("create slice");

    let discovery = Discovery::start(
        client.clone(),
        DiscoveryConfig {
            node: "node-1".into(),
            policies: vec![httpbin_policy()],
            mirror_policies: false,
        },
    );
    let mut updates = discovery.updates();
    let first = wait_for(&mut updates, "the first state", |u| {
        u.api == ApiStatus::Live
    })
    .await;
    // The pod on node-2 is the other node's business.
    assert_eq!(
        hooked(&first),
        owned(&[("httpbin-v1-a", &["10.244.1.5:80"])])
    );

    // Scale up: a second pod on this node.
    pods.create(&create, &pod("httpbin-v1-c", "10.244.1.6", "node-1"))
        .await
        .expect("create pod");
    let endpoints = json!({"endpoints": [
        endpoint("httpbin-v1-a", "10.244.1.5", "node-1"),
        endpoint("httpbin-v1-b", "10.244.2.7", "node-2"),
        endpoint("httpbin-v1-c", "10.244.1.6", "node-1"),
    ]});
    let patch = PatchParams::default();
    slices
        .patch("httpbin-abcde", &patch, &Patch::Merge(&endpoints))
        .await
        .expect("scale up");
    let want = owned(&[
        ("httpbin-v1-a", &["10.244.1.5:80"]),
        ("httpbin-v1-c", &["10.244.1.6:80"]),
    ]);
    wait_for(&mut updates, "the new pod", |u| hooked(u) == want).await;

    // Scale down: a leaves the endpoints.
    let endpoints = json!({"endpoints": [
        endpoint("httpbin-v1-b", "10.244.2.7", "node-2"),
        endpoint("httpbin-v1-c", "10.244.1.6", "node-1"),
    ]});
    slices
        .patch("httpbin-abcde", &patch, &Patch::Merge(&endpoints))
        .await
        .expect("scale down");
    let want = owned(&[("httpbin-v1-c", &["10.244.1.6:80"])]);
    wait_for(&mut updates, "the removed pod gone", |u| hooked(u) == want).await;

    // The Service goes: nothing to capture, though its slice is still there.
    services
        .delete("httpbin", &DeleteParams::default())
        .await
        .expect("delete service");
    wait_for(&mut updates, "an empty state", |u| {
        u.desired.pods.is_empty()
    })
    .await;

    // And comes back.
    services
        .create(&create, &service())
        .await
        .expect("recreate service");
    let last = wait_for(&mut updates, "the Service back", |u| hooked(u) == want).await;

    // The API goes away: the last known state stays, marked as such.
    kmock.stop();
    let stale = wait_for(&mut updates, "the API reported unreachable", |u| {
        matches!(u.api, ApiStatus::Unreachable { .. })
    })
    .await;
    assert_eq!(
        stale.desired, last.desired,
        "the state changed without the API"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let later = updates.borrow().clone();
    assert_eq!(later.desired, last.desired);
    assert!(matches!(later.api, ApiStatus::Unreachable { .. }));
    drop(discovery);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_policies_in_the_cluster_are_followed_like_config_policies() {
    let Some(kmock) = Kmock::start() else {
        return;
    };
    let client = client(kmock.port);
    let create = PostParams::default();
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let resource = kube::api::ApiResource::from_gvk_with_plural(
        &kube::api::GroupVersionKind::gvk("mirror.dev", "v1alpha1", "MirrorPolicy"),
        "mirrorpolicies",
    );
    let policies: Api<kube::api::DynamicObject> =
        Api::namespaced_with(client.clone(), "default", &resource);

    services.create(&create, &service()).await.expect("service");
    slices
        .create(
            &create,
            &slice(vec![endpoint("httpbin-v1-b", "10.244.2.7", "node-2")]),
        )
        .await
        .expect("slice");
    let mut sleep = pod("sleep", "10.244.1.20", "node-1");
    sleep.metadata.labels = Some([("app".to_string(), "sleep".to_string())].into());
    pods.create(&create, &sleep).await.expect("sleep pod");

    let discovery = Discovery::start(
        client.clone(),
        DiscoveryConfig {
            node: "node-1".into(),
            policies: Vec::new(),
            mirror_policies: true,
        },
    );
    let mut updates = discovery.updates();
    let first = wait_for(&mut updates, "the first state", |u| {
        u.api == ApiStatus::Live
    })
    .await;
    assert!(first.desired.pods.is_empty(), "{first:?}");

    // A client-side policy: the sleep pod on this node is hooked, for the Service's cluster
    // IP and the endpoint on the other node.
    let policy: kube::api::DynamicObject = serde_json::from_value(json!({
        "apiVersion": "mirror.dev/v1alpha1", "kind": "MirrorPolicy",
        "metadata": {"name": "httpbin", "namespace": "default", "resourceVersion": "1"},
        "spec": {
            "target": {"service": {"name": "httpbin", "port": "http"}},
            "capture": "client",
            "clients": {"podSelector": {"matchLabels": {"app": "sleep"}}},
            "mirrors": [{"backend": "httpbin-v2.default.svc.cluster.local:8000"}]
        }
    }))
    .expect("policy");
    policies
        .create(&create, &policy)
        .await
        .expect("create policy");
    let want = owned(&[("sleep", &["10.96.0.10:8000", "10.244.2.7:80"])]);
    let hooked_sleep = wait_for(&mut updates, "the caller hooked", |u| hooked(u) == want).await;
    assert_eq!(
        hooked_sleep
            .desired
            .pods
            .values()
            .next()
            .map(|p| &p.policies),
        Some(&["default/httpbin".to_string()].into())
    );

    // A policy the agent cannot use is counted and changes nothing else.
    let broken: kube::api::DynamicObject = serde_json::from_value(json!({
        "apiVersion": "mirror.dev/v1alpha1", "kind": "MirrorPolicy",
        "metadata": {"name": "broken", "namespace": "default", "resourceVersion": "1"},
        "spec": {"target": {"service": {"name": "httpbin", "port": 8000}}, "capture": "client"}
    }))
    .expect("policy");
    policies
        .create(&create, &broken)
        .await
        .expect("create policy");
    let counted = wait_for(&mut updates, "the broken policy counted", |u| {
        u.rejected_policies == 1
    })
    .await;
    assert_eq!(hooked(&counted), want);

    // Deleting the policy unhooks the caller.
    policies
        .delete("httpbin", &DeleteParams::default())
        .await
        .expect("delete policy");
    wait_for(&mut updates, "the caller unhooked", |u| {
        u.desired.pods.is_empty()
    })
    .await;
    drop(discovery);
}
