//! The async shell of one view: consumes the stream's topic, drives [`ViewCore`], and commits
//! each batch (state, offsets, change-log entry, dead letters) atomically to the store.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use catalog::{StreamDef, ViewDef};
use meridian_proto::v1 as pb;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::sync::watch;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::core::{input_partition, split_input, ViewCore};
use crate::decode::decode_with_epoch;
use crate::progress::Verdict;
use crate::store::{Commit, DeadLetter, StoreError, ViewStore};
use crate::wire::change_to_wire;
use crate::Clock;

mod kafka;
pub use kafka::topic_partitions;
use kafka::{consumer_config, input_marks};

/// Most source messages in one change batch: bounds the batch's memory and the size of one
/// Raft entry in the regions.
pub const BATCH_EVENTS_MAX: usize = 2_000;
/// A batch closes when the consumer has had nothing more ready for this long (messages of one
/// fetch arrive together), so a lone event is committed at once and a backlog fills batches.
pub const BATCH_IDLE_GAP: Duration = Duration::from_millis(1);
/// The longest a batch stays open once it has a message: bounds latency under a trickle.
pub const BATCH_LINGER_MAX: Duration = Duration::from_millis(50);
/// How long a batch stays open once it has a message, and the idle gap that closes it sooner
/// (none under `EMIT PERIODIC`, whose batch stays open for the whole period unless it fills).
pub fn batch_timing(emit_period_us: Option<u64>) -> (Duration, Option<Duration>) {
    match emit_period_us {
        Some(us) => (Duration::from_micros(us), None),
        None => (BATCH_LINGER_MAX, Some(BATCH_IDLE_GAP)),
    }
}

/// A batch that holds the start of a read view's snapshot goes on to its last row, up to this
/// many messages, waiting at most `SNAPSHOT_GAP` for each and `SNAPSHOT_WAIT_MAX` in all.
pub const SNAPSHOT_BATCH_MAX: usize = 200_000;
pub const SNAPSHOT_GAP: Duration = Duration::from_secs(5);
pub const SNAPSHOT_WAIT_MAX: Duration = Duration::from_secs(30);
/// Consumer defaults that favour freshness; a stream's `properties` override them. A broker
/// that answers a fetch only when this wait expires (rather than when data arrives) adds up to
/// this much latency; librdkafka's own default is 500 ms.
pub const CONSUMER_DEFAULTS: &[(&str, &str)] = &[("fetch.wait.max.ms", "10")];
/// How long a metadata request to the brokers may take.
const METADATA_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a running view looks for new partitions of its topic and checks its progress
/// against the partitions' high watermarks.
pub const PARTITION_CHECK_INTERVAL: Duration = Duration::from_secs(5);
/// Dead letters kept in the status report.
pub const RECENT_DEAD_LETTERS_MAX: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum ActorError {
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("topic '{topic}' does not exist on brokers '{brokers}'")]
    NoTopic { topic: String, brokers: String },
    #[error("source messages are gone: the brokers deleted them (retention) before the view read them, so the view can no longer be exact; drop and re-create it to start from what the brokers still hold ({0})")]
    DataLost(String),
    #[error("reading a source row: {0}")]
    Lookup(String),
    #[error("view engine: {0}")]
    View(String),
    #[error("task failed: {0}")]
    Join(String),
    #[error("recording the view's starting offsets at the coordinator: {0}")]
    Start(String),
}

/// Records where a view starts reading partitions it has no offsets for, where any later
/// owner of the view finds it (the coordinator), and answers the recorded offsets: the first
/// worker to start a partition decides, so a view that moves never starts over from a later
/// point (messages deleted since are then detected as lost, not skipped).
pub type StartRecorder = Arc<
    dyn Fn(Vec<(i32, i64)>) -> futures::future::BoxFuture<'static, Result<Vec<(i32, i64)>, String>>
        + Send
        + Sync,
>;

/// What the actor reports for `meridian status`.
#[derive(Clone, Debug, Default)]
pub struct ActorStatus {
    pub seq: u64,
    pub events: u64,
    pub dead_letters: u64,
    pub recent_dead_letters: Vec<DeadLetter>,
    pub error: String,
    pub last_batch_at_ms: i64,
    pub source_bytes: u64,
    pub view_rows: u64,
    pub view_bytes: u64,
    pub late_events: u64,
    pub watermark_us: Option<i64>,
    /// Partitions behind their high watermark that made no progress between two checks.
    /// Stalled partitions, each with its topic and its partition number in that topic.
    pub stalled: Vec<(String, crate::progress::Stalled)>,
}

pub struct ViewActor {
    pub view_id: u64,
    pub def: ViewDef,
    pub stream: StreamDef,
    /// The stream the view joins, if it does: read by the same consumer, its partitions
    /// numbered as input 1 ([`crate::core::INPUT_SHIFT`]).
    pub joined: Option<StreamDef>,
    pub store: ViewStore,
    pub clock: Arc<dyn Clock>,
    /// Latest committed sequence, for the shippers.
    pub latest: watch::Sender<u64>,
    pub status: Arc<Mutex<ActorStatus>>,
    /// How often to look for new partitions and check progress
    /// ([`PARTITION_CHECK_INTERVAL`]; shorter in tests).
    pub check_interval: Duration,
    /// Where starting offsets are recorded (`None`: only in this view's store).
    pub start: Option<StartRecorder>,
    /// Set once the view has consumed every partition up to its high watermark as of the
    /// actor's start: until then a new owner's state is behind what the regions may hold
    /// from the previous owner, and the shippers wait rather than take the regions back.
    pub caught_up: Option<watch::Sender<bool>>,
    /// How fresh the committed change log is (see [`crate::fresh`]), for the shippers.
    pub fresh: Option<watch::Sender<crate::fresh::Fresh>>,
}

impl ViewActor {
    /// Runs until `shutdown` flips or an error that needs a fresh start (the caller restarts
    /// the actor from its store).
    pub async fn run(&self, mut shutdown: watch::Receiver<bool>) -> Result<(), ActorError> {
        let span = info_span!("view", view = %self.def.name);
        async {
            let (meta, groups) = self.store.consistent_state()?;
            if meta.seq > 0 && meta.state_format != crate::store::STATE_FORMAT {
                return Err(ActorError::View(format!(
                    "the view's central state was written by {} Meridian (state format {}, this version reads {}); drop and re-create the view",
                    if meta.state_format < crate::store::STATE_FORMAT { "an older" } else { "a newer" },
                    meta.state_format,
                    crate::store::STATE_FORMAT
                )));
            }
            let mut offsets = self.store.load_offsets()?;
            info!(seq = meta.seq, groups = groups.len(), "view state loaded");
            self.latest.send_replace(meta.seq);
            self.set_status(|s| {
                s.seq = meta.seq;
                s.events = meta.events;
                s.dead_letters = meta.dead_letters;
                s.last_batch_at_ms = meta.last_batch_at_ms;
                s.source_bytes = meta.source_bytes;
                s.view_rows = meta.view_rows;
                s.view_bytes = meta.view_bytes;
                s.late_events = meta.late_events;
                s.watermark_us = meta.watermark_us;
            });
            let mut core = ViewCore::new_joined(self.def.clone(), &self.stream, self.joined.as_ref(), groups).map_err(ActorError::View)?;
            core.set_event_times(meta.event_times_us.clone(), meta.watermark_us);
            core.set_arrival(meta.arrival);
            let mut meta = meta;

            let (mut consumer, started, mut assigned) = self.subscribe(&offsets).await?;
            core.set_partitions(&assigned);
            // The freshness probe, on a thread and a client of its own; it ends with `samples`.
            let (probe_partitions, probe_watch) = watch::channel(assigned.clone());
            let (sample_tx, mut samples) = tokio::sync::mpsc::channel(4);
            let mut freshness = crate::fresh::Freshness::default();
            if self.fresh.is_some() {
                let probe: BaseConsumer = consumer_config(&self.stream, "meridian-metadata").create()?;
                let topics = self.sources().iter().map(|s| s.topic.clone()).collect();
                if let Err(e) = crate::fresh::spawn_probe(probe, topics, probe_watch, self.clock.clone(), sample_tx) {
                    warn!(error = %e, "starting the freshness probe failed; regions will read the view as behind");
                }
            }
            let mut watch = crate::progress::ProgressWatch::default();
            let mut fresh = crate::progress::FirstFetch::default();
            for &p in &assigned {
                fresh.positioned(p);
            }
            let mut next_check = tokio::time::Instant::now() + self.check_interval;
            // When the last message arrived: a view that got none for a whole check interval
            // has nothing more ready.
            let mut last_message = tokio::time::Instant::now();
            if !started.is_empty() {
                // Record where a new partition starts, so that messages the brokers delete
                // before the first batch are detected like any later gap.
                let store = self.store.clone();
                let commit = Commit { meta: meta.clone(), offsets: started.clone(), ..Commit::default() };
                tokio::task::spawn_blocking(move || store.commit(commit)).await.map_err(|e| ActorError::Join(e.to_string()))??;
                offsets.extend(started);
            }
            self.set_status(|s| s.error.clear());
            // Where "caught up" is, as of now.
            let mut catch_up: Option<HashMap<i32, i64>> = match &self.caught_up {
                Some(tx) if !*tx.borrow() => {
                    let sources = self.owned_sources();
                    let marks = tokio::task::spawn_blocking(move || input_marks(&sources))
                        .await
                        .map_err(|e| ActorError::Join(e.to_string()))?;
                    match marks {
                        Ok(m) => Some(m.into_iter().map(|(p, (_, high))| (p, high)).collect()),
                        Err(e) => {
                            warn!(error = %e, "reading the partitions' high watermarks failed; shipping without waiting to catch up");
                            None
                        }
                    }
                }
                _ => None,
            };
            self.check_caught_up(&offsets, &mut catch_up);
            loop {
                if tokio::time::Instant::now() >= next_check {
                    next_check = tokio::time::Instant::now() + self.check_interval;
                    let sources = self.owned_sources();
                    let marks = tokio::task::spawn_blocking(move || input_marks(&sources))
                        .await
                        .map_err(|e| ActorError::Join(e.to_string()))?;
                    match marks {
                        Ok(marks) => {
                            let mut added: Vec<i32> = marks.keys().filter(|p| !assigned.contains(p)).copied().collect();
                            if !added.is_empty() {
                                added.sort_unstable();
                                info!(partitions = ?added, "the topic has new partitions; consuming them too");
                                let (c, started, now_assigned) = self.subscribe(&offsets).await?;
                                if !started.is_empty() {
                                    let store = self.store.clone();
                                    let commit = Commit { meta: meta.clone(), offsets: started.clone(), ..Commit::default() };
                                    tokio::task::spawn_blocking(move || store.commit(commit)).await.map_err(|e| ActorError::Join(e.to_string()))??;
                                    offsets.extend(started);
                                }
                                consumer = c;
                                assigned = now_assigned;
                                core.set_partitions(&assigned);
                                probe_partitions.send_replace(assigned.clone());
                                for &p in &assigned {
                                    fresh.positioned(p);
                                }
                            }
                            let rewinds = watch.check(&offsets, &marks, self.clock.now_ms()).map_err(|l| {
                                let (topic, partition) = self.kafka_partition(l.partition);
                                ActorError::DataLost(format!("partition {partition} of topic '{topic}' is at offset {}, but its oldest message is {}", l.offset, l.low_watermark))
                            })?;
                            for r in rewinds {
                                let (topic, partition) = self.kafka_partition(r.partition);
                                warn!(topic, partition, offset = offsets.get(&r.partition).copied().unwrap_or(0), rewind_to = r.to, "view is behind the partition and made no progress; fetching again from an earlier offset");
                                match consumer.seek(topic, partition, Offset::Offset(r.to), METADATA_TIMEOUT) {
                                    Ok(()) => fresh.positioned(r.partition),
                                    Err(e) => warn!(partition = r.partition, error = %e, "rewinding a stalled partition failed"),
                                }
                            }
                            let stalled = watch
                                .stalled()
                                .into_iter()
                                .map(|mut st| {
                                    let (topic, partition) = self.kafka_partition(st.partition);
                                    st.partition = partition;
                                    (topic.to_string(), st)
                                })
                                .collect();
                            self.set_status(|s| s.stalled = stalled);
                        }
                        Err(e) => warn!(error = %e, "checking the topic's partitions failed"),
                    }
                }
                let mut messages = Vec::new();
                // A global aggregate's row exists before any message (as in SQL): its first
                // batch is committed without waiting for one.
                if !core.has_pending_changes() {
                    tokio::select! {
                        _ = shutdown.changed() => return Ok(()),
                        first = consumer.recv() => messages.push(received(first)?),
                        Some(sample) = samples.recv() => {
                            // Between batches `offsets` are the committed ones.
                            freshness.sample(sample);
                            self.publish_fresh(freshness.committed(meta.seq, &offsets));
                            continue;
                        }
                        _ = tokio::time::sleep_until(next_check) => {
                            // Nothing arrived for a whole check interval: whatever still
                            // separates the offsets from the marks (transaction markers,
                            // compacted offsets) is not coming, so the view is caught up.
                            if catch_up.is_some() && last_message.elapsed() >= self.check_interval {
                                catch_up = Some(HashMap::new());
                                self.check_caught_up(&offsets, &mut catch_up);
                            }
                            continue;
                        }
                    }
                }
                if !messages.is_empty() {
                    last_message = tokio::time::Instant::now();
                }
                let (linger, idle_gap) = batch_timing(self.def.plan.emit_period_us);
                let deadline = tokio::time::Instant::now() + linger;
                while !messages.is_empty() && messages.len() < BATCH_EVENTS_MAX {
                    let gap = idle_gap.map_or(deadline, |g| (tokio::time::Instant::now() + g).min(deadline));
                    match tokio::time::timeout_at(gap, consumer.recv()).await {
                        Ok(m) => messages.push(received(m)?),
                        Err(_) => break,
                    }
                }
                // A snapshot of a read view is applied whole (up to SNAPSHOT_BATCH_MAX).
                let mut window = crate::changes::SnapshotWindow::default();
                for m in &messages {
                    self.note_snapshot(&mut window, m);
                }
                let snapshot_until = tokio::time::Instant::now() + SNAPSHOT_WAIT_MAX;
                while window.open() && messages.len() < SNAPSHOT_BATCH_MAX {
                    let gap = (tokio::time::Instant::now() + SNAPSHOT_GAP).min(snapshot_until);
                    tokio::select! {
                        _ = shutdown.changed() => return Ok(()),
                        m = tokio::time::timeout_at(gap, consumer.recv()) => match m {
                            Ok(m) => {
                                let m = received(m)?;
                                self.note_snapshot(&mut window, &m);
                                messages.push(m);
                            }
                            Err(_) => break,
                        },
                    }
                }
                let span = info_span!("batch", n_messages = messages.len());
                let mut commit = Commit::default();
                let mut new_offsets: HashMap<i32, i64> = HashMap::new();
                let mut consumed = 0u64;
                let mut consumed_bytes = 0u64;
                let mut gap_rewinds: Vec<(i32, i64)> = Vec::new();
                // Decoded events, with the message each came from, evaluated as one batch.
                let mut events = Vec::with_capacity(messages.len());
                let mut origins = Vec::with_capacity(messages.len());
                span.in_scope(|| -> Result<(), ActorError> {
                    for m in &messages {
                        let Some((source, input)) = self.input_of(m.topic(), m.partition()) else {
                            warn!(topic = m.topic(), partition = m.partition(), "a message from a partition the view does not read; skipped");
                            continue;
                        };
                        let next = offsets.get(&input).copied().unwrap_or(m.offset());
                        match fresh.verdict(input, m.offset(), next) {
                            // After a restart librdkafka may hand back a message below the
                            // stored position; it was counted already.
                            Verdict::Skip | Verdict::Drop => continue,
                            Verdict::RewindAndDrop => {
                                gap_rewinds.push((input, next));
                                continue;
                            }
                            Verdict::Take => {
                                if m.offset() > next {
                                    info!(partition = m.partition(), from = next, to = m.offset(), "offsets not in the partition (compaction or transaction markers); going on");
                                }
                            }
                        }
                        new_offsets.insert(input, m.offset() + 1);
                        offsets.insert(input, m.offset() + 1);
                        consumed += 1;
                        consumed_bytes += (m.key().map_or(0, <[u8]>::len) + m.payload().map_or(0, <[u8]>::len)) as u64;
                        let partitions_of = |source| offsets.keys().filter(|&&i| split_input(i).0 == source).count();
                        let decoded = crate::decode::check_order(self.source(source), m.key(), m.partition(), || partitions_of(source))
                            .and_then(|()| decode_with_epoch(self.source(source), m.key(), m.payload()))
                            .and_then(|(event, epoch)| match epoch {
                                Some(e) => crate::changes::fence_epoch(&mut meta.change_epochs, input, e).map(|()| event),
                                None => Ok(event),
                            });
                        match decoded {
                            Ok(Some(event)) => {
                                events.push(event);
                                origins.push((m.topic().to_string(), m.partition(), m.offset(), input));
                            }
                            Ok(None) => {}
                            Err(reason) => {
                                warn!(topic = m.topic(), partition = m.partition(), offset = m.offset(), %reason, "message sent to the dead-letter table");
                                commit.dead_letters.push(DeadLetter { topic: m.topic().to_string(), partition: m.partition(), offset: m.offset(), reason });
                            }
                        }
                    }
                    Ok(())
                })?;
                // The batch is evaluated (DuckDB) and applied (store reads) off the runtime's
                // threads; the core comes back with the result.
                let partitions: Vec<i32> = origins.iter().map(|(_, _, _, input)| *input).collect();
                let store = self.store.clone();
                let (back, applied) = tokio::task::spawn_blocking(move || {
                    let applied = core.apply_batch(&events, &partitions, &store);
                    (core, applied)
                })
                .instrument(span.clone())
                .await
                .map_err(|e| ActorError::Join(e.to_string()))?;
                core = back;
                for (i, reason) in applied.map_err(ActorError::View)? {
                    let (topic, partition, offset, _) = origins[i].clone();
                    span.in_scope(|| warn!(topic, partition, offset, %reason, "message sent to the dead-letter table"));
                    commit.dead_letters.push(DeadLetter { topic, partition, offset, reason });
                }
                for (input, next) in gap_rewinds {
                    let sources = self.owned_sources();
                    let low = tokio::task::spawn_blocking(move || input_marks(&sources))
                        .await
                        .map_err(|e| ActorError::Join(e.to_string()))??
                        .get(&input)
                        .map_or(next, |&(low, _)| low);
                    let to = (next - crate::progress::REWIND_MESSAGES).max(low).min(next);
                    let (topic, partition) = self.kafka_partition(input);
                    warn!(topic, partition, offset = next, rewind_to = to, "the broker answered from past the view's position; fetching again from earlier");
                    consumer.seek(topic, partition, Offset::Offset(to), METADATA_TIMEOUT)?;
                    fresh.rewound(input);
                }
                if consumed == 0 && !core.has_pending_changes() {
                    continue;
                }
                let (back, out) = tokio::task::spawn_blocking(move || {
                    let out = core.finish_batch();
                    (core, out)
                })
                .instrument(span.clone())
                .await
                .map_err(|e| ActorError::Join(e.to_string()))?;
                core = back;
                let out = out.map_err(ActorError::View)?;
                meta.watermark_us = out.watermark;
                meta.event_times_us = out.event_times.clone();
                meta.arrival = out.arrival;
                meta.late_events += out.late_events;
                for (key, reason) in &out.group_errors {
                    // Not a message: partition and offset -1 say the record is about a row.
                    let key: Vec<String> = key.iter().map(ToString::to_string).collect();
                    let reason = format!("view row ({}) left out: {reason}", key.join(", "));
                    warn!(%reason, "a row of the view could not be computed");
                    commit.dead_letters.push(DeadLetter { topic: self.stream.topic.clone(), partition: -1, offset: -1, reason });
                }
                let now = self.clock.now_ms();
                meta.events += consumed;
                meta.state_format = crate::store::STATE_FORMAT;
                meta.source_bytes += consumed_bytes;
                meta.view_rows = meta.view_rows.saturating_add_signed(out.rows_delta);
                meta.view_bytes = meta.view_bytes.saturating_add_signed(out.bytes_delta);
                meta.dead_letters += commit.dead_letters.len() as u64;
                if !out.changes.is_empty() {
                    meta.seq += 1;
                    meta.last_batch_at_ms = now;
                    let mut batch = pb::ChangeBatch {
                        view: self.def.name.clone(),
                        seq: meta.seq,
                        changes: out.changes.iter().map(change_to_wire).collect(),
                        source_offsets: offsets
                            .iter()
                            .map(|(&input, &next_offset)| {
                                let (topic, partition) = self.kafka_partition(input);
                                pb::SourceOffset { topic: topic.to_string(), partition, next_offset }
                            })
                            .collect(),
                        produced_at_ms: now,
                        events: consumed,
                        full: false,
                        trace_context: crate::ship::trace_context(&span),
                        ..Default::default()
                    };
                    batch.checksum = meridian_proto::chain_checksum(meta.checksum, &batch);
                    meta.checksum = batch.checksum;
                    commit.log = Some(batch);
                }
                commit.meta = meta.clone();
                commit.offsets = new_offsets.into_iter().collect();
                commit.groups = out.groups;
                commit.rows = out.rows;
                commit.truncate_rows = out.truncate_rows;
                commit.join = out.join;
                let n_dead = commit.dead_letters.len();
                let store = self.store.clone();
                tokio::task::spawn_blocking(move || store.commit(commit)).instrument(span.clone()).await.map_err(|e| ActorError::Join(e.to_string()))??;
                span.in_scope(|| debug!(seq = meta.seq, events = consumed, changes = out.changes.len(), "committed batch"));
                self.latest.send_replace(meta.seq);
                self.check_caught_up(&offsets, &mut catch_up);
                while let Ok(sample) = samples.try_recv() {
                    freshness.sample(sample);
                }
                self.publish_fresh(freshness.committed(meta.seq, &offsets));
                let recent = if n_dead > 0 { Some(self.store.recent_dead_letters(RECENT_DEAD_LETTERS_MAX)?) } else { None };
                self.set_status(|s| {
                    s.seq = meta.seq;
                    s.events = meta.events;
                    s.dead_letters = meta.dead_letters;
                    s.last_batch_at_ms = meta.last_batch_at_ms;
                    s.source_bytes = meta.source_bytes;
                    s.view_rows = meta.view_rows;
                    s.view_bytes = meta.view_bytes;
                    s.late_events = meta.late_events;
                    s.watermark_us = meta.watermark_us;
                    if let Some(r) = recent {
                        s.recent_dead_letters = r;
                    }
                });
            }
        }
        .instrument(span)
        .await
    }

    /// The streams the view reads: its own, then the one it joins.
    fn sources(&self) -> Vec<&StreamDef> {
        std::iter::once(&self.stream)
            .chain(self.joined.as_ref())
            .collect()
    }

    fn owned_sources(&self) -> Vec<StreamDef> {
        self.sources().into_iter().cloned().collect()
    }

    /// Input stream `i` (0: the view's own, 1: the one it joins).
    fn source(&self, i: usize) -> &StreamDef {
        match (i, &self.joined) {
            (1, Some(j)) => j,
            _ => &self.stream,
        }
    }

    /// The input stream and input partition of a message's topic and partition.
    fn input_of(&self, topic: &str, partition: i32) -> Option<(usize, i32)> {
        let source = if self.stream.topic == topic {
            0
        } else if self.joined.as_ref().is_some_and(|j| j.topic == topic) {
            1
        } else {
            return None;
        };
        Some((source, input_partition(source, partition)?))
    }

    /// The topic and Kafka partition of an input partition.
    fn kafka_partition(&self, input: i32) -> (&str, i32) {
        let (source, partition) = split_input(input);
        (self.source(source).topic.as_str(), partition)
    }

    /// Feeds a message of a view's change log to `window`.
    fn note_snapshot(
        &self,
        window: &mut crate::changes::SnapshotWindow,
        m: &rdkafka::message::OwnedMessage,
    ) {
        if let Some((source, input)) = self.input_of(m.topic(), m.partition()) {
            if self.source(source).format == catalog::DataFormat::ChangeLog {
                window.note(input, m.payload());
            }
        }
    }

    fn publish_fresh(&self, fresh: Option<crate::fresh::Fresh>) {
        if let (Some(tx), Some(f)) = (&self.fresh, fresh) {
            tx.send_replace(f);
        }
    }

    /// Signals `caught_up` once every partition's offset reached its mark.
    fn check_caught_up(&self, offsets: &HashMap<i32, i64>, marks: &mut Option<HashMap<i32, i64>>) {
        let done = marks.as_ref().is_none_or(|m| {
            m.iter()
                .all(|(p, high)| offsets.get(p).copied().unwrap_or(0) >= *high)
        });
        if done {
            if let Some(tx) = &self.caught_up {
                if !*tx.borrow() {
                    info!("caught up with the stream; shipping");
                    tx.send_replace(true);
                }
            }
            *marks = None;
        }
    }

    fn set_status(&self, f: impl FnOnce(&mut ActorStatus)) {
        let mut s = self.status.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut s);
    }

    /// Assigns every partition of the view's topics (its stream's, and the joined stream's),
    /// each at its stored next offset (or the beginning). Also returns the starting offset of
    /// every input partition that had none stored: the partition's oldest message now.
    async fn subscribe(
        &self,
        offsets: &HashMap<i32, i64>,
    ) -> Result<(StreamConsumer, Vec<(i32, i64)>, Vec<i32>), ActorError> {
        let (partitions, started) = tokio::task::spawn_blocking({
            let sources = self.owned_sources();
            let known: Vec<i32> = offsets.keys().copied().collect();
            move || -> Result<_, ActorError> {
                let mut all = Vec::new();
                let mut started = Vec::new();
                for (source, stream) in sources.iter().enumerate() {
                    let consumer: BaseConsumer =
                        consumer_config(stream, "meridian-metadata").create()?;
                    for p in topic_partitions(stream)? {
                        let input = input_of_partition(source, stream, p)?;
                        all.push((input, stream.topic.clone(), p));
                        if !known.contains(&input) {
                            let (low, _high) =
                                consumer.fetch_watermarks(&stream.topic, p, METADATA_TIMEOUT)?;
                            // A view's change topic read from the middle misses the rows
                            // written before: its first messages must still be there.
                            if low > 0 && stream.format == catalog::DataFormat::ChangeLog {
                                return Err(ActorError::DataLost(format!("the change topic '{}' of view '{}' no longer holds its first messages (its oldest is offset {low}): a view starting to read it would miss rows; give the topic no retention (retention.ms=-1), then drop and re-create both views", stream.topic, stream.name)));
                            }
                            started.push((input, low));
                        }
                    }
                }
                Ok((all, started))
            }
        })
        .await
        .map_err(|e| ActorError::Join(e.to_string()))??;
        let started = match (&self.start, started.is_empty()) {
            (Some(record), false) => {
                let recorded = record(started.clone()).await.map_err(ActorError::Start)?;
                let mut agreed = Vec::with_capacity(started.len());
                for (p, low) in started {
                    let Some(&(_, o)) = recorded.iter().find(|(q, _)| *q == p) else {
                        return Err(ActorError::Start(format!(
                            "the answer has no starting offset for partition {p}"
                        )));
                    };
                    if o != low {
                        info!(
                            partition = p,
                            offset = o,
                            oldest = low,
                            "starting where the view first started"
                        );
                    }
                    agreed.push((p, o));
                }
                agreed
            }
            _ => started,
        };
        let consumer: StreamConsumer =
            consumer_config(&self.stream, &format!("meridian-view-{}", self.def.name)).create()?;
        let mut tpl = TopicPartitionList::new();
        for (input, topic, p) in &partitions {
            let offset = offsets
                .get(input)
                .or_else(|| started.iter().find(|(q, _)| q == input).map(|(_, o)| o))
                .copied()
                .unwrap_or(0);
            tpl.add_partition_offset(topic, *p, Offset::Offset(offset))?;
        }
        consumer.assign(&tpl)?;
        info!(topics = ?self.sources().iter().map(|s| s.topic.as_str()).collect::<Vec<_>>(), partitions = partitions.len(), "consuming");
        Ok((
            consumer,
            started,
            partitions.into_iter().map(|(input, _, _)| input).collect(),
        ))
    }
}

/// The input partition of partition `p` of input `source`, or an error for a partition
/// number too large to number inputs by.
fn input_of_partition(source: usize, stream: &StreamDef, p: i32) -> Result<i32, ActorError> {
    input_partition(source, p).ok_or_else(|| {
        ActorError::View(format!(
            "topic '{}' has partition {p}, beyond the {} partitions a view reads per topic",
            stream.topic,
            1 << crate::core::INPUT_SHIFT
        ))
    })
}

fn received(
    m: rdkafka::error::KafkaResult<rdkafka::message::BorrowedMessage<'_>>,
) -> Result<rdkafka::message::OwnedMessage, ActorError> {
    use rdkafka::error::{KafkaError, RDKafkaErrorCode};
    match m {
        Ok(m) => Ok(m.detach()),
        Err(KafkaError::MessageConsumption(RDKafkaErrorCode::AutoOffsetReset)) => {
            Err(ActorError::DataLost("offset out of range".into()))
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests;
