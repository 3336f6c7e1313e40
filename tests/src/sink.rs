//! The digest sink: an HTTP/1.1 server (`mirror-sink`, a binary of this package) that stands in
//! for the shadow service and records a digest of every request it gets, so that tests can
//! check that mirrored requests arrived complete, byte-exact and in order without storing the
//! bodies (they may be many MiB).

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::process::Process;
use crate::testbed::Host;

/// One request as the sink saw it: one JSON line of its log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SinkRecord {
    /// Connection number, in accept order from 0, unique within one sink process. Connections
    /// without requests count too (e.g. the readiness probe of [`Sink::start`]).
    pub conn: u64,
    /// Position of the request on its connection, from 0.
    pub index: u64,
    /// The client's address (IPv4-mapped addresses shown as IPv4).
    pub peer: String,
    /// Request method.
    pub method: String,
    /// Request target as sent.
    pub path: String,
    /// Host header, if any.
    pub host: Option<String>,
    /// The request head byte for byte, request line through the blank line.
    #[serde(default)]
    pub head: String,
    /// Body length after de-chunking.
    pub body_len: u64,
    /// SHA-256 of the (de-chunked) body, lowercase hex.
    pub sha256: String,
}

/// Lowercase hex SHA-256 of `data`: what [`SinkRecord::sha256`] holds for that body.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A running sink; dropping it stops the server.
#[derive(Debug)]
pub struct Sink {
    process: Process,
    log: PathBuf,
    port: u16,
}

impl Sink {
    /// Starts the sink in `host`, listening on `port` on all its IPv4 and IPv6 addresses, and
    /// waits until it accepts connections. Finds the binary as [`sink_binary`] says.
    pub fn start(host: &Host, port: u16) -> Result<Self> {
        Self::start_with(host, port, &[])
    }

    /// [`Sink::start`] with more mirror-sink options (e.g. `--response-bytes 1048576`).
    pub fn start_with(host: &Host, port: u16, options: &[&str]) -> Result<Self> {
        let binary = sink_binary()?;
        let ns = host.ns();
        let log = ns
            .log_dir()
            .join(format!("{}.sink-{port}.jsonl", host.name()));
        let listen = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port).to_string();
        let mut process = ns.spawn(
            &format!("sink-{port}"),
            &[
                binary.as_os_str(),
                "--listen".as_ref(),
                listen.as_ref(),
                "--log".as_ref(),
                log.as_os_str(),
            ]
            .into_iter()
            .chain(options.iter().map(std::ffi::OsStr::new))
            .collect::<Vec<_>>(),
        )?;
        let local = SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), port);
        ns.wait_for_tcp_while(local, Duration::from_secs(10), || process.ensure_running())
            .context("mirror-sink did not start")?;
        Ok(Self { process, log, port })
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The sink process (for its pid and logs).
    pub fn process(&self) -> &Process {
        &self.process
    }

    /// The requests recorded so far, in the order they completed.
    pub fn records(&self) -> Result<Vec<SinkRecord>> {
        let text = match std::fs::read_to_string(&self.log) {
            Ok(text) => text,
            // The sink creates its log on the first request.
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(err) => return Err(err).with_context(|| format!("read {}", self.log.display())),
        };
        // A line without its newline is still being written.
        let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
        complete
            .lines()
            .map(|line| {
                serde_json::from_str(line).with_context(|| format!("bad sink record {line:?}"))
            })
            .collect()
    }

    /// The paths of the requests recorded so far, in the order they completed.
    pub fn paths(&self) -> Result<Vec<String>> {
        Ok(self
            .records()?
            .into_iter()
            .map(|record| record.path)
            .collect())
    }

    /// Waits until at least `count` requests are recorded and returns the records; mirrored
    /// requests arrive some time after the client got its reply.
    pub fn wait_for_records(&self, count: usize, timeout: Duration) -> Result<Vec<SinkRecord>> {
        let deadline = Instant::now() + timeout;
        loop {
            let records = self.records()?;
            if records.len() >= count {
                return Ok(records);
            }
            if Instant::now() > deadline {
                bail!(
                    "sink recorded {} requests, not {count}, within {timeout:?}",
                    records.len()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Path of the `mirror-sink` binary: `MIRROR_SINK_BIN` if set, else next to the running
/// executable or one directory up (test binaries live in `target/<profile>/deps`). Callers
/// outside this package's tests (xtask) must build it first:
/// `cargo build -p mirror-tests --bin mirror-sink`.
pub fn sink_binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("MIRROR_SINK_BIN") {
        return Ok(path.into());
    }
    let exe = std::env::current_exe().context("locate the running executable")?;
    let candidates: Vec<PathBuf> = exe
        .ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join("mirror-sink"))
        .collect();
    match candidates.iter().find(|path| path.is_file()) {
        Some(path) => Ok(path.clone()),
        None => bail!(
            "mirror-sink not found in {candidates:?}; run `cargo build -p mirror-tests --bin \
             mirror-sink` or set MIRROR_SINK_BIN"
        ),
    }
}
