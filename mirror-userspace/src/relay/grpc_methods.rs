//! gRPC calls counted per method, over a bounded set of labels: the first [`MAX_METHODS`]
//! methods a mirror's calls name get a label each; later ones, and calls whose `:path` is
//! not a plain `/Service/Method`, are counted under `other`. A client cannot grow the
//! agent's memory or the metrics' cardinality by inventing method names.

use std::sync::{
    atomic::{AtomicU64, Ordering::Relaxed},
    Mutex, MutexGuard,
};

use crate::observe::Sample;

/// Methods of one mirror counted under their own label.
pub const MAX_METHODS: usize = 32;

/// The label of every call not counted under its method's.
pub const OTHER: &str = "other";

/// How one gRPC call mirrored to v2 ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallEnd {
    /// v2 answered with `grpc-status: 0`.
    Ok,
    /// v2 answered with another `grpc-status`.
    Error,
    /// No `grpc-status` from v2: unanswered, dropped, or an answer without one.
    NoStatus,
}

const ENDS: [(CallEnd, &str); 3] = [
    (CallEnd::Ok, "ok"),
    (CallEnd::Error, "error"),
    (CallEnd::NoStatus, "no_status"),
];

#[derive(Debug)]
struct Method {
    name: Box<str>,
    ends: [u64; ENDS.len()],
}

#[derive(Debug, Default)]
pub struct GrpcMethods {
    tracked: Mutex<Vec<Method>>,
    other: [AtomicU64; ENDS.len()],
}

impl GrpcMethods {
    /// Counts one call of `method` (`None`: not a plain method name).
    pub fn count(&self, method: Option<&str>, end: CallEnd) {
        let slot = end as usize;
        if let Some(name) = method {
            let mut tracked = self.lock();
            let at = tracked.iter().position(|m| &*m.name == name);
            let at = match at {
                Some(at) => Some(at),
                None if tracked.len() < MAX_METHODS => {
                    tracked.push(Method {
                        name: name.into(),
                        ends: [0; ENDS.len()],
                    });
                    Some(tracked.len() - 1)
                }
                None => None,
            };
            if let Some(at) = at {
                tracked[at].ends[slot] += 1;
                return;
            }
        }
        self.other[slot].fetch_add(1, Relaxed);
    }

    /// Calls of `method` (or [`OTHER`]) that ended as `end`.
    pub fn calls(&self, method: &str, end: CallEnd) -> u64 {
        if method == OTHER {
            return self.other[end as usize].load(Relaxed);
        }
        self.lock()
            .iter()
            .find(|m| &*m.name == method)
            .map_or(0, |m| m.ends[end as usize])
    }

    /// `grpc_calls{method, kind}`: each tracked method, then `other` (always there, so the
    /// family is exported before the first call).
    pub fn visit(&self, out: &mut dyn FnMut(Sample)) {
        const HELP: &str = "gRPC calls mirrored, by method (the first 32 a mirror sees; the rest \
                            and malformed paths under `other`) and by kind: ok, error \
                            (another grpc-status), no_status (unanswered, dropped, or none sent).";
        let tracked: Vec<(Box<str>, [u64; ENDS.len()])> = self
            .lock()
            .iter()
            .map(|m| (m.name.clone(), m.ends))
            .collect();
        let other = self.other.each_ref().map(|c| c.load(Relaxed));
        let rows = tracked
            .iter()
            .map(|(name, ends)| (&**name, *ends))
            .chain([(OTHER, other)]);
        for (name, ends) in rows {
            for (i, (_, kind)) in ENDS.iter().enumerate() {
                out(Sample::counter("grpc_calls", HELP, ends[i])
                    .with_label("method", name)
                    .with_label("kind", *kind));
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Method>> {
        // A push or an increment cannot leave the table half-changed.
        self.tracked
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_past_the_cap_and_malformed_paths_go_to_other() {
        let methods = GrpcMethods::default();
        for i in 0..MAX_METHODS + 5 {
            methods.count(Some(&format!("/s.S/M{i}")), CallEnd::Ok);
        }
        methods.count(Some("/s.S/M0"), CallEnd::Error);
        methods.count(None, CallEnd::NoStatus);
        assert_eq!(methods.calls("/s.S/M0", CallEnd::Ok), 1);
        assert_eq!(methods.calls("/s.S/M0", CallEnd::Error), 1);
        assert_eq!(methods.calls(OTHER, CallEnd::Ok), 5);
        assert_eq!(methods.calls(OTHER, CallEnd::NoStatus), 1);
        let mut samples = Vec::new();
        methods.visit(&mut |s| samples.push(s));
        // Each label set once: the cap holds, `other` last.
        assert_eq!(samples.len(), (MAX_METHODS + 1) * ENDS.len());
        let total: u64 = samples.iter().map(|s| s.value).sum();
        assert_eq!(total, MAX_METHODS as u64 + 5 + 2);
        let last = samples.last().map(|s| s.labels.clone()).unwrap_or_default();
        assert_eq!(
            last,
            [
                ("method", OTHER.to_owned()),
                ("kind", "no_status".to_owned())
            ]
        );
    }
}
