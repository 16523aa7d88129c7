//! The Raft node: a dedicated thread owns the raft-rs `RawNode`, its RocksDB log and the
//! DuckDB replica, and drives them in raft-rs's order (send messages, restore a snapshot,
//! persist entries and hard state, apply committed entries, send persisted messages, advance),
//! persisting before applying so that the replica is never ahead of the durable log.
//! The async world talks to it through a bounded channel of [`Request`]s. `propose` is the
//! leader's side of a push; `apply` applies committed entries and handles a failed apply.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meridian_proto::v1 as pb;
use protobuf::Message as _;
use raft::prelude::{Message as RaftMessage, MessageType};
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
mod apply;
mod propose;
mod read;
use apply::Stall;
pub use read::{ReadReply, READS_PENDING_MAX, READ_INDEX_TIMEOUT};

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
    /// A linearizable read's index: the leader's commit index once a majority confirmed it
    /// leads (Raft ReadIndex).
    ReadIndex {
        reply: ReadReply,
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
    /// The node's applied Raft index: its replica holds every entry up to it.
    applied: tokio::sync::watch::Receiver<u64>,
    /// Every batch the replica applies, for subscribers.
    feed: Arc<crate::feed::Feed>,
    /// The leader this node knows (0: none), as of the Raft thread's last round.
    leader: Arc<std::sync::atomic::AtomicU64>,
}

impl NodeHandle {
    pub fn feed(&self) -> &Arc<crate::feed::Feed> {
        &self.feed
    }

    /// The leader this node knows, 0 for none (cheap: no round trip to the Raft thread).
    pub fn leader_id(&self) -> u64 {
        self.leader.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits until the replica has applied Raft index `index` (at once when it has), or
    /// until `deadline`; returns the applied index either way.
    pub async fn wait_applied(&self, index: u64, deadline: tokio::time::Instant) -> u64 {
        let mut rx = self.applied.clone();
        let reached = tokio::time::timeout_at(deadline, rx.wait_for(|&a| a >= index)).await;
        if let Ok(Ok(a)) = reached {
            return *a;
        }
        let applied = *self.applied.borrow();
        applied
    }

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
    /// The freshness last proposed alone per view incarnation in this leadership.
    fresh_proposed: HashMap<String, i64>,
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
    /// Publishes `applied` to readers waiting for an index.
    applied_watch: tokio::sync::watch::Sender<u64>,
    leader: Arc<std::sync::atomic::AtomicU64>,
    reads: read::Reads,
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
    let mut replica = Replica::open_with_memory(
        &cfg.data_dir.join("replica.duckdb"),
        cfg.replica_memory_max.as_deref(),
    )?;
    let feed = crate::feed::Feed::new();
    replica.set_feed(feed.clone());
    let reader = replica.reader()?;
    // The replica may be ahead of the durable commit index: the commit index is written
    // without a sync (a crash can lose its last moves), and a crash can hit between a
    // snapshot's restore and the log reset. raft-rs cannot start with `applied` above
    // `commit`, so start from the commit index and let the entries in between be skipped on
    // apply (the replica records the Raft index of what it applied).
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
    let (applied_watch, applied_rx) = tokio::sync::watch::channel(applied);
    let node = Node {
        id: cfg.id,
        raw,
        replica,
        outbox,
        log_retain: cfg.log_retain,
        pending: HashMap::new(),
        proposed_seq: HashMap::new(),
        fresh_proposed: HashMap::new(),
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
        applied_watch,
        reads: Default::default(),
        leader: Arc::default(),
    };
    let leader = node.leader.clone();
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
    Ok((
        NodeHandle {
            tx,
            unavailable,
            applied: applied_rx,
            feed,
            leader,
        },
        thread,
        reader,
    ))
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
                self.expire_reads(last_tick);
            }
            // Linearizable reads are asked for outside any Ready (raft-rs forbids changing its
            // state between `ready` and `advance`); reads answered by a Ready may leave others
            // waiting, asked for right after it.
            self.ask_read_index();
            let mut result = self.retry_stalled().and_then(|()| self.on_ready());
            if result.is_ok() && self.ask_read_index() {
                result = self.on_ready();
            }
            if let Err(e) = result {
                // Failing to persist the log leaves the node unable to keep Raft's promises.
                error!(error = %e, "raft storage failed; stopping the node");
                std::process::exit(70);
            }
            self.leader.store(
                self.raw.raft.leader_id,
                std::sync::atomic::Ordering::Relaxed,
            );
            let applied = self.applied;
            self.applied_watch.send_if_modified(|a| {
                let moved = *a != applied;
                *a = applied;
                moved
            });
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
            Request::ReadIndex { reply } => self.read_index(reply),
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
                    self.fresh_proposed.clear();
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
        if !ready.read_states().is_empty() {
            let states = ready.take_read_states();
            self.read_states(states);
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
        // Persist before applying: the replica must never hold an entry the durable log lacks
        // (it may be ahead of the durable commit index; see the start).
        let hs = ready.hs().cloned();
        if !ready.entries().is_empty() || hs.is_some() {
            fail::fail_point!("ready-before-persist");
            let sync = ready.must_sync();
            self.raw
                .mut_store()
                .persist(ready.entries(), hs.as_ref(), sync)?;
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
