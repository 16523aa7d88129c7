//! The Raft node: a dedicated thread owns the raft-rs `RawNode`, its RocksDB log and the
//! DuckDB replica, and drives them in raft-rs's documented order (send messages, apply
//! committed entries, persist entries and hard state, send persisted messages, advance).
//! The async world talks to it through a bounded channel of [`Request`]s.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meridian_proto::v1 as pb;
use prost::Message as _;
use protobuf::Message as _;
use raft::prelude::{Entry, EntryType, Message as RaftMessage, MessageType};
use raft::{Config, RawNode, SnapshotStatus, StateRole, Storage as _};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, info, info_span, warn};

use crate::replica::{admit, Admit, Position, Replica};
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
/// First wait before a failed apply is tried again; it doubles up to `APPLY_RETRY_MAX`.
const APPLY_RETRY_MIN: Duration = Duration::from_millis(100);
const APPLY_RETRY_MAX: Duration = Duration::from_secs(10);
/// Bytes of committed entries read back from the log per retry round.
const APPLY_RETRY_BYTES_MAX: u64 = 16 << 20;

/// A committed entry the replica could not apply. Nothing after it is applied until it is:
/// the node keeps its applied index below it and answers no reads.
struct Stall {
    index: u64,
    error: String,
    attempts: u32,
    next_try: Instant,
}

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
        live: Vec<pb::LiveView>,
        next_view_id: u64,
    },
    /// The node is shutting down. (Peer senders hold handles too, so the thread cannot wait
    /// for every handle to be dropped.)
    Stop,
    /// A peer's replica at Raft index `index`, to replace this node's stalled one.
    Repair {
        index: u64,
        data: Vec<u8>,
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

/// The region's applied position of a view, as the leader answers a push.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Ack {
    pub seq: u64,
    pub epoch: u64,
    pub checksum: u64,
    /// Non-empty when the batches sent cannot be applied and only a full batch can continue.
    pub need_full: String,
}

impl Ack {
    fn of(pos: &Position) -> Ack {
        Ack {
            seq: pos.seq,
            epoch: pos.epoch,
            checksum: pos.checksum,
            need_full: String::new(),
        }
    }
}

#[derive(Debug)]
pub enum PushOutcome {
    /// Applied (or already applied) up to this position.
    Applied(Ack),
    /// Refused for good (the view id was dropped here, or the schema does not match the
    /// replica's table): the sender must not retry it as it is.
    Refused(String),
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
    /// Set while the replica cannot apply a committed entry: the node serves no reads.
    pub apply_error: Option<String>,
}

pub struct NodeConfig {
    pub id: u64,
    pub peers: Vec<u64>,
    pub data_dir: PathBuf,
    pub region: String,
    /// Log entries kept behind the replica's applied index.
    pub log_retain: u64,
    /// DuckDB's memory cap for the replica (readers and writer together), such as `1GB`.
    pub replica_memory_max: Option<String>,
}

/// Handle to a running Raft thread.
#[derive(Clone)]
pub struct NodeHandle {
    tx: SyncSender<Request>,
    /// Why this node must not serve reads now (its replica could not apply a committed entry),
    /// or `None`. Written by the Raft thread, read by every query.
    unavailable: Arc<Mutex<Option<String>>>,
}

impl NodeHandle {
    /// Why this node must not answer reads now, if it must not.
    pub fn unavailable(&self) -> Option<String> {
        self.unavailable
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

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
    /// Position after the last batch proposed per view incarnation in this leadership, not
    /// yet applied, and that proposal's id.
    proposed_seq: HashMap<String, (Position, u64)>,
    next_proposal: u64,
    /// The views the catalog assigns to this region and the first id it has not issued, as the
    /// coordinator last said (`None` until it has): pushes are checked against it.
    catalog: Option<(Vec<pb::LiveView>, u64)>,
    /// Table drops proposed in this leadership, not to propose twice.
    drops_proposed: std::collections::HashSet<(String, u64)>,
    /// Distinguishes this process's proposal ids from a previous run's.
    incarnation: u64,
    /// Index of the first entry of this node's current leadership; until it is applied the
    /// replica may not reflect everything committed before.
    leader_start_index: u64,
    role: StateRole,
    /// Index of the last committed entry handled (applied to the replica, or deterministically
    /// skipped); what raft-rs is told is applied.
    applied: u64,
    stall: Option<Stall>,
    /// A peer's replica fetched to repair a stall, installed once this node's own commit
    /// index has reached its index.
    repair: Option<(u64, Vec<u8>)>,
    unavailable: Arc<Mutex<Option<String>>>,
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
    let replica = Replica::open_with_memory(
        &cfg.data_dir.join("replica.duckdb"),
        cfg.replica_memory_max.as_deref(),
    )?;
    let reader = replica.reader()?;
    // The replica may be ahead of the durable commit index only if a crash hit between a
    // snapshot's restore and the log reset; raft-rs cannot start with `applied` above `commit`,
    // so start from the commit index and let the entries in between be skipped on apply.
    let replica_applied = replica.applied_index();
    let applied = replica_applied.min(store.commit_index());
    if applied < replica_applied {
        warn!(
            replica_applied,
            commit = store.commit_index(),
            "replica is ahead of the durable commit index; starting from the commit index"
        );
    }
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
        catalog: None,
        incarnation,
        leader_start_index: u64::MAX,
        role: StateRole::Follower,
        applied,
        stall: None,
        repair: None,
        unavailable: Arc::default(),
    };
    let unavailable = node.unavailable.clone();
    let span = info_span!("raft", region = %cfg.region, node = cfg.id);
    let thread = std::thread::Builder::new()
        .name(format!("raft-{}", cfg.id))
        .spawn(move || {
            let _e = span.enter();
            // A panic here (a bug, or an injected crash) must not leave a process that answers
            // reads and takes pushes with no Raft thread behind them.
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| node.run(rx))).is_err() {
                error!("raft thread panicked; stopping the node");
                std::process::exit(70);
            }
        })?;
    Ok((NodeHandle { tx, unavailable }, thread, reader))
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
                    for req in
                        std::iter::once(req).chain(rx.try_iter().take(REQUESTS_PER_ROUND_MAX))
                    {
                        if matches!(req, Request::Stop) {
                            info!("raft thread stopping");
                            return;
                        }
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
            if let Err(e) = self.retry_stalled().and_then(|()| self.on_ready()) {
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
            Request::Stop => {}
            Request::Repair { index, data } => {
                if self.stall.is_some() {
                    self.repair = Some((index, data));
                }
            }
            Request::Prune { live, next_view_id } => {
                self.prune(&live, next_view_id);
                self.catalog = Some((live, next_view_id));
            }
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
            applied_index: self.applied,
            positions: self.replica.positions().clone(),
            log_first_index: self.raw.store().log_first_index(),
            apply_error: self.stall.as_ref().map(|st| {
                format!(
                    "cannot apply raft entry {} ({} attempts): {}",
                    st.index, st.attempts, st.error
                )
            }),
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
        if self.applied < self.leader_start_index {
            let _ = reply.send(PushOutcome::Retry(
                "new leader is still applying committed entries".into(),
            ));
            return;
        }
        if let Some(st) = &self.stall {
            let _ = reply.send(PushOutcome::Retry(format!(
                "the leader cannot apply raft entry {}: {}",
                st.index, st.error
            )));
            return;
        }
        let Some(schema) = push.schema.as_ref() else {
            let _ = reply.send(PushOutcome::Retry("push without a schema".into()));
            return;
        };
        if let Some(outcome) = self.check_catalog(schema) {
            let _ = reply.send(outcome);
            return;
        }
        if let Some(why) = self.replica.refuses(schema) {
            let _ = reply.send(PushOutcome::Refused(why));
            return;
        }
        if let Some(why) = push
            .batches
            .iter()
            .find_map(|b| crate::replica::validate_batch(schema, b).err())
        {
            let _ = reply.send(PushOutcome::Refused(why));
            return;
        }
        let applied = self.replica.applied_position(schema);
        // In-flight proposals are tracked per incarnation of the view.
        let view = format!("{view}#{}", schema.view_id);
        let in_flight = self.proposed_seq.get(&view).cloned();
        let mut known = in_flight
            .as_ref()
            .map_or(applied.clone(), |(p, _)| p.clone());
        let mut batches = Vec::new();
        let mut need_full = String::new();
        for b in push.batches {
            match admit(&known, &b) {
                Admit::Skip => continue,
                Admit::Apply => {
                    known = Position {
                        seq: b.seq,
                        epoch: b.epoch,
                        checksum: b.checksum,
                        ..known
                    };
                    batches.push(b);
                }
                // The sender is ahead of this leader: it resends from the position.
                Admit::Gap => break,
                Admit::NeedFull(why) => {
                    need_full = why;
                    break;
                }
            }
        }
        if batches.is_empty() {
            match in_flight {
                Some((_, id)) if need_full.is_empty() => {
                    if let Some(p) = self.pending.get_mut(&id) {
                        p.reply.push(reply);
                        return;
                    }
                    let _ = reply.send(PushOutcome::Applied(Ack::of(&applied)));
                }
                _ => {
                    let _ = reply.send(PushOutcome::Applied(Ack {
                        need_full,
                        ..Ack::of(&applied)
                    }));
                }
            }
            return;
        }
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
                self.proposed_seq.insert(view, (known, id));
            }
            Err(e) => {
                let _ = reply.send(PushOutcome::Retry(format!("propose failed: {e}")));
            }
        }
    }

    /// A push's view must be one the catalog assigns to this region, with the schema the
    /// catalog gives it. Until the coordinator has answered once, pushes are taken as they
    /// come (the coordinator is not on the data path).
    fn check_catalog(&self, schema: &pb::ViewSchema) -> Option<PushOutcome> {
        let (live, next_view_id) = self.catalog.as_ref()?;
        match live.iter().find(|l| l.view_id == schema.view_id) {
            Some(l) if l.name != schema.view || l.schema.as_ref().is_some_and(|s| s != schema) => {
                Some(PushOutcome::Refused(format!(
                    "the pushed schema of view '{}' (id {}) does not match the catalog's: pushed {}, catalog {}",
                    schema.view,
                    schema.view_id,
                    describe_schema(schema),
                    l.schema.as_ref().map_or_else(|| l.name.clone(), describe_schema)
                )))
            }
            Some(_) => None,
            None if schema.view_id < *next_view_id => Some(PushOutcome::Refused(format!(
                "view '{}' (id {}) is not assigned to this region by the catalog",
                schema.view, schema.view_id
            ))),
            None => Some(PushOutcome::Retry(format!(
                "view id {} is newer than this region's copy of the catalog",
                schema.view_id
            ))),
        }
    }

    fn prune(&mut self, live: &[pb::LiveView], next_view_id: u64) {
        if self.raw.raft.state != StateRole::Leader
            || self.applied < self.leader_start_index
            || self.stall.is_some()
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
                        .any(|l| l.name == s.view && l.view_id == s.view_id)
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

    /// Applies committed entries in order. An entry the replica already holds (its recorded
    /// index is at or above it) is skipped. The first one that fails stops the rest: the node
    /// stalls there and `retry_stalled` reads them back from the log later.
    fn apply_entries(&mut self, entries: Vec<Entry>) {
        for entry in entries {
            if self.stall.is_some() {
                return;
            }
            if entry.index <= self.applied {
                continue;
            }
            if let Err(e) = self.apply_entry(&entry) {
                error!(index = entry.index, error = %e, "applying a committed entry failed; the node stops serving reads until it succeeds");
                self.stall = Some(Stall {
                    index: entry.index,
                    error: e,
                    attempts: 1,
                    next_try: Instant::now() + APPLY_RETRY_MIN,
                });
                self.publish_health();
                return;
            }
            self.applied = entry.index;
        }
    }

    /// Applies one committed entry to the replica. An error leaves the replica unchanged.
    fn apply_entry(&mut self, entry: &Entry) -> Result<(), String> {
        fail::fail_point!("replica-apply", |_| Err(
            "injected apply failure".to_string()
        ));
        if entry.index <= self.replica.applied_index() {
            // Applied before a restart whose log had not yet recorded the commit.
            return Ok(());
        }
        if entry.get_entry_type() != EntryType::EntryNormal || entry.data.is_empty() {
            return Ok(());
        }
        let push = match pb::PushRequest::decode(entry.data.as_ref()) {
            Ok(p) => p,
            Err(e) => {
                // Every node decodes the same bytes the same way, so all skip it alike.
                error!(index = entry.index, error = %e, "undecodable log entry skipped");
                return Ok(());
            }
        };
        let view = push
            .schema
            .as_ref()
            .map(|s| s.view.clone())
            .unwrap_or_default();
        let span =
            info_span!("apply", view = %view, index = entry.index, batches = push.batches.len());
        crate::join_trace(&span, &push.trace_context);
        span.in_scope(|| self.replica.apply(entry.index, &push, now_ms()))
            .map_err(|e| format!("view '{view}': {e}"))?;
        if let Some(id) = own_proposal(&entry.context, self.id, self.incarnation) {
            if let Some(p) = self.pending.remove(&id) {
                let ack = push
                    .schema
                    .as_ref()
                    .map(|s| Ack::of(&self.replica.applied_position(s)))
                    .unwrap_or_default();
                for r in p.reply {
                    let _ = r.send(PushOutcome::Applied(ack.clone()));
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
        Ok(())
    }

    /// Tries a stalled apply again when its backoff has passed (or installs a peer's replica
    /// fetched to repair it), then applies from the log every committed entry raft-rs handed
    /// over while the node was stalled; on success the node serves reads again.
    fn retry_stalled(&mut self) -> Result<(), raft::Error> {
        let repaired = self.install_repair();
        let retry_due = self
            .stall
            .as_ref()
            .is_some_and(|st| Instant::now() >= st.next_try);
        if !repaired && !retry_due {
            return Ok(());
        }
        let before = self.stall.take();
        loop {
            // Committed and in this node's own log (a follower may know of a commit before it
            // has persisted the entries).
            let log = &self.raw.raft.raft_log;
            let committed = log.committed.min(log.persisted);
            if self.applied >= committed {
                break;
            }
            let entries = self.raw.store().entries(
                self.applied + 1,
                committed + 1,
                APPLY_RETRY_BYTES_MAX,
                raft::GetEntriesContext::empty(false),
            )?;
            if entries.is_empty() {
                break;
            }
            self.apply_entries(entries);
            if self.stall.is_some() {
                break;
            }
        }
        match (&mut self.stall, before) {
            (Some(new), Some(old)) if new.index == old.index => {
                new.attempts = old.attempts + 1;
                let wait = APPLY_RETRY_MIN
                    .saturating_mul(1 << old.attempts.min(10))
                    .min(APPLY_RETRY_MAX);
                new.next_try = Instant::now() + wait;
                warn!(index = new.index, attempts = new.attempts, error = %new.error, "apply still failing");
            }
            (None, Some(old)) => {
                info!(
                    index = old.index,
                    attempts = old.attempts,
                    "stalled apply succeeded; serving reads again"
                );
            }
            _ => {}
        }
        self.publish_health();
        self.raw.advance_apply_to(self.applied);
        Ok(())
    }

    /// Replaces a stalled replica with a peer's, once this node knows the peer's index to be
    /// committed and persisted (raft-rs cannot be told that more is applied).
    /// Returns whether it did.
    fn install_repair(&mut self) -> bool {
        let Some((index, _)) = &self.repair else {
            return false;
        };
        let index = *index;
        let Some(st) = &self.stall else {
            self.repair = None;
            return false;
        };
        if index < st.index {
            info!(
                index,
                stalled_at = st.index,
                "a peer's replica is older than the stalled entry; not used"
            );
            self.repair = None;
            return false;
        }
        let log = &self.raw.raft.raft_log;
        if index > log.committed.min(log.persisted) {
            // Not yet known committed here: wait for the leader's next message.
            return false;
        }
        let Some((index, data)) = self.repair.take() else {
            return false;
        };
        match self.replica.restore(index, &data) {
            Ok(()) => {
                info!(index, "replica repaired from a peer's snapshot");
                self.applied = index;
                self.abandon_proposals("the replica was replaced by a peer's");
                true
            }
            Err(e) => {
                error!(index, error = %e, "installing a peer's replica failed");
                false
            }
        }
    }

    /// Answers every push waiting on a proposal with "retry": entries skipped by a replica
    /// restore will not be applied here, so their replies would never come.
    fn abandon_proposals(&mut self, why: &str) {
        self.proposed_seq.clear();
        for (_, p) in self.pending.drain() {
            for r in p.reply {
                let _ = r.send(PushOutcome::Retry(why.to_string()));
            }
        }
    }

    fn publish_health(&self) {
        let why = self.stall.as_ref().map(|st| {
            format!(
                "its replica cannot apply raft entry {}: {}",
                st.index, st.error
            )
        });
        *self.unavailable.lock().unwrap_or_else(|p| p.into_inner()) = why;
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
            fail::fail_point!("snapshot-before-restore");
            // Replica first, then the log: a crash in between leaves the replica ahead of the
            // log, which a restart handles (start from the commit index, skip what is applied);
            // the other order would leave entries the replica lacks compacted away.
            self.replica
                .restore(index, &snap.data)
                .map_err(|e| raft::Error::Store(raft::StorageError::Other(Box::new(e))))?;
            fail::fail_point!("snapshot-after-restore");
            self.raw.mut_store().apply_snapshot(&snap)?;
            fail::fail_point!("snapshot-after-log-reset");
            self.applied = self.applied.max(index);
            self.stall = None;
            self.publish_health();
            self.abandon_proposals("the replica was replaced by a snapshot");
            info!(index, "replica restored from a leader's snapshot");
        }
        // Persist before applying: the replica must never be ahead of the durable hard state.
        let hs = ready.hs().cloned();
        if !ready.entries().is_empty() || hs.is_some() {
            fail::fail_point!("ready-before-persist");
            self.raw.mut_store().persist(ready.entries(), hs.as_ref())?;
            fail::fail_point!("ready-after-persist");
        }
        let committed = ready.take_committed_entries();
        self.apply_entries(committed);
        fail::fail_point!("ready-after-apply");
        if !ready.persisted_messages().is_empty() {
            let msgs = ready.take_persisted_messages();
            self.send_messages(msgs);
        }
        // `advance_append`, not `advance`: raft-rs would take every committed entry of this
        // Ready as applied, and one that failed was not.
        let mut light = self.raw.advance_append(ready);
        if let Some(commit) = light.commit_index() {
            self.raw.mut_store().set_commit(commit)?;
        }
        let msgs = light.take_messages();
        self.send_messages(msgs);
        let committed = light.take_committed_entries();
        self.apply_entries(committed);
        fail::fail_point!("light-after-apply");
        self.raw.advance_apply_to(self.applied);
        self.maybe_compact()
    }

    /// Drops log entries the replica applied more than `log_retain` entries ago, once twice
    /// that many have piled up (so compaction runs in steps, not on every entry).
    fn maybe_compact(&mut self) -> Result<(), raft::Error> {
        // The node's applied index, not the replica's: after a crash between a snapshot's
        // restore and the log reset the replica is ahead of this node's log, and entries it
        // has not handled must stay.
        let applied = self.applied.min(self.replica.applied_index());
        let first = self.raw.store().log_first_index();
        if applied > first + 2 * self.log_retain {
            let upto = applied - self.log_retain;
            self.raw.mut_store().compact(upto)?;
            debug!(upto, "raft log compacted");
        }
        Ok(())
    }
}

/// `name(col type, ...) key (i, ...)`, for error messages.
fn describe_schema(s: &pb::ViewSchema) -> String {
    let cols: Vec<String> = s
        .columns
        .iter()
        .map(|c| format!("{} {}", c.name, c.r#type))
        .collect();
    format!("{}({}) key {:?}", s.view, cols.join(", "), s.key_indexes)
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
