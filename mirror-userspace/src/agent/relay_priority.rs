//! The relay's threads yield the CPU to the node's workloads while the relay keeps up, and
//! compete for it again before the relay would fall far enough behind to drop requests.
//!
//! Why: on a busy node, a relay at the agent's niceness takes the CPU from v1 in bursts (many
//! mirrored requests written and answers read at once): `cargo xtask bench --latency-rate
//! 40000` on 2 loaded cores measured the primary's p99 at 82 times the ideal mirror's, and
//! at 1.5 times with the relay's threads at nice 10. But a relay that always yields falls
//! behind whenever the node is busy with anything, not only the primary, and then drops (the
//! relay test at 10,000 connections a second lost requests at nice 10 beside two busy loops,
//! none at nice 0). So the niceness follows the relay's backlog
//! ([`held_bytes`](crate::relay::held_bytes) held for v2, and
//! [`leased_connections`](crate::relay::leased_connections): client connections holding or
//! waiting for a connection to v2, what grows with a connection per request): from a
//! sixteenth of the in-flight budget (4 MiB of the default 64: some 16,000 small requests,
//! 0.4 s of lag at 40,000 a second) or of the shadow connections (256 of 4,096) on, the
//! threads compete at the agent's niceness, and they yield again once both are under a
//! sixty-fourth. Between the marks, the level stays (no flapping on a backlog near one).
//!
//! Going back to a lower niceness needs CAP_SYS_NICE (or an RLIMIT_NICE that allows it). The
//! agent checks that at start on a thread of its own; without it the relay never yields,
//! since it could not stop yielding when it falls behind.

use std::sync::{
    atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    Arc, Mutex, MutexGuard,
};

use crate::observe::{Sample, Source};

/// How hard the relay's threads ask for the CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// At `--relay-nice`: the node's workloads go first.
    Yield,
    /// At the agent's own niceness: the relay is behind and catches up.
    Compete,
}

/// What the relay holds: bytes for v2, and client connections on or waiting for a
/// connection to v2.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backlog {
    pub bytes: usize,
    pub connections: usize,
}

impl Backlog {
    /// The relay's backlog now, over every relay of the process.
    pub fn now() -> Backlog {
        Backlog {
            bytes: crate::relay::held_bytes(),
            connections: crate::relay::leased_connections(),
        }
    }

    fn reaches(self, mark: Backlog) -> bool {
        self.bytes >= mark.bytes || self.connections >= mark.connections
    }
}

/// Which level a backlog calls for, with hysteresis (sans-IO: a backlog in, a level out).
#[derive(Debug)]
pub struct Governor {
    compete_from: Backlog,
    yield_below: Backlog,
    level: Level,
}

impl Governor {
    /// For the relay's limits (what it drops beyond): its in-flight budget and shadow
    /// connections.
    pub fn new(limits: Backlog) -> Governor {
        Governor {
            compete_from: Backlog {
                bytes: (limits.bytes / 16).max(1),
                connections: (limits.connections / 16).max(1),
            },
            yield_below: Backlog {
                bytes: (limits.bytes / 64).max(1),
                connections: (limits.connections / 64).max(1),
            },
            level: Level::Yield,
        }
    }

    /// The level for `backlog`, if it is not the current one.
    pub fn observe(&mut self, backlog: Backlog) -> Option<Level> {
        let next = match self.level {
            Level::Yield if backlog.reaches(self.compete_from) => Level::Compete,
            Level::Compete if !backlog.reaches(self.yield_below) => Level::Yield,
            _ => return None,
        };
        self.level = next;
        Some(next)
    }
}

/// The relay runtime's threads and the niceness they run at.
#[derive(Debug)]
pub struct RelayThreads {
    yield_nice: i32,
    compete_nice: i32,
    /// Thread ids of the live relay threads (workers, and blocking threads while they live).
    tids: Mutex<Vec<libc::pid_t>>,
    competing: AtomicBool,
    /// Times the threads went back to the agent's niceness because the relay fell behind.
    raised: AtomicU64,
    /// setpriority(2) calls that failed (a thread that had just exited, say).
    failures: AtomicU64,
}

impl RelayThreads {
    /// Threads that yield at `yield_nice` and compete at `compete_nice` (the agent's), if the
    /// agent may go back from the one to the other; otherwise `None`, logged: the relay then
    /// runs at the agent's niceness.
    pub fn new(yield_nice: i32, compete_nice: i32) -> Option<Arc<RelayThreads>> {
        if let Err(error) = can_lower_niceness(yield_nice, compete_nice) {
            tracing::warn!(
                %error,
                yield_nice,
                "the relay cannot go back from --relay-nice to the agent's niceness (it needs \
                 CAP_SYS_NICE), so it never yields: it runs at the agent's niceness"
            );
            return None;
        }
        Some(Arc::new(RelayThreads {
            yield_nice,
            compete_nice,
            tids: Mutex::default(),
            competing: AtomicBool::new(false),
            raised: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        }))
    }

    /// Called on each relay thread as it starts: it joins the others at their level.
    pub fn thread_started(&self) {
        let tid = gettid();
        let mut tids = self.lock();
        tids.push(tid);
        let nice = self.nice_of(self.level());
        if set_nice_of(tid, nice).is_err() {
            self.failures.fetch_add(1, Relaxed);
        }
    }

    /// Called on each relay thread as it stops.
    pub fn thread_stopped(&self) {
        let tid = gettid();
        self.lock().retain(|&t| t != tid);
    }

    /// Puts every relay thread at `level`.
    pub fn set(&self, level: Level) {
        let tids = self.lock();
        self.competing.store(level == Level::Compete, Relaxed);
        if level == Level::Compete {
            self.raised.fetch_add(1, Relaxed);
        }
        let nice = self.nice_of(level);
        for &tid in tids.iter() {
            if set_nice_of(tid, nice).is_err() {
                self.failures.fetch_add(1, Relaxed);
            }
        }
        tracing::debug!(?level, nice, threads = tids.len(), "relay priority");
    }

    fn level(&self) -> Level {
        if self.competing.load(Relaxed) {
            Level::Compete
        } else {
            Level::Yield
        }
    }

    fn nice_of(&self, level: Level) -> i32 {
        match level {
            Level::Yield => self.yield_nice,
            Level::Compete => self.compete_nice,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<libc::pid_t>> {
        // A push, a retain or a read: recover from a poisoned lock.
        self.tids
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Source for RelayThreads {
    fn visit(&self, out: &mut dyn FnMut(Sample)) {
        out(Sample::gauge(
            "competing",
            "1 while the relay's threads run at the agent's niceness because the relay fell \
             behind (a sixteenth of its in-flight bytes or shadow connections held), 0 while \
             they yield at --relay-nice.",
            u64::from(self.competing.load(Relaxed)),
        ));
        out(Sample::counter(
            "raised",
            "Times the relay's threads went back to the agent's niceness to catch up.",
            self.raised.load(Relaxed),
        ));
        out(Sample::counter(
            "set_failures",
            "Niceness changes of a relay thread that failed.",
            self.failures.load(Relaxed),
        ));
    }
}

/// Whether a thread at `from` may go back to `to` (lower): tried on a thread of its own, which
/// then ends, so no thread of the agent keeps a niceness it cannot leave.
fn can_lower_niceness(from: i32, to: i32) -> std::io::Result<()> {
    std::thread::spawn(move || {
        set_nice_of(0, from)?;
        set_nice_of(0, to)
    })
    .join()
    .unwrap_or_else(|_| Err(std::io::Error::other("the niceness probe panicked")))
}

fn gettid() -> libc::pid_t {
    // SAFETY: gettid(2) has no arguments and cannot fail.
    unsafe { libc::gettid() }
}

/// setpriority(2) on one thread (`tid` 0: the calling one).
fn set_nice_of(tid: libc::pid_t, nice: i32) -> std::io::Result<()> {
    let who = libc::id_t::try_from(tid).map_err(std::io::Error::other)?;
    // SAFETY: setpriority(2) with plain integers; an exited thread's id gives ESRCH.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, who, nice) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(bytes: usize) -> Backlog {
        Backlog {
            bytes,
            connections: 0,
        }
    }

    fn connections(connections: usize) -> Backlog {
        Backlog {
            bytes: 0,
            connections,
        }
    }

    const LIMITS: Backlog = Backlog {
        bytes: 64 << 20,
        connections: 4096,
    };

    #[test]
    fn the_relay_competes_from_a_sixteenth_of_the_budget_and_yields_under_a_sixty_fourth() {
        let mut governor = Governor::new(LIMITS);
        assert_eq!(governor.observe(bytes(0)), None, "it starts yielding");
        assert_eq!(governor.observe(bytes((4 << 20) - 1)), None);
        assert_eq!(governor.observe(bytes(4 << 20)), Some(Level::Compete));
        assert_eq!(governor.observe(bytes(64 << 20)), None);
        // Between the marks the level stays, whichever way the backlog moves.
        assert_eq!(governor.observe(bytes(2 << 20)), None);
        assert_eq!(governor.observe(bytes(1 << 20)), None);
        assert_eq!(governor.observe(bytes((1 << 20) - 1)), Some(Level::Yield));
        assert_eq!(governor.observe(bytes(2 << 20)), None);
        assert_eq!(governor.observe(bytes(5 << 20)), Some(Level::Compete));
    }

    #[test]
    fn connections_waiting_for_v2_count_like_bytes_and_both_must_fall_to_yield() {
        let mut governor = Governor::new(LIMITS);
        assert_eq!(governor.observe(connections(255)), None);
        assert_eq!(governor.observe(connections(256)), Some(Level::Compete));
        assert_eq!(governor.observe(connections(63)), Some(Level::Yield));
        assert_eq!(
            governor.observe(Backlog {
                bytes: 4 << 20,
                connections: 0
            }),
            Some(Level::Compete)
        );
        // Few connections, but the bytes still above their low mark: it keeps competing.
        assert_eq!(
            governor.observe(Backlog {
                bytes: 1 << 20,
                connections: 10
            }),
            None
        );
        assert_eq!(governor.observe(connections(63)), Some(Level::Yield));
    }

    #[test]
    fn tiny_limits_still_have_two_marks() {
        let mut governor = Governor::new(Backlog {
            bytes: 1,
            connections: 1,
        });
        assert_eq!(governor.observe(bytes(1)), Some(Level::Compete));
        assert_eq!(governor.observe(bytes(0)), Some(Level::Yield));
    }

    #[test]
    fn threads_follow_the_level_and_leave_the_list_when_they_stop() {
        // Root (CAP_SYS_NICE) may go back and forth; without it the probe refuses and the
        // agent never yields.
        let Some(threads) = RelayThreads::new(7, 0) else {
            assert!(can_lower_niceness(7, 0).is_err());
            return;
        };
        let nice_of_self = || {
            // SAFETY: getpriority(2) on the calling thread.
            unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }
        };
        let (to_worker, worker_gets) = std::sync::mpsc::channel::<Level>();
        let (to_test, test_gets) = std::sync::mpsc::channel::<i32>();
        let worker = {
            let threads = Arc::clone(&threads);
            std::thread::spawn(move || {
                threads.thread_started();
                to_test.send(nice_of_self()).unwrap();
                for _ in worker_gets {
                    to_test.send(nice_of_self()).unwrap();
                }
                threads.thread_stopped();
            })
        };
        assert_eq!(test_gets.recv().unwrap(), 7, "a new thread yields");
        threads.set(Level::Compete);
        to_worker.send(Level::Compete).unwrap();
        assert_eq!(test_gets.recv().unwrap(), 0);
        threads.set(Level::Yield);
        to_worker.send(Level::Yield).unwrap();
        assert_eq!(test_gets.recv().unwrap(), 7);
        drop(to_worker);
        worker.join().unwrap();
        assert!(threads.lock().is_empty());
        let mut samples = Vec::new();
        threads.visit(&mut |s| samples.push((s.name, s.value)));
        assert_eq!(
            samples,
            [("competing", 0), ("raised", 1), ("set_failures", 0)]
        );
    }
}
