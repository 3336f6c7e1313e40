//! TCP stream reassembly for one direction of one flow: turns segments in any order, with
//! retransmissions and overlaps, into the byte stream in order, or says where it has a gap.
//! Optionally gated: bytes are handed on only up to a release point (v1's acknowledgement).

mod pages;
mod ranges;

pub use pages::{PAGE, PAGE_COST};
pub use ranges::{RangeSet, TooManyRanges, MAX_RANGES};

use pages::Pages;
use thiserror::Error;

/// What the reassembler hands on, in stream order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery<'a> {
    /// The next bytes of the stream.
    Data(&'a [u8]),
    /// This many bytes of the stream were lost to the capture and will never be delivered;
    /// what follows is the stream after them.
    Gap(u32),
}

#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum ReassemblyError {
    /// An out-of-order segment needed a range slot and none was free; it was dropped.
    #[error("out-of-order segment dropped: {0}")]
    NoSlot(#[from] TooManyRanges),
}

/// What one [`Reassembler::push`] did besides delivering.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pushed {
    /// Payload bytes already delivered or already held (retransmission or overlap).
    pub duplicate: u32,
    /// Bytes skipped as lost to make room for this segment within the window.
    pub gap: u64,
    /// Payload bytes refused because they lie at or beyond the window: never held, never
    /// delivered. A segment that starts beyond the window cannot move the stream: one forged
    /// far-ahead segment must not make the genuine ones that follow look old.
    pub beyond_window: u32,
}

/// Largest out-of-order window a flow may have. Sequence offsets are compared as `i32`, so
/// the window must stay well below 2^31 for "behind" and "ahead" to be told apart.
pub const MAX_WINDOW: u32 = 1 << 30;

/// Reassembly state of one flow direction.
///
/// Offsets below are relative to `next_seq`, the sequence number of the next byte to deliver.
///
/// **Overlap rule: what v1's receive queue keeps.** Bytes are either *in order at the
/// receiver* (delivered, or held contiguous from `next_seq`: v1 has queued them, whether or
/// not its acknowledgement has released them here yet) or *held out of order* (behind a hole).
/// A later segment never changes in-order bytes; a segment that arrives at the in-order point
/// (it starts at or before the end of the in-order bytes) overwrites held out-of-order bytes it
/// overlaps; between two out-of-order segments the first received wins. Why: this is what
/// Linux keeps (`tcp_data_queue` appends the in-order segment, `tcp_ofo_queue` then trims the
/// out-of-order ones it covers), and it means a forged segment planted ahead of the client is
/// replaced by the genuine one when that arrives, instead of being released by v1's
/// acknowledgement of the genuine bytes. (Linux also lets an out-of-order segment that covers
/// a held one with the same start replace it; only a client sending two versions of the same
/// out-of-order bytes can see that corner.)
///
/// Invariants:
/// - every offset held in `ranges` is `< window` (enforced when a segment is held);
/// - every held offset `i` is backed by `pages` at stream position `base + i`;
/// - `ranges` starts at 0 between calls only when nothing more may be released (`room() == 0`):
///   releasable data at offset 0 is delivered at once;
/// - when `ranges` is empty, `pages` is empty.
#[derive(Debug)]
pub struct Reassembler {
    next_seq: u32,
    /// Stream position of `next_seq`: bytes delivered or lost since the start. Never wraps.
    base: u64,
    window: u32,
    /// Bytes before this sequence number may be delivered; `None`: no gate.
    release: Option<u32>,
    ranges: RangeSet,
    pages: Pages,
}

impl Reassembler {
    /// Starts a stream whose next byte has sequence number `next_seq` (ISN + 1 after a SYN).
    /// `window` (clamped to [`MAX_WINDOW`]) bounds how far ahead of `next_seq` bytes are held.
    /// Bytes are delivered as soon as they are contiguous.
    pub fn new(next_seq: u32, window: u32) -> Self {
        Self {
            next_seq,
            base: 0,
            window: window.min(MAX_WINDOW),
            release: None,
            ranges: RangeSet::default(),
            pages: Pages::default(),
        }
    }

    /// Like [`Reassembler::new`], but nothing is delivered until [`Reassembler::release_to`]
    /// allows it: contiguous bytes wait, held, for the release point to pass them.
    pub fn gated(next_seq: u32, window: u32) -> Self {
        Self {
            release: Some(next_seq),
            ..Self::new(next_seq, window)
        }
    }

    /// Sequence number of the next byte to deliver.
    pub fn next_seq(&self) -> u32 {
        self.next_seq
    }

    /// One past the highest byte held, or `next_seq` when nothing is held.
    pub fn end_seq(&self) -> u32 {
        self.next_seq.wrapping_add(self.ranges.end())
    }

    /// Whether bytes are held (behind a hole, or waiting for the release point).
    pub fn has_held(&self) -> bool {
        !self.ranges.is_empty()
    }

    /// Bytes held and not yet delivered.
    pub fn held_bytes(&self) -> u64 {
        self.ranges
            .as_slice()
            .iter()
            .map(|&(s, e)| u64::from(e - s))
            .sum()
    }

    /// Heap bytes this state pins, for the memory caps.
    pub fn memory(&self) -> usize {
        self.pages.memory()
    }

    /// Whether a hole in front could be given up on: bytes are held behind it (ungated), or
    /// the release point has passed bytes that never arrived (gated: v1 has them, the capture
    /// lost them or has not shown them yet).
    pub fn hole_pending(&self) -> bool {
        let front_missing = self.ranges.first().is_none_or(|r| r.0 > 0);
        match self.release {
            None => self.has_held(),
            Some(_) => self.room() > 0 && front_missing,
        }
    }

    /// How many bytes from `next_seq` on may be delivered.
    fn room(&self) -> u32 {
        match self.release {
            None => u32::MAX,
            Some(r) => (r.wrapping_sub(self.next_seq) as i32).max(0) as u32,
        }
    }

    /// Moves the release point forward to `seq` (never back) and delivers what it frees.
    /// Ignored when ungated.
    pub fn release_to(&mut self, seq: u32, out: &mut (impl FnMut(Delivery<'_>) + ?Sized)) {
        if let Some(r) = self.release {
            if seq.wrapping_sub(r) as i32 > 0 {
                self.release = Some(seq);
                self.deliver_ready(out);
            }
        }
    }

    /// Takes one segment's payload starting at sequence number `seq`, delivering whatever
    /// becomes contiguous (and released). A segment that starts inside the window but would
    /// end beyond it makes the oldest hole a gap, as often as needed: the capture lost it (a
    /// receiver would have it by now); gated, only as far as the release point. Bytes that
    /// still lie at or beyond the window are refused and counted.
    ///
    /// The next expected segment is never refused; only an out-of-order one can be, when every
    /// range slot is taken (`Err`, nothing changed).
    pub fn push(
        &mut self,
        seq: u32,
        payload: &[u8],
        out: &mut (impl FnMut(Delivery<'_>) + ?Sized),
    ) -> Result<Pushed, ReassemblyError> {
        let mut pushed = Pushed::default();
        let mut data = payload;
        // Offset of `data[0]`; i64 so that adding a length can never overflow.
        let mut off = i64::from(seq.wrapping_sub(self.next_seq) as i32);
        // Whether the segment reached the in-order point and replaced held bytes: once is
        // enough, what is left of `data` later is a suffix of what was written.
        let mut replaced = false;
        loop {
            if off < 0 {
                let old = usize::try_from(-off).unwrap_or(usize::MAX).min(data.len());
                pushed.duplicate = pushed.duplicate.saturating_add(to_u32(old));
                data = &data[old..];
                off = 0;
            }
            if data.is_empty() {
                return Ok(pushed);
            }
            let window = i64::from(self.window);
            if off >= window {
                pushed.beyond_window = pushed.beyond_window.saturating_add(to_u32(data.len()));
                return Ok(pushed);
            }
            if !replaced {
                replaced = self.overwrite_out_of_order(off, data);
            }
            if off == 0 {
                let held_at = self.ranges.first().map_or(u32::MAX, |r| r.0);
                let cut = data.len().min(held_at as usize).min(self.room() as usize);
                if cut > 0 {
                    out(Delivery::Data(&data[..cut]));
                    self.advance(cut);
                    let ready = self.deliver_ready(out);
                    data = &data[cut..];
                    // What follows was delivered from held bytes (already overwritten by this
                    // segment where they overlap it).
                    off = -(ready as i64);
                    continue;
                }
            }
            let end = off + data.len() as i64;
            if end <= window {
                self.hold(off as u32, data, &mut pushed)?;
                return Ok(pushed);
            }
            // Gated, only what the release point passed may be declared lost: v1 has it, so
            // the capture lost it. Anything else would let one segment skip the stream ahead.
            let limit = match self.release {
                None => off as u32,
                Some(_) => (off as u32).min(self.room()),
            };
            let moved = self.skip_hole(limit, out);
            if moved.lost == 0 && moved.delivered == 0 {
                // Nothing can be skipped (held bytes at offset 0 wait for release, or nothing
                // was released past the hole): keep what fits, refuse the rest.
                let fits = (window - off) as usize;
                pushed.beyond_window = pushed
                    .beyond_window
                    .saturating_add(to_u32(data.len() - fits));
                self.hold(off as u32, &data[..fits], &mut pushed)?;
                return Ok(pushed);
            }
            pushed.gap += u64::from(moved.lost);
            off -= i64::from(moved.lost) + moved.delivered as i64;
        }
    }

    /// Gives up on the hole in front, if there is one to give up on (see
    /// [`Reassembler::hole_pending`]): reports it as a gap and delivers what was held after it.
    /// Gated, only the part the release point passed is skipped. Returns the gap size.
    pub fn skip_front_hole(&mut self, out: &mut (impl FnMut(Delivery<'_>) + ?Sized)) -> u32 {
        if !self.hole_pending() {
            return 0;
        }
        let limit = match self.release {
            None => self.ranges.first().map_or(0, |r| r.0),
            Some(_) => self.room(),
        };
        self.skip_hole(limit, out).lost
    }

    /// Moves the stream to `seq` (ahead of `next_seq`), declaring lost whatever is missing
    /// before it and delivering what is held: the stream resumes there. Returns the bytes lost.
    pub fn jump_to(&mut self, seq: u32, out: &mut (impl FnMut(Delivery<'_>) + ?Sized)) -> u64 {
        let mut lost = 0u64;
        loop {
            let dist = seq.wrapping_sub(self.next_seq) as i32;
            if dist <= 0 {
                return lost;
            }
            let moved = self.skip_hole(dist as u32, out);
            if moved.lost == 0 && moved.delivered == 0 {
                return lost;
            }
            lost += u64::from(moved.lost);
        }
    }

    /// Declares lost everything before offset `limit` or the first held range, whichever is
    /// lower, then delivers the held run that became contiguous.
    fn skip_hole(&mut self, limit: u32, out: &mut (impl FnMut(Delivery<'_>) + ?Sized)) -> Moved {
        let lost = self.ranges.first().map_or(limit, |r| r.0.min(limit));
        if lost == 0 {
            return Moved {
                lost: 0,
                delivered: 0,
            };
        }
        out(Delivery::Gap(lost));
        self.advance(lost as usize);
        let delivered = self.deliver_ready(out);
        Moved { lost, delivered }
    }

    /// End of the bytes in order at the receiver: the held run from offset 0, if any.
    fn in_order_end(&self) -> u32 {
        match self.ranges.first() {
            Some((0, end)) => end,
            _ => 0,
        }
    }

    /// A segment at offset `off` that starts at or before the end of the in-order bytes is
    /// the receiver's next in-order data: where it overlaps bytes held out of order, its
    /// bytes replace them (see the overlap rule on [`Reassembler`]). Costs the segment's length.
    /// Returns whether the segment reached the in-order point.
    fn overwrite_out_of_order(&mut self, off: i64, data: &[u8]) -> bool {
        let front = self.in_order_end();
        let Ok(skip) = usize::try_from(i64::from(front) - off) else {
            return false;
        };
        if skip >= data.len() || front >= self.window {
            return true;
        }
        let fresh = &data[skip..];
        let end = u32::try_from(fresh.len())
            .unwrap_or(u32::MAX)
            .min(self.window - front)
            + front;
        let base = self.base;
        let pages = &mut self.pages;
        self.ranges.for_each_held(front, end, |a, b| {
            let bytes = &fresh[(a - front) as usize..(b - front) as usize];
            pages.write(base + u64::from(a), bytes);
        });
        true
    }

    /// Stores an out-of-order (or not yet released) segment at offset `off`
    /// (`off + len <= window`): only its bytes not already held are written.
    fn hold(&mut self, off: u32, data: &[u8], pushed: &mut Pushed) -> Result<(), ReassemblyError> {
        let end = off + to_u32(data.len());
        let already = self.ranges.covered(off, end);
        let mut fresh = [(0u32, 0u32); MAX_RANGES + 1];
        let mut n = 0;
        self.ranges.for_each_gap(off, end, |a, b| {
            fresh[n] = (a, b);
            n += 1;
        });
        self.ranges.insert(off, end)?;
        pushed.duplicate = pushed.duplicate.saturating_add(already);
        for &(a, b) in &fresh[..n] {
            let bytes = &data[(a - off) as usize..(b - off) as usize];
            self.pages.write(self.base + u64::from(a), bytes);
        }
        Ok(())
    }

    /// Delivers the released part of the held run starting at offset 0, if there is one.
    /// Returns its length.
    fn deliver_ready(&mut self, out: &mut (impl FnMut(Delivery<'_>) + ?Sized)) -> usize {
        match self.ranges.first() {
            Some((0, end)) => {
                let n = end.min(self.room()) as usize;
                if n == 0 {
                    return 0;
                }
                self.pages
                    .read(self.base, n, &mut |b| out(Delivery::Data(b)));
                self.advance(n);
                n
            }
            _ => 0,
        }
    }

    /// Moves `next_seq` forward by `n` bytes that were delivered or lost.
    fn advance(&mut self, n: usize) {
        let n32 = to_u32(n);
        self.next_seq = self.next_seq.wrapping_add(n32);
        self.base += u64::from(n32);
        self.ranges.advance(n32);
        if self.ranges.is_empty() {
            self.pages.clear();
        } else {
            self.pages.release_before(self.base);
        }
    }
}

/// How far a skipped hole moved the stream.
struct Moved {
    lost: u32,
    delivered: usize,
}

/// Lengths handled here are bounded by a segment or the window; saturate rather than wrap
/// if a caller ever passes more than 4 GiB at once.
fn to_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests;
