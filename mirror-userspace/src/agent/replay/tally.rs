//! What `mirror replay` read from its file before the pipeline, and (with `--discard`) what
//! the pipeline handed on: the replay's stages in the status line.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use mirror_cores::pipeline::Event;

use crate::observe::{Sample, Source};

/// Packets of the file, by what became of them.
#[derive(Debug, Default)]
pub struct FileTally {
    pub packets: AtomicU64,
    pub undecodable_packets: AtomicU64,
    pub client_segments: AtomicU64,
    pub server_segments: AtomicU64,
    pub unattributed_packets: AtomicU64,
    pub endpoints_not_learnt: AtomicU64,
}

impl Source for FileTally {
    fn visit(&self, out: &mut dyn FnMut(Sample)) {
        for (name, help, counter) in [
            ("packets", "Packets read from the file.", &self.packets),
            (
                "undecodable_packets",
                "Packets that are not Ethernet (or cooked), IP and TCP: skipped.",
                &self.undecodable_packets,
            ),
            (
                "client_segments",
                "Segments from clients to v1, fed to the pipeline whole.",
                &self.client_segments,
            ),
            (
                "server_segments",
                "Segments of v1's side, fed to the pipeline as its acknowledgements.",
                &self.server_segments,
            ),
            (
                "unattributed_packets",
                "Packets of neither a --target nor an endpoint seen in a handshake: skipped.",
                &self.unattributed_packets,
            ),
            (
                "endpoints_not_learnt",
                "v1 endpoints seen in handshakes but not learnt: the set was full.",
                &self.endpoints_not_learnt,
            ),
        ] {
            out(Sample::counter(name, help, counter.load(Relaxed)));
        }
    }
}

/// `--discard`: the pipeline's events counted and dropped, so the capture path (file read,
/// decode, pipeline) is measured without a relay or v2.
#[derive(Debug, Default)]
pub struct Discarded {
    pub request_heads: AtomicU64,
    pub request_ends: AtomicU64,
    pub request_aborts: AtomicU64,
    pub body_bytes: AtomicU64,
    pub flow_ends: AtomicU64,
    pub stream_bytes: AtomicU64,
}

impl Discarded {
    pub fn take(&self, event: Event) {
        let counter = match &event {
            Event::RequestHead { .. } => &self.request_heads,
            Event::RequestBody { data, .. } => {
                self.body_bytes.fetch_add(data.len() as u64, Relaxed);
                return;
            }
            Event::RequestEnd { .. } => &self.request_ends,
            Event::RequestAbort { .. } => &self.request_aborts,
            Event::FlowEnd { .. } => &self.flow_ends,
            Event::StreamData { data, .. } => {
                self.stream_bytes.fetch_add(data.len() as u64, Relaxed);
                return;
            }
        };
        counter.fetch_add(1, Relaxed);
    }
}

impl Source for Discarded {
    fn visit(&self, out: &mut dyn FnMut(Sample)) {
        for (name, help, counter) in [
            (
                "request_heads",
                "Request heads handed on.",
                &self.request_heads,
            ),
            (
                "request_ends",
                "Requests handed on whole.",
                &self.request_ends,
            ),
            (
                "request_aborts",
                "Requests cut short after their head.",
                &self.request_aborts,
            ),
            ("body_bytes", "Body bytes handed on.", &self.body_bytes),
            ("flow_ends", "Flows ended.", &self.flow_ends),
            (
                "stream_bytes",
                "Raw TCP and h2c bytes handed on.",
                &self.stream_bytes,
            ),
        ] {
            out(Sample::counter(name, help, counter.load(Relaxed)));
        }
    }
}
