//! Namespace test-bed for mirror: an emulated Kubernetes node and pods built from network
//! namespaces and veth pairs, shared by the end-to-end tests, `cargo xtask demo` and
//! `cargo xtask bench`.
//!
//! ```no_run
//! use mirror_tests::{require_root, Httpbin, Sink, Testbed};
//! # fn main() -> anyhow::Result<()> {
//! if !require_root() {
//!     return Ok(());
//! }
//! let mut tb = Testbed::new()?;
//! let client = tb.add_host("client")?;
//! let v1 = tb.add_host("v1")?;
//! let v2 = tb.add_host("v2")?;
//! let httpbin = Httpbin::start(&v1)?;
//! let vip = tb.add_service("198.19.0.10".parse()?, 8000, &v1, 80)?;
//! tb.add_hosts_entry(&client, "httpbin", vip.ip())?;
//! let shadow = Sink::start(&v2, 80)?;
//! // The agent attaches to v1's node-side veth: tb.node(), v1.node_ifname().
//! client.ns().exec_ok(&["curl", "-sf", "http://httpbin:8000/headers"])?;
//! httpbin.wait_for_access_log(1, std::time::Duration::from_secs(5))?;
//! # drop(shadow);
//! # Ok(())
//! # }
//! ```
//!
//! Nothing is ever created in the root network namespace, so removing a test-bed's namespaces
//! removes all of it. A test-bed is removed when dropped, when the process gets SIGINT, SIGTERM
//! or SIGHUP, or by the next run's [`cleanup_stale`] if the process died; see [`cleanup`] for
//! the naming that makes this work.
//!
//! To leave a set-up running after the process exits (`cargo xtask demo`), build it with
//! [`Testbed::with_label`], [`Process::detach`] the servers and call [`Testbed::keep`];
//! [`remove_label`] removes it later (`cargo xtask demo --down`).
//!
//! Needs root and, on Debian: `iproute2`, `nftables`, `python3-venv` (httpbin's virtualenv,
//! filled from PyPI on first use) and, for this package's own tests, `curl`. The `mirror-sink`
//! binary must be built (`cargo test -p mirror-tests` does it; xtask must
//! `cargo build -p mirror-tests --bin mirror-sink`).

pub mod agent;
pub mod cleanup;
pub mod container;
pub mod hostile;
mod httpbin;
pub mod kmock;
pub mod load;
mod log_tail;
mod netns;
mod privileges;
mod process;
pub mod scenario;
mod sink;
pub mod stream;
mod testbed;

pub use cleanup::{cleanup_stale, remove_all_of_pid, remove_label};
pub use httpbin::{ensure_venv, AccessLogLine, Httpbin, HTTPBIN_PORT, VENV_PINS};
pub use log_tail::read_complete_lines_since;
pub use netns::{Netns, NsThread, EXEC_TIMEOUT};
pub use privileges::require_root;
pub use process::Process;
pub use sink::{hex, sha256_hex, sink_binary, Sink, SinkRecord};
pub use testbed::{Host, Kept, Testbed, MAX_HOSTS};
