//! Control: what the agent is told to do. The config file (parsing, validation, the
//! effective policies), the interfaces its patterns name, live reload, and the conversion
//! from Istio and Gateway API objects. It only produces configs; `agent/` applies them.

pub mod config;
mod file;
pub mod interfaces;
pub mod istio;
pub mod reload;
mod service;
#[cfg(test)]
mod tests;

pub use config::{load, parse, parse_policy, ConfigError, MirrorConfig, PolicyConfig, Protocol};
