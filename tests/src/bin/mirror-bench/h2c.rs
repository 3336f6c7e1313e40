//! HTTP/2 (h2c): h2load (Debian's nghttp2-client) against nghttpd in v1, four ways: nothing
//! mirroring (baseline); the agent under a `protocol: http2` policy, each stream replayed on
//! its own HTTP/2 connection to nghttpd in v2 (mirror); Envoy proxying to v1 with
//! `request_mirror_policies` to v2, both upstreams HTTP/2 (envoy); a second h2load in the
//! node sending v2 the same load while the client loads v1 (ideal: a mirror that costs
//! nothing). Completeness is what reached v2 over what the client completed: for the agent,
//! streams v2 answered `2xx` (its relay's count); for Envoy, its shadow cluster's `2xx`; for
//! the ideal mode, the second h2load's successes.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use mirror_tests::{agent::counter, agent::Agent, Host, Netns, Process, Testbed};

use super::envoy::{self, Envoy};
use super::mode::start_run;
use super::procstat::group_cpu_seconds;

/// The service VIP leading to v1's nghttpd (the other sections' VIPs are 198.19.0.10-13).
const VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 20);
const SERVICE_PORT: u16 = 8000;
/// Where nghttpd listens in v1 and v2.
const BACKEND_PORT: u16 = 8080;
/// Where Envoy listens on the node (the client's gateway address), and its admin port.
const ENVOY_PORT: u16 = 8083;
const ENVOY_ADMIN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9902);
/// The file h2load asks for: 3 bytes, so that the backend costs little.
const PATH: &str = "/a";

/// How much load, how long, how often.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct H2Plan {
    pub seconds: u64,
    pub rounds: u32,
    /// h2load's clients (connections) and streams in flight per connection (`-c`, `-m`).
    pub clients: u32,
    pub streams: u32,
    /// Fixed-rate runs after the saturating ones, at these fractions of what the baseline
    /// carried (h2load's `--rps`, spread over the clients), one round each.
    pub rate_fractions: &'static [f64],
}

impl H2Plan {
    pub const SMOKE: H2Plan = H2Plan {
        seconds: 2,
        rounds: 1,
        clients: 8,
        streams: 10,
        rate_fractions: &[0.1],
    };
    pub const FULL: H2Plan = H2Plan {
        seconds: 3,
        rounds: 2,
        clients: 8,
        streams: 10,
        rate_fractions: &[0.05, 0.1, 0.25],
    };
}

/// What the client offers: all it can, or a fixed number of requests per second.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub enum H2Offered {
    Saturate,
    Rate(u64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum H2Mode {
    Baseline,
    Mirror,
    Envoy,
    Ideal,
}

const MODES: [H2Mode; 4] = [
    H2Mode::Baseline,
    H2Mode::Ideal,
    H2Mode::Mirror,
    H2Mode::Envoy,
];

impl H2Mode {
    pub fn name(self) -> &'static str {
        match self {
            H2Mode::Baseline => "baseline",
            H2Mode::Mirror => "mirror",
            H2Mode::Envoy => "envoy",
            H2Mode::Ideal => "ideal",
        }
    }
}

/// What h2load said about one run.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct H2Load {
    pub succeeded: u64,
    pub failed: u64,
    pub rps: f64,
}

/// One run of one mode.
#[derive(Clone, Debug, serde::Serialize)]
pub struct H2Sample {
    pub round: u32,
    pub offered: H2Offered,
    pub mode: H2Mode,
    pub load: H2Load,
    /// Streams that reached v2 and were answered `2xx` (see the module doc).
    pub mirrored: Option<u64>,
    /// CPU seconds of the mirroring component (the agent or Envoy) during the load.
    pub cpu_seconds: Option<f64>,
    /// The agent's summary line.
    pub summary: Option<String>,
}

impl H2Sample {
    pub fn completeness(&self) -> Option<f64> {
        let mirrored = self.mirrored? as f64;
        (self.load.succeeded > 0).then(|| mirrored / self.load.succeeded as f64)
    }

    /// CPU milliseconds per 1,000 mirrored streams.
    pub fn cpu_ms_per_1k(&self) -> Option<f64> {
        let mirrored = self.mirrored.filter(|&m| m > 0)? as f64;
        Some(self.cpu_seconds? * 1e6 / mirrored)
    }
}

/// The h2c section's own test-bed: client, v1 and v2 with nghttpd, a VIP leading to v1.
struct H2Bed {
    _servers: [Process; 2],
    client: Host,
    v1: Host,
    v2: Host,
    testbed: Testbed,
}

impl H2Bed {
    fn new() -> Result<H2Bed> {
        let mut testbed = Testbed::with_label("h2c")?;
        let client = testbed.add_host("client")?;
        let v1 = testbed.add_host("v1")?;
        let v2 = testbed.add_host("v2")?;
        testbed.add_service(IpAddr::V4(VIP), SERVICE_PORT, &v1, BACKEND_PORT)?;
        let docroot = testbed.log_dir().join("h2c-docroot");
        std::fs::create_dir_all(&docroot)
            .with_context(|| format!("create {}", docroot.display()))?;
        std::fs::write(docroot.join(&PATH[1..]), "ok\n").context("write the page")?;
        let servers = [nghttpd(&v1, &docroot)?, nghttpd(&v2, &docroot)?];
        Ok(H2Bed {
            _servers: servers,
            client,
            v1,
            v2,
            testbed,
        })
    }

    fn gateway(&self) -> Ipv4Addr {
        let [a, b, c, _] = self.client.ipv4().octets();
        Ipv4Addr::new(a, b, c, 1)
    }

    fn backend(&self, host: &Host) -> SocketAddr {
        SocketAddr::new(host.ipv4().into(), BACKEND_PORT)
    }
}

fn nghttpd(host: &Host, docroot: &Path) -> Result<Process> {
    let root = docroot.display().to_string();
    let port = BACKEND_PORT.to_string();
    let process = host
        .ns()
        .spawn("nghttpd", &["nghttpd", "--no-tls", "-d", &root, &port])
        .context("nghttpd (Debian's nghttp2-server)")?;
    host.ns()
        .wait_for_tcp(
            SocketAddr::new(host.ipv4().into(), BACKEND_PORT),
            Duration::from_secs(10),
        )
        .context("nghttpd listening")?;
    Ok(process)
}

/// Every mode once per round, the order rotated each round: at saturation for the plan's
/// rounds, then once at each fixed rate.
pub fn run(envoy_bin: &Path, dir: &Path, plan: H2Plan) -> Result<Vec<H2Sample>> {
    let bed = H2Bed::new()?;
    let mut samples = Vec::new();
    let round_of_modes = |samples: &mut Vec<H2Sample>, round: u32, offered| -> Result<()> {
        let shift = round as usize % MODES.len();
        for &mode in MODES.iter().cycle().skip(shift).take(MODES.len()) {
            let run_dir = dir.join(format!("{}-{}", samples.len(), mode.name()));
            std::fs::create_dir_all(&run_dir)
                .with_context(|| format!("create {}", run_dir.display()))?;
            let sample = run_one(&bed, envoy_bin, &run_dir, plan, round, offered, mode)
                .with_context(|| format!("h2c {} {offered:?}", mode.name()))?;
            eprintln!(
                "bench: h2c round {round} {offered:?} {}: {:.0} req/s, failed {}, mirrored {:?}, cpu {:?} s",
                mode.name(),
                sample.load.rps,
                sample.load.failed,
                sample.mirrored,
                sample.cpu_seconds
            );
            samples.push(sample);
        }
        Ok(())
    };
    for round in 0..plan.rounds.max(1) {
        round_of_modes(&mut samples, round, H2Offered::Saturate)?;
    }
    let baseline: Vec<f64> = samples
        .iter()
        .filter(|s| s.mode == H2Mode::Baseline)
        .map(|s| s.load.rps)
        .collect();
    let carried = baseline.iter().sum::<f64>() / baseline.len().max(1) as f64;
    for &fraction in plan.rate_fractions {
        let rate = ((carried * fraction) as u64).max(u64::from(plan.clients));
        round_of_modes(&mut samples, 0, H2Offered::Rate(rate))?;
    }
    Ok(samples)
}

fn run_one(
    bed: &H2Bed,
    envoy_bin: &Path,
    dir: &Path,
    plan: H2Plan,
    round: u32,
    offered: H2Offered,
    mode: H2Mode,
) -> Result<H2Sample> {
    let plan = Load { plan, offered };
    let service = SocketAddr::new(VIP.into(), SERVICE_PORT);
    let url = |addr: SocketAddr| format!("http://{addr}{PATH}");
    let mut sample = H2Sample {
        round,
        offered,
        mode,
        load: H2Load::default(),
        mirrored: None,
        cpu_seconds: None,
        summary: None,
    };
    match mode {
        H2Mode::Baseline => sample.load = h2load(bed.client.ns(), &url(service), plan)?,
        H2Mode::Ideal => {
            let shadow = spawn_h2load(bed.testbed.node(), &url(bed.backend(&bed.v2)), plan)?;
            sample.load = h2load(bed.client.ns(), &url(service), plan)?;
            let shadow = wait_h2load(shadow, plan.plan)?;
            sample.mirrored = Some(shadow.succeeded);
        }
        H2Mode::Mirror => {
            let agent = start_agent(bed, dir)?;
            let cpu = group_cpu_seconds(agent.pid())?;
            sample.load = h2load(bed.client.ns(), &url(service), plan)?;
            settle(Duration::from_secs(1));
            sample.cpu_seconds = Some(group_cpu_seconds(agent.pid())? - cpu);
            let stderr = agent.stop(libc::SIGTERM)?;
            // Under a config file the summary line has the mirrors' relay counters summed.
            let summary = stderr
                .lines()
                .rfind(|line| line.contains("answered="))
                .with_context(|| format!("no summary in the agent's stderr: {stderr}"))?
                .to_owned();
            sample.mirrored = Some(counter(&summary, "answered_2xx").unwrap_or(0));
            sample.summary = Some(summary);
        }
        H2Mode::Envoy => {
            let listen = SocketAddr::new(bed.gateway().into(), ENVOY_PORT);
            let config = envoy::h2_config(
                listen,
                bed.backend(&bed.v1),
                bed.backend(&bed.v2),
                ENVOY_ADMIN,
            );
            let envoy = Envoy::start(bed.testbed.node(), envoy_bin, dir, &config, listen)?;
            let before = envoy_shadow_2xx(bed.testbed.node())?;
            let cpu = group_cpu_seconds(envoy.process.pid())?;
            sample.load = h2load(bed.client.ns(), &url(listen), plan)?;
            settle(Duration::from_secs(1));
            sample.cpu_seconds = Some(group_cpu_seconds(envoy.process.pid())? - cpu);
            sample.mirrored = Some(envoy_shadow_2xx(bed.testbed.node())? - before);
        }
    }
    Ok(sample)
}

fn settle(time: Duration) {
    std::thread::sleep(time);
}

/// `mirror run` under a config file whose one policy is `protocol: http2`, mirroring the VIP
/// to v2's nghttpd.
fn start_agent(bed: &H2Bed, dir: &Path) -> Result<Agent> {
    let config = format!(
        "interfaces: [{iface}]\npolicies:\n- name: h2\n  target: {{address: {VIP}, port: {SERVICE_PORT}}}\n  protocol: http2\n  mirrors:\n  - backend: {shadow}\n",
        iface = bed.client.node_ifname(),
        shadow = bed.backend(&bed.v2),
    );
    let path = dir.join("mirror.yaml");
    std::fs::write(&path, config).with_context(|| format!("write {}", path.display()))?;
    let args = ["run", "--config", &path.display().to_string()].map(str::to_owned);
    start_run(&bed.testbed, "mirror-run", args.to_vec())
}

/// The plan and what one run offers.
#[derive(Clone, Copy)]
struct Load {
    plan: H2Plan,
    offered: H2Offered,
}

fn h2load_argv(url: &str, load: Load) -> Vec<String> {
    let plan = load.plan;
    let mut argv: Vec<String> = [
        "h2load",
        "-D",
        &plan.seconds.to_string(),
        "-c",
        &plan.clients.to_string(),
        "-m",
        &plan.streams.to_string(),
        "-t",
        "1",
    ]
    .map(str::to_owned)
    .to_vec();
    if let H2Offered::Rate(rate) = load.offered {
        let per_client = (rate / u64::from(plan.clients.max(1))).max(1);
        argv.extend(["--rps".to_owned(), per_client.to_string()]);
    }
    argv.push(url.to_owned());
    argv
}

fn h2load(ns: &Netns, url: &str, plan: Load) -> Result<H2Load> {
    let out = ns
        .exec_ok(&h2load_argv(url, plan))
        .context("h2load (Debian's nghttp2-client)")?;
    parse(&out)
}

fn spawn_h2load(ns: &Netns, url: &str, plan: Load) -> Result<Process> {
    ns.spawn("h2load-shadow", &h2load_argv(url, plan))
}

fn wait_h2load(mut process: Process, plan: H2Plan) -> Result<H2Load> {
    let deadline = Instant::now() + Duration::from_secs(plan.seconds + 30);
    while process.try_status()?.is_none() {
        if Instant::now() > deadline {
            bail!("the shadow's h2load did not finish");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let path: PathBuf = process.stdout_path().to_owned();
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    parse(&text)
}

/// Reads h2load's `finished in 2.00s, 173225.00 req/s, ...` and `requests: N total, ...,
/// S succeeded, F failed, E errored, T timeout` lines.
fn parse(out: &str) -> Result<H2Load> {
    let rps = out
        .lines()
        .find_map(|l| l.strip_prefix("finished in "))
        .and_then(|l| l.split(", ").nth(1))
        .and_then(|r| r.strip_suffix(" req/s"))
        .and_then(|r| r.parse::<f64>().ok())
        .with_context(|| format!("no req/s in h2load's output:\n{out}"))?;
    let requests = out
        .lines()
        .find_map(|l| l.strip_prefix("requests: "))
        .with_context(|| format!("no requests line in h2load's output:\n{out}"))?;
    let field = |name: &str| -> u64 {
        requests
            .split(", ")
            .find_map(|f| f.strip_suffix(name)?.trim().parse().ok())
            .unwrap_or(0)
    };
    Ok(H2Load {
        succeeded: field(" succeeded"),
        failed: field(" failed") + field(" errored") + field(" timeout"),
        rps,
    })
}

/// Envoy's count of `2xx` answers from its shadow cluster.
fn envoy_shadow_2xx(node: &Netns) -> Result<u64> {
    let url = format!("http://{ENVOY_ADMIN}/stats?filter=^cluster\\.shadow\\.upstream_rq_2xx$");
    let out = node
        .exec_ok(&["curl", "-sS", "--max-time", "5", &url])
        .context("Envoy's admin stats")?;
    Ok(out
        .lines()
        .find_map(|l| l.strip_prefix("cluster.shadow.upstream_rq_2xx: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0))
}

/// The h2c tables, at saturation and at each fixed rate: per mode, the means over the
/// rounds.
pub fn markdown(samples: &[H2Sample], plan: H2Plan) -> String {
    let mut md = format!(
        "### HTTP/2 (h2c): h2load, {} clients x {} streams, {} s per run\n\n",
        plan.clients, plan.streams, plan.seconds
    );
    let mut offers: Vec<H2Offered> = Vec::new();
    for s in samples {
        if !offers.contains(&s.offered) {
            offers.push(s.offered);
        }
    }
    for offered in offers {
        let of: Vec<H2Sample> = samples
            .iter()
            .filter(|s| s.offered == offered)
            .cloned()
            .collect();
        let title = match offered {
            H2Offered::Saturate => format!("saturation, {} round(s)", plan.rounds),
            H2Offered::Rate(rate) => format!("{rate} req/s offered"),
        };
        md.push_str(&format!("{title}:\n\n{}\n", table(&of)));
    }
    md
}

fn table(samples: &[H2Sample]) -> String {
    let mut md = "| mode | req/s | vs baseline | failed | completeness at v2 | CPU ms per 1,000 mirrored streams |\n\
         |---|---|---|---|---|---|\n"
        .to_owned();
    let mean = |values: Vec<f64>| -> Option<f64> {
        (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
    };
    for mode in [
        H2Mode::Baseline,
        H2Mode::Mirror,
        H2Mode::Envoy,
        H2Mode::Ideal,
    ] {
        let runs: Vec<&H2Sample> = samples.iter().filter(|s| s.mode == mode).collect();
        let Some(rps) = mean(runs.iter().map(|s| s.load.rps).collect()) else {
            continue;
        };
        let vs = mean(
            runs.iter()
                .filter_map(|s| {
                    let base = samples
                        .iter()
                        .find(|b| b.mode == H2Mode::Baseline && b.round == s.round)?;
                    (base.load.rps > 0.0).then(|| s.load.rps / base.load.rps)
                })
                .collect(),
        );
        let failed: u64 = runs.iter().map(|s| s.load.failed).sum();
        let completeness = mean(runs.iter().filter_map(|s| s.completeness()).collect());
        let cpu = mean(runs.iter().filter_map(|s| s.cpu_ms_per_1k()).collect());
        let pct = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{:.1}%", v * 100.0));
        md.push_str(&format!(
            "| {} | {rps:.0} | {} | {failed} | {} | {} |\n",
            mode.name(),
            vs.map_or("-".to_owned(), |v| format!("x{v:.2}")),
            pct(completeness),
            cpu.map_or("-".to_owned(), |v| format!("{v:.1}")),
        ));
    }
    md
}

/// Least completeness of a mirroring mode at a fixed rate in the smoke run (a tenth of what
/// the baseline carried): it catches a broken mode, not a regression. Measured: 100.0% for
/// the agent and 100.6% for Envoy.
const MIN_COMPLETENESS_AT_RATE: f64 = 0.9;

/// What makes the smoke's h2c runs fail: a mode that served nothing or mostly failed, a
/// mirror that delivered nothing at saturation (where the agent drops what v2 cannot take in
/// time, counted) or far from everything at a fixed rate, or an agent whose streams do not
/// each have one outcome.
pub fn problems(samples: &[H2Sample]) -> Vec<String> {
    let mut problems = Vec::new();
    for s in samples {
        let what = format!("h2c {} {:?}", s.mode.name(), s.offered);
        if s.load.succeeded == 0 {
            problems.push(format!("{what}: no request succeeded"));
        } else if s.load.failed * 100 > s.load.succeeded {
            problems.push(format!("{what}: {} requests failed", s.load.failed));
        }
        if s.mode == H2Mode::Baseline {
            continue;
        }
        let floor = match s.offered {
            H2Offered::Saturate => f64::MIN_POSITIVE,
            H2Offered::Rate(_) => MIN_COMPLETENESS_AT_RATE,
        };
        if s.completeness().is_none_or(|c| c < floor) {
            problems.push(format!(
                "{what}: completeness {:?} ({:?})",
                s.completeness(),
                s.summary
            ));
        }
        if let Some(summary) = &s.summary {
            if let Err(error) = mirror_tests::agent::relay_conserved(summary) {
                problems.push(format!("{what}: {error:#}"));
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn h2loads_summary_is_read() {
        let out = "finished in 2.00s, 173225.00 req/s, 4.96MB/s\n\
            requests: 346450 total, 346530 started, 346450 done, 346400 succeeded, 40 failed, 10 errored, 0 timeout\n";
        let load = parse(out).unwrap();
        assert_eq!((load.succeeded, load.failed), (346_400, 50));
        assert!((load.rps - 173_225.0).abs() < 0.1);
        assert!(parse("nothing").is_err());
    }
}
