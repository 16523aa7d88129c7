//! Writes a view's change log to its Kafka change topic, for the views that read the view (a
//! view over a view). One sink per such view, beside its shippers, under the same lease.
//!
//! The topic is a table of the view's rows by key: upserts, deletes, and a truncate that
//! starts a snapshot. Writing a change twice leaves the same rows (every message carries the
//! whole row), so the sink is at-least-once and the reading view's result exactly-once: after a
//! crash it writes again from its stored position. A sink that starts on a new epoch (a new
//! owner, a restart, a rolled-back state) or finds its position gone from the change log
//! writes a snapshot: a truncate, then every row. Messages carry the epoch, and a reading view
//! applies none older than one it has read, so a former owner's late messages are fenced.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use catalog::{StreamDef, ViewDef};
use meridian_proto::v1 as pb;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientConfig;
use tokio::sync::watch;
use tracing::{info, info_span, warn, Instrument};

use crate::changes::{encode, encode_upsert, ChangeOp};
use crate::ship::{on_store_thread, Backoff, Lease, ShipState};
use crate::store::{epoch_text, ViewStore};

/// Change batches read from the store at a time.
const SINK_BATCHES_MAX: usize = 64;
/// Messages in flight to the brokers at once (a snapshot is written in chunks of this many).
const IN_FLIGHT_MAX: usize = 2_000;
/// A message not delivered in this time fails the round, which is retried from the stored
/// position.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);
/// With nothing to write, the sink looks at the lease and the change log this often.
const IDLE_POLL: Duration = Duration::from_secs(1);

/// Where the sink goes on from (sans IO).
#[derive(Debug, PartialEq)]
pub enum Resume {
    /// Write a truncate and every row of the view, for this reason.
    Snapshot(String),
    /// Write the change log from this seq.
    From(u64),
}

/// Decides where to go on from, given the stored position (epoch and seq written), the change
/// log's current epoch and its last seq.
pub fn resume(position: Option<(u64, u64)>, epoch: u64, central_seq: u64) -> Resume {
    match position {
        None => Resume::Snapshot("the change topic was not written from this state".into()),
        Some((e, _)) if e != epoch => Resume::Snapshot(format!(
            "a new epoch {} of the change log (the topic was written in {})",
            epoch_text(epoch),
            epoch_text(e)
        )),
        Some((_, s)) if s > central_seq => Resume::Snapshot(format!(
            "the topic was written up to seq {s}, past the central state's {central_seq}"
        )),
        Some((_, s)) => Resume::From(s + 1),
    }
}

pub struct Sink {
    pub def: ViewDef,
    /// The view's change stream (topic, brokers and Kafka settings), as readers see it.
    pub stream: StreamDef,
    pub store: ViewStore,
    pub latest: watch::Receiver<u64>,
    pub lease: watch::Receiver<Lease>,
    pub ready: watch::Receiver<bool>,
    pub state: Arc<Mutex<ShipState>>,
    pub seed: u64,
}

#[derive(Debug, thiserror::Error)]
enum SinkError {
    #[error("{0}")]
    Store(String),
    #[error("kafka: {0}")]
    Kafka(String),
}

impl Sink {
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let span = info_span!("sink", view = %self.def.name, topic = %self.stream.topic);
        async move {
            let mut backoff = Backoff::new(self.seed);
            loop {
                match self.round(&mut stop, &mut backoff).await {
                    Ok(()) => return,
                    Err(e) => {
                        warn!(error = %e, "writing the view's change topic failed; retrying from the stored position");
                        self.set(|s| s.error = e.to_string());
                    }
                }
                tokio::select! {
                    _ = stop.changed() => return,
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                }
            }
        }
        .instrument(span)
        .await
    }

    /// Waits until the view caught up, makes sure of the topic, then writes until stopped
    /// (`Ok`) or until something fails.
    async fn round(
        &self,
        stop: &mut watch::Receiver<bool>,
        backoff: &mut Backoff,
    ) -> Result<(), SinkError> {
        // A state rebuilt from the stream is behind what the topic may hold from the view's
        // previous owner: nothing is written before it caught up.
        let mut ready = self.ready.clone();
        while !*ready.borrow() {
            self.set(|s| s.error = "catching up with the stream before writing".into());
            tokio::select! {
                _ = stop.changed() => return Ok(()),
                r = ready.changed() => if r.is_err() { return Ok(()) },
            }
        }
        // A topic this sink wrote to and that is gone was deleted (its view dropped, or by
        // hand): made again, it would hold only what follows, so it is not.
        let store = self.store.clone();
        let wrote = on_store_thread(move || store.sink_position())
            .await
            .map_err(SinkError::Store)?
            .is_some();
        self.ensure_topic(!wrote).await?;
        let producer: FutureProducer = self
            .client_config()
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .set(
                "message.timeout.ms",
                DELIVERY_TIMEOUT.as_millis().to_string(),
            )
            .create()
            .map_err(|e| SinkError::Kafka(e.to_string()))?;
        self.set(|s| s.error.clear());
        let result = self.write(&producer, stop, backoff).await;
        // Dropping a producer flushes and joins its threads: not on the runtime's threads.
        let _ = tokio::task::spawn_blocking(move || drop(producer)).await;
        result
    }

    async fn write(
        &self,
        producer: &FutureProducer,
        stop: &mut watch::Receiver<bool>,
        backoff: &mut Backoff,
    ) -> Result<(), SinkError> {
        let mut latest = self.latest.clone();
        let mut lease_rx = self.lease.clone();
        loop {
            if *stop.borrow() {
                return Ok(());
            }
            let lease = *lease_rx.borrow();
            if !lease.valid() {
                self.set(|s| s.error = "the lease lapsed; writing nothing".into());
                tokio::select! {
                    _ = stop.changed() => return Ok(()),
                    _ = lease_rx.changed() => {}
                    _ = tokio::time::sleep(IDLE_POLL) => {}
                }
                continue;
            }
            self.set(|s| {
                if s.error.starts_with("the lease lapsed") {
                    s.error.clear();
                }
            });
            // The seq the change log holds, read with the position (the actor tells `latest`
            // only after its commit, so the store may be ahead of it).
            latest.borrow_and_update();
            let store = self.store.clone();
            let (epoch, position, central_seq) = on_store_thread(move || {
                Ok((
                    store.epoch(lease.epoch)?,
                    store.sink_position()?,
                    store.load_meta()?.seq,
                ))
            })
            .await
            .map_err(SinkError::Store)?;
            let Some(epoch) = epoch else {
                // A newer lease's epoch is in the store: this worker lost the view.
                self.set(|s| s.error = format!("this worker's lease {} of the view is older than one its state has seen; writing nothing", lease.epoch));
                let _ = stop.changed().await;
                return Ok(());
            };
            match resume(position, epoch, central_seq) {
                Resume::Snapshot(why) => {
                    info!(reason = %why, epoch = %epoch_text(epoch), "writing a snapshot of the view to its change topic");
                    let store = self.store.clone();
                    let def = self.def.clone();
                    let full = on_store_thread(move || crate::ship::full_batch(&store, &def))
                        .await
                        .map_err(SinkError::Store)?;
                    let rows = full.changes.len() as u64;
                    let mut messages = vec![encode(
                        &self.def.name,
                        epoch,
                        full.seq,
                        ChangeOp::Truncate { rows },
                    )];
                    messages.extend(self.messages(epoch, &full));
                    self.send(producer, &lease_rx, stop, messages).await?;
                    self.written(epoch, full.seq, Some(why)).await?;
                    backoff.reset();
                }
                Resume::From(from) => {
                    let store = self.store.clone();
                    let batches = on_store_thread(move || store.read_log(from, SINK_BATCHES_MAX))
                        .await
                        .map_err(SinkError::Store)?;
                    if batches.is_empty() {
                        if central_seq >= from {
                            // The batches from `from` were truncated from the change log.
                            let store = self.store.clone();
                            on_store_thread(move || store.set_sink_position(None))
                                .await
                                .map_err(SinkError::Store)?;
                            continue;
                        }
                        tokio::select! {
                            _ = stop.changed() => return Ok(()),
                            _ = latest.changed() => {}
                            _ = lease_rx.changed() => {}
                            _ = tokio::time::sleep(IDLE_POLL) => {}
                        }
                        continue;
                    }
                    for batch in &batches {
                        self.send(
                            producer,
                            &lease_rx,
                            stop,
                            self.messages(epoch, batch).collect(),
                        )
                        .await?;
                        self.written(epoch, batch.seq, None).await?;
                    }
                    backoff.reset();
                }
            }
        }
    }

    /// The messages of one batch's changes, in order.
    fn messages<'a>(
        &'a self,
        epoch: u64,
        batch: &'a pb::ChangeBatch,
    ) -> impl Iterator<Item = (Vec<u8>, Vec<u8>)> + 'a {
        batch.changes.iter().map(move |c| match &c.row {
            Some(row) => encode_upsert(&self.def.name, epoch, batch.seq, &c.key, row),
            None => encode(&self.def.name, epoch, batch.seq, ChangeOp::Delete(&c.key)),
        })
    }

    /// Sends messages in order, at most [`IN_FLIGHT_MAX`] in flight, each under a valid
    /// lease and while not stopped; returns once every one is delivered.
    async fn send(
        &self,
        producer: &FutureProducer,
        lease: &watch::Receiver<Lease>,
        stop: &watch::Receiver<bool>,
        messages: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Result<(), SinkError> {
        for chunk in messages.chunks(IN_FLIGHT_MAX) {
            if !lease.borrow().valid() {
                return Err(SinkError::Kafka("the lease lapsed while writing".into()));
            }
            if *stop.borrow() {
                return Err(SinkError::Kafka("stopped while writing".into()));
            }
            let mut deliveries = Vec::with_capacity(chunk.len());
            for (key, value) in chunk {
                let record = FutureRecord::to(&self.stream.topic)
                    .partition(0)
                    .key(key.as_slice())
                    .payload(value.as_slice());
                let delivery = producer
                    .send_result(record)
                    .map_err(|(e, _)| SinkError::Kafka(e.to_string()))?;
                deliveries.push(delivery);
            }
            for d in deliveries {
                match d.await {
                    Ok(Ok(_)) => {}
                    Ok(Err((e, _))) => return Err(SinkError::Kafka(e.to_string())),
                    Err(_) => return Err(SinkError::Kafka("the producer went away".into())),
                }
            }
        }
        Ok(())
    }

    /// Records that the topic holds the change log up to `seq` of `epoch`.
    async fn written(&self, epoch: u64, seq: u64, reseed: Option<String>) -> Result<(), SinkError> {
        let store = self.store.clone();
        on_store_thread(move || store.set_sink_position(Some((epoch, seq))))
            .await
            .map_err(SinkError::Store)?;
        self.set(|s| {
            s.acked_seq = seq;
            s.epoch = epoch;
            s.error.clear();
            if let Some(why) = reseed {
                s.last_reseed = why;
            }
        });
        Ok(())
    }

    fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        for (k, v) in &self.stream.kafka_options {
            config.set(k, v);
        }
        config.set("bootstrap.servers", &self.stream.brokers);
        config
    }

    /// Creates the change topic if it does not exist (and `create`): one partition, so that the change log
    /// keeps its order, the brokers' default replication, and no time or size retention (a
    /// view that starts reading the topic reads it from its first message). A topic that
    /// exists is used as it is (no permission to create topics is needed then).
    async fn ensure_topic(&self, create: bool) -> Result<(), SinkError> {
        if self.topic_exists().await {
            return Ok(());
        }
        if !create {
            return Err(SinkError::Kafka(format!(
                "the change topic '{}' this view wrote to is not found (brokers unreachable, or the topic deleted); it is not created again, since the views reading it would miss what was written before",
                self.stream.topic
            )));
        }
        let admin: AdminClient<DefaultClientContext> = self
            .client_config()
            .create()
            .map_err(|e| SinkError::Kafka(e.to_string()))?;
        let topic = NewTopic::new(&self.stream.topic, 1, TopicReplication::Fixed(-1))
            .set("retention.ms", "-1")
            .set("retention.bytes", "-1");
        let results = admin
            .create_topics(
                [&topic],
                &AdminOptions::new()
                    .operation_timeout(Some(Duration::from_secs(10)))
                    .request_timeout(Some(Duration::from_secs(10))),
            )
            .await
            .map_err(|e| {
                SinkError::Kafka(format!("creating topic '{}': {e}", self.stream.topic))
            })?;
        for r in results {
            match r {
                Ok(_) => info!("created the view's change topic"),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((t, e)) => {
                    if self.topic_exists().await {
                        warn!(error = %e, "creating the change topic failed, but it exists; using it");
                        return Ok(());
                    }
                    return Err(SinkError::Kafka(format!("creating topic '{t}': {e}")));
                }
            }
        }
        Ok(())
    }

    async fn topic_exists(&self) -> bool {
        let stream = self.stream.clone();
        tokio::task::spawn_blocking(move || crate::actor::topic_partitions(&stream).is_ok())
            .await
            .unwrap_or(false)
    }

    fn set(&self, f: impl FnOnce(&mut ShipState)) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sink_writes_a_snapshot_unless_it_goes_on_in_the_same_epoch_from_a_position_it_can() {
        let e = 5 << 32 | 1;
        assert!(matches!(resume(None, e, 0), Resume::Snapshot(_)));
        assert!(matches!(resume(None, e, 9), Resume::Snapshot(_)));
        // Another epoch: another owner may have written meanwhile, or the state was rolled back.
        let Resume::Snapshot(why) = resume(Some((4 << 32 | 1, 3)), e, 9) else {
            panic!("a new epoch writes a snapshot");
        };
        assert!(why.contains("new epoch 5.1"), "{why}");
        assert!(matches!(
            resume(Some((e + 1, 3)), e, 9),
            Resume::Snapshot(_)
        ));
        // A position past the state (lost writes to the store) starts over.
        assert!(matches!(resume(Some((e, 10)), e, 9), Resume::Snapshot(_)));
        assert_eq!(resume(Some((e, 9)), e, 9), Resume::From(10));
        assert_eq!(resume(Some((e, 3)), e, 9), Resume::From(4));
        assert_eq!(resume(Some((e, 0)), e, 0), Resume::From(1));
    }
}
