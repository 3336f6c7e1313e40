//! The load generators: wrk for saturation (fixed connections and duration), oha for a fixed
//! offered rate. Both run in the client pod and report the same numbers.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use mirror_tests::Netns;

use super::bed::HOST_HEADER;

/// wrk's Lua hook: prints one machine-readable line after the run, with the p99.9 that
/// `--latency` does not show.
const WRK_REPORT: &str = r#"done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH requests=%d duration_us=%d errors=%d p50_us=%d p99_us=%d p999_us=%d\n",
    summary.requests, summary.duration,
    e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9)))
end
"#;

/// What the client saw in one run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Load {
    pub requests: u64,
    pub seconds: f64,
    pub errors: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
}

impl Load {
    pub fn rps(&self) -> f64 {
        self.requests as f64 / self.seconds
    }
}

/// How the client connects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Conn {
    /// Keep-alive connections, reused for every request.
    KeepAlive,
    /// `Connection: close`: a new TCP connection per request.
    Close,
}

impl Conn {
    pub fn name(self) -> &'static str {
        match self {
            Conn::KeepAlive => "keep-alive",
            Conn::Close => "close",
        }
    }
}

/// Connections the client keeps open: enough to saturate two cores, few enough that the
/// backends' single workers are not drowned in connection handling.
pub const CONNECTIONS: u32 = 32;

/// Runs wrk (2 threads) against `addr` for `duration`.
pub fn wrk(
    client: &Netns,
    dir: &Path,
    addr: SocketAddr,
    path: &str,
    conn: Conn,
    duration: Duration,
) -> Result<Load> {
    let script = dir.join("wrk-report.lua");
    std::fs::write(&script, WRK_REPORT).with_context(|| format!("write {}", script.display()))?;
    let mut argv: Vec<String> = [
        "wrk",
        "-t2",
        &format!("-c{CONNECTIONS}"),
        &format!("-d{}s", duration.as_secs().max(1)),
        "--timeout",
        "5s",
        "-H",
        &format!("Host: {HOST_HEADER}"),
        "-s",
    ]
    .map(str::to_owned)
    .to_vec();
    argv.push(script.display().to_string());
    if conn == Conn::Close {
        argv.extend(["-H".to_owned(), "Connection: close".to_owned()]);
    }
    argv.push(format!("http://{addr}{path}"));
    let out = client.exec_ok(&argv)?;
    parse_wrk(&out).with_context(|| format!("unexpected wrk output:\n{out}"))
}

fn parse_wrk(out: &str) -> Result<Load> {
    let line = out
        .lines()
        .find_map(|line| line.strip_prefix("BENCH "))
        .context("no BENCH line")?;
    let field = |name: &str| -> Result<f64> {
        line.split(' ')
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .with_context(|| format!("no {name}"))?
            .parse()
            .with_context(|| format!("bad {name}"))
    };
    Ok(Load {
        requests: field("requests")? as u64,
        seconds: field("duration_us")? / 1e6,
        errors: field("errors")? as u64,
        p50_us: field("p50_us")?,
        p99_us: field("p99_us")?,
        p999_us: field("p999_us")?,
    })
}

/// Runs oha at a fixed `rate` (keep-alive, [`CONNECTIONS`] connections) for `duration`, with
/// latency measured from each request's scheduled start (`--latency-correction`), so that a
/// stalled server shows in the percentiles instead of slowing the offered load.
pub fn oha(
    client: &Netns,
    oha: &Path,
    addr: SocketAddr,
    path: &str,
    rate: u64,
    duration: Duration,
) -> Result<Load> {
    let argv: Vec<String> = vec![
        oha.display().to_string(),
        "--no-tui".to_owned(),
        "--output-format".to_owned(),
        "json".to_owned(),
        "--latency-correction".to_owned(),
        "-c".to_owned(),
        CONNECTIONS.to_string(),
        "-q".to_owned(),
        rate.to_string(),
        "-z".to_owned(),
        format!("{}s", duration.as_secs().max(1)),
        "-H".to_owned(),
        format!("Host: {HOST_HEADER}"),
        format!("http://{addr}{path}"),
    ];
    let out = client.exec_ok(&argv)?;
    parse_oha(&out).with_context(|| format!("unexpected oha output:\n{out}"))
}

fn parse_oha(out: &str) -> Result<Load> {
    let json: serde_json::Value = serde_json::from_str(out.trim()).context("not JSON")?;
    let number = |pointer: &str| -> Result<f64> {
        json.pointer(pointer)
            .and_then(serde_json::Value::as_f64)
            .with_context(|| format!("no {pointer}"))
    };
    let statuses = json
        .pointer("/statusCodeDistribution")
        .and_then(serde_json::Value::as_object);
    let count =
        |map: Option<&serde_json::Map<String, serde_json::Value>>, ok: fn(&str) -> bool| -> u64 {
            map.into_iter()
                .flatten()
                .filter(|(key, _)| ok(key))
                .filter_map(|(_, n)| n.as_u64())
                .sum()
        };
    let ok = count(statuses, |code| code.starts_with('2'));
    let bad = count(statuses, |code| !code.starts_with('2'));
    // Requests still in flight when `-z` ends are "aborted due to deadline": cut by the
    // run's end, not failed by the server.
    let failed = count(
        json.pointer("/errorDistribution")
            .and_then(serde_json::Value::as_object),
        |error| !error.contains("deadline"),
    );
    if ok == 0 {
        bail!("no successful request");
    }
    Ok(Load {
        requests: ok + bad,
        seconds: number("/summary/total")?,
        errors: bad + failed,
        p50_us: number("/latencyPercentiles/p50")? * 1e6,
        p99_us: number("/latencyPercentiles/p99")? * 1e6,
        p999_us: number("/latencyPercentiles/p99.9")? * 1e6,
    })
}
