//! The byte ranges held out of order, as offsets from the next expected byte, in a small
//! fixed array (the idea of smoltcp's `Assembler`; no allocation, ever).

use thiserror::Error;

/// How many separate out-of-order ranges one flow may hold. Each range past the first means
/// one more segment lost or reordered inside the window; 8 covers ordinary reordering, and
/// beyond it the newest range is refused rather than the array grown.
pub const MAX_RANGES: usize = 8;

/// Every slot is in use and the new range touches none of them.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
#[error("all {MAX_RANGES} out-of-order range slots are in use")]
pub struct TooManyRanges;

/// A set of half-open ranges `[start, end)` of `u32` offsets.
///
/// Invariants, kept by every method:
/// - `ranges[..len]` is sorted by `start`;
/// - every range is non-empty: `start < end`;
/// - neighbours neither overlap nor touch: `ranges[i].end < ranges[i + 1].start`
///   (touching ranges are merged, so one slot holds each contiguous run).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeSet {
    ranges: [(u32, u32); MAX_RANGES],
    len: usize,
}

impl RangeSet {
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// The lowest range.
    pub fn first(&self) -> Option<(u32, u32)> {
        self.as_slice().first().copied()
    }

    /// One past the highest offset held, 0 when empty.
    pub fn end(&self) -> u32 {
        self.as_slice().last().map_or(0, |r| r.1)
    }

    pub fn as_slice(&self) -> &[(u32, u32)] {
        &self.ranges[..self.len]
    }

    /// How many offsets of `[start, end)` are already held.
    pub fn covered(&self, start: u32, end: u32) -> u32 {
        self.as_slice()
            .iter()
            .map(|&(s, e)| e.min(end).saturating_sub(s.max(start)))
            .sum()
    }

    /// Calls `f` with each maximal part of `[start, end)` that is not held, in order.
    pub fn for_each_gap(&self, start: u32, end: u32, mut f: impl FnMut(u32, u32)) {
        let mut at = start;
        for &(s, e) in self.as_slice() {
            if e <= at {
                continue;
            }
            if s >= end {
                break;
            }
            if s > at {
                f(at, s);
            }
            at = e;
        }
        if at < end {
            f(at, end);
        }
    }

    /// Calls `f` with each maximal part of `[start, end)` that is held, in order.
    pub fn for_each_held(&self, start: u32, end: u32, mut f: impl FnMut(u32, u32)) {
        for &(s, e) in self.as_slice() {
            let (a, b) = (s.max(start), e.min(end));
            if a < b {
                f(a, b);
            }
        }
    }

    /// Adds `[start, end)`, merging it with every range it overlaps or touches. On error
    /// nothing changed.
    pub fn insert(&mut self, start: u32, end: u32) -> Result<(), TooManyRanges> {
        if start >= end {
            return Ok(());
        }
        let slice = self.as_slice();
        // First range that ends at or after `start` (it may merge), and one past the last
        // range that starts at or before `end`: together, the run of ranges to merge.
        let lo = slice.partition_point(|r| r.1 < start);
        let hi = slice.partition_point(|r| r.0 <= end);
        if lo == hi {
            if self.len == MAX_RANGES {
                return Err(TooManyRanges);
            }
            self.ranges.copy_within(lo..self.len, lo + 1);
            self.ranges[lo] = (start, end);
            self.len += 1;
            return Ok(());
        }
        let merged = (start.min(slice[lo].0), end.max(slice[hi - 1].1));
        self.ranges[lo] = merged;
        self.ranges.copy_within(hi..self.len, lo + 1);
        self.len -= hi - lo - 1;
        Ok(())
    }

    /// Re-bases every offset after the first `n` are consumed: ranges below `n` vanish,
    /// one straddling it is clipped to start at 0.
    pub fn advance(&mut self, n: u32) {
        let mut kept = 0;
        for i in 0..self.len {
            let (s, e) = self.ranges[i];
            if e > n {
                self.ranges[kept] = (s.saturating_sub(n), e - n);
                kept += 1;
            }
        }
        self.len = kept;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ranges: &[(u32, u32)]) -> RangeSet {
        let mut s = RangeSet::default();
        for &(a, b) in ranges {
            s.insert(a, b).unwrap();
        }
        s
    }

    #[test]
    fn insert_merges_overlapping_and_touching_ranges() {
        for (input, want) in [
            (vec![(10, 20), (30, 40)], vec![(10, 20), (30, 40)]),
            (vec![(30, 40), (10, 20)], vec![(10, 20), (30, 40)]),
            (vec![(10, 20), (20, 30)], vec![(10, 30)]),
            (vec![(20, 30), (10, 20)], vec![(10, 30)]),
            (vec![(10, 20), (30, 40), (15, 35)], vec![(10, 40)]),
            (vec![(10, 20), (30, 40), (50, 60), (5, 65)], vec![(5, 65)]),
            (vec![(10, 20), (12, 15)], vec![(10, 20)]),
            (
                vec![(10, 20), (30, 40), (50, 60), (31, 50)],
                vec![(10, 20), (30, 60)],
            ),
            (vec![(5, 5)], vec![]),
        ] {
            assert_eq!(set(&input).as_slice(), want.as_slice(), "{input:?}");
        }
    }

    #[test]
    fn full_set_refuses_a_new_slot_but_still_merges() {
        let mut s = RangeSet::default();
        for i in 0..MAX_RANGES as u32 {
            s.insert(i * 10 + 1, i * 10 + 5).unwrap();
        }
        let before = s.clone();
        assert_eq!(s.insert(200, 210), Err(TooManyRanges));
        assert_eq!(s, before);
        assert_eq!(s.insert(5, 8), Ok(()));
        assert_eq!(s.len(), MAX_RANGES);
        assert_eq!(s.first(), Some((1, 8)));
    }

    #[test]
    fn advance_drops_clips_and_rebases() {
        let mut s = set(&[(10, 20), (30, 40)]);
        s.advance(15);
        assert_eq!(s.as_slice(), &[(0, 5), (15, 25)]);
        s.advance(5);
        assert_eq!(s.as_slice(), &[(10, 20)]);
        s.advance(100);
        assert!(s.is_empty());
        assert_eq!(s.end(), 0);
    }

    #[test]
    fn gaps_are_the_uncovered_parts() {
        let s = set(&[(10, 20), (30, 40)]);
        let mut gaps = Vec::new();
        s.for_each_gap(0, 100, |a, b| gaps.push((a, b)));
        assert_eq!(gaps, vec![(0, 10), (20, 30), (40, 100)]);
        gaps.clear();
        s.for_each_gap(12, 35, |a, b| gaps.push((a, b)));
        assert_eq!(gaps, vec![(20, 30)]);
        gaps.clear();
        s.for_each_gap(31, 39, |a, b| gaps.push((a, b)));
        assert!(gaps.is_empty());
    }

    #[test]
    fn covered_counts_overlap() {
        let s = set(&[(10, 20), (30, 40)]);
        assert_eq!(s.covered(0, 100), 20);
        assert_eq!(s.covered(15, 35), 10);
        assert_eq!(s.covered(20, 30), 0);
    }

    #[test]
    fn for_each_held_clips_to_the_asked_range() {
        let s = set(&[(10, 20), (30, 40)]);
        let mut parts = Vec::new();
        s.for_each_held(15, 35, |a, b| parts.push((a, b)));
        assert_eq!(parts, vec![(15, 20), (30, 35)]);
        parts.clear();
        s.for_each_held(20, 30, |a, b| parts.push((a, b)));
        assert!(parts.is_empty());
    }
}
