//! How full the kernel's ring buffer is, read from its position pages: stage `ring`.
//!
//! A BPF ring buffer map exposes two position counters through `mmap`: the consumer's (page 0,
//! advanced by the reader as it releases records) and the producer's (page 1, advanced by the
//! kernel at every reservation). Their difference is the bytes written and not yet read,
//! record headers included. aya 0.14's reader keeps its own mapping private, so this maps the
//! two pages once more, read-only. Reading them costs two loads at scrape time and nothing per
//! packet (the kernel-side alternative, `bpf_ringbuf_query` in the program, would cost every
//! matched packet a helper call and a map write).

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd},
    ptr::NonNull,
    sync::atomic::{AtomicUsize, Ordering},
};

use crate::observe::{Sample, Source};

/// A read-only mapping of a ring buffer's consumer and producer pages.
pub struct RingFill {
    /// Start of two pages: the consumer position at offset 0, the producer's one page on.
    pages: NonNull<u8>,
    page_size: usize,
    /// The ring's data size in bytes (the map's `max_entries`).
    size: u32,
}

// SAFETY: the mapping is shared kernel memory read only through atomic loads; nothing in it
// is tied to the thread that made it, and `munmap` in `Drop` runs once.
unsafe impl Send for RingFill {}
// SAFETY: as above: concurrent readers only perform atomic loads.
unsafe impl Sync for RingFill {}

impl RingFill {
    /// Maps the position pages of the ring buffer map behind `ring` (of `size` data bytes).
    pub fn new(ring: BorrowedFd<'_>, size: u32) -> io::Result<RingFill> {
        // SAFETY: sysconf has no preconditions.
        let page_size = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .map_err(|_| io::Error::other("sysconf(_SC_PAGESIZE) failed"))?;
        // SAFETY: a fresh read-only shared mapping of two pages of a ring buffer map's fd; the
        // kernel refuses (and we report) anything that does not fit the map.
        let pages = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                2 * page_size,
                libc::PROT_READ,
                libc::MAP_SHARED,
                ring.as_raw_fd(),
                0,
            )
        };
        if pages == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let pages = NonNull::new(pages.cast::<u8>())
            .ok_or_else(|| io::Error::other("mmap of the ring positions returned null"))?;
        Ok(RingFill {
            pages,
            page_size,
            size,
        })
    }

    /// Bytes written by the kernel and not yet released by the reader.
    pub fn used_bytes(&self) -> u64 {
        let producer = self.position(self.page_size);
        let consumer = self.position(0);
        // The counters only grow (modulo the word size); the reader never passes the producer.
        producer.wrapping_sub(consumer) as u64
    }

    /// Bytes the kernel has written since the ring was made (modulo the word size): the
    /// capture path's traffic, record headers included.
    pub fn written_bytes(&self) -> u64 {
        self.position(self.page_size) as u64
    }

    pub fn size_bytes(&self) -> u64 {
        u64::from(self.size)
    }

    fn position(&self, offset: usize) -> usize {
        // SAFETY: `offset` is 0 or one page into a live two-page mapping; both positions are
        // page-aligned `unsigned long`s (the word size) that the kernel and the reader update
        // atomically.
        let position = unsafe { &*self.pages.as_ptr().add(offset).cast::<AtomicUsize>() };
        position.load(Ordering::Acquire)
    }
}

impl Drop for RingFill {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping `new` made, once; no reference into it outlives
        // `self`.
        unsafe { libc::munmap(self.pages.as_ptr().cast(), 2 * self.page_size) };
    }
}

impl Source for RingFill {
    fn visit(&self, out: &mut dyn FnMut(Sample)) {
        out(Sample::gauge(
            "used_bytes",
            "Bytes in the kernel's ring buffer not yet read by the agent (record headers \
             included).",
            self.used_bytes(),
        ));
        out(Sample::gauge(
            "size_bytes",
            "Size of the kernel's ring buffer's data area.",
            self.size_bytes(),
        ));
    }
}
