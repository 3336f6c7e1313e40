//! `mirror status`: a summary a person reads at a glance, from a running agent's admin
//! endpoint. Two scrapes of `/metrics` a moment apart give the rates; `/readyz` the state.

use std::{fmt::Write as _, net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use super::{admin::DEFAULT_ADDR, scrape::Scrape};

#[derive(Clone, Debug, clap::Args)]
pub struct StatusArgs {
    /// The agent's admin endpoint.
    #[arg(long, default_value = DEFAULT_ADDR, value_name = "ADDR:PORT")]
    pub admin_addr: SocketAddr,
    /// Seconds between the two scrapes the rates are computed from.
    #[arg(long, default_value_t = 1.0)]
    pub interval_secs: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error(
        "cannot reach the admin endpoint at {addr} (is `mirror run` up, with this --admin-addr?)"
    )]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the admin endpoint at {addr} sent no HTTP response")]
    BadResponse { addr: SocketAddr },
    #[error("the admin endpoint sent metrics that do not parse")]
    Metrics(#[from] super::scrape::ScrapeError),
    #[error("--interval-secs must be positive and finite")]
    Interval,
}

/// Prints the summary to stdout.
pub async fn run(args: &StatusArgs) -> Result<(), StatusError> {
    if !(args.interval_secs.is_finite() && args.interval_secs > 0.0) {
        return Err(StatusError::Interval);
    }
    let addr = args.admin_addr;
    let before = Scrape::parse(&get(addr, "/metrics").await?.1)?;
    tokio::time::sleep(Duration::from_secs_f64(args.interval_secs)).await;
    let after = Scrape::parse(&get(addr, "/metrics").await?.1)?;
    let (ready_status, readiness) = get(addr, "/readyz").await?;
    print!(
        "{}",
        render(&Rendering {
            addr,
            ready: ready_status == 200,
            readiness: &readiness,
            before: &before,
            after: &after,
            seconds: args.interval_secs,
        })
    );
    Ok(())
}

/// Everything the summary is drawn from.
pub struct Rendering<'a> {
    pub addr: SocketAddr,
    pub ready: bool,
    /// `/readyz`'s body: `interface NAME attached|gone` lines.
    pub readiness: &'a str,
    pub before: &'a Scrape,
    pub after: &'a Scrape,
    pub seconds: f64,
}

/// Rows of an outcome table after the first (`mirrored`): label and metric.
const OUTCOMES: [(&str, &str); 3] = [
    ("answered", "mirror_relay_answered_total"),
    ("unanswered", "mirror_relay_unanswered_total"),
    ("dropped", "mirror_relay_dropped_total"),
];

/// The summary as aligned text.
pub fn render(r: &Rendering<'_>) -> String {
    let mut out = String::new();
    let state = if r.ready { "ready" } else { "NOT READY" };
    let _ = writeln!(out, "mirror agent at {}: {state}", r.addr);
    let interfaces: Vec<&str> = r
        .readiness
        .lines()
        .filter_map(|line| line.strip_prefix("interface "))
        .collect();
    if interfaces.is_empty() {
        let _ = writeln!(out, "interfaces: none attached");
    } else {
        let _ = writeln!(out, "interfaces: {}", interfaces.join(", "));
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "{:<28}{:>14}{:>14}", "requests", "total", "per second");
    // Under --config a request goes to each mirror whose share takes it: count the copies
    // handed to the relays, as the outcomes below do.
    let per_mirror = r.after.has("mirror_policy_requests_mirrored_total");
    let stage = if per_mirror {
        "mirror_policy"
    } else {
        "mirror_pipeline"
    };
    outcome_rows(&mut out, r, stage, &[]);
    // And each mirror's own share: one table each.
    let mirrors = label_values(
        r.after,
        "mirror_policy_requests_mirrored_total",
        &[],
        "mirror",
    );
    for mirror in mirrors {
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{:<28}{:>14}{:>14}",
            format!("mirror {mirror}"),
            "total",
            "per second"
        );
        outcome_rows(&mut out, r, "mirror_policy", &[("mirror", mirror)]);
    }
    grpc_rows(&mut out, r);
    let _ = writeln!(out);
    let _ = writeln!(out, "{:<28}{:>14}{:>14}", "capture", "total", "per second");
    for (label, metric) in [
        ("packets matched", "mirror_kernel_packets_matched_total"),
        ("ring-full drops", "mirror_kernel_ringbuf_full_drops_total"),
        ("truncations", "mirror_kernel_truncations_total"),
        ("gaps", "mirror_pipeline_gaps_total"),
        ("flows evicted", "mirror_pipeline_flows_evicted_total"),
    ] {
        row(&mut out, r, label, metric, &[]);
    }
    let _ = writeln!(out);
    let latency = "mirror_relay_response_latency_seconds";
    latency_line(&mut out, r.after, latency, None);
    // Under --config each mirror keeps its own histogram (label `mirror`).
    for sample in r.after.matching(&format!("{latency}_count"), &[]) {
        if let Some(mirror) = sample.label("mirror") {
            latency_line(&mut out, r.after, latency, Some(mirror));
        }
    }
    let _ = writeln!(
        out,
        "shadow: {:.0} connections open, {} queued; agent: {} resident, loop lag {}",
        r.after.sum("mirror_relay_shadow_connections", &[]),
        bytes(r.after.sum("mirror_relay_queued_bytes", &[])),
        bytes(r.after.sum("mirror_agent_resident_memory_bytes", &[])),
        millis(r.after.sum("mirror_agent_loop_lag_seconds", &[])),
    );
    let _ = writeln!(
        out,
        "ring buffer: {} of {} waiting to be read",
        bytes(r.after.sum("mirror_ring_used_bytes", &[])),
        bytes(r.after.sum("mirror_ring_size_bytes", &[])),
    );
    out
}

/// The `mirrored` row (from `<mirrored_stage>_requests_mirrored_total`), then each outcome
/// family's total with its members above zero (by class or reason), then `sampled out`; all
/// over the samples whose labels include `labels`.
fn outcome_rows(
    out: &mut String,
    r: &Rendering<'_>,
    mirrored_stage: &str,
    labels: &[(&str, &str)],
) {
    let mirrored = format!("{mirrored_stage}_requests_mirrored_total");
    row(out, r, "mirrored", &mirrored, labels);
    for (label, metric) in OUTCOMES {
        row(out, r, label, metric, labels);
        let by = if label == "answered" {
            "class"
        } else {
            "reason"
        };
        for value in label_values(r.after, metric, labels, by) {
            let mut member = labels.to_vec();
            member.push((by, value));
            if r.after.sum(metric, &member) > 0.0 {
                row(out, r, &format!("  {value}"), metric, &member);
            }
        }
    }
    let sampled_out = format!("{mirrored_stage}_requests_sampled_out_total");
    row(out, r, "sampled out", &sampled_out, labels);
}

/// gRPC calls, once any was mirrored: per method (mirrors added up), with the kinds other
/// than `ok` that happened.
fn grpc_rows(out: &mut String, r: &Rendering<'_>) {
    let calls = "mirror_relay_grpc_calls_total";
    if r.after.sum(calls, &[]) <= 0.0 {
        return;
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<28}{:>14}{:>14}",
        "grpc calls", "total", "per second"
    );
    for method in label_values(r.after, calls, &[], "method") {
        let by_method = [("method", method)];
        if r.after.sum(calls, &by_method) <= 0.0 {
            continue;
        }
        row(out, r, method, calls, &by_method);
        for kind in ["error", "no_status"] {
            let member = [("method", method), ("kind", kind)];
            if r.after.sum(calls, &member) > 0.0 {
                row(out, r, &format!("  {kind}"), calls, &member);
            }
        }
    }
}

/// One row: the total of `metric` over `labels` and its rate between the two scrapes.
fn row(out: &mut String, r: &Rendering<'_>, label: &str, metric: &str, labels: &[(&str, &str)]) {
    // `+ 0.0` turns the -0.0 an empty sum starts from into 0.
    let total = r.after.sum(metric, labels) + 0.0;
    let rate = (total - r.before.sum(metric, labels)).max(0.0) / r.seconds;
    let _ = writeln!(out, "{label:<28}{total:>14.0}{rate:>14.1}");
}

/// The values label `key` takes among the samples of `metric` matching `labels`, each once,
/// in the order they first appear.
fn label_values<'a>(
    scrape: &'a Scrape,
    metric: &'a str,
    labels: &'a [(&'a str, &'a str)],
    key: &str,
) -> Vec<&'a str> {
    let mut values: Vec<&str> = Vec::new();
    for sample in scrape.matching(metric, labels) {
        if let Some(value) = sample.label(key) {
            if !values.contains(&value) {
                values.push(value);
            }
        }
    }
    values
}

/// `v2 latency[ of MIRROR]: p50 ..  p90 ..  p99 ..  (over N responses)`.
fn latency_line(out: &mut String, scrape: &Scrape, latency: &str, mirror: Option<&str>) {
    let labels: Vec<(&str, &str)> = mirror.map(|m| ("mirror", m)).into_iter().collect();
    let of = mirror.map(|m| format!(" of {m}")).unwrap_or_default();
    let responses = scrape.sum(&format!("{latency}_count"), &labels);
    match [0.5, 0.9, 0.99].map(|q| scrape.quantile(latency, &labels, q)) {
        [Some(p50), Some(p90), Some(p99)] => {
            let _ = writeln!(
                out,
                "v2 latency{of}: p50 {}  p90 {}  p99 {}  (over {responses:.0} responses)",
                millis(p50),
                millis(p90),
                millis(p99)
            );
        }
        _ => {
            let _ = writeln!(out, "v2 latency{of}: no responses yet");
        }
    }
}

fn millis(seconds: f64) -> String {
    format!("{:.2} ms", seconds * 1e3)
}

fn bytes(n: f64) -> String {
    if n >= f64::from(1u32 << 20) {
        format!("{:.1} MiB", n / f64::from(1u32 << 20))
    } else if n >= 1024.0 {
        format!("{:.1} KiB", n / 1024.0)
    } else {
        format!("{n:.0} B")
    }
}

/// GET `path` over HTTP/1.1 with `Connection: close`; returns the status and body.
async fn get(addr: SocketAddr, path: &str) -> Result<(u16, String), StatusError> {
    let connect = |source| StatusError::Connect { addr, source };
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        // The endpoint's answers are a few hundred KiB at most.
        stream.take(64 << 20).read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(response)
    };
    let response = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| connect(std::io::ErrorKind::TimedOut.into()))?
        .map_err(connect)?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or(StatusError::BadResponse { addr })?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or(StatusError::BadResponse { addr })?;
    Ok((status, body.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_rates_reasons_and_quantiles() {
        let before = Scrape::parse(
            "mirror_pipeline_requests_mirrored_total 10\n\
             mirror_relay_answered_total{class=\"2xx\"} 8\n\
             mirror_relay_dropped_total{reason=\"queue_full\"} 0\n",
        )
        .unwrap();
        let after = Scrape::parse(
            "mirror_pipeline_requests_mirrored_total 30\n\
             mirror_relay_answered_total{class=\"2xx\"} 25\n\
             mirror_relay_dropped_total{reason=\"queue_full\"} 4\n\
             mirror_relay_dropped_total{reason=\"conn_limit\"} 0\n\
             mirror_relay_response_latency_seconds_bucket{le=\"0.001\"} 20\n\
             mirror_relay_response_latency_seconds_bucket{le=\"+Inf\"} 25\n\
             mirror_relay_response_latency_seconds_count 25\n",
        )
        .unwrap();
        let text = render(&Rendering {
            addr: "127.0.0.1:9477".parse().unwrap(),
            ready: true,
            readiness: "ready\ninterface n1 attached\n",
            before: &before,
            after: &after,
            seconds: 2.0,
        });
        assert!(
            text.contains(": ready\ninterfaces: n1 attached\n"),
            "{text}"
        );
        assert!(
            text.contains(&format!("{:<28}{:>14}{:>14}\n", "mirrored", 30, "10.0")),
            "{text}"
        );
        assert!(
            text.contains(&format!("{:<28}{:>14}{:>14}\n", "  2xx", 25, "8.5")),
            "{text}"
        );
        assert!(
            text.contains(&format!("{:<28}{:>14}{:>14}\n", "  queue_full", 4, "2.0")),
            "{text}"
        );
        assert!(
            !text.contains("conn_limit"),
            "zero reasons are left out: {text}"
        );
        assert!(!text.contains("grpc calls"), "no gRPC, no table: {text}");
        assert!(text.contains("v2 latency: p50 0.6"), "{text}");
    }

    #[test]
    fn each_mirror_gets_its_table_and_latency_line_and_the_ring_its_fill() {
        let after = Scrape::parse(
            "mirror_relay_response_latency_seconds_bucket{mirror=\"p/a:80\",le=\"0.001\"} 4\n\
             mirror_relay_response_latency_seconds_bucket{mirror=\"p/a:80\",le=\"+Inf\"} 4\n\
             mirror_relay_response_latency_seconds_count{mirror=\"p/a:80\"} 4\n\
             mirror_relay_response_latency_seconds_bucket{mirror=\"p/b:80\",le=\"0.001\"} 0\n\
             mirror_relay_response_latency_seconds_bucket{mirror=\"p/b:80\",le=\"+Inf\"} 0\n\
             mirror_relay_response_latency_seconds_count{mirror=\"p/b:80\"} 0\n\
             mirror_ring_used_bytes 2048\n\
             mirror_ring_size_bytes 4194304\n\
             mirror_policy_requests_mirrored_total{mirror=\"p/a:80\"} 6\n\
             mirror_policy_requests_mirrored_total{mirror=\"p/b:80\"} 3\n\
             mirror_policy_requests_sampled_out_total{mirror=\"p/a:80\"} 0\n\
             mirror_policy_requests_sampled_out_total{mirror=\"p/b:80\"} 3\n\
             mirror_relay_answered_total{class=\"2xx\",mirror=\"p/a:80\"} 4\n\
             mirror_relay_answered_total{class=\"2xx\",mirror=\"p/b:80\"} 1\n\
             mirror_relay_dropped_total{reason=\"queue_full\",mirror=\"p/a:80\"} 2\n\
             mirror_relay_dropped_total{reason=\"queue_full\",mirror=\"p/b:80\"} 0\n",
        )
        .unwrap();
        let text = render(&Rendering {
            addr: "127.0.0.1:9477".parse().unwrap(),
            ready: true,
            readiness: "ready\n",
            before: &Scrape::default(),
            after: &after,
            seconds: 1.0,
        });
        assert!(
            text.contains(
                "v2 latency: p50 0.50 ms  p90 0.90 ms  p99 0.99 ms  (over 4 responses)\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "v2 latency of p/a:80: p50 0.50 ms  p90 0.90 ms  p99 0.99 ms  (over 4 responses)\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("v2 latency of p/b:80: no responses yet\n"),
            "{text}"
        );
        // The totals add the mirrors up, each class or reason once.
        let row =
            |label: &str, total: u32, rate: &str| format!("{label:<28}{total:>14}{rate:>14}\n");
        assert!(text.contains(&row("mirrored", 9, "9.0")), "{text}");
        assert!(text.contains(&row("  2xx", 5, "5.0")), "{text}");
        assert_eq!(text.matches("  2xx ").count(), 3, "{text}");
        // Then one table per mirror, with its own share.
        let a = format!(
            "{:<28}{:>14}{:>14}\n{}{}{}{}{}{}{}",
            "mirror p/a:80",
            "total",
            "per second",
            row("mirrored", 6, "6.0"),
            row("answered", 4, "4.0"),
            row("  2xx", 4, "4.0"),
            row("unanswered", 0, "0.0"),
            row("dropped", 2, "2.0"),
            row("  queue_full", 2, "2.0"),
            row("sampled out", 0, "0.0"),
        );
        assert!(text.contains(&a), "{text}");
        assert!(text.contains(&row("sampled out", 3, "3.0")), "{text}");
        assert!(
            text.contains("ring buffer: 2.0 KiB of 4.0 MiB waiting to be read\n"),
            "{text}"
        );
    }

    #[test]
    fn grpc_calls_are_listed_per_method_with_what_failed() {
        let metric = |method: &str, kind: &str, mirror: &str, n: u32| {
            format!(
                "mirror_relay_grpc_calls_total{{method=\"{method}\",kind=\"{kind}\",mirror=\"{mirror}\"}} {n}\n"
            )
        };
        let after: String = [
            metric("/s.S/Get", "ok", "p/a:80", 5),
            metric("/s.S/Get", "ok", "p/b:80", 2),
            metric("/s.S/Get", "error", "p/a:80", 1),
            metric("/s.S/Get", "no_status", "p/a:80", 0),
            metric("/s.S/Put", "no_status", "p/a:80", 3),
            metric("other", "ok", "p/a:80", 0),
        ]
        .concat();
        let text = render(&Rendering {
            addr: "127.0.0.1:9477".parse().unwrap(),
            ready: true,
            readiness: "ready\n",
            before: &Scrape::default(),
            after: &Scrape::parse(&after).unwrap(),
            seconds: 1.0,
        });
        let row =
            |label: &str, total: u32, rate: &str| format!("{label:<28}{total:>14}{rate:>14}\n");
        let table = format!(
            "{:<28}{:>14}{:>14}\n{}{}{}{}\n",
            "grpc calls",
            "total",
            "per second",
            row("/s.S/Get", 8, "8.0"),
            row("  error", 1, "1.0"),
            row("/s.S/Put", 3, "3.0"),
            row("  no_status", 3, "3.0"),
        );
        assert!(text.contains(&table), "{text}");
        assert!(
            !text.contains("other"),
            "methods without calls are left out: {text}"
        );
    }
}
