//! Fan-out: ships one view's change log to one region over gRPC, from the position the
//! region's leader acknowledges, following leader hints and backing off on failure.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meridian_proto::v1 as pb;
use meridian_proto::v1::region_client::RegionClient;
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint};
use tracing::{debug, info, info_span, warn, Instrument};

use crate::core::ViewCore;
use crate::store::{StoreError, ViewStore};
use crate::wire::change_to_wire;
use catalog::ViewDef;

/// Most batches in one Push: bounds the request size and the Raft entry it becomes.
pub const PUSH_BATCHES_MAX: usize = 64;
/// A Push that takes longer is abandoned and retried (the region may have lost its leader).
pub const PUSH_TIMEOUT: Duration = Duration::from_secs(10);
/// With nothing to send, the shipper still asks the region for its position this often.
pub const IDLE_POLL: Duration = Duration::from_secs(1);
pub const BACKOFF_MIN: Duration = Duration::from_millis(50);
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Exponential backoff with full jitter from a seeded generator, so tests can replay it.
#[derive(Clone, Debug)]
pub struct Backoff {
    current: Duration,
    rng: u64,
}

impl Backoff {
    pub fn new(seed: u64) -> Backoff {
        Backoff {
            current: BACKOFF_MIN,
            rng: seed | 1,
        }
    }

    pub fn reset(&mut self) {
        self.current = BACKOFF_MIN;
    }

    /// The next delay: uniform in [current/2, current], then current doubles up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        // xorshift64
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let half = self.current.as_millis() as u64 / 2;
        let delay = Duration::from_millis(half + self.rng % (half + 1));
        self.current = (self.current * 2).min(BACKOFF_MAX);
        delay
    }
}

#[derive(Clone, Debug, Default)]
pub struct ShipState {
    pub acked_seq: u64,
    pub error: String,
}

pub struct Shipper {
    pub region: String,
    pub def: ViewDef,
    pub schema: pb::ViewSchema,
    pub store: ViewStore,
    pub latest: watch::Receiver<u64>,
    /// gRPC addresses of the region's nodes, kept fresh from the coordinator.
    pub nodes: watch::Receiver<Vec<String>>,
    pub state: Arc<Mutex<ShipState>>,
    pub seed: u64,
}

impl Shipper {
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let span = info_span!("ship", view = %self.schema.view, region = %self.region);
        async move {
            let mut clients: HashMap<String, RegionClient<Channel>> = HashMap::new();
            let mut backoff = Backoff::new(self.seed);
            let mut leader: Option<String> = None;
            let mut next_node = 0usize;
            let mut acked: Option<u64> = None;
            loop {
                if *shutdown.borrow() {
                    return;
                }
                let nodes = self.nodes.borrow().clone();
                let Some(addr) = leader.clone().or_else(|| (!nodes.is_empty()).then(|| nodes[next_node % nodes.len()].clone())) else {
                    self.set(|s| s.error = format!("no nodes known for region '{}'", self.region));
                    tokio::select! {
                        _ = shutdown.changed() => return,
                        _ = self.nodes.changed() => continue,
                        _ = tokio::time::sleep(IDLE_POLL) => continue,
                    }
                };
                let batches = match acked {
                    Some(a) if a < *self.latest.borrow() => {
                        let store = self.store.clone();
                        let def = self.def.clone();
                        let read = move || -> Result<Vec<pb::ChangeBatch>, StoreError> {
                            let batches = store.read_log(a + 1, PUSH_BATCHES_MAX)?;
                            if batches.is_empty() {
                                // The region is behind the change log we still keep.
                                return Ok(vec![full_batch(&store, &def)?]);
                            }
                            Ok(batches)
                        };
                        match tokio::task::spawn_blocking(read).await {
                            Ok(Ok(b)) => {
                                if b.first().is_some_and(|b| b.full) {
                                    info!(applied_seq = a, seq = b[0].seq, rows = b[0].changes.len(), "region is behind the kept change log; sending a full batch");
                                }
                                b
                            }
                            Ok(Err(e)) => {
                                self.set(|s| s.error = e.to_string());
                                tokio::time::sleep(backoff.next_delay()).await;
                                continue;
                            }
                            Err(e) => {
                                warn!(error = %e, "reading the change log panicked");
                                continue;
                            }
                        }
                    }
                    _ => Vec::new(),
                };
                let client = match clients.get(&addr) {
                    Some(c) => c.clone(),
                    None => match Endpoint::from_shared(addr.clone()) {
                        Ok(e) => {
                            let c = RegionClient::new(e.connect_timeout(Duration::from_secs(2)).connect_lazy());
                            clients.insert(addr.clone(), c.clone());
                            c
                        }
                        Err(e) => {
                            self.set(|s| s.error = format!("bad node address '{addr}': {e}"));
                            leader = None;
                            next_node += 1;
                            tokio::time::sleep(backoff.next_delay()).await;
                            continue;
                        }
                    },
                };
                let n_batches = batches.len();
                let push_span = ship_span(&addr, &batches);
                let request = pb::PushRequest {
                    schema: Some(self.schema.clone()),
                    batches,
                    trace_context: trace_context(&push_span),
                    drop_view: false,
                };
                let mut client = client;
                let result = tokio::time::timeout(PUSH_TIMEOUT, client.push(request)).instrument(push_span).await;
                match result {
                    Ok(Ok(resp)) => {
                        let resp = resp.into_inner();
                        if let Some(nl) = resp.not_leader {
                            debug!(node = %addr, leader = %nl.leader_addr, "not the leader");
                            if nl.leader_addr.is_empty() || Some(&nl.leader_addr) == leader.as_ref() {
                                leader = None;
                                next_node += 1;
                                tokio::time::sleep(backoff.next_delay()).await;
                            } else {
                                leader = Some(nl.leader_addr);
                            }
                            continue;
                        }
                        if acked != Some(resp.applied_seq) {
                            debug!(applied_seq = resp.applied_seq, batches = n_batches, "region acknowledged");
                        }
                        if acked.is_none() {
                            info!(node = %addr, applied_seq = resp.applied_seq, "shipping from the region's position");
                        }
                        acked = Some(resp.applied_seq);
                        leader = Some(addr);
                        backoff.reset();
                        self.set(|s| {
                            s.acked_seq = resp.applied_seq;
                            s.error.clear();
                        });
                        if resp.applied_seq >= *self.latest.borrow() {
                            tokio::select! {
                                _ = shutdown.changed() => return,
                                _ = self.latest.changed() => {}
                                _ = tokio::time::sleep(IDLE_POLL) => {}
                            }
                        }
                    }
                    Ok(Err(status)) => {
                        warn!(node = %addr, error = %status.message(), "push failed");
                        self.set(|s| s.error = format!("{addr}: {}", status.message()));
                        leader = None;
                        next_node += 1;
                        tokio::time::sleep(backoff.next_delay()).await;
                    }
                    Err(_) => {
                        warn!(node = %addr, "push timed out");
                        self.set(|s| s.error = format!("{addr}: push timed out after {PUSH_TIMEOUT:?}"));
                        leader = None;
                        next_node += 1;
                        tokio::time::sleep(backoff.next_delay()).await;
                    }
                }
            }
        }
        .instrument(span)
        .await
    }

    fn set(&self, f: impl FnOnce(&mut ShipState)) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut s);
    }
}

/// The span of one push. It continues the trace of the first batch's consume-and-aggregate
/// span, so that one trace runs from Kafka to every replica.
pub fn ship_span(node: &str, batches: &[pb::ChangeBatch]) -> tracing::Span {
    let first_seq = batches.first().map_or(0, |b| b.seq);
    let span = info_span!("ship_batches", node = %node, batches = batches.len(), first_seq);
    if let Some(parent) = batches
        .first()
        .map(|b| &b.trace_context)
        .filter(|c| !c.is_empty())
    {
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        let _ = span.set_parent(opentelemetry::global::get_text_map_propagator(|p| {
            p.extract(parent)
        }));
    }
    span
}

/// Every row of the view at its last sequence, as one full batch.
pub fn full_batch(store: &ViewStore, def: &ViewDef) -> Result<pb::ChangeBatch, StoreError> {
    let (meta, groups) = store.consistent_state()?;
    let core = ViewCore::new(def.clone(), Vec::new(), groups);
    Ok(pb::ChangeBatch {
        view: def.name.clone(),
        seq: meta.seq,
        changes: core.all_rows().iter().map(change_to_wire).collect(),
        produced_at_ms: meta.last_batch_at_ms,
        full: true,
        ..Default::default()
    })
}

/// The W3C trace context of `span`, for the region to continue the trace (empty when no
/// OpenTelemetry pipeline is installed).
pub fn trace_context(span: &tracing::Span) -> HashMap<String, String> {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let mut carrier = HashMap::new();
    let cx = span.context();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut carrier));
    carrier
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_the_cap_and_resets() {
        let mut b = Backoff::new(42);
        let delays: Vec<Duration> = (0..12).map(|_| b.next_delay()).collect();
        assert!(delays[0] <= BACKOFF_MIN && delays[0] >= BACKOFF_MIN / 2);
        assert!(delays.iter().all(|d| *d <= BACKOFF_MAX));
        assert!(delays[11] >= BACKOFF_MAX / 2, "reaches the cap: {delays:?}");
        b.reset();
        assert!(b.next_delay() <= BACKOFF_MIN);
        let mut same = Backoff::new(42);
        assert_eq!(
            (0..12).map(|_| same.next_delay()).collect::<Vec<_>>(),
            delays,
            "a seed replays"
        );
    }
}
