//! The Raft node: a dedicated thread owns the raft-rs `RawNode`, its RocksDB log and the
//! DuckDB replica, and drives them in raft-rs's documented order (send messages, apply
//! committed entries, persist entries and hard state, send persisted messages, advance).
//! The async world talks to it through a bounded channel of [`Request`]s.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::time::{Duration, Instant};

use meridian_proto::v1 as pb;
use prost::Message as _;
use protobuf::Message as _;
use raft::prelude::{Entry, EntryType, Message as RaftMessage, MessageType};
use raft::{Config, RawNode, SnapshotStatus, StateRole};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, info, info_span, warn};

use crate::replica::{Position, Replica};
use crate::storage::RaftStore;

/// Raft's logical clock period.
pub const TICK: Duration = Duration::from_millis(100);
/// Ticks without a leader's heartbeat before a follower campaigns (1 s).
pub const ELECTION_TICKS: usize = 10;
pub const HEARTBEAT_TICKS: usize = 2;
/// Requests queued for the Raft thread; gRPC handlers wait when it is full.
pub const REQUEST_QUEUE_MAX: usize = 1024;
/// Outgoing Raft messages queued per peer; more are dropped (Raft retransmits).
pub const PEER_QUEUE_MAX: usize = 1024;
/// Requests the Raft thread takes from its queue before it handles a Ready.
const REQUESTS_PER_ROUND_MAX: usize = 256;
/// Most uncommitted bytes the leader keeps in flight to one follower.
const MAX_SIZE_PER_MSG: u64 = 4 << 20;

pub enum Request {
    /// A Raft message from a peer.
    Step(RaftMessage),
    /// Change batches from the central tier.
    Push {
        push: pb::PushRequest,
        reply: oneshot::Sender<PushOutcome>,
    },
    Status {
        reply: oneshot::Sender<NodeState>,
    },
    /// The views the region should hold (name, view id), from the coordinator; the leader
    /// proposes to drop the others.
    Prune {
        live: Vec<(String, u64)>,
        next_view_id: u64,
    },
    /// From a peer sender: messages to `peer` could not be delivered, or a snapshot was.
    Delivery {
        peer: u64,
        delivered: bool,
        snapshot: bool,
    },
}

/// A Raft message on its way to a peer.
pub struct Outgoing {
    pub bytes: Vec<u8>,
    /// It carries a snapshot, whose delivery raft-rs wants to hear about.
    pub snapshot: bool,
}

#[derive(Debug)]
pub enum PushOutcome {
    /// Applied (or already applied) up to this sequence.
    Applied(u64),
    NotLeader {
        leader_id: u64,
    },
    /// The leader cannot take it now (still applying its predecessor's entries, or it lost
    /// leadership before the entry committed); the sender retries.
    Retry(String),
}

#[derive(Clone, Debug, Default)]
pub struct NodeState {
    pub role: String,
    pub term: u64,
    pub leader_id: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub positions: HashMap<String, Position>,
    pub log_first_index: u64,
}

pub struct NodeConfig {
    pub id: u64,
    pub peers: Vec<u64>,
    pub data_dir: PathBuf,
    pub region: String,
    /// Log entries kept behind the replica's applied index.
    pub log_retain: u64,
}

/// Handle to a running Raft thread.
#[derive(Clone)]
pub struct NodeHandle {
    tx: SyncSender<Request>,
}

impl NodeHandle {
    /// Sends without blocking the async runtime for long: the queue is bounded, so a full queue
    /// is waited out on a blocking thread.
    pub async fn send(&self, req: Request) -> Result<(), &'static str> {
        match self.tx.try_send(req) {
            Ok(()) => Ok(()),
            Err(std::sync::mpsc::TrySendError::Full(req)) => {
                let tx = self.tx.clone();
                tokio::task::spawn_blocking(move || tx.send(req).map_err(|_| ()))
                    .await
                    .map_err(|_| "raft thread gone")?
                    .map_err(|_| "raft thread gone")
            }
            Err(std::sync::mpsc::TrySendError::Disconnected(_)) => Err("raft thread gone"),
        }
    }
}

struct Pending {
    view: String,
    reply: Vec<oneshot::Sender<PushOutcome>>,
}

struct Node {
    id: u64,
    raw: RawNode<RaftStore>,
    replica: Replica,
    outbox: HashMap<u64, mpsc::Sender<Outgoing>>,
    log_retain: u64,
    /// Proposals this node made, by proposal id, awaiting their apply.
    pending: HashMap<u64, Pending>,
    /// Highest sequence proposed per view in this leadership, not yet applied.
    proposed_seq: HashMap<String, (u64, u64)>,
    next_proposal: u64,
    /// Table drops proposed in this leadership, not to propose twice.
    drops_proposed: std::collections::HashSet<(String, u64)>,
    /// Distinguishes this process's proposal ids from a previous run's.
    incarnation: u64,
    /// Index of the first entry of this node's current leadership; until it is applied the
    /// replica may not reflect everything committed before.
    leader_start_index: u64,
    role: StateRole,
}

/// Opens the log and the replica and starts the Raft thread. `outbox` has one sender per peer.
/// Also returns a reader connection to the replica.
pub fn start(
    cfg: NodeConfig,
    outbox: HashMap<u64, mpsc::Sender<Outgoing>>,
    incarnation: u64,
) -> anyhow::Result<(NodeHandle, std::thread::JoinHandle<()>, duckdb::Connection)> {
    std::fs::create_dir_all(&cfg.data_dir)?;
    let store = RaftStore::open(&cfg.data_dir.join("raft"), &cfg.peers)?;
    let replica = Replica::open(&cfg.data_dir.join("replica.duckdb"))?;
    let reader = replica.reader()?;
    let applied = replica.applied_index();
    let raft_cfg = Config {
        id: cfg.id,
        election_tick: ELECTION_TICKS,
        heartbeat_tick: HEARTBEAT_TICKS,
        applied,
        max_size_per_msg: MAX_SIZE_PER_MSG,
        max_inflight_msgs: 256,
        check_quorum: true,
        pre_vote: true,
        ..Default::default()
    };
    raft_cfg.validate()?;
    let logger = slog::Logger::root(crate::slog_bridge::TracingDrain, slog::o!());
    let mut store = store;
    store.set_replica_reader(replica.reader()?);
    let raw = RawNode::new(&raft_cfg, store, &logger)?;
    info!(node = cfg.id, applied, "raft node opened");
    let (tx, rx) = sync_channel(REQUEST_QUEUE_MAX);
    let node = Node {
        id: cfg.id,
        raw,
        replica,
        outbox,
        log_retain: cfg.log_retain,
        pending: HashMap::new(),
        proposed_seq: HashMap::new(),
        next_proposal: 1,
        drops_proposed: Default::default(),
        incarnation,
        leader_start_index: u64::MAX,
        role: StateRole::Follower,
    };
    let span = info_span!("raft", region = %cfg.region, node = cfg.id);
    let thread = std::thread::Builder::new()
        .name(format!("raft-{}", cfg.id))
        .spawn(move || {
            let _e = span.enter();
            node.run(rx)
        })?;
    Ok((NodeHandle { tx }, thread, reader))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Node {
    fn run(mut self, rx: Receiver<Request>) {
        let mut last_tick = Instant::now();
        loop {
            let wait = TICK.saturating_sub(last_tick.elapsed());
            match rx.recv_timeout(wait) {
                Ok(req) => {
                    self.handle(req);
                    for req in rx.try_iter().take(REQUESTS_PER_ROUND_MAX) {
                        self.handle(req);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    info!("raft thread stopping");
                    return;
                }
            }
            if last_tick.elapsed() >= TICK {
                self.raw.tick();
                last_tick = Instant::now();
            }
            if let Err(e) = self.on_ready() {
                // Failing to persist the log leaves the node unable to keep Raft's promises.
                error!(error = %e, "raft storage failed; stopping the node");
                std::process::exit(70);
            }
        }
    }

    fn handle(&mut self, req: Request) {
        match req {
            Request::Step(msg) => {
                if let Err(e) = self.raw.step(msg) {
                    debug!(error = %e, "raft step refused a message");
                }
            }
            Request::Push { push, reply } => self.push(push, reply),
            Request::Status { reply } => {
                let _ = reply.send(self.state());
            }
            Request::Prune { live, next_view_id } => self.prune(&live, next_view_id),
            Request::Delivery {
                peer,
                delivered,
                snapshot,
            } => {
                if !delivered {
                    self.raw.report_unreachable(peer);
                }
                if snapshot {
                    self.raw.report_snapshot(
                        peer,
                        if delivered {
                            SnapshotStatus::Finish
                        } else {
                            SnapshotStatus::Failure
                        },
                    );
                }
            }
        }
    }

    fn state(&self) -> NodeState {
        let r = &self.raw.raft;
        NodeState {
            role: format!("{:?}", r.state).to_lowercase(),
            term: r.term,
            leader_id: r.leader_id,
            commit_index: r.raft_log.committed,
            applied_index: self.replica.applied_index().max(r.raft_log.applied),
            positions: self.replica.positions().clone(),
            log_first_index: self.raw.store().log_first_index(),
        }
    }

    fn push(&mut self, push: pb::PushRequest, reply: oneshot::Sender<PushOutcome>) {
        if self.raw.raft.state != StateRole::Leader {
            let _ = reply.send(PushOutcome::NotLeader {
                leader_id: self.raw.raft.leader_id,
            });
            return;
        }
        let Some(view) = push.schema.as_ref().map(|s| s.view.clone()) else {
            let _ = reply.send(PushOutcome::Retry("push without a schema".into()));
            return;
        };
        if self.raw.raft.raft_log.applied < self.leader_start_index {
            let _ = reply.send(PushOutcome::Retry(
                "new leader is still applying committed entries".into(),
            ));
            return;
        }
        let Some(schema) = push.schema.as_ref() else {
            let _ = reply.send(PushOutcome::Retry("push without a schema".into()));
            return;
        };
        let applied = self.replica.applied_seq(schema);
        // In-flight proposals are tracked per incarnation of the view.
        let view = format!("{view}#{}", schema.view_id);
        let in_flight = self.proposed_seq.get(&view).copied();
        let known = in_flight.map_or(applied, |(seq, _)| seq.max(applied));
        let batches: Vec<pb::ChangeBatch> =
            push.batches.into_iter().filter(|b| b.seq > known).collect();
        if batches.is_empty() {
            match in_flight {
                Some((seq, id)) if seq > applied => {
                    if let Some(p) = self.pending.get_mut(&id) {
                        p.reply.push(reply);
                        return;
                    }
                    let _ = reply.send(PushOutcome::Applied(applied));
                }
                _ => {
                    let _ = reply.send(PushOutcome::Applied(applied));
                }
            }
            return;
        }
        if batches[0].seq != known + 1 && !batches[0].full {
            // The sender is ahead of what this leader has: it resends from the position.
            let _ = reply.send(PushOutcome::Applied(applied));
            return;
        }
        let last_seq = batches[batches.len() - 1].seq;
        let data = pb::PushRequest {
            schema: push.schema,
            batches,
            trace_context: push.trace_context,
            // Only the leader itself proposes drops (see `prune`), never a sender.
            drop_view: false,
        }
        .encode_to_vec();
        let id = self.next_proposal;
        self.next_proposal += 1;
        let mut context = Vec::with_capacity(24);
        context.extend_from_slice(&self.id.to_be_bytes());
        context.extend_from_slice(&self.incarnation.to_be_bytes());
        context.extend_from_slice(&id.to_be_bytes());
        match self.raw.propose(context, data) {
            Ok(()) => {
                self.pending.insert(
                    id,
                    Pending {
                        view: view.clone(),
                        reply: vec![reply],
                    },
                );
                self.proposed_seq.insert(view, (last_seq, id));
            }
            Err(e) => {
                let _ = reply.send(PushOutcome::Retry(format!("propose failed: {e}")));
            }
        }
    }

    fn prune(&mut self, live: &[(String, u64)], next_view_id: u64) {
        if self.raw.raft.state != StateRole::Leader
            || self.raw.raft.raft_log.applied < self.leader_start_index
        {
            return;
        }
        let stale: Vec<pb::ViewSchema> = self
            .replica
            .schemas()
            .filter(|s| {
                s.view_id < next_view_id
                    && !live
                        .iter()
                        .any(|(name, id)| *name == s.view && *id == s.view_id)
            })
            .filter(|s| !self.drops_proposed.contains(&(s.view.clone(), s.view_id)))
            .cloned()
            .collect();
        for schema in stale {
            info!(view = %schema.view, view_id = schema.view_id, "view is no longer assigned here; dropping its table");
            self.drops_proposed
                .insert((schema.view.clone(), schema.view_id));
            let data = pb::PushRequest {
                schema: Some(schema),
                drop_view: true,
                ..Default::default()
            }
            .encode_to_vec();
            if let Err(e) = self.raw.propose(Vec::new(), data) {
                warn!(error = %e, "proposing a table drop failed");
            }
        }
    }

    fn send_messages(&mut self, msgs: Vec<RaftMessage>) {
        for m in msgs {
            let Some(tx) = self.outbox.get(&m.to) else {
                warn!(to = m.to, "raft message for an unknown peer");
                continue;
            };
            match m.write_to_bytes() {
                Ok(bytes) => {
                    let snapshot = m.get_msg_type() == MessageType::MsgSnapshot;
                    if tx.try_send(Outgoing { bytes, snapshot }).is_err() {
                        debug!(to = m.to, "peer queue full; raft message dropped");
                    }
                }
                Err(e) => error!(error = %e, "encoding a raft message failed"),
            }
        }
    }

    fn apply_entries(&mut self, entries: Vec<Entry>) {
        for entry in entries {
            if entry.get_entry_type() != EntryType::EntryNormal || entry.data.is_empty() {
                continue;
            }
            let push = match pb::PushRequest::decode(entry.data.as_ref()) {
                Ok(p) => p,
                Err(e) => {
                    error!(index = entry.index, error = %e, "undecodable log entry skipped");
                    continue;
                }
            };
            let view = push
                .schema
                .as_ref()
                .map(|s| s.view.clone())
                .unwrap_or_default();
            let span = info_span!("apply", view = %view, index = entry.index, batches = push.batches.len());
            crate::join_trace(&span, &push.trace_context);
            let result = span.in_scope(|| self.replica.apply(entry.index, &push, now_ms()));
            let seq = match result {
                Ok(seq) => seq,
                Err(e) => {
                    // Deterministic on every replica (same entry, same state), so replicas stay
                    // equal; the shipper keeps retrying and status shows the error.
                    error!(index = entry.index, view = %view, error = %e, "applying a change batch failed");
                    self.replica.position(&view).seq
                }
            };
            if let Some(id) = own_proposal(&entry.context, self.id, self.incarnation) {
                if let Some(p) = self.pending.remove(&id) {
                    for r in p.reply {
                        let _ = r.send(PushOutcome::Applied(seq));
                    }
                    if self
                        .proposed_seq
                        .get(&p.view)
                        .is_some_and(|(_, pid)| *pid == id)
                    {
                        self.proposed_seq.remove(&p.view);
                    }
                }
            }
        }
    }

    fn on_ready(&mut self) -> Result<(), raft::Error> {
        if !self.raw.has_ready() {
            return Ok(());
        }
        let mut ready = self.raw.ready();
        if let Some(ss) = ready.ss() {
            if ss.raft_state != self.role {
                info!(role = ?ss.raft_state, leader = ss.leader_id, term = self.raw.raft.term, "raft role changed");
                self.role = ss.raft_state;
                if self.role == StateRole::Leader {
                    self.leader_start_index = self.raw.raft.raft_log.last_index();
                } else {
                    self.leader_start_index = u64::MAX;
                    self.proposed_seq.clear();
                    self.drops_proposed.clear();
                    for (_, p) in self.pending.drain() {
                        for r in p.reply {
                            let _ = r.send(PushOutcome::Retry(
                                "leadership lost before the batch committed".into(),
                            ));
                        }
                    }
                }
            }
        }
        if !ready.messages().is_empty() {
            let msgs = ready.take_messages();
            self.send_messages(msgs);
        }
        if !ready.snapshot().is_empty() {
            let snap = ready.snapshot().clone();
            let index = snap.get_metadata().index;
            self.replica
                .restore(index, &snap.data)
                .map_err(|e| raft::Error::Store(raft::StorageError::Other(Box::new(e))))?;
            self.raw.mut_store().apply_snapshot(&snap)?;
            info!(index, "replica restored from a leader's snapshot");
        }
        let committed = ready.take_committed_entries();
        self.apply_entries(committed);
        let hs = ready.hs().cloned();
        if !ready.entries().is_empty() || hs.is_some() {
            self.raw.mut_store().persist(ready.entries(), hs.as_ref())?;
        }
        if !ready.persisted_messages().is_empty() {
            let msgs = ready.take_persisted_messages();
            self.send_messages(msgs);
        }
        let mut light = self.raw.advance(ready);
        if let Some(commit) = light.commit_index() {
            self.raw.mut_store().set_commit(commit)?;
        }
        let msgs = light.take_messages();
        self.send_messages(msgs);
        let committed = light.take_committed_entries();
        self.apply_entries(committed);
        self.raw.advance_apply();
        self.maybe_compact()
    }

    /// Drops log entries the replica applied more than `log_retain` entries ago, once twice
    /// that many have piled up (so compaction runs in steps, not on every entry).
    fn maybe_compact(&mut self) -> Result<(), raft::Error> {
        let applied = self.replica.applied_index();
        let first = self.raw.store().log_first_index();
        if applied > first + 2 * self.log_retain {
            let upto = applied - self.log_retain;
            self.raw.mut_store().compact(upto)?;
            debug!(upto, "raft log compacted");
        }
        Ok(())
    }
}

fn own_proposal(context: &[u8], id: u64, incarnation: u64) -> Option<u64> {
    if context.len() != 24 {
        return None;
    }
    let word = |i: usize| {
        context[i * 8..i * 8 + 8]
            .try_into()
            .ok()
            .map(u64::from_be_bytes)
    };
    (word(0)? == id && word(1)? == incarnation).then_some(word(2)?)
}
