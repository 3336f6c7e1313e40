//! The kernel half of mirror lives in `main.rs` (built for `bpfel-unknown-none`).
//!
//! This empty library exists so that `mirror-userspace` can name the crate as a
//! build-dependency, which makes cargo rebuild the agent when the kernel program changes.
#![no_std]
