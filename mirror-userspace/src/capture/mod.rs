//! Capture: the kernel program and everything between it and the pipeline. Loading and
//! attaching the classifier, the targets it matches, the ring buffer it writes, the records
//! in the ring and the packets in the records.

pub mod attached;
pub mod classifier;
pub(crate) mod clock;
pub(crate) mod kernel_stats;
pub(crate) mod live;
pub mod packet;
pub mod pcap;
mod port_filter;
mod privileges;
pub(crate) mod record;
mod ring;
pub(crate) mod ring_fill;
pub mod session;
pub mod target;
mod target_set;
