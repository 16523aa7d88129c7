//! A regional node: one member of a region's 3-node Raft group. It replicates the change
//! batches the central tier pushes, applies them to its own DuckDB replica, and serves reads
//! over gRPC and HTTP.
//!
//! [`node`] is the Raft thread (raft-rs `RawNode` over [`storage::RaftStore`] and
//! [`replica::Replica`]); [`service`] and [`http`] are the network shells.

pub mod consistency;
pub mod feed;
pub mod formats;
pub mod http;
pub mod metrics;
pub mod node;
pub mod query;
pub mod replica;
pub mod service;
mod slog_bridge;
pub mod staleness;
pub mod storage;
pub mod subscribe;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use meridian_proto::v1 as pb;
use meridian_proto::v1::coordinator_client::CoordinatorClient;
use tokio::sync::{mpsc, watch, Semaphore};
use tonic::transport::{Endpoint, Server};
use tracing::{debug, info};

use crate::node::{NodeConfig, PEER_QUEUE_MAX};
use crate::service::{RegionService, Shared, TransportService};

/// Makes `span` a child of the sender's span named by a W3C trace context (a push, and the
/// apply of its Raft entry on every node).
pub fn join_trace(span: &tracing::Span, trace_context: &std::collections::HashMap<String, String>) {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    if trace_context.is_empty() {
        return;
    }
    let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(trace_context));
    let _ = span.set_parent(parent);
}

/// Sets failpoints from `MERIDIAN_FAILPOINTS` (`name=action;name=action`, actions as the `fail`
/// crate takes them, such as `1*return` or `panic`), for the fault tests. Unset: nothing.
pub fn failpoints_from_env() -> anyhow::Result<()> {
    let Ok(spec) = std::env::var("MERIDIAN_FAILPOINTS") else {
        return Ok(());
    };
    for part in spec.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, action) = part
            .split_once('=')
            .with_context(|| format!("MERIDIAN_FAILPOINTS entry '{part}' is not name=action"))?;
        fail::cfg(name.trim(), action.trim())
            .map_err(|e| anyhow::anyhow!("MERIDIAN_FAILPOINTS entry '{part}': {e}"))?;
        tracing::warn!(
            failpoint = name.trim(),
            action = action.trim(),
            "failpoint set"
        );
    }
    Ok(())
}

/// How often a node reports itself to the coordinator.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(1);

pub struct RegionConfig {
    pub region: String,
    pub node_id: u64,
    /// gRPC URL of every node of the region, this one included, by node id.
    pub peers: BTreeMap<u64, String>,
    pub grpc_listen: SocketAddr,
    pub http_listen: SocketAddr,
    /// URLs other processes use to reach this node (default: from the listen addresses).
    pub grpc_advertise: String,
    pub http_advertise: String,
    pub data_dir: PathBuf,
    pub coordinator: Option<String>,
    /// Raft log entries kept behind the replica's applied index; older ones are compacted.
    pub log_retain: u64,
    /// Bounds on every read.
    pub query_limits: query::QueryLimits,
    /// DuckDB's memory cap for the replica, such as `1GB` (DuckDB's default when `None`).
    pub replica_memory_max: Option<String>,
}

impl RegionConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            catalog::valid_region_name(&self.region),
            "--region '{}' must be letters, digits, '-' or '_'",
            self.region
        );
        anyhow::ensure!(self.node_id > 0, "--node-id must be above 0");
        anyhow::ensure!(self.log_retain > 0, "--raft-log-retain must be above 0");
        anyhow::ensure!(
            !self.query_limits.timeout.is_zero(),
            "--query-timeout-ms must be above 0"
        );
        anyhow::ensure!(
            self.query_limits.rows_max > 0 && self.query_limits.bytes_max > 0,
            "--query-rows-max and --query-bytes-max must be above 0"
        );
        anyhow::ensure!(
            self.peers.contains_key(&self.node_id),
            "--peers must include this node's id {}",
            self.node_id
        );
        anyhow::ensure!(
            self.peers.len() % 2 == 1,
            "--peers lists {} nodes; a Raft group needs an odd number (3 is usual)",
            self.peers.len()
        );
        Ok(())
    }
}

/// Runs the node until `shutdown` flips.
pub async fn run(cfg: RegionConfig, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    cfg.validate()?;
    let mut outbox = HashMap::new();
    let mut senders = Vec::new();
    for (&id, addr) in &cfg.peers {
        if id == cfg.node_id {
            continue;
        }
        let (tx, rx) = mpsc::channel(PEER_QUEUE_MAX);
        outbox.insert(id, tx);
        senders.push((id, addr.clone(), rx));
    }
    let incarnation = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let node_cfg = NodeConfig {
        id: cfg.node_id,
        peers: cfg.peers.keys().copied().collect(),
        data_dir: cfg.data_dir.clone(),
        region: cfg.region.clone(),
        log_retain: cfg.log_retain,
        replica_memory_max: cfg.replica_memory_max.clone(),
    };
    // DuckDB allows one database instance per file in a process, so readers use connections
    // cloned from the replica's own.
    let (handle, thread, reader) =
        node::start(node_cfg, outbox, incarnation).context("starting the raft node")?;
    for (id, addr, rx) in senders {
        tokio::spawn(service::peer_sender(id, addr, rx, handle.clone()));
    }
    let shared = Shared {
        node: handle.clone(),
        region: cfg.region.clone(),
        node_id: cfg.node_id,
        peers: Arc::new(cfg.peers.clone()),
        grpc_addr: cfg.grpc_advertise.clone(),
        http_addr: cfg.http_advertise.clone(),
        reader: Arc::new(Mutex::new(reader)),
        metrics: Arc::default(),
        started_at_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64),
        queries: Arc::new(Semaphore::new(service::QUERIES_MAX)),
        subscribers: Arc::new(Semaphore::new(subscribe::SUBSCRIBERS_MAX)),
        limits: cfg.query_limits,
    };

    let grpc_listener = tokio::net::TcpListener::bind(cfg.grpc_listen)
        .await
        .with_context(|| format!("binding gRPC on {}", cfg.grpc_listen))?;
    let http_listener = tokio::net::TcpListener::bind(cfg.http_listen)
        .await
        .with_context(|| format!("binding HTTP on {}", cfg.http_listen))?;
    info!(region = %cfg.region, node = cfg.node_id, grpc = %cfg.grpc_listen, http = %cfg.http_listen, "regional node listening");

    let mut sd = shutdown.clone();
    let (health, health_service) = tonic_health::server::health_reporter();
    tokio::spawn(health_loop(shared.clone(), health, shutdown.clone()));
    let grpc = Server::builder()
        .add_service(health_service)
        .add_service(
            pb::region_server::RegionServer::new(RegionService(shared.clone()))
                .max_decoding_message_size(service::MESSAGE_BYTES_MAX),
        )
        .add_service(
            pb::raft_transport_server::RaftTransportServer::new(TransportService(shared.clone()))
                .max_decoding_message_size(service::MESSAGE_BYTES_MAX),
        )
        // Raft messages and pushes are small: Nagle's algorithm would hold them back.
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(grpc_listener).with_nodelay(Some(true)),
            async move {
                let _ = sd.changed().await;
            },
        );
    let mut sd = shutdown.clone();
    let http = axum::serve(http_listener, http::router(shared.clone())).with_graceful_shutdown(
        async move {
            let _ = sd.changed().await;
        },
    );
    if let Some(coordinator) = cfg.coordinator.clone() {
        tokio::spawn(report_loop(coordinator, shared.clone(), shutdown.clone()));
    }
    tokio::spawn(repair_loop(shared.clone(), shutdown.clone()));
    let grpc = tokio::spawn(grpc);
    let http = tokio::spawn(async move { http.await });
    let _ = shutdown.changed().await;
    let _ = grpc.await;
    let _ = http.await;
    drop(shared);
    let _ = handle.send(node::Request::Stop).await;
    drop(handle);
    let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    info!("regional node stopped");
    Ok(())
}

/// How often the gRPC health service's status is brought up to date.
const HEALTH_EVERY: Duration = Duration::from_secs(1);

/// Keeps the standard gRPC health service (`grpc.health.v1.Health`) saying what `/readyz`
/// says: `meridian.v1.Region` (and the server as a whole, `""`) is SERVING while the node
/// serves reads, knows its leader and has caught up, NOT_SERVING otherwise.
async fn health_loop(
    shared: Shared,
    reporter: tonic_health::server::HealthReporter,
    mut shutdown: watch::Receiver<bool>,
) {
    use tonic_health::ServingStatus;
    loop {
        let ready = match shared.status().await {
            Ok(st) => http::readiness(&st).is_ok(),
            Err(_) => false,
        };
        let status = if ready {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        for service in ["", "meridian.v1.Region"] {
            reporter.set_service_status(service, status).await;
        }
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(HEALTH_EVERY) => {}
        }
    }
}

/// A node that has not served reads for this long (its replica cannot apply a committed
/// entry) fetches a peer's replica to replace its own.
const REPAIR_AFTER: Duration = Duration::from_secs(5);
/// A snapshot fetch from a peer that takes longer is abandoned (the next peer is tried).
const REPAIR_FETCH_TIMEOUT: Duration = Duration::from_secs(60);

/// Repairs a stalled replica from a peer's snapshot: the peer's replica at its applied index
/// is what applying the same committed entries gives, so it may replace this node's.
async fn repair_loop(shared: Shared, mut shutdown: watch::Receiver<bool>) {
    use meridian_proto::v1::raft_transport_client::RaftTransportClient;
    let mut stalled_since: Option<std::time::Instant> = None;
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        if shared.node.unavailable().is_none() {
            stalled_since = None;
            continue;
        }
        let since = *stalled_since.get_or_insert_with(std::time::Instant::now);
        if since.elapsed() < REPAIR_AFTER {
            continue;
        }
        for (&id, addr) in shared.peers.iter().filter(|(&id, _)| id != shared.node_id) {
            let Ok(endpoint) = Endpoint::from_shared(addr.clone()) else {
                continue;
            };
            let mut client = RaftTransportClient::new(
                endpoint
                    .connect_timeout(Duration::from_secs(2))
                    .connect_lazy(),
            )
            .max_decoding_message_size(service::MESSAGE_BYTES_MAX);
            let fetched = tokio::time::timeout(
                REPAIR_FETCH_TIMEOUT,
                client.fetch_snapshot(pb::FetchSnapshotRequest {}),
            )
            .await;
            let snap = match fetched {
                Ok(Ok(r)) => r.into_inner(),
                Ok(Err(e)) => {
                    debug!(peer = id, error = %e.message(), "peer has no snapshot for repair");
                    continue;
                }
                Err(_) => {
                    debug!(peer = id, "snapshot fetch for repair timed out");
                    continue;
                }
            };
            info!(
                peer = id,
                index = snap.index,
                bytes = snap.data.len(),
                "fetched a peer's replica to repair this node's"
            );
            let _ = shared
                .node
                .send(node::Request::Repair {
                    index: snap.index,
                    data: snap.data,
                })
                .await;
            break;
        }
        // One attempt per REPAIR_AFTER, not one per second.
        stalled_since = Some(std::time::Instant::now());
    }
}

async fn report_loop(coordinator: String, shared: Shared, mut shutdown: watch::Receiver<bool>) {
    let Ok(endpoint) = Endpoint::from_shared(coordinator.clone()) else {
        tracing::error!(coordinator = %coordinator, "bad coordinator address");
        return;
    };
    let mut client = CoordinatorClient::new(
        endpoint
            .connect_timeout(Duration::from_secs(2))
            .connect_lazy(),
    );
    loop {
        if let Ok(status) = shared.status().await {
            match client.report_node(status).await {
                Ok(ack) => {
                    let ack = ack.into_inner();
                    let live = ack.live_views;
                    let next_view_id = ack.next_view_id;
                    let _ = shared
                        .node
                        .send(node::Request::Prune { live, next_view_id })
                        .await;
                }
                Err(e) => debug!(error = %e.message(), "report to the coordinator failed"),
            }
        }
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(REPORT_INTERVAL) => {}
        }
    }
}
