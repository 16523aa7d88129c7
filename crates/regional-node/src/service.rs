//! gRPC glue: the `Region` and `RaftTransport` services, the peer senders, and the reporter
//! that tells the coordinator about this node.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
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
use crate::query::{self, QueryError, QueryLimits, QueryResult};

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
    /// Subscriptions running (see [`crate::subscribe`]).
    pub subscribers: Arc<Semaphore>,
    pub limits: QueryLimits,
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
                epoch: p.epoch,
                fresh_at_ms: p.fresh_at_ms,
                staleness_ms: p.staleness_ms(crate::replica::wall_ms()).unwrap_or(-1),
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
            apply_error: st.apply_error.unwrap_or_default(),
        })
    }

    /// Runs a read-only query on a blocking thread, within `self.limits`. DuckDB is interrupted
    /// when the deadline passes or when the caller goes away (this future is dropped).
    pub async fn query(&self, sql: String) -> Result<QueryResult, QueryError> {
        self.query_shaped(sql, query::Shape::Rows).await
    }

    /// [`Self::query`], answering in `shape` (rows, or Arrow IPC).
    pub async fn query_shaped(
        &self,
        sql: String,
        shape: query::Shape,
    ) -> Result<QueryResult, QueryError> {
        // A replica that could not apply a committed entry holds a state no other node had:
        // answering from it would serve rows that skipped a change.
        if let Some(why) = self.node.unavailable() {
            return Err(QueryError::Unavailable(why));
        }
        let permit = self
            .queries
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| QueryError::Unavailable("the node is shutting down".into()))?;
        let conn = self
            .reader
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .try_clone()?;
        let stop = StopOnDrop {
            interrupt: conn.interrupt_handle(),
            cancel: Arc::new(AtomicBool::new(false)),
            done: Arc::new(AtomicBool::new(false)),
        };
        let limits = self.limits;
        let span = info_span!("query", sql = %truncate(&sql, 200));
        let started = std::time::Instant::now();
        let (cancel, done) = (stop.cancel.clone(), stop.done.clone());
        let mut task = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let _e = span.enter();
            // Set however the read ends, a panic included, so that no interrupter outlives it.
            let _done = SetOnDrop(done);
            query::run_shaped(&conn, &sql, &limits, &cancel, shape)
        });
        let result = tokio::select! {
            joined = &mut task => joined
                .unwrap_or_else(|e| Err(QueryError::Failed(format!("query panicked: {e}")))),
            _ = tokio::time::sleep(limits.timeout) => Err(QueryError::Timeout(limits.timeout)),
        };
        self.metrics.record_query(started.elapsed(), result.is_ok());
        result
    }
}

/// Sets its flag when dropped.
struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Stops a running query when dropped: sets its cancel flag and keeps interrupting DuckDB until
/// the query's thread is done (an interrupt that lands between two statements is discarded by
/// DuckDB, so one is not enough).
struct StopOnDrop {
    interrupt: Arc<duckdb::InterruptHandle>,
    cancel: Arc<AtomicBool>,
    done: Arc<AtomicBool>,
}

/// Interrupts sent to a query that must stop, one every `INTERRUPT_EVERY`, before giving up.
const INTERRUPTS_MAX: u32 = 500;
const INTERRUPT_EVERY: Duration = Duration::from_millis(20);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if self.done.load(Ordering::Relaxed) {
            return;
        }
        self.cancel.store(true, Ordering::Relaxed);
        let (interrupt, done) = (self.interrupt.clone(), self.done.clone());
        std::thread::spawn(move || {
            for _ in 0..INTERRUPTS_MAX {
                if done.load(Ordering::Relaxed) {
                    return;
                }
                interrupt.interrupt();
                std::thread::sleep(INTERRUPT_EVERY);
            }
            tracing::warn!("a query did not stop after repeated interrupts");
        });
    }
}

/// The gRPC status of a failed query.
pub fn query_status(e: &QueryError) -> Status {
    let msg = e.to_string();
    match e {
        QueryError::Empty
        | QueryError::NotReadOnly(_)
        | QueryError::Internal(_)
        | QueryError::DuckDb(_)
        | QueryError::BadToken(_)
        | QueryError::Unreadable(_) => Status::invalid_argument(msg),
        QueryError::Failed(_) => Status::internal(msg),
        QueryError::TooManyRows(_) | QueryError::TooManyBytes(_) => Status::resource_exhausted(msg),
        QueryError::Timeout(_) => Status::deadline_exceeded(msg),
        QueryError::Cancelled => Status::cancelled(msg),
        QueryError::Unavailable(_) | QueryError::TooStale(_) => Status::unavailable(msg),
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
            tracing::debug!("push received");
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
                PushOutcome::Applied(ack) => Ok(Response::new(pb::PushResponse {
                    applied_seq: ack.seq,
                    not_leader: None,
                    applied_epoch: ack.epoch,
                    applied_checksum: ack.checksum,
                    need_full: ack.need_full,
                })),
                PushOutcome::NotLeader { leader_id } => Ok(Response::new(pb::PushResponse {
                    not_leader: Some(pb::NotLeader {
                        leader_id,
                        leader_addr: self.0.peers.get(&leader_id).cloned().unwrap_or_default(),
                    }),
                    ..Default::default()
                })),
                PushOutcome::Refused(why) => Err(Status::failed_precondition(why)),
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
        let req = req.into_inner();
        let level = crate::consistency::ReadLevel {
            max_staleness_ms: req.max_staleness_ms,
            at_least: crate::consistency::ReadLevel::parse_token(&req.at_least)
                .map_err(|e| query_status(&e))?,
            linearizable: req.linearizable,
            // 0 on the wire: not given.
            wait_ms: crate::staleness::wait_ms(
                (req.max_staleness_wait_ms != 0).then_some(req.max_staleness_wait_ms),
            ),
        };
        let shape = if req.arrow {
            query::Shape::ArrowStream
        } else {
            query::Shape::Rows
        };
        match self.0.query_at_shaped(req.sql, &level, shape).await {
            Ok(r) => Ok(Response::new(pb::QueryResponse {
                token: self.0.token(&r).to_string(),
                columns: r.columns,
                rows: r.rows,
                positions: r.positions,
                region: self.0.region.clone(),
                node_id: self.0.node_id,
                arrow_ipc: r.arrow.unwrap_or_default(),
            })),
            Err(e) => Err(query_status(&e)),
        }
    }

    type SubscribeStream = crate::subscribe::EventStream;

    async fn subscribe(
        &self,
        req: TRequest<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        crate::subscribe::subscribe(&self.0, req.into_inner()).map(Response::new)
    }

    async fn node_status(
        &self,
        _req: TRequest<pb::NodeStatusRequest>,
    ) -> Result<Response<pb::NodeStatusResponse>, Status> {
        Ok(Response::new(self.0.status().await?))
    }
}

pub struct TransportService(pub Shared);

#[tonic::async_trait]
impl pb::raft_transport_server::RaftTransport for TransportService {
    async fn send(&self, req: TRequest<pb::RaftMessages>) -> Result<Response<pb::RaftAck>, Status> {
        for bytes in req.into_inner().messages {
            let msg = RaftMessage::parse_from_bytes(&bytes)
                .map_err(|e| Status::invalid_argument(format!("bad raft message: {e}")))?;
            self.0
                .node
                .send(Request::Step(msg))
                .await
                .map_err(Status::unavailable)?;
        }
        Ok(Response::new(pb::RaftAck {}))
    }

    async fn fetch_snapshot(
        &self,
        _req: TRequest<pb::FetchSnapshotRequest>,
    ) -> Result<Response<pb::FetchSnapshotResponse>, Status> {
        if let Some(why) = self.0.node.unavailable() {
            return Err(Status::unavailable(format!("no snapshot here: {why}")));
        }
        let conn = self
            .0
            .reader
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .try_clone()
            .map_err(|e| Status::internal(e.to_string()))?;
        let (index, data) = tokio::task::spawn_blocking(move || crate::replica::snapshot(&conn))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(pb::FetchSnapshotResponse { index, data }))
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
