//! The agent: `mirror run` wires capture, the pipeline and the relay into one loop and
//! reports where the traffic went.

mod effective;
mod intake;
mod pipeline_cells;
pub mod run;
