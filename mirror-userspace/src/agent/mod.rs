//! The agent: `mirror run` wires capture, the pipeline and the relay into one loop and
//! reports where the traffic went.

mod dispatch;
mod intake;
mod mirror_stats;
mod pipeline_cells;
pub mod run;
