//! The central worker: hosts one [`ViewActor`] per view and one [`Shipper`] per (view,
//! region), following the coordinator's catalog, and reports their progress back.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use catalog::{Catalog, Object};
use futures::FutureExt;
use meridian_proto::v1 as pb;
use meridian_proto::v1::coordinator_client::CoordinatorClient;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::Endpoint;
use tracing::{error, info, warn};

use crate::actor::{ActorStatus, ViewActor};
use crate::ship::{Backoff, ShipState, Shipper};
use crate::store::{open_db, StoreError, ViewStore};
use crate::wire::schema;
use crate::{Clock, SystemClock};

/// How often the worker fetches the catalog and reports progress.
pub const CATALOG_POLL: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum CentralError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("bad coordinator address '{0}': {1}")]
    Address(String, String),
}

pub struct CentralConfig {
    pub coordinator: String,
    pub data_dir: PathBuf,
    /// Names this worker in status reports.
    pub name: String,
    /// Change batches kept behind the slowest region's acknowledged position; a region that
    /// falls further behind is resynchronised with a full batch.
    pub log_retain: u64,
    /// Where to serve Prometheus metrics (`/metrics`), if anywhere.
    pub metrics_listen: Option<std::net::SocketAddr>,
}

struct RunningView {
    name: String,
    /// As EXPLAIN prints it, for status.
    plan: String,
    store: ViewStore,
    status: Arc<Mutex<ActorStatus>>,
    latest: watch::Receiver<u64>,
    stop: watch::Sender<bool>,
    actor: JoinHandle<()>,
    shippers: HashMap<String, RunningShipper>,
    /// The change log is truncated up to here (inclusive).
    truncated_to: u64,
}

struct RunningShipper {
    state: Arc<Mutex<ShipState>>,
    nodes: watch::Sender<Vec<String>>,
    stop: watch::Sender<bool>,
}

pub async fn run(
    cfg: CentralConfig,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), CentralError> {
    std::fs::create_dir_all(&cfg.data_dir).map_err(|e| StoreError::Corrupt {
        what: "data dir",
        detail: e.to_string(),
    })?;
    let db = open_db(&cfg.data_dir.join("central"))?;
    let endpoint = Endpoint::from_shared(cfg.coordinator.clone())
        .map_err(|e| CentralError::Address(cfg.coordinator.clone(), e.to_string()))?;
    let mut coordinator = CoordinatorClient::new(
        endpoint
            .connect_timeout(Duration::from_secs(2))
            .connect_lazy(),
    );
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let mut views: HashMap<u64, RunningView> = HashMap::new();
    let mut catalog_error_logged = false;
    let latest_report = Arc::new(Mutex::new(pb::CentralReport::default()));
    if let Some(addr) = cfg.metrics_listen {
        let listener = crate::metrics::serve(addr, latest_report.clone(), shutdown.clone());
        tokio::spawn(async move {
            if let Err(e) = listener.await {
                tracing::error!(%addr, error = %e, "serving metrics failed");
            }
        });
    }
    info!(coordinator = %cfg.coordinator, "central worker started");
    loop {
        match coordinator.get_catalog(pb::GetCatalogRequest {}).await {
            Ok(resp) => {
                catalog_error_logged = false;
                reconcile(&db, &clock, &mut views, resp.into_inner());
            }
            Err(e) if !catalog_error_logged => {
                warn!(error = %e.message(), "cannot fetch the catalog; retrying");
                catalog_error_logged = true;
            }
            Err(_) => {}
        }
        for v in views.values_mut() {
            truncate_log(v, cfg.log_retain);
        }
        let report = pb::CentralReport {
            worker: cfg.name.clone(),
            views: views.iter().map(|(id, v)| report_view(*id, v)).collect(),
        };
        *latest_report.lock().unwrap_or_else(|p| p.into_inner()) = report.clone();
        if let Err(e) = coordinator.report_central(report).await {
            tracing::debug!(error = %e.message(), "status report failed");
        }
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = tokio::time::sleep(CATALOG_POLL) => {}
        }
    }
    for v in views.values() {
        v.stop.send_replace(true);
        for s in v.shippers.values() {
            s.stop.send_replace(true);
        }
    }
    for (_, v) in views.drain() {
        let _ = v.actor.await;
    }
    info!("central worker stopped");
    Ok(())
}

fn reconcile(
    db: &Arc<rocksdb::DB>,
    clock: &Arc<dyn Clock>,
    views: &mut HashMap<u64, RunningView>,
    resp: pb::Catalog,
) {
    let stored: Vec<(u64, String)> = resp.entries.iter().map(|e| (e.id, e.sql.clone())).collect();
    let catalog = match Catalog::load(stored) {
        Ok(c) => c,
        Err(e) => {
            error!(error = %e, "the coordinator's catalog does not load");
            return;
        }
    };
    let regions: HashMap<String, Vec<String>> = resp
        .regions
        .iter()
        .map(|r| {
            (
                r.region.clone(),
                r.nodes.iter().map(|n| n.grpc_addr.clone()).collect(),
            )
        })
        .collect();

    // Views that left the catalog: stop them and delete their state.
    let wanted: Vec<u64> = catalog
        .entries()
        .iter()
        .filter(|e| matches!(e.object, Object::View(_)))
        .map(|e| e.id)
        .collect();
    let gone: Vec<u64> = views
        .keys()
        .filter(|id| !wanted.contains(id))
        .copied()
        .collect();
    for id in gone {
        if let Some(v) = views.remove(&id) {
            info!(view = %v.name, "view dropped; stopping its actor and deleting its state");
            v.stop.send_replace(true);
            for s in v.shippers.values() {
                s.stop.send_replace(true);
            }
            let store = v.store.clone();
            tokio::spawn(async move {
                let _ = v.actor.await;
                if let Err(e) = store.destroy() {
                    error!(error = %e, "deleting a dropped view's state failed");
                }
            });
        }
    }

    for entry in catalog.entries() {
        let Object::View(def) = &entry.object else {
            continue;
        };
        let Some(stream) = catalog.stream(&def.stream) else {
            continue;
        };
        let view = views.entry(entry.id).or_insert_with(|| {
            let store = ViewStore::new(db.clone(), entry.id);
            let status = Arc::new(Mutex::new(ActorStatus::default()));
            let (latest_tx, latest) = watch::channel(0);
            let (stop, stop_rx) = watch::channel(false);
            let actor = ViewActor {
                view_id: entry.id,
                def: def.clone(),
                stream: stream.clone(),
                store: store.clone(),
                clock: clock.clone(),
                latest: latest_tx,
                status: status.clone(),
                check_interval: crate::actor::PARTITION_CHECK_INTERVAL,
            };
            let handle = tokio::spawn(supervise(actor, stop_rx, entry.id));
            RunningView {
                name: def.name.clone(),
                plan: def.plan.explain(stream, &def.outputs),
                store,
                status,
                latest,
                stop,
                actor: handle,
                shippers: HashMap::new(),
                truncated_to: 0,
            }
        });
        let mut targets: Vec<String> = regions
            .keys()
            .filter(|r| def.assigned_to(r))
            .cloned()
            .collect();
        if let Some(named) = &def.regions {
            targets.extend(named.iter().filter(|r| !regions.contains_key(*r)).cloned());
        }
        for region in targets {
            let addrs = regions.get(&region).cloned().unwrap_or_default();
            match view.shippers.get(&region) {
                Some(s) => {
                    s.nodes.send_if_modified(|current| {
                        let changed = *current != addrs;
                        if changed {
                            *current = addrs.clone();
                        }
                        changed
                    });
                }
                None => {
                    let (nodes_tx, nodes) = watch::channel(addrs);
                    let (stop, stop_rx) = watch::channel(false);
                    let state = Arc::new(Mutex::new(ShipState::default()));
                    let shipper = Shipper {
                        region: region.clone(),
                        schema: schema(def, entry.id),
                        def: def.clone(),
                        store: view.store.clone(),
                        latest: view.latest.clone(),
                        nodes,
                        state: state.clone(),
                        seed: entry.id.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ region.len() as u64,
                    };
                    tokio::spawn(shipper.run(stop_rx));
                    view.shippers.insert(
                        region,
                        RunningShipper {
                            state,
                            nodes: nodes_tx,
                            stop,
                        },
                    );
                }
            }
        }
    }
}

/// Drops change batches every region of the view has had for a while.
fn truncate_log(v: &mut RunningView, retain: u64) {
    let Some(min_acked) = v
        .shippers
        .values()
        .map(|s| s.state.lock().unwrap_or_else(|p| p.into_inner()).acked_seq)
        .min()
    else {
        return;
    };
    let upto = min_acked.saturating_sub(retain);
    if upto > v.truncated_to {
        match v.store.truncate_log(upto) {
            Ok(()) => v.truncated_to = upto,
            Err(e) => warn!(view = %v.name, error = %e, "truncating the change log failed"),
        }
    }
}

/// Runs the actor, restarting it from its store after a failure.
async fn supervise(actor: ViewActor, stop: watch::Receiver<bool>, seed: u64) {
    let mut backoff = Backoff::new(seed);
    loop {
        // A panic (a broken invariant) is reported like an error: the actor restarts from the
        // last committed batch instead of leaving the view silently stopped.
        let outcome = std::panic::AssertUnwindSafe(actor.run(stop.clone()))
            .catch_unwind()
            .await;
        let error = match outcome {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e.to_string(),
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                format!("view actor panicked: {what}")
            }
        };
        warn!(view = %actor.def.name, error = %error, "view actor failed; restarting from its stored state");
        actor.status.lock().unwrap_or_else(|p| p.into_inner()).error = error;
        let mut stop = stop.clone();
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(backoff.next_delay().max(Duration::from_millis(500))) => {}
        }
    }
}

fn report_view(view_id: u64, v: &RunningView) -> pb::ViewReport {
    let s = v.status.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut shipping: Vec<pb::ShipStatus> = v
        .shippers
        .iter()
        .map(|(region, sh)| {
            let st = sh.state.lock().unwrap_or_else(|p| p.into_inner()).clone();
            pb::ShipStatus {
                region: region.clone(),
                acked_seq: st.acked_seq,
                error: st.error,
                epoch: st.epoch,
                last_reseed: st.last_reseed,
            }
        })
        .collect();
    shipping.sort_by(|a, b| a.region.cmp(&b.region));
    pb::ViewReport {
        view: v.name.clone(),
        seq: s.seq,
        events: s.events,
        dead_letters: s.dead_letters,
        recent_dead_letters: s
            .recent_dead_letters
            .iter()
            .map(|d| pb::DeadLetter {
                topic: d.topic.clone(),
                partition: d.partition,
                offset: d.offset,
                reason: d.reason.clone(),
            })
            .collect(),
        error: s.error,
        shipping,
        last_batch_at_ms: s.last_batch_at_ms,
        view_id,
        log_first_seq: v.truncated_to + 1,
        source_bytes: s.source_bytes,
        view_rows: s.view_rows,
        view_bytes: s.view_bytes,
        plan: v.plan.clone(),
        late_events: s.late_events,
        watermark_us: s.watermark_us.unwrap_or(0),
        stalled: s
            .stalled
            .iter()
            .map(|st| pb::StalledPartition {
                partition: st.partition,
                offset: st.offset,
                high_watermark: st.high_watermark,
                since_ms: st.since_ms,
            })
            .collect(),
    }
}
