//! nginx in two roles: the fast backend (a fixed 3-byte answer, one access-log line per request
//! with its Host) and the mirroring reverse proxy (`mirror` directive, Host `$host-shadow`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result};
use mirror_tests::{Netns, Process};

/// A running nginx; the guard stops its process group.
pub struct Nginx {
    pub process: Process,
}

/// Settings every instance shares: its own pid file and temp directories under `dir`, so
/// instances in different namespaces never touch each other's files or Debian's.
fn common(dir: &Path, workers: u32) -> String {
    let d = dir.display();
    format!(
        "user root;\nworker_processes {workers};\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 16384; }}\n\
         http {{\n\
         \taccess_log off;\n\
         \tclient_body_temp_path {d}/body;\n\tproxy_temp_path {d}/proxy;\n\
         \tfastcgi_temp_path {d}/fastcgi;\n\tuwsgi_temp_path {d}/uwsgi;\n\tscgi_temp_path {d}/scgi;\n\
         \tkeepalive_requests 1000000;\n\tclient_max_body_size 0;\n"
    )
}

/// The fast backend: answers `ok\n` to anything on `port` and logs each request's Host header
/// (with its port) to `access_log`, unbuffered so that counts are exact when the run ends.
pub fn backend_config(dir: &Path, port: u16, access_log: &Path) -> String {
    format!(
        "{}\tlog_format host '$http_host';\n\
         \tserver {{\n\t\tlisten {port} reuseport;\n\t\tlisten [::]:{port} reuseport;\n\
         \t\taccess_log {} host;\n\
         \t\tlocation / {{ return 200 \"ok\\n\"; }}\n\t}}\n}}\n",
        common(dir, 1),
        access_log.display()
    )
}

/// The mirroring proxy, configured as a production one would be: keep-alive pools to both
/// upstreams (HTTP/1.1, `Connection` cleared), the mirror subrequest carrying the body, and
/// Host `$host-shadow` on the copy. nginx's `$host` drops the port.
pub fn proxy_config(
    dir: &Path,
    listen: SocketAddr,
    primary: SocketAddr,
    shadow: SocketAddr,
) -> String {
    format!(
        "{}\tupstream primary {{ server {primary}; keepalive 256; }}\n\
         \tupstream shadow {{ server {shadow}; keepalive 256; }}\n\
         \tserver {{\n\t\tlisten {listen};\n\
         \t\tlocation / {{\n\t\t\tmirror /mirror-copy;\n\t\t\tmirror_request_body on;\n\
         \t\t\tproxy_http_version 1.1;\n\t\t\tproxy_set_header Connection \"\";\n\
         \t\t\tproxy_set_header Host $http_host;\n\t\t\tproxy_pass http://primary;\n\t\t}}\n\
         \t\tlocation = /mirror-copy {{\n\t\t\tinternal;\n\
         \t\t\tproxy_http_version 1.1;\n\t\t\tproxy_set_header Connection \"\";\n\
         \t\t\tproxy_set_header Host $host-shadow;\n\
         \t\t\tproxy_pass http://shadow$request_uri;\n\t\t}}\n\t}}\n}}\n",
        common(dir, 2)
    )
}

impl Nginx {
    /// Writes `config` to `<dir>/nginx.conf` and runs nginx on it in the foreground inside
    /// `ns`, waiting until `probe` (an address it listens on) accepts connections.
    pub fn start(
        ns: &Netns,
        label: &str,
        dir: &Path,
        config: &str,
        probe: SocketAddr,
    ) -> Result<Self> {
        for sub in ["body", "proxy", "fastcgi", "uwsgi", "scgi"] {
            let path = dir.join(sub);
            std::fs::create_dir_all(&path).with_context(|| format!("create {}", path.display()))?;
        }
        let conf: PathBuf = dir.join("nginx.conf");
        std::fs::write(&conf, config).with_context(|| format!("write {}", conf.display()))?;
        let error_log = dir.join("error.log");
        let process = ns.spawn(
            label,
            &[
                "nginx".as_ref(),
                "-e".as_ref(),
                error_log.as_os_str(),
                "-c".as_ref(),
                conf.as_os_str(),
                "-g".as_ref(),
                "daemon off;".as_ref(),
            ],
        )?;
        let mut nginx = Self { process };
        let process = &mut nginx.process;
        ns.wait_for_tcp(probe, Duration::from_secs(10))
            .or_else(|err| process.ensure_running().and(Err(err)))
            .with_context(|| format!("nginx {label} did not start"))?;
        Ok(nginx)
    }
}
