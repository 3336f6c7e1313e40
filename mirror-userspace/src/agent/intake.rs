//! What the capture loop saw before the pipeline: ring records, and those it could not use.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::observe::{Sample, Source};

#[derive(Debug, Default)]
pub struct Intake {
    pub records: AtomicU64,
    pub malformed_records: AtomicU64,
    pub undecodable_packets: AtomicU64,
}

impl Source for Intake {
    fn visit(&self, out: &mut dyn FnMut(Sample)) {
        out(Sample::counter(
            "records",
            "Ring buffer records read.",
            self.records.load(Relaxed),
        ));
        out(Sample::counter(
            "malformed_records",
            "Records shorter than their header or length: skipped.",
            self.malformed_records.load(Relaxed),
        ));
        out(Sample::counter(
            "undecodable_packets",
            "Records whose packet is not Ethernet, IP and TCP as expected: skipped.",
            self.undecodable_packets.load(Relaxed),
        ));
    }
}
