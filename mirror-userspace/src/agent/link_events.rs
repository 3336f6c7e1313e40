//! Netlink link events (RTMGRP_LINK): a wake-up whenever an interface appears, changes or
//! goes in the agent's namespace, so that a pod's veth is attached as soon as it exists.
//! Only the fact of a change is used; what changed is read again by the reconcile.

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use tokio::io::{unix::AsyncFd, Interest};

/// The multicast group of link changes.
const RTMGRP_LINK: u32 = 1;

pub struct LinkEvents {
    socket: AsyncFd<OwnedFd>,
    buffer: Vec<u8>,
}

impl LinkEvents {
    /// Subscribes; must run inside a tokio runtime.
    pub fn open() -> io::Result<LinkEvents> {
        // SAFETY: socket(2) with constant arguments; the fd is owned below.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: a zeroed sockaddr_nl is valid; family and groups set below.
        let mut address: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        address.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        address.nl_groups = RTMGRP_LINK;
        // SAFETY: bind reads the address struct, alive for the call.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&address as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the OwnedFd moves into the AsyncFd, which keeps it open for its life.
        let socket = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
            .map_err(io::Error::from)?;
        Ok(LinkEvents {
            socket,
            buffer: vec![0; 64 * 1024],
        })
    }

    /// Waits for one or more link changes and consumes every message queued.
    pub async fn next(&mut self) -> io::Result<()> {
        loop {
            let mut ready = self.socket.readable().await?;
            let mut got = false;
            loop {
                // SAFETY: recv writes at most buffer.len() bytes into the buffer we own.
                let len = unsafe {
                    libc::recv(
                        self.socket.get_ref().as_raw_fd(),
                        self.buffer.as_mut_ptr().cast(),
                        self.buffer.len(),
                        libc::MSG_DONTWAIT,
                    )
                };
                if len >= 0 {
                    got = true;
                    continue;
                }
                let error = io::Error::last_os_error();
                match error.kind() {
                    io::ErrorKind::WouldBlock => break,
                    io::ErrorKind::Interrupted => continue,
                    // ENOBUFS: events were lost; a change happened all the same.
                    _ if error.raw_os_error() == Some(libc::ENOBUFS) => {
                        got = true;
                        continue;
                    }
                    _ => return Err(error),
                }
            }
            ready.clear_ready();
            if got {
                return Ok(());
            }
        }
    }
}
