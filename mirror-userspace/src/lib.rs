//! The userspace agent: loads the kernel program, reads what it captures, rebuilds requests
//! and replays them to the shadow.

pub mod attached;
pub mod capture;
pub mod clock;
pub mod flow;
pub mod packet;
pub mod pcap;
pub mod privileges;
pub mod probe;
pub mod record;
pub mod relay;
pub mod ring;
pub mod session;
pub mod target;
pub mod target_set;
