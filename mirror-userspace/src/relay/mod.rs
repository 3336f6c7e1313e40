//! Replays reassembled requests to the shadow (v2) and throws its replies away.
//!
//! The dispatcher ([`Relay`]) runs on the capture path and never waits: each captured client
//! connection gets its own shadow connection task fed through a bounded queue, and all queued
//! bytes share one global budget. When either is full, or v2 is down, the request is dropped
//! whole and counted; the primary path is never touched, whatever v2 does.

mod conn;
mod stats;

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU32, AtomicU64, Ordering::Relaxed},
        Arc,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use tokio::{sync::mpsc, task::JoinSet};

pub use self::stats::{DropReason, RelayStats};
use crate::observe::access_log::{AccessLog, Entry};
use mirror_cores::{flow::FlowKey, http::ResponseFramer, pipeline::Event};

/// Connect failures in a row after which v2 counts as down.
const DOWN_AFTER_FAILURES: u32 = 5;

/// How the relay reaches v2 and how much it may hold.
#[derive(Clone, Debug)]
pub struct RelayConfig {
    /// `HOST:PORT` of v2: a name (resolved at every connect) or an address.
    pub shadow: String,
    /// SO_MARK on shadow sockets, so the kernel program never captures our own traffic.
    pub mark: u32,
    pub max_connections: usize,
    /// Messages (head, body chunk, end) queued per shadow connection.
    pub queue_depth: usize,
    /// Request bytes queued over all connections and not yet written.
    pub max_inflight_bytes: usize,
    pub connect_timeout: Duration,
    /// How long v2 may take to accept a write or to answer a request.
    pub response_timeout: Duration,
    /// After several failed connects in a row, new connections are not tried for this long.
    pub down_backoff: Duration,
    /// Where each request's outcome is logged, if anywhere.
    pub access_log: Option<Arc<AccessLog>>,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            shadow: String::new(),
            mark: 0,
            max_connections: 4096,
            queue_depth: 1024,
            max_inflight_bytes: 64 << 20,
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(10),
            down_backoff: Duration::from_secs(1),
            access_log: None,
        }
    }
}

/// A piece of a request, queued for one shadow connection.
#[derive(Debug)]
enum Message {
    /// Request line and headers; starts a request.
    Head(Bytes),
    Body(Bytes),
    /// The request is complete.
    End,
}

impl Message {
    fn len(&self) -> usize {
        match self {
            Message::Head(bytes) | Message::Body(bytes) => bytes.len(),
            Message::End => 0,
        }
    }
}

/// State shared by the dispatcher and the connection tasks.
#[derive(Debug)]
struct Shared {
    config: RelayConfig,
    stats: Arc<RelayStats>,
    started: Instant,
    /// Milliseconds since `started` before which no connect is tried.
    down_until_ms: AtomicU64,
    /// Connects that failed since the last one that succeeded.
    failures_in_a_row: AtomicU32,
}

impl Shared {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn shadow_down(&self) -> bool {
        self.now_ms() < self.down_until_ms.load(Relaxed)
    }

    /// A connect succeeded: v2 is up.
    fn connected(&self) {
        self.failures_in_a_row.store(0, Relaxed);
    }

    /// A connect failed. One failure under load (a full SYN backlog, a lost SYN) says little;
    /// after [`DOWN_AFTER_FAILURES`] in a row, v2 is taken for down and spared new connects
    /// for `down_backoff`.
    fn connect_failed(&self) {
        if self.failures_in_a_row.fetch_add(1, Relaxed) + 1 >= DOWN_AFTER_FAILURES {
            self.mark_down();
        }
    }

    fn mark_down(&self) {
        let until = self.now_ms().saturating_add(
            u64::try_from(self.config.down_backoff.as_millis()).unwrap_or(u64::MAX),
        );
        self.down_until_ms.store(until, Relaxed);
    }
}

/// One captured client connection, as the dispatcher sees it.
#[derive(Debug, Default)]
struct ClientConnection {
    /// Queue of its shadow connection, if one is open.
    queue: Option<mpsc::Sender<Message>>,
    /// The current request was dropped: skip its remaining pieces.
    dropping: bool,
    /// A request has been queued whose end has not: closing now would cut it.
    in_request: bool,
}

/// The dispatcher. Lives on the capture task; every method returns at once.
pub struct Relay {
    shared: Arc<Shared>,
    flows: HashMap<FlowKey, ClientConnection>,
    tasks: JoinSet<()>,
}

impl Relay {
    /// Must be created inside a tokio runtime (it spawns connection tasks).
    pub fn new(config: RelayConfig) -> Relay {
        Relay {
            shared: Arc::new(Shared {
                config,
                stats: Arc::new(RelayStats::default()),
                started: Instant::now(),
                down_until_ms: AtomicU64::new(0),
                failures_in_a_row: AtomicU32::new(0),
            }),
            flows: HashMap::new(),
            tasks: JoinSet::new(),
        }
    }

    pub fn stats(&self) -> Arc<RelayStats> {
        Arc::clone(&self.shared.stats)
    }

    /// Acts on one event of the pipeline.
    pub fn handle(&mut self, event: Event) {
        match event {
            Event::RequestHead { flow, head } => self.request_head(flow, head),
            Event::RequestBody { flow, data } => self.request_body(flow, data),
            Event::RequestEnd { flow } => self.request_end(flow),
            Event::RequestAbort { flow, .. } => self.request_abort(flow),
            Event::FlowEnd { flow, .. } => self.flow_end(flow),
        }
    }

    /// A new request on `flow`: its complete head (request line and headers, Host rewritten).
    pub fn request_head(&mut self, flow: FlowKey, head: Bytes) {
        self.reap();
        let entry = self.flows.entry(flow).or_default();
        entry.dropping = false;
        let queue = match &entry.queue {
            Some(queue) if !queue.is_closed() => queue.clone(),
            _ => {
                entry.queue = None;
                let refusal = if self.shared.shadow_down() {
                    Some(DropReason::ShadowDown)
                } else if self.shared.stats.shadow_connections.load(Relaxed)
                    >= self.shared.config.max_connections
                {
                    Some(DropReason::ConnLimit)
                } else {
                    None
                };
                if let Some(reason) = refusal {
                    self.shared.stats.dropped(reason);
                    log_dropped(&self.shared, flow, head, reason);
                    entry.dropping = true;
                    return;
                }
                let (sender, receiver) = mpsc::channel(self.shared.config.queue_depth);
                self.shared.stats.shadow_connections.fetch_add(1, Relaxed);
                self.tasks
                    .spawn(conn::run(flow, receiver, Arc::clone(&self.shared)));
                entry.queue = Some(sender.clone());
                sender
            }
        };
        entry.in_request = true;
        if let Some(reason) = enqueue(&self.shared, entry, &queue, Message::Head(head.clone())) {
            log_dropped(&self.shared, flow, head, reason);
        }
    }

    /// Body bytes of the current request on `flow`, in wire form.
    pub fn request_body(&mut self, flow: FlowKey, data: Bytes) {
        if let Some(entry) = self.flows.get_mut(&flow) {
            if let (false, Some(queue)) = (entry.dropping, entry.queue.clone()) {
                let _ = enqueue(&self.shared, entry, &queue, Message::Body(data));
            }
        }
    }

    /// The current request on `flow` is complete.
    pub fn request_end(&mut self, flow: FlowKey) {
        if let Some(entry) = self.flows.get_mut(&flow) {
            entry.in_request = false;
            match (entry.dropping, entry.queue.clone()) {
                (false, Some(queue)) => {
                    let _ = enqueue(&self.shared, entry, &queue, Message::End);
                }
                _ => entry.dropping = false,
            }
        }
    }

    /// The current request on `flow` cannot be completed (the capture lost some of it).
    /// Its shadow connection is reset so v2 never sees it complete.
    pub fn request_abort(&mut self, flow: FlowKey) {
        if let Some(entry) = self.flows.get_mut(&flow) {
            if !entry.dropping && entry.queue.take().is_some() {
                self.shared.stats.dropped(DropReason::Aborted);
            }
            entry.dropping = false;
            entry.in_request = false;
        }
    }

    /// The client connection ended: its shadow connection sends what is queued, then closes.
    pub fn flow_end(&mut self, flow: FlowKey) {
        self.flows.remove(&flow);
        self.reap();
    }

    /// Ends every flow and waits up to `grace` for queued requests to reach v2.
    pub async fn shutdown(mut self, grace: Duration) {
        for flow in self.flows.values() {
            if flow.in_request && !flow.dropping && flow.queue.is_some() {
                self.shared.stats.dropped(DropReason::Shutdown);
            }
        }
        self.flows.clear();
        let drain = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(grace, drain).await.is_err() {
            tracing::info!(
                connections = self.tasks.len(),
                "grace period over; closing shadow connections"
            );
            self.tasks.shutdown().await;
        }
    }

    /// Frees finished connection tasks.
    fn reap(&mut self) {
        while self.tasks.try_join_next().is_some() {}
    }
}

/// Logs a request dropped before v2 got it (its head is all there is to log).
fn log_dropped(shared: &Shared, flow: FlowKey, head: Bytes, reason: DropReason) {
    if let Some(access_log) = &shared.config.access_log {
        access_log.record(|| Entry {
            client: flow.src,
            head,
            bytes: 0,
            outcome: "dropped",
            status: None,
            latency: None,
            reason: Some(reason.label()),
        });
    }
}

/// Queues `message` without waiting; if the queue or the byte budget is full, the request is
/// dropped (and the reason returned): the queue is closed mid-request, which makes the task
/// reset the connection.
fn enqueue(
    shared: &Shared,
    entry: &mut ClientConnection,
    queue: &mpsc::Sender<Message>,
    message: Message,
) -> Option<DropReason> {
    let len = message.len();
    let budget = shared.config.max_inflight_bytes;
    let reserved = shared
        .stats
        .queued_bytes
        .fetch_update(Relaxed, Relaxed, |used| {
            (used + len <= budget).then_some(used + len)
        })
        .is_ok();
    let reason = if !reserved {
        DropReason::QueueFull
    } else {
        match queue.try_send(message) {
            Ok(()) => return None,
            Err(error) => {
                shared.stats.queued_bytes.fetch_sub(len, Relaxed);
                match error {
                    mpsc::error::TrySendError::Full(_) => DropReason::QueueFull,
                    mpsc::error::TrySendError::Closed(_) => DropReason::ShadowDown,
                }
            }
        }
    };
    shared.stats.dropped(reason);
    entry.dropping = true;
    entry.queue = None;
    Some(reason)
}
