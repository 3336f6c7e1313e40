//! End to end: `mirror run --kubernetes` as the node agent, against kmock (a stateful
//! Kubernetes API emulator with list and watch) in the test-bed's node namespace. "Pods" are
//! namespaces with veths, and the Pod objects carry their addresses and `nodeName`; the
//! Service and its EndpointSlice say which are httpbin's. Requests from the client pod go
//! straight to a backend pod's address (as under Cilium's or Calico's connect-time load
//! balancing) and the agent captures them at the backend (`capture: server`), copying them to
//! v2. Every test ends with the relay's conservation law on the agent's summary.

use std::time::Duration;

use mirror_tests::{
    agent::{mirror_binary, relay_conserved, Agent},
    kmock::Kmock,
    require_root, Host, Sink, Testbed,
};
use serde_json::{json, Value};

const NODE: &str = "node-a";
const PODS: &str = "/api/v1/namespaces/default/pods";
const SERVICES: &str = "/api/v1/namespaces/default/services";
const SLICES: &str = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices";
/// The file's policy: the httpbin Service, captured at its backends.
const SERVER_SIDE: &str =
    "  target: {service: {name: httpbin, namespace: default, port: 8000}}\n  \
                           capture: server\n";
/// How long the agent gets to follow a change of the API before traffic is sent.
const FOLLOW: Duration = Duration::from_secs(1);

/// The node, its pods, v2 and the API.
struct Cluster {
    testbed: Testbed,
    client: Host,
    /// httpbin v1 pods on this node (a, b) and on another node (c).
    v1: Vec<Host>,
    _v1_sinks: Vec<Sink>,
    v2: Sink,
    kmock: Kmock,
}

impl Cluster {
    fn new() -> Option<Cluster> {
        if !require_root() {
            return None;
        }
        let mut testbed = Testbed::new().expect("testbed");
        let client = testbed.add_host("client").expect("client");
        let v1: Vec<Host> = ["v1a", "v1b", "v1c"]
            .iter()
            .map(|name| testbed.add_host(name).expect("v1 pod"))
            .collect();
        let v2_host = testbed.add_host("v2").expect("v2");
        let v1_sinks = v1.iter().map(|h| Sink::start(h, 80).expect("v1")).collect();
        let v2 = Sink::start(&v2_host, 80).expect("v2");
        let kmock = Kmock::start(testbed.node()).expect("kmock")?;
        Some(Cluster {
            testbed,
            client,
            v1,
            _v1_sinks: v1_sinks,
            v2,
            kmock,
        })
    }

    /// The agent, its config file's policy targeting the httpbin Service.
    fn agent(&self) -> Agent {
        self.agent_with(SERVER_SIDE, &[])
    }

    /// The agent, its config file's one policy `target` (with its capture lines), mirroring to
    /// v2.
    fn agent_with(&self, target: &str, extra: &[&str]) -> Agent {
        self.agent_as(&[], "", target, extra)
    }

    /// The same, started through `wrapper` (e.g. `setpriv` with fewer capabilities), the
    /// file starting with `interfaces` (an `interfaces:` line, or nothing).
    fn agent_as(&self, wrapper: &[&str], interfaces: &str, target: &str, extra: &[&str]) -> Agent {
        let config = self.testbed.log_dir().join("mirror.yaml");
        std::fs::write(
            &config,
            format!(
                "{interfaces}policies:\n- name: file\n{target}  mirrors:\n  - backend: {}:80\n",
                self.v2_addr()
            ),
        )
        .expect("config");
        let mut argv: Vec<String> = wrapper.iter().map(|s| s.to_string()).collect();
        argv.extend([
            "env".into(),
            format!("KUBECONFIG={}", self.kmock.kubeconfig().display()),
            mirror_binary().expect("mirror").display().to_string(),
            "run".into(),
            "--config".into(),
            config.display().to_string(),
            "--kubernetes".into(),
            "--node-name".into(),
            NODE.into(),
            "--grace-secs".into(),
            "2".into(),
            "--no-admin".into(),
            "--log-interval-secs".into(),
            "1".into(),
        ]);
        argv.extend(extra.iter().map(|s| s.to_string()));
        let process = self
            .testbed
            .node()
            .spawn("mirror-run", &argv)
            .expect("spawn");
        Agent::adopt(process, "mirroring to").expect("agent")
    }

    fn v2_addr(&self) -> String {
        self.testbed.hosts()[4].ipv4().to_string()
    }

    fn pod(&self, i: usize, node: &str) {
        self.pod_of(
            &self.v1[i],
            json!({"app": "httpbin", "version": "v1"}),
            node,
        );
    }

    fn pod_of(&self, host: &Host, labels: Value, node: &str) {
        self.kmock
            .create(
                PODS,
                &json!({
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": host.name(), "namespace": "default", "resourceVersion": "1",
                                 "labels": labels},
                    "spec": {"nodeName": node, "containers": [{"name": "httpbin", "image": "httpbin"}]},
                    "status": {"phase": "Running", "podIP": host.ipv4().to_string(),
                               "podIPs": [{"ip": host.ipv4().to_string()}]}
                }),
            )
            .expect("create pod");
    }

    fn endpoint(&self, i: usize, node: &str) -> Value {
        let host = &self.v1[i];
        json!({
            "addresses": [host.ipv4().to_string()],
            "conditions": {"ready": true, "serving": true},
            "nodeName": node,
            "targetRef": {"kind": "Pod", "namespace": "default", "name": host.name()}
        })
    }

    fn service(&self) {
        self.kmock
            .create(
                SERVICES,
                &json!({
                    "apiVersion": "v1", "kind": "Service",
                    "metadata": {"name": "httpbin", "namespace": "default", "resourceVersion": "1"},
                    "spec": {"clusterIP": "198.19.0.10", "clusterIPs": ["198.19.0.10"],
                             "ports": [{"name": "http", "port": 8000, "targetPort": 80, "protocol": "TCP"}]}
                }),
            )
            .expect("create service");
    }

    fn slice(&self, endpoints: Vec<Value>) {
        self.kmock
            .create(
                SLICES,
                &json!({
                    "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                    "metadata": {"name": "httpbin-abcde", "namespace": "default", "resourceVersion": "1",
                                 "labels": {"kubernetes.io/service-name": "httpbin"}},
                    "addressType": "IPv4",
                    "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
                    "endpoints": endpoints
                }),
            )
            .expect("create slice");
    }

    fn set_endpoints(&self, endpoints: Vec<Value>) {
        self.kmock
            .patch(
                &format!("{SLICES}/httpbin-abcde"),
                &json!({ "endpoints": endpoints }),
            )
            .expect("patch slice");
    }

    /// `count` requests from the client to v1 pod `i`, each on its own connection, paths
    /// `/<tag>/<n>`; every one must be answered by v1.
    fn requests(&self, i: usize, tag: &str, count: usize) {
        for n in 0..count {
            let url = format!("http://{}:80/{tag}/{n}", self.v1[i].ipv4());
            self.client
                .ns()
                .exec_ok(&["curl", "-sS", "--fail", "--max-time", "10", &url])
                .expect("curl");
        }
    }

    /// The paths v2 received with `/<tag>/`.
    fn mirrored(&self, tag: &str) -> usize {
        let prefix = format!("/{tag}/");
        self.v2
            .records()
            .expect("v2 records")
            .iter()
            .filter(|r| r.path.starts_with(&prefix))
            .count()
    }

    fn wait_mirrored(&self, tag: &str, count: usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.mirrored(tag) < count {
            assert!(
                std::time::Instant::now() < deadline,
                "v2 got {} of {count} /{tag}/ requests",
                self.mirrored(tag)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What of ours is attached to v1 pod `i`'s node-side veth (TCX).
    fn attached(&self, i: usize) -> String {
        self.attached_to(&self.v1[i])
    }

    fn attached_to(&self, host: &Host) -> String {
        self.testbed
            .node()
            .exec_ok(&[
                mirror_binary().expect("mirror").display().to_string(),
                "attached".into(),
                "--iface".into(),
                host.node_ifname().into(),
            ])
            .expect("mirror attached")
    }
}

/// Stops the agent; checks conservation and that v2 answered exactly `answered`.
fn stop_and_check(agent: Agent, answered: u64) -> String {
    let stderr = agent.stop(libc::SIGTERM).expect("stop");
    // The closing summary, one line (the periodic lines before it have fewer counters).
    let summary = stderr
        .lines()
        .rfind(|line| line.contains("relay:"))
        .unwrap_or_else(|| panic!("no summary: {stderr}"))
        .to_owned();
    // Over every mirror's relay: each request ended in exactly one outcome.
    let total = |name: &str| -> u64 {
        summary
            .split_whitespace()
            .filter_map(|field| field.split_once('='))
            .filter(|(key, _)| *key == name)
            .map(|(_, value)| value.parse::<u64>().expect("a count"))
            .sum()
    };
    let requests = total("requests");
    assert_eq!(
        requests,
        total("answered") + total("unanswered") + total("dropped"),
        "{summary}"
    );
    assert_eq!(total("pending"), 0, "{summary}");
    assert_eq!(total("answered"), answered, "{summary}");
    if summary.matches(" requests=").count() == 1 {
        assert_eq!(relay_conserved(&summary).expect("conservation"), answered);
    }
    summary
}

#[test]
fn pods_are_attached_as_they_come_and_detached_as_they_go_and_other_nodes_are_ignored() {
    let Some(cluster) = Cluster::new() else {
        return;
    };
    cluster.service();
    let agent = cluster.agent();
    // v1a on this node, v1c on another: only v1a's veth is hooked.
    cluster.pod(0, NODE);
    cluster.pod(2, "node-b");
    cluster.slice(vec![
        cluster.endpoint(0, NODE),
        cluster.endpoint(2, "node-b"),
    ]);
    std::thread::sleep(FOLLOW);
    cluster.requests(0, "a", 5);
    cluster.requests(2, "c", 5);
    cluster.wait_mirrored("a", 5);
    assert!(
        cluster.attached(0).contains("mirror_egress"),
        "{}",
        cluster.attached(0)
    );
    assert!(
        !cluster.attached(2).contains("mirror_"),
        "{}",
        cluster.attached(2)
    );

    // Scale up: v1b appears and is mirrored.
    cluster.pod(1, NODE);
    cluster.set_endpoints(vec![
        cluster.endpoint(0, NODE),
        cluster.endpoint(1, NODE),
        cluster.endpoint(2, "node-b"),
    ]);
    std::thread::sleep(FOLLOW);
    cluster.requests(1, "b", 5);
    cluster.wait_mirrored("b", 5);

    // Scale down: v1a leaves the Service and its pod goes; nothing of ours is left on it.
    cluster.set_endpoints(vec![
        cluster.endpoint(1, NODE),
        cluster.endpoint(2, "node-b"),
    ]);
    cluster
        .kmock
        .delete(&format!("{PODS}/{}", cluster.v1[0].name()))
        .expect("delete pod");
    std::thread::sleep(FOLLOW);
    assert!(
        !cluster.attached(0).contains("mirror_"),
        "{}",
        cluster.attached(0)
    );
    cluster.requests(0, "a2", 5);
    cluster.requests(1, "b2", 5);
    cluster.wait_mirrored("b2", 5);

    stop_and_check(agent, 15);
    assert_eq!(cluster.mirrored("c"), 0, "another node's pod was mirrored");
    assert_eq!(cluster.mirrored("a2"), 0, "a removed pod was mirrored");
}

#[test]
fn a_deleted_service_stops_its_mirroring_and_a_new_one_starts_it() {
    let Some(cluster) = Cluster::new() else {
        return;
    };
    cluster.pod(1, NODE);
    cluster.slice(vec![cluster.endpoint(1, NODE)]);
    cluster.service();
    let agent = cluster.agent();
    std::thread::sleep(FOLLOW);
    cluster.requests(1, "b", 5);
    cluster.wait_mirrored("b", 5);

    cluster
        .kmock
        .delete(&format!("{SERVICES}/httpbin"))
        .expect("delete service");
    std::thread::sleep(FOLLOW);
    assert!(
        !cluster.attached(1).contains("mirror_"),
        "{}",
        cluster.attached(1)
    );
    cluster.requests(1, "gone", 5);

    cluster.service();
    std::thread::sleep(FOLLOW);
    cluster.requests(1, "back", 5);
    cluster.wait_mirrored("back", 5);

    stop_and_check(agent, 10);
    assert_eq!(
        cluster.mirrored("gone"),
        0,
        "a deleted Service was mirrored"
    );
}

#[test]
fn the_api_going_away_keeps_the_last_known_state_and_says_so() {
    let Some(mut cluster) = Cluster::new() else {
        return;
    };
    cluster.pod(1, NODE);
    cluster.slice(vec![cluster.endpoint(1, NODE)]);
    cluster.service();
    let mut agent = cluster.agent();
    std::thread::sleep(FOLLOW);
    cluster.requests(1, "b", 5);
    cluster.wait_mirrored("b", 5);

    assert!(
        !agent.stderr().contains("unreachable"),
        "the API was reported gone while it ran:\n{}",
        agent.stderr()
    );
    cluster.kmock.stop();
    agent
        .wait_for_stderr("Kubernetes API unreachable", Duration::from_secs(30))
        .expect("the agent says the API is gone");
    assert!(
        cluster.attached(1).contains("mirror_egress"),
        "{}",
        cluster.attached(1)
    );
    cluster.requests(1, "stale", 5);
    cluster.wait_mirrored("stale", 5);

    let summary = stop_and_check(agent, 10);
    assert!(
        summary.contains("api_live=0"),
        "the gauge says so: {summary}"
    );
}

#[test]
fn mirror_policy_objects_are_read_as_config_file_policies() {
    let Some(cluster) = Cluster::new() else {
        return;
    };
    cluster.pod(1, NODE);
    cluster.slice(vec![cluster.endpoint(1, NODE)]);
    cluster.service();
    // The file's policy names a Service that does not exist: only the cluster's policy applies.
    let agent = cluster.agent_with(
        &SERVER_SIDE.replace("name: httpbin", "name: nothing"),
        &["--mirror-policies"],
    );
    cluster
        .kmock
        .create(
            "/apis/mirror.dev/v1alpha1/namespaces/default/mirrorpolicies",
            &json!({
                "apiVersion": "mirror.dev/v1alpha1", "kind": "MirrorPolicy",
                "metadata": {"name": "httpbin", "namespace": "default", "resourceVersion": "1"},
                "spec": {
                    "target": {"service": {"name": "httpbin", "port": 8000}},
                    "capture": "server",
                    "matches": [{"path": {"type": "PathPrefix", "value": "/crd/"}}],
                    "mirrors": [{"backend": format!("{}:80", cluster.v2_addr()),
                                 "requestHeaderModifier": {"set": [{"name": "x-policy", "value": "cluster"}]}}]
                }
            }),
        )
        .expect("create MirrorPolicy");
    std::thread::sleep(FOLLOW);
    cluster.requests(1, "crd", 5);
    cluster.requests(1, "other", 5);
    cluster.wait_mirrored("crd", 5);
    let records = cluster.v2.records().expect("v2");
    assert!(
        records
            .iter()
            .filter(|r| r.path.starts_with("/crd/"))
            .all(|r| r.head.contains("x-policy: cluster\r\n")),
        "{records:?}"
    );
    stop_and_check(agent, 5);
    assert_eq!(
        cluster.mirrored("other"),
        0,
        "the policy's match was not applied"
    );
}

#[test]
fn client_side_capture_hooks_the_selected_callers_and_matches_the_cluster_ip() {
    let Some(mut cluster) = Cluster::new() else {
        return;
    };
    // kube-proxy's part: the ClusterIP is DNATed to v1b on the node.
    let v1b = cluster.v1[1].clone();
    let vip = cluster
        .testbed
        .add_service("198.19.0.10".parse().expect("vip"), 8000, &v1b, 80)
        .expect("service VIP");
    cluster.pod(1, NODE);
    // v1c is a caller too, but not selected.
    cluster.pod_of(&cluster.client.clone(), json!({"app": "sleep"}), NODE);
    cluster.pod_of(&cluster.v1[2].clone(), json!({"app": "curl"}), NODE);
    cluster.slice(vec![cluster.endpoint(1, NODE)]);
    cluster.service();
    let agent = cluster.agent_with(
        "  target: {service: {name: httpbin, port: http}}\n  capture: client\n  \
         clients: {podSelector: {matchLabels: {app: sleep}}}\n",
        &[],
    );
    std::thread::sleep(FOLLOW);
    for n in 0..5 {
        let url = format!("http://{vip}/viaip/{n}");
        cluster
            .client
            .ns()
            .exec_ok(&["curl", "-sS", "--fail", "--max-time", "10", &url])
            .expect("curl the ClusterIP");
        let url = format!("http://{vip}/unselected/{n}");
        cluster.v1[2]
            .ns()
            .exec_ok(&["curl", "-sS", "--fail", "--max-time", "10", &url])
            .expect("curl from an unselected pod");
    }
    cluster.wait_mirrored("viaip", 5);
    assert!(cluster
        .attached_to(&cluster.client)
        .contains("mirror_ingress"));
    assert!(
        !cluster.attached(1).contains("mirror_"),
        "the server side is not hooked"
    );
    stop_and_check(agent, 5);
    assert_eq!(
        cluster.mirrored("unselected"),
        0,
        "an unselected caller was mirrored"
    );
}

#[test]
fn without_the_api_interface_patterns_are_attached_as_they_appear() {
    let Some(mut cluster) = Cluster::new() else {
        return;
    };
    // No Service target and no --mirror-policies: no API is asked (no kubeconfig works too).
    let config = cluster.testbed.log_dir().join("bare.yaml");
    std::fs::write(
        &config,
        format!(
            "interfaces: [\"n*-late\"]\npolicies:\n- name: bare\n  \
             target: {{address: {}, port: 80}}\n  mirrors:\n  - backend: {}:80\n",
            cluster.v1[1].ipv4(),
            cluster.v2_addr()
        ),
    )
    .expect("config");
    let argv: Vec<String> = vec![
        "env".into(),
        "KUBECONFIG=/nonexistent".into(),
        mirror_binary().expect("mirror").display().to_string(),
        "run".into(),
        "--config".into(),
        config.display().to_string(),
        "--kubernetes".into(),
        "--grace-secs".into(),
        "2".into(),
        "--no-admin".into(),
    ];
    let process = cluster
        .testbed
        .node()
        .spawn("mirror-run", &argv)
        .expect("spawn");
    let agent = Agent::adopt(process, "mirroring to").expect("agent");
    // The pod comes after the agent: its veth is attached when it appears.
    let late = cluster.testbed.add_host("late").expect("late pod");
    std::thread::sleep(FOLLOW);
    for n in 0..5 {
        let url = format!("http://{}:80/late/{n}", cluster.v1[1].ipv4());
        late.ns()
            .exec_ok(&["curl", "-sS", "--fail", "--max-time", "10", &url])
            .expect("curl");
    }
    cluster.requests(1, "client", 5);
    cluster.wait_mirrored("late", 5);
    stop_and_check(agent, 5);
    assert_eq!(
        cluster.mirrored("client"),
        0,
        "an interface no pattern names was hooked"
    );
}

#[test]
fn server_hook_pod_attaches_inside_the_backend_pods_namespace() {
    let Some(cluster) = Cluster::new() else {
        return;
    };
    cluster.service();
    let agent = cluster.agent_with(
        SERVER_SIDE,
        &["--server-hook", "pod", "--netns-dir", "/var/run/netns"],
    );
    cluster.pod(0, NODE);
    cluster.slice(vec![cluster.endpoint(0, NODE)]);
    std::thread::sleep(FOLLOW);
    cluster.requests(0, "inside", 5);
    cluster.wait_mirrored("inside", 5);
    let in_pod = |host: &Host| {
        host.ns()
            .exec_ok(&[
                mirror_binary().expect("mirror").display().to_string(),
                "attached".into(),
                "--iface".into(),
                "eth0".into(),
            ])
            .expect("mirror attached in the pod")
    };
    let inside = in_pod(&cluster.v1[0]);
    assert!(
        inside.contains("mirror_ingress") && inside.contains("mirror_egress"),
        "{inside}"
    );
    assert!(
        !cluster.attached(0).contains("mirror_"),
        "{}",
        cluster.attached(0)
    );

    // The pod leaves the Service: its hooks inside it go.
    cluster.set_endpoints(vec![]);
    std::thread::sleep(FOLLOW);
    let inside = in_pod(&cluster.v1[0]);
    assert!(!inside.contains("mirror_"), "{inside}");
    cluster.requests(0, "left", 5);
    stop_and_check(agent, 5);
    assert_eq!(cluster.mirrored("left"), 0);
}

/// Without CAP_SYS_ADMIN the pod hook cannot enter the pod: that attach fails, is logged and
/// counted, and the other interfaces (here a pattern's, the client's veth) are attached and
/// mirror all the same.
#[test]
fn a_failing_attach_is_counted_and_the_other_interfaces_go_on() {
    let Some(cluster) = Cluster::new() else {
        return;
    };
    cluster.pod(0, NODE);
    cluster.slice(vec![cluster.endpoint(0, NODE)]);
    cluster.service();
    let agent = cluster.agent_as(
        &[
            "setpriv",
            "--bounding-set",
            "-all,+bpf,+perfmon,+net_admin",
            "--",
        ],
        &format!("interfaces: [{}]\n", cluster.client.node_ifname()),
        SERVER_SIDE,
        &["--server-hook", "pod", "--netns-dir", "/var/run/netns"],
    );
    std::thread::sleep(FOLLOW);
    cluster.requests(0, "a", 5);
    cluster.wait_mirrored("a", 5);
    assert!(
        agent.stderr().contains("needs CAP_SYS_ADMIN"),
        "{}",
        agent.stderr()
    );
    let summary = stop_and_check(agent, 5);
    let failures = summary
        .split(" attach: ")
        .nth(1)
        .and_then(|stage| mirror_tests::agent::counter(stage, "failures"))
        .unwrap_or_default();
    assert!(failures >= 1, "{summary}");
}

#[test]
fn a_reloaded_file_naming_another_service_is_followed() {
    let Some(cluster) = Cluster::new() else {
        return;
    };
    cluster.pod(1, NODE);
    cluster.slice(vec![cluster.endpoint(1, NODE)]);
    cluster.service();
    let agent = cluster.agent_with(&SERVER_SIDE.replace("name: httpbin", "name: nothing"), &[]);
    std::thread::sleep(FOLLOW);
    cluster.requests(1, "before", 5);
    // The file now names httpbin: discovery follows it without a restart of the agent.
    let config = cluster.testbed.log_dir().join("mirror.yaml");
    let text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(&config, text.replace("name: nothing", "name: httpbin")).expect("rewrite");
    // The file is looked at every second; then the agent follows as it follows the API.
    std::thread::sleep(Duration::from_secs(1) + FOLLOW);
    assert!(
        cluster.attached(1).contains("mirror_egress"),
        "{}",
        agent.stderr()
    );
    cluster.requests(1, "after", 5);
    cluster.wait_mirrored("after", 5);
    stop_and_check(agent, 5);
    assert_eq!(cluster.mirrored("before"), 0);
}
