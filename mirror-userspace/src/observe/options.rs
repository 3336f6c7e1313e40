//! The command-line options of `mirror run` that belong to observability.

use std::net::SocketAddr;

use super::{access_log::Destination, admin::DEFAULT_ADDR};

#[derive(Clone, Debug, clap::Args)]
pub struct ObserveOptions {
    /// Address of the admin endpoint (/metrics, /healthz, /readyz, /config). Loopback by
    /// default, so nothing is exposed unless asked for.
    #[arg(long, default_value = DEFAULT_ADDR, value_name = "ADDR:PORT")]
    pub admin_addr: SocketAddr,
    /// Serve no admin endpoint.
    #[arg(long, conflicts_with = "admin_addr")]
    pub no_admin: bool,
    /// Write one JSON line per mirrored request and its outcome to PATH (`-`: stdout).
    #[arg(long, value_name = "PATH|-")]
    pub access_log: Option<Destination>,
    /// Log one request in this many to the access log.
    #[arg(long, default_value_t = 1, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub access_log_every: u64,
}

impl ObserveOptions {
    /// The admin endpoint's address, unless it is off.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        (!self.no_admin).then_some(self.admin_addr)
    }
}
