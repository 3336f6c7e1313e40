//! Keeps the user informed while a slow step runs: a note every few seconds saying it is still
//! going, so a minute-long first virtualenv does not look like a hang.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::narrate::say;

/// How often a running step reports.
const TICK: Duration = Duration::from_secs(5);

/// Runs `work`, printing `    ... <what>: <n> s` every [`TICK`] until it returns, then how long
/// it took.
pub fn run<T>(what: &str, work: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let what_owned = what.to_owned();
    let ticker = std::thread::spawn(move || {
        while let Err(mpsc::RecvTimeoutError::Timeout) = done_rx.recv_timeout(TICK) {
            say(format!(
                "    ... {what_owned}: {} s",
                started.elapsed().as_secs()
            ));
        }
    });
    let result = work();
    drop(done_tx);
    let _ = ticker.join();
    say(format!(
        "    {what}: done in {:.1} s",
        started.elapsed().as_secs_f64()
    ));
    result
}
