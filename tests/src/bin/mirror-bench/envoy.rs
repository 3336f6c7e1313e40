//! Envoy as the mirroring proxy: one route to the primary with a `request_mirror_policies`
//! entry for the shadow, which appends `-shadow` to the Host itself.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, Result};
use mirror_tests::{Netns, Process};

/// A running Envoy; the guard stops it.
pub struct Envoy {
    pub process: Process,
}

fn cluster(name: &str, addr: SocketAddr) -> String {
    format!(
        "  - name: {name}\n    type: STATIC\n    connect_timeout: 2s\n\
         \x20   circuit_breakers:\n      thresholds:\n\
         \x20     - {{max_connections: 100000, max_pending_requests: 100000, max_requests: 100000}}\n\
         \x20   load_assignment:\n      cluster_name: {name}\n      endpoints:\n\
         \x20     - lb_endpoints:\n        - endpoint:\n            address:\n\
         \x20             socket_address: {{address: \"{}\", port_value: {}}}\n",
        addr.ip(),
        addr.port()
    )
}

/// A cluster whose upstream connections speak HTTP/2 (h2c with prior knowledge).
fn cluster_h2(name: &str, addr: SocketAddr) -> String {
    format!(
        "{}    typed_extension_protocol_options:\n\
         \x20     envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n\
         \x20       \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n\
         \x20       explicit_http_config:\n          http2_protocol_options: {{}}\n",
        cluster(name, addr)
    )
}

/// Static bootstrap: listener on `listen`, everything routed to `primary` and mirrored to
/// `shadow`. Circuit breakers are raised so that Envoy's defaults (1,024 pending requests) do
/// not shed the mirror under saturation, as a tuned deployment would.
pub fn config(listen: SocketAddr, primary: SocketAddr, shadow: SocketAddr) -> String {
    bootstrap(
        listen,
        &cluster("primary", primary),
        &cluster("shadow", shadow),
    )
}

/// [`config`] for HTTP/2: the listener takes h2c (its codec is detected from the first
/// bytes), both upstreams are HTTP/2, and an admin listener on `admin` serves the shadow
/// cluster's counters.
pub fn h2_config(
    listen: SocketAddr,
    primary: SocketAddr,
    shadow: SocketAddr,
    admin: SocketAddr,
) -> String {
    format!(
        "admin:\n  address:\n    socket_address: {{address: \"{}\", port_value: {}}}\n{}",
        admin.ip(),
        admin.port(),
        bootstrap(
            listen,
            &cluster_h2("primary", primary),
            &cluster_h2("shadow", shadow),
        )
    )
}

fn bootstrap(listen: SocketAddr, primary: &str, shadow: &str) -> String {
    format!(
        "static_resources:\n  listeners:\n  - name: ingress\n    address:\n\
         \x20     socket_address: {{address: \"{}\", port_value: {}}}\n    filter_chains:\n\
         \x20   - filters:\n      - name: envoy.filters.network.http_connection_manager\n\
         \x20       typed_config:\n\
         \x20         \"@type\": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager\n\
         \x20         stat_prefix: ingress\n          route_config:\n            virtual_hosts:\n\
         \x20           - name: all\n              domains: [\"*\"]\n              routes:\n\
         \x20             - match: {{prefix: \"/\"}}\n                route:\n\
         \x20                 cluster: primary\n                  timeout: 60s\n\
         \x20                 request_mirror_policies:\n                  - cluster: shadow\n\
         \x20         http_filters:\n          - name: envoy.filters.http.router\n\
         \x20           typed_config:\n\
         \x20             \"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router\n\
         \x20 clusters:\n{}{}",
        listen.ip(),
        listen.port(),
        primary,
        shadow
    )
}

impl Envoy {
    /// Runs `binary` on `config` inside `ns` with two worker threads (one per core, like the
    /// agent's runtime and nginx's two workers) and waits until it listens on `listen`.
    pub fn start(
        ns: &Netns,
        binary: &Path,
        dir: &Path,
        config: &str,
        listen: SocketAddr,
    ) -> Result<Self> {
        let file = dir.join("envoy.yaml");
        std::fs::write(&file, config).with_context(|| format!("write {}", file.display()))?;
        let process = ns.spawn(
            "envoy",
            &[
                binary.as_os_str(),
                "-c".as_ref(),
                file.as_os_str(),
                "--concurrency".as_ref(),
                "2".as_ref(),
                "--disable-hot-restart".as_ref(),
                "-l".as_ref(),
                "warning".as_ref(),
            ],
        )?;
        let mut envoy = Self { process };
        let process = &mut envoy.process;
        ns.wait_for_tcp(listen, Duration::from_secs(20))
            .or_else(|err| process.ensure_running().and(Err(err)))
            .context("envoy did not start")?;
        Ok(envoy)
    }
}
