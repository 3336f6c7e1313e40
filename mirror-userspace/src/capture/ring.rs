//! Reads the kernel's ring buffer from tokio.
//!
//! The callback is synchronous and runs on the reader task for every record, so a record is
//! decoded straight out of ring memory with no copy; the ring slot is released as soon as
//! the callback returns. Whatever the callback forwards must go through bounded queues.

use std::{future::Future, io, os::fd::AsRawFd};

use aya::maps::{MapData, RingBuf};
use tokio::io::{unix::AsyncFd, Interest};

pub struct RingReader {
    fd: AsyncFd<RingBuf<MapData>>,
}

impl RingReader {
    pub fn new(ring: RingBuf<MapData>) -> io::Result<Self> {
        Ok(RingReader {
            fd: register_readable(ring)?,
        })
    }

    /// Feeds every record to `on_record` until `stop` completes, then drains what is left.
    pub async fn run(
        &mut self,
        mut on_record: impl FnMut(&[u8]),
        stop: impl Future<Output = ()>,
    ) -> io::Result<()> {
        tokio::pin!(stop);
        loop {
            tokio::select! {
                biased;
                () = &mut stop => break,
                batch = self.next_batch(&mut on_record) => batch?,
            }
        }
        self.drain(on_record);
        Ok(())
    }

    /// Waits until records are ready, then feeds all of them to `on_record`. Cancel-safe:
    /// dropped while waiting, it has consumed nothing.
    pub async fn next_batch(&mut self, mut on_record: impl FnMut(&[u8])) -> io::Result<()> {
        let mut guard = self.fd.readable_mut().await?;
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            on_record(&item);
        }
        guard.clear_ready();
        Ok(())
    }

    /// Processes whatever records are already in the ring.
    pub fn drain(&mut self, mut on_record: impl FnMut(&[u8])) {
        let ring = self.fd.get_mut();
        while let Some(item) = ring.next() {
            on_record(&item);
        }
    }
}

/// Registers a BPF map or logger fd with tokio for readability.
pub fn register_readable<T: AsRawFd>(inner: T) -> io::Result<AsyncFd<T>> {
    // SAFETY: `inner` owns its fd (aya's map and logger types close it on drop), and the
    // AsyncFd owns `inner`, so the fd stays open and the same for the AsyncFd's lifetime.
    unsafe { AsyncFd::register_with_interest(inner, Interest::READABLE) }.map_err(Into::into)
}
