//! The coordinator's gRPC service.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use catalog::{ast::ObjectKind, Catalog, Change, Object};
use meridian_proto::v1 as pb;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;
use tonic::{Request, Response, Status};
use tracing::info;

use crate::store::CatalogStore;

/// A metadata request to a stream's brokers, at CREATE, may take this long.
const TOPIC_CHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// A node that has not reported for this long is listed as stale but kept.
const NODE_REPORT_STALE: Duration = Duration::from_secs(10);

/// Checks that a stream's topic exists before the stream is accepted. Tests of the catalog
/// rules replace it; the shipped path asks the brokers.
pub type TopicCheck = Arc<dyn Fn(&catalog::StreamDef) -> Result<(), String> + Send + Sync>;

pub fn kafka_topic_check() -> TopicCheck {
    Arc::new(|stream: &catalog::StreamDef| {
        let (brokers, topic) = (stream.brokers.as_str(), stream.topic.as_str());
        let mut config = ClientConfig::new();
        // The stream's own options (security), so that the check connects as the view will.
        for (k, v) in &stream.kafka_options {
            config.set(k, v);
        }
        let consumer: BaseConsumer = config
            .set("bootstrap.servers", brokers)
            .set("group.id", "meridian-coordinator")
            .create()
            .map_err(|e| format!("cannot create a Kafka client for brokers '{brokers}': {e}"))?;
        let md = consumer
            .fetch_metadata(Some(topic), TOPIC_CHECK_TIMEOUT)
            .map_err(|e| format!("cannot reach brokers '{brokers}': {e}"))?;
        match md.topics().iter().find(|t| t.name() == topic) {
            Some(t) if t.error().is_none() && !t.partitions().is_empty() => Ok(()),
            _ => Err(format!("topic '{topic}' does not exist on brokers '{brokers}'; create it first (Meridian does not auto-create topics)")),
        }
    })
}

struct NodeSeen {
    status: pb::NodeStatusResponse,
    at: Instant,
}

pub struct CoordinatorService {
    /// Held across the topic check so that statements apply one at a time, in order.
    catalog: tokio::sync::Mutex<Catalog>,
    store: Arc<CatalogStore>,
    topic_check: TopicCheck,
    nodes: Mutex<BTreeMap<(String, u64), NodeSeen>>,
    views: Mutex<BTreeMap<String, pb::ViewReport>>,
}

impl CoordinatorService {
    pub fn open(
        store: CatalogStore,
        topic_check: Option<TopicCheck>,
    ) -> anyhow::Result<CoordinatorService> {
        let mut catalog = Catalog::load(store.load()?)
            .map_err(|e| anyhow::anyhow!("stored catalog does not load: {e}"))?;
        catalog.reserve_ids_below(store.next_id()?);
        info!(entries = catalog.entries().len(), "catalog loaded");
        Ok(CoordinatorService {
            catalog: tokio::sync::Mutex::new(catalog),
            store: Arc::new(store),
            topic_check: topic_check.unwrap_or_else(kafka_topic_check),
            nodes: Mutex::new(BTreeMap::new()),
            views: Mutex::new(BTreeMap::new()),
        })
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
        Ok(message)
    }

    async fn execute_sql(&self, sql: &str) -> Result<pb::ExecuteResponse, Status> {
        let mut catalog = self.catalog.lock().await;
        let change = catalog
            .plan(sql)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let message = match &change {
            Change::Create(Object::Stream(s)) => {
                let check = self.topic_check.clone();
                let stream = s.clone();
                tokio::task::spawn_blocking(move || check(&stream))
                    .await
                    .map_err(|e| Status::internal(e.to_string()))?
                    .map_err(Status::failed_precondition)?;
                let msg = format!("created stream '{}'", s.name);
                self.create(&mut catalog, sql, change, msg)?
            }
            Change::Create(Object::View(v)) => {
                let msg = format!("created materialized view '{}'", v.name);
                self.create(&mut catalog, sql, change, msg)?
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
                catalog.apply(id, sql, change);
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
        let entries = Self::entries(&*self.catalog.lock().await);
        Ok(Response::new(pb::Catalog {
            entries,
            regions: self.regions(),
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
        let live_views = catalog
            .entries()
            .iter()
            .filter_map(|e| match &e.object {
                Object::View(v) if v.assigned_to(&region) => Some(pb::LiveView {
                    name: v.name.clone(),
                    view_id: e.id,
                    schema: Some(meridian_proto::view_schema(v, e.id)),
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
        let current: Vec<(String, u64)> = self
            .catalog
            .lock()
            .await
            .entries()
            .iter()
            .map(|e| (e.object.name().to_string(), e.id))
            .collect();
        let mut views = self.views.lock().unwrap_or_else(|p| p.into_inner());
        for v in report.views {
            // A report sent before a DROP may arrive after it, or after the view was created
            // again under the same name.
            if current
                .iter()
                .any(|(name, id)| *name == v.view && *id == v.view_id)
            {
                views.insert(v.view.clone(), v);
            }
        }
        Ok(Response::new(pb::ReportAck {}))
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
            let names: Vec<&str> = catalog
                .iter()
                .filter(|e| e.kind == "view")
                .map(|e| e.name.as_str())
                .collect();
            let reports = self.views.lock().unwrap_or_else(|p| p.into_inner());
            names
                .iter()
                .map(|n| {
                    reports.get(*n).cloned().unwrap_or_else(|| pb::ViewReport {
                        view: n.to_string(),
                        error: "no central worker has reported this view yet".into(),
                        ..Default::default()
                    })
                })
                .collect()
        };
        Ok(Response::new(pb::ClusterStatus {
            regions,
            views,
            catalog,
            now_ms: now_ms(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::coordinator_server::Coordinator;

    #[tokio::test]
    async fn statements_persist_and_missing_topics_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let check: TopicCheck = Arc::new(|s: &catalog::StreamDef| {
            let t = s.topic.as_str();
            if t == "orders" {
                Ok(())
            } else {
                Err(format!("topic '{t}' does not exist"))
            }
        });
        let stream = "CREATE EXTERNAL STREAM orders(id int64, region string) SETTINGS type='kafka', brokers='b:1', topic='orders', data_format='Debezium', primary_key='id'";
        let view = "CREATE MATERIALIZED VIEW by_region AS SELECT region, count() AS n FROM orders GROUP BY region";
        {
            let svc = CoordinatorService::open(
                CatalogStore::open(dir.path()).expect("open"),
                Some(check.clone()),
            )
            .expect("service");
            let exec =
                |sql: &str| svc.execute(Request::new(pb::ExecuteRequest { sql: sql.into() }));
            exec(stream).await.expect("stream");
            exec(view).await.expect("view");
            let err = exec("CREATE EXTERNAL STREAM x(raw string) SETTINGS type='kafka', brokers='b:1', topic='missing'").await.expect_err("no topic");
            assert!(
                err.message().contains("topic 'missing' does not exist"),
                "{}",
                err.message()
            );
            let err = exec(
                "CREATE MATERIALIZED VIEW v2 AS SELECT regin, count() FROM orders GROUP BY regin",
            )
            .await
            .expect_err("bad column");
            assert_eq!(err.code(), tonic::Code::InvalidArgument);
        }
        let check_again = check.clone();
        let svc =
            CoordinatorService::open(CatalogStore::open(dir.path()).expect("reopen"), Some(check))
                .expect("service");
        let cat = svc
            .get_catalog(Request::new(pb::GetCatalogRequest {}))
            .await
            .expect("catalog")
            .into_inner();
        assert_eq!(
            cat.entries
                .iter()
                .map(|e| (e.kind.as_str(), e.name.as_str()))
                .collect::<Vec<_>>(),
            vec![("stream", "orders"), ("view", "by_region")]
        );
        // Dropping the newest entry and creating it again gives a new id, across a restart too.
        let exec = |sql: &str| svc.execute(Request::new(pb::ExecuteRequest { sql: sql.into() }));
        exec("DROP MATERIALIZED VIEW by_region")
            .await
            .expect("drop");
        drop(svc);
        let svc = CoordinatorService::open(
            CatalogStore::open(dir.path()).expect("reopen"),
            Some(check_again),
        )
        .expect("service");
        svc.execute(Request::new(pb::ExecuteRequest { sql: view.into() }))
            .await
            .expect("create again");
        let cat = svc
            .get_catalog(Request::new(pb::GetCatalogRequest {}))
            .await
            .expect("catalog")
            .into_inner();
        assert_eq!(
            cat.entries.iter().map(|e| e.id).collect::<Vec<_>>(),
            vec![1, 3],
            "id 2 is not reused"
        );
    }
}
