//! End to end: the runtime image. The top-level `Dockerfile` is built with podman around the
//! agent binary, and the agent runs inside the container in the test-bed's node namespace,
//! replaying the seed scenario to a real httpbin v2: privileged (the `privileged` overlay) and
//! with only the capabilities the DaemonSet in `deploy/base` grants, each of which is needed.

use std::time::Duration;

use mirror_tests::{
    agent::mirror_binary,
    container::{capabilities, privileged, require_podman, run_to_exit, ContainerAgent, Image},
    require_root,
    scenario::{Scenario, READY, VIP},
    Httpbin,
};

/// The capabilities the agent refuses to start without, and the reason for each.
const REQUIRED_CAPABILITIES: &[&str] = &[
    // bpf(2): create the maps, load the programs.
    "BPF",
    // With BPF, the pair the kernel treats as a trusted BPF loader; the agent asks for both.
    "PERFMON",
    // Attaching TC programs (TCX links or clsact + netlink filters), SO_MARK on shadow sockets.
    "NET_ADMIN",
];

/// The capabilities `deploy/base/daemonset.yaml` adds: the required ones, and SYS_NICE, with
/// which the relay's threads may go back from `--relay-nice` to the agent's niceness when
/// the relay falls behind (without it the relay never yields).
const DAEMONSET_CAPABILITIES: &[&str] = &["BPF", "PERFMON", "NET_ADMIN", "SYS_NICE"];

fn run_args(scenario: &Scenario) -> Vec<String> {
    [
        "run",
        "--iface",
        scenario.client.node_ifname(),
        "--target",
        &format!("{VIP}:8000"),
        "--shadow",
        &format!("{}:80", scenario.v2.ipv4()),
        "--grace-secs",
        "2",
    ]
    .iter()
    .map(|arg| arg.to_string())
    .collect()
}

/// The seed scenario with the agent in a container allowed `security`: v1 serves the client,
/// v2 logs the copy with `Host: httpbin-shadow:8000`, and SIGTERM (through podman) ends it with
/// its summary.
fn seed_scenario_in_container(security: &[String]) {
    let scenario = Scenario::new().expect("scenario");
    let binary = mirror_binary().expect("mirror binary");
    let image = Image::build(&binary, scenario.testbed.log_dir()).expect("build the image");

    // Only the binary and what it links: the image is about the size of those files.
    let binary_len = std::fs::metadata(&binary).expect("binary").len();
    let size = image.size().expect("image size");
    assert!(
        size >= binary_len && size < binary_len + 16 * 1024 * 1024,
        "image of {size} bytes for a {binary_len}-byte binary"
    );

    let httpbin_v1 = Httpbin::start(&scenario.v1).expect("httpbin v1");
    let httpbin_v2 = Httpbin::start(&scenario.v2).expect("httpbin v2");
    let agent = ContainerAgent::start(
        &image,
        scenario.testbed.node(),
        scenario.testbed.log_dir(),
        security,
        &run_args(&scenario),
        READY,
    )
    .expect("agent in its container");

    let answer = scenario.curl(&["http://httpbin:8000/headers"]);
    let v2_lines = httpbin_v2
        .wait_for_access_log(1, Duration::from_secs(10))
        .expect("v2 logs the mirrored request");
    let v1_lines = httpbin_v1
        .wait_for_access_log(1, Duration::from_secs(10))
        .expect("v1 logs the request");
    let summary = agent.stop(libc::SIGTERM).expect("stop the container");

    assert_eq!(v1_lines.len(), 1, "{v1_lines:?}");
    assert_eq!(v1_lines[0].host, "httpbin:8000");
    assert_eq!(
        v2_lines.len(),
        1,
        "exactly one mirrored request: {v2_lines:?}"
    );
    assert_eq!(v2_lines[0].method, "GET");
    assert_eq!(v2_lines[0].path, "/headers");
    assert_eq!(v2_lines[0].host, "httpbin-shadow:8000");
    assert!(answer.contains("\"Host\": \"httpbin:8000\""), "{answer}");
    assert!(summary.contains("answered=1 "), "{summary}");
}

#[test]
fn privileged_agent_in_the_image_mirrors_the_seed_scenario() {
    if !require_root() || !require_podman() {
        return;
    }
    seed_scenario_in_container(&privileged());
}

#[test]
fn agent_with_the_daemonsets_capabilities_mirrors_the_seed_scenario() {
    if !require_root() || !require_podman() {
        return;
    }
    seed_scenario_in_container(&capabilities(DAEMONSET_CAPABILITIES, false));
}

#[test]
fn each_capability_and_the_seccomp_exemption_is_needed() {
    if !require_root() || !require_podman() {
        return;
    }
    let scenario = Scenario::new().expect("scenario");
    let image = Image::build(
        &mirror_binary().expect("mirror binary"),
        scenario.testbed.log_dir(),
    )
    .expect("build the image");
    let refused = |security: Vec<String>, why: &str| {
        let (status, stderr) = run_to_exit(
            &image,
            scenario.testbed.node(),
            &security,
            &run_args(&scenario),
            Duration::from_secs(30),
        )
        .expect("run the agent");
        assert!(!status.success(), "{why}: the agent started anyway");
        stderr
    };
    for missing in REQUIRED_CAPABILITIES {
        let granted: Vec<&str> = REQUIRED_CAPABILITIES
            .iter()
            .copied()
            .filter(|cap| cap != missing)
            .collect();
        let stderr = refused(capabilities(&granted, false), &format!("without {missing}"));
        assert!(
            stderr.contains("not enough privileges to load BPF programs"),
            "without {missing}: {stderr}"
        );
    }
    // Runtime-default seccomp profiles (podman's here, containerd's and CRI-O's in clusters)
    // allow bpf(2) only to CAP_SYS_ADMIN: the kernel never sees the call.
    let stderr = refused(
        capabilities(DAEMONSET_CAPABILITIES, true),
        "under the default seccomp profile",
    );
    assert!(stderr.contains("no BPF ring buffer"), "{stderr}");
}

#[test]
fn the_daemonset_grants_exactly_these_capabilities() {
    let manifest = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/base/daemonset.yaml"),
    )
    .expect("read deploy/base/daemonset.yaml");
    let added = added_capabilities(&manifest);
    assert_eq!(
        added, DAEMONSET_CAPABILITIES,
        "capabilities.add in the DaemonSet"
    );
    assert!(
        manifest.contains("type: Unconfined"),
        "the seccomp exemption"
    );
}

/// The items of the `add:` list under `capabilities:` (one `- NAME` per line, comments and
/// blank lines between them allowed).
fn added_capabilities(manifest: &str) -> Vec<&str> {
    let mut lines = manifest.lines().skip_while(|line| line.trim() != "add:");
    let Some(add) = lines.next() else {
        return Vec::new();
    };
    let indent = add.len() - add.trim_start().len();
    lines
        .map(str::trim_end)
        .filter(|line| !line.trim().is_empty() && !line.trim_start().starts_with('#'))
        .take_while(|line| {
            line.len() - line.trim_start().len() >= indent && line.trim_start().starts_with("- ")
        })
        .map(|line| line.trim_start()[2..].trim())
        .collect()
}
