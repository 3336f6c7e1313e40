//! Mirror policies, sans-IO: given one request head's bytes, which of a policy's mirrors take
//! the request, and the head each of them sends. Pure functions over bytes; the config file
//! that builds these values and the relays that send the heads live in the agent.
//!
//! ```
//! use bytes::{Bytes, BytesMut};
//! use mirror_cores::policy::{Coin, HeadView, MirrorRule, MirrorRewrite, Policy, Share, Verdict};
//!
//! let policy = Policy {
//!     matches: vec![],
//!     sampling: Default::default(),
//!     mirrors: vec![MirrorRule { share: Share::ALL, rewrite: MirrorRewrite::KEEP }],
//! };
//! let head = Bytes::from_static(b"GET / HTTP/1.1\r\nHost: api\r\n\r\n");
//! let mut view = HeadView::default();
//! view.parse(&head).unwrap();
//! let mut coin = Coin::new(0);
//! let mut verdicts = Vec::new();
//! policy.decide(&view, &head, &mut coin, |mirror, verdict| verdicts.push((mirror, verdict)));
//! assert_eq!(verdicts, [(0, Verdict::Take)]);
//! let sent = policy.mirrors[0].rewrite.apply(&view, &head, &mut BytesMut::new());
//! assert_eq!(sent, head);
//! ```

mod fields;
mod matching;
mod modify;
mod selection;
mod view;

pub use fields::{path_of, Http1Head, RequestFields};
pub use matching::{
    anchored, any_matches, any_matches_request, is_token, HeaderMatch, MatchError, PathMatch,
    RequestMatch, ValueMatch,
};
pub use modify::{HeaderModifier, MirrorRewrite, ModifyError};
pub use selection::{consistent_hash, Coin, Draws, Sampling, Share, ShareError};
pub use view::{Field, HeadView, ViewError};

/// One mirror of a policy: how much it takes and what it changes.
#[derive(Clone, Debug)]
pub struct MirrorRule {
    pub share: Share,
    pub rewrite: MirrorRewrite,
}

/// Which requests to one destination are mirrored where.
#[derive(Clone, Debug)]
pub struct Policy {
    /// Gateway API semantics: empty matches everything, otherwise any entry must match.
    pub matches: Vec<RequestMatch>,
    pub sampling: Sampling,
    pub mirrors: Vec<MirrorRule>,
}

/// What one mirror does with one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Take,
    SampledOut,
    NotMatched,
}

impl Policy {
    /// Calls `verdict(mirror_index, verdict)` once per mirror, in order.
    pub fn decide(
        &self,
        view: &HeadView,
        head: &[u8],
        coin: &mut Coin,
        verdict: impl FnMut(usize, Verdict),
    ) {
        self.decide_request(&Http1Head { view, head }, coin, verdict);
    }

    /// [`Policy::decide`] over any protocol's request (an HTTP/2 stream's header list).
    pub fn decide_request<R: RequestFields + ?Sized>(
        &self,
        request: &R,
        coin: &mut Coin,
        mut verdict: impl FnMut(usize, Verdict),
    ) {
        if !any_matches_request(&self.matches, request) {
            for i in 0..self.mirrors.len() {
                verdict(i, Verdict::NotMatched);
            }
            return;
        }
        let mut draws = self.sampling.draws_for(request, coin);
        for (i, mirror) in self.mirrors.iter().enumerate() {
            if mirror.share.takes(draws.draw()) {
                verdict(i, Verdict::Take);
            } else {
                verdict(i, Verdict::SampledOut);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(shares: &[Share], sampling: Sampling, matches: Vec<RequestMatch>) -> Policy {
        Policy {
            matches,
            sampling,
            mirrors: shares
                .iter()
                .map(|&share| MirrorRule {
                    share,
                    rewrite: MirrorRewrite::KEEP,
                })
                .collect(),
        }
    }

    /// Requests taken by each mirror over `n` heads with distinct request ids.
    fn tally(p: &Policy, n: usize, path: &str) -> Vec<Vec<usize>> {
        let mut coin = Coin::new(7);
        let mut view = HeadView::default();
        let mut taken = vec![Vec::new(); p.mirrors.len()];
        for i in 0..n {
            let head = format!("GET {path} HTTP/1.1\r\nX-Request-Id: req-{i}\r\n\r\n");
            view.parse(head.as_bytes()).unwrap();
            p.decide(&view, head.as_bytes(), &mut coin, |m, v| {
                if v == Verdict::Take {
                    taken[m].push(i);
                }
            });
        }
        taken
    }

    #[test]
    fn hundred_and_fifty_percent_mirrors() {
        let p = policy(
            &[Share::ALL, Share::percent(50.0).unwrap()],
            Sampling::Independent,
            vec![],
        );
        let taken = tally(&p, 2_000, "/");
        assert_eq!(taken[0].len(), 2_000);
        assert!(
            (900..=1_100).contains(&taken[1].len()),
            "{}",
            taken[1].len()
        );
    }

    #[test]
    fn consistent_sampling_takes_the_same_requests() {
        let half = Share::percent(50.0).unwrap();
        let consistent = Sampling::ConsistentBy {
            header: "x-request-id".into(),
        };
        let p = policy(&[half, half], consistent.clone(), vec![]);
        let taken = tally(&p, 1_000, "/");
        assert_eq!(taken[0], taken[1]);
        // Another agent (another coin seed) picks the same ones.
        let again = tally(&policy(&[half], consistent, vec![]), 1_000, "/");
        assert_eq!(again[0], taken[0]);
        let independent = tally(
            &policy(&[half, half], Sampling::Independent, vec![]),
            1_000,
            "/",
        );
        assert_ne!(independent[0], independent[1]);
    }

    #[test]
    fn unmatched_requests_go_nowhere() {
        let m = RequestMatch {
            path: Some(PathMatch::prefix("/api").unwrap()),
            ..RequestMatch::default()
        };
        let p = policy(&[Share::ALL, Share::ALL], Sampling::Independent, vec![m]);
        assert!(tally(&p, 10, "/other").iter().all(Vec::is_empty));
        assert_eq!(tally(&p, 3, "/api/x")[1], [0, 1, 2]);
    }
}
