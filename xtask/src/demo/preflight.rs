//! What the demo needs from the machine, checked before minutes of installing and building:
//! root, and the system packages (installed by [`crate::packages`] where it can).

use anyhow::{bail, Result};

use crate::packages::{self, Task};

/// The demo creates network namespaces and loads an eBPF program.
pub fn require_root() -> Result<()> {
    if !packages::is_root() {
        bail!(
            "the demo needs root: it creates network namespaces and loads an eBPF program.\n\
             Run it as root, e.g. `sudo -E env \"PATH=$PATH\" cargo xtask demo`."
        );
    }
    Ok(())
}

/// Installs the programs the test-bed runs, or fails naming them.
pub fn require_tools() -> Result<()> {
    packages::ensure(Task::Demo)
}
