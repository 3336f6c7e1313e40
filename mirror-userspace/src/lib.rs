//! The `mirror` node agent: the I/O shell around the sans-IO cores of `mirror-cores`.
//!
//! One room per layer, arrows pointing down:
//! - [`agent`]: `mirror run`, wiring capture → pipeline → relay and reporting;
//! - [`inspect`]: `mirror capture`, which prints what the capture sees;
//! - [`relay`]: replays framed requests to v2 and discards its answers;
//! - [`control`]: the config file, its validation and live reload;
//! - [`capture`]: the kernel program (load, attach, targets), the ring buffer, records and
//!   the packets in them;
//! - [`observe`]: the one counter registry every stage is read through, and its renderings.
//!
//! The protocol cores (reassembly, framing, rewrite, sampling, the flow table) live in the
//! `mirror-cores` crate, which has no I/O at all.

pub mod agent;
pub mod capture;
pub mod control;
pub mod inspect;
pub mod observe;
pub mod relay;
pub mod shutdown;
