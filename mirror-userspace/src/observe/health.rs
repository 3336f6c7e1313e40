//! Liveness and readiness of the agent, and its own gauges (stage `agent`).
//!
//! The capture loop beats a heartbeat on every turn and records how late its timer fired (its
//! lag); the admin endpoint reads them. Live: the loop turned recently. Ready: live, attached,
//! and every interface it attached to still exists under the same index (a pod's veth that
//! disappears takes the hook with it).

use std::{
    ffi::CString,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Mutex,
    },
    time::{Duration, Instant},
};

use super::{Sample, Source};

/// The capture loop turns at least every 250 ms (its expiry timer); this much silence means
/// it is stuck.
pub const STALE_AFTER: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub struct Health {
    started: Instant,
    /// Nanoseconds after `started` of the loop's last turn (0: never).
    last_beat_ns: AtomicU64,
    /// How late the loop's last timer tick ran, in nanoseconds.
    lag_ns: AtomicU64,
    /// Interfaces and the index each had when attached; `None` before attach.
    attached: Mutex<Option<Vec<(String, u32)>>>,
}

/// One interface's state, as `/readyz` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InterfaceState {
    pub name: String,
    /// It exists with the index it had when the program was attached.
    pub attached: bool,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            started: Instant::now(),
            last_beat_ns: AtomicU64::new(0),
            lag_ns: AtomicU64::new(0),
            attached: Mutex::new(None),
        }
    }
}

impl Health {
    /// The capture loop turned.
    pub fn beat(&self) {
        self.last_beat_ns.store(self.nanos_since_start(), Relaxed);
    }

    /// The loop's timer, due at `due`, ran now.
    pub fn timer_ran(&self, due: Instant) {
        let lag = Instant::now().saturating_duration_since(due);
        self.lag_ns
            .store(u64::try_from(lag.as_nanos()).unwrap_or(u64::MAX), Relaxed);
    }

    /// The program is attached to `interfaces` (names); their current indexes are kept.
    pub fn attached(&self, interfaces: &[String]) {
        let indexed = interfaces
            .iter()
            .map(|name| (name.clone(), if_index(name).unwrap_or(0)))
            .collect();
        *self.lock() = Some(indexed);
    }

    /// Live: the loop turned within [`STALE_AFTER`].
    pub fn live(&self) -> bool {
        self.heartbeat_age().is_some_and(|age| age < STALE_AFTER)
    }

    /// Time since the loop last turned, if it ever did.
    pub fn heartbeat_age(&self) -> Option<Duration> {
        match self.last_beat_ns.load(Relaxed) {
            0 => None,
            beat => Some(Duration::from_nanos(
                self.nanos_since_start().saturating_sub(beat),
            )),
        }
    }

    /// Every interface's state, or `None` before attach.
    pub fn interfaces(&self) -> Option<Vec<InterfaceState>> {
        self.lock().as_ref().map(|attached| {
            attached
                .iter()
                .map(|(name, index)| InterfaceState {
                    name: name.clone(),
                    attached: *index != 0 && if_index(name) == Some(*index),
                })
                .collect()
        })
    }

    /// Ready: live, attached, and on every interface still.
    pub fn ready(&self) -> bool {
        self.live()
            && self
                .interfaces()
                .is_some_and(|interfaces| interfaces.iter().all(|i| i.attached))
    }

    fn nanos_since_start(&self) -> u64 {
        // At least 1, so that 0 keeps meaning "never".
        u64::try_from(self.started.elapsed().as_nanos())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Vec<(String, u32)>>> {
        self.attached
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Source for Health {
    fn visit(&self, out: &mut dyn FnMut(Sample)) {
        out(Sample::gauge(
            "ready",
            "1 when attached to every interface and reading the ring, else 0.",
            u64::from(self.ready()),
        ));
        for interface in self.interfaces().unwrap_or_default() {
            out(Sample::gauge(
                "interface_attached",
                "1 while the interface the program was attached to still exists, else 0.",
                u64::from(interface.attached),
            )
            .with_label("interface", interface.name));
        }
        out(Sample::gauge_nanos(
            "loop_lag_seconds",
            "How late the capture loop's last timer tick ran: time it spent busy elsewhere.",
            self.lag_ns.load(Relaxed),
        ));
        out(Sample::gauge_nanos(
            "heartbeat_age_seconds",
            "Seconds since the capture loop last turned.",
            self.heartbeat_age()
                .map_or(0, |age| u64::try_from(age.as_nanos()).unwrap_or(u64::MAX)),
        ));
        if let Some(bytes) = resident_bytes() {
            out(Sample::gauge(
                "resident_memory_bytes",
                "Resident memory of the agent process (buffers, queues, ring pages touched).",
                bytes,
            ));
        }
    }
}

/// The index of interface `name` in this network namespace, if it exists.
fn if_index(name: &str) -> Option<u32> {
    let name = CString::new(name).ok()?;
    // SAFETY: if_nametoindex reads a NUL-terminated string we own for the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}

/// Resident set size from /proc/self/statm (pages), in bytes.
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf with a valid name has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_ready_before_attach_nor_before_the_loop_turns() {
        let health = Health::default();
        assert!(!health.live());
        assert!(!health.ready());
        assert_eq!(health.interfaces(), None);
        health.beat();
        assert!(health.live());
        assert!(!health.ready(), "live but not attached");
        health.attached(&["lo".to_owned()]);
        assert!(health.ready());
    }

    #[test]
    fn an_interface_that_does_not_exist_is_not_attached() {
        let health = Health::default();
        health.beat();
        health.attached(&["lo".to_owned(), "mirror-nope0".to_owned()]);
        let states = health.interfaces().unwrap();
        assert!(states[0].attached);
        assert!(!states[1].attached);
        assert!(!health.ready());
    }

    #[test]
    fn reports_lag_and_memory() {
        let health = Health::default();
        health.timer_ran(Instant::now() - Duration::from_millis(3));
        let mut names = Vec::new();
        health.visit(&mut |sample| {
            if sample.name == "loop_lag_seconds" {
                assert!(sample.value >= 3_000_000, "{}", sample.value);
            }
            names.push(sample.name);
        });
        assert!(names.contains(&"resident_memory_bytes"), "{names:?}");
    }
}
