//! What the capture loop saw before the pipeline: ring records, and those it could not use.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use mirror_cores::pipeline::{Event, Pipeline};

use crate::{
    capture::{packet, record},
    observe::{Sample, Source},
};

#[derive(Debug, Default)]
pub struct Intake {
    pub records: AtomicU64,
    pub malformed_records: AtomicU64,
    pub undecodable_packets: AtomicU64,
    /// Header-only records of v1's side, fed to the pipeline as v1's acknowledgements.
    pub reverse_records: AtomicU64,
}

impl Intake {
    /// Decodes one ring-format record and feeds its segment to `pipeline` (v1's side as its
    /// acknowledgements, which release the client's bytes), counting what cannot be read.
    /// Returns the record's time, or `None` if it could not be read.
    pub fn feed(
        &self,
        item: &[u8],
        pipeline: &mut Pipeline,
        emit: &mut impl FnMut(Event),
    ) -> Option<u64> {
        self.records.fetch_add(1, Relaxed);
        let Ok(record) = record::decode(item) else {
            self.malformed_records.fetch_add(1, Relaxed);
            return None;
        };
        let Ok(segment) = packet::parse_record(&record) else {
            self.undecodable_packets.fetch_add(1, Relaxed);
            return None;
        };
        let now = record.header.timestamp_ns;
        if record.reverse() {
            self.reverse_records.fetch_add(1, Relaxed);
            pipeline.on_server_segment(now, &segment, emit);
        } else {
            pipeline.on_segment(now, &segment, emit);
        }
        Some(now)
    }
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
        out(Sample::counter(
            "reverse_records",
            "Header-only records of v1's side (its acknowledgements and windows).",
            self.reverse_records.load(Relaxed),
        ));
    }
}
