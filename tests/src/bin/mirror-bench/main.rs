//! `mirror-bench` (run by `cargo xtask bench`, which installs the toolchain and builds it in
//! release first): the agent's overhead, completeness and cost next to nginx's and Envoy's
//! request mirroring, on the namespace test-bed. See BENCHMARKS.md for what it measures.

mod agent_summary;
mod attack;
mod bed;
mod capture_path;
mod envoy;
mod h2c;
mod kernel_isolated;
mod large;
mod load;
mod measure;
mod memory;
mod micro;
mod mode;
mod nginx;
mod procstat;
mod report;
mod smoke;
mod tools;
mod unmatched;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use bed::{Backend, Bed};
use large::LargePlan;
use load::Conn;
use measure::{Offered, Plan, Sample};
use mode::{Mode, MODES};
use report::Results;

#[derive(Clone, Debug, clap::Parser)]
#[command(
    name = "mirror-bench",
    about = "mirror vs nginx and Envoy mirroring, on namespaces"
)]
struct BenchArgs {
    /// A short check that every mode works (CI): one round of 2 s per mode at saturation
    /// (keep-alive) and at half the mirrored rate, small bodies; fails if a mode serves nothing, errs, or mirrors
    /// far from everything.
    #[arg(long)]
    smoke: bool,
    /// Run only the criterion micro-benchmarks.
    #[arg(long, conflicts_with = "smoke")]
    micro: bool,
    /// Rounds: every mode runs once per round, modes interleaved, so each runs this many times.
    /// One by default, so that a first full run (release build included) stays under 15
    /// minutes; 2 or more average the saturation runs' noise out.
    #[arg(long, default_value_t = 1)]
    rounds: u32,
    /// Seconds of load per run (4: a load run then costs about 5 s with the modes' start,
    /// stop and drain).
    #[arg(long, default_value_t = 4)]
    seconds: u64,
    /// Fixed-rate runs offer these fractions of what the node carried at saturation with
    /// keep-alive and mirroring on (the agent), one set of runs per fraction.
    #[arg(long, value_delimiter = ',', default_values_t = [0.25, 0.5, 0.75])]
    rate_fractions: Vec<f64>,
    /// The same for the httpbin backend (slow, CPU-bound: one rate tells its story).
    #[arg(long, value_delimiter = ',', default_values_t = [0.5])]
    httpbin_rate_fractions: Vec<f64>,
    /// Rounds of the fixed-rate runs (each round runs every mode at every rate). One by
    /// default, so that a first full run stays under 15 minutes.
    #[arg(long, default_value_t = 1)]
    rate_rounds: u32,
    /// Run only the capture-path measurement (record real traffic, replay it with `mirror
    /// replay --discard`): requests per CPU second of the capture path alone.
    #[arg(long, conflicts_with_all = ["smoke", "micro"])]
    capture_path: bool,
    /// Replays of the recorded file in the capture-path measurement.
    #[arg(long, default_value_t = 3)]
    replays: u32,
    /// Run only the memory section (the agent at saturation with each of --ring-sizes);
    /// with --capture-path, both.
    #[arg(long, conflicts_with_all = ["smoke", "micro"])]
    memory: bool,
    /// Ring sizes (MiB) the memory section runs the agent with, at --memory-rate and at
    /// saturation.
    #[arg(long, value_delimiter = ',', default_values_t = [8, 16, 64])]
    ring_sizes: Vec<u32>,
    /// The fixed rate (requests per second) of the memory section's runs beside saturation.
    #[arg(long, default_value_t = 50_000)]
    memory_rate: u64,
    /// Capture threads the memory section also runs the agent with (default ring), end to end
    /// at saturation beside the one-thread runs.
    #[arg(long, value_delimiter = ',', default_values_t = [2u16])]
    capture_threads: Vec<u16>,
    /// Skip the criterion micro-benchmarks in a full run.
    #[arg(long)]
    no_micro: bool,
    /// Run only the primary's latency at this fixed rate (requests per second, fast backend,
    /// keep-alive): baseline, ideal and mirror interleaved, --rate-rounds rounds.
    #[arg(long, conflicts_with_all = ["smoke", "micro", "capture_path", "memory"])]
    latency_rate: Option<u64>,
    /// Flags added to the mirror mode's `mirror run`, space-separated (for example
    /// "--poll-ms 1"), to compare agent settings.
    #[arg(long, allow_hyphen_values = true, default_value = "")]
    agent_args: String,
    /// Skip the HTTP/2 section in a full run (about a minute and a half of it).
    #[arg(long, conflicts_with = "h2_only")]
    no_h2: bool,
    /// Run only the attack mix and the cost of capturing v1's direction (full size, or the
    /// smoke's with --smoke).
    #[arg(long)]
    attacks_only: bool,
    /// Run only the HTTP/2 section (h2load: baseline, the agent, Envoy, ideal; the smoke's
    /// size with --smoke).
    #[arg(long, conflicts_with_all = ["micro", "capture_path", "memory", "attacks_only"])]
    h2_only: bool,
}

/// Where the bench writes its JSON results and markdown report.
fn out_dir(target: &Path) -> PathBuf {
    target.join("bench")
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests package lives in the workspace")
        .to_owned()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| workspace().join("target"), PathBuf::from)
}

fn main() -> Result<()> {
    let args = &<BenchArgs as clap::Parser>::parse();
    if args.micro {
        let micro = micro::run(&workspace(), 3)?;
        for m in &micro {
            println!(
                "{}: {} {}",
                m.name,
                m.time,
                m.throughput.as_deref().unwrap_or("")
            );
        }
        if micro.is_empty() {
            bail!("cargo bench ran no criterion benchmark");
        }
        return Ok(());
    }
    if cfg!(debug_assertions) {
        bail!("run the release build (`cargo xtask bench` builds and runs it): a debug agent and sink would be measured");
    }
    if !mirror_tests::require_root() {
        bail!("the bench needs root: it builds network namespaces");
    }
    let started = Instant::now();
    if args.capture_path || args.memory {
        return sections_only(args, started);
    }
    let attack_plan = if args.smoke {
        attack::AttackPlan::SMOKE
    } else {
        attack::AttackPlan::FULL
    };
    let out = out_dir(&target_dir());
    std::fs::create_dir_all(&out).with_context(|| format!("create {}", out.display()))?;
    if args.attacks_only {
        let bed = Bed::new()?;
        let attacks = attack::run(&bed, attack_plan)?;
        drop(bed);
        let json = out.join("attacks.json");
        std::fs::write(&json, serde_json::to_string_pretty(&attacks)?)
            .with_context(|| format!("write {}", json.display()))?;
        println!(
            "Command: `{}`\n\n{}",
            command_line(),
            attack::markdown(&attacks)
        );
        let problems = attack::problems(&attacks);
        if !problems.is_empty() {
            bail!("attack mix:\n  {}", problems.join("\n  "));
        }
        return Ok(());
    }
    let agent_args: Vec<String> = args
        .agent_args
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    if let Some(rate) = args.latency_rate {
        return latency_only(args, rate, &agent_args, started);
    }
    let tools = tools::ensure(&target_dir())?;
    let h2_plan = if args.smoke {
        h2c::H2Plan::SMOKE
    } else {
        h2c::H2Plan::FULL
    };
    if args.h2_only {
        return h2_only(&tools, h2_plan, &out, args.smoke);
    }
    // First: it builds the cores' benches, and a failure should not cost the whole run.
    let mut clock = SectionClock::default();
    let micro = if args.smoke || args.no_micro {
        Vec::new()
    } else {
        clock.time("micro-benchmarks", || micro::run(&workspace(), 3))?
    };
    let bed = Bed::new()?;
    let work = bed.testbed.log_dir().join("bench");
    let duration = Duration::from_secs(if args.smoke { 2 } else { args.seconds });
    let rounds = if args.smoke { 1 } else { args.rounds.max(1) };
    let conns: &[Conn] = if args.smoke {
        // The connection-per-request runs are left out until the relay keeps up with them:
        // at ~25k client connections/s (fast backend) v2 got 30-39% of the requests.
        &[Conn::KeepAlive]
    } else {
        &[Conn::KeepAlive, Conn::Close, Conn::CloseDefaultSysctls]
    };
    // Every mode once, in this round's rotated order, under one backend and load.
    let run_modes =
        |samples: &mut Vec<Sample>, round: u32, backend: Backend, offered: Offered| -> Result<()> {
            for mode in rotated(round) {
                let plan = Plan {
                    round,
                    backend,
                    mode,
                    offered,
                    duration,
                    fixed_rate: &tools.fixed_rate,
                    envoy: &tools.envoy,
                    agent_args: &agent_args,
                };
                run_one(&bed, &work, samples, plan)?;
            }
            Ok(())
        };
    let mut samples = Vec::new();
    clock.start("load runs at saturation");
    for round in 0..rounds {
        for backend in [Backend::Fast, Backend::Httpbin] {
            for &conn in conns {
                bed.default_sysctls(conn.default_sysctls())?;
                run_modes(&mut samples, round, backend, Offered::Saturate(conn))?;
                bed.default_sysctls(false)?;
            }
        }
    }
    let fractions = |backend: Backend| -> &[f64] {
        match (args.smoke, backend) {
            (true, _) => &[0.5],
            (false, Backend::Fast) => &args.rate_fractions,
            (false, Backend::Httpbin) => &args.httpbin_rate_fractions,
        }
    };
    let rates: Vec<(Backend, u64)> = [Backend::Fast, Backend::Httpbin]
        .into_iter()
        .flat_map(|backend| {
            let carried = report::carried_with_mirror(&samples, backend);
            fractions(backend)
                .iter()
                .map(move |fraction| (backend, ((carried * fraction) as u64).max(10)))
        })
        .collect();
    let rate_rounds = if args.smoke {
        1
    } else {
        args.rate_rounds.max(1)
    };
    clock.start("load runs at fixed rates");
    for round in 0..rate_rounds {
        for &(backend, rate) in &rates {
            run_modes(&mut samples, round, backend, Offered::Rate(rate))?;
        }
    }
    clock.stop();
    let unmatched = clock.time("unmatched packets", || {
        unmatched::run(&bed, &work.join("unmatched"), duration)
    })?;
    let isolated = clock.time("kernel program in isolation", || {
        kernel_isolated::run(&bed, &work.join("kernel-isolated"))
    })?;
    let memory = clock.time("memory", || {
        memory::run(
            &bed,
            &work.join("memory"),
            duration,
            &tools.fixed_rate,
            &memory_plans(args),
        )
    })?;
    let replays = if args.smoke { 1 } else { args.replays.max(1) };
    let capture_path = clock.time("capture path alone", || {
        capture_path::run(&bed, &work.join("capture-path"), duration, replays)
    })?;
    let large_plan = if args.smoke {
        LargePlan {
            big_bytes: 64 << 20,
            small_count: 20,
            small_bytes: 1 << 20,
        }
    } else {
        LargePlan {
            big_bytes: 1 << 30,
            small_count: 1000,
            small_bytes: 1 << 20,
        }
    };
    let large = clock.time("large bodies", || large::run(&bed, large_plan))?;
    let attacks = clock.time("attack mix", || attack::run(&bed, attack_plan))?;
    drop(bed);
    let h2_samples = if args.no_h2 {
        None
    } else {
        let h2 = clock.time("HTTP/2", || {
            h2c::run(&tools.envoy, &out.join("h2c"), h2_plan)
        })?;
        Some((h2_plan, h2))
    };
    let results = Results {
        command: command_line(),
        machine: machine(),
        seconds: started.elapsed().as_secs_f64(),
        sections: clock.sections,
        samples,
        unmatched: Some(unmatched),
        isolated: Some(isolated),
        capture_path: Some(capture_path),
        memory,
        large: Some(large),
        attacks: Some(attacks),
        h2c: h2_samples,
        micro,
    };
    let json = out.join(if args.smoke {
        "smoke.json"
    } else {
        "results.json"
    });
    std::fs::write(&json, serde_json::to_string_pretty(&results)?)
        .with_context(|| format!("write {}", json.display()))?;
    let md = report::markdown(&results);
    let md_path = out.join(if args.smoke { "smoke.md" } else { "report.md" });
    std::fs::write(&md_path, &md).with_context(|| format!("write {}", md_path.display()))?;
    println!("{md}");
    eprintln!(
        "bench: results in {} and {}",
        json.display(),
        md_path.display()
    );
    if args.smoke {
        smoke::check(&results)?;
    }
    Ok(())
}

/// How long each section of a full run took, so the report can say where the time goes.
#[derive(Default)]
struct SectionClock {
    sections: Vec<report::Section>,
    running: Option<(&'static str, Instant)>,
}

impl SectionClock {
    /// Times `section` as one piece.
    fn time<T>(&mut self, name: &'static str, section: impl FnOnce() -> Result<T>) -> Result<T> {
        self.start(name);
        let out = section();
        self.stop();
        out
    }

    /// Starts timing `name`, ending the section that was running.
    fn start(&mut self, name: &'static str) {
        self.stop();
        self.running = Some((name, Instant::now()));
    }

    fn stop(&mut self) {
        if let Some((name, since)) = self.running.take() {
            let seconds = since.elapsed().as_secs_f64();
            eprintln!("bench: {name}: {seconds:.0} s");
            self.sections.push(report::Section {
                name: name.to_owned(),
                seconds,
            });
        }
    }
}

/// The agent's default `--ring-mib`, which the memory section's sharded runs use.
const DEFAULT_RING_MIB: u32 = 16;

/// The memory section's agents: every ring size on one thread at --memory-rate and at
/// saturation, then the default ring on each of --capture-threads (the smoke: the default
/// ring at a tenth of the rate on one thread, and at saturation on two).
fn memory_plans(args: &BenchArgs) -> Vec<memory::MemoryPlan> {
    if args.smoke {
        return vec![
            memory::MemoryPlan {
                ring_mib: DEFAULT_RING_MIB,
                threads: 1,
                offered: Offered::Rate(args.memory_rate / 10),
            },
            memory::MemoryPlan {
                ring_mib: DEFAULT_RING_MIB,
                threads: 2,
                offered: Offered::Saturate(Conn::KeepAlive),
            },
        ];
    }
    memory::plans(
        &args.ring_sizes,
        args.memory_rate,
        &args.capture_threads,
        DEFAULT_RING_MIB,
    )
}

/// `--capture-path` and `--memory`: those sections alone, printed as the report prints them.
fn sections_only(args: &BenchArgs, started: Instant) -> Result<()> {
    let bed = Bed::new()?;
    let work = bed.testbed.log_dir().join("bench");
    let duration = Duration::from_secs(args.seconds);
    let capture_path = if args.capture_path {
        let dir = work.join("capture-path");
        Some(capture_path::run(
            &bed,
            &dir,
            duration,
            args.replays.max(1),
        )?)
    } else {
        None
    };
    let memory = if args.memory {
        memory::run(
            &bed,
            &work.join("memory"),
            duration,
            &tools::fixed_rate_generator()?,
            &memory_plans(args),
        )?
    } else {
        Vec::new()
    };
    drop(bed);
    let results = Results {
        command: command_line(),
        machine: machine(),
        seconds: started.elapsed().as_secs_f64(),
        capture_path,
        memory,
        ..Results::default()
    };
    println!("{}", report::markdown(&results));
    Ok(())
}

/// `--latency-rate`: the fast backend at one fixed rate, baseline, ideal and mirror interleaved
/// (the order rotating each round), printed as the report prints fixed-rate runs.
fn latency_only(
    args: &BenchArgs,
    rate: u64,
    agent_args: &[String],
    started: Instant,
) -> Result<()> {
    let fixed_rate = tools::fixed_rate_generator()?;
    let bed = Bed::new()?;
    let work = bed.testbed.log_dir().join("bench");
    let modes = [Mode::Baseline, Mode::Ideal, Mode::Mirror];
    let mut samples = Vec::new();
    for round in 0..args.rate_rounds.max(1) {
        for i in 0..modes.len() {
            let plan = Plan {
                round,
                backend: Backend::Fast,
                mode: modes[(i + round as usize) % modes.len()],
                offered: Offered::Rate(rate),
                duration: Duration::from_secs(args.seconds),
                fixed_rate: &fixed_rate,
                envoy: Path::new("envoy"),
                agent_args,
            };
            run_one(&bed, &work, &mut samples, plan)?;
        }
    }
    drop(bed);
    let results = Results {
        command: command_line(),
        machine: machine(),
        seconds: started.elapsed().as_secs_f64(),
        samples,
        ..Results::default()
    };
    println!("{}", report::markdown(&results));
    Ok(())
}

/// `--h2-only`: the HTTP/2 section alone, its table printed as the report prints it; with
/// `--smoke`, checked as the smoke checks it.
fn h2_only(tools: &tools::Tools, plan: h2c::H2Plan, out: &Path, smoke: bool) -> Result<()> {
    let samples = h2c::run(&tools.envoy, &out.join("h2c"), plan)?;
    let json = out.join("h2c.json");
    std::fs::write(&json, serde_json::to_string_pretty(&samples)?)
        .with_context(|| format!("write {}", json.display()))?;
    println!(
        "Command: `{}`\n\n{}",
        command_line(),
        h2c::markdown(&samples, plan)
    );
    let problems = if smoke {
        h2c::problems(&samples)
    } else {
        Vec::new()
    };
    if !problems.is_empty() {
        bail!("h2c section:\n  {}", problems.join("\n  "));
    }
    Ok(())
}

/// Runs one measurement and keeps its sample, saying what it measured as it goes.
fn run_one(bed: &Bed, work: &Path, samples: &mut Vec<Sample>, plan: Plan<'_>) -> Result<()> {
    let dir = work.join(format!(
        "{}-{}-{}",
        samples.len(),
        plan.backend.name(),
        plan.mode.name()
    ));
    let started = Instant::now();
    let sample = measure::run(bed, &plan, &dir).with_context(|| {
        format!(
            "{} / {} / {:?}",
            plan.backend.name(),
            plan.mode.name(),
            plan.offered
        )
    })?;
    eprintln!(
        "{} ({:.1} s)",
        one_line(&sample),
        started.elapsed().as_secs_f64()
    );
    samples.push(sample);
    Ok(())
}

/// The mode order of a round: rotated each round so that no mode always runs first (the VM
/// speeds up and slows down over minutes).
fn rotated(round: u32) -> impl Iterator<Item = Mode> {
    let shift = round as usize % MODES.len();
    MODES.iter().cycle().skip(shift).take(MODES.len()).copied()
}

fn one_line(s: &Sample) -> String {
    format!(
        "bench: round {} {} {:?} {}: {:.0} req/s p50 {:.0} µs p99 {:.0} µs, errors {}, v1 {} v2 {} ({} shadow), cpu {:?} s{}{}",
        s.round,
        s.backend.name(),
        s.offered,
        s.mode.name(),
        s.load.rps(),
        s.load.p50_us,
        s.load.p99_us,
        s.load.errors,
        s.v1_requests,
        s.v2_requests,
        s.v2_shadow_host,
        s.cpu_seconds,
        s.agent.as_ref().map_or(String::new(), |a| format!(", ring drops {}, bpf {:?} ns/pkt", a.ringbuf_full_drops, a.ns_per_packet())),
        s.shadow_load.as_ref().map_or(String::new(), |l| format!(", shadow load {:.0} req/s, errors {}", l.rps(), l.errors)),
    )
}

fn command_line() -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    format!("cargo xtask bench {}", args.join(" "))
        .trim_end()
        .to_owned()
}

/// CPU model, cores and kernel, for the report.
fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown CPU", |(_, m)| m.trim())
        .to_owned();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = mem
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0.0, |kib| kib as f64 / f64::from(1u32 << 20));
    format!(
        "{model}, {} cores, {mem_gib:.0} GiB, Linux {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        kernel.trim()
    )
}
