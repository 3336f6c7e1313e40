//! The userspace agent: loads the kernel program, reads what it captures, rebuilds requests
//! and replays them to the shadow.

pub mod flow;
pub mod http;
pub mod outcome;
pub mod pipeline;
pub mod reassembly;
pub mod rewrite;
pub mod sampling;
#[cfg(test)]
mod test_support;
