//! The policy dispatcher: between the pipeline (which, under a config file, hands on every
//! request with the client's own head) and one [`Relay`] per mirror. Per request head it
//! finds the policy of the flow's destination, lets the policy core decide which mirrors
//! take the request, and gives each of them its rewritten head and then the request's body,
//! end or abort. Each mirror has its own relay, hence its own connections, queues, budgets
//! and counters: a slow mirror never costs another one a request.
//!
//! A raw TCP connection (`protocol: tcp`) is decided once, at its first bytes: each mirror
//! of its policy takes the whole connection or none of it, by its share. An h2c connection
//! (`protocol: http2`) goes to every mirror of its policy, whose relay decodes it and decides
//! each stream by the policy as this dispatcher decides HTTP/1 requests.
//! An HTTP/1.1 connection of an `http` policy that v1 switched to h2c (from its `Upgrade: h2c`
//! request on) is handed on the same way: every mirror of its policy takes it, and its relay
//! decides each stream.
//!
//! A new config ([`Dispatcher::reconfigure`]) applies from the next request head on; a
//! request in progress finishes with the mirrors it started with, and a removed mirror's
//! relay is shut down only once no request is left on it.

use std::{
    collections::HashMap,
    sync::{atomic::Ordering::Relaxed, Arc},
    time::Duration,
};

use bytes::BytesMut;
use mirror_cores::{
    flow::FlowKey,
    pipeline::Event,
    policy::{Coin, HeadView, Policy, Verdict},
};

use super::mirror_stats::{MirrorCounters, MirrorStats};
use crate::{
    control::{config::Scope, MirrorConfig, Protocol},
    relay::{H2cMirror, Relay, RelayConfig},
};

type MirrorId = u32;

/// A policy of the running config, its mirrors resolved to relays.
#[derive(Debug)]
struct ActivePolicy {
    scope: Scope,
    protocol: Protocol,
    policy: Policy,
    /// `policy.mirrors[i]` is relayed by `mirrors[i]`.
    mirrors: Vec<MirrorId>,
}

struct Slot {
    relay: Relay,
    decided: Arc<MirrorCounters>,
    /// An h2c mirror's per-stream policy, which a reload replaces.
    h2c: Option<H2cMirror>,
    label: String,
    /// False once a reload dropped this mirror: it takes no new request.
    live: bool,
    /// Requests started on this relay and not yet ended or aborted.
    open_requests: usize,
}

/// What the dispatcher remembers of one flow.
#[derive(Debug, Default)]
struct FlowState {
    /// The mirrors taking the request in progress.
    current: Vec<MirrorId>,
    /// Every mirror that got a request of this flow, to tell it when the flow ends.
    used: Vec<MirrorId>,
    /// Its stream (raw TCP, h2c, or after an upgrade to h2c) was decided.
    streaming: bool,
}

/// Routes request events to the mirrors' relays by policy.
pub struct Dispatcher {
    policies: Vec<ActivePolicy>,
    slots: HashMap<MirrorId, Slot>,
    by_label: HashMap<String, MirrorId>,
    next_id: MirrorId,
    flows: HashMap<FlowKey, FlowState>,
    view: HeadView,
    scratch: BytesMut,
    verdicts: Vec<(usize, Verdict)>,
    coin: Coin,
    /// What h2c relays seed their per-connection coins with.
    seed: u64,
    relay_template: RelayConfig,
    grace: Duration,
    stats: Arc<MirrorStats>,
}

impl Dispatcher {
    /// `relay_template` gives every mirror's relay its settings (the shadow address comes
    /// from the mirror); `grace` is what a removed mirror's queued requests get.
    pub fn new(
        config: &MirrorConfig,
        relay_template: RelayConfig,
        seed: u64,
        grace: Duration,
    ) -> Self {
        let mut d = Dispatcher {
            policies: Vec::new(),
            slots: HashMap::new(),
            by_label: HashMap::new(),
            next_id: 0,
            flows: HashMap::new(),
            view: HeadView::default(),
            scratch: BytesMut::new(),
            verdicts: Vec::new(),
            coin: Coin::new(seed),
            seed,
            relay_template,
            grace,
            stats: Arc::default(),
        };
        d.reconfigure(config);
        d
    }

    /// The counters, for the registry.
    pub fn stats(&self) -> Arc<MirrorStats> {
        Arc::clone(&self.stats)
    }

    /// Switches to `config` for every request head from now on. Mirrors that stay (same
    /// policy name and backend) keep their relay, connections and counters.
    pub fn reconfigure(&mut self, config: &MirrorConfig) {
        let mut policies = Vec::new();
        let mut wanted: Vec<MirrorId> = Vec::new();
        for p in &config.policies {
            let mut mirrors = Vec::new();
            let shared_policy = Arc::new(p.policy.clone());
            for (i, backend) in p.backends.iter().enumerate() {
                let label = p.mirror_label(i);
                // An `http` policy's connections may be upgraded to h2c.
                let h2c = (p.protocol != Protocol::Tcp).then(|| (Arc::clone(&shared_policy), i));
                let id = match self.by_label.get(&label) {
                    Some(&id) => {
                        let kept = self.slots.get(&id).and_then(|s| s.h2c.as_ref());
                        if let (Some(mirror), Some((policy, i))) = (kept, h2c) {
                            mirror.set_policy(policy, i);
                        }
                        id
                    }
                    None => self.open_mirror(label, backend, h2c),
                };
                mirrors.push(id);
                wanted.push(id);
            }
            policies.push(ActivePolicy {
                scope: p.scope(),
                protocol: p.protocol,
                policy: p.policy.clone(),
                mirrors,
            });
        }
        self.policies = policies;
        let dropped: Vec<MirrorId> = self
            .by_label
            .values()
            .copied()
            .filter(|id| !wanted.contains(id))
            .collect();
        for id in dropped {
            if let Some(slot) = self.slots.get_mut(&id) {
                slot.live = false;
                self.by_label.remove(&slot.label);
            }
            self.retire_if_idle(id);
        }
    }

    fn open_mirror(
        &mut self,
        label: String,
        backend: &str,
        h2c: Option<(Arc<Policy>, usize)>,
    ) -> MirrorId {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let decided = Arc::new(MirrorCounters::default());
        let h2c = h2c.map(|(policy, i)| H2cMirror::new(policy, i, Arc::clone(&decided), self.seed));
        let relay = Relay::new(RelayConfig {
            shadow: backend.to_owned(),
            h2c: h2c.clone(),
            ..self.relay_template.clone()
        });
        self.stats
            .add(label.clone(), Arc::clone(&decided), relay.stats());
        tracing::info!(mirror = %label, "mirror added");
        self.by_label.insert(label.clone(), id);
        self.slots.insert(
            id,
            Slot {
                relay,
                decided,
                h2c,
                label,
                live: true,
                open_requests: 0,
            },
        );
        id
    }

    /// Shuts down a dropped mirror's relay once it carries no request.
    fn retire_if_idle(&mut self, id: MirrorId) {
        let idle = self
            .slots
            .get(&id)
            .is_some_and(|s| !s.live && s.open_requests == 0);
        if !idle {
            return;
        }
        if let Some(slot) = self.slots.remove(&id) {
            self.stats.remove(&slot.label);
            tracing::info!(mirror = %slot.label, "mirror removed");
            tokio::spawn(slot.relay.shutdown(self.grace));
        }
    }

    pub fn handle(&mut self, event: Event) {
        match event {
            Event::RequestHead { flow, head } => self.request_head(flow, head),
            Event::RequestBody { flow, data } => {
                self.each_current(flow, |relay| {
                    relay.handle(Event::RequestBody {
                        flow,
                        data: data.clone(),
                    })
                });
            }
            Event::RequestEnd { flow } => {
                self.each_current(flow, |relay| relay.handle(Event::RequestEnd { flow }));
                self.request_done(flow);
            }
            Event::RequestAbort { flow, reason } => {
                self.each_current(flow, |relay| {
                    relay.handle(Event::RequestAbort { flow, reason })
                });
                self.request_done(flow);
            }
            Event::StreamData { flow, data } => {
                if !self.flows.get(&flow).is_some_and(|s| s.streaming) {
                    self.stream_start(flow);
                }
                self.each_current(flow, |relay| {
                    relay.handle(Event::StreamData {
                        flow,
                        data: data.clone(),
                    })
                });
            }
            Event::FlowEnd { flow, reason } => {
                self.request_done(flow);
                if let Some(state) = self.flows.remove(&flow) {
                    for id in state.used {
                        if let Some(slot) = self.slots.get_mut(&id) {
                            slot.relay.handle(Event::FlowEnd { flow, reason });
                        }
                    }
                }
            }
        }
    }

    fn request_head(&mut self, flow: FlowKey, head: bytes::Bytes) {
        // Heads come after the previous request's end or abort; should one not have, the
        // previous request is over for the mirrors all the same.
        self.request_done(flow);
        let Some(pi) = self.policy_of(flow, |p| p == Protocol::Http) else {
            self.stats
                .dispatch
                .requests_without_policy
                .fetch_add(1, Relaxed);
            return;
        };
        if self.view.parse(&head).is_err() {
            self.stats.dispatch.heads_unparsed.fetch_add(1, Relaxed);
            return;
        }
        let Self {
            policies,
            slots,
            flows,
            view,
            scratch,
            verdicts,
            coin,
            ..
        } = self;
        let active = &policies[pi];
        verdicts.clear();
        active
            .policy
            .decide(view, &head, coin, |i, v| verdicts.push((i, v)));
        let state = flows.entry(flow).or_default();
        for &(i, verdict) in verdicts.iter() {
            let id = active.mirrors[i];
            let Some(slot) = slots.get_mut(&id) else {
                continue;
            };
            match verdict {
                Verdict::Take => {
                    let sent = active.policy.mirrors[i].rewrite.apply(view, &head, scratch);
                    slot.decided.requests_mirrored.fetch_add(1, Relaxed);
                    slot.open_requests += 1;
                    slot.relay.handle(Event::RequestHead { flow, head: sent });
                    state.current.push(id);
                    if !state.used.contains(&id) {
                        state.used.push(id);
                    }
                }
                Verdict::SampledOut => {
                    slot.decided.requests_sampled_out.fetch_add(1, Relaxed);
                }
                Verdict::NotMatched => {
                    slot.decided.requests_not_matched.fetch_add(1, Relaxed);
                }
            }
        }
    }

    /// The first policy whose protocol `fits` and whose target holds the flow's
    /// destination.
    fn policy_of(&self, flow: FlowKey, fits: impl Fn(Protocol) -> bool) -> Option<usize> {
        self.policies
            .iter()
            .position(|p| fits(p.protocol) && p.scope.contains(flow.dst.ip(), flow.dst.port()))
    }

    /// A raw TCP or h2c connection's first bytes: which mirrors take it, for its whole life
    /// (every mirror takes an h2c connection: their relays decide per stream). The flow is
    /// remembered even if none does, so that it is decided once.
    fn stream_start(&mut self, flow: FlowKey) {
        let pi = self
            .policy_of(flow, Protocol::is_stream)
            .or_else(|| self.policy_of(flow, |p| p == Protocol::Http));
        let Self {
            policies,
            slots,
            flows,
            coin,
            stats,
            ..
        } = self;
        let state = flows.entry(flow).or_default();
        state.streaming = true;
        let Some(active) = pi.map(|pi| &policies[pi]) else {
            stats.dispatch.requests_without_policy.fetch_add(1, Relaxed);
            return;
        };
        for (rule, &id) in active.policy.mirrors.iter().zip(&active.mirrors) {
            let Some(slot) = slots.get_mut(&id) else {
                continue;
            };
            // h2c (prior knowledge, or an `http` policy's connection upgraded): the relay
            // decides per stream.
            let h2c = active.protocol != Protocol::Tcp;
            if h2c || rule.share.takes(coin.draw()) {
                if !h2c {
                    slot.decided.requests_mirrored.fetch_add(1, Relaxed);
                }
                slot.open_requests += 1;
                state.current.push(id);
                if !state.used.contains(&id) {
                    state.used.push(id);
                }
            } else {
                slot.decided.requests_sampled_out.fetch_add(1, Relaxed);
            }
        }
    }

    fn each_current(&mut self, flow: FlowKey, mut send: impl FnMut(&mut Relay)) {
        let Some(state) = self.flows.get(&flow) else {
            return;
        };
        for id in &state.current {
            if let Some(slot) = self.slots.get_mut(id) {
                send(&mut slot.relay);
            }
        }
    }

    /// The flow's request in progress is over for its mirrors.
    fn request_done(&mut self, flow: FlowKey) {
        let Some(state) = self.flows.get_mut(&flow) else {
            return;
        };
        let done = std::mem::take(&mut state.current);
        for id in done {
            if let Some(slot) = self.slots.get_mut(&id) {
                slot.open_requests = slot.open_requests.saturating_sub(1);
            }
            self.retire_if_idle(id);
        }
    }

    /// Gives every relay, removed ones still draining included, the grace period.
    pub async fn shutdown(mut self, grace: Duration) {
        let relays: Vec<Relay> = self.slots.drain().map(|(_, slot)| slot.relay).collect();
        let mut all = tokio::task::JoinSet::new();
        for relay in relays {
            all.spawn(relay.shutdown(grace));
        }
        while all.join_next().await.is_some() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{control::parse, observe::Source};
    use bytes::Bytes;
    use mirror_cores::outcome::EndReason;
    use tokio::{io::AsyncReadExt, net::TcpListener};

    /// A loopback shadow that keeps everything it is sent.
    async fn shadow() -> (String, tokio::task::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let task = tokio::spawn(async move {
            let mut got = Vec::new();
            if let Ok(Ok((mut conn, _))) =
                tokio::time::timeout(Duration::from_secs(3), listener.accept()).await
            {
                let _ =
                    tokio::time::timeout(Duration::from_secs(3), conn.read_to_end(&mut got)).await;
            }
            got
        });
        (addr, task)
    }

    fn config(backend: &str) -> MirrorConfig {
        let text = format!(
            "interfaces: [lo]\npolicies:\n- name: p\n  target: {{address: 10.0.0.2, port: 80}}\n  mirrors:\n  - backend: {backend}\n    requestHeaderModifier: {{set: [{{name: x-v, value: \"{backend}\"}}]}}\n"
        );
        parse(&text, "t").unwrap()
    }

    fn flow(port: u16) -> FlowKey {
        FlowKey {
            src: format!("10.0.0.1:{port}").parse().unwrap(),
            dst: "10.0.0.2:80".parse().unwrap(),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_raw_tcp_connection_is_decided_once_and_relayed_whole() {
        let (taker, got) = shadow().await;
        let text = format!(
            "interfaces: [lo]\npolicies:\n- name: web\n  target: {{address: 10.0.0.2, port: 80}}\n  mirrors:\n  - backend: 127.0.0.1:1\n- name: cache\n  target: {{address: 10.0.0.2, port: 6379}}\n  protocol: tcp\n  mirrors:\n  - backend: {taker}\n  - backend: 127.0.0.1:2\n    percent: 0\n"
        );
        let config = parse(&text, "t").unwrap();
        let mut d = Dispatcher::new(&config, RelayConfig::default(), 0, Duration::from_secs(2));
        let flow = FlowKey {
            src: "10.0.0.1:1000".parse().unwrap(),
            dst: "10.0.0.2:6379".parse().unwrap(),
        };
        for part in [&b"*1\r\n$4\r\n"[..], b"PING\r\n", b"GET / HTTP/1.1\r\n"] {
            d.handle(Event::StreamData {
                flow,
                data: Bytes::from_static(part),
            });
        }
        d.handle(Event::FlowEnd {
            flow,
            reason: EndReason::Fin,
        });
        let stats = d.stats();
        d.shutdown(Duration::from_secs(2)).await;
        assert_eq!(
            got.await.unwrap(),
            b"*1\r\n$4\r\nPING\r\nGET / HTTP/1.1\r\n"
        );
        let mut decided = Vec::new();
        super::super::mirror_stats::PolicySource(stats).visit(&mut |s| {
            let label = s.labels.last().map(|(_, l)| l.clone()).unwrap_or_default();
            if s.value > 0 {
                decided.push((label, s.name));
            }
        });
        // One decision per connection (not per piece), per mirror, under the tcp policy.
        assert!(
            decided.contains(&(format!("cache/{taker}"), "requests_mirrored")),
            "{decided:?}"
        );
        let zero = ("cache/127.0.0.1:2".to_owned(), "requests_sampled_out");
        assert!(decided.contains(&zero), "{decided:?}");
        assert!(
            !decided.iter().any(|(l, _)| l.starts_with("web/")),
            "{decided:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_in_progress_finishes_under_the_config_it_started_with() {
        let (old, old_got) = shadow().await;
        let (new, new_got) = shadow().await;
        let mut d = Dispatcher::new(
            &config(&old),
            RelayConfig::default(),
            0,
            Duration::from_secs(2),
        );
        let head = Bytes::from_static(b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\n");
        let (f1, f2) = (flow(1000), flow(1001));
        d.handle(Event::RequestHead {
            flow: f1,
            head: head.clone(),
        });
        d.reconfigure(&config(&new));
        // Still the old mirror's: its body goes where its head went.
        d.handle(Event::RequestBody {
            flow: f1,
            data: Bytes::from_static(b"hello"),
        });
        d.handle(Event::RequestEnd { flow: f1 });
        d.handle(Event::FlowEnd {
            flow: f1,
            reason: EndReason::Fin,
        });
        // A new request takes the new config.
        d.handle(Event::RequestHead { flow: f2, head });
        d.handle(Event::RequestBody {
            flow: f2,
            data: Bytes::from_static(b"world"),
        });
        d.handle(Event::RequestEnd { flow: f2 });
        d.handle(Event::FlowEnd {
            flow: f2,
            reason: EndReason::Fin,
        });
        let stats = d.stats();
        d.shutdown(Duration::from_secs(2)).await;
        let old_got = String::from_utf8(old_got.await.unwrap()).unwrap();
        let new_got = String::from_utf8(new_got.await.unwrap()).unwrap();
        assert_eq!(
            old_got,
            format!("POST /a HTTP/1.1\r\nHost: h-shadow\r\nContent-Length: 5\r\nx-v: {old}\r\n\r\nhello")
        );
        assert_eq!(
            new_got,
            format!("POST /a HTTP/1.1\r\nHost: h-shadow\r\nContent-Length: 5\r\nx-v: {new}\r\n\r\nworld")
        );
        // The old mirror left the counters once its request was done.
        let mut labels = Vec::new();
        super::super::mirror_stats::PolicySource(stats).visit(&mut |s| {
            if let Some((_, l)) = s.labels.last() {
                labels.push(l.clone());
            }
        });
        assert!(
            labels.iter().all(|l| *l == format!("p/{new}")),
            "{labels:?}"
        );
    }

    /// A client's h2c connection: the preface, then one GET per path, each on its own
    /// stream, HPACK-encoded with the connection's dynamic table.
    fn h2c_bytes(paths: &[&str]) -> Vec<u8> {
        use mirror_cores::http2::frame::{FrameHeader, END_HEADERS, END_STREAM, HEADERS, PREFACE};
        let mut encoder = loona_hpack::Encoder::new();
        let mut out = PREFACE.to_vec();
        for (i, path) in paths.iter().enumerate() {
            let fields: [(&[u8], &[u8]); 4] = [
                (b":method", b"GET"),
                (b":scheme", b"http"),
                (b":authority", b"api"),
                (b":path", path.as_bytes()),
            ];
            let block = encoder.encode(fields);
            let header = FrameHeader {
                len: block.len() as u32,
                kind: HEADERS,
                flags: END_HEADERS | END_STREAM,
                stream: 2 * i as u32 + 1,
            };
            out.extend_from_slice(&header.encode());
            out.extend_from_slice(&block);
        }
        out
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reload_changes_what_an_h2c_mirror_takes_from_the_next_stream_on() {
        let h2 = |path: &str| {
            let text = format!(
                "interfaces: [lo]\npolicies:\n- name: h2\n  target: {{address: 10.0.0.2, port: 80}}\n  protocol: http2\n  matches: [{{path: {{type: PathPrefix, value: {path}}}}}]\n  mirrors:\n  - backend: 127.0.0.1:1\n"
            );
            parse(&text, "t").unwrap()
        };
        let mut d = Dispatcher::new(&h2("/a"), RelayConfig::default(), 0, Duration::from_secs(2));
        let connection = |d: &mut Dispatcher, port: u16, paths: &[&str]| {
            d.handle(Event::StreamData {
                flow: flow(port),
                data: Bytes::from(h2c_bytes(paths)),
            });
            d.handle(Event::FlowEnd {
                flow: flow(port),
                reason: EndReason::Fin,
            });
        };
        let decisions = |d: &Dispatcher| {
            let mut decided = HashMap::new();
            super::super::mirror_stats::PolicySource(d.stats()).visit(&mut |s| {
                if !s.labels.is_empty() {
                    decided.insert(s.name, s.value);
                }
            });
            decided
        };
        connection(&mut d, 1000, &["/a", "/b"]);
        // The relay decides a stream when it decodes its head, and a reload applies to every
        // head decoded after it: wait for the first connection's two decisions.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            let decided = decisions(&d);
            if decided["requests_mirrored"] + decided["requests_not_matched"] == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The same mirror (same policy name and backend) keeps its relay, with the new rule.
        d.reconfigure(&h2("/b"));
        connection(&mut d, 1001, &["/b", "/b", "/a"]);
        let stats = d.stats();
        d.shutdown(Duration::from_secs(2)).await;
        let mut decided = HashMap::new();
        super::super::mirror_stats::PolicySource(stats).visit(&mut |s| {
            if !s.labels.is_empty() {
                decided.insert(s.name, s.value);
            }
        });
        // Before the reload /a taken, /b not; after it, the other way round.
        assert_eq!(decided["requests_mirrored"], 1 + 2, "{decided:?}");
        assert_eq!(decided["requests_not_matched"], 1 + 1, "{decided:?}");
        assert_eq!(decided["requests_sampled_out"], 0, "{decided:?}");
    }
}
