//! End to end: the agent's admin endpoint on the namespace test-bed. Each stage's counters in
//! `/metrics` against the requests sent and what v2 received; the exposition checked by the
//! reference parser (PyPI `prometheus-client`, both formats); drops when v2 is black-holed;
//! `/readyz` when an interface disappears; the access log against v2's records; the dashboard
//! against the metrics that exist; the ring buffer's fill level; per-mirror histograms under
//! `--config`; and `mirror status`.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use mirror_tests::{
    agent::{mirror_binary, relay_conserved, Agent},
    ensure_venv, require_root,
    scenario::{Scenario, READY, VIP},
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

/// The seed scenario with sinks as v1 and v2 (port 80 each).
fn with_sinks() -> (Scenario, Sink, Sink) {
    let scenario = Scenario::new().expect("scenario");
    let v1 = Sink::start(&scenario.v1, 80).expect("v1 sink");
    let v2 = Sink::start(&scenario.v2, 80).expect("v2 sink");
    (scenario, v1, v2)
}

/// `mirror status`'s output on the node, as a person runs it there.
fn mirror_status(scenario: &Scenario) -> String {
    let mirror = mirror_binary().expect("mirror").display().to_string();
    scenario
        .testbed
        .node()
        .exec_ok(&[mirror.as_str(), "status", "--admin-addr", ADMIN])
        .expect("mirror status")
}

#[test]
fn every_stage_counts_the_requests_and_the_exposition_parses() {
    if !require_root() {
        return;
    }
    let (scenario, _v1, v2) = with_sinks();
    let access_log = scenario.testbed.log_dir().join("access.jsonl");
    let agent = scenario.agent(&[
        "--access-log",
        &access_log.display().to_string(),
        "--bpf-stats",
    ]);
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
    // README's table and /metrics list the same families (the policy stage's exist only
    // under --config, where the other test checks them; live attachment's only when the agent
    // follows pods or interface patterns).
    check_readme_table(&classic_scrape, |name| {
        !name.starts_with("mirror_policy_") && !live_attachment_family(name)
    });

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
    let status = mirror_status(&scenario);
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
    let (scenario, _v1, _v2) = with_sinks();
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

#[test]
fn ring_fill_level_rises_while_records_wait_and_is_zero_when_idle() {
    if !require_root() {
        return;
    }
    let (scenario, _v1, _v2) = with_sinks();
    // A 4 MiB ring read every 4 s: records of a few requests wait there between reads.
    let agent = scenario.agent(&["--ring-mib", "4", "--poll-ms", "4000"]);
    let size = f64::from(4u32 << 20);
    let fill = |scrape: &Scrape| {
        assert!(scrape.has("mirror_ring_used_bytes"), "{scrape:?}");
        assert_eq!(scrape.sum("mirror_ring_size_bytes", &[]), size);
        scrape.sum("mirror_ring_used_bytes", &[])
    };
    assert_eq!(fill(&metrics(&scenario)), 0.0, "idle before any traffic");

    // Scrape right after each burst; a read may fall between the burst and the scrape, so
    // try a few bursts.
    let mut waiting = 0.0;
    let mut sent = 0;
    for burst in 0..3 {
        scenario.curl(&[
            "-o",
            "/dev/null",
            &format!("http://httpbin:8000/ring-{burst}-[1-{N}]"),
        ]);
        sent += N;
        waiting = fill(&metrics(&scenario));
        if waiting > 0.0 {
            break;
        }
    }
    assert!(
        waiting > 0.0,
        "records of {sent} requests never seen waiting"
    );
    assert!(waiting <= size, "{waiting} of {size}");
    assert_eq!(waiting % 8.0, 0.0, "records are 8-byte aligned: {waiting}");

    // Once the agent read them all (every request answered), nothing waits.
    let n = sent as f64;
    let scrape = metrics_until(&scenario, |s| {
        s.sum("mirror_relay_answered_total", &[]) >= n && fill(s) == 0.0
    });
    assert_eq!(scrape.sum("mirror_relay_answered_total", &[]), n);
    assert_eq!(fill(&scrape), 0.0, "idle after the reads");
    let status = mirror_status(&scenario);
    assert!(
        status.contains("ring buffer: 0 B of 4.0 MiB waiting to be read\n"),
        "{status}"
    );
    let summary = agent.stop(libc::SIGTERM).expect("stop");
    assert_eq!(relay_conserved(&summary).expect("conserved"), sent as u64);
}

#[test]
fn each_mirror_under_config_has_its_own_latency_histogram() {
    if !require_root() {
        return;
    }
    let scenario = Scenario::new().expect("scenario");
    let _v1 = Sink::start(&scenario.v1, 80).expect("v1 sink");
    let a = Sink::start(&scenario.v2, 80).expect("mirror A sink");
    let b = Sink::start(&scenario.v2, 81).expect("mirror B sink");
    let (backend_a, backend_b) = (
        format!("{}:80", scenario.v2.ipv4()),
        format!("{}:81", scenario.v2.ipv4()),
    );
    let config = format!(
        "interfaces: [{iface}]\npolicies:\n- name: web\n  target: {{address: {VIP}, port: 8000}}\n  mirrors:\n  - backend: {backend_a}\n    percent: 100\n  - backend: {backend_b}\n    percent: 50\n",
        iface = scenario.client.node_ifname(),
    );
    let path = scenario.testbed.log_dir().join("mirror.yaml");
    std::fs::write(&path, config).expect("write config");
    let args: Vec<String> = ["run", "--config", &path.display().to_string()]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let agent = Agent::start(scenario.testbed.node(), "mirror-run", &args, READY).expect("agent");

    let n = 2 * N;
    scenario.curl(&[
        "-o",
        "/dev/null",
        &format!("http://httpbin:8000/two-[1-{n}]"),
    ]);
    a.wait_for_records(n, Duration::from_secs(20))
        .expect("A got every request");
    let (label_a, label_b) = (format!("web/{backend_a}"), format!("web/{backend_b}"));
    let settled = |s: &Scrape, mirror: &str| {
        let m = [("mirror", mirror)];
        s.sum("mirror_policy_requests_mirrored_total", &m)
            == s.sum("mirror_relay_answered_total", &m)
                + s.sum("mirror_relay_unanswered_total", &m)
                + s.sum("mirror_relay_dropped_total", &m)
    };
    let scrape = metrics_until(&scenario, |s| {
        s.sum(
            "mirror_policy_requests_mirrored_total",
            &[("mirror", &label_a)],
        ) >= n as f64
            && settled(s, &label_a)
            && settled(s, &label_b)
    });
    let at_b = b.records().expect("B's records");
    for (mirror, received) in [(&label_a, n), (&label_b, at_b.len())] {
        let m = [("mirror", mirror.as_str())];
        let answered = scrape.sum("mirror_relay_answered_total", &m);
        assert_eq!(
            answered, received as f64,
            "{mirror}: answered = what it received"
        );
        assert_eq!(
            scrape.sum("mirror_relay_response_latency_seconds_count", &m),
            answered,
            "{mirror}: one latency observation per answer"
        );
        assert_eq!(
            scrape.sum(
                "mirror_relay_response_latency_seconds_bucket",
                &[("mirror", mirror.as_str()), ("le", "+Inf")]
            ),
            answered,
            "{mirror}"
        );
        assert_eq!(
            scrape.sum("mirror_relay_dropped_total", &m),
            0.0,
            "{mirror}"
        );
        // Conserved per mirror: handed = relayed = answered + unanswered + dropped.
        let relayed = scrape.sum("mirror_relay_requests_total", &m);
        assert_eq!(
            relayed,
            scrape.sum("mirror_policy_requests_mirrored_total", &m)
        );
        assert_eq!(
            relayed,
            answered
                + scrape.sum("mirror_relay_unanswered_total", &m)
                + scrape.sum("mirror_relay_dropped_total", &m),
            "{mirror}"
        );
    }
    assert!(
        (1..n).contains(&at_b.len()),
        "B takes about half: {} of {n}",
        at_b.len()
    );
    // Labelled histograms are valid exposition, both formats.
    let (_, classic) = admin_get(&scenario, "/metrics", "text/plain");
    assert_eq!(
        reference_parse("classic", &classic),
        ours(&Scrape::parse(&classic).expect("parse"))
    );
    let (_, open) = admin_get(&scenario, "/metrics", "application/openmetrics-text");
    let open_samples = reference_parse("openmetrics", &open);
    let key = format!("mirror_relay_response_latency_seconds_count{{mirror=\"{label_a}\"}}");
    assert_eq!(
        open_samples.get(&key),
        Some(&(n as f64)),
        "{open_samples:?}"
    );
    check_readme_table(&scrape, |name| name.starts_with("mirror_policy_"));

    let status = mirror_status(&scenario);
    eprintln!("mirror status:\n{status}");
    for mirror in [&label_a, &label_b] {
        assert!(
            status.contains(&format!("v2 latency of {mirror}: p50 ")),
            "{status}"
        );
    }
    // A's own table: every request mirrored to it.
    let table_a = format!(
        "{:<28}{:>14}{:>14}\n{:<28}{:>14}",
        format!("mirror {label_a}"),
        "total",
        "per second",
        "mirrored",
        n
    );
    assert!(status.contains(&table_a), "{status}");
    // The totals count the copies handed to both mirrors.
    let copies = format!("{:<28}{:>14}", "mirrored", n + at_b.len());
    assert!(status.contains(&copies), "{status}");
    drop(agent);
}

/// The metric families README's table lists: each first-column name without its labels,
/// `..._name` completed with the stage prefix of the row's first name.
fn readme_families() -> BTreeSet<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README");
    let table = readme
        .split_once("### Metrics")
        .expect("README has a Metrics section")
        .1;
    let mut families = BTreeSet::new();
    for row in table.lines().take_while(|l| !l.starts_with("## ")) {
        let Some(cell) = row.strip_prefix("| `mirror_") else {
            continue;
        };
        let cell = format!("`mirror_{}", cell.split(" | ").next().unwrap_or_default());
        let mut prefix = String::new();
        for name in cell.split(", ") {
            let name = name.trim().trim_matches('`');
            let name = name.split('{').next().unwrap_or_default();
            let name = match name.strip_prefix("..._") {
                Some(rest) => format!("{prefix}{rest}"),
                None => {
                    // `mirror_<stage>_`: the stage is one word, or `access_log`.
                    let stage_end = ["mirror_access_log_"]
                        .iter()
                        .find(|p| name.starts_with(*p))
                        .map(|p| p.len())
                        .unwrap_or_else(|| {
                            "mirror_".len() + name["mirror_".len()..].find('_').map_or(0, |i| i + 1)
                        });
                    prefix = name[..stage_end].to_owned();
                    name.to_owned()
                }
            };
            families.insert(name);
        }
    }
    families
}

/// The families in a scrape: histogram members (`_bucket`, `_count`, `_sum`) under the
/// histogram's name.
fn exported_families(scrape: &Scrape) -> BTreeSet<String> {
    let histograms: BTreeSet<&str> = scrape
        .samples
        .iter()
        .filter_map(|s| s.name.strip_suffix("_bucket"))
        .collect();
    scrape
        .samples
        .iter()
        .map(|s| {
            let base = ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|suffix| s.name.strip_suffix(suffix))
                .filter(|base| histograms.contains(base));
            base.unwrap_or(&s.name).to_owned()
        })
        .collect()
}

/// Families only an agent that attaches while it runs exports (`--kubernetes`, or `interfaces`
/// patterns in a config file).
fn live_attachment_family(name: &str) -> bool {
    name.starts_with("mirror_attach_") || name.starts_with("mirror_kubernetes_")
}

/// Every family the agent exports is in README's table, and each of the table's families
/// that `expected` says this agent should export is there.
fn check_readme_table(scrape: &Scrape, expected: impl Fn(&str) -> bool) {
    let listed = readme_families();
    let exported = exported_families(scrape);
    let unlisted: Vec<_> = exported.difference(&listed).collect();
    assert!(
        unlisted.is_empty(),
        "README's metric table lacks {unlisted:?}"
    );
    let missing: Vec<_> = listed
        .iter()
        .filter(|name| expected(name) && !exported.contains(*name))
        .collect();
    assert!(
        missing.is_empty(),
        "README's metric table lists {missing:?}, which /metrics lacks"
    );
}
