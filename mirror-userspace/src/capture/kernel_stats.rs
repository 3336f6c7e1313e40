//! The kernel program's counters as registry sources: its per-CPU outcome counters (summed
//! at every read) and, with `--bpf-stats`, each program's run count and run time.

use std::sync::{Arc, Mutex, MutexGuard};

use mirror_common::Counter;

use super::classifier::Classifier;
use crate::observe::{Sample, Source};

/// Stage `kernel`: what the classifier did with the packets it saw.
pub struct KernelCounters(pub(super) Arc<Mutex<Classifier>>);

/// Stage `bpf`: the programs' run counts and times (empty while the kernel keeps none).
pub struct KernelRunTimes(pub(super) Arc<Mutex<Classifier>>);

impl Source for KernelCounters {
    fn visit(&self, out: &mut dyn FnMut(Sample)) {
        match lock(&self.0).counters() {
            Ok(values) => {
                for (counter, value) in Counter::ALL.iter().zip(values) {
                    out(Sample::counter(counter.name(), help(*counter), value));
                }
            }
            Err(error) => tracing::warn!(%error, "cannot read kernel counters"),
        }
    }
}

impl Source for KernelRunTimes {
    fn visit(&self, out: &mut dyn FnMut(Sample)) {
        // Without --bpf-stats the kernel keeps no run times: report nothing rather than zeros.
        let programs: Vec<_> = lock(&self.0)
            .run_stats()
            .into_iter()
            .filter(|s| s.runs > 0)
            .collect();
        // One metric at a time, each program's sample in turn: a family's samples must come
        // together (a family split in two is two clashing families in OpenMetrics).
        for stats in &programs {
            out(
                Sample::counter("runs", "Runs of the kernel program.", stats.runs)
                    .with_label("program", stats.program),
            );
        }
        for stats in &programs {
            out(Sample::counter(
                "run_time_ns",
                "Nanoseconds the kernel program ran, in total.",
                stats.run_time_ns,
            )
            .with_label("program", stats.program));
        }
        for stats in &programs {
            out(Sample::gauge(
                "ns_per_run",
                "Mean nanoseconds per run of the kernel program.",
                stats.ns_per_run().unwrap_or(0),
            )
            .with_label("program", stats.program));
        }
    }
}

/// The help line of a kernel counter, summed over CPUs.
fn help(counter: Counter) -> &'static str {
    match counter {
        Counter::Seen => "Packets the kernel program ran on.",
        Counter::Matched => "TCP packets bound for a target.",
        Counter::Emitted => "Records the kernel program wrote to the ring buffer.",
        Counter::BytesEmitted => "Packet bytes written to the ring buffer (headers excluded).",
        Counter::RingFull => "Matched packets lost because the ring buffer was full.",
        Counter::Truncated => "Records cut short because the packet exceeded the capture size.",
        Counter::LoadError => "Matched packets lost because copying them out of the skb failed.",
        Counter::PureAck => "Matched pure ACKs, deliberately not copied.",
        Counter::OwnTraffic => "Packets skipped because they carried the agent's own mark.",
        Counter::ReverseMatched => "TCP packets from a target (v1 to client) on the reverse hook.",
        Counter::ReverseEmitted => "Header-only records of reverse packets written to the ring.",
        Counter::ReverseRingFull => "Reverse packets lost because the ring buffer was full.",
        Counter::VlanTagged => "Frames parsed through one or two VLAN tags.",
        Counter::VlanTooDeep => "Frames with more VLAN tags than the parser follows: not parsed.",
        Counter::Ipv6ExtHeaders => "IPv6 packets parsed through extension headers.",
        Counter::Ipv6Jumbo => "IPv6 packets with a jumbo payload option (BIG TCP).",
        Counter::Fragments => "TCP in IP fragments: counted, not parsed.",
        Counter::Ipv6ExtUnparsed => "IPv6 packets whose header chain is not followed: not parsed.",
        Counter::NoEthernet => "Frames without an Ethernet header: counted, not parsed.",
    }
}

pub(super) fn lock(classifier: &Mutex<Classifier>) -> MutexGuard<'_, Classifier> {
    // A panic while holding the lock leaves the classifier usable: recover the guard.
    classifier
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
