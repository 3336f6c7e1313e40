//! The emulated cluster of Istio's task: pods `sleep`, `httpbin-v1` and `httpbin-v2` on one
//! node, and the service `httpbin` (port 8000) that leads to v1 only.

use std::net::SocketAddr;

use anyhow::{Context as _, Result};
use mirror_tests::{ensure_venv, Host, Httpbin, Testbed, HTTPBIN_PORT};

use crate::narrate::{block, say};
use crate::progress;

/// The service's virtual IP, in the test-bed's service range (kube-proxy's ClusterIP).
const SERVICE_VIP: &str = "198.19.0.10";
/// The service port of the task's `httpbin` Service.
const SERVICE_PORT: u16 = 8000;

/// Everything the steps act on. Dropping it stops the servers, then removes the namespaces.
pub struct Cluster {
    pub sleep: Host,
    pub v2: Host,
    pub service: SocketAddr,
    pub httpbin_v1: Httpbin,
    pub httpbin_v2: Httpbin,
    // Last: fields drop in order, and the servers must stop before their namespaces go.
    pub testbed: Testbed,
}

/// Makes the virtualenv, the namespaces, the service and both httpbins, narrating each.
pub fn create(label: &str) -> Result<Cluster> {
    say("httpbin and gunicorn come from PyPI into a virtualenv under target/, made on the first run");
    say("(about a minute) and reused afterwards:");
    let venv = progress::run("httpbin virtualenv", ensure_venv)
        .context("the httpbin virtualenv (needs python3-venv and access to PyPI)")?;
    say(format!(
        "    virtualenv: {}",
        venv.canonicalize().unwrap_or(venv).display()
    ));

    let mut testbed = Testbed::with_label(label)
        .context("creating the node namespace (needs root and iproute2)")?;
    let sleep = add_pod(&mut testbed, "sleep")?;
    let v1 = add_pod(&mut testbed, "httpbinv1")?;
    let v2 = add_pod(&mut testbed, "httpbinv2")?;
    let vip = SERVICE_VIP.parse().expect("valid constant");
    let service = testbed
        .add_service(vip, SERVICE_PORT, &v1, HTTPBIN_PORT)
        .context("the httpbin service (nftables DNAT; apt-get install nftables)")?;
    testbed
        .add_hosts_entry(&sleep, "httpbin", service.ip())
        .context("making `httpbin` resolve in the sleep pod")?;

    say("");
    say("The cluster, one network namespace per pod, each joined to the node by a veth pair:");
    let pod_runs = format!("httpbin under gunicorn, port {HTTPBIN_PORT}");
    let rows = [
        ["pod", "namespace", "address", "runs"].map(str::to_owned),
        row("sleep", &sleep, "the client: curl"),
        row("httpbin-v1", &v1, &pod_runs),
        row("httpbin-v2", &v2, &pod_runs),
        [
            "(the node)",
            testbed.node().name(),
            "",
            "routing, the service, and later the mirror agent",
        ]
        .map(str::to_owned),
    ];
    let table: Vec<String> = rows
        .iter()
        .map(|[pod, ns, addr, runs]| format!("{pod:<12} {ns:<26} {addr:<12} {runs}"))
        .collect();
    block(&table.join("\n"));
    say("(The test-bed names pods with at most 12 lowercase letters or digits, so httpbin-v1 is");
    say("`httpbinv1` and httpbin-v2 is `httpbinv2`.)");
    say(format!(
        "Service httpbin: {service} -> httpbin-v1 {}:{HTTPBIN_PORT}, an nftables DNAT rule in the \
         node, as kube-proxy makes it.",
        v1.ipv4()
    ));
    say(format!(
        "`httpbin` resolves to {} inside sleep (/etc/netns/{}/hosts), as cluster DNS would.",
        service.ip(),
        sleep.ns().name()
    ));

    say("Starting httpbin in both versions:");
    let httpbin_v1 = progress::run("httpbin-v1", || Httpbin::start(&v1))
        .context("starting httpbin-v1 (gunicorn)")?;
    let httpbin_v2 = progress::run("httpbin-v2", || Httpbin::start(&v2))
        .context("starting httpbin-v2 (gunicorn)")?;
    Ok(Cluster {
        sleep,
        v2,
        service,
        httpbin_v1,
        httpbin_v2,
        testbed,
    })
}

/// A line of the cluster table: the pod's name in the task, its namespace, address and role.
fn row(pod: &str, host: &Host, runs: &str) -> [String; 4] {
    [
        pod.to_owned(),
        host.ns().name().to_owned(),
        host.ipv4().to_string(),
        runs.to_owned(),
    ]
}

fn add_pod(testbed: &mut Testbed, name: &str) -> Result<Host> {
    testbed
        .add_host(name)
        .with_context(|| format!("creating the {name} pod's namespace and veth"))
}

impl Cluster {
    /// Runs curl in the sleep pod as `kubectl exec sleep -- curl ...` would, showing the command
    /// and returning what it printed.
    pub fn curl(&self, args: &[&str]) -> Result<String> {
        let mut argv = vec!["curl", "-sS", "--fail"];
        argv.extend_from_slice(args);
        let mut shown = vec!["ip", "netns", "exec", self.sleep.ns().name()];
        shown.extend_from_slice(&argv);
        crate::narrate::command(&shown);
        self.sleep
            .ns()
            .exec_ok(&argv)
            .context("curl in the sleep pod")
    }
}
