//! The userspace agent: loads the kernel program, reads what it captures, rebuilds requests
//! and replays them to the shadow.

pub mod flow;
