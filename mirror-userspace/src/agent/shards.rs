//! The capture path over several threads: one reader hands each record to the pipeline
//! thread that owns its client's address, over a bounded queue per thread.
//!
//! Sharded by the client's IP address (not by flow 4-tuple): every flow of one source lives
//! in one pipeline, so the per-source caps (flows and buffered bytes per pod) hold exactly as
//! they do with one thread, and a source cannot spread its flows to take more than its share;
//! the global caps are divided by the number of threads. A flow never moves: its client's
//! address picks its thread. Records travel in batches (fewer queue operations and wake-ups);
//! when a thread's queue is full the batch is dropped and its records counted, so the reader
//! never waits behind a slow pipeline. Each thread has its own pipeline, outlet and
//! counters; the registry sees their sums ([`Summed`]).
//!
//! A change of settings (a config reload: every thread's policy dispatcher and stream
//! targets) reaches every thread at the same point of its record stream as it would reach a
//! single pipeline: after the records read before it, before those read after it
//! ([`Shards::update`]).

use std::{
    collections::VecDeque,
    hash::{BuildHasher, RandomState},
    net::IpAddr,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError},
        Arc, Mutex, MutexGuard,
    },
    thread::JoinHandle,
    time::Duration,
};

use mirror_cores::pipeline::{Event, Pipeline, PipelineConfig};

use super::{intake::Intake, pipeline_cells::PipelineCells};
use crate::{
    capture::{clock, packet, record},
    observe::{registry::HistogramSample, Sample, Source},
    relay::Relay,
};

/// A batch is handed on once it holds this many bytes (or at the end of a ring drain).
const BATCH_BYTES: usize = 64 << 10;
/// How often each pipeline thread ends idle flows and gives up on stale holes.
const EXPIRE_EVERY: Duration = Duration::from_millis(250);
/// Updates waiting for one thread (it applies them at its next batch, so more wait only
/// while it is stuck); past this, the newest replaces the newest waiting one.
const MAX_PENDING_UPDATES: usize = 8;

/// A change of one thread's settings, run on that thread between two records. Each is whole
/// (it sets, it does not add), so a later one may replace one not yet run.
pub type Update<S> = Arc<dyn Fn(&mut Pipeline, &mut S) + Send + Sync>;

/// The updates waiting for one thread, each with the number of batches sent to it before.
struct PendingUpdates<S>(Mutex<VecDeque<(u64, Update<S>)>>);

impl<S> PendingUpdates<S> {
    fn lock(&self) -> MutexGuard<'_, VecDeque<(u64, Update<S>)>> {
        // A push or pop cannot leave the queue half-changed.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues `update` to run once `after` batches were handled.
    fn push(&self, after: u64, update: Update<S>) {
        let mut queue = self.lock();
        if queue.len() >= MAX_PENDING_UPDATES {
            queue.pop_back();
        }
        queue.push_back((after, update));
    }

    /// Runs, in order, every update due once `handled` batches were.
    fn run_due(&self, handled: u64, pipeline: &mut Pipeline, sink: &mut S) {
        loop {
            let due = {
                let mut queue = self.lock();
                match queue.front() {
                    Some((after, _)) if *after <= handled => queue.pop_front(),
                    _ => None,
                }
            };
            match due {
                Some((_, update)) => update(pipeline, sink),
                None => break,
            }
        }
    }
}

/// Where one pipeline thread's events go.
pub trait EventSink: Send + 'static {
    fn handle(&mut self, event: Event);
}

impl EventSink for Relay {
    fn handle(&mut self, event: Event) {
        Relay::handle(self, event);
    }
}

/// What the reader does when a thread's queue is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhenFull {
    /// Drop the batch and count its records: live capture never waits (the ring would fill).
    Drop,
    /// Wait for room: a saved capture has no primary to protect and loses nothing.
    Wait,
}

/// What a pipeline thread's clock is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShardClock {
    /// Live capture: the monotonic clock the kernel stamps records with.
    Monotonic,
    /// A saved capture: the latest record's timestamp (timeouts run on capture time).
    Records,
}

/// One pipeline thread's state; handed back by [`Shards::finish`].
pub struct Shard<S> {
    pub pipeline: Pipeline,
    pub sink: S,
    pub intake: Arc<Intake>,
    pub cells: Arc<PipelineCells>,
    /// Latest record timestamp this shard saw.
    pub last_ns: u64,
}

impl<S: EventSink> Shard<S> {
    pub fn new(pipeline: Pipeline, sink: S) -> Self {
        Shard {
            pipeline,
            sink,
            intake: Arc::default(),
            cells: Arc::default(),
            last_ns: 0,
        }
    }

    /// Decodes one ring-format record and feeds the pipeline (v1's side as its
    /// acknowledgements), as the single-threaded loop does.
    fn feed(&mut self, item: &[u8]) {
        let Shard {
            pipeline,
            sink,
            intake,
            last_ns,
            ..
        } = self;
        if let Some(now) = intake.feed(item, pipeline, &mut |event| sink.handle(event)) {
            *last_ns = (*last_ns).max(now);
        }
    }
}

/// Shard `index` of `threads`'s settings: the global caps divided among the threads, the
/// per-source caps whole (a source lives in one shard), its own sampling seed.
pub fn shard_config(config: &PipelineConfig, index: usize, threads: usize) -> PipelineConfig {
    let share = |total: usize| (total / threads.max(1)).max(1);
    PipelineConfig {
        max_flows: share(config.max_flows),
        max_buffered_bytes: share(config.max_buffered_bytes),
        max_handshakes: share(config.max_handshakes),
        sample_seed: config.sample_seed.wrapping_add(index as u64),
        ..config.clone()
    }
}

/// The reader's side: batches per thread, their queues, and the threads.
pub struct Shards<S> {
    senders: Vec<SyncSender<Vec<u8>>>,
    /// Batches each thread's queue took so far.
    sent_batches: Vec<u64>,
    updates: Vec<Arc<PendingUpdates<S>>>,
    pending: Vec<Vec<u8>>,
    pending_records: Vec<u64>,
    hasher: RandomState,
    workers: Vec<JoinHandle<Shard<S>>>,
    stats: Arc<ShardStats>,
    when_full: WhenFull,
}

/// What the reader did with records: queued, or dropped because a queue was full.
#[derive(Debug, Default)]
pub struct ShardStats {
    pub threads: AtomicU64,
    pub records_queued: AtomicU64,
    pub records_dropped_queue_full: AtomicU64,
    pub batches_dropped: AtomicU64,
    /// Of `records_queued`, each thread's (how evenly the client addresses spread).
    pub records_queued_per_thread: Vec<AtomicU64>,
}

impl Source for ShardStats {
    fn visit(&self, out: &mut dyn FnMut(Sample)) {
        out(Sample::gauge(
            "threads",
            "Pipeline threads the capture path is sharded over.",
            self.threads.load(Relaxed),
        ));
        out(Sample::counter(
            "records_queued",
            "Records handed to a pipeline thread.",
            self.records_queued.load(Relaxed),
        ));
        out(Sample::counter(
            "records_dropped_queue_full",
            "Records dropped because their pipeline thread's queue was full.",
            self.records_dropped_queue_full.load(Relaxed),
        ));
        out(Sample::counter(
            "batches_dropped",
            "Batches of records dropped because a queue was full.",
            self.batches_dropped.load(Relaxed),
        ));
        for (thread, records) in self.records_queued_per_thread.iter().enumerate() {
            out(Sample::counter(
                "thread_records_queued",
                "Records handed to each pipeline thread (how evenly client addresses spread).",
                records.load(Relaxed),
            )
            .with_label("thread", thread.to_string()));
        }
    }
}

impl<S: EventSink> Shards<S> {
    /// Starts one thread per shard, each behind a queue of `queue_batches` batches. Called
    /// inside a tokio runtime, the threads run inside it too (a relay spawns its tasks there).
    pub fn start(
        shards: Vec<Shard<S>>,
        queue_batches: usize,
        clock: ShardClock,
        when_full: WhenFull,
    ) -> std::io::Result<Self> {
        let stats = Arc::new(ShardStats {
            threads: AtomicU64::new(shards.len() as u64),
            records_queued_per_thread: shards.iter().map(|_| AtomicU64::new(0)).collect(),
            ..ShardStats::default()
        });
        let mut senders = Vec::new();
        let mut workers = Vec::new();
        let mut updates = Vec::new();
        let runtime = tokio::runtime::Handle::try_current().ok();
        for (i, shard) in shards.into_iter().enumerate() {
            let (sender, receiver) = sync_channel(queue_batches.max(1));
            let pending = Arc::new(PendingUpdates(Mutex::default()));
            let thread_pending = Arc::clone(&pending);
            let runtime = runtime.clone();
            let worker = std::thread::Builder::new()
                .name(format!("mirror-pipe-{i}"))
                .spawn(move || {
                    let _in_runtime = runtime.as_ref().map(tokio::runtime::Handle::enter);
                    work(shard, &receiver, &thread_pending, clock)
                })?;
            senders.push(sender);
            workers.push(worker);
            updates.push(pending);
        }
        let n = senders.len();
        Ok(Shards {
            senders,
            sent_batches: vec![0; n],
            updates,
            pending: vec![Vec::new(); n],
            pending_records: vec![0; n],
            hasher: RandomState::new(),
            workers,
            stats,
            when_full,
        })
    }

    pub fn stats(&self) -> Arc<ShardStats> {
        Arc::clone(&self.stats)
    }

    /// Queues one ring-format record for the thread of its client's address (an undecodable
    /// one goes to the first thread, which counts it).
    pub fn dispatch(&mut self, item: &[u8]) {
        let shard = match client_address(item) {
            Some(ip) => (self.hasher.hash_one(ip) % self.senders.len() as u64) as usize,
            None => 0,
        };
        let batch = &mut self.pending[shard];
        let len = u32::try_from(item.len()).unwrap_or(u32::MAX);
        batch.extend_from_slice(&len.to_ne_bytes());
        batch.extend_from_slice(&item[..len as usize]);
        self.pending_records[shard] += 1;
        if batch.len() >= BATCH_BYTES {
            self.send(shard);
        }
    }

    /// Runs `update` on every thread after the records dispatched so far and before any
    /// dispatched later, as one pipeline would see it between two records.
    pub fn update(&mut self, update: &Update<S>) {
        self.flush();
        for (pending, &sent) in self.updates.iter().zip(&self.sent_batches) {
            pending.push(sent, Arc::clone(update));
        }
    }

    /// Hands every partly filled batch on (call at the end of a ring drain).
    pub fn flush(&mut self) {
        for shard in 0..self.senders.len() {
            if !self.pending[shard].is_empty() {
                self.send(shard);
            }
        }
    }

    fn send(&mut self, shard: usize) {
        let batch = std::mem::replace(&mut self.pending[shard], Vec::with_capacity(BATCH_BYTES));
        let records = std::mem::take(&mut self.pending_records[shard]);
        let sent = match self.when_full {
            WhenFull::Drop => self.senders[shard].try_send(batch),
            WhenFull::Wait => self.senders[shard]
                .send(batch)
                .map_err(|error| TrySendError::Disconnected(error.0)),
        };
        match sent {
            Ok(()) => {
                self.sent_batches[shard] += 1;
                self.stats.records_queued.fetch_add(records, Relaxed);
                self.stats.records_queued_per_thread[shard].fetch_add(records, Relaxed);
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.stats.batches_dropped.fetch_add(1, Relaxed);
                self.stats
                    .records_dropped_queue_full
                    .fetch_add(records, Relaxed);
            }
        }
    }

    /// Hands on what is pending, lets every thread finish its queue, and returns their state.
    pub fn finish(mut self) -> Vec<Shard<S>> {
        self.flush();
        self.senders.clear();
        self.workers
            .into_iter()
            .filter_map(|worker| worker.join().ok())
            .collect()
    }
}

/// The client's address of a record: the source of a client packet, the destination of one
/// of v1's.
fn client_address(item: &[u8]) -> Option<IpAddr> {
    let record = record::decode(item).ok()?;
    let segment = packet::parse_headers(record.packet).ok()?;
    Some(if record.reverse() {
        segment.flow.dst.ip()
    } else {
        segment.flow.src.ip()
    })
}

/// One pipeline thread: batches in, events out, timers between batches.
fn work<S: EventSink>(
    mut shard: Shard<S>,
    batches: &Receiver<Vec<u8>>,
    updates: &PendingUpdates<S>,
    clock: ShardClock,
) -> Shard<S> {
    let mut next_expire_ns = 0u64;
    let mut handled = 0u64;
    loop {
        let received = batches.recv_timeout(EXPIRE_EVERY);
        updates.run_due(handled, &mut shard.pipeline, &mut shard.sink);
        match received {
            Ok(batch) => {
                handled += 1;
                for item in items(&batch) {
                    shard.feed(item);
                }
                shard.cells.publish(&shard.pipeline);
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        updates.run_due(handled, &mut shard.pipeline, &mut shard.sink);
        let now = match clock {
            ShardClock::Monotonic => clock::monotonic_ns(),
            ShardClock::Records => shard.last_ns,
        };
        if now >= next_expire_ns {
            let sink = &mut shard.sink;
            shard.pipeline.expire(now, &mut |event| sink.handle(event));
            shard.cells.publish(&shard.pipeline);
            next_expire_ns = now.saturating_add(EXPIRE_EVERY.as_nanos() as u64);
        }
    }
    shard.cells.publish(&shard.pipeline);
    shard
}

/// The records of a batch: each a native-endian `u32` length, then that many bytes.
fn items(batch: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = batch;
    std::iter::from_fn(move || {
        let (len, tail) = rest.split_first_chunk::<4>()?;
        let len = u32::from_ne_bytes(*len) as usize;
        let item = tail.get(..len)?;
        rest = &tail[len..];
        Some(item)
    })
}

/// The sum of several sources' samples, by name and labels: what the registry shows for a
/// stage that every shard has. Samples stay grouped by name (as the registry requires) even
/// when one shard has labels another lacks (a mirror still draining after a reload, a gRPC
/// method only one thread saw).
pub struct Summed(pub Vec<Arc<dyn Source>>);

impl Source for Summed {
    fn visit(&self, out: &mut dyn FnMut(Sample)) {
        let mut merged: Vec<Sample> = Vec::new();
        let mut names: Vec<&'static str> = Vec::new();
        for source in &self.0 {
            source.visit(&mut |sample| {
                if !names.contains(&sample.name) {
                    names.push(sample.name);
                }
                match merged
                    .iter_mut()
                    .find(|m| m.name == sample.name && m.labels == sample.labels)
                {
                    Some(m) => m.value = m.value.wrapping_add(sample.value),
                    None => merged.push(sample),
                }
            });
        }
        merged.sort_by_key(|sample| names.iter().position(|name| *name == sample.name));
        for sample in merged {
            out(sample);
        }
    }

    /// Histograms of one name and labels add up bucket by bucket (every shard's relay has
    /// the same bounds).
    fn histograms(&self, out: &mut dyn FnMut(HistogramSample)) {
        let mut merged: Vec<HistogramSample> = Vec::new();
        for source in &self.0 {
            source.histograms(&mut |histogram| match merged
                .iter_mut()
                .find(|m| m.name == histogram.name && m.labels == histogram.labels)
            {
                Some(m) if m.buckets.len() == histogram.buckets.len() => {
                    for (mine, theirs) in m.buckets.iter_mut().zip(&histogram.buckets) {
                        mine.1 = mine.1.wrapping_add(theirs.1);
                    }
                    m.sum += histogram.sum;
                    m.count = m.count.wrapping_add(histogram.count);
                }
                Some(_) => {}
                None => merged.push(histogram),
            });
        }
        for histogram in merged {
            out(histogram);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::packet::tests::frame;
    use mirror_common::RecordHeader;
    use mirror_cores::{
        flow::{FlowKey, TcpFlags},
        pipeline::Admission,
    };
    use std::sync::{mpsc, Mutex};

    /// Events as (shard, flow, is a request head).
    type Seen = Arc<Mutex<Vec<(usize, FlowKey, bool)>>>;

    struct Recorder {
        shard: usize,
        seen: Seen,
        /// Set by updates; each request head is recorded with the one it came under.
        generation: u32,
        heads: Arc<Mutex<Vec<(FlowKey, u32)>>>,
        /// Blocks the first event until a message arrives (a slow pipeline).
        gate: Option<mpsc::Receiver<()>>,
    }

    impl EventSink for Recorder {
        fn handle(&mut self, event: Event) {
            if let Some(gate) = self.gate.take() {
                let _ = gate.recv();
            }
            let (flow, head) = match &event {
                Event::RequestHead { flow, .. } => (*flow, true),
                Event::RequestBody { flow, .. }
                | Event::RequestEnd { flow }
                | Event::RequestAbort { flow, .. }
                | Event::FlowEnd { flow, .. }
                | Event::StreamData { flow, .. } => (*flow, false),
            };
            self.seen.lock().unwrap().push((self.shard, flow, head));
            if head {
                self.heads.lock().unwrap().push((flow, self.generation));
            }
        }
    }

    fn record(flow: FlowKey, seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
        let packet = frame(flow, seq, flags, payload, 0);
        let len = packet.len() as u32;
        let header = RecordHeader {
            timestamp_ns: 1,
            orig_len: len,
            cap_len: len,
            ..RecordHeader::default()
        };
        let mut out = Vec::new();
        record::encode(&header, &packet, &mut out);
        out
    }

    fn shards(
        threads: usize,
        seen: &Seen,
        gate: Option<mpsc::Receiver<()>>,
    ) -> Vec<Shard<Recorder>> {
        let config = PipelineConfig::default().with_admission(Admission::ClientOnly);
        let mut gate = gate;
        (0..threads)
            .map(|shard| {
                let pipeline = Pipeline::new(shard_config(&config, shard, threads)).unwrap();
                let sink = Recorder {
                    shard,
                    seen: Arc::clone(seen),
                    generation: 0,
                    heads: Arc::default(),
                    gate: gate.take(),
                };
                Shard::new(pipeline, sink)
            })
            .collect()
    }

    fn client(i: usize) -> FlowKey {
        FlowKey {
            src: format!("10.1.{}.{}:40000", i / 200, i % 200 + 1)
                .parse()
                .unwrap(),
            dst: "10.96.0.10:80".parse().unwrap(),
        }
    }

    #[test]
    fn every_flow_stays_on_one_thread_and_no_request_is_lost() {
        let seen = Seen::default();
        let mut set = Shards::start(
            shards(3, &seen, None),
            4,
            ShardClock::Records,
            WhenFull::Wait,
        )
        .unwrap();
        let clients = 40;
        for i in 0..clients {
            set.dispatch(&record(client(i), 100, TcpFlags::SYN, b""));
        }
        for i in 0..clients {
            let request = format!("GET /{i} HTTP/1.1\r\nHost: a\r\n\r\n");
            set.dispatch(&record(client(i), 101, TcpFlags::ACK, request.as_bytes()));
        }
        // Not a TCP record: goes to the first thread, which counts it.
        set.dispatch(&[0u8; 8]);
        let stats = set.stats();
        let done = set.finish();
        let seen = seen.lock().unwrap();
        assert_eq!(seen.iter().filter(|(_, _, head)| *head).count(), clients);
        for i in 0..clients {
            let threads: std::collections::BTreeSet<usize> = seen
                .iter()
                .filter(|(_, flow, _)| *flow == client(i))
                .map(|(shard, _, _)| *shard)
                .collect();
            assert_eq!(threads.len(), 1, "client {i} on threads {threads:?}");
        }
        // With 40 sources over 3 threads, every thread gets some.
        let used: std::collections::BTreeSet<usize> = seen.iter().map(|(s, _, _)| *s).collect();
        assert_eq!(used.len(), 3, "{used:?}");
        assert_eq!(stats.records_queued.load(Relaxed), 2 * clients as u64 + 1);
        assert_eq!(stats.records_dropped_queue_full.load(Relaxed), 0);
        let malformed: u64 = done
            .iter()
            .map(|shard| shard.intake.malformed_records.load(Relaxed))
            .sum();
        assert_eq!(malformed, 1);
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let seen = Seen::default();
        let (open, gate) = mpsc::channel();
        let mut set = Shards::start(
            shards(1, &seen, Some(gate)),
            1,
            ShardClock::Records,
            WhenFull::Drop,
        )
        .unwrap();
        let sent = 20u64;
        for i in 0..sent as usize {
            let request = format!("GET /{i} HTTP/1.1\r\nHost: a\r\n\r\n");
            set.dispatch(&record(client(i), 101, TcpFlags::ACK, request.as_bytes()));
            // One batch per record, so the one-batch queue fills behind the blocked thread.
            set.flush();
        }
        let stats = set.stats();
        let (queued, dropped) = (
            stats.records_queued.load(Relaxed),
            stats.records_dropped_queue_full.load(Relaxed),
        );
        open.send(()).unwrap();
        set.finish();
        assert_eq!(queued + dropped, sent);
        assert!(dropped >= sent - 2, "queued {queued}, dropped {dropped}");
        assert_eq!(stats.batches_dropped.load(Relaxed), dropped);
        let heads = seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, _, head)| *head)
            .count();
        assert_eq!(heads as u64, queued);
    }

    #[test]
    fn an_update_reaches_every_thread_between_the_records_before_and_after_it() {
        let seen = Seen::default();
        let (open, gate) = mpsc::channel();
        // The first thread is held at its first event, so its other batches (one per
        // record) wait in its queue while the update is posted: it must run after them.
        let shards = shards(2, &seen, Some(gate));
        let heads: Vec<_> = shards.iter().map(|s| Arc::clone(&s.sink.heads)).collect();
        let clients = 20;
        let mut set =
            Shards::start(shards, 2 * clients, ShardClock::Records, WhenFull::Wait).unwrap();
        let first = |i: usize| format!("GET /a{i} HTTP/1.1\r\nHost: a\r\n\r\n");
        for i in 0..clients {
            set.dispatch(&record(client(i), 101, TcpFlags::ACK, first(i).as_bytes()));
            set.flush();
        }
        let update: Update<Recorder> = Arc::new(|pipeline: &mut Pipeline, sink: &mut Recorder| {
            sink.generation += 1;
            pipeline.set_stream_targets(Vec::new());
        });
        set.update(&update);
        for i in 0..clients {
            let seq = 101 + first(i).len() as u32;
            let second = format!("GET /b{i} HTTP/1.1\r\nHost: a\r\n\r\n");
            set.dispatch(&record(client(i), seq, TcpFlags::ACK, second.as_bytes()));
        }
        open.send(()).unwrap();
        let done = set.finish();
        assert!(done.iter().all(|shard| shard.sink.generation == 1));
        let mut all: Vec<(FlowKey, u32)> = Vec::new();
        for (shard, heads) in heads.iter().enumerate() {
            let heads = heads.lock().unwrap();
            assert!(!heads.is_empty(), "thread {shard} got no request");
            all.extend(heads.iter().copied());
        }
        assert_eq!(all.len(), 2 * clients);
        for i in 0..clients {
            let of_client: Vec<u32> = all
                .iter()
                .filter(|(flow, _)| *flow == client(i))
                .map(|(_, generation)| *generation)
                .collect();
            // Its first request under the old settings, its second under the new.
            assert_eq!(of_client, vec![0, 1], "client {i}");
        }
    }

    #[test]
    fn updates_past_the_cap_keep_the_newest() {
        let pending = PendingUpdates::<u32>(Mutex::default());
        for n in 0..MAX_PENDING_UPDATES as u32 + 3 {
            pending.push(
                0,
                Arc::new(move |_: &mut Pipeline, sink: &mut u32| *sink = n),
            );
        }
        let mut pipeline = Pipeline::new(PipelineConfig::default()).unwrap();
        let mut sink = 0;
        pending.run_due(0, &mut pipeline, &mut sink);
        assert_eq!(sink, MAX_PENDING_UPDATES as u32 + 2);
        assert!(pending.lock().is_empty());
    }

    /// Fixed samples, as a shard's stage would give them.
    struct Fixed(Vec<Sample>);

    impl Source for Fixed {
        fn visit(&self, out: &mut dyn FnMut(Sample)) {
            for sample in &self.0 {
                out(sample.clone());
            }
        }
    }

    #[test]
    fn summed_samples_stay_grouped_by_name_when_shards_have_different_labels() {
        let sample = |name, label: &str, value| {
            Sample::counter(name, "h", value).with_label("mirror", label.to_owned())
        };
        let a = Fixed(vec![
            sample("answered", "p/a", 1),
            sample("dropped", "p/a", 2),
        ]);
        // A mirror only the second shard still has (draining after a reload).
        let b = Fixed(vec![
            sample("answered", "p/a", 10),
            sample("answered", "p/b", 20),
            sample("dropped", "p/b", 30),
        ]);
        let summed = Summed(vec![Arc::new(a), Arc::new(b)]);
        let mut got = Vec::new();
        summed.visit(&mut |s| got.push((s.name, s.labels[0].1.clone(), s.value)));
        let want = [
            ("answered", "p/a", 11),
            ("answered", "p/b", 20),
            ("dropped", "p/a", 2),
            ("dropped", "p/b", 30),
        ]
        .map(|(n, l, v)| (n, l.to_owned(), v));
        assert_eq!(got, want);
    }

    #[test]
    fn per_mirror_counters_of_every_thread_add_up_by_label() {
        use super::super::mirror_stats::{MirrorCounters, MirrorStats, PolicySource, RelaySource};
        use crate::{
            observe::{status::status_line, Registry},
            relay::RelayStats,
        };
        let thread = |mirrored: u64, sampled_out: u64| {
            let stats = Arc::new(MirrorStats::default());
            let decided = Arc::new(MirrorCounters::default());
            decided.requests_mirrored.store(mirrored, Relaxed);
            decided.requests_sampled_out.store(sampled_out, Relaxed);
            stats.add("web/a:80".into(), decided, Arc::new(RelayStats::default()));
            stats.add(
                "web/b:80".into(),
                Arc::default(),
                Arc::new(RelayStats::default()),
            );
            stats.dispatch.requests_without_policy.store(1, Relaxed);
            stats
        };
        let threads = [thread(3, 1), thread(4, 2)];
        let registry = Registry::default();
        let policies: Vec<Arc<dyn Source>> = threads
            .iter()
            .map(|t| Arc::new(PolicySource(Arc::clone(t))) as Arc<dyn Source>)
            .collect();
        let relays: Vec<Arc<dyn Source>> = threads
            .iter()
            .map(|t| Arc::new(RelaySource(Arc::clone(t))) as Arc<dyn Source>)
            .collect();
        registry.register("policy", Arc::new(Summed(policies)));
        registry.register("relay", Arc::new(Summed(relays)));
        let line = status_line(&registry);
        assert!(
            line.starts_with(
                "policy: web/a:80 requests_mirrored=7 web/b:80 requests_mirrored=0 \
                 web/a:80 requests_sampled_out=3"
            ),
            "{line}"
        );
        assert!(line.contains("requests_without_policy=2"), "{line}");
        // Each mirror's relay counters appear once, under its label.
        assert_eq!(line.matches("web/a:80 requests=").count(), 1, "{line}");
    }

    #[test]
    fn summed_sources_add_samples_by_name() {
        let a = Arc::new(Intake::default());
        let b = Arc::new(Intake::default());
        a.records.fetch_add(2, Relaxed);
        b.records.fetch_add(3, Relaxed);
        let summed = Summed(vec![a, b]);
        let mut records = Vec::new();
        summed.visit(&mut |sample| {
            if sample.name == "records" {
                records.push(sample.value);
            }
        });
        assert_eq!(records, vec![5]);
    }

    #[test]
    fn shard_configs_divide_the_global_caps_only() {
        let config = PipelineConfig::default();
        let shard = shard_config(&config, 1, 4);
        assert_eq!(shard.max_flows, config.max_flows / 4);
        assert_eq!(shard.max_buffered_bytes, config.max_buffered_bytes / 4);
        assert_eq!(shard.max_flows_per_source, config.max_flows_per_source);
        assert_eq!(
            shard.max_buffered_per_source,
            config.max_buffered_per_source
        );
        assert_ne!(shard.sample_seed, shard_config(&config, 0, 4).sample_seed);
    }
}
