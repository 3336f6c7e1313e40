//! A named network namespace and the ways to run things inside it.
//!
//! Commands go through `ip netns exec`, which also bind-mounts `/etc/netns/<name>/*` over `/etc`
//! (that is how a host name resolves inside a client). Rust code runs in a namespace on a fresh
//! thread that `setns`es and is never reused, so the rest of the process stays where it was.

use std::ffi::OsStr;
use std::io::Read as _;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::MetadataExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use crate::process::Process;

/// How long [`Netns::exec`] lets a command run before killing it: a hung tool must fail the test,
/// not hang CI.
pub const EXEC_TIMEOUT: Duration = Duration::from_secs(60);

/// A network namespace created by a test-bed, plus the directory its spawned processes log to.
/// Cheap to clone; cloning does not extend the namespace's life (the test-bed owns that).
#[derive(Clone, Debug)]
pub struct Netns {
    name: Arc<str>,
    log_dir: Arc<Path>,
}

impl Netns {
    pub(crate) fn new(name: &str, log_dir: &Path) -> Self {
        Self {
            name: name.into(),
            log_dir: log_dir.into(),
        }
    }

    /// The namespace's name, as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `argv` inside the namespace to completion and returns its output, whatever its exit
    /// status. Killed after [`EXEC_TIMEOUT`].
    pub fn exec<S: AsRef<OsStr>>(&self, argv: &[S]) -> Result<Output> {
        let mut cmd = self.command(argv)?;
        let description = format!("{cmd:?}");
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .with_context(|| format!("spawn {description}"))?;
        // Drain both pipes concurrently so a chatty command cannot block on a full pipe.
        let mut stdout = child.stdout.take().expect("piped stdout");
        let mut stderr = child.stderr.take().expect("piped stderr");
        let out_reader = std::thread::spawn(move || {
            let mut buf = Vec::new();
            stdout.read_to_end(&mut buf).map(|_| buf)
        });
        let err_reader = std::thread::spawn(move || {
            let mut buf = Vec::new();
            stderr.read_to_end(&mut buf).map(|_| buf)
        });
        let deadline = Instant::now() + EXEC_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                crate::process::kill_group(child.id(), libc::SIGKILL);
                let _ = child.wait();
                bail!("{description} still running after {EXEC_TIMEOUT:?}; killed");
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        // Background children it left would hold the pipes open (and outlive the test).
        crate::process::kill_group(child.id(), libc::SIGKILL);
        let stdout = out_reader.join().expect("stdout reader")?;
        let stderr = err_reader.join().expect("stderr reader")?;
        Ok(Output {
            status,
            stdout,
            stderr,
        })
    }

    /// Like [`Netns::exec`] but fails unless the command exits 0 (the error carries its stderr);
    /// returns its stdout as text.
    pub fn exec_ok<S: AsRef<OsStr>>(&self, argv: &[S]) -> Result<String> {
        let out = self.exec(argv)?;
        if !out.status.success() {
            bail!(
                "{} in {} failed ({}): {}",
                display_argv(argv),
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// How many packets the counter of `table`'s (family inet) `chain` counted, and the
    /// chain's listing (for a failing test's message).
    pub fn nft_counted(&self, table: &str, chain: &str) -> Result<(u64, String)> {
        let listed = self.exec_ok(&["nft", "list", "chain", "inet", table, chain])?;
        let packets = listed
            .split_whitespace()
            .skip_while(|word| *word != "packets")
            .nth(1)
            .and_then(|count| count.parse().ok())
            .unwrap_or(0);
        Ok((packets, listed))
    }

    /// Starts `argv` inside the namespace in its own process group, with stdout and stderr going
    /// to `<log dir>/<label>.stdout` / `.stderr`. The returned guard kills the whole group on drop.
    pub fn spawn<S: AsRef<OsStr>>(&self, label: &str, argv: &[S]) -> Result<Process> {
        let (stdout_path, stdout) = self.new_log_file(label)?;
        let stderr_path = stdout_path.with_extension("stderr");
        let stderr = std::fs::File::create(&stderr_path)
            .with_context(|| format!("create {}", stderr_path.display()))?;
        let mut cmd = self.command(argv)?;
        let description = format!("{cmd:?}");
        // `ip netns exec` execs the program in place, so the child's pid is the program's and the
        // group holds it and everything it forks.
        let child = cmd
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0)
            .spawn()
            .with_context(|| format!("spawn {description}"))?;
        let mut process = Process::new(child, description, stdout_path, stderr_path);
        self.wait_until_inside(&mut process)?;
        Ok(process)
    }

    /// Waits until `process` has entered this namespace (or exited). Until then it is invisible
    /// to `ip netns pids`, so removing the namespace in that window would miss it and let it
    /// start afterwards in a namespace nobody removes.
    fn wait_until_inside(&self, process: &mut Process) -> Result<()> {
        let want = std::fs::metadata(self.path())
            .with_context(|| format!("stat {}", self.path().display()))?
            .ino();
        let link = PathBuf::from(format!("/proc/{}/ns/net", process.pid()));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let inside = std::fs::read_link(&link)
                .is_ok_and(|target| target.to_string_lossy() == format!("net:[{want}]"));
            if inside || process.try_status()?.is_some() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "process {} did not enter {} in time",
                    process.pid(),
                    self.name
                );
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Runs `f` on a new thread that has joined this namespace, and returns its result. Sockets
    /// created there belong to the namespace for their whole life, wherever they are used later.
    pub fn run<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        self.thread(f)?.join()
    }

    /// Starts `f` on a new thread that has joined this namespace (for servers and long-running
    /// clients). Fails if the thread could not join it. The thread ends with `f` and is never
    /// reused, so no other code runs in the wrong namespace.
    pub fn thread<T, F>(&self, f: F) -> Result<NsThread<T>>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let ns_path = self.path();
        let ns_file =
            std::fs::File::open(&ns_path).with_context(|| format!("open {}", ns_path.display()))?;
        let (joined_tx, joined_rx) = std::sync::mpsc::channel();
        let handle = std::thread::Builder::new()
            .name(format!("netns-{}", self.short_name()))
            .spawn(move || {
                // SAFETY: setns on a valid namespace fd only changes this thread's namespace.
                let rc = unsafe { libc::setns(ns_file.as_raw_fd(), libc::CLONE_NEWNET) };
                if rc != 0 {
                    let _ = joined_tx.send(Err(std::io::Error::last_os_error()));
                    return None;
                }
                drop(ns_file);
                let _ = joined_tx.send(Ok(()));
                Some(f())
            })
            .context("spawn netns thread")?;
        let joined = joined_rx.recv().context("netns thread died before setns")?;
        if let Err(err) = joined {
            let _ = handle.join();
            return Err(err).with_context(|| format!("setns into {}", self.name));
        }
        Ok(NsThread {
            handle,
            ns: self.name.clone(),
        })
    }

    /// Waits until a TCP connection to `addr` from inside this namespace succeeds.
    pub fn wait_for_tcp(&self, addr: SocketAddr, timeout: Duration) -> Result<()> {
        self.wait_for_tcp_while(addr, timeout, || Ok(()))
    }

    /// Like [`Netns::wait_for_tcp`], but gives up early when `still_ok` fails (e.g. because the
    /// server process already exited), returning that error.
    pub(crate) fn wait_for_tcp_while(
        &self,
        addr: SocketAddr,
        timeout: Duration,
        mut still_ok: impl FnMut() -> Result<()>,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let attempt = self.run(move || {
                TcpStream::connect_timeout(&addr, Duration::from_millis(200)).map(drop)
            })?;
            let err = match attempt {
                Ok(()) => return Ok(()),
                Err(err) => err,
            };
            still_ok()?;
            if Instant::now() > deadline {
                bail!(
                    "nothing accepts TCP on {addr} in {} after {timeout:?}: {err}",
                    self.name
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Index of interface `ifname` inside this namespace.
    pub fn ifindex(&self, ifname: &str) -> Result<u32> {
        let c_name = std::ffi::CString::new(ifname)?;
        // SAFETY: c_name is a valid NUL-terminated string for the duration of the call.
        let index = self.run(move || unsafe { libc::if_nametoindex(c_name.as_ptr()) })?;
        if index == 0 {
            bail!("no interface {ifname} in {}", self.name);
        }
        Ok(index)
    }

    /// The namespace's file, usable with `setns` or `nsenter --net=`.
    pub fn path(&self) -> PathBuf {
        Path::new("/var/run/netns").join(&*self.name)
    }

    /// The directory where processes spawned here write their logs.
    pub fn log_dir(&self) -> &Path {
        &self.log_dir
    }

    fn command<S: AsRef<OsStr>>(&self, argv: &[S]) -> Result<Command> {
        if argv.is_empty() {
            bail!("empty command for netns {}", self.name);
        }
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec"]).arg(&*self.name).args(argv);
        Ok(cmd)
    }

    /// Creates `<role>.<label>.stdout`, or `<role>.<label>-<n>.stdout` if taken by an earlier
    /// spawn with the same label.
    fn new_log_file(&self, label: &str) -> Result<(PathBuf, std::fs::File)> {
        let base = format!("{}.{label}", self.short_name());
        for n in 1.. {
            let name = match n {
                1 => format!("{base}.stdout"),
                n => format!("{base}-{n}.stdout"),
            };
            let path = self.log_dir.join(name);
            match std::fs::File::create_new(&path) {
                Ok(file) => return Ok((path, file)),
                Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(err) => return Err(err).with_context(|| format!("create {}", path.display())),
            }
        }
        unreachable!("some numbered log file name is free")
    }

    /// The role part of the name (`client` for `mirror-123-0-client`), for log file names.
    fn short_name(&self) -> &str {
        self.name.rsplit('-').next().unwrap_or(&self.name)
    }
}

/// A thread running inside a namespace, from [`Netns::thread`].
#[derive(Debug)]
pub struct NsThread<T> {
    /// `None` only when `setns` failed, which [`Netns::thread`] already reported.
    handle: JoinHandle<Option<T>>,
    ns: Arc<str>,
}

impl<T> NsThread<T> {
    /// Waits for the closure and returns its value; a panic in it becomes an error.
    pub fn join(self) -> Result<T> {
        match self.handle.join() {
            Ok(Some(value)) => Ok(value),
            Ok(None) => unreachable!("NsThread exists only after a successful setns"),
            Err(_) => bail!("closure in netns {} panicked", self.ns),
        }
    }

    /// Whether the closure has returned (or panicked).
    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }
}

fn display_argv<S: AsRef<OsStr>>(argv: &[S]) -> String {
    argv.iter()
        .map(|a| a.as_ref().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `ip` with `args`, failing with its stderr. Callers only create or delete named
/// namespaces or pass `-n <ns>`: nothing is ever configured in the root namespace.
pub(crate) fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("run ip (is iproute2 installed?)")?;
    if !out.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
