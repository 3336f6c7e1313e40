//! Observability: the one registry every stage's counters are read through, and what renders
//! and serves it (the status lines; the Prometheus text formats; the admin endpoint; the
//! access log; `mirror status`).

pub mod access_log;
pub mod admin;
pub mod health;
pub mod histogram;
pub mod options;
pub mod prometheus;
pub mod registry;
pub mod scrape;
pub mod status;
pub mod status_cmd;

pub use registry::{Kind, Registry, Sample, Source};
