//! Per-request sampling (Istio's `mirrorPercentage`): a deterministic coin, seeded by the
//! caller, so a run can be replayed exactly.

use thiserror::Error;

#[derive(Debug, Error, PartialEq)]
pub enum SamplingError {
    #[error("mirror percentage must be within 0..=100, got {0}")]
    OutOfRange(f64),
}

/// Decides, once per request, whether it is mirrored.
///
/// The generator is SplitMix64: tiny state, passes BigCrush, and good enough for a coin flip;
/// it is not for anything an attacker must not predict.
#[derive(Clone, Debug)]
pub struct Sampler {
    /// A draw `< threshold` mirrors. `None` means always (100 %), which a `u64` threshold
    /// cannot express.
    threshold: Option<u64>,
    state: u64,
}

impl Sampler {
    /// `percent` in `0.0..=100.0` (fractions allowed); `seed` fixes the sequence of decisions.
    pub fn new(percent: f64, seed: u64) -> Result<Self, SamplingError> {
        if !(0.0..=100.0).contains(&percent) {
            return Err(SamplingError::OutOfRange(percent));
        }
        let threshold = if percent >= 100.0 {
            None
        } else {
            // 2^64 * percent / 100, computed in f64: the rounding error (2^-53 relative) is
            // far below any percentage anyone configures. The cast saturates.
            Some((percent / 100.0 * 18_446_744_073_709_551_616.0) as u64)
        };
        Ok(Self {
            threshold,
            state: seed,
        })
    }

    /// True if the next request is to be mirrored.
    pub fn sample(&mut self) -> bool {
        match self.threshold {
            None => true,
            Some(0) => false,
            Some(t) => self.next_u64() < t,
        }
    }

    fn next_u64(&mut self) -> u64 {
        splitmix64(&mut self.state)
    }
}

/// One step of SplitMix64: advances `state` and returns the next output.
pub(crate) fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hits(percent: f64, seed: u64, n: usize) -> usize {
        let mut s = Sampler::new(percent, seed).unwrap();
        (0..n).filter(|_| s.sample()).count()
    }

    #[test]
    fn bounds_are_exact() {
        assert_eq!(hits(100.0, 1, 10_000), 10_000);
        assert_eq!(hits(0.0, 1, 10_000), 0);
    }

    #[test]
    fn fractions_land_near_their_rate() {
        for (percent, lo, hi) in [(50.0, 4_800, 5_200), (10.0, 900, 1_100), (0.5, 30, 75)] {
            let n = hits(percent, 42, 10_000);
            assert!((lo..=hi).contains(&n), "{percent}% gave {n}/10000");
        }
    }

    #[test]
    fn same_seed_same_decisions_other_seed_differs() {
        let run = |seed| {
            let mut s = Sampler::new(50.0, seed).unwrap();
            (0..64).map(|_| s.sample()).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn rejects_out_of_range_and_nan() {
        for p in [-0.1, 100.1, f64::NAN, f64::INFINITY] {
            assert!(Sampler::new(p, 0).is_err(), "{p}");
        }
    }
}
