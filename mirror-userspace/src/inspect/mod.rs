//! Commands that show what the capture sees, for people and for the end-to-end tests:
//! `mirror capture` prints (and saves) every captured segment.

pub mod dump;
