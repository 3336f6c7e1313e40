//! The three steps of Istio's mirroring task, each ending with what the access logs show.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use mirror_tests::agent::{counter, Agent};
use mirror_tests::Httpbin;

use crate::agent;
use crate::cluster::Cluster;
use crate::narrate::{access_log, block, heading, say};

/// The task's request.
const URL: &str = "http://httpbin:8000/headers";
/// Requests sent in step 3.
pub const SAMPLED_REQUESTS: usize = 100;
/// How long a request may take to show up in an access log: gunicorn logs after it answers,
/// and the mirrored copy travels through the agent first.
const LOG_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an access log is watched for a request that should not come.
const QUIET_PERIOD: Duration = Duration::from_secs(1);

/// Step 1: no mirroring; v1 serves the request and v2 sees nothing.
pub fn without_mirroring(cluster: &Cluster) -> Result<()> {
    heading("Step 1: all traffic goes to httpbin-v1");
    say("The service leads to v1 only. From the sleep pod (kubectl exec sleep -- curl ...):");
    let body = cluster.curl(&[URL])?;
    block(&body);
    cluster
        .httpbin_v1
        .wait_for_access_log(1, LOG_TIMEOUT)
        .context("v1 did not log the request")?;
    std::thread::sleep(QUIET_PERIOD);
    show_logs(cluster, 5);
    if !cluster.httpbin_v2.access_log_lines()?.is_empty() {
        bail!("v2 got a request although nothing mirrors yet");
    }
    say("v1 answered; v2 got nothing.");
    Ok(())
}

/// Step 2: the agent mirrors every request; v2 gets a copy with the `-shadow` Host, the client
/// still gets v1's answer.
pub fn mirror_all(cluster: &Cluster) -> Result<()> {
    heading("Step 2: mirror 100% of the traffic to httpbin-v2");
    say("Istio would set `mirror: httpbin v2` and `mirrorPercentage: 100` on the route. Here the");
    say("agent attaches a TC eBPF program to the node side of the sleep pod's veth, copies the");
    say("packets bound for the service into a ring buffer, rebuilds the requests and replays them");
    say("to v2's pod with Host `<host>-shadow`; v2's replies are read and thrown away.");
    let agent = agent::start(cluster, 100)?;
    let body = cluster.curl(&[URL])?;
    say("the client got (from v1: note the unchanged Host):");
    block(&body);
    cluster
        .httpbin_v1
        .wait_for_access_log(2, LOG_TIMEOUT)
        .context("v1 did not log the second request")?;
    let v2_lines = cluster
        .httpbin_v2
        .wait_for_access_log(1, LOG_TIMEOUT)
        .context("v2 did not receive the mirrored request")?;
    show_logs(cluster, 5);
    if !body.contains("\"Host\": \"httpbin:8000\"") {
        bail!("the client's answer does not echo Host httpbin:8000:\n{body}");
    }
    let shadow = &v2_lines[0];
    say(format!(
        "v2 got the copy: {} {} with Host {} (v1's line says host=httpbin:8000).",
        shadow.method, shadow.path, shadow.host
    ));
    let summary = agent::stop(agent)?;
    say("Stopped the agent (SIGTERM); its counters:");
    agent::show_counters(&summary);
    Ok(())
}

/// Step 3: the agent mirrors half of the requests, deciding per request as Envoy does; v2's log
/// and the agent's counters say how many went. Returns how many v2 received.
pub fn mirror_half(cluster: &Cluster) -> Result<usize> {
    heading("Step 3: mirror 50% of the traffic");
    say("Istio's `mirrorPercentage: 50` is the agent's --percent 50: the agent decides for each");
    say("request whether to copy it.");
    let before = count_sampled(&cluster.httpbin_v2)?;
    let agent = agent::start(cluster, 50)?;
    say(format!(
        "{SAMPLED_REQUESTS} requests, /headers?n=1 to /headers?n={SAMPLED_REQUESTS} (curl's URL \
         ranges):"
    ));
    let statuses = cluster.curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}\\n",
        &format!("{URL}?n=[1-{SAMPLED_REQUESTS}]"),
    ])?;
    let ok = statuses.lines().filter(|status| *status == "200").count();
    say(format!("    the client got {ok} answers with status 200"));
    let served = wait_for_sampled(&cluster.httpbin_v1, SAMPLED_REQUESTS)?;
    say(format!(
        "    httpbin-v1 logged {served} of them: the primary still serves everything"
    ));
    let summary = agent::stop(agent)?;
    let mirrored = counter(&summary, "requests_mirrored")
        .context("no requests_mirrored= in the agent's summary")?;
    let answered = counter(&summary, "answered").context("no answered= in the agent's summary")?;
    let received = wait_for_sampled(&cluster.httpbin_v2, before + mirrored as usize)? - before;
    access_log("httpbin-v2", cluster.httpbin_v2.access_log_path(), 4);
    say(format!(
        "v2 received {received} of {SAMPLED_REQUESTS} requests (each request is a coin toss, so \
         about half)."
    ));
    say("The agent's own counters (requests_mirrored and requests_sampled_out split the 100;");
    say("answered is what v2 answered, as the relay counted it):");
    agent::show_counters(&summary);
    if received as u64 != mirrored || answered != mirrored {
        say(format!(
            "note: the agent copied {mirrored} requests, its relay counted {answered} answered, \
             and v2 logged {received}."
        ));
    }
    if ok != SAMPLED_REQUESTS {
        bail!("only {ok} of {SAMPLED_REQUESTS} client requests succeeded:\n{statuses}");
    }
    Ok(received)
}

/// Restarts the agent at 100% for a kept set-up.
pub fn mirror_all_again(cluster: &Cluster) -> Result<Agent> {
    say("The agent goes back to 100% and keeps running:");
    agent::start(cluster, 100)
}

fn show_logs(cluster: &Cluster, max: usize) {
    access_log("httpbin-v1", cluster.httpbin_v1.access_log_path(), max);
    access_log("httpbin-v2", cluster.httpbin_v2.access_log_path(), max);
}

/// Requests of step 3 in `httpbin`'s access log.
fn count_sampled(httpbin: &Httpbin) -> Result<usize> {
    Ok(httpbin
        .access_log_lines()?
        .iter()
        .filter(|line| line.path.starts_with("/headers?n="))
        .count())
}

/// Waits until the access log holds `want` step-3 requests (gunicorn logs a request only after
/// answering it); returns the count, short of `want` if some never came.
fn wait_for_sampled(httpbin: &Httpbin, want: usize) -> Result<usize> {
    let deadline = Instant::now() + LOG_TIMEOUT;
    loop {
        let count = count_sampled(httpbin)?;
        if count >= want || Instant::now() > deadline {
            return Ok(count);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
