//! The file descriptors the relay needs: one per connection to v2, on top of what the rest of
//! the agent uses. The default soft limit (1,024) is far below the default connection cap.

/// Descriptors kept for everything but connections to v2 (maps, ring, runtime, logs).
const HEADROOM: u64 = 512;

#[derive(Debug, thiserror::Error)]
pub enum FdLimitError {
    #[error(
        "{connections} connections to the shadow need {needed} file descriptors, but \
         RLIMIT_NOFILE allows {hard} and cannot be raised ({source}): lower \
         --max-shadow-connections or raise the limit (ulimit -n, LimitNOFILE=)"
    )]
    TooLow {
        connections: usize,
        needed: u64,
        hard: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("reading RLIMIT_NOFILE failed")]
    Read(#[source] std::io::Error),
}

/// Raises the soft (and if need be the hard) RLIMIT_NOFILE to fit `connections`; returns the
/// soft limit now in force.
pub fn raise_fd_limit(connections: usize) -> Result<u64, FdLimitError> {
    let needed = (connections as u64).saturating_add(HEADROOM);
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit(2) writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(FdLimitError::Read(std::io::Error::last_os_error()));
    }
    if limit.rlim_cur >= needed {
        return Ok(limit.rlim_cur);
    }
    let hard = limit.rlim_max;
    let wanted = libc::rlimit {
        rlim_cur: needed,
        rlim_max: hard.max(needed),
    };
    // SAFETY: setrlimit(2) reads the struct we own.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) } != 0 {
        return Err(FdLimitError::TooLow {
            connections,
            needed,
            hard,
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(needed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_fits_the_connections_afterwards() {
        let soft = raise_fd_limit(100).expect("100 connections fit any limit");
        assert!(soft >= 100 + HEADROOM);
        assert!(matches!(
            raise_fd_limit(usize::MAX),
            Err(FdLimitError::TooLow { .. })
        ));
    }
}
