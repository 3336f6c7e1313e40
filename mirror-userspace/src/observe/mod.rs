//! Observability: the one registry every stage's counters are read through, and what renders
//! it (the status line; the Prometheus text format for an admin endpoint).

pub mod prometheus;
pub mod registry;
pub mod status;

pub use registry::{Kind, Registry, Sample, Source};
