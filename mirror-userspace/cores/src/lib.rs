//! The agent's protocol cores, sans-IO: pure state machines over bytes, with time passed in as
//! an argument. No sockets, no async runtime, no eBPF: everything here is tested and fuzzed
//! over byte vectors alone.
//!
//! Data flows down this list: decoded [`flow::Segment`]s enter the [`pipeline`], which keeps
//! one [`reassembly::Reassembler`] and one [`http::Framer`] per flow and emits request events;
//! [`rewrite`] and [`sampling`] are the framer's policies; [`outcome`] names every way a
//! request or a connection can end; [`policy`] decides, per request head, which mirrors take
//! it and the head each of them sends.

pub mod flow;
pub mod http;
pub mod http2;
pub mod outcome;
pub mod pipeline;
pub mod policy;
pub mod reassembly;
pub mod rewrite;
pub mod sampling;
#[cfg(test)]
mod test_support;
