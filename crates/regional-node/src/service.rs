//! gRPC glue: the `Region` and `RaftTransport` services, the peer senders, and the reporter
//! that tells the coordinator about this node.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use duckdb::Connection;
use meridian_proto::v1 as pb;
use meridian_proto::v1::raft_transport_client::RaftTransportClient;
use protobuf::Message as _;
use raft::prelude::Message as RaftMessage;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tonic::transport::Endpoint;
use tonic::{Request as TRequest, Response, Status};
use tracing::{debug, info_span, Instrument};

use crate::node::{NodeHandle, NodeState, Outgoing, PushOutcome, Request};
use crate::query::{self, QueryError, QueryResult};

/// Queries running at once on one node: each holds a DuckDB connection and a blocking thread.
pub const QUERIES_MAX: usize = 16;
/// Largest gRPC message a node takes: a Raft snapshot carries a whole replica.
pub const MESSAGE_BYTES_MAX: usize = 512 << 20;
/// A send to a peer (a snapshot included) that takes longer is given up; Raft retries.
const PEER_SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// Raft messages sent to a peer in one RPC.
const PEER_BATCH_MAX: usize = 256;
/// A push waits this long for its entry to commit and apply before telling the sender to retry.
const PUSH_APPLY_TIMEOUT: Duration = Duration::from_secs(8);

/// What the services share.
#[derive(Clone)]
pub struct Shared {
    pub node: NodeHandle,
    pub region: String,
    pub node_id: u64,
    /// gRPC address of every node of the region, this one included.
    pub peers: Arc<BTreeMap<u64, String>>,
    pub grpc_addr: String,
    pub http_addr: String,
    pub reader: Arc<Mutex<Connection>>,
    /// When this process started, so that status can tell a restarted node's reports apart.
    pub started_at_ms: i64,
    pub metrics: Arc<crate::metrics::QueryMetrics>,
    pub queries: Arc<Semaphore>,
}

impl Shared {
    pub async fn state(&self) -> Result<NodeState, Status> {
        let (tx, rx) = oneshot::channel();
        self.node
            .send(Request::Status { reply: tx })
            .await
            .map_err(Status::unavailable)?;
        rx.await
            .map_err(|_| Status::unavailable("raft thread gone"))
    }

    pub async fn status(&self) -> Result<pb::NodeStatusResponse, Status> {
        let st = self.state().await?;
        let mut positions: Vec<pb::ViewPosition> = st
            .positions
            .iter()
            .map(|(v, p)| pb::ViewPosition {
                view: v.clone(),
                applied_seq: p.seq,
                produced_at_ms: p.produced_at_ms,
                applied_at_ms: p.applied_at_ms,
                view_id: p.view_id,
            })
            .collect();
        positions.sort_by(|a, b| a.view.cmp(&b.view));
        Ok(pb::NodeStatusResponse {
            region: self.region.clone(),
            node_id: self.node_id,
            role: st.role,
            term: st.term,
            leader_id: st.leader_id,
            commit_index: st.commit_index,
            applied_index: st.applied_index,
            positions,
            grpc_addr: self.grpc_addr.clone(),
            http_addr: self.http_addr.clone(),
            log_first_index: st.log_first_index,
            started_at_ms: self.started_at_ms,
        })
    }

    /// Runs a read-only query on a blocking thread.
    pub async fn query(&self, sql: String) -> Result<QueryResult, QueryError> {
        let _permit = self
            .queries
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| QueryError::Empty)?;
        let reader = self.reader.clone();
        let span = info_span!("query", sql = %truncate(&sql, 200));
        let started = std::time::Instant::now();
        let result = tokio::task::spawn_blocking(move || {
            let _e = span.enter();
            let conn = reader
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .try_clone()?;
            query::run(&conn, &sql)
        })
        .await
        .unwrap_or_else(|e| Err(QueryError::NotReadOnly(format!("query panicked: {e}"))));
        self.metrics.record_query(started.elapsed(), result.is_ok());
        result
    }
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

pub struct RegionService(pub Shared);

#[tonic::async_trait]
impl pb::region_server::Region for RegionService {
    async fn push(
        &self,
        req: TRequest<pb::PushRequest>,
    ) -> Result<Response<pb::PushResponse>, Status> {
        let push = req.into_inner();
        let view = push
            .schema
            .as_ref()
            .map(|s| s.view.clone())
            .unwrap_or_default();
        let span = info_span!("push", view = %view, batches = push.batches.len());
        crate::join_trace(&span, &push.trace_context);
        async {
            let (tx, rx) = oneshot::channel();
            self.0
                .node
                .send(Request::Push { push, reply: tx })
                .await
                .map_err(Status::unavailable)?;
            let outcome = tokio::time::timeout(PUSH_APPLY_TIMEOUT, rx)
                .await
                .map_err(|_| Status::unavailable("change batch not committed in time"))?
                .map_err(|_| Status::unavailable("raft thread dropped the push"))?;
            match outcome {
                PushOutcome::Applied(seq) => Ok(Response::new(pb::PushResponse {
                    applied_seq: seq,
                    not_leader: None,
                })),
                PushOutcome::NotLeader { leader_id } => Ok(Response::new(pb::PushResponse {
                    applied_seq: 0,
                    not_leader: Some(pb::NotLeader {
                        leader_id,
                        leader_addr: self.0.peers.get(&leader_id).cloned().unwrap_or_default(),
                    }),
                })),
                PushOutcome::Retry(why) => Err(Status::unavailable(why)),
            }
        }
        .instrument(span)
        .await
    }

    async fn query(
        &self,
        req: TRequest<pb::QueryRequest>,
    ) -> Result<Response<pb::QueryResponse>, Status> {
        let sql = req.into_inner().sql;
        match self.0.query(sql).await {
            Ok(r) => Ok(Response::new(pb::QueryResponse {
                columns: r.columns,
                rows: r.rows,
                positions: r.positions,
                region: self.0.region.clone(),
                node_id: self.0.node_id,
            })),
            Err(e @ (QueryError::Empty | QueryError::NotReadOnly(_) | QueryError::DuckDb(_))) => {
                Err(Status::invalid_argument(e.to_string()))
            }
            Err(e @ QueryError::TooManyRows) => Err(Status::resource_exhausted(e.to_string())),
        }
    }

    async fn node_status(
        &self,
        _req: TRequest<pb::NodeStatusRequest>,
    ) -> Result<Response<pb::NodeStatusResponse>, Status> {
        Ok(Response::new(self.0.status().await?))
    }
}

pub struct TransportService(pub NodeHandle);

#[tonic::async_trait]
impl pb::raft_transport_server::RaftTransport for TransportService {
    async fn send(&self, req: TRequest<pb::RaftMessages>) -> Result<Response<pb::RaftAck>, Status> {
        for bytes in req.into_inner().messages {
            let msg = RaftMessage::parse_from_bytes(&bytes)
                .map_err(|e| Status::invalid_argument(format!("bad raft message: {e}")))?;
            self.0
                .send(Request::Step(msg))
                .await
                .map_err(Status::unavailable)?;
        }
        Ok(Response::new(pb::RaftAck {}))
    }
}

/// Sends queued Raft messages to one peer, batching what has queued up. Failures drop the
/// batch: Raft retransmits what matters.
pub async fn peer_sender(
    peer: u64,
    addr: String,
    mut rx: mpsc::Receiver<Outgoing>,
    node: NodeHandle,
) {
    let endpoint = match Endpoint::from_shared(addr.clone()) {
        Ok(e) => e
            .connect_timeout(Duration::from_secs(1))
            .timeout(PEER_SEND_TIMEOUT),
        Err(e) => {
            tracing::error!(peer, addr = %addr, error = %e, "bad peer address");
            return;
        }
    };
    let mut client = RaftTransportClient::new(endpoint.connect_lazy())
        .max_encoding_message_size(MESSAGE_BYTES_MAX);
    let mut failing = false;
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < PEER_BATCH_MAX {
            match rx.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        let snapshot = batch.iter().any(|m| m.snapshot);
        let messages = batch.into_iter().map(|m| m.bytes).collect();
        let delivered = client.send(pb::RaftMessages { messages }).await;
        if snapshot || delivered.is_err() {
            let _ = node
                .send(Request::Delivery {
                    peer,
                    delivered: delivered.is_ok(),
                    snapshot,
                })
                .await;
        }
        match delivered {
            Ok(_) => {
                if failing {
                    tracing::info!(peer, "peer reachable again");
                }
                failing = false;
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(peer, error = %e.message(), "peer unreachable; raft messages dropped");
                }
                failing = true;
                debug!(peer, "send failed");
            }
        }
    }
}
