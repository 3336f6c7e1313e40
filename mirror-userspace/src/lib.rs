//! The userspace agent: loads the kernel program, reads what it captures, rebuilds requests
//! and replays them to the shadow.

pub mod attached;
pub mod capture;
pub mod clock;
pub mod flow;
pub mod http;
pub mod outcome;
pub mod packet;
pub mod pcap;
pub mod pipeline;
pub mod privileges;
pub mod probe;
pub mod reassembly;
pub mod record;
pub mod relay;
pub mod rewrite;
pub mod ring;
pub mod run;
pub mod sampling;
pub mod session;
pub mod target;
pub mod target_set;
#[cfg(test)]
mod test_support;
