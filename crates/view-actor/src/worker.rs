//! The central worker: hosts one [`ViewActor`] per view it holds the lease of, and one
//! [`Shipper`] per (view, region), following the coordinator's catalog and leases, and reports
//! their progress back (which renews the leases).

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
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};
use tracing::{error, info, warn};

use crate::actor::{ActorStatus, StartRecorder, ViewActor};
use crate::ship::{Backoff, Lease, ShipState, Shipper};
use crate::store::{open_db, stored_view_ids, StoreError, ViewStore};
use crate::wire::schema;
use crate::{Clock, SystemClock};

mod name;
mod report;
use name::{new_session, worker_name};
use report::report_view;

/// How often the worker fetches the catalog and reports progress (which renews its leases).
pub const CATALOG_POLL: Duration = Duration::from_millis(500);
/// A request to the coordinator that takes longer is abandoned.
const COORDINATOR_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum CentralError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("bad coordinator address '{0}': {1}")]
    Address(String, String),
    #[error("bad worker name '{0}': use 1 to 64 letters, digits, '-', '_' or '.'")]
    Name(String),
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
}

pub struct CentralConfig {
    pub coordinator: String,
    pub data_dir: PathBuf,
    /// Names this worker in the coordinator's registry and in status (`None`: the name stored
    /// in the data dir, or a new one stored there).
    pub name: Option<String>,
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
    /// Writes the change log to the view's change topic while another view reads the view.
    sink: Option<RunningSink>,
    /// The change log is truncated up to here (inclusive).
    truncated_to: u64,
    lease: watch::Sender<Lease>,
    /// Whether the actor caught up with the stream (shippers wait for it).
    ready: watch::Receiver<bool>,
    /// How fresh the committed change log is, for the shippers to vouch.
    fresh: watch::Receiver<crate::fresh::Fresh>,
    /// Events counted at the last report, and when: for events/s.
    rate_mark: (u64, Instant),
}

struct RunningShipper {
    state: Arc<Mutex<ShipState>>,
    nodes: watch::Sender<Vec<String>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

struct RunningSink {
    topic: String,
    state: Arc<Mutex<ShipState>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// A view being stopped: the worker still counts it as running until every task has ended,
/// and starts it again only then (one actor per view store).
struct Stopping {
    view_id: u64,
    tasks: Vec<JoinHandle<()>>,
    /// Set when the view was dropped: its state is deleted once its tasks have ended.
    destroy: Option<ViewStore>,
}

/// Who this worker is to the coordinator.
#[derive(Clone)]
struct Identity {
    name: String,
    session: u64,
    coordinator: CoordinatorClient<Channel>,
}

pub async fn run(
    cfg: CentralConfig,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), CentralError> {
    std::fs::create_dir_all(&cfg.data_dir).map_err(|e| StoreError::Corrupt {
        what: "data dir",
        detail: e.to_string(),
    })?;
    let session = new_session();
    let name = worker_name(&cfg.data_dir, cfg.name.clone(), session)?;
    let db = open_db(&cfg.data_dir.join("central"))?;
    let endpoint = Endpoint::from_shared(cfg.coordinator.clone())
        .map_err(|e| CentralError::Address(cfg.coordinator.clone(), e.to_string()))?;
    let mut coordinator = CoordinatorClient::new(
        endpoint
            .connect_timeout(Duration::from_secs(2))
            .timeout(COORDINATOR_TIMEOUT)
            .connect_lazy(),
    );
    let me = Identity {
        name: name.clone(),
        session,
        coordinator: coordinator.clone(),
    };
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let mut views: HashMap<u64, RunningView> = HashMap::new();
    let mut stopping: Vec<Stopping> = Vec::new();
    let mut catalog: Option<pb::Catalog> = None;
    let mut catalog_error_logged = false;
    let mut refused_logged = false;
    let mut lapse_logged = false;
    let mut draining = false;
    // No lease until the coordinator grants one.
    let mut lease_until: Option<Instant> = None;
    let mut leases: HashMap<u64, u64> = HashMap::new();
    // The last answer of the coordinator this worker acted on (reconciled its views with).
    let mut acted_on = 0u64;
    let mut answer = 0u64;
    let latest_report = Arc::new(Mutex::new(pb::CentralReport::default()));
    if let Some(addr) = cfg.metrics_listen {
        let listener = crate::metrics::serve(addr, latest_report.clone(), shutdown.clone());
        tokio::spawn(async move {
            if let Err(e) = listener.await {
                tracing::error!(%addr, error = %e, "serving metrics failed");
            }
        });
    }
    info!(coordinator = %cfg.coordinator, worker = %name, session = format_args!("{session:x}"), "central worker started");
    loop {
        match coordinator.get_catalog(pb::GetCatalogRequest {}).await {
            Ok(resp) => {
                catalog_error_logged = false;
                catalog = Some(resp.into_inner());
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
        finish_stopping(&mut stopping);
        let report = pb::CentralReport {
            worker: name.clone(),
            views: views
                .iter_mut()
                .map(|(id, v)| report_view(*id, v))
                .collect(),
            session,
            draining,
            stopping: stopping.iter().map(|s| s.view_id).collect(),
            acted_on,
        };
        *latest_report.lock().unwrap_or_else(|p| p.into_inner()) = report.clone();
        let sent = Instant::now();
        match coordinator.report_central(report).await {
            Ok(ack) => {
                let ack = ack.into_inner();
                refused_logged = false;
                lease_until = Some(sent + Duration::from_millis(ack.lease_ms));
                leases = ack.leases.iter().map(|l| (l.view_id, l.epoch)).collect();
                answer = ack.answer;
                if ack.drain && !draining {
                    info!(
                        views = views.len(),
                        "draining: the views move to other workers, then this worker exits"
                    );
                    draining = true;
                }
            }
            Err(e) if e.code() == tonic::Code::FailedPrecondition => {
                if !refused_logged {
                    warn!(error = %e.message(), "the coordinator refused this worker's report; running no views until it accepts one");
                    refused_logged = true;
                }
            }
            Err(e) => tracing::debug!(error = %e.message(), "status report failed"),
        }
        let lapsed = lease_until.is_none_or(|u| Instant::now() >= u);
        if lapsed {
            if !views.is_empty() && !lapse_logged {
                warn!(views = views.len(), "the lease lapsed (no answer from the coordinator in time); stopping every view");
                lapse_logged = true;
            }
            leases.clear();
        } else {
            lapse_logged = false;
        }
        if let Some(until) = lease_until {
            for (id, v) in &views {
                if let Some(&epoch) = leases.get(id) {
                    v.lease.send_if_modified(|l| {
                        let renewed = l.epoch == epoch && l.until < until;
                        if renewed {
                            l.until = until;
                        }
                        renewed
                    });
                }
            }
        }
        reconcile(
            &db,
            &clock,
            &me,
            &mut views,
            &mut stopping,
            catalog.as_ref(),
            &leases,
            lease_until,
        );
        acted_on = answer;
        if draining && views.is_empty() && stopping.is_empty() && leases.is_empty() {
            info!("drained: this worker holds no views; exiting");
            break;
        }
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = tokio::time::sleep(CATALOG_POLL) => {}
        }
    }
    let ids: Vec<u64> = views.keys().copied().collect();
    for id in ids {
        if let Some(v) = views.remove(&id) {
            stop_view(id, v, None, &mut stopping);
        }
    }
    for s in stopping.drain(..) {
        for t in s.tasks {
            let _ = t.await;
        }
    }
    info!("central worker stopped");
    Ok(())
}

/// Stops a view's actor and shippers; `destroy` deletes its state once they have ended.
fn stop_view(id: u64, v: RunningView, destroy: Option<ViewStore>, stopping: &mut Vec<Stopping>) {
    v.stop.send_replace(true);
    let mut tasks = vec![v.actor];
    for s in v.shippers.into_values() {
        s.stop.send_replace(true);
        tasks.push(s.task);
    }
    if let Some(s) = v.sink {
        s.stop.send_replace(true);
        tasks.push(s.task);
    }
    stopping.push(Stopping {
        view_id: id,
        tasks,
        destroy,
    });
}

/// Forgets stopped views whose tasks have all ended, deleting a dropped view's state.
fn finish_stopping(stopping: &mut Vec<Stopping>) {
    stopping.retain(|s| {
        if !s.tasks.iter().all(|t| t.is_finished()) {
            return true;
        }
        if let Some(store) = &s.destroy {
            if let Err(e) = store.destroy() {
                error!(error = %e, "deleting a dropped view's state failed");
            }
        }
        false
    });
}

/// The coordinator records where a view starts, so that the view's next owner starts there.
fn start_recorder(me: &Identity, view_id: u64, lease_epoch: u64) -> StartRecorder {
    let me = me.clone();
    Arc::new(move |offsets: Vec<(i32, i64)>| {
        let mut client = me.coordinator.clone();
        let req = pb::RecordStartRequest {
            view_id,
            lease_epoch,
            worker: me.name.clone(),
            session: me.session,
            partitions: offsets
                .into_iter()
                .map(|(partition, offset)| pb::PartitionOffset { partition, offset })
                .collect(),
        };
        async move {
            client
                .record_start(req)
                .await
                .map(|r| {
                    r.into_inner()
                        .partitions
                        .into_iter()
                        .map(|p| (p.partition, p.offset))
                        .collect()
                })
                .map_err(|e| e.message().to_string())
        }
        .boxed()
    })
}

#[allow(clippy::too_many_arguments)]
fn reconcile(
    db: &Arc<rocksdb::DB>,
    clock: &Arc<dyn Clock>,
    me: &Identity,
    views: &mut HashMap<u64, RunningView>,
    stopping: &mut Vec<Stopping>,
    resp: Option<&pb::Catalog>,
    leases: &HashMap<u64, u64>,
    lease_until: Option<Instant>,
) {
    // Views this worker no longer holds: stop them, keeping their state (a consistent prefix
    // of the stream: if the view comes back, it resumes from there).
    let unheld: Vec<u64> = views
        .iter()
        .filter(|(id, v)| leases.get(*id) != Some(&v.lease.borrow().epoch))
        .map(|(id, _)| *id)
        .collect();
    for id in unheld {
        if let Some(v) = views.remove(&id) {
            info!(view = %v.name, "this worker no longer holds the view's lease; stopping it");
            stop_view(id, v, None, stopping);
        }
    }
    let Some(resp) = resp else {
        return;
    };
    let stored: Vec<(u64, String)> = resp.entries.iter().map(|e| (e.id, e.sql.clone())).collect();
    let catalog = match Catalog::load(stored) {
        Ok(mut c) => {
            c.set_identity(resp.catalog_id);
            c
        }
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
            let store = v.store.clone();
            stop_view(id, v, Some(store), stopping);
        }
    }
    // State kept from an earlier lease of a view dropped since (only ids this catalog issued:
    // a coordinator on an empty data dir must not wipe the workers).
    match stored_view_ids(db) {
        Ok(ids) => {
            for id in ids {
                // Only state kept under this catalog (or, kept before catalog identities, with
                // an id it issued).
                let ours = match ViewStore::new(db.clone(), id).catalog_id() {
                    Ok(Some(c)) if resp.catalog_id != 0 => c == resp.catalog_id,
                    Ok(Some(_)) => id < resp.next_id,
                    Ok(None) => id < resp.next_id,
                    Err(e) => {
                        warn!(view_id = id, error = %e, "reading the catalog identity kept with a view's state failed");
                        false
                    }
                };
                if ours
                    && !wanted.contains(&id)
                    && !views.contains_key(&id)
                    && !stopping.iter().any(|s| s.view_id == id)
                {
                    info!(view_id = id, "deleting the state kept for a dropped view");
                    if let Err(e) = ViewStore::new(db.clone(), id).destroy() {
                        error!(view_id = id, error = %e, "deleting a dropped view's state failed");
                    }
                }
            }
        }
        Err(e) => warn!(error = %e, "listing the views kept on disk failed"),
    }

    let Some(until) = lease_until else {
        return;
    };
    for entry in catalog.entries() {
        let Object::View(def) = &entry.object else {
            continue;
        };
        let Some(stream) = catalog.source(&def.stream) else {
            continue;
        };
        let joined = match def.joined_stream() {
            Some(name) => match catalog.stream(name) {
                Some(s) => Some(s.clone()),
                None => continue,
            },
            None => None,
        };
        let Some(&lease_epoch) = leases.get(&entry.id) else {
            continue;
        };
        if !views.contains_key(&entry.id) {
            if stopping.iter().any(|s| s.view_id == entry.id) {
                // Its previous run has not ended yet.
                continue;
            }
            // State kept under the same id by another catalog (a coordinator started anew)
            // is another view's: never resume from it.
            // (A coordinator older than catalog identities sends none: nothing to check.)
            let claimed = if resp.catalog_id == 0 {
                Ok(false)
            } else {
                ViewStore::new(db.clone(), entry.id).claim(resp.catalog_id)
            };
            match claimed {
                Ok(false) => {}
                Ok(true) => {
                    warn!(view = %def.name, view_id = entry.id, "the state kept for this view id was another catalog's view; deleted it, the view starts from its stream")
                }
                Err(e) => {
                    error!(view = %def.name, error = %e, "checking whose view the kept state is failed; not starting the view");
                    continue;
                }
            }
        }
        let view = views.entry(entry.id).or_insert_with(|| {
            info!(view = %def.name, lease_epoch, "this worker holds the view's lease; starting it");
            let store = ViewStore::new(db.clone(), entry.id);
            let status = Arc::new(Mutex::new(ActorStatus::default()));
            let (latest_tx, latest) = watch::channel(0);
            let (stop, stop_rx) = watch::channel(false);
            let (lease, _) = watch::channel(Lease {
                epoch: lease_epoch,
                until,
            });
            let (caught_up, ready) = watch::channel(false);
            let (fresh_tx, fresh) = watch::channel(crate::fresh::Fresh::default());
            let actor = ViewActor {
                view_id: entry.id,
                def: def.clone(),
                stream: stream.clone(),
                joined: joined.clone(),
                store: store.clone(),
                clock: clock.clone(),
                latest: latest_tx,
                status: status.clone(),
                check_interval: crate::actor::PARTITION_CHECK_INTERVAL,
                start: Some(start_recorder(me, entry.id, lease_epoch)),
                caught_up: Some(caught_up),
                fresh: Some(fresh_tx),
            };
            let handle = tokio::spawn(supervise(actor, stop_rx, entry.id));
            RunningView {
                name: def.name.clone(),
                plan: def
                    .plan
                    .explain(&def.input(&stream, joined.as_ref()), &def.outputs),
                store,
                status,
                latest,
                stop,
                actor: handle,
                shippers: HashMap::new(),
                sink: None,
                truncated_to: 0,
                lease,
                ready,
                fresh,
                rate_mark: (0, Instant::now()),
            }
        });
        // The change topic, while another view reads this one.
        let change_stream = catalog
            .is_read_by_a_view(&def.name)
            .then(|| catalog.source(&def.name))
            .flatten();
        // A sink told to stop is kept until its task ended: two sinks never write one topic.
        // One that ended by itself is started again below if a view still reads this one.
        if view.sink.as_ref().is_some_and(|s| s.task.is_finished()) {
            view.sink = None;
        }
        match (view.sink.as_ref().map(|s| *s.stop.borrow()), change_stream) {
            (None, Some(change_stream)) => {
                info!(view = %def.name, topic = %change_stream.topic, "another view reads this view; writing its change log to its change topic");
                let (stop, stop_rx) = watch::channel(false);
                let state = Arc::new(Mutex::new(ShipState::default()));
                let topic = change_stream.topic.clone();
                let sink = crate::sink::Sink {
                    def: def.clone(),
                    stream: change_stream,
                    store: view.store.clone(),
                    latest: view.latest.clone(),
                    lease: view.lease.subscribe(),
                    ready: view.ready.clone(),
                    state: state.clone(),
                    seed: entry.id.wrapping_mul(0x2545_f491_4f6c_dd1d),
                };
                let task = tokio::spawn(sink.run(stop_rx));
                view.sink = Some(RunningSink {
                    topic,
                    state,
                    stop,
                    task,
                });
            }
            (Some(false), None) => {
                info!(view = %def.name, "no view reads this view any more; no longer writing its change topic");
                if let Some(s) = &view.sink {
                    s.stop.send_replace(true);
                }
            }
            _ => {}
        }
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
                        lease: view.lease.subscribe(),
                        ready: view.ready.clone(),
                        fresh: view.fresh.clone(),
                        state: state.clone(),
                        seed: entry.id.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ region.len() as u64,
                    };
                    let task = tokio::spawn(shipper.run(stop_rx));
                    view.shippers.insert(
                        region,
                        RunningShipper {
                            state,
                            nodes: nodes_tx,
                            stop,
                            task,
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
        .map(|s| &s.state)
        .chain(v.sink.as_ref().map(|s| &s.state))
        .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).acked_seq)
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
