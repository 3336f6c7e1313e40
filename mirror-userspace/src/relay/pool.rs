//! The connections to v2 of one mirror, as Envoy's pool keeps them: a connection a client
//! connection no longer needs goes idle here and carries the next client connection's
//! requests, so clients that open a connection per request do not cost a TCP connection (and
//! a TIME_WAIT on the node) each. At most `max_connections` are open, idle ones included, and
//! at most [`MAX_OPENING`] new ones wait for their first answer at once. The client
//! connections of one source address (a client pod) hold or wait for at most
//! `max_connections_per_source` of them: a pod opening many client connections at once loses
//! its own mirroring beyond its share (`source_connections`), and the other pods keep the rest
//! of the cap and their places in its queues. Idle connections count for no source.
//! Only failures that say v2 is down count towards taking it for down: refused, unreachable,
//! and a connect timeout while v2 showed no sign of life (no connect completed, no answer
//! framed) since that connect began. A timeout while v2 answers elsewhere is a full accept
//! queue (`shadow_busy`); local shortages (ports, descriptors, buffers, the resolver) are
//! counted as themselves.

use std::{
    collections::HashMap,
    net::IpAddr,
    ops::{Deref, DerefMut},
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
    backlog,
    conn::{self, Conn, Slot},
    resolve::Resolver,
    stats::{ConnectFailure, DropReason, RelayStats},
    RelayConfig,
};

/// Connect failures blaming v2, in a row, after which v2 counts as down.
const DOWN_AFTER_FAILURES: u32 = 5;

/// New connections to v2 not yet answered once, at most: a v2 that closes after every
/// response (or is slow to accept) then gets requests as fast as it answers them, and its
/// accept queue never overflows. An overflowing queue drops the handshakes' last ACKs and the
/// requests behind them, whose retransmissions back off for seconds while v2 sits idle:
/// measured, 2,000 concurrent client connections against a backlog of 100 had v2 answer 29
/// in time.
const MAX_OPENING: usize = 64;

#[derive(Debug)]
pub(super) struct Pool {
    config: RelayConfig,
    stats: Arc<RelayStats>,
    resolver: Resolver,
    /// Idle connections, most recently used last.
    idle: Mutex<Vec<Conn>>,
    slots: Arc<Semaphore>,
    /// New connections not yet answered once (see [`MAX_OPENING`]).
    opening: Arc<Semaphore>,
    /// A connection went idle (for requests waiting on a full cap).
    returned: Notify,
    started: Instant,
    /// Milliseconds since `started` before which no connect is tried.
    down_until_ms: AtomicU64,
    failures_in_a_row: AtomicU32,
    /// One more than the milliseconds since `started` when v2 last completed a connect or
    /// answered a request; 0: never.
    alive_ms: AtomicU64,
    /// Connections in use per source address (see [`Lease`]).
    in_use: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Pool {
    pub(super) fn new(config: RelayConfig, stats: Arc<RelayStats>) -> Pool {
        Pool {
            resolver: Resolver::new(&config.shadow),
            slots: Arc::new(Semaphore::new(config.max_connections)),
            opening: Arc::new(Semaphore::new(MAX_OPENING)),
            config,
            stats,
            idle: Mutex::new(Vec::new()),
            returned: Notify::new(),
            started: Instant::now(),
            down_until_ms: AtomicU64::new(0),
            failures_in_a_row: AtomicU32::new(0),
            alive_ms: AtomicU64::new(0),
            in_use: Arc::default(),
        }
    }

    /// A connection for the next request of a client connection from `source`: an idle one
    /// if any (unless `fresh`), else a new one; charged to `source`'s share while in use.
    pub(super) async fn acquire(&self, source: IpAddr, fresh: bool) -> Result<InUse, DropReason> {
        let lease = self.lease(source)?;
        self.connection(fresh).await.map(|conn| InUse {
            conn,
            _lease: lease,
        })
    }

    /// Counts one more connection in use by `source`, if its share has room. Taken before the
    /// wait for a connection, so that a source's concurrent acquires cannot all pass the
    /// check, and a source's waiters are bounded too: a pod cannot fill the queue for new
    /// connections ahead of the other pods with more than its share.
    fn lease(&self, source: IpAddr) -> Result<Lease, DropReason> {
        let mut in_use = lock(&self.in_use);
        let held = in_use.entry(source).or_insert(0);
        if *held >= self.config.max_connections_per_source {
            if *held == 0 {
                in_use.remove(&source);
            }
            return Err(DropReason::SourceConnections);
        }
        *held += 1;
        backlog::lease();
        Ok(Lease {
            in_use: Arc::clone(&self.in_use),
            source,
        })
    }

    async fn connection(&self, fresh: bool) -> Result<Conn, DropReason> {
        if !fresh {
            if let Some(conn) = self.take_idle() {
                return Ok(conn);
            }
        }
        if self.shadow_down() {
            return Err(DropReason::ShadowDown);
        }
        let opening = match self.opening(fresh).await? {
            Opening::Permit(permit) => permit,
            Opening::Idle(conn) => return Ok(conn),
        };
        if self.shadow_down() {
            // v2 was taken for down during the wait.
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
        let mut conn = Conn::new(stream, slot);
        conn.opening(opening);
        Ok(conn)
    }

    /// A new connection of its own, outside the pool (raw TCP mode), within the same caps:
    /// a slot is waited for up to the connect timeout, an idle connection closed to make one;
    /// it counts in `source`'s share for as long as the returned [`StreamSlot`] lives.
    pub(super) async fn open_stream(
        &self,
        source: IpAddr,
    ) -> Result<(TcpStream, StreamSlot), DropReason> {
        let lease = self.lease(source)?;
        let (stream, slot) = self.open_unpooled().await?;
        Ok((
            stream,
            StreamSlot {
                _slot: slot,
                _lease: lease,
            },
        ))
    }

    async fn open_unpooled(&self) -> Result<(TcpStream, Slot), DropReason> {
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
        let began_ms = self.now_ms();
        match conn::connect(&addrs, self.config.mark, self.config.connect_timeout).await {
            Ok(stream) => {
                self.stats.connections_opened.fetch_add(1, Relaxed);
                self.failures_in_a_row.store(0, Relaxed);
                self.alive();
                Ok((stream, Slot::new(permit, &self.stats)))
            }
            Err(failure) => {
                self.stats.connect_failed(failure);
                Err(self.connect_failed(failure, began_ms))
            }
        }
    }

    /// Waits (up to the response timeout: v2 is busy, not down) until fewer than
    /// [`MAX_OPENING`] new connections wait for their first answer, or (unless `fresh`) a
    /// connection goes idle.
    async fn opening(&self, fresh: bool) -> Result<Opening, DropReason> {
        let wait = async {
            // Made once: a waiter keeps its place in the semaphore's queue while idle
            // connections come and go.
            let permit = Arc::clone(&self.opening).acquire_owned();
            tokio::pin!(permit);
            loop {
                tokio::select! {
                    permit = &mut permit => {
                        return permit.map(Opening::Permit).map_err(|_| DropReason::Shutdown);
                    }
                    () = self.returned.notified(), if !fresh => {
                        if let Some(conn) = self.take_idle() {
                            return Ok(Opening::Idle(conn));
                        }
                    }
                }
            }
        };
        tokio::time::timeout(self.config.response_timeout, wait)
            .await
            .unwrap_or(Err(DropReason::ShadowBusy))
    }

    /// Keeps `conn` for later requests if v2 may still take them; it no longer counts in
    /// its source's share either way.
    pub(super) fn release(&self, in_use: InUse) {
        let InUse { mut conn, .. } = in_use;
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

    /// v2 completed a connect or answered a request: it is up, whatever its accept queue does.
    pub(super) fn alive(&self) {
        self.alive_ms
            .fetch_max(self.now_ms().saturating_add(1), Relaxed);
    }

    /// Counts a failed connect begun at `began_ms` and says what to drop its request as. A
    /// timeout while v2 showed life elsewhere is a full accept queue and blames nothing;
    /// after [`DOWN_AFTER_FAILURES`] in a row that blame v2, it is spared new connects for
    /// `down_backoff`.
    fn connect_failed(&self, failure: ConnectFailure, began_ms: u64) -> DropReason {
        if !failure.blames_shadow() {
            return DropReason::LocalError;
        }
        if failure == ConnectFailure::TimedOut && self.alive_ms.load(Relaxed) > began_ms {
            return DropReason::ShadowBusy;
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
        lock(&self.idle)
    }

    #[cfg(test)]
    pub(super) fn in_use_by(&self, source: IpAddr) -> usize {
        lock(&self.in_use).get(&source).copied().unwrap_or(0)
    }

    #[cfg(test)]
    pub(super) fn sources_in_use(&self) -> usize {
        lock(&self.in_use).len()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Each update is one push, pop, insert or remove: recover from a poisoned lock.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One connection in `source`'s share: given back when dropped. A source using none has no
/// entry, so spoofed or short-lived sources leave nothing behind.
#[derive(Debug)]
struct Lease {
    in_use: Arc<Mutex<HashMap<IpAddr, usize>>>,
    source: IpAddr,
}

impl Drop for Lease {
    fn drop(&mut self) {
        backlog::release();
        let mut in_use = lock(&self.in_use);
        if let Some(held) = in_use.get_mut(&self.source) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                in_use.remove(&self.source);
            }
        }
    }
}

/// A pooled connection in use by a client connection, counted in its source's share until it
/// goes back to the pool ([`Pool::release`]) or closes.
#[derive(Debug)]
pub(super) struct InUse {
    conn: Conn,
    _lease: Lease,
}

impl InUse {
    /// Closes the connection with RST (see [`Conn::reset`]).
    pub(super) fn reset(self) {
        self.conn.reset();
    }
}

impl Deref for InUse {
    type Target = Conn;

    fn deref(&self) -> &Conn {
        &self.conn
    }
}

impl DerefMut for InUse {
    fn deref_mut(&mut self) -> &mut Conn {
        &mut self.conn
    }
}

/// A raw connection's slot in the cap and in its source's share, held while it is open.
#[derive(Debug)]
pub(super) struct StreamSlot {
    _slot: Slot,
    _lease: Lease,
}

/// What a request waiting to open a connection got.
enum Opening {
    Permit(OwnedSemaphorePermit),
    Idle(Conn),
}

/// How often idle connections are checked.
pub(super) const PRUNE_EVERY: Duration = Duration::from_secs(1);
