//! The agent: `mirror run` wires capture, the pipeline and the relay (or, under a config
//! file, the policy dispatcher and one relay per mirror) into one loop and reports where the
//! traffic went; `mirror replay` feeds the same pipeline and relay from a saved capture.

mod dispatch;
mod effective;
mod heap_trim;
pub mod host_rewrite;
mod intake;
pub mod kubernetes;
mod link_events;
pub(crate) mod mirror_stats;
mod pipeline_cells;
mod relay_priority;
pub mod replay;
pub mod run;
mod run_shards;
mod shards;
