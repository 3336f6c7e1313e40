//! The connections to v2 of one mirror, as Envoy's pool keeps them: a connection a client
//! connection no longer needs goes idle here and carries the next client connection's
//! requests, so clients that open a connection per request do not cost a TCP connection (and
//! a TIME_WAIT on the node) each. At most `max_connections` are open, idle ones included.
//! Only failures that say v2 is down (refused, timed out, unreachable) count towards taking it
//! for down; local shortages (ports, descriptors, buffers, the resolver) are counted as
//! themselves.

use std::{
    sync::{
        atomic::{AtomicU32, AtomicU64, Ordering::Relaxed},
        Arc, Mutex, MutexGuard,
    },
    time::Duration,
};

use tokio::{
    net::TcpStream,
    sync::{Notify, OwnedSemaphorePermit, Semaphore},
    time::Instant,
};

use super::{
    conn::{self, Conn, Slot},
    resolve::Resolver,
    stats::{ConnectFailure, DropReason, RelayStats},
    RelayConfig,
};

/// Connect failures blaming v2, in a row, after which v2 counts as down.
const DOWN_AFTER_FAILURES: u32 = 5;

#[derive(Debug)]
pub(super) struct Pool {
    config: RelayConfig,
    stats: Arc<RelayStats>,
    resolver: Resolver,
    /// Idle connections, most recently used last.
    idle: Mutex<Vec<Conn>>,
    slots: Arc<Semaphore>,
    /// A connection went idle (for requests waiting on a full cap).
    returned: Notify,
    started: Instant,
    /// Milliseconds since `started` before which no connect is tried.
    down_until_ms: AtomicU64,
    failures_in_a_row: AtomicU32,
}

impl Pool {
    pub(super) fn new(config: RelayConfig, stats: Arc<RelayStats>) -> Pool {
        Pool {
            resolver: Resolver::new(&config.shadow),
            slots: Arc::new(Semaphore::new(config.max_connections)),
            config,
            stats,
            idle: Mutex::new(Vec::new()),
            returned: Notify::new(),
            started: Instant::now(),
            down_until_ms: AtomicU64::new(0),
            failures_in_a_row: AtomicU32::new(0),
        }
    }

    /// A connection for the next request: an idle one if any (unless `fresh`), else a new
    /// one.
    pub(super) async fn acquire(&self, fresh: bool) -> Result<Conn, DropReason> {
        if !fresh {
            if let Some(conn) = self.take_idle() {
                return Ok(conn);
            }
        }
        if self.shadow_down() {
            return Err(DropReason::ShadowDown);
        }
        if fresh && self.slots.available_permits() == 0 {
            // Make room: an idle connection is worth less than a request.
            drop(self.take_idle());
        }
        let permit = match Arc::clone(&self.slots).try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                // Every slot is taken: wait for a connection to go idle or to close.
                let wait = async {
                    let got = loop {
                        tokio::select! {
                            permit = Arc::clone(&self.slots).acquire_owned() => {
                                break Err(permit.map_err(|_| DropReason::Shutdown)?);
                            }
                            () = self.returned.notified(), if !fresh => {
                                if let Some(conn) = self.take_idle() {
                                    break Ok(conn);
                                }
                            }
                        }
                    };
                    Ok::<_, DropReason>(got)
                };
                match tokio::time::timeout(self.config.connect_timeout, wait).await {
                    Ok(Ok(Ok(conn))) => return Ok(conn),
                    Ok(Ok(Err(permit))) => permit,
                    Ok(Err(reason)) => return Err(reason),
                    Err(_) => return Err(DropReason::ConnLimit),
                }
            }
        };
        let (stream, slot) = self.dial(permit).await?;
        Ok(Conn::new(stream, slot))
    }

    /// A new connection of its own, outside the pool (raw TCP mode), within the same cap:
    /// a slot is waited for up to the connect timeout, an idle connection closed to make one.
    pub(super) async fn open_stream(&self) -> Result<(TcpStream, Slot), DropReason> {
        if self.shadow_down() {
            return Err(DropReason::ShadowDown);
        }
        if self.slots.available_permits() == 0 {
            drop(self.take_idle());
        }
        let wait = Arc::clone(&self.slots).acquire_owned();
        let permit = match tokio::time::timeout(self.config.connect_timeout, wait).await {
            Ok(Ok(permit)) => permit,
            Ok(Err(_)) => return Err(DropReason::Shutdown),
            Err(_) => return Err(DropReason::ConnLimit),
        };
        self.dial(permit).await
    }

    /// Resolves the shadow and connects, holding `permit` as the connection's slot.
    async fn dial(&self, permit: OwnedSemaphorePermit) -> Result<(TcpStream, Slot), DropReason> {
        let addrs = self
            .resolver
            .addrs(self.config.connect_timeout, || {
                self.stats.resolve_failures.fetch_add(1, Relaxed);
            })
            .await
            .map_err(|error| {
                tracing::debug!(%error, shadow = %self.config.shadow, "shadow lookup failed");
                DropReason::ResolveFailed
            })?;
        match conn::connect(&addrs, self.config.mark, self.config.connect_timeout).await {
            Ok(stream) => {
                self.stats.connections_opened.fetch_add(1, Relaxed);
                self.failures_in_a_row.store(0, Relaxed);
                Ok((stream, Slot::new(permit, &self.stats)))
            }
            Err(failure) => {
                self.stats.connect_failed(failure);
                Err(self.connect_failed(failure))
            }
        }
    }

    /// Keeps `conn` for later requests if v2 may still take them.
    pub(super) fn release(&self, mut conn: Conn) {
        if !conn.usable() {
            return;
        }
        conn.idle_since = Instant::now();
        self.lock().push(conn);
        self.stats.idle_connections.fetch_add(1, Relaxed);
        self.returned.notify_one();
    }

    /// Closes idle connections v2 closed, or idle for longer than the idle timeout.
    pub(super) fn prune(&self) {
        let timeout = self.config.idle_timeout;
        let mut idle = self.lock();
        let before = idle.len();
        idle.retain_mut(|conn| conn.usable() && conn.idle_since.elapsed() < timeout);
        let closed = before - idle.len();
        self.stats.idle_connections.fetch_sub(closed, Relaxed);
    }

    /// Closes every idle connection (shutdown).
    pub(super) fn close_idle(&self) {
        let closed = std::mem::take(&mut *self.lock());
        self.stats.idle_connections.fetch_sub(closed.len(), Relaxed);
    }

    fn take_idle(&self) -> Option<Conn> {
        let mut idle = self.lock();
        while let Some(mut conn) = idle.pop() {
            self.stats.idle_connections.fetch_sub(1, Relaxed);
            if conn.usable() && conn.idle_since.elapsed() < self.config.idle_timeout {
                return Some(conn);
            }
        }
        None
    }

    /// v2 is taken for down: no connects are tried.
    pub(super) fn shadow_down(&self) -> bool {
        self.now_ms() < self.down_until_ms.load(Relaxed)
    }

    /// Counts a failed connect and says what to drop its request as. One failure under load
    /// (a full SYN backlog) says little; after [`DOWN_AFTER_FAILURES`] in a row that blame v2,
    /// it is spared new connects for `down_backoff`.
    fn connect_failed(&self, failure: ConnectFailure) -> DropReason {
        if !failure.blames_shadow() {
            return DropReason::LocalError;
        }
        if self.failures_in_a_row.fetch_add(1, Relaxed) + 1 >= DOWN_AFTER_FAILURES {
            let backoff = u64::try_from(self.config.down_backoff.as_millis()).unwrap_or(u64::MAX);
            self.down_until_ms
                .store(self.now_ms().saturating_add(backoff), Relaxed);
        }
        DropReason::ShadowDown
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Conn>> {
        // A push or pop cannot leave the list half-changed: recover from a poisoned lock.
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// How often idle connections are checked.
pub(super) const PRUNE_EVERY: Duration = Duration::from_secs(1);
