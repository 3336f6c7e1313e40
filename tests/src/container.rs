//! The runtime image (the top-level `Dockerfile`) built and run with podman, as a node runs the
//! DaemonSet's container: the agent inside it, in a test-bed's node namespace.

use std::{
    io::Write as _,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicUsize, Ordering},
        OnceLock,
    },
};

use anyhow::{bail, Context as _, Result};

use crate::{agent::Agent, Netns, Process};

/// The OCI runtime the tests ask podman for. Debian's default, crun, refuses hosts whose
/// cgroups are in hybrid mode with a controller left on the v2 hierarchy (as on this project's
/// build machines); runc runs there and everywhere else.
pub const RUNTIME: &str = "runc";

/// Whether podman and [`RUNTIME`] are installed. Under CI (env `CI` set) their absence panics,
/// like [`crate::require_root`]; elsewhere the test says it was skipped and returns `false`.
pub fn require_podman() -> bool {
    static PROBE: OnceLock<Result<(), String>> = OnceLock::new();
    let probe = PROBE.get_or_init(|| {
        for program in ["podman", RUNTIME] {
            match Command::new(program).arg("--version").output() {
                Ok(out) if out.status.success() => {}
                Ok(out) => return Err(format!("`{program} --version` failed: {}", out.status)),
                Err(err) => return Err(format!("{program} is not installed: {err}")),
            }
        }
        Ok(())
    });
    match probe {
        Ok(()) => true,
        Err(reason) if std::env::var_os("CI").is_some() => {
            panic!("this test needs podman (apt-get install podman runc), and CI is set: {reason}")
        }
        Err(reason) => {
            let _ = writeln!(std::io::stderr(), "skipped: needs podman ({reason})");
            false
        }
    }
}

/// An image built from the `Dockerfile` around one `mirror` binary; removed on drop.
#[derive(Debug)]
pub struct Image {
    tag: String,
}

impl Image {
    /// Stages `binary` and its libraries with `deploy/image/rootfs.sh` in `workdir`/rootfs and
    /// builds the image from them with the default base (`scratch`).
    pub fn build(binary: &Path, workdir: &Path) -> Result<Image> {
        let repo = repo_root();
        let rootfs = workdir.join("image-rootfs");
        run(Command::new(repo.join("deploy/image/rootfs.sh"))
            .arg(binary)
            .arg(&rootfs))?;
        static BUILT: AtomicUsize = AtomicUsize::new(0);
        let tag = format!(
            "localhost/mirror-test:{}-{}",
            std::process::id(),
            BUILT.fetch_add(1, Ordering::Relaxed)
        );
        run(Command::new("podman")
            .args(["build", "--quiet", "--tag", &tag, "--file"])
            .arg(repo.join("Dockerfile"))
            .arg(&rootfs))?;
        Ok(Image { tag })
    }

    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// The image's size in bytes, as podman counts it.
    pub fn size(&self) -> Result<u64> {
        let out = run(Command::new("podman").args([
            "image",
            "inspect",
            "--format",
            "{{.Size}}",
            &self.tag,
        ]))?;
        out.trim()
            .parse()
            .with_context(|| format!("podman image size {out:?}"))
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(["rmi", "--force", &self.tag])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The agent running in a container; the container is removed on drop, whatever happened.
#[derive(Debug)]
pub struct ContainerAgent {
    agent: Option<Agent>,
    name: String,
}

impl ContainerAgent {
    /// `podman run <security> --network ns:<node>` of `image` with `mirror <args>`, logs in
    /// `log_dir`; returns once the agent printed `ready_marker`. `security` is what the
    /// container may do: [`privileged`], or capabilities as [`capabilities`] spells them.
    pub fn start(
        image: &Image,
        node: &Netns,
        log_dir: &Path,
        security: &[String],
        args: &[String],
        ready_marker: &'static str,
    ) -> Result<ContainerAgent> {
        let name = format!("mirror-test-{}-{}", std::process::id(), node.name());
        let stdout_path = log_dir.join(format!("{name}.stdout"));
        let stderr_path = log_dir.join(format!("{name}.stderr"));
        let stdout = std::fs::File::create(&stdout_path)
            .with_context(|| format!("create {}", stdout_path.display()))?;
        let stderr = std::fs::File::create(&stderr_path)
            .with_context(|| format!("create {}", stderr_path.display()))?;
        let mut cmd = podman_run(image, node, &name, security, args)?;
        let description = format!("{cmd:?}");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0)
            .spawn()
            .with_context(|| format!("spawn {description}"))?;
        let process = Process::new(child, description, stdout_path, stderr_path);
        let mut container = ContainerAgent { agent: None, name };
        container.agent = Some(Agent::adopt(process, ready_marker)?);
        Ok(container)
    }

    /// Sends `signal` to `podman run`, which passes it on to the agent, and returns the agent's
    /// stderr once it has exited.
    pub fn stop(mut self, signal: i32) -> Result<String> {
        self.agent
            .take()
            .context("container agent already stopped")?
            .stop(signal)
    }
}

impl Drop for ContainerAgent {
    fn drop(&mut self) {
        drop(self.agent.take());
        remove_container(&self.name);
    }
}

/// `podman run` arguments for a privileged container, as the `privileged` overlay deploys it.
pub fn privileged() -> Vec<String> {
    vec!["--privileged".to_string()]
}

/// `podman run` arguments for a container with exactly `caps` (names without `CAP_`) and no
/// seccomp filter, as the DaemonSet in `deploy/base` runs it; with `default_seccomp`, podman's
/// default seccomp profile applies instead.
pub fn capabilities(caps: &[&str], default_seccomp: bool) -> Vec<String> {
    let mut args = vec!["--cap-drop=all".to_string()];
    if !caps.is_empty() {
        args.push(format!("--cap-add={}", caps.join(",")));
    }
    if !default_seccomp {
        args.push("--security-opt=seccomp=unconfined".to_string());
    }
    args
}

/// Runs `mirror <args>` in a container of `image` in `node` until it exits by itself (within
/// `timeout`, else it is removed and this fails); returns its exit status and stderr.
pub fn run_to_exit(
    image: &Image,
    node: &Netns,
    security: &[String],
    args: &[String],
    timeout: std::time::Duration,
) -> Result<(std::process::ExitStatus, String)> {
    let name = format!("mirror-test-{}-{}-once", std::process::id(), node.name());
    let mut child = podman_run(image, node, &name, security, args)?
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawn podman run")?;
    let mut stderr = child.stderr.take().context("podman's stderr")?;
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    });
    let deadline = std::time::Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().context("wait for podman run")? {
            break status;
        }
        if std::time::Instant::now() > deadline {
            remove_container(&name);
            let _ = child.wait();
            bail!(
                "mirror {args:?} in {} did not exit within {timeout:?}",
                image.tag()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let stderr = reader.join().unwrap_or_default();
    Ok((status, stderr))
}

fn podman_run(
    image: &Image,
    node: &Netns,
    name: &str,
    security: &[String],
    args: &[String],
) -> Result<Command> {
    let mut cmd = Command::new("podman");
    cmd.args(["--runtime", RUNTIME, "run", "--rm", "--name", name])
        .args(security)
        .arg(format!("--network=ns:{}", node.path().display()))
        .args(ulimits()?)
        .arg(image.tag())
        .args(args);
    Ok(cmd)
}

fn remove_container(name: &str) {
    let _ = Command::new("podman")
        .args(["rm", "--force", "--time", "0", name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Resource limits for the container no higher than this process's own. Podman asks for more
/// by default (a million open files), which a runner without CAP_SYS_RESOURCE cannot grant.
fn ulimits() -> Result<Vec<String>> {
    let nofile = hard_limit(libc::RLIMIT_NOFILE)?;
    // Setting RLIMIT_NPROC to exactly the caller's hard limit is refused by runc here, so the
    // agent (a handful of threads) gets a modest one.
    let nproc = hard_limit(libc::RLIMIT_NPROC)?.min(4096);
    Ok(vec![
        format!("--ulimit=nofile={nofile}:{nofile}"),
        format!("--ulimit=nproc={nproc}:{nproc}"),
    ])
}

fn hard_limit(resource: libc::__rlimit_resource_t) -> Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we own.
    if unsafe { libc::getrlimit(resource, &mut limit) } != 0 {
        bail!("getrlimit: {}", std::io::Error::last_os_error());
    }
    Ok(limit.rlim_max)
}

fn run(cmd: &mut Command) -> Result<String> {
    let description = format!("{cmd:?}");
    let out = cmd.output().with_context(|| format!("run {description}"))?;
    if !out.status.success() {
        bail!(
            "{description} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}
