//! The load generators: wrk for saturation (fixed connections and duration), `mirror-load`
//! (tests/src/bin/mirror-load, open-loop) for a fixed offered rate. Both print the same line.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, Result};
use mirror_tests::Netns;

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
    /// The same with the node's and the client's kernel-default sysctls (no TIME_WAIT reuse,
    /// ports 32768-60999); every other run has the bed's tuned ones.
    CloseDefaultSysctls,
}

impl Conn {
    pub fn name(self) -> &'static str {
        match self {
            Conn::KeepAlive => "keep-alive",
            Conn::Close => "close",
            Conn::CloseDefaultSysctls => "close, kernel-default sysctls",
        }
    }

    /// Whether the run leaves the bed's sysctls at the kernel's defaults.
    pub fn default_sysctls(self) -> bool {
        self == Conn::CloseDefaultSysctls
    }
}

/// Connections the client keeps open: enough to saturate two cores, few enough that the
/// backends' single workers are not drowned in connection handling.
pub const CONNECTIONS: u32 = 32;

/// Where a load goes: the address, the request path and the Host header.
#[derive(Clone, Copy, Debug)]
pub struct Target<'a> {
    pub addr: SocketAddr,
    pub path: &'a str,
    pub host: &'a str,
}

impl Target<'_> {
    fn url(&self) -> String {
        format!("http://{}{}", self.addr, self.path)
    }
}

/// Runs wrk (2 threads, [`CONNECTIONS`] connections) against `target` for `duration`, in `ns`.
pub fn wrk(
    ns: &Netns,
    dir: &Path,
    target: Target<'_>,
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
        &format!("Host: {}", target.host),
        "-s",
    ]
    .map(str::to_owned)
    .to_vec();
    argv.push(script.display().to_string());
    if conn != Conn::KeepAlive {
        argv.extend(["-H".to_owned(), "Connection: close".to_owned()]);
    }
    argv.push(target.url());
    let out = ns.exec_ok(&argv)?;
    parse_report(&out).with_context(|| format!("unexpected wrk output:\n{out}"))
}

/// Runs `mirror-load` at a fixed `rate` over [`CONNECTIONS`] keep-alive connections for
/// `duration`, in `ns`. It is open-loop: latency counts from each request's due time, so a
/// stalled server shows in the percentiles instead of slowing the offered load.
pub fn fixed_rate(
    ns: &Netns,
    generator: &Path,
    target: Target<'_>,
    rate: u64,
    duration: Duration,
) -> Result<Load> {
    let argv: Vec<String> = vec![
        generator.display().to_string(),
        "--rate".to_owned(),
        rate.to_string(),
        "--connections".to_owned(),
        CONNECTIONS.to_string(),
        "--seconds".to_owned(),
        duration.as_secs().max(1).to_string(),
        "--host".to_owned(),
        target.host.to_owned(),
        target.url(),
    ];
    let out = ns.exec_ok(&argv)?;
    parse_report(&out).with_context(|| format!("unexpected mirror-load output:\n{out}"))
}

/// The `BENCH` line that wrk's script and mirror-load print.
fn parse_report(out: &str) -> Result<Load> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_line_of_wrk_and_mirror_load() {
        let out = "Running 2s test\nBENCH requests=2000 duration_us=2000000 errors=1 \
                   p50_us=300 p99_us=900 p999_us=1500 late=0\n";
        let load = parse_report(out).unwrap();
        assert_eq!((load.requests, load.errors), (2000, 1));
        assert_eq!(load.rps(), 1000.0);
        assert_eq!(
            (load.p50_us, load.p99_us, load.p999_us),
            (300.0, 900.0, 1500.0)
        );
        assert!(parse_report("BENCH requests=1").is_err());
        assert!(parse_report("nothing").is_err());
    }
}
