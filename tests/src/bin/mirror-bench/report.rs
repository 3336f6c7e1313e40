//! Turns a run's samples into the markdown tables and target verdicts of BENCHMARKS.md.
//! Every ratio compares a mode with the baseline, or the ideal mirror, of the same round and
//! load, never across rounds.

use std::fmt::Write as _;

use super::agent_summary::AgentStats;
use super::attack::Attacks;
use super::bed::Backend;
use super::capture_path::{CapturePath, Replay, THREADS};
use super::kernel_isolated::Isolated;
use super::large::LargeResult;
use super::load::Conn;
use super::measure::{Offered, Sample};
use super::memory::RingRun;
use super::micro::Micro;
use super::mode::{Mode, MODES};
use super::unmatched::Unmatched;

/// Everything one `cargo xtask bench` measured.
#[derive(Debug, Default, serde::Serialize)]
pub struct Results {
    pub command: String,
    pub machine: String,
    pub seconds: f64,
    /// How long each section took (a full run's).
    pub sections: Vec<Section>,
    pub samples: Vec<Sample>,
    pub unmatched: Option<Unmatched>,
    pub isolated: Option<Isolated>,
    pub capture_path: Option<CapturePath>,
    pub memory: Vec<RingRun>,
    pub large: Option<LargeResult>,
    pub attacks: Option<Attacks>,
    /// The HTTP/2 section: its plan and runs.
    pub h2c: Option<(super::h2c::H2Plan, Vec<super::h2c::H2Sample>)>,
    pub micro: Vec<Micro>,
}

/// One section of a run and its wall-clock time.
#[derive(Debug, serde::Serialize)]
pub struct Section {
    pub name: String,
    pub seconds: f64,
}

/// Aggregate of one mode over the rounds of one table.
struct Row {
    rps: f64,
    /// Mean p50, p99 and p99.9 of the primary, in µs.
    latency_us: [f64; 3],
    /// req/s, p50, p99 and p99.9 over those of the baseline of the same round.
    vs_baseline: [f64; 4],
    /// The same over those of the ideal mirror of the same round.
    vs_ideal: [f64; 4],
    errors: u64,
    requests: u64,
    completeness: Option<f64>,
    shadow_share: Option<f64>,
    cpu_per_1k: Option<f64>,
    peak_rss_mib: Option<f64>,
    ns_per_packet: Option<f64>,
    ring_drops: Option<u64>,
}

fn mean(values: impl Iterator<Item = f64>) -> Option<f64> {
    let (sum, n) = values.fold((0.0, 0u32), |(s, n), v| (s + v, n + 1));
    (n > 0).then(|| sum / f64::from(n))
}

fn same_table(sample: &Sample, backend: Backend, offered: &Offered) -> bool {
    sample.backend == backend
        && match (sample.offered, offered) {
            (Offered::Saturate(a), Offered::Saturate(b)) => a == *b,
            (Offered::Rate(a), Offered::Rate(b)) => a == *b,
            _ => false,
        }
}

/// The sample of `mode` in the same round and table as `sample`.
fn reference<'a>(samples: &'a [Sample], sample: &Sample, mode: Mode) -> Option<&'a Sample> {
    samples.iter().find(|s| {
        s.mode == mode && s.round == sample.round && same_table(s, sample.backend, &sample.offered)
    })
}

/// The four compared figures of a sample: req/s, p50, p99, p99.9.
fn figures(s: &Sample) -> [f64; 4] {
    [s.load.rps(), s.load.p50_us, s.load.p99_us, s.load.p999_us]
}

/// Mean over `mine` of each figure over that of the same round's `against` sample.
fn ratios(samples: &[Sample], mine: &[&Sample], against: Mode) -> [f64; 4] {
    std::array::from_fn(|i| {
        mean(mine.iter().filter_map(|s| {
            let reference = reference(samples, s, against)?;
            Some(figures(s)[i] / figures(reference)[i])
        }))
        .unwrap_or(f64::NAN)
    })
}

fn row(samples: &[Sample], backend: Backend, offered: &Offered, mode: Mode) -> Option<Row> {
    let mine: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.mode == mode && same_table(s, backend, offered))
        .collect();
    if mine.is_empty() {
        return None;
    }
    let v1: u64 = mine.iter().map(|s| s.v1_requests).sum();
    let v2: u64 = mine.iter().map(|s| s.v2_requests).sum();
    let shadow: u64 = mine.iter().map(|s| s.v2_shadow_host).sum();
    let agents: Vec<_> = mine.iter().filter_map(|s| s.agent.as_ref()).collect();
    let bpf_runs: u64 = agents.iter().map(|a| a.bpf_runs).sum();
    let bpf_ns: u64 = agents.iter().map(|a| a.bpf_run_time_ns).sum();
    let latency = |i: usize| mean(mine.iter().map(|s| figures(s)[i])).unwrap_or(f64::NAN);
    Some(Row {
        rps: latency(0),
        latency_us: [latency(1), latency(2), latency(3)],
        vs_baseline: ratios(samples, &mine, Mode::Baseline),
        vs_ideal: ratios(samples, &mine, Mode::Ideal),
        errors: mine.iter().map(|s| s.load.errors).sum(),
        requests: mine.iter().map(|s| s.load.requests).sum(),
        completeness: (mode.mirrors() && v1 > 0).then(|| v2 as f64 / v1 as f64),
        shadow_share: (v2 > 0).then(|| shadow as f64 / v2 as f64),
        cpu_per_1k: mean(mine.iter().filter_map(|s| s.cpu_per_1k())),
        peak_rss_mib: mine
            .iter()
            .filter_map(|s| s.peak_rss_kib)
            .max()
            .map(|k| k as f64 / 1024.0),
        ns_per_packet: (bpf_runs > 0).then(|| bpf_ns as f64 / bpf_runs as f64),
        ring_drops: (!agents.is_empty()).then(|| agents.iter().map(|a| a.ringbuf_full_drops).sum()),
    })
}

fn opt(value: Option<f64>, f: impl Fn(f64) -> String) -> String {
    value.map_or_else(|| "–".to_owned(), f)
}

/// What the node carried at saturation with keep-alive and the agent mirroring (mean of the
/// rounds): the fixed rates are fractions of it. On this machine v2 shares the node's two
/// cores, so mirroring halves what the node can serve; a rate above that would measure an
/// overloaded node, not the mirror.
pub fn carried_with_mirror(samples: &[Sample], backend: Backend) -> f64 {
    mean(
        samples
            .iter()
            .filter(|s| {
                s.mode == Mode::Mirror
                    && s.backend == backend
                    && matches!(s.offered, Offered::Saturate(Conn::KeepAlive))
            })
            .map(|s| s.load.rps()),
    )
    .unwrap_or(0.0)
}

fn table_title(backend: Backend, offered: &Offered, samples: &[Sample]) -> String {
    match offered {
        Offered::Saturate(conn) => format!(
            "{} backend, saturation (wrk, {}, {} connections)",
            backend.name(),
            conn.name(),
            super::load::CONNECTIONS
        ),
        Offered::Rate(rate) => {
            let carried = carried_with_mirror(samples, backend);
            format!(
                "{} backend, fixed rate (mirror-load, keep-alive, {} connections, {rate} req/s \
                 offered = {:.0}% of what the node carried at saturation with the agent)",
                backend.name(),
                super::load::CONNECTIONS,
                *rate as f64 * 100.0 / carried.max(1.0)
            )
        }
    }
}

/// The tables present in `samples`, in a fixed order: saturation, then the rates ascending.
fn tables(samples: &[Sample]) -> Vec<(Backend, Offered)> {
    let mut out = Vec::new();
    for backend in [Backend::Fast, Backend::Httpbin] {
        let mut rates: Vec<u64> = samples
            .iter()
            .filter(|s| s.backend == backend)
            .filter_map(|s| match s.offered {
                Offered::Rate(rate) => Some(rate),
                Offered::Saturate(_) => None,
            })
            .collect();
        rates.sort_unstable();
        rates.dedup();
        let offered = [
            Offered::Saturate(Conn::KeepAlive),
            Offered::Saturate(Conn::Close),
            Offered::Saturate(Conn::CloseDefaultSysctls),
        ]
        .into_iter()
        .chain(rates.into_iter().map(Offered::Rate));
        for offered in offered {
            if samples.iter().any(|s| same_table(s, backend, &offered)) {
                out.push((backend, offered));
            }
        }
    }
    out
}

pub fn markdown(results: &Results) -> String {
    let mut md = String::new();
    let samples = &results.samples;
    let rounds = samples.iter().map(|s| s.round + 1).max().unwrap_or(0);
    let _ = writeln!(
        md,
        "Command: `{}`; {} rounds; whole run {:.0} s.\n",
        results.command, rounds, results.seconds
    );
    let _ = writeln!(md, "Machine: {}\n", results.machine);
    if !results.sections.is_empty() {
        let parts: Vec<String> = results
            .sections
            .iter()
            .map(|s| format!("{} {:.0} s", s.name, s.seconds))
            .collect();
        let _ = writeln!(md, "Where the time went: {}.\n", parts.join(", "));
    }
    let _ = writeln!(
        md,
        "Sysctls: the tables marked `kernel-default sysctls` ran with the node's and the \
         client's defaults (tcp_tw_reuse=2, ports 32768-60999); every other table with \
         tcp_tw_reuse=1 and ports 10000-65000 there.\n"
    );
    for (backend, offered) in tables(samples) {
        let _ = writeln!(md, "#### {}\n", table_title(backend, &offered, samples));
        let rows: Vec<(Mode, Row)> = MODES
            .iter()
            .filter_map(|&mode| Some((mode, row(samples, backend, &offered, mode)?)))
            .collect();
        md.push_str("| mode | req/s | p50 µs | p99 µs | p99.9 µs | ×base req/s | ×base p50 | ×base p99 | ×base p99.9 | ×ideal req/s | ×ideal p50 | ×ideal p99 | ×ideal p99.9 |\n");
        md.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
        for (mode, r) in &rows {
            let ratios: Vec<String> = r
                .vs_baseline
                .iter()
                .chain(&r.vs_ideal)
                .map(|x| format!("{x:.2}"))
                .collect();
            let _ = writeln!(
                md,
                "| {} | {:.0} | {:.0} | {:.0} | {:.0} | {} |",
                mode.name(),
                r.rps,
                r.latency_us[0],
                r.latency_us[1],
                r.latency_us[2],
                ratios.join(" | "),
            );
        }
        md.push_str("\n| mode | completeness | `-shadow` Host | client errors | CPU s / 1k mirrored | peak RSS MiB | BPF ns/pkt | ring drops |\n");
        md.push_str("|---|---|---|---|---|---|---|---|\n");
        for (mode, r) in &rows {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {}/{} | {} | {} | {} | {} |",
                mode.name(),
                opt(r.completeness, |c| format!("{:.2}%", c * 100.0)),
                opt(r.shadow_share, |c| format!("{:.2}%", c * 100.0)),
                r.errors,
                r.requests,
                opt(r.cpu_per_1k, |c| format!("{c:.3}")),
                opt(r.peak_rss_mib, |m| format!("{m:.1}")),
                opt(r.ns_per_packet, |n| format!("{n:.0}")),
                r.ring_drops
                    .map_or_else(|| "–".to_owned(), |d| d.to_string()),
            );
        }
        md.push('\n');
    }
    kernel(&mut md, results);
    capture_path(&mut md, results);
    memory(&mut md, results);
    large(&mut md, results);
    if let Some(attacks) = &results.attacks {
        md.push_str(&super::attack::markdown(attacks));
        md.push('\n');
    }
    if let Some((plan, samples)) = &results.h2c {
        md.push_str(&super::h2c::markdown(samples, *plan));
        md.push('\n');
    }
    micro(&mut md, results);
    md.push_str(&verdicts(results));
    md
}

/// The agents of the mirror runs on the fast backend with keep-alive: every packet the kernel
/// program sees there goes to the target, so their run times are per matched packet.
fn matched_agents(results: &Results) -> Vec<&AgentStats> {
    results
        .samples
        .iter()
        .filter(|s| {
            s.mode == Mode::Mirror
                && s.backend == Backend::Fast
                && matches!(s.offered, Offered::Saturate(Conn::KeepAlive))
        })
        .filter_map(|s| s.agent.as_ref())
        .collect()
}

/// Kernel program time per packet: matched and unmatched (the dedicated run).
fn kernel_costs(results: &Results) -> (Option<f64>, Option<f64>) {
    let agents = matched_agents(results);
    let runs: u64 = agents.iter().map(|a| a.bpf_runs).sum();
    let ns: u64 = agents.iter().map(|a| a.bpf_run_time_ns).sum();
    let matched = (runs > 0).then(|| ns as f64 / runs as f64);
    let unmatched = results
        .unmatched
        .as_ref()
        .and_then(|u| u.agent.ns_per_packet());
    (matched, unmatched)
}

fn kernel(md: &mut String, results: &Results) {
    let (matched, unmatched) = kernel_costs(results);
    let _ = writeln!(md, "#### Kernel program\n");
    let _ = writeln!(
        md,
        "| packets | ns per packet | packets run | matched |\n|---|---|---|---|"
    );
    let agents = matched_agents(results);
    if !agents.is_empty() {
        let runs: u64 = agents.iter().map(|a| a.bpf_runs).sum();
        let hit: u64 = agents.iter().map(|a| a.packets_matched).sum();
        let _ = writeln!(
            md,
            "| to the target (fast, keep-alive, saturation) | {} | {runs} | {hit} |",
            opt(matched, |n| format!("{n:.0}"))
        );
    }
    if let Some(u) = &results.unmatched {
        let _ = writeln!(
            md,
            "| to another port ({:.0} req/s) | {} | {} | {} |",
            u.load.rps(),
            opt(unmatched, |n| format!("{n:.0}")),
            u.agent.bpf_runs,
            u.agent.packets_matched
        );
    }
    md.push('\n');
    if let Some(isolated) = &results.isolated {
        let _ = writeln!(
            md,
            "In isolation (`bpftool prog run` on the attached program, BPF_PROG_TEST_RUN, \
             warm caches, no BPF-stats clock reads):\n\n| frame | ns per run |\n|---|---|"
        );
        for (what, ns) in &isolated.frames {
            let _ = writeln!(md, "| {what} | {ns} |");
        }
        md.push('\n');
    }
}

fn capture_path(md: &mut String, results: &Results) {
    let Some(c) = &results.capture_path else {
        return;
    };
    let _ = writeln!(
        md,
        "#### Capture path alone (`mirror replay --discard`)\n\n\
         Recorded: fast backend, keep-alive, saturation, nothing mirroring: {:.0} req/s, {} \
         requests; {} records ({:.1} MiB of pcap), {} ring drops. Replayed through record \
         decoding and the pipeline (admission by v1's acknowledgements, framing, Host \
         rewrite), requests counted and dropped: no kernel, relay or v2. CPU is the whole \
         process's (reader and pipeline threads); medians of {} replays each.\n\n\
         | pipeline threads | requests | requests per CPU second | requests per second |\n\
         |---|---|---|---|",
        c.load.rps(),
        c.load.requests,
        c.records,
        c.pcap_bytes as f64 / f64::from(1u32 << 20),
        c.ring_drops,
        c.replays.len() / THREADS.len().max(1),
    );
    for threads in THREADS {
        let Some(requests) = c
            .replays
            .iter()
            .find(|r| r.threads == threads)
            .map(|r| r.requests)
        else {
            continue;
        };
        let name = threads.map_or("none (reader runs it)".to_owned(), |n| {
            format!("{n} (+ reader)")
        });
        let _ = writeln!(
            md,
            "| {name} | {requests} | {} | {} |",
            opt(c.median(threads, Replay::per_cpu_second), |n| format!(
                "{n:.0}"
            )),
            opt(c.median(threads, Replay::per_second), |n| format!("{n:.0}")),
        );
    }
    md.push('\n');
}

fn memory(md: &mut String, results: &Results) {
    if results.memory.is_empty() {
        return;
    }
    let mib = |kib: u64| kib as f64 / 1024.0;
    let _ = writeln!(
        md,
        "#### Agent memory by ring size, load and capture threads (fast backend, keep-alive)\n\n\
         Read at the end of the load from `/proc/PID/smaps_rollup` (PSS counts each physical \
         page once; the ring's data pages are mapped twice, so RSS counts them twice) and \
         `/proc/PID/smaps`: the PSS of the ring buffer's mappings (all its pages, allocated when \
         the map is made) and of the anonymous ones (heap, malloc arenas, stacks). Relay \
         backlog: requests held for v2 then (queued, or sent and not answered), from the \
         agent's /metrics. Shard queue drops: records the sharded reader dropped because a \
         pipeline thread's queue was full (`records_dropped_queue_full`; their requests never \
         reach the relay's counts). Idle: PSS once that backlog drained and the agent sat idle \
         for 3 s.\n\n\
         | --ring-mib | --capture-threads | load | req/s | mirrored | dropped (by reason) | ring drops | shard queue drops | relay backlog | PSS MiB | ring MiB | anonymous MiB | private MiB | RSS MiB | PSS idle MiB |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for r in &results.memory {
        let shard_drops =
            mirror_tests::agent::counter(&r.agent.summary, "records_dropped_queue_full")
                .unwrap_or(0);
        let load = match r.offered {
            Offered::Saturate(_) => "saturation".to_owned(),
            Offered::Rate(rate) => format!("{rate} req/s"),
        };
        let _ = writeln!(
            md,
            "| {} | {} | {load} | {:.0} | {} | {}{} | {} | {shard_drops} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
            r.ring_mib,
            r.threads,
            r.load.rps(),
            r.agent.sent,
            r.agent.dropped,
            drop_reasons(&r.agent.summary),
            r.agent.ringbuf_full_drops,
            r.backlog.pending,
            mib(r.memory.pss_kib),
            mib(r.memory.ring_pss_kib),
            mib(r.memory.anon_pss_kib),
            mib(r.memory.private_kib),
            mib(r.memory.rss_kib),
            mib(r.idle.pss_kib),
        );
    }
    md.push('\n');
}

/// The relay's non-zero `dropped_<reason>=N` fields, as ` (reason N, ...)`.
fn drop_reasons(summary: &str) -> String {
    let relay = summary.split(" | ").next().unwrap_or("");
    let reasons: Vec<String> = relay
        .split_whitespace()
        .filter_map(|field| field.strip_prefix("dropped_")?.split_once('='))
        .filter(|(_, value)| *value != "0")
        .map(|(reason, value)| format!("{reason} {value}"))
        .collect();
    if reasons.is_empty() {
        String::new()
    } else {
        format!(" ({})", reasons.join(", "))
    }
}

fn large(md: &mut String, results: &Results) {
    let Some(l) = &results.large else { return };
    let mib = |bytes: u64| bytes as f64 / f64::from(1u32 << 20);
    let _ = writeln!(
        md,
        "#### Large bodies (sink as v1 and v2, agent mirroring)\n"
    );
    let _ = writeln!(md, "| upload | client time | v1 got | v2 got | byte-exact at v2 | agent peak RSS after |\n|---|---|---|---|---|---|");
    let _ = writeln!(
        md,
        "| (agent attached, idle) | | | | | {:.1} MiB |",
        l.rss_idle_kib as f64 / 1024.0
    );
    let _ = writeln!(
        md,
        "| {} × {:.0} MiB, one keep-alive connection | {:.1} s | | | | {:.1} MiB |",
        l.plan.small_count,
        mib(l.plan.small_bytes),
        l.small_seconds,
        l.rss_after_small_kib as f64 / 1024.0
    );
    let _ = writeln!(
        md,
        "| 1 × {:.0} MiB | {:.1} s | | | | {:.1} MiB |",
        mib(l.plan.big_bytes),
        l.big_seconds,
        l.rss_after_big_kib as f64 / 1024.0
    );
    let total = l.plan.small_count + 1;
    let _ = writeln!(
        md,
        "| all | | {}/{total} | {}/{total} | {}/{total} | |",
        l.v1_requests, l.v2_requests, l.v2_exact
    );
    let _ = writeln!(
        md,
        "\nAgent: sent={} dropped={} ringbuf_full_drops={}.\n",
        l.agent.sent, l.agent.dropped, l.agent.ringbuf_full_drops
    );
}

fn micro(md: &mut String, results: &Results) {
    if results.micro.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "#### Micro-benchmarks (criterion)\n\n| benchmark | time | throughput |\n|---|---|---|"
    );
    for m in &results.micro {
        let _ = writeln!(
            md,
            "| {} | {} | {} |",
            m.name,
            m.time,
            m.throughput.as_deref().unwrap_or("–")
        );
    }
    md.push('\n');
}

/// Says, from the numbers, whether each target of the issue is met.
fn verdicts(results: &Results) -> String {
    let mut md = String::from("#### Targets\n\n");
    let samples = &results.samples;
    let mirror: Vec<&Sample> = samples.iter().filter(|s| s.mode == Mode::Mirror).collect();
    let worst = mirror
        .iter()
        .filter_map(|s| s.completeness())
        .fold(f64::INFINITY, f64::min);
    let drops: u64 = mirror
        .iter()
        .filter_map(|s| s.agent.as_ref())
        .map(|a| a.ringbuf_full_drops)
        .sum();
    let complete = mirror.iter().all(|s| s.v2_requests == s.v1_requests);
    let _ = writeln!(
        md,
        "- Completeness 100.00% with zero ring-buffer drops at every load: {} (lowest run {:.2}%, ring drops {drops}).",
        if complete && drops == 0 { "met" } else { "missed" },
        worst * 100.0
    );
    for (backend, offered) in tables(samples) {
        let Some(r) = row(samples, backend, &offered, Mode::Mirror) else {
            continue;
        };
        let _ = writeln!(
            md,
            "- The agent's own cost, {}: throughput ×{:.2}, p99 ×{:.2} of the ideal mirror's ({:.0} µs vs {:.0} µs at ×{:.2} of baseline).",
            table_title(backend, &offered, samples),
            r.vs_ideal[0],
            r.vs_ideal[2],
            r.latency_us[1],
            row(samples, backend, &offered, Mode::Ideal).map_or(f64::NAN, |i| i.latency_us[1]),
            r.vs_baseline[2],
        );
        if let Offered::Rate(rate) = offered {
            let ok = r.vs_baseline[1] <= 1.05 && r.vs_baseline[2] <= 1.05;
            let _ = writeln!(
                md,
                "  Fixed rate {rate} req/s, {} backend: p50 ×{:.2}, p99 ×{:.2} of baseline (target ≤ 1.05): {}.",
                backend.name(),
                r.vs_baseline[1],
                r.vs_baseline[2],
                if ok { "met" } else { "missed" }
            );
        }
    }
    // The issue sets this target on the fast backend, where mirroring's cost is visible; with
    // httpbin the backend's own cost hides it (its tables show the ratios anyway).
    let backend = Backend::Fast;
    for conn in [Conn::KeepAlive, Conn::Close, Conn::CloseDefaultSysctls] {
        let offered = Offered::Saturate(conn);
        let get = |mode| row(samples, backend, &offered, mode);
        let (Some(ours), Some(nginx), Some(envoy)) =
            (get(Mode::Mirror), get(Mode::Nginx), get(Mode::Envoy))
        else {
            continue;
        };
        let best = nginx.vs_baseline[0].max(envoy.vs_baseline[0]);
        let factor = ours.vs_baseline[0] / best;
        let cpu_ok = match (ours.cpu_per_1k, nginx.cpu_per_1k, envoy.cpu_per_1k) {
            (Some(o), Some(n), Some(e)) => o < n && o < e,
            _ => false,
        };
        let _ = writeln!(
            md,
            "- Saturation, {} backend, {}: throughput ×{:.2} vs best proxy ×{best:.2} = {factor:.1}x (target ≥ 3x): {}; CPU per 1k mirrored {} vs nginx {} / Envoy {}: {}.",
            backend.name(),
            conn.name(),
            ours.vs_baseline[0],
            if factor >= 3.0 { "met" } else { "missed" },
            opt(ours.cpu_per_1k, |c| format!("{c:.3}")),
            opt(nginx.cpu_per_1k, |c| format!("{c:.3}")),
            opt(envoy.cpu_per_1k, |c| format!("{c:.3}")),
            if cpu_ok { "met" } else { "missed" },
        );
    }
    let (matched, unmatched) = kernel_costs(results);
    let _ = writeln!(
        md,
        "- Kernel program: {} ns per matched packet (target < 1000): {}; {} ns per unmatched packet (target < 100): {}.",
        opt(matched, |n| format!("{n:.0}")),
        if matched.is_some_and(|n| n < 1000.0) { "met" } else { "missed" },
        opt(unmatched, |n| format!("{n:.0}")),
        if unmatched.is_some_and(|n| n < 100.0) { "met" } else { "missed" },
    );
    if let Some(isolated) = &results.isolated {
        let listed: Vec<String> = isolated
            .frames
            .iter()
            .map(|(what, ns)| format!("{what} {ns} ns"))
            .collect();
        let _ = writeln!(md, "  In isolation: {}.", listed.join(", "));
    }
    if let Some(c) = &results.capture_path {
        let _ = writeln!(
            md,
            "- Capture path alone: {} requests per CPU second on one thread; sharded over 2 threads {} requests per second, over 4 {} (medians; {} recorded requests).",
            opt(c.median(None, Replay::per_cpu_second), |n| format!("{n:.0}")),
            opt(c.median(Some(2), Replay::per_second), |n| format!("{n:.0}")),
            opt(c.median(Some(4), Replay::per_second), |n| format!("{n:.0}")),
            c.load.requests,
        );
    }
    md
}
