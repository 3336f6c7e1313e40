//! Which requests each mirror takes: a share (Istio's percentage, Gateway API's fraction)
//! compared against a 64-bit draw per request, the draw being either a seeded coin per
//! mirror or, for consistent sampling, a hash of a header shared by every mirror.

use thiserror::Error;

use super::{
    fields::{Http1Head, RequestFields},
    view::HeadView,
};
use crate::sampling::splitmix64;

const TWO_POW_64: u128 = 1 << 64;

#[derive(Debug, Error, PartialEq)]
pub enum ShareError {
    #[error("percent must be within 0..=100, got {0}")]
    Percent(f64),
    #[error(
        "fraction {numerator}/{denominator} must have 0 < denominator and numerator <= denominator"
    )]
    Fraction { numerator: u64, denominator: u64 },
}

/// The part of requests a mirror takes: a draw `d` (uniform over `u64`) is taken when
/// `d < threshold`, `threshold` in `0..=2^64`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Share {
    threshold: u128,
}

impl Share {
    pub const ALL: Share = Share {
        threshold: TWO_POW_64,
    };

    /// `percent` in `0.0..=100.0`, fractions allowed.
    pub fn percent(percent: f64) -> Result<Self, ShareError> {
        if !(0.0..=100.0).contains(&percent) {
            return Err(ShareError::Percent(percent));
        }
        // The f64 rounding (2^-53 relative) is far below any percentage anyone configures;
        // the cast saturates, and 100 gives exactly 2^64.
        let threshold = (percent / 100.0 * TWO_POW_64 as f64) as u128;
        Ok(Self {
            threshold: threshold.min(TWO_POW_64),
        })
    }

    /// Exactly `numerator / denominator`, rounded down to a multiple of 2^-64.
    pub fn fraction(numerator: u64, denominator: u64) -> Result<Self, ShareError> {
        if denominator == 0 || numerator > denominator {
            return Err(ShareError::Fraction {
                numerator,
                denominator,
            });
        }
        Ok(Self {
            threshold: u128::from(numerator) * TWO_POW_64 / u128::from(denominator),
        })
    }

    pub fn takes(self, draw: u64) -> bool {
        u128::from(draw) < self.threshold
    }

    /// The share as a percentage, for printing effective policies.
    pub fn as_percent(self) -> f64 {
        self.threshold as f64 / TWO_POW_64 as f64 * 100.0
    }
}

/// How the draws of one policy's mirrors are made.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Sampling {
    /// Each mirror flips its own seeded coin: mirrors choose independently.
    #[default]
    Independent,
    /// One draw per request, the hash of this header's value, for every mirror: mirrors
    /// (and agents on other nodes) take the same requests, and a mirror with a smaller share
    /// takes a subset of what one with a larger share takes. A request without the header
    /// gets one coin draw shared by all mirrors, so the subset rule still holds.
    ConsistentBy { header: String },
}

/// The seeded generator behind coin draws (SplitMix64: not for anything an attacker must
/// not predict).
#[derive(Clone, Debug)]
pub struct Coin {
    state: u64,
}

impl Coin {
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    pub fn draw(&mut self) -> u64 {
        splitmix64(&mut self.state)
    }
}

/// The draws for one request: `draw()` once per mirror, in mirror order.
#[derive(Debug)]
pub enum Draws<'c> {
    Shared(u64),
    Coin(&'c mut Coin),
}

impl Draws<'_> {
    pub fn draw(&mut self) -> u64 {
        match self {
            Draws::Shared(d) => *d,
            Draws::Coin(coin) => coin.draw(),
        }
    }
}

impl Sampling {
    /// The draws for the request whose head is `head`.
    pub fn draws<'c>(&self, view: &HeadView, head: &[u8], coin: &'c mut Coin) -> Draws<'c> {
        self.draws_for(&Http1Head { view, head }, coin)
    }

    /// The draws for any protocol's request.
    pub fn draws_for<'c, R: RequestFields + ?Sized>(
        &self,
        request: &R,
        coin: &'c mut Coin,
    ) -> Draws<'c> {
        match self {
            Sampling::Independent => Draws::Coin(coin),
            Sampling::ConsistentBy { header } => match request.find_value(header, &mut |_| true) {
                Some(value) => Draws::Shared(consistent_hash(value)),
                None => Draws::Shared(coin.draw()),
            },
        }
    }
}

/// A fixed, unseeded 64-bit hash (FNV-1a, then SplitMix64's finalizer to spread the bits):
/// every agent must compute the same value for the same header.
pub fn consistent_hash(value: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in value {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    splitmix64(&mut h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn taken(share: Share, seed: u64, n: usize) -> usize {
        let mut coin = Coin::new(seed);
        (0..n).filter(|_| share.takes(coin.draw())).count()
    }

    #[test]
    fn bounds_are_exact() {
        assert_eq!(taken(Share::percent(100.0).unwrap(), 1, 10_000), 10_000);
        assert_eq!(taken(Share::ALL, 1, 10_000), 10_000);
        assert_eq!(taken(Share::fraction(1, 1).unwrap(), 1, 10_000), 10_000);
        assert_eq!(taken(Share::percent(0.0).unwrap(), 1, 10_000), 0);
        assert_eq!(taken(Share::fraction(0, 7).unwrap(), 1, 10_000), 0);
    }

    #[test]
    fn shares_land_near_their_rate() {
        for (share, lo, hi) in [
            (Share::percent(50.0).unwrap(), 4_800, 5_200),
            (Share::fraction(1, 10).unwrap(), 900, 1_100),
            (Share::fraction(1, 1000).unwrap(), 3, 20),
        ] {
            let n = taken(share, 42, 10_000);
            assert!((lo..=hi).contains(&n), "{share:?} gave {n}/10000");
        }
    }

    #[test]
    fn bad_shares_are_refused() {
        for p in [-0.1, 150.0, f64::NAN] {
            assert!(Share::percent(p).is_err(), "{p}");
        }
        assert!(Share::fraction(1, 0).is_err());
        assert!(Share::fraction(3, 2).is_err());
    }

    #[test]
    fn percent_and_fraction_agree() {
        assert_eq!(
            Share::percent(50.0).unwrap(),
            Share::fraction(1, 2).unwrap()
        );
        assert!((Share::fraction(1, 1000).unwrap().as_percent() - 0.1).abs() < 1e-9);
    }

    #[test]
    fn consistent_draws_are_shared_and_fixed() {
        let sampling = Sampling::ConsistentBy {
            header: "x-request-id".into(),
        };
        let head = b"GET / HTTP/1.1\r\nX-Request-Id: abc\r\n\r\n";
        let mut view = HeadView::default();
        view.parse(head).unwrap();
        let (mut c1, mut c2) = (Coin::new(1), Coin::new(2));
        let mut a = sampling.draws(&view, head, &mut c1);
        let first = a.draw();
        assert_eq!(a.draw(), first);
        assert_eq!(sampling.draws(&view, head, &mut c2).draw(), first);
        assert_eq!(first, consistent_hash(b"abc"));
    }

    proptest! {
        /// Under consistent sampling a smaller share takes a subset of a larger one's
        /// requests.
        #[test]
        fn smaller_share_takes_a_subset(ids in proptest::collection::vec(any::<u64>(), 1..200),
                                        small in 0u64..=100, extra in 0u64..=100) {
            let big = (small + extra).min(100);
            let (s, b) = (Share::fraction(small, 100).unwrap(), Share::fraction(big, 100).unwrap());
            for id in ids {
                let d = consistent_hash(id.to_string().as_bytes());
                prop_assert!(!s.takes(d) || b.takes(d));
            }
        }
    }
}
