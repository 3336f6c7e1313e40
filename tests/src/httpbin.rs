//! The real httpbin (the service Istio's mirroring task uses) under gunicorn, in a pod.
//!
//! httpbin comes from PyPI into a virtualenv cached in the workspace's `target/` directory: made
//! on first use, reused afterwards, and rebuilt when the pins below change. Tests running in
//! parallel (threads or processes) serialise its creation on a lock file.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use crate::process::{tail, Process};
use crate::testbed::Host;

/// What the virtualenv holds. httpbin 0.10.4 runs on current Flask/Werkzeug; they are pinned to
/// the versions it was checked with so that a future release cannot break the tests unnoticed.
/// gunicorn is pinned for its `--no-control-socket` flag (added in 25.1.0): without it every
/// gunicorn of a run would open the same default control socket under `~/.gunicorn`.
pub const VENV_PINS: &[&str] = &[
    "httpbin==0.10.4",
    "gunicorn==27.0.1",
    "Flask==3.1.3",
    "Werkzeug==3.1.9",
    // Not httpbin's: the reference parser the observability tests check `/metrics` with.
    "prometheus-client==0.26.0",
    // Not httpbin's: the gRPC server and client of the h2c tests (tests/tests/protocols.rs).
    "grpcio==1.85.1",
    // Not httpbin's: an HTTP/1.1 and h2c server that takes `Upgrade: h2c` (protocols.rs).
    "hypercorn==0.18.0",
];

/// Port httpbin listens on inside its pod, like the Kubernetes sample's container port.
pub const HTTPBIN_PORT: u16 = 80;

/// How long gunicorn may take to boot (importing Flask takes most of it).
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Gunicorn access-log format: client, request line, status, body bytes, Host header. The Host
/// header is what tells primary (`httpbin:8000`) and mirrored (`httpbin-shadow:8000`) requests
/// apart.
const ACCESS_LOG_FORMAT: &str = r#"%(h)s "%(r)s" %(s)s %(b)s host=%({host}i)s"#;

/// A running httpbin; dropping it stops gunicorn and its worker.
#[derive(Debug)]
pub struct Httpbin {
    process: Process,
    access_log: PathBuf,
}

/// One request as gunicorn logged it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessLogLine {
    /// Client address (an IPv4 client shows as IPv4, not as an IPv4-mapped IPv6 address).
    pub remote: String,
    /// Request method.
    pub method: String,
    /// Request target (path and query).
    pub path: String,
    /// Response status.
    pub status: u16,
    /// Host header, `-` if absent.
    pub host: String,
}

impl Httpbin {
    /// Starts httpbin on port [`HTTPBIN_PORT`] of all of `host`'s IPv4 and IPv6 addresses and waits
    /// until it accepts connections. Creates the virtualenv first if needed.
    ///
    /// It binds `[::]:80` alone, which serves IPv4 too (namespaces start with
    /// `net.ipv6.bindv6only=0`): gunicorn cannot bind `0.0.0.0:80` beside it, as that port is
    /// then taken.
    pub fn start(host: &Host) -> Result<Self> {
        Self::start_with(host, &[])
    }

    /// [`Httpbin::start`] with more gunicorn options (e.g. `--backlog 100`).
    pub fn start_with(host: &Host, gunicorn_options: &[&str]) -> Result<Self> {
        let venv = ensure_venv()?;
        let ns = host.ns();
        let access_log = ns
            .log_dir()
            .join(format!("{}.httpbin-access.log", host.name()));
        // gunicorn appends; a fresh file per start keeps lines of earlier runs out.
        File::create(&access_log).with_context(|| format!("create {}", access_log.display()))?;
        let gunicorn = venv.join("bin/gunicorn");
        let mut argv: Vec<std::ffi::OsString> = [
            gunicorn.as_os_str(),
            "--no-control-socket".as_ref(),
            "-w".as_ref(),
            "1".as_ref(),
            "--access-logfile".as_ref(),
            access_log.as_os_str(),
            "--access-logformat".as_ref(),
            ACCESS_LOG_FORMAT.as_ref(),
            "-b".as_ref(),
            format!("[::]:{HTTPBIN_PORT}").as_ref(),
            "httpbin:app".as_ref(),
        ]
        .iter()
        .map(|arg: &&std::ffi::OsStr| arg.to_os_string())
        .collect();
        argv.splice(1..1, gunicorn_options.iter().map(std::ffi::OsString::from));
        let mut process = ns.spawn("httpbin", &argv)?;
        let local = SocketAddr::from((Ipv4Addr::LOCALHOST, HTTPBIN_PORT));
        ns.wait_for_tcp_while(local, READY_TIMEOUT, || process.ensure_running())
            .context("httpbin did not start")?;
        Ok(Self {
            process,
            access_log,
        })
    }

    /// The gunicorn process (for its pid and logs).
    pub fn process(&self) -> &Process {
        &self.process
    }

    /// The access log file, for people to `tail -f` (the demo prints it).
    pub fn access_log_path(&self) -> &Path {
        &self.access_log
    }

    /// Leaves gunicorn running after this guard is gone (a kept set-up) and returns its pid. It
    /// still dies when its namespace is removed.
    pub fn detach(self) -> u32 {
        self.process.detach()
    }

    /// The access log, parsed; lines that do not parse are an error (the format is ours).
    pub fn access_log_lines(&self) -> Result<Vec<AccessLogLine>> {
        self.access_log_lines_since(0)
    }

    /// The access log's length now: [`Self::access_log_lines_since`] it reads only the lines
    /// logged after this point (a benchmark's log grows by millions of lines).
    pub fn access_log_len(&self) -> Result<u64> {
        Ok(std::fs::metadata(&self.access_log)
            .with_context(|| format!("stat {}", self.access_log.display()))?
            .len())
    }

    /// The lines logged past byte `offset` (a length [`Self::access_log_len`] returned), parsed.
    pub fn access_log_lines_since(&self, offset: u64) -> Result<Vec<AccessLogLine>> {
        let text = crate::read_complete_lines_since(&self.access_log, offset)?;
        text.lines().map(AccessLogLine::parse).collect()
    }

    /// Waits until the access log holds at least `count` lines and returns them. gunicorn logs a
    /// request after answering it, so a client that has its reply may not see the line yet.
    pub fn wait_for_access_log(
        &self,
        count: usize,
        timeout: Duration,
    ) -> Result<Vec<AccessLogLine>> {
        let deadline = Instant::now() + timeout;
        loop {
            let lines = self.access_log_lines()?;
            if lines.len() >= count {
                return Ok(lines);
            }
            if Instant::now() > deadline {
                bail!(
                    "httpbin logged {} requests, not {count}, within {timeout:?}: {lines:?}",
                    lines.len()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl AccessLogLine {
    /// Parses a line of the access log [`Httpbin::start`] configures.
    pub fn parse(line: &str) -> Result<Self> {
        let parsed = (|| {
            let (remote, rest) = line.split_once(" \"")?;
            let (request, rest) = rest.split_once("\" ")?;
            let mut request = request.split(' ');
            let method = request.next()?;
            let path = request.next()?;
            let mut rest = rest.split(' ');
            let status = rest.next()?.parse().ok()?;
            let _bytes = rest.next()?;
            let host = rest.next()?.strip_prefix("host=")?;
            // The dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d.
            let remote = match remote.parse::<IpAddr>() {
                Ok(ip) => ip.to_canonical().to_string(),
                Err(_) => remote.to_owned(),
            };
            Some(Self {
                remote,
                method: method.to_owned(),
                path: path.to_owned(),
                status,
                host: host.to_owned(),
            })
        })();
        parsed.with_context(|| format!("unexpected access log line {line:?}"))
    }
}

/// Returns the httpbin virtualenv, creating it if it is missing or has other pins. Set
/// `MIRROR_HTTPBIN_VENV` to use another location.
pub fn ensure_venv() -> Result<PathBuf> {
    let venv = match std::env::var_os("MIRROR_HTTPBIN_VENV") {
        Some(path) => PathBuf::from(path),
        None => target_dir().join("httpbin-venv"),
    };
    let marker = venv.join(".mirror-pins");
    let wanted = VENV_PINS.join("\n");
    let ready = || std::fs::read_to_string(&marker).is_ok_and(|pins| pins == wanted);
    if ready() {
        return Ok(venv);
    }
    let parent = venv.parent().context("venv path has no parent")?;
    std::fs::create_dir_all(parent).with_context(|| format!("create {}", parent.display()))?;
    let lock_path = venv.with_extension("lock");
    let lock = File::create(&lock_path).with_context(|| format!("open {}", lock_path.display()))?;
    // SAFETY: flock on an open file descriptor; the lock is released when `lock` is closed.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(std::io::Error::last_os_error()).context("lock the venv");
    }
    // Another test may have built it while this one waited for the lock.
    if ready() {
        return Ok(venv);
    }
    eprintln!(
        "mirror-tests: creating httpbin virtualenv in {} (needs PyPI, takes a minute)",
        venv.display()
    );
    if venv.exists() {
        std::fs::remove_dir_all(&venv).with_context(|| format!("remove {}", venv.display()))?;
    }
    run(Command::new("python3").args(["-m", "venv"]).arg(&venv))
        .context("python3 -m venv (Debian needs the python3-venv package)")?;
    run(Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet", "--disable-pip-version-check"])
        .args(VENV_PINS))?;
    // Written last: its presence means the venv is complete.
    std::fs::write(&marker, wanted).with_context(|| format!("write {}", marker.display()))?;
    Ok(venv)
}

/// The workspace's target directory: `CARGO_TARGET_DIR` if set now or at build time, else
/// `<workspace>/target`.
fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return dir.into();
    }
    if let Some(dir) = option_env!("CARGO_TARGET_DIR") {
        return dir.into();
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target")
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}):\n{}{}",
            out.status,
            tail(&String::from_utf8_lossy(&out.stdout), 2000),
            tail(&String::from_utf8_lossy(&out.stderr), 4000)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_access_log_lines() {
        let line = AccessLogLine::parse(
            r#"198.18.1.2 "GET /headers?a=1 HTTP/1.1" 200 107 host=httpbin:8000"#,
        )
        .unwrap();
        assert_eq!(line.remote, "198.18.1.2");
        assert_eq!(line.method, "GET");
        assert_eq!(line.path, "/headers?a=1");
        assert_eq!(line.status, 200);
        assert_eq!(line.host, "httpbin:8000");
        assert!(AccessLogLine::parse("garbage").is_err());
        let mapped =
            AccessLogLine::parse(r#"::ffff:198.18.1.2 "GET / HTTP/1.1" 200 1 host=-"#).unwrap();
        assert_eq!(mapped.remote, "198.18.1.2");
    }
}
