//! `mirror attached`: which BPF programs sit on an interface's TCX hooks, in run order.
//! Debian 12's bpftool predates TCX and cannot show them; this can, for any program, ours or
//! not (netlink filters: `tc filter show dev NAME ingress`).

use aya::programs::{ProgramError, SchedClassifier, TcAttachType};

use super::classifier::Direction;

#[derive(Clone, Debug, clap::Args)]
pub struct AttachedArgs {
    /// Interface to inspect (repeatable).
    #[arg(long = "iface", required = true, value_name = "NAME")]
    pub ifaces: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("querying the TCX programs on {iface} failed")]
pub struct AttachedError {
    iface: String,
    #[source]
    source: ProgramError,
}

/// One program on a TCX hook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcxProgram {
    pub iface: String,
    pub direction: Direction,
    pub name: String,
    pub id: u32,
}

/// The programs on `iface`'s TCX ingress and egress hooks, in the order they run.
pub fn tcx_programs(iface: &str) -> Result<Vec<TcxProgram>, AttachedError> {
    let mut out = Vec::new();
    for (direction, hook) in [
        (Direction::Ingress, TcAttachType::Ingress),
        (Direction::Egress, TcAttachType::Egress),
    ] {
        let (_, programs) =
            SchedClassifier::query_tcx(iface, hook).map_err(|source| AttachedError {
                iface: iface.to_owned(),
                source,
            })?;
        out.extend(programs.iter().map(|info| TcxProgram {
            iface: iface.to_owned(),
            direction,
            name: info.name_as_str().unwrap_or("?").to_owned(),
            id: info.id(),
        }));
    }
    Ok(out)
}
