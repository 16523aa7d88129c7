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

use crate::store::{lease_of, StoreError, ViewStore};
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
    /// The region's applied seq in this change log's epoch (0 while it holds another epoch).
    pub acked_seq: u64,
    pub error: String,
    /// The change log's epoch as this shipper last used it.
    pub epoch: u64,
    /// Why the region was last re-seeded with a full batch or a new epoch began (empty: never).
    pub last_reseed: String,
}

/// The view's lease as the worker holds it: its epoch, and until when it is valid (measured
/// from when the renewing report was sent, on the monotonic clock, which keeps running while
/// the process is paused). Nothing is pushed once `until` has passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    pub epoch: u64,
    pub until: tokio::time::Instant,
}

impl Lease {
    pub fn valid(&self) -> bool {
        tokio::time::Instant::now() < self.until
    }
}

/// A region's applied position of a view, as its leader answered a push.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RegionPosition {
    pub seq: u64,
    pub epoch: u64,
    pub checksum: u64,
}

/// What the shipper does next, given the region's answer.
#[derive(Debug, PartialEq)]
pub enum Plan {
    /// Ship the change log from the region's seq.
    Continue,
    /// Send a full batch: the region holds an older epoch.
    Full(String),
    /// The central state was rolled back or diverged from what the region applied: start a new
    /// epoch above `above`, then send a full batch.
    NewEpoch { above: u64, why: String },
    /// The region holds an epoch of a newer lease: another worker owns the view now. Push
    /// nothing more.
    Fenced(String),
}

/// Decides how to continue with a region (sans IO). `central_seq` and `central_checksum` are
/// the change log's last seq and its checksum, read at one instant.
pub fn plan(
    epoch: u64,
    central_seq: u64,
    central_checksum: u64,
    region: &RegionPosition,
    need_full: &str,
) -> Plan {
    let fresh = region.epoch == 0 && region.seq == 0 && region.checksum == 0;
    if lease_of(region.epoch) > lease_of(epoch) {
        return Plan::Fenced(format!(
            "the region holds epoch {:#x} of lease {}, newer than this worker's lease {}: the view moved to another worker",
            region.epoch,
            lease_of(region.epoch),
            lease_of(epoch)
        ));
    }
    if region.epoch > epoch {
        return Plan::NewEpoch {
            above: region.epoch,
            why: format!(
                "the region holds epoch {}, newer than this central state's {epoch}",
                region.epoch
            ),
        };
    }
    if region.epoch < epoch {
        if fresh && need_full.is_empty() {
            return Plan::Continue;
        }
        return Plan::Full(format!(
            "the region holds epoch {}, older than {epoch}",
            region.epoch
        ));
    }
    if region.seq > central_seq {
        return Plan::NewEpoch {
            above: epoch,
            why: format!(
                "the region applied seq {} but the central change log ends at {central_seq}: the central state was rolled back",
                region.seq
            ),
        };
    }
    if region.seq == central_seq && region.checksum != central_checksum {
        return Plan::NewEpoch {
            above: epoch,
            why: format!(
                "the region's checksum at seq {} differs from the central change log's",
                region.seq
            ),
        };
    }
    if !need_full.is_empty() {
        return Plan::NewEpoch {
            above: epoch,
            why: need_full.to_string(),
        };
    }
    Plan::Continue
}

/// Runs store work on a blocking thread; a panic there is reported like the store's errors.
pub(crate) async fn on_store_thread<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, String> {
    match tokio::task::spawn_blocking(work).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(e) => Err(format!("store work failed: {e}")),
    }
}

pub struct Shipper {
    pub region: String,
    pub def: ViewDef,
    pub schema: pb::ViewSchema,
    pub store: ViewStore,
    pub latest: watch::Receiver<u64>,
    /// gRPC addresses of the region's nodes, kept fresh from the coordinator.
    pub nodes: watch::Receiver<Vec<String>>,
    /// The view's lease, renewed by the worker.
    pub lease: watch::Receiver<Lease>,
    /// Whether the view caught up with its stream (see `ViewActor::caught_up`).
    pub ready: watch::Receiver<bool>,
    /// How fresh the committed change log is (see [`crate::fresh`]): sent with every push.
    pub fresh: watch::Receiver<crate::fresh::Fresh>,
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
            let mut acked: Option<RegionPosition> = None;
            let mut want_full = false;
            let lease_epoch = self.lease.borrow().epoch;
            let mut epoch = loop {
                let store = self.store.clone();
                match on_store_thread(move || store.epoch(lease_epoch)).await {
                    Ok(Some(e)) => break e,
                    Ok(None) => self.set(|s| s.error = format!("this worker's lease {lease_epoch} of the view is older than one its state has seen; pushing nothing")),
                    Err(e) => self.set(|s| s.error = e),
                }
                tokio::select! {
                    _ = shutdown.changed() => return,
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                }
            };
            self.set(|s| s.epoch = epoch);
            // A state rebuilt from the stream is behind what the region may hold from the
            // view's previous owner: nothing is shipped before it caught up.
            while !*self.ready.borrow() {
                self.set(|s| s.error = "catching up with the stream before shipping".into());
                tokio::select! {
                    _ = shutdown.changed() => return,
                    _ = self.ready.changed() => {}
                }
            }
            self.set(|s| s.error.clear());
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
                let from = match &acked {
                    Some(a) if want_full => Some(a.seq),
                    Some(a) if a.seq < *self.latest.borrow() => Some(a.seq),
                    _ => None,
                };
                let batches = match from {
                    Some(a) => {
                        let store = self.store.clone();
                        let def = self.def.clone();
                        let full = want_full;
                        let read = move || -> Result<Vec<pb::ChangeBatch>, StoreError> {
                            if !full {
                                let batches = store.read_log(a + 1, PUSH_BATCHES_MAX)?;
                                if !batches.is_empty() {
                                    return Ok(batches);
                                }
                            }
                            // A full batch was asked for, or the region is behind the change
                            // log we still keep.
                            Ok(vec![full_batch(&store, &def)?])
                        };
                        match on_store_thread(read).await {
                            Ok(mut b) => {
                                if b.first().is_some_and(|b| b.full) && !want_full {
                                    info!(applied_seq = a, seq = b[0].seq, rows = b[0].changes.len(), "region is behind the kept change log; sending a full batch");
                                }
                                for batch in &mut b {
                                    batch.epoch = epoch;
                                }
                                b
                            }
                            Err(e) => {
                                self.set(|s| s.error = e);
                                tokio::time::sleep(backoff.next_delay()).await;
                                continue;
                            }
                        }
                    }
                    None => Vec::new(),
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
                // A worker whose lease lapsed (paused, cut off from the coordinator) pushes
                // nothing: another worker may own the view by now.
                if !self.lease.borrow().valid() {
                    self.set(|s| s.error = "the view's lease lapsed; pushing nothing until it is renewed".into());
                    tokio::select! {
                        _ = shutdown.changed() => return,
                        _ = self.lease.changed() => {}
                        _ = tokio::time::sleep(IDLE_POLL) => {}
                    }
                    continue;
                }
                let push_span = ship_span(&addr, &batches);
                let fresh = *self.fresh.borrow();
                let request = pb::PushRequest {
                    schema: Some(self.schema.clone()),
                    batches,
                    trace_context: trace_context(&push_span),
                    drop_view: false,
                    fresh: (fresh.at_ms > 0).then_some(pb::Freshness {
                        seq: fresh.seq,
                        epoch,
                        at_ms: fresh.at_ms,
                    }),
                };
                let mut client = client;
                // Not beyond the lease: a push still in flight when it ends is abandoned.
                let remaining = self.lease.borrow().until.saturating_duration_since(tokio::time::Instant::now());
                let result = tokio::time::timeout(PUSH_TIMEOUT.min(remaining), client.push(request)).instrument(push_span).await;
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
                        let region = RegionPosition {
                            seq: resp.applied_seq,
                            epoch: resp.applied_epoch,
                            checksum: resp.applied_checksum,
                        };
                        if acked.is_none() {
                            info!(node = %addr, applied_seq = region.seq, applied_epoch = region.epoch, "shipping from the region's position");
                        }
                        leader = Some(addr);
                        backoff.reset();
                        let store = self.store.clone();
                        let meta = match on_store_thread(move || store.load_meta()).await {
                            Ok(m) => m,
                            Err(e) => {
                                self.set(|s| s.error = e);
                                tokio::time::sleep(backoff.next_delay()).await;
                                continue;
                            }
                        };
                        want_full = false;
                        match plan(epoch, meta.seq, meta.checksum, &region, &resp.need_full) {
                            Plan::Continue => {}
                            Plan::Full(why) => {
                                info!(applied_seq = region.seq, applied_epoch = region.epoch, epoch, reason = %why, "re-seeding the region with a full batch");
                                self.set(|s| s.last_reseed = why);
                                want_full = true;
                            }
                            Plan::Fenced(why) => {
                                warn!(applied_epoch = region.epoch, epoch, reason = %why, "fenced: pushing nothing more");
                                self.set(|s| s.error = why);
                                tokio::select! {
                                    _ = shutdown.changed() => return,
                                    _ = tokio::time::sleep(BACKOFF_MAX) => {}
                                }
                                continue;
                            }
                            Plan::NewEpoch { above, why } => {
                                let store = self.store.clone();
                                match on_store_thread(move || store.bump_epoch(lease_epoch, above)).await {
                                    Ok(None) => {
                                        let why = format!("the region holds epoch {above:#x}, beyond this worker's lease {lease_epoch}: the view moved to another worker");
                                        warn!(reason = %why, "fenced: pushing nothing more");
                                        self.set(|s| s.error = why);
                                        tokio::select! {
                                            _ = shutdown.changed() => return,
                                            _ = tokio::time::sleep(BACKOFF_MAX) => {}
                                        }
                                        continue;
                                    }
                                    Ok(Some(e)) => {
                                        warn!(applied_seq = region.seq, applied_epoch = region.epoch, old_epoch = epoch, new_epoch = e, reason = %why, "change log diverged from a region; starting a new epoch and re-seeding");
                                        epoch = e;
                                        self.set(|s| {
                                            s.epoch = e;
                                            s.last_reseed = why;
                                        });
                                        want_full = true;
                                    }
                                    Err(e) => {
                                        self.set(|s| s.error = e);
                                        tokio::time::sleep(backoff.next_delay()).await;
                                        continue;
                                    }
                                }
                            }
                        }
                        let in_epoch = region.epoch == epoch;
                        acked = Some(region.clone());
                        self.set(|s| {
                            s.acked_seq = if in_epoch { region.seq } else { 0 };
                            s.error.clear();
                        });
                        // Nothing to send until the view commits a batch past the region's.
                        if !want_full && region.seq >= *self.latest.borrow() {
                            tokio::select! {
                                _ = shutdown.changed() => return,
                                _ = self.latest.changed() => {}
                                // News of freshness goes out at once (the region's leader
                                // bounds how often it records it).
                                _ = self.fresh.changed() => {}
                                _ = tokio::time::sleep(IDLE_POLL) => {}
                            }
                        }
                    }
                    Ok(Err(status)) if status.code() == tonic::Code::FailedPrecondition => {
                        // Refused for good as sent (a dropped or replaced view id, a schema
                        // that differs): retrying at once would only repeat it.
                        warn!(node = %addr, error = %status.message(), "push refused");
                        self.set(|s| s.error = format!("{addr}: {}", status.message()));
                        tokio::select! {
                            _ = shutdown.changed() => return,
                            _ = tokio::time::sleep(BACKOFF_MAX) => {}
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
    let rows = crate::core::Finisher::new(def)
        .and_then(|mut f| crate::core::all_rows(def, &groups, &mut f))
        .map_err(|detail| StoreError::Corrupt {
            what: "view rows",
            detail,
        })?;
    Ok(pb::ChangeBatch {
        view: def.name.clone(),
        seq: meta.seq,
        changes: rows.iter().map(change_to_wire).collect(),
        produced_at_ms: meta.last_batch_at_ms,
        full: true,
        checksum: meta.checksum,
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

    #[test]
    fn plan_continues_reseeds_or_starts_a_new_epoch() {
        let at = |seq, epoch, checksum| RegionPosition {
            seq,
            epoch,
            checksum,
        };
        // A fresh region takes the change log from seq 1.
        assert_eq!(plan(100, 5, 55, &at(0, 0, 0), ""), Plan::Continue);
        // Same epoch, behind, or caught up with the same checksum.
        assert_eq!(plan(100, 5, 55, &at(3, 100, 33), ""), Plan::Continue);
        assert_eq!(plan(100, 5, 55, &at(5, 100, 55), ""), Plan::Continue);
        // An older epoch is re-seeded without a new epoch.
        assert!(matches!(plan(100, 5, 55, &at(9, 90, 1), ""), Plan::Full(_)));
        // The region is ahead of the central change log: rolled back.
        assert!(matches!(
            plan(100, 5, 55, &at(9, 100, 1), ""),
            Plan::NewEpoch { above: 100, .. }
        ));
        // Same seq, other contents.
        assert!(matches!(
            plan(100, 5, 55, &at(5, 100, 54), ""),
            Plan::NewEpoch { above: 100, .. }
        ));
        // The region could not continue the history it was sent.
        assert!(matches!(
            plan(100, 5, 55, &at(3, 100, 33), "diverged"),
            Plan::NewEpoch { above: 100, .. }
        ));
        // A region holding a newer epoch than this central state: go above it.
        assert!(matches!(
            plan(100, 5, 55, &at(1, 200, 7), ""),
            Plan::NewEpoch { above: 200, .. }
        ));
        // A fresh region told to take a full batch gets one.
        assert!(matches!(plan(100, 5, 55, &at(0, 0, 0), "x"), Plan::Full(_)));
        // A region holding an epoch of a newer lease: the view moved; nothing is pushed, not
        // even a new epoch, however the histories compare.
        use crate::store::first_epoch;
        for region in [at(1, first_epoch(3), 7), at(9, first_epoch(3) + 4, 1)] {
            assert!(matches!(
                plan(first_epoch(2) + 9, 5, 55, &region, ""),
                Plan::Fenced(_)
            ));
        }
        // An older lease's epoch in the region is re-seeded under this one.
        assert!(matches!(
            plan(first_epoch(3), 5, 55, &at(9, first_epoch(2) + 9, 1), ""),
            Plan::Full(_)
        ));
    }
}
