//! Replays reassembled requests to the shadow (v2) and throws its replies away, counting
//! exactly one outcome for every request handed to it: answered (by status class),
//! unanswered (by cause) or dropped (by reason).
//!
//! The dispatcher ([`Relay`]) runs on the capture path and never waits: each captured client
//! connection gets a task fed through a bounded queue, and all queued bytes share one global
//! budget; when either is full the request is dropped whole and counted. The tasks run on the
//! runtime the relay was created in (the agent gives the relay a runtime of its own, so the
//! capture never waits behind it) and take connections to v2 from a pool (`pool`), writing
//! the requests of a client connection in order, back to back when it has several (`flow`).

mod backlog;
mod conn;
mod flow;
mod grpc_methods;
mod h2c;
mod limits;
mod pool;
mod resolve;
mod stats;
mod stream;
mod ticket;

use std::{collections::HashMap, sync::Arc, time::Duration};

use bytes::Bytes;
use tokio::{
    runtime::Handle,
    sync::{mpsc, oneshot},
    task::{JoinHandle, JoinSet},
};

pub use self::{
    backlog::{held_bytes, leased_connections},
    h2c::H2cMirror,
    limits::{raise_fd_limit, FdLimitError},
    resolve::{Shadow, ShadowError},
    stats::{ConnectFailure, DropReason, Outcome, RelayStats, Unanswered},
};
use self::{
    flow::{Cancel, Piece},
    pool::Pool,
    ticket::{Budget, Ticket},
};
use crate::observe::access_log::AccessLog;
use mirror_cores::{flow::FlowKey, http::ResponseFramer, pipeline::Event};

/// How the relay reaches v2 and how much it may hold.
#[derive(Clone, Debug)]
pub struct RelayConfig {
    /// `HOST:PORT` of v2 (IPv6 in brackets): a name (looked up at most every few seconds) or
    /// an address.
    pub shadow: String,
    /// SO_MARK on shadow sockets, so the kernel program never captures our own traffic.
    pub mark: u32,
    /// Connections to v2 open at once, idle ones included.
    pub max_connections: usize,
    /// Of those, how many the client connections of one source address (a client pod) may
    /// have in use at once; beyond, its requests are dropped as `source_connections`.
    pub max_connections_per_source: usize,
    /// Messages (head, body chunk, end) queued per client connection.
    pub queue_depth: usize,
    /// Request bytes held over all connections (queued, or sent and not yet answered).
    pub max_inflight_bytes: usize,
    /// Of those, one source address's (a client pod's) share: more only while the budget can
    /// lend it (see `ticket::Budget`); beyond, its requests are dropped as `source_budget`.
    pub max_inflight_bytes_per_source: usize,
    pub connect_timeout: Duration,
    /// How long v2 may go without accepting a byte of a request being written, and how long
    /// it may take to answer one.
    pub response_timeout: Duration,
    /// After several failed connects in a row, new connections are not tried for this long.
    pub down_backoff: Duration,
    /// Idle connections to v2 are closed after this long.
    pub idle_timeout: Duration,
    /// Where each request's outcome is logged, if anywhere.
    pub access_log: Option<Arc<AccessLog>>,
    /// Raw connections carry h2c (`protocol: http2`, or an HTTP/1.1 connection v1 switched
    /// after `Upgrade: h2c`): replayed stream by stream on an HTTP/2 connection to v2, each
    /// stream decided and rewritten by this mirror's policy.
    pub h2c: Option<H2cMirror>,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            shadow: String::new(),
            mark: 0,
            max_connections: 4096,
            max_connections_per_source: 2048,
            queue_depth: 1024,
            max_inflight_bytes: 64 << 20,
            max_inflight_bytes_per_source: 16 << 20,
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(10),
            down_backoff: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(30),
            access_log: None,
            h2c: None,
        }
    }
}

/// State shared by the dispatcher and the tasks.
#[derive(Debug)]
struct Shared {
    config: RelayConfig,
    stats: Arc<RelayStats>,
    budget: Arc<Budget>,
    pool: Pool,
    /// Requests written back to back on a connection (see `flow`), as v2's closes taught.
    depth: flow::Depth,
}

/// One captured client connection, as the dispatcher sees it.
#[derive(Debug, Default)]
struct ClientConnection {
    /// Queue of its task, while it has one.
    queue: Option<mpsc::Sender<Piece>>,
    /// Why its task should drop the open request if the queue closes under it.
    cancel: Arc<Cancel>,
    /// Resolves when its latest task has finished (the next task waits for it).
    task_done: Option<oneshot::Receiver<()>>,
    /// A request's head was handed over and its end not yet.
    in_request: bool,
    /// That request was dropped: skip its remaining pieces.
    dropping: bool,
}

/// The dispatcher. Lives on the capture task; every method but `shutdown` returns at once.
pub struct Relay {
    shared: Arc<Shared>,
    runtime: Handle,
    flows: HashMap<FlowKey, ClientConnection>,
    /// Raw TCP mode's connections.
    streams: stream::Streams,
    tasks: JoinSet<()>,
    pruner: JoinHandle<()>,
}

impl Relay {
    /// Must be created inside a tokio runtime: the relay's tasks run on that runtime.
    pub fn new(config: RelayConfig) -> Relay {
        let stats = Arc::new(RelayStats::default());
        let shared = Arc::new(Shared {
            budget: Budget::new(
                config.max_inflight_bytes,
                config.max_inflight_bytes_per_source,
                Arc::clone(&stats),
            ),
            pool: Pool::new(config.clone(), Arc::clone(&stats)),
            depth: flow::Depth::default(),
            config,
            stats,
        });
        let runtime = Handle::current();
        let pruner = runtime.spawn(prune(Arc::clone(&shared)));
        Relay {
            shared,
            runtime,
            flows: HashMap::new(),
            streams: stream::Streams::default(),
            tasks: JoinSet::new(),
            pruner,
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
            Event::FlowEnd { flow, reason } => {
                self.streams.end(flow, reason);
                self.flow_end(flow);
            }
            Event::StreamData { flow, data } => {
                self.reap();
                let Relay {
                    shared,
                    runtime,
                    streams,
                    tasks,
                    ..
                } = self;
                streams.data(flow, data, shared, tasks, runtime);
            }
        }
    }

    /// A new request on `flow`: its complete head (request line and headers, Host rewritten).
    pub fn request_head(&mut self, flow: FlowKey, head: Bytes) {
        self.reap();
        let ticket = Ticket::issue(
            &self.shared.stats,
            self.shared.config.access_log.as_ref(),
            flow.src,
            &head,
        );
        let entry = self.flows.entry(flow).or_default();
        if entry.in_request && !entry.dropping {
            // The previous request never ended: it cannot be completed now.
            cancel(entry, DropReason::Aborted);
        }
        entry.in_request = true;
        entry.dropping = false;
        // While v2 is taken for down, drop here: waking the task would cost more than this.
        let chunk = if self.shared.pool.shadow_down() {
            Err(DropReason::ShadowDown)
        } else {
            self.shared.budget.reserve(flow.src.ip(), head)
        };
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(reason) => {
                ticket.end(Outcome::Dropped(reason));
                entry.dropping = true;
                return;
            }
        };
        let queue = queue_of(
            flow.src.ip(),
            entry,
            &self.shared,
            &mut self.tasks,
            &self.runtime,
        );
        if let Err(error) = queue.try_send(Piece::Head { chunk, ticket }) {
            let (reason, piece) = match error {
                mpsc::error::TrySendError::Full(piece) => (DropReason::QueueFull, piece),
                mpsc::error::TrySendError::Closed(piece) => (DropReason::Shutdown, piece),
            };
            if let Piece::Head { ticket, .. } = piece {
                ticket.end(Outcome::Dropped(reason));
            }
            entry.dropping = true;
        }
    }

    /// Body bytes of the current request on `flow`, in wire form.
    pub fn request_body(&mut self, flow: FlowKey, data: Bytes) {
        let Some(entry) = self.flows.get_mut(&flow) else {
            return;
        };
        if !entry.in_request || entry.dropping {
            return;
        }
        let sent = match (
            self.shared.budget.reserve(flow.src.ip(), data),
            &entry.queue,
        ) {
            (Ok(chunk), Some(queue)) => queue
                .try_send(Piece::Body(chunk))
                .map_err(|_| DropReason::QueueFull),
            (Ok(_), None) => Err(DropReason::QueueFull),
            (Err(reason), _) => Err(reason),
        };
        if let Err(reason) = sent {
            cancel(entry, reason);
        }
    }

    /// The current request on `flow` is complete.
    pub fn request_end(&mut self, flow: FlowKey) {
        let Some(entry) = self.flows.get_mut(&flow) else {
            return;
        };
        if !entry.in_request {
            return;
        }
        entry.in_request = false;
        if entry.dropping {
            entry.dropping = false;
            return;
        }
        let sent = entry
            .queue
            .as_ref()
            .is_some_and(|queue| queue.try_send(Piece::End).is_ok());
        if !sent {
            cancel(entry, DropReason::QueueFull);
            entry.dropping = false;
        }
    }

    /// The current request on `flow` cannot be completed (the capture lost some of it): its
    /// task drops it and resets the connection, so v2 never sees it complete.
    pub fn request_abort(&mut self, flow: FlowKey) {
        if let Some(entry) = self.flows.get_mut(&flow) {
            if entry.in_request && !entry.dropping {
                cancel(entry, DropReason::Aborted);
            }
            entry.in_request = false;
            entry.dropping = false;
        }
    }

    /// The client connection ended: its task finishes what is queued, then gives its
    /// connection back to the pool.
    pub fn flow_end(&mut self, flow: FlowKey) {
        if let Some(entry) = self.flows.remove(&flow) {
            if entry.in_request && !entry.dropping {
                entry.cancel.set(DropReason::Aborted);
            }
        }
        self.reap();
    }

    /// Ends every flow and waits up to `grace` for queued requests to be answered; whatever
    /// has no outcome then is counted as `dropped_shutdown`.
    pub async fn shutdown(mut self, grace: Duration) {
        for entry in self.flows.values() {
            if entry.in_request && !entry.dropping {
                entry.cancel.set(DropReason::Shutdown);
            }
        }
        self.flows.clear();
        self.streams.shutdown();
        let drain = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(grace, drain).await.is_err() {
            tracing::info!(
                clients = self.tasks.len(),
                "grace period over; closing shadow connections"
            );
            self.tasks.shutdown().await;
        }
        self.shared.pool.close_idle();
    }

    /// Frees finished tasks.
    fn reap(&mut self) {
        while self.tasks.try_join_next().is_some() {}
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.pruner.abort();
    }
}

/// The queue of `entry`'s task (a client connection from `source`), starting a task if it has
/// none (or its last one was cancelled).
fn queue_of(
    source: std::net::IpAddr,
    entry: &mut ClientConnection,
    shared: &Arc<Shared>,
    tasks: &mut JoinSet<()>,
    runtime: &Handle,
) -> mpsc::Sender<Piece> {
    if let Some(queue) = &entry.queue {
        return queue.clone();
    }
    let (sender, receiver) = mpsc::channel(shared.config.queue_depth.max(1));
    let (done, task_done) = oneshot::channel();
    let after = entry.task_done.replace(task_done);
    entry.cancel = Arc::new(Cancel::default());
    tasks.spawn_on(
        flow::run(
            source,
            receiver,
            Arc::clone(&entry.cancel),
            after,
            Arc::clone(shared),
            done,
        ),
        runtime,
    );
    entry.queue = Some(sender.clone());
    sender
}

/// Gives up on the open request of `entry`: its task finds the queue closed mid-request and
/// counts it under `reason`. Its next request goes to a new task, which waits for this one.
fn cancel(entry: &mut ClientConnection, reason: DropReason) {
    entry.cancel.set(reason);
    entry.queue = None;
    entry.dropping = true;
}

async fn prune(shared: Arc<Shared>) {
    let mut every = tokio::time::interval(pool::PRUNE_EVERY);
    loop {
        every.tick().await;
        shared.pool.prune();
    }
}

#[cfg(test)]
mod tests;
