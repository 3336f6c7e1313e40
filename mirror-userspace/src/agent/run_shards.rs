//! `mirror run --capture-threads N` with N above 1: one relay per pipeline thread, each with
//! its share of the shadow connections and in-flight bytes, and the threads' counters summed
//! under the stage names the single-threaded loop uses, so the status line, the metrics and
//! the tests read the same names.

use std::{sync::Arc, time::Duration};

use mirror_cores::pipeline::{Pipeline, PipelineConfig};

use super::{
    run::{RunArgs, RunError},
    shards::{shard_config, Shard, ShardClock, Shards, Summed, WhenFull},
};
use crate::{
    observe::{access_log::AccessLog, Registry, Source},
    relay::Relay,
};

/// Batches queued per pipeline thread (each at most 64 KiB plus one record): a few
/// milliseconds of records at the rates one thread carries.
const QUEUE_BATCHES: usize = 64;

/// Starts the threads; call inside the relay runtime (the relays spawn their tasks there).
pub(super) fn start(
    args: &RunArgs,
    pipeline_config: &PipelineConfig,
    access_log: Option<Arc<AccessLog>>,
    registry: &Registry,
    threads: usize,
) -> Result<Shards<Relay>, RunError> {
    let mut relays: Vec<Arc<dyn Source>> = Vec::new();
    let mut cells: Vec<Arc<dyn Source>> = Vec::new();
    let mut intakes: Vec<Arc<dyn Source>> = Vec::new();
    let mut shards = Vec::new();
    for index in 0..threads {
        let mut relay_config = args.relay_config(access_log.clone());
        relay_config.max_connections = (relay_config.max_connections / threads).max(1);
        relay_config.max_inflight_bytes = (relay_config.max_inflight_bytes / threads).max(1);
        let relay = Relay::new(relay_config);
        relays.push(relay.stats());
        let pipeline = Pipeline::new(shard_config(pipeline_config, index, threads))?;
        let shard = Shard::new(pipeline, relay);
        cells.push(shard.cells.clone());
        intakes.push(shard.intake.clone());
        shards.push(shard);
    }
    let shards = Shards::start(shards, QUEUE_BATCHES, ShardClock::Monotonic, WhenFull::Drop)
        .map_err(RunError::Runtime)?;
    registry.register("relay", Arc::new(Summed(relays)));
    registry.register("pipeline", Arc::new(Summed(cells)));
    registry.register("intake", Arc::new(Summed(intakes)));
    registry.register("shards", shards.stats());
    Ok(shards)
}

/// Lets every thread finish its queue, then gives each relay the grace period, together.
pub(super) async fn finish(shards: Shards<Relay>, grace: Duration) {
    let mut closing = tokio::task::JoinSet::new();
    for shard in shards.finish() {
        closing.spawn(shard.sink.shutdown(grace));
    }
    while closing.join_next().await.is_some() {}
}
