//! The attack mix: a hostile pod (its own namespace and veth, the agent attached to it like to
//! any pod) runs each attack of issue 10 while a well-behaved pod's requests are mirrored; the
//! agent's CPU per 1,000 hostile packets of each kind (its CPU over the round less that of a
//! round of the good load alone) and the well-behaved pod's completeness at v2 meanwhile.
//! Then what capturing v1's direction costs: kernel ns per packet and agent CPU per request,
//! with v1's side captured (the default) and with `--no-reverse`.

use std::fmt::Write as _;
use std::net::{SocketAddrV4, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use mirror_tests::{
    agent::Agent,
    hostile::{attacks, cpu_time, drop_own_rsts, sink_get, Lcg, RawSender},
    Process,
};

use super::agent_summary::AgentStats;
use super::bed::{Bed, DISCARD_VIP, SERVICE_PORT, SINK_PORT, SINK_VIP};
use super::mode::start_run;

/// How big each attack is.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct AttackPlan {
    pub syns: u32,
    pub forged: u32,
    /// Live connections of the hostile pod the flow attacks use.
    pub live_flows: usize,
    pub out_of_order_per_flow: usize,
    /// Times the 2^31-ahead and off-window-RST attacks run over every live flow.
    pub repeat_per_flow: usize,
    pub garbage_bytes: usize,
    /// Requests of the well-behaved pod per round, at `good_rate` a second, one connection each.
    pub good_requests: usize,
    pub good_rate: usize,
    /// Keep-alive requests of each v1-direction cost run.
    pub cost_requests: usize,
    /// Cost runs with and without v1's side, alternating.
    pub cost_runs: usize,
}

impl AttackPlan {
    pub const FULL: AttackPlan = AttackPlan {
        syns: 65_536,
        forged: 100_000,
        live_flows: 200,
        out_of_order_per_flow: 500,
        repeat_per_flow: 50,
        garbage_bytes: 16 << 20,
        good_requests: 200,
        good_rate: 100,
        cost_requests: 20_000,
        cost_runs: 2,
    };
    pub const SMOKE: AttackPlan = AttackPlan {
        syns: 4_096,
        forged: 1_000,
        live_flows: 20,
        out_of_order_per_flow: 20,
        repeat_per_flow: 2,
        garbage_bytes: 64 << 10,
        good_requests: 40,
        good_rate: 100,
        cost_requests: 500,
        cost_runs: 1,
    };
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct AttackSample {
    pub kind: &'static str,
    /// Packets the hostile pod forged (or, for garbage, full-sized segments it sent).
    pub packets: u64,
    /// The agent's CPU over the round less that of the good load alone, in ms.
    pub agent_cpu_ms: f64,
    pub good_requests: u64,
    /// Of those, how many v2 got.
    pub good_at_v2: u64,
}

impl AttackSample {
    pub fn cpu_ms_per_1000(&self) -> f64 {
        self.agent_cpu_ms * 1000.0 / self.packets.max(1) as f64
    }

    pub fn completeness(&self) -> f64 {
        self.good_at_v2 as f64 / self.good_requests.max(1) as f64
    }
}

/// One run of the v1-direction cost.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DirectionCost {
    /// v1's side captured too (the default); false: `--no-reverse`.
    pub reverse: bool,
    pub requests: u64,
    pub at_v2: u64,
    pub agent_cpu_ms: f64,
    pub agent: AgentStats,
}

impl DirectionCost {
    pub fn cpu_us_per_request(&self) -> f64 {
        self.agent_cpu_ms * 1000.0 / self.requests.max(1) as f64
    }

    /// Kernel program time, all hooks together, per mirrored request.
    pub fn kernel_ns_per_request(&self) -> f64 {
        self.agent.bpf_run_time_ns as f64 / self.requests.max(1) as f64
    }
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Attacks {
    pub plan: AttackPlan,
    /// The good load alone, agent CPU in ms.
    pub baseline_cpu_ms: f64,
    pub samples: Vec<AttackSample>,
    pub costs: Vec<DirectionCost>,
}

fn start_agent(bed: &Bed, no_reverse: bool) -> Result<Agent> {
    let mut args: Vec<String> = [
        "run",
        "--iface",
        bed.client.node_ifname(),
        "--iface",
        bed.hostile.node_ifname(),
        "--target",
        &format!("{SINK_VIP}:{SERVICE_PORT}"),
        "--target",
        &format!("{DISCARD_VIP}:{SERVICE_PORT}"),
        "--shadow",
        &format!("{}:{SINK_PORT}", bed.v2.ipv4()),
        "--bpf-stats",
    ]
    .map(str::to_owned)
    .to_vec();
    if no_reverse {
        args.push("--no-reverse".to_owned());
    }
    start_run(&bed.testbed, "mirror-attack", args)
}

fn sink_vip() -> SocketAddrV4 {
    SocketAddrV4::new(SINK_VIP, SERVICE_PORT)
}

/// The v2 sink's requests whose path starts with `prefix`.
fn at_v2(bed: &Bed, prefix: &str) -> Result<u64> {
    Ok(bed.sinks[1]
        .records()?
        .iter()
        .filter(|r| r.path.starts_with(prefix))
        .count() as u64)
}

/// `count` requests `/<tag>-<n>` from the client with curl, at `rate` a second (0: as fast as
/// one keep-alive connection goes), each on its own connection when `close`.
fn curl(bed: &Bed, tag: &str, count: usize, rate: usize, close: bool) -> Result<Process> {
    let url = format!("http://{}/{tag}-[1-{count}]", sink_vip());
    let mut argv = vec!["curl", "-sS", "--max-time", "120"];
    let rate = format!("{rate}/s");
    if rate != "0/s" {
        argv.extend(["--rate", &rate]);
    }
    if close {
        argv.extend(["-H", "Connection: close"]);
    }
    argv.push(&url);
    bed.client.ns().spawn(&format!("curl-{tag}"), &argv)
}

fn wait(process: &mut Process, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while process.try_status()?.is_none() {
        if Instant::now() > deadline {
            bail!("the load did not finish in {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Waits until v2 has `count` requests under `prefix` or nothing more arrives for 2 s.
fn settle(bed: &Bed, prefix: &str, count: u64) -> Result<u64> {
    let mut last = (0, Instant::now());
    loop {
        let n = at_v2(bed, prefix)?;
        if n >= count {
            // Anything else (forged) would have had time to arrive too.
            std::thread::sleep(Duration::from_millis(500));
            return at_v2(bed, prefix);
        }
        if n != last.0 {
            last = (n, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(2) {
            return Ok(n);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One round: the good load with `attack` run meanwhile; the agent's CPU over it (ms), the
/// attack's packets, and how many good requests reached v2.
fn round(
    bed: &Bed,
    agent: &Agent,
    plan: &AttackPlan,
    tag: &str,
    attack: impl FnOnce() -> Result<u64>,
) -> Result<(f64, u64, u64)> {
    let before = cpu_time(agent.pid())?;
    let mut load = curl(bed, tag, plan.good_requests, plan.good_rate, true)?;
    std::thread::sleep(Duration::from_millis(200));
    let packets = attack()?;
    wait(&mut load, Duration::from_secs(120))?;
    let good = settle(bed, &format!("/{tag}-"), plan.good_requests as u64)?;
    let cpu = cpu_time(agent.pid())? - before;
    Ok((cpu.as_secs_f64() * 1e3, packets, good))
}

pub fn run(bed: &Bed, plan: AttackPlan) -> Result<Attacks> {
    let vip = sink_vip();
    let discard = SocketAddrV4::new(DISCARD_VIP, SERVICE_PORT);
    let hostile = bed.hostile.ns();
    // Joined mid-stream: opened before the agent starts.
    let mut joined = hostile
        .run(move || TcpStream::connect(discard))?
        .context("connect to the discard service")?;
    std::io::Write::write_all(&mut joined, b"hello ")?;
    let agent = start_agent(bed, false)?;
    let mut flows = hostile
        .run(move || {
            (0..plan.live_flows)
                .map(|_| TcpStream::connect(vip))
                .collect::<std::io::Result<Vec<_>>>()
        })?
        .context("the hostile pod's live connections")?;
    for (i, stream) in flows.iter_mut().enumerate() {
        stream.set_nodelay(true)?;
        sink_get(stream, &format!("/hostile-{i}"))?;
    }
    let raw = RawSender::open(hostile)?;
    let src = bed.hostile.ipv4();
    let (baseline_cpu_ms, _, _) = round(bed, &agent, &plan, "baseline", || Ok(0))?;
    let mut samples = Vec::new();
    let mut sample = |kind: &'static str, attack: &mut dyn FnMut() -> Result<u64>| -> Result<()> {
        let (cpu_ms, packets, good) = round(bed, &agent, &plan, kind, attack)?;
        let s = AttackSample {
            kind,
            packets,
            agent_cpu_ms: (cpu_ms - baseline_cpu_ms).max(0.0),
            good_requests: plan.good_requests as u64,
            good_at_v2: good,
        };
        eprintln!(
            "bench: attack {kind}: {packets} packets, agent {:.1} ms CPU per 1,000, good pod \
             {good}/{} at v2",
            s.cpu_ms_per_1000(),
            plan.good_requests
        );
        samples.push(s);
        Ok(())
    };
    let mut rng = Lcg(3);
    sample("forged_data", &mut || {
        attacks::forged_data(&raw, src, vip, plan.forged, &mut rng)
    })?;
    let mut rng = Lcg(7);
    sample("far_out_of_order", &mut || {
        attacks::far_out_of_order(&raw, &flows, vip, plan.out_of_order_per_flow, &mut rng)
    })?;
    let repeat = plan.repeat_per_flow;
    sample("two_to_the_31_ahead", &mut || {
        (0..repeat).try_fold(0, |n, _| Ok(n + attacks::far_ahead(&raw, &flows, vip)?))
    })?;
    sample("off_window_rst", &mut || {
        (0..repeat).try_fold(0, |n, _| {
            Ok(n + attacks::off_window_rsts(&raw, &flows, vip)?)
        })
    })?;
    sample("garbage_lines", &mut || {
        attacks::garbage_lines(&mut joined, plan.garbage_bytes)
    })?;
    // Last: the flooder sends no RSTs of its own from here on (nor could the RST attack).
    drop_own_rsts(hostile)?;
    let mut rng = Lcg(6);
    sample("syn_flood", &mut || {
        attacks::syn_flood(&raw, src, vip, plan.syns, &mut rng)
    })?;
    let summary = agent.stop(libc::SIGTERM)?;
    summary_line(&summary)?;
    let mut costs = Vec::new();
    for run in 0..plan.cost_runs {
        for no_reverse in [true, false] {
            costs.push(direction_cost(bed, &plan, run, no_reverse)?);
        }
    }
    Ok(Attacks {
        plan,
        baseline_cpu_ms,
        samples,
        costs,
    })
}

fn summary_line(stderr: &str) -> Result<AgentStats> {
    let line = stderr
        .lines()
        .rfind(|line| line.starts_with("relay:"))
        .context("no agent summary")?;
    AgentStats::parse(line)
}

/// The good pod alone, keep-alive, as fast as curl goes: agent CPU per request and kernel time
/// per packet, with v1's side captured or not.
fn direction_cost(
    bed: &Bed,
    plan: &AttackPlan,
    run: usize,
    no_reverse: bool,
) -> Result<DirectionCost> {
    let agent = start_agent(bed, no_reverse)?;
    let tag = format!(
        "cost-{run}-{}",
        if no_reverse { "no-reverse" } else { "reverse" }
    );
    let before = cpu_time(agent.pid())?;
    let mut load = curl(bed, &tag, plan.cost_requests, 0, false)?;
    wait(&mut load, Duration::from_secs(300))?;
    let at_v2 = settle(bed, &format!("/{tag}-"), plan.cost_requests as u64)?;
    let cpu = cpu_time(agent.pid())? - before;
    let agent = summary_line(&agent.stop(libc::SIGTERM)?)?;
    let cost = DirectionCost {
        reverse: !no_reverse,
        requests: plan.cost_requests as u64,
        at_v2,
        agent_cpu_ms: cpu.as_secs_f64() * 1e3,
        agent,
    };
    eprintln!(
        "bench: v1 direction {}: {:.1} µs agent CPU per request, kernel {:?} ns/packet, {:.0} ns \
         per request, {at_v2}/{} at v2",
        if no_reverse {
            "not captured"
        } else {
            "captured"
        },
        cost.cpu_us_per_request(),
        cost.agent.ns_per_packet(),
        cost.kernel_ns_per_request(),
        plan.cost_requests
    );
    Ok(cost)
}

/// The report's section.
pub fn markdown(attacks: &Attacks) -> String {
    let mut md = String::new();
    let plan = &attacks.plan;
    let _ = writeln!(
        md,
        "#### Attack mix\n\nA hostile pod attacks while the well-behaved pod sends {} requests \
         ({} a second, one connection each); agent CPU (utime+stime, 10 ms ticks) is the \
         round's less that of a round of the good load alone ({:.0} ms).\n",
        plan.good_requests, plan.good_rate, attacks.baseline_cpu_ms
    );
    md.push_str(
        "| attack | hostile packets | agent CPU ms | CPU ms / 1,000 packets | good pod at v2 |\n",
    );
    md.push_str("|---|---|---|---|---|\n");
    for s in &attacks.samples {
        let _ = writeln!(
            md,
            "| {} | {} | {:.0} | {:.2} | {}/{} ({:.0}%) |",
            s.kind,
            s.packets,
            s.agent_cpu_ms,
            s.cpu_ms_per_1000(),
            s.good_at_v2,
            s.good_requests,
            s.completeness() * 100.0
        );
    }
    md.push_str("\n#### Capturing v1's direction\n\n");
    md.push_str("| v1's side | requests | at v2 | dropped | agent CPU µs / request | BPF ns / packet | BPF runs | BPF ns / request |\n");
    md.push_str("|---|---|---|---|---|---|---|---|\n");
    for c in &attacks.costs {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {:.1} | {} | {} | {:.0} |",
            if c.reverse {
                "captured (default)"
            } else {
                "`--no-reverse`"
            },
            c.requests,
            c.at_v2,
            c.agent.dropped,
            c.cpu_us_per_request(),
            c.agent
                .ns_per_packet()
                .map_or("-".to_owned(), |n| format!("{n:.0}")),
            c.agent.bpf_runs,
            c.kernel_ns_per_request()
        );
    }
    md
}

/// What fails the smoke run: a good pod that lost requests while an attack ran, or a cost run
/// whose requests did not all end at v2 or in a counted drop (a cost run goes as fast as one
/// keep-alive connection can, so the relay may drop some, counted, when v2 falls behind).
pub fn problems(attacks: &Attacks) -> Vec<String> {
    let mut problems = Vec::new();
    for s in &attacks.samples {
        if s.good_at_v2 != s.good_requests {
            problems.push(format!(
                "attack {}: the good pod got {} of {} requests to v2",
                s.kind, s.good_at_v2, s.good_requests
            ));
        }
    }
    for c in &attacks.costs {
        if c.at_v2 + c.agent.dropped != c.requests {
            problems.push(format!(
                "v1 direction cost (reverse {}): {} at v2 and {} dropped of {}",
                c.reverse, c.at_v2, c.agent.dropped, c.requests
            ));
        }
    }
    problems
}
