//! End to end: the agent's admin endpoint on the namespace test-bed. Each stage's counters in
//! `/metrics` against the requests sent and what v2 received; the exposition checked by the
//! reference parser (PyPI `prometheus-client`, both formats); drops when v2 is black-holed;
//! `/readyz` when an interface disappears; the access log against v2's records; the dashboard
//! against the metrics that exist; and `mirror status`.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use mirror_tests::{
    agent::{mirror_binary, Agent},
    ensure_venv, require_root,
    scenario::Scenario,
    Sink,
};
use mirror_userspace::observe::scrape::Scrape;

const ADMIN: &str = "127.0.0.1:9477";
const N: usize = 20;

/// GET `path` from the agent's admin endpoint (inside the node namespace); status and body.
fn admin_get(scenario: &Scenario, path: &str, accept: &str) -> (u16, String) {
    let url = format!("http://{ADMIN}{path}");
    let out = scenario
        .testbed
        .node()
        .exec_ok(&[
            "curl",
            "-sS",
            "--max-time",
            "10",
            "-H",
            &format!("Accept: {accept}"),
            "-w",
            "\n%{http_code}",
            &url,
        ])
        .expect("curl the admin endpoint");
    // `out` is the body, then the newline and status code `-w` appends.
    let (body, status) = out.rsplit_once('\n').unwrap_or(("", out.as_str()));
    (status.trim().parse().expect("status code"), body.to_owned())
}

fn metrics(scenario: &Scenario) -> Scrape {
    let (status, body) = admin_get(scenario, "/metrics", "*/*");
    assert_eq!(status, 200, "{body}");
    Scrape::parse(&body).expect("our own parser reads /metrics")
}

/// Scrapes until `done` holds (or 15 s pass), and returns the last scrape.
fn metrics_until(scenario: &Scenario, done: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let scrape = metrics(scenario);
        if done(&scrape) || Instant::now() > deadline {
            return scrape;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Parses `text` with the reference parser of PyPI's `prometheus-client` (the classic
/// format's or OpenMetrics'); returns each sample's value under `name{sorted labels}`.
fn reference_parse(format: &str, text: &str) -> BTreeMap<String, f64> {
    const SCRIPT: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families as classic
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics
parse = openmetrics if sys.argv[1] == "openmetrics" else classic
for family in parse(sys.stdin.read()):
    for s in family.samples:
        labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
        print(f"{s.name}{{{labels}}}\t{float(s.value)!r}")
"#;
    let venv = ensure_venv().expect("python venv with prometheus-client");
    let mut child = Command::new(venv.join("bin/python"))
        .args(["-c", SCRIPT, format])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("feed the parser");
    let out = child.wait_with_output().expect("python");
    assert!(
        out.status.success(),
        "the reference {format} parser rejected the exposition: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| {
            let (key, value) = line.split_once('\t').expect("key and value");
            (key.to_owned(), value.parse().expect("a number"))
        })
        .collect()
}

/// Our samples in the reference parser's notation.
fn ours(scrape: &Scrape) -> BTreeMap<String, f64> {
    scrape
        .samples
        .iter()
        .map(|s| {
            let mut labels = s.labels.clone();
            labels.sort();
            let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
            (format!("{}{{{}}}", s.name, labels.join(",")), s.value)
        })
        .collect()
}

#[test]
fn every_stage_counts_the_requests_and_the_exposition_parses() {
    if !require_root() {
        return;
    }
    let scenario = Scenario::new().expect("scenario");
    let _v1 = Sink::start(&scenario.v1, 80).expect("v1 sink");
    let v2 = Sink::start(&scenario.v2, 80).expect("v2 sink");
    let access_log = scenario.testbed.log_dir().join("access.jsonl");
    let agent = scenario.agent(&["--access-log", &access_log.display().to_string()]);
    let (status, body) = admin_get(&scenario, "/readyz", "*/*");
    assert_eq!(status, 200, "ready once attached: {body}");

    // N requests over one keep-alive connection.
    scenario.curl(&[
        "-o",
        "/dev/null",
        &format!("http://httpbin:8000/observe-[1-{N}]"),
    ]);
    let records = v2
        .wait_for_records(N, Duration::from_secs(20))
        .expect("v2 got every request");
    let n = N as f64;
    let scrape = metrics_until(&scenario, |s| {
        s.sum("mirror_relay_answered_total", &[]) >= n
            && s.sum("mirror_relay_response_latency_seconds_count", &[]) >= n
    });

    // Each stage, from the kernel to v2's answers.
    assert!(scrape.sum("mirror_kernel_packets_matched_total", &[]) >= n);
    assert!(scrape.sum("mirror_kernel_records_emitted_total", &[]) >= n);
    assert_eq!(
        scrape.sum("mirror_kernel_ringbuf_full_drops_total", &[]),
        0.0
    );
    assert!(scrape.sum("mirror_intake_records_total", &[]) >= n);
    assert_eq!(
        scrape.sum("mirror_pipeline_requests_mirrored_total", &[]),
        n
    );
    assert_eq!(scrape.sum("mirror_pipeline_gaps_total", &[]), 0.0);
    assert_eq!(scrape.sum("mirror_relay_requests_total", &[]), n);
    assert_eq!(scrape.sum("mirror_relay_dropped_total", &[]), 0.0);
    assert_eq!(
        scrape.sum("mirror_relay_answered_total", &[("class", "2xx")]),
        records.len() as f64,
        "answered = what v2 logged"
    );
    assert_eq!(
        scrape.sum("mirror_relay_response_latency_seconds_count", &[]),
        n
    );
    assert_eq!(scrape.sum("mirror_agent_ready", &[]), 1.0);
    assert_eq!(
        scrape.sum(
            "mirror_agent_interface_attached",
            &[("interface", scenario.client.node_ifname())]
        ),
        1.0
    );
    assert!(scrape.sum("mirror_agent_resident_memory_bytes", &[]) > 0.0);

    // The reference parser reads both formats and finds exactly our samples.
    let (_, classic) = admin_get(&scenario, "/metrics", "text/plain");
    let (_, open) = admin_get(&scenario, "/metrics", "application/openmetrics-text");
    assert!(open.contains("# EOF"), "{open}");
    let classic_scrape = Scrape::parse(&classic).expect("parse");
    assert_eq!(reference_parse("classic", &classic), ours(&classic_scrape));
    let open_samples = reference_parse("openmetrics", &open);
    assert!(
        open_samples.get("mirror_pipeline_requests_mirrored_total{}") == Some(&n),
        "{open_samples:?}"
    );

    // The access log names what v2 received.
    let log = std::fs::read_to_string(&access_log).expect("access log");
    let mut logged: Vec<(String, String)> = log
        .lines()
        .map(|line| {
            let entry: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
            assert_eq!(entry["outcome"], "answered", "{line}");
            assert_eq!(entry["status"], 200, "{line}");
            assert!(entry["latency_seconds"].as_f64().is_some(), "{line}");
            (
                entry["path"].as_str().unwrap_or_default().to_owned(),
                entry["host"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let mut received: Vec<(String, String)> = records
        .iter()
        .map(|r| (r.path.clone(), r.host.clone().unwrap_or_default()))
        .collect();
    logged.sort();
    received.sort();
    assert_eq!(logged, received);

    // /config says what the agent runs with.
    let (status, config) = admin_get(&scenario, "/config", "*/*");
    assert_eq!(status, 200);
    let config: serde_json::Value = serde_json::from_str(&config).expect("JSON");
    assert_eq!(config["percent"], 100.0);
    assert_eq!(
        config["capture"]["interfaces"][0],
        scenario.client.node_ifname()
    );

    // Every metric the dashboard queries exists.
    let dashboard = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/dashboards/mirror.json"
    ))
    .expect("dashboard");
    let queried = metric_names(&dashboard);
    assert!(queried.len() >= 5, "{queried:?}");
    for name in &queried {
        assert!(
            classic_scrape.has(name),
            "the dashboard queries {name}, which /metrics lacks"
        );
    }

    // mirror status, as a person runs it on the node.
    let status = scenario
        .testbed
        .node()
        .exec_ok(&[
            mirror_binary().expect("mirror").display().to_string(),
            "status".into(),
            "--admin-addr".into(),
            ADMIN.into(),
        ])
        .expect("mirror status");
    eprintln!("mirror status:\n{status}");
    assert!(status.contains(": ready\n"), "{status}");
    let mirrored = format!("{:<28}{:>14}", "mirrored", N);
    assert!(status.contains(&mirrored), "{status}");
    assert!(status.contains("v2 latency: p50 "), "{status}");
    drop(agent);
}

/// Names of the `mirror_` metrics in the dashboard's queries.
fn metric_names(dashboard: &str) -> BTreeSet<String> {
    let json: serde_json::Value = serde_json::from_str(dashboard).expect("dashboard is JSON");
    let mut exprs = Vec::new();
    collect_exprs(&json, &mut exprs);
    let mut names = BTreeSet::new();
    for expr in exprs {
        let mut rest = expr.as_str();
        while let Some(at) = rest.find("mirror_") {
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            names.insert(tail[..end].to_owned());
            rest = &tail[end..];
        }
    }
    names
}

fn collect_exprs(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr", serde_json::Value::String(expr)) => out.push(expr.clone()),
                    _ => collect_exprs(value, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

#[test]
fn black_holed_v2_raises_drops_and_not_answers() {
    if !require_root() {
        return;
    }
    let scenario = Scenario::new().expect("scenario");
    let _v1 = Sink::start(&scenario.v1, 80).expect("v1 sink");
    let _v2 = Sink::start(&scenario.v2, 80).expect("v2 sink");
    scenario
        .v2
        .ns()
        .exec_ok(&[
            "nft",
            "add table inet blackhole; \
             add chain inet blackhole input { type filter hook input priority 0; policy drop; }",
        ])
        .expect("black-hole v2");
    let access_log = scenario.testbed.log_dir().join("access.jsonl");
    let agent = scenario.agent(&[
        "--connect-timeout-ms",
        "300",
        "--access-log",
        &access_log.display().to_string(),
    ]);
    scenario.curl(&[
        "-o",
        "/dev/null",
        &format!("http://httpbin:8000/lost-[1-{N}]"),
    ]);
    let n = N as f64;
    let scrape = metrics_until(&scenario, |s| s.sum("mirror_relay_dropped_total", &[]) >= n);
    assert_eq!(
        scrape.sum("mirror_pipeline_requests_mirrored_total", &[]),
        n
    );
    assert_eq!(
        scrape.sum("mirror_relay_dropped_total", &[("reason", "shadow_down")]),
        n,
        "every request dropped as shadow_down"
    );
    assert_eq!(scrape.sum("mirror_relay_answered_total", &[]), 0.0);
    assert_eq!(scrape.sum("mirror_relay_bytes_sent_total", &[]), 0.0);
    let refused_or_lost: f64 = [
        "mirror_relay_connect_refused_total",
        "mirror_relay_connect_timeouts_total",
        "mirror_relay_connect_unreachable_total",
    ]
    .iter()
    .map(|name| scrape.sum(name, &[]))
    .sum();
    assert!(refused_or_lost >= 1.0);
    let summary = agent.stop(libc::SIGTERM).expect("stop");
    assert!(
        summary.contains(&format!("dropped_shadow_down={N} ")),
        "{summary}"
    );
}

#[test]
fn readyz_fails_once_an_interface_disappears() {
    if !require_root() {
        return;
    }
    let scenario = Scenario::new().expect("scenario");
    let agent: Agent = scenario.agent(&[]);
    let (status, body) = admin_get(&scenario, "/readyz", "*/*");
    assert_eq!(status, 200, "{body}");
    let (status, _) = admin_get(&scenario, "/healthz", "*/*");
    assert_eq!(status, 200);
    let iface = scenario.client.node_ifname().to_owned();
    scenario
        .testbed
        .node()
        .exec_ok(&["ip", "link", "del", &iface])
        .expect("remove the client's veth");
    let (status, body) = admin_get(&scenario, "/readyz", "*/*");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains(&format!("interface {iface} gone")), "{body}");
    // Still alive: only readiness changed.
    let (status, _) = admin_get(&scenario, "/healthz", "*/*");
    assert_eq!(status, 200);
    let scrape = metrics(&scenario);
    assert_eq!(scrape.sum("mirror_agent_ready", &[]), 0.0);
    drop(agent);
}
