//! TCP stream reassembly for one direction of one flow: turns segments in any order, with
//! retransmissions and overlaps, into the byte stream in order, or says where it has a gap.

mod ranges;

pub use ranges::{RangeSet, TooManyRanges, MAX_RANGES};

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
}

/// Largest out-of-order window a flow may have. Sequence offsets are compared as `i32`, so
/// the window must stay well below 2^31 for "behind" and "ahead" to be told apart.
pub const MAX_WINDOW: u32 = 1 << 30;

/// An emptied buffer keeps at most this much capacity, so idle flows do not pin memory.
const RETAINED_CAPACITY: usize = 64 * 1024;

/// Reassembly state of one flow direction.
///
/// Offsets below are relative to `next_seq`, the sequence number of the next byte to deliver.
/// Invariants:
/// - every offset held in `ranges` is `< window` (enforced when a segment is buffered);
/// - `buf[head + i]` is the byte at offset `i` for every `i` inside `ranges`, so
///   `buf.len() >= head + ranges.end()`;
/// - `ranges` never starts at 0 between calls: data at offset 0 is delivered at once;
/// - when `ranges` is empty, `buf` is empty and `head == 0`.
#[derive(Debug)]
pub struct Reassembler {
    next_seq: u32,
    window: u32,
    ranges: RangeSet,
    buf: Vec<u8>,
    head: usize,
}

impl Reassembler {
    /// Starts a stream whose next byte has sequence number `next_seq` (ISN + 1 after a SYN).
    /// `window` (clamped to [`MAX_WINDOW`]) bounds how far ahead of `next_seq` bytes are held.
    pub fn new(next_seq: u32, window: u32) -> Self {
        Self {
            next_seq,
            window: window.min(MAX_WINDOW),
            ranges: RangeSet::default(),
            buf: Vec::new(),
            head: 0,
        }
    }

    /// Sequence number of the next byte to deliver.
    pub fn next_seq(&self) -> u32 {
        self.next_seq
    }

    /// Whether out-of-order bytes are held (a hole precedes them).
    pub fn has_held(&self) -> bool {
        !self.ranges.is_empty()
    }

    /// Heap bytes this state pins, for the global memory cap.
    pub fn memory(&self) -> usize {
        self.buf.capacity()
    }

    /// Takes one segment's payload starting at sequence number `seq`, delivering whatever
    /// becomes contiguous. A segment that would end beyond the window makes the oldest hole a
    /// gap, as often as needed: the capture lost it (a receiver would have it by now).
    ///
    /// The next expected segment is never refused; only an out-of-order one can be, when every
    /// range slot is taken (`Err`, nothing changed).
    pub fn push(
        &mut self,
        seq: u32,
        payload: &[u8],
        out: &mut impl FnMut(Delivery<'_>),
    ) -> Result<Pushed, ReassemblyError> {
        let mut pushed = Pushed::default();
        let mut data = payload;
        // Offset of `data[0]`; i64 so that adding a length can never overflow.
        let mut off = i64::from(seq.wrapping_sub(self.next_seq) as i32);
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
            let end = off + data.len() as i64;
            if off == 0 {
                pushed.duplicate = pushed
                    .duplicate
                    .saturating_add(self.ranges.covered(0, to_u32(data.len())));
                out(Delivery::Data(data));
                self.advance(data.len());
                self.deliver_ready(out);
                return Ok(pushed);
            }
            if end <= i64::from(self.window) {
                self.hold(off as u32, data, &mut pushed)?;
                return Ok(pushed);
            }
            let moved = self.skip_hole(off as u32, out);
            pushed.gap += u64::from(moved.lost);
            off -= i64::from(moved.lost) + moved.delivered as i64;
        }
    }

    /// Gives up on the hole in front of the held bytes, if any: reports it as a gap and
    /// delivers what was held after it. Returns the gap size (0 if nothing was held).
    pub fn skip_front_hole(&mut self, out: &mut impl FnMut(Delivery<'_>)) -> u32 {
        match self.ranges.first() {
            Some((start, _)) => self.skip_hole(start, out).lost,
            None => 0,
        }
    }

    /// Declares lost everything before offset `limit` or the first held range, whichever is
    /// lower, then delivers the held run that became contiguous.
    fn skip_hole(&mut self, limit: u32, out: &mut impl FnMut(Delivery<'_>)) -> Moved {
        let lost = self.ranges.first().map_or(limit, |r| r.0.min(limit));
        out(Delivery::Gap(lost));
        self.advance(lost as usize);
        let delivered = self.deliver_ready(out);
        Moved { lost, delivered }
    }

    /// Copies an out-of-order segment at offset `off` (`0 < off`, `off + len <= window`).
    fn hold(&mut self, off: u32, data: &[u8], pushed: &mut Pushed) -> Result<(), ReassemblyError> {
        let end = off + to_u32(data.len());
        let already = self.ranges.covered(off, end);
        self.ranges.insert(off, end)?;
        pushed.duplicate = pushed.duplicate.saturating_add(already);
        let need = self.head + end as usize;
        if need > self.buf.len() {
            if self.head > 0 && need > self.buf.capacity() {
                // Reclaim the delivered prefix before growing, so the buffer stays within
                // about one window.
                self.buf.drain(..self.head);
                self.head = 0;
            }
            self.buf.resize(self.head + end as usize, 0);
        }
        let at = self.head + off as usize;
        self.buf[at..at + data.len()].copy_from_slice(data);
        Ok(())
    }

    /// Delivers the held run starting at offset 0, if there is one. Returns its length.
    fn deliver_ready(&mut self, out: &mut impl FnMut(Delivery<'_>)) -> usize {
        match self.ranges.first() {
            Some((0, end)) => {
                let end = end as usize;
                out(Delivery::Data(&self.buf[self.head..self.head + end]));
                self.advance(end);
                end
            }
            _ => 0,
        }
    }

    /// Moves `next_seq` forward by `n` bytes that were delivered or lost.
    fn advance(&mut self, n: usize) {
        let n32 = to_u32(n);
        self.next_seq = self.next_seq.wrapping_add(n32);
        self.ranges.advance(n32);
        if self.ranges.is_empty() {
            self.buf.clear();
            self.head = 0;
            if self.buf.capacity() > RETAINED_CAPACITY {
                self.buf = Vec::new();
            }
        } else {
            self.head += n;
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
