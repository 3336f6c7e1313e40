//! The kernel's port pre-filter: one bit per TCP port that some target has, so the node's other
//! traffic leaves the classifier before its trie lookup.

use std::collections::BTreeSet;

use mirror_common::PORT_BITMAP_WORDS;

use super::target::Target;

const WORDS: usize = PORT_BITMAP_WORDS as usize;

/// The bitmap as the kernel's `PORTS` array holds it: bit `port % 32` of word `port / 32`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortBitmap {
    words: Vec<u32>,
}

impl PortBitmap {
    /// No port set.
    pub fn empty() -> PortBitmap {
        PortBitmap {
            words: vec![0; WORDS],
        }
    }

    /// The ports of `targets`.
    pub fn of(targets: &BTreeSet<Target>) -> PortBitmap {
        let mut bitmap = PortBitmap::empty();
        for target in targets {
            bitmap.words[usize::from(target.port >> 5)] |= 1 << (target.port & 31);
        }
        bitmap
    }

    #[cfg(test)]
    fn contains(&self, port: u16) -> bool {
        self.words[usize::from(port >> 5)] & (1 << (port & 31)) != 0
    }

    /// Every port set in either.
    pub fn union(&self, other: &PortBitmap) -> PortBitmap {
        PortBitmap {
            words: self
                .words
                .iter()
                .zip(&other.words)
                .map(|(a, b)| a | b)
                .collect(),
        }
    }

    /// The words (index, new value) where `self` differs from `installed`: all the kernel map
    /// needs written to go from `installed` to `self`.
    pub fn changes_from<'a>(
        &'a self,
        installed: &'a PortBitmap,
    ) -> impl Iterator<Item = (u32, u32)> + 'a {
        self.words
            .iter()
            .zip(&installed.words)
            .enumerate()
            .filter(|(_, (new, old))| new != old)
            .filter_map(|(index, (new, _))| Some((u32::try_from(index).ok()?, *new)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targets(list: &[&str]) -> BTreeSet<Target> {
        list.iter().map(|t| t.parse().unwrap()).collect()
    }

    #[test]
    fn sets_exactly_the_targets_ports() {
        let bitmap = PortBitmap::of(&targets(&[
            "10.0.0.1:80",
            "[fd00::1]:8000",
            "10.0.0.2:65535",
        ]));
        for port in 0..=u16::MAX {
            assert_eq!(
                bitmap.contains(port),
                [80, 8000, 65535].contains(&port),
                "port {port}"
            );
        }
        assert_eq!(bitmap.words[80 / 32], 1 << (80 % 32));
    }

    #[test]
    fn changes_name_only_the_words_that_differ() {
        let old = PortBitmap::of(&targets(&["10.0.0.1:80", "10.0.0.1:8000"]));
        let new = PortBitmap::of(&targets(&["10.0.0.1:81", "10.0.0.1:9000"]));
        let changes: Vec<_> = new.changes_from(&old).collect();
        // 80 and 81 share word 2; 8000 is bit 0 of word 250, 9000 bit 8 of word 281.
        assert_eq!(changes, vec![(2, 1 << 17), (250, 0), (281, 1 << 8)]);
        let both = old.union(&new);
        assert!([80, 81, 8000, 9000].iter().all(|p| both.contains(*p)));
        assert_eq!(
            PortBitmap::empty()
                .changes_from(&PortBitmap::empty())
                .count(),
            0
        );
    }
}
