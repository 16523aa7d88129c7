//! The coordinator's gRPC service.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use catalog::{ast::ObjectKind, Catalog, Change, Object};
use meridian_proto::v1 as pb;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::placement::{Change as PlacementChange, Placement};
use crate::store::CatalogStore;
pub use crate::topics::{kafka_topic_check, kafka_topic_delete, TopicCheck, TopicDelete, Topics};

/// A node that has not reported for this long is listed as stale but kept.
const NODE_REPORT_STALE: Duration = Duration::from_secs(10);

struct NodeSeen {
    status: pb::NodeStatusResponse,
    at: Instant,
}

pub struct CoordinatorService {
    /// Held across the topic check so that statements apply one at a time, in order.
    catalog: tokio::sync::Mutex<Catalog>,
    store: Arc<CatalogStore>,
    topics: Topics,
    nodes: Mutex<BTreeMap<(String, u64), NodeSeen>>,
    views: Mutex<BTreeMap<String, pb::ViewReport>>,
    /// Which worker runs which view, under which lease epoch.
    placement: Mutex<Placement>,
    /// The catalog's views (name, id), as of the last statement: read under the `placement`
    /// lock, so that placement never sees an older list than a decision it already made, and
    /// never waits on a statement in progress (which holds `catalog` across a broker check).
    view_ids: Mutex<Vec<(String, u64)>>,
    /// The catalog's identity ([`CatalogStore::identity`]).
    identity: u64,
}

impl CoordinatorService {
    pub fn open(store: CatalogStore, topics: Option<Topics>) -> anyhow::Result<CoordinatorService> {
        Self::open_with_lease(store, topics, crate::placement::DEFAULT_LEASE)
    }

    /// `lease`: how long a central worker keeps its views without renewing its lease.
    pub fn open_with_lease(
        store: CatalogStore,
        topics: Option<Topics>,
        lease: Duration,
    ) -> anyhow::Result<CoordinatorService> {
        let mut catalog = Catalog::load(store.load()?)
            .map_err(|e| anyhow::anyhow!("stored catalog does not load: {e}"))?;
        catalog.reserve_ids_below(store.next_id()?);
        let identity = store.identity(crate::store::draw_identity)?;
        catalog.set_identity(identity);
        let grants = store.load_grants()?;
        info!(
            entries = catalog.entries().len(),
            leases = grants.len(),
            "catalog loaded"
        );
        let view_ids = Self::view_ids(&catalog);
        // Change logs were stamped with the time in milliseconds before epochs came from
        // leases: a view's first lease epoch is above any such epoch.
        let epoch_floor = (now_ms().max(0) as u64 >> 32) + 1;
        Ok(CoordinatorService {
            catalog: tokio::sync::Mutex::new(catalog),
            store: Arc::new(store),
            topics: topics.unwrap_or_else(Topics::kafka),
            nodes: Mutex::new(BTreeMap::new()),
            views: Mutex::new(BTreeMap::new()),
            placement: Mutex::new(Placement::new(lease, Instant::now(), grants, epoch_floor)),
            view_ids: Mutex::new(view_ids),
            identity,
        })
    }

    fn view_ids(catalog: &Catalog) -> Vec<(String, u64)> {
        catalog
            .entries()
            .iter()
            .filter(|e| matches!(e.object, Object::View(_)))
            .map(|e| (e.object.name().to_string(), e.id))
            .collect()
    }

    fn refresh_view_ids(&self, catalog: &Catalog) {
        *self.view_ids.lock().unwrap_or_else(|p| p.into_inner()) = Self::view_ids(catalog);
    }

    fn placement(&self) -> std::sync::MutexGuard<'_, Placement> {
        self.placement.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Plans placement, persists what it grants (synced), then makes it visible.
    fn place(&self, placement: &mut Placement, views: &[u64]) -> Result<(), Status> {
        let changes = placement.plan(views, Instant::now());
        if changes.is_empty() {
            return Ok(());
        }
        let persist: Vec<(u64, Option<&crate::placement::Grant>)> = changes
            .iter()
            .filter_map(|c| match c {
                PlacementChange::Grant { view, grant } => Some((*view, Some(grant))),
                PlacementChange::Forget { view } => Some((*view, None)),
                PlacementChange::Release { .. } => None,
            })
            .collect();
        self.store
            .put_grants(&persist)
            .map_err(|e| Status::internal(e.to_string()))?;
        for c in &changes {
            match c {
                PlacementChange::Grant { view, grant } => info!(
                    view_id = view,
                    worker = %grant.holder.worker,
                    epoch = grant.epoch,
                    "view assigned"
                ),
                PlacementChange::Release { view } => {
                    info!(view_id = view, "view released from its worker, to move")
                }
                PlacementChange::Forget { .. } => {}
            }
        }
        placement.apply(&changes);
        Ok(())
    }

    fn entries(catalog: &Catalog) -> Vec<pb::CatalogEntry> {
        catalog
            .entries()
            .iter()
            .map(|e| pb::CatalogEntry {
                kind: e.object.kind().to_string(),
                name: e.object.name().to_string(),
                sql: e.sql.clone(),
                id: e.id,
            })
            .collect()
    }

    fn regions(&self) -> Vec<pb::RegionNodes> {
        let nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        let mut by_region: BTreeMap<String, Vec<pb::NodeAddress>> = BTreeMap::new();
        for ((region, id), seen) in nodes.iter() {
            by_region
                .entry(region.clone())
                .or_default()
                .push(pb::NodeAddress {
                    node_id: *id,
                    grpc_addr: seen.status.grpc_addr.clone(),
                    http_addr: seen.status.http_addr.clone(),
                });
        }
        by_region
            .into_iter()
            .map(|(region, nodes)| pb::RegionNodes { region, nodes })
            .collect()
    }

    /// Persists a planned CREATE under the next id, then applies it.
    fn create(
        &self,
        catalog: &mut Catalog,
        sql: &str,
        change: Change,
        message: String,
    ) -> Result<String, Status> {
        let id = catalog.next_id();
        self.store
            .put(id, sql)
            .map_err(|e| Status::internal(e.to_string()))?;
        info!(id, "{message}");
        catalog.apply(id, sql, change);
        self.refresh_view_ids(catalog);
        Ok(message)
    }

    /// Deletes the change topic of a view that was dropped or replaced (`change_log`: the
    /// stream its readers read, if it had a key), if there is one: no reader can read it any
    /// more. Says what happened, for the statement's answer; a failure leaves the statement
    /// done and tells the user to delete the topic.
    async fn delete_change_topic(&self, change_log: Option<catalog::StreamDef>) -> String {
        let Some(stream) = change_log else {
            return String::new();
        };
        let delete = self.topics.delete.clone();
        let topic = stream.topic.clone();
        match tokio::task::spawn_blocking(move || delete(&stream)).await {
            Ok(Ok(true)) => {
                info!(topic = %topic, "deleted a change topic");
                format!("; deleted its change topic '{topic}'")
            }
            Ok(Ok(false)) => String::new(),
            Ok(Err(e)) => {
                warn!(topic = %topic, error = %e, "deleting a change topic failed");
                format!("; its change topic '{topic}' could not be deleted ({e}): delete it on the brokers")
            }
            Err(e) => format!(
                "; its change topic '{topic}' could not be deleted ({e}): delete it on the brokers"
            ),
        }
    }

    async fn execute_sql(&self, sql: &str) -> Result<pb::ExecuteResponse, Status> {
        let mut catalog = self.catalog.lock().await;
        let change = catalog
            .plan(sql)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        // A dropped or replaced view's change topic, deleted once the catalog is released.
        let mut change_log = None;
        let message = match &change {
            Change::Create(Object::Stream(s)) => {
                let check = self.topics.check.clone();
                let stream = s.clone();
                tokio::task::spawn_blocking(move || check(&stream))
                    .await
                    .map_err(|e| Status::internal(e.to_string()))?
                    .map_err(Status::failed_precondition)?;
                let msg = format!("created stream '{}'", s.name);
                self.create(&mut catalog, sql, change, msg)?
            }
            Change::Create(Object::KvStream(k)) => {
                let msg = format!(
                    "created stream '{}' ({}); views read it once a view writes INTO it",
                    k.name, k.mode
                );
                self.create(&mut catalog, sql, change, msg)?
            }
            Change::Create(Object::View(v)) => {
                let msg = format!("created materialized view '{}'", v.name);
                self.create(&mut catalog, sql, change, msg)?
            }
            Change::Replace {
                replaces,
                object: Object::View(v),
            } => {
                let id = catalog.next_id();
                self.store
                    .replace(*replaces, id, sql)
                    .map_err(|e| Status::internal(e.to_string()))?;
                let msg = format!("replaced materialized view '{}'; regions keep serving the old one until the new one has caught up with its stream, then switch to it at once", v.name);
                info!(id, replaces, name = %v.name, "replaced view");
                self.views
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&v.name);
                change_log = catalog.source(&v.name);
                catalog.apply(id, sql, change.clone());
                self.refresh_view_ids(&catalog);
                msg
            }
            Change::Replace { .. } => {
                return Err(Status::internal("only a view can be replaced"));
            }
            Change::Drop { name } => {
                let entry = catalog
                    .get(name)
                    .ok_or_else(|| Status::not_found(format!("'{name}' does not exist")))?;
                let (id, kind) = (entry.id, entry.object.kind());
                self.store
                    .delete(id)
                    .map_err(|e| Status::internal(e.to_string()))?;
                info!(name = %name, kind, "dropped");
                let msg = format!("dropped {kind} '{name}'");
                if kind == "view" {
                    self.views
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(name);
                }
                change_log = (kind == "view").then(|| catalog.source(name)).flatten();
                catalog.apply(id, sql, change);
                self.refresh_view_ids(&catalog);
                msg
            }
            Change::Show(kind) => {
                let (columns, rows): (Vec<&str>, Vec<pb::TextRow>) = match kind {
                    ObjectKind::Stream => (
                        vec!["name", "topic", "brokers", "data_format", "columns"],
                        catalog
                            .entries()
                            .iter()
                            .filter_map(|e| match &e.object {
                                Object::Stream(s) => Some(pb::TextRow {
                                    cells: vec![
                                        s.name.clone(),
                                        s.topic.clone(),
                                        s.brokers.clone(),
                                        format!("{:?}", s.format),
                                        s.columns
                                            .iter()
                                            .map(|c| format!("{} {}", c.name, c.declared))
                                            .collect::<Vec<_>>()
                                            .join(", "),
                                    ],
                                }),
                                Object::KvStream(k) => {
                                    let source = catalog.source(&k.name);
                                    Some(pb::TextRow {
                                        cells: vec![
                                            k.name.clone(),
                                            source
                                                .as_ref()
                                                .map_or_else(String::new, |s| s.topic.clone()),
                                            source
                                                .as_ref()
                                                .map_or_else(String::new, |s| s.brokers.clone()),
                                            match catalog.writer_of(&k.name) {
                                                Some(w) => format!(
                                                    "{}, written by view {}",
                                                    k.mode, w.name
                                                ),
                                                None => format!(
                                                    "{}, no view writes INTO it yet",
                                                    k.mode
                                                ),
                                            },
                                            k.columns
                                                .iter()
                                                .map(|c| format!("{} {}", c.name, c.declared))
                                                .collect::<Vec<_>>()
                                                .join(", "),
                                        ],
                                    })
                                }
                                _ => None,
                            })
                            .collect(),
                    ),
                    ObjectKind::View => (
                        vec!["name", "stream", "regions", "columns"],
                        catalog
                            .views()
                            .map(|v| pb::TextRow {
                                cells: vec![
                                    v.name.clone(),
                                    v.stream.clone(),
                                    v.regions
                                        .as_ref()
                                        .map_or_else(|| "all".to_string(), |r| r.join(",")),
                                    v.outputs
                                        .iter()
                                        .map(|o| o.name.clone())
                                        .collect::<Vec<_>>()
                                        .join(", "),
                                ],
                            })
                            .collect(),
                    ),
                };
                return Ok(pb::ExecuteResponse {
                    message: format!("{} rows", rows.len()),
                    columns: columns.into_iter().map(String::from).collect(),
                    rows,
                });
            }
            Change::Explain(plan) => {
                return Ok(pb::ExecuteResponse {
                    message: String::new(),
                    columns: vec!["plan".to_string()],
                    rows: plan
                        .lines()
                        .map(|l| pb::TextRow {
                            cells: vec![l.to_string()],
                        })
                        .collect(),
                });
            }
            Change::Nothing(why) => format!("nothing to do: {why}"),
        };
        drop(catalog);
        let message = message + &self.delete_change_topic(change_log).await;
        Ok(pb::ExecuteResponse {
            message,
            columns: vec![],
            rows: vec![],
        })
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[tonic::async_trait]
impl pb::coordinator_server::Coordinator for CoordinatorService {
    async fn execute(
        &self,
        req: Request<pb::ExecuteRequest>,
    ) -> Result<Response<pb::ExecuteResponse>, Status> {
        let sql = req.into_inner().sql;
        self.execute_sql(&sql).await.map(Response::new)
    }

    async fn get_catalog(
        &self,
        _req: Request<pb::GetCatalogRequest>,
    ) -> Result<Response<pb::Catalog>, Status> {
        let (entries, next_id) = {
            let catalog = self.catalog.lock().await;
            (Self::entries(&catalog), catalog.next_id())
        };
        Ok(Response::new(pb::Catalog {
            entries,
            regions: self.regions(),
            next_id,
            catalog_id: self.identity,
        }))
    }

    async fn report_node(
        &self,
        req: Request<pb::NodeStatusResponse>,
    ) -> Result<Response<pb::NodeReportAck>, Status> {
        let status = req.into_inner();
        if !catalog::valid_region_name(&status.region) || status.node_id == 0 {
            return Err(Status::invalid_argument(format!(
                "bad node report: region '{}', node {}",
                status.region, status.node_id
            )));
        }
        let region = status.region.clone();
        {
            let mut nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
            nodes.insert(
                (status.region.clone(), status.node_id),
                NodeSeen {
                    status,
                    at: Instant::now(),
                },
            );
        }
        let catalog = self.catalog.lock().await;
        let placement = self.placement();
        let live_views = catalog
            .entries()
            .iter()
            .filter_map(|e| match &e.object {
                Object::View(v) if v.assigned_to(&region) => Some(pb::LiveView {
                    name: v.name.clone(),
                    view_id: e.id,
                    schema: Some(meridian_proto::view_schema(v, e.id)),
                    lease_epoch: placement.grant(e.id).map_or(0, |g| g.epoch),
                }),
                _ => None,
            })
            .collect();
        Ok(Response::new(pb::NodeReportAck {
            live_views,
            next_view_id: catalog.next_id(),
        }))
    }

    async fn report_central(
        &self,
        req: Request<pb::CentralReport>,
    ) -> Result<Response<pb::ReportAck>, Status> {
        let report = req.into_inner();
        let running: std::collections::BTreeSet<u64> = report
            .views
            .iter()
            .map(|v| v.view_id)
            .chain(report.stopping.iter().copied())
            .collect();
        let sizes: Vec<(u64, u64)> = report
            .views
            .iter()
            .map(|v| (v.view_id, v.view_rows))
            .collect();
        let (leases, lease_ms, drain, current, answer) = {
            let mut placement = self.placement();
            let current = self
                .view_ids
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            let view_ids: Vec<u64> = current.iter().map(|(_, id)| *id).collect();
            placement
                .heartbeat(
                    &report.worker,
                    report.session,
                    report.draining,
                    running,
                    &sizes,
                    report.acted_on,
                    Instant::now(),
                )
                .map_err(Status::failed_precondition)?;
            self.place(&mut placement, &view_ids)?;
            let (answer, leases) = placement.answer(&report.worker, report.session);
            (
                leases,
                placement.lease().as_millis() as u64,
                placement.draining(&report.worker),
                current,
                answer,
            )
        };
        let mut views = self.views.lock().unwrap_or_else(|p| p.into_inner());
        for mut v in report.views {
            // A report sent before a DROP may arrive after it, or after the view was created
            // again under the same name; a worker that no longer holds the view's lease is
            // not its owner.
            let current_view = current
                .iter()
                .any(|(name, id)| *name == v.view && *id == v.view_id);
            if let Some(&(_, epoch)) = leases.iter().find(|(id, _)| *id == v.view_id) {
                if current_view {
                    v.owner = report.worker.clone();
                    v.lease_epoch = epoch;
                    views.insert(v.view.clone(), v);
                }
            }
        }
        Ok(Response::new(pb::ReportAck {
            leases: leases
                .into_iter()
                .map(|(view_id, epoch)| pb::ViewLease { view_id, epoch })
                .collect(),
            lease_ms,
            drain,
            answer,
        }))
    }

    async fn record_start(
        &self,
        req: Request<pb::RecordStartRequest>,
    ) -> Result<Response<pb::RecordStartResponse>, Status> {
        let r = req.into_inner();
        let holds = self.placement().grant(r.view_id).is_some_and(|g| {
            g.epoch == r.lease_epoch && g.holder.worker == r.worker && g.holder.session == r.session
        });
        if !holds {
            return Err(Status::failed_precondition(format!(
                "worker '{}' does not hold view {}'s lease at epoch {}",
                r.worker, r.view_id, r.lease_epoch
            )));
        }
        let offsets: Vec<(i32, i64)> = r
            .partitions
            .iter()
            .map(|p| (p.partition, p.offset))
            .collect();
        let store = self.store.clone();
        let view_id = r.view_id;
        let recorded = tokio::task::spawn_blocking(move || store.record_start(view_id, &offsets))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(pb::RecordStartResponse {
            partitions: recorded
                .into_iter()
                .map(|(partition, offset)| pb::PartitionOffset { partition, offset })
                .collect(),
        }))
    }

    async fn drain(
        &self,
        req: Request<pb::DrainRequest>,
    ) -> Result<Response<pb::DrainResponse>, Status> {
        let worker = req.into_inner().worker;
        let n = self
            .placement()
            .drain(&worker, Instant::now())
            .map_err(Status::not_found)?;
        info!(worker = %worker, views = n, "draining a central worker");
        Ok(Response::new(pb::DrainResponse {
            message: format!(
                "draining '{worker}': its {n} view(s) move to other workers, then it exits"
            ),
        }))
    }

    async fn status(
        &self,
        _req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        let mut catalog = Self::entries(&*self.catalog.lock().await);
        for e in &mut catalog {
            e.sql = catalog::redact_secrets(&e.sql);
        }
        let regions = {
            let nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
            let mut by_region: BTreeMap<String, Vec<pb::NodeReport>> = BTreeMap::new();
            for ((region, _), seen) in nodes.iter() {
                let age = seen.at.elapsed();
                let mut status = seen.status.clone();
                if age > NODE_REPORT_STALE {
                    status.role = "unreachable".into();
                }
                by_region
                    .entry(region.clone())
                    .or_default()
                    .push(pb::NodeReport {
                        status: Some(status),
                        report_age_ms: age.as_millis() as i64,
                    });
            }
            by_region
                .into_iter()
                .map(|(region, nodes)| pb::RegionStatus { region, nodes })
                .collect()
        };
        let views = {
            let names: Vec<(&str, u64)> = catalog
                .iter()
                .filter(|e| e.kind == "view")
                .map(|e| (e.name.as_str(), e.id))
                .collect();
            let reports = self.views.lock().unwrap_or_else(|p| p.into_inner());
            let placement = self.placement();
            names
                .iter()
                .map(|(n, id)| {
                    let mut r = reports
                        .get(*n)
                        .filter(|r| r.view_id == *id)
                        .cloned()
                        .unwrap_or_else(|| pb::ViewReport {
                            view: n.to_string(),
                            view_id: *id,
                            error: "no central worker has reported this view yet".into(),
                            ..Default::default()
                        });
                    // The assignment as it stands, which may be newer than the last report:
                    // a report from a former owner says nothing about the view now.
                    match placement.grant(*id) {
                        Some(g) => {
                            if r.owner != g.holder.worker || r.lease_epoch != g.epoch {
                                r = pb::ViewReport {
                                    view: n.to_string(),
                                    view_id: *id,
                                    plan: r.plan,
                                    error: format!(
                                        "assigned to worker '{}' (lease {}), which has not reported it yet",
                                        g.holder.worker, g.epoch
                                    ),
                                    ..Default::default()
                                };
                            }
                            r.owner = g.holder.worker.clone();
                            r.lease_epoch = g.epoch;
                        }
                        None => {
                            r.owner.clear();
                            r.lease_epoch = 0;
                        }
                    }
                    r
                })
                .collect()
        };
        let workers = {
            let placement = self.placement();
            let names: BTreeMap<u64, String> = catalog
                .iter()
                .filter(|e| e.kind == "view")
                .map(|e| (e.id, e.name.clone()))
                .collect();
            placement
                .workers(Instant::now())
                .into_iter()
                .map(|w| pb::WorkerStatus {
                    name: w.name,
                    session: w.session,
                    report_age_ms: w.age.as_millis() as i64,
                    live: w.live,
                    draining: w.draining,
                    views: w
                        .views
                        .iter()
                        .filter_map(|v| names.get(v).cloned())
                        .collect(),
                })
                .collect()
        };
        Ok(Response::new(pb::ClusterStatus {
            regions,
            views,
            catalog,
            now_ms: now_ms(),
            workers,
        }))
    }
}

#[cfg(test)]
mod tests;
