//! Sparse storage for the bytes held out of order: fixed-size pages keyed by their place in
//! the stream, allocated only where bytes are held. Memory follows the bytes held (plus at most
//! two partly used pages per held range), never the offset they sit at.

use std::collections::BTreeMap;

/// Bytes per page. Small enough that a lone byte pins little, large enough that a 1448-byte
/// segment touches at most two pages.
pub const PAGE: usize = 2048;

/// What one page costs the memory cap: its bytes and the map node that owns it.
pub const PAGE_COST: usize = PAGE + 64;

/// Held bytes by absolute stream position (a `u64` that never wraps).
#[derive(Debug, Default)]
pub struct Pages {
    map: BTreeMap<u64, Box<[u8]>>,
}

impl Pages {
    /// Copies `data` to stream position `at`, allocating the pages it touches.
    pub fn write(&mut self, at: u64, data: &[u8]) {
        let mut at = at;
        let mut data = data;
        while !data.is_empty() {
            let (index, within) = split(at);
            let n = (PAGE - within).min(data.len());
            let page = self
                .map
                .entry(index)
                .or_insert_with(|| vec![0; PAGE].into_boxed_slice());
            page[within..within + n].copy_from_slice(&data[..n]);
            at += n as u64;
            data = &data[n..];
        }
    }

    /// Hands `len` bytes from stream position `at` to `out`, a page at a time. Every byte in
    /// the run must have been written.
    pub fn read(&self, at: u64, len: usize, out: &mut impl FnMut(&[u8])) {
        let mut at = at;
        let mut left = len;
        while left > 0 {
            let (index, within) = split(at);
            let n = (PAGE - within).min(left);
            // Held ranges are always backed by pages; a missing page would be a bug, and
            // stopping short is the safe answer to it.
            let Some(page) = self.map.get(&index) else {
                return;
            };
            out(&page[within..within + n]);
            at += n as u64;
            left -= n;
        }
    }

    /// Frees every page wholly before stream position `at`.
    pub fn release_before(&mut self, at: u64) {
        let (first_kept, _) = split(at);
        while self
            .map
            .first_key_value()
            .is_some_and(|(&k, _)| k < first_kept)
        {
            self.map.pop_first();
        }
    }

    pub fn clear(&mut self) {
        self.map.clear();
    }

    pub fn memory(&self) -> usize {
        self.map.len() * PAGE_COST
    }
}

fn split(at: u64) -> (u64, usize) {
    (at / PAGE as u64, (at % PAGE as u64) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_read_across_pages_and_release() {
        let mut p = Pages::default();
        let data: Vec<u8> = (0..5000).map(|i| i as u8).collect();
        p.write(1000, &data);
        assert_eq!(p.memory(), 3 * PAGE_COST);
        let mut got = Vec::new();
        p.read(1000, 5000, &mut |b| got.extend_from_slice(b));
        assert_eq!(got, data);
        p.release_before(4096);
        assert_eq!(p.memory(), PAGE_COST);
        p.write(1 << 40, b"x");
        assert_eq!(p.memory(), 2 * PAGE_COST);
    }
}
