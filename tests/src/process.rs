//! A spawned background process whose whole process group dies with its guard.

use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};

/// How long a process group gets to exit after SIGTERM before it is SIGKILLed: enough for a
/// server to flush its logs, short enough not to slow every test's teardown.
const TERM_GRACE: Duration = Duration::from_secs(2);

/// A process started with [`crate::Netns::spawn`], leader of its own process group (so the
/// workers it forks, e.g. gunicorn's, are killed along with it). Dropping the guard terminates
/// the group; [`Process::detach`] leaves it running on purpose.
#[derive(Debug)]
pub struct Process {
    child: Option<Child>,
    description: String,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Process {
    pub(crate) fn new(child: Child, description: String, stdout: PathBuf, stderr: PathBuf) -> Self {
        Self {
            child: Some(child),
            description,
            stdout,
            stderr,
        }
    }

    /// The process id (also its process group id).
    pub fn pid(&self) -> u32 {
        self.child().id()
    }

    /// File receiving the process's stdout.
    pub fn stdout_path(&self) -> &Path {
        &self.stdout
    }

    /// File receiving the process's stderr.
    pub fn stderr_path(&self) -> &Path {
        &self.stderr
    }

    /// The exit status if the process has exited, without waiting.
    pub fn try_status(&mut self) -> Result<Option<ExitStatus>> {
        let description = self.description.clone();
        self.child_mut()
            .try_wait()
            .with_context(|| format!("wait for {description}"))
    }

    /// Fails with the process's stderr if it has already exited: servers call this while waiting
    /// for readiness so that a crash is reported at once and with its reason.
    pub fn ensure_running(&mut self) -> Result<()> {
        if let Some(status) = self.try_status()? {
            let stderr = std::fs::read_to_string(&self.stderr).unwrap_or_default();
            anyhow::bail!(
                "{} exited early ({status}); stderr:\n{}",
                self.description,
                tail(&stderr, 4000)
            );
        }
        Ok(())
    }

    /// Leaves the process running after the guard is gone (for kept set-ups) and returns its pid.
    /// It still dies when its namespace is removed.
    pub fn detach(mut self) -> u32 {
        let mut child = self.child.take().expect("child present until drop");
        let pid = child.id();
        // Reaped in the background should it exit while this process lives: no zombie.
        std::thread::spawn(move || child.wait());
        pid
    }

    /// Terminates the process group: SIGTERM, then SIGKILL after a grace period.
    fn terminate(&mut self) -> Result<()> {
        let child = self.child.as_mut().expect("child present until drop");
        if child.try_wait()?.is_some() {
            // The leader died on its own; its forked workers may not have. While any of them
            // lives the kernel cannot reuse the group id, so this cannot hit a stranger.
            kill_group(child.id(), libc::SIGKILL);
            return Ok(());
        }
        kill_group(child.id(), libc::SIGTERM);
        let deadline = Instant::now() + TERM_GRACE;
        loop {
            if child.try_wait()?.is_some() {
                // Workers that ignored SIGTERM must not outlive their leader.
                kill_group(child.id(), libc::SIGKILL);
                return Ok(());
            }
            if Instant::now() > deadline {
                kill_group(child.id(), libc::SIGKILL);
                child.wait()?;
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn child(&self) -> &Child {
        self.child.as_ref().expect("child present until drop")
    }

    fn child_mut(&mut self) -> &mut Child {
        self.child.as_mut().expect("child present until drop")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.child.is_some() {
            if let Err(err) = self.terminate() {
                eprintln!(
                    "mirror-tests: stopping {} failed: {err:#}",
                    self.description
                );
            }
        }
    }
}

/// Sends `signal` to process group `pgid`, ignoring a group that no longer exists.
pub(crate) fn kill_group(pgid: u32, signal: libc::c_int) {
    if let Ok(pgid) = libc::pid_t::try_from(pgid) {
        // SAFETY: sending a signal has no memory-safety preconditions.
        unsafe { libc::kill(-pgid, signal) };
    }
}

/// The last `max` bytes of `text` (on a char boundary), for error messages quoting logs.
pub(crate) fn tail(text: &str, max: usize) -> &str {
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}
