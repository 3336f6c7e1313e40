//! `mirror run --capture-threads N` with N above 1: one outlet per pipeline thread (a relay
//! with the flags, a policy dispatcher with `--config`), each with its share of the shadow
//! connections and in-flight bytes, and the threads' counters summed under the stage names
//! and labels the single-threaded loop uses, so the status line, the metrics and the tests
//! read the same names. A reload reaches every thread's dispatcher and stream targets
//! ([`reload`]).

use std::{sync::Arc, time::Duration};

use mirror_cores::pipeline::{Pipeline, PipelineConfig};

use super::{
    dispatch::Dispatcher,
    mirror_stats::{PolicySource, RelaySource},
    run::{stream_targets, Outlet, RunArgs, RunError},
    shards::{shard_config, Shard, ShardClock, Shards, Summed, Update, WhenFull},
};
use crate::{
    control::MirrorConfig,
    observe::{access_log::AccessLog, Registry, Source},
    relay::Relay,
};

/// Batches queued per pipeline thread (each at most 64 KiB plus one record): a few
/// milliseconds of records at the rates one thread carries.
const QUEUE_BATCHES: usize = 64;

/// Starts the threads; call inside the relay runtime (the relays spawn their tasks there).
/// `config`: the policies of `--config`, or None for the flags' one relay per thread.
pub(super) fn start(
    args: &RunArgs,
    pipeline_config: &PipelineConfig,
    config: Option<&MirrorConfig>,
    access_log: Option<Arc<AccessLog>>,
    registry: &Registry,
    threads: usize,
) -> Result<Shards<Outlet>, RunError> {
    let mut relays: Vec<Arc<dyn Source>> = Vec::new();
    let mut policies: Vec<Arc<dyn Source>> = Vec::new();
    let mut cells: Vec<Arc<dyn Source>> = Vec::new();
    let mut intakes: Vec<Arc<dyn Source>> = Vec::new();
    let mut shards = Vec::new();
    for index in 0..threads {
        let mut relay_config = args.relay_config(access_log.clone());
        relay_config.max_connections = (relay_config.max_connections / threads).max(1);
        relay_config.max_inflight_bytes = (relay_config.max_inflight_bytes / threads).max(1);
        let mut pipeline = Pipeline::new(shard_config(pipeline_config, index, threads))?;
        let outlet = match config {
            None => {
                let relay = Relay::new(relay_config);
                relays.push(relay.stats());
                Outlet::Relay(relay)
            }
            Some(config) => {
                pipeline.set_stream_targets(stream_targets(config));
                // Each thread draws its own sampling coin, as its pipeline does.
                let seed = args.seed.wrapping_add(index as u64);
                let grace = Duration::from_secs(args.grace_secs);
                let dispatcher = Dispatcher::new(config, relay_config, seed, grace);
                policies.push(Arc::new(PolicySource(dispatcher.stats())));
                relays.push(Arc::new(RelaySource(dispatcher.stats())));
                Outlet::Policies(Box::new(dispatcher))
            }
        };
        let shard = Shard::new(pipeline, outlet);
        cells.push(shard.cells.clone());
        intakes.push(shard.intake.clone());
        shards.push(shard);
    }
    let shards = Shards::start(shards, QUEUE_BATCHES, ShardClock::Monotonic, WhenFull::Drop)
        .map_err(RunError::Runtime)?;
    if !policies.is_empty() {
        registry.register("policy", Arc::new(Summed(policies)));
    }
    registry.register("relay", Arc::new(Summed(relays)));
    registry.register("pipeline", Arc::new(Summed(cells)));
    registry.register("intake", Arc::new(Summed(intakes)));
    registry.register("shards", shards.stats());
    Ok(shards)
}

/// A reloaded config as every thread applies it: its stream targets, and its policies from
/// the thread's next request head on (what the single-threaded loop does between records).
pub(super) fn reload(config: MirrorConfig) -> Update<Outlet> {
    let targets = stream_targets(&config);
    Arc::new(move |pipeline: &mut Pipeline, outlet: &mut Outlet| {
        pipeline.set_stream_targets(targets.clone());
        if let Outlet::Policies(dispatcher) = outlet {
            dispatcher.reconfigure(&config);
        }
    })
}

/// Lets every thread finish its queue, then gives each outlet the grace period, together.
pub(super) async fn finish(shards: Shards<Outlet>, grace: Duration) {
    let mut closing = tokio::task::JoinSet::new();
    for shard in shards.finish() {
        closing.spawn(shard.sink.shutdown(grace));
    }
    while closing.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{control::parse, relay::RelayConfig};

    fn config(backend: &str) -> MirrorConfig {
        let text = format!(
            "interfaces: [lo]\npolicies:\n- name: web\n  target: {{address: 10.0.0.2, port: 80}}\n  mirrors:\n  - backend: {backend}\n"
        );
        parse(&text, "t").unwrap()
    }

    fn mirrors(stats: &[Arc<dyn Source>]) -> Vec<String> {
        let mut labels = Vec::new();
        Summed(stats.to_vec()).visit(&mut |sample| {
            if sample.name == "requests_mirrored" {
                labels.extend(sample.labels.iter().map(|(_, label)| label.clone()));
            }
        });
        labels
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reload_gives_every_threads_dispatcher_the_new_mirrors() {
        let grace = Duration::from_secs(1);
        let mut threads: Vec<(Pipeline, Outlet)> = Vec::new();
        let mut policies: Vec<Arc<dyn Source>> = Vec::new();
        for seed in 0..2 {
            let dispatcher =
                Dispatcher::new(&config("127.0.0.1:1"), RelayConfig::default(), seed, grace);
            policies.push(Arc::new(PolicySource(dispatcher.stats())));
            let pipeline = Pipeline::new(PipelineConfig::default()).unwrap();
            threads.push((pipeline, Outlet::Policies(Box::new(dispatcher))));
        }
        assert_eq!(mirrors(&policies), ["web/127.0.0.1:1"]);
        let update = reload(config("127.0.0.1:2"));
        for (pipeline, outlet) in &mut threads {
            update(pipeline, outlet);
        }
        // The old mirror (idle) left every thread's counters; the new one is in each, summed
        // under one label.
        assert_eq!(mirrors(&policies), ["web/127.0.0.1:2"]);
        for (_, outlet) in threads {
            outlet.shutdown(grace).await;
        }
    }
}
