//! The pipeline's counters as the registry reads them.
//!
//! The pipeline is a sans-IO state machine owned by the capture loop, lock-free by design: its
//! counters are plain `u64`s it alone writes. The loop publishes them here after every batch
//! of records and every expiry pass (a few dozen relaxed stores every few milliseconds), and
//! every reader (status line, metrics) reads these cells, never the pipeline.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use mirror_cores::{outcome::Counters, pipeline::Pipeline};

use crate::observe::{Sample, Source};

#[derive(Debug)]
pub struct PipelineCells {
    /// One cell per `Counters` field, in `Counters::HELP` order.
    counters: Vec<AtomicU64>,
    flows: AtomicU64,
    buffered_bytes: AtomicU64,
}

impl Default for PipelineCells {
    fn default() -> Self {
        PipelineCells {
            counters: Counters::HELP.iter().map(|_| AtomicU64::new(0)).collect(),
            flows: AtomicU64::new(0),
            buffered_bytes: AtomicU64::new(0),
        }
    }
}

impl PipelineCells {
    pub fn publish(&self, pipeline: &Pipeline) {
        for (cell, (_, value)) in self.counters.iter().zip(pipeline.counters().iter()) {
            cell.store(value, Relaxed);
        }
        self.flows.store(pipeline.flow_count() as u64, Relaxed);
        self.buffered_bytes
            .store(pipeline.buffered_bytes() as u64, Relaxed);
    }
}

/// Counters that are one family by reason: `requests_aborted_gap` is exported as
/// `requests_aborted{reason="gap"}` (the status line still reads `requests_aborted_gap=`).
const FAMILIES: [(&str, &str); 4] = [
    (
        "requests_aborted_",
        "Requests cut short after their head was handed out, by reason: gap, closed, \
         expired, evicted, invalid (chunked framing).",
    ),
    (
        "stopped_",
        "Connections no longer mirrored, by reason (upgrade, connect, or the request framing \
         error that made the framer give up).",
    ),
    ("flows_ended_", "Flows that ended, by how: fin, rst."),
    (
        "flows_evicted_",
        "Flows evicted to stay within a cap, by cap: table_full, memory.",
    ),
];

/// The sample of one pipeline counter, as a family member where it belongs to one.
fn sample(name: &'static str, help: &'static str, value: u64) -> Sample {
    for (prefix, family_help) in FAMILIES {
        if let Some(reason) = name.strip_prefix(prefix) {
            let family = prefix.trim_end_matches('_');
            return Sample::counter(family, family_help, value).with_label("reason", reason);
        }
    }
    Sample::counter(name, help, value)
}

impl Source for PipelineCells {
    fn visit(&self, out: &mut dyn FnMut(Sample)) {
        for (cell, (name, help)) in self.counters.iter().zip(Counters::HELP) {
            out(sample(name, help, cell.load(Relaxed)));
        }
        out(Sample::gauge(
            "flows",
            "Client connections tracked now.",
            self.flows.load(Relaxed),
        ));
        out(Sample::gauge(
            "buffered_bytes",
            "Bytes held for reassembly and framing now.",
            self.buffered_bytes.load(Relaxed),
        ));
    }
}

#[cfg(test)]
mod tests {
    use mirror_cores::{
        flow::{FlowKey, Segment, TcpFlags},
        pipeline::{Admission, PipelineConfig},
    };

    use super::*;

    #[test]
    fn publishes_what_the_pipeline_counted() {
        // Client-only admission: a lone SYN starts a flow, which is all this test needs.
        let config = PipelineConfig::default().with_admission(Admission::ClientOnly);
        let mut pipeline = Pipeline::new(config).unwrap();
        let flow = FlowKey {
            src: "10.0.0.1:40000".parse().unwrap(),
            dst: "10.0.0.2:80".parse().unwrap(),
        };
        let syn = Segment::new(flow, 9, TcpFlags(TcpFlags::SYN), b"");
        pipeline.on_segment(0, &syn, &mut |_| {});
        let cells = PipelineCells::default();
        let read = |cells: &PipelineCells, name: &str| {
            let mut found = None;
            cells.visit(&mut |sample| {
                if sample.name == name {
                    found = Some(sample.value);
                }
            });
            found
        };
        assert_eq!(read(&cells, "flows_started"), Some(0));
        cells.publish(&pipeline);
        assert_eq!(read(&cells, "flows_started"), Some(1));
        assert_eq!(read(&cells, "flows"), Some(1));
        assert_eq!(read(&cells, "requests_mirrored"), Some(0));
    }

    #[test]
    fn per_reason_counters_are_one_labelled_family() {
        let cells = PipelineCells::default();
        let mut evicted = Vec::new();
        cells.visit(&mut |sample| {
            if sample.name == "flows_evicted" {
                evicted.push(sample.labels[0].1.clone());
            }
            assert!(!sample.name.starts_with("stopped_"), "{}", sample.name);
        });
        assert!(evicted.len() >= 2, "{evicted:?}");
        assert!(
            evicted.iter().any(|reason| reason == "table_full"),
            "{evicted:?}"
        );
        assert!(
            evicted.iter().any(|reason| reason == "memory"),
            "{evicted:?}"
        );
    }
}
