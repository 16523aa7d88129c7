//! `Region.Subscribe`: one view's changes as this node applies them. A subscriber gets a
//! snapshot (a full batch read from the replica in one transaction) unless it resumes from a
//! position whose following batches the node still holds ([`crate::feed`]), then every batch
//! in seq order. When the view's table is replaced wholesale, or the subscriber falls so far
//! behind that the feed dropped batches it had not taken, it gets a new snapshot.

use std::sync::Arc;
use std::time::Duration;

use meridian_proto::v1 as pb;
use tokio::sync::{broadcast, mpsc, OwnedSemaphorePermit};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tracing::{debug, info, warn};

use crate::feed::{follows, FeedEvent};
use crate::service::Shared;

/// Subscriptions one node serves at once.
pub const SUBSCRIBERS_MAX: usize = 1000;
/// Events waiting for a slow subscriber's connection before the node stops reading the feed
/// for it (and it may fall behind, then get a snapshot).
const EVENTS_BUFFERED_MAX: usize = 64;

pub type EventStream = ReceiverStream<Result<pb::SubscribeEvent, Status>>;

/// Where a subscriber is: (view id, epoch, seq) of the last event it was sent.
type At = (u64, u64, u64);

pub fn subscribe(shared: &Shared, req: pb::SubscribeRequest) -> Result<EventStream, Status> {
    if req.view.is_empty() || req.view.len() > 256 {
        return Err(Status::invalid_argument(
            "subscribe: name the view (at most 256 bytes)",
        ));
    }
    if let Some(why) = shared.node.unavailable() {
        return Err(Status::unavailable(format!(
            "this node does not serve reads now: {why}"
        )));
    }
    let permit = shared.subscribers.clone().try_acquire_owned().map_err(|_| {
        Status::resource_exhausted(format!(
            "this node already serves {SUBSCRIBERS_MAX} subscriptions; try another node of the region"
        ))
    })?;
    let (tx, rx) = mpsc::channel(EVENTS_BUFFERED_MAX);
    let at = (req.view_id != 0).then_some((req.view_id, req.epoch, req.seq));
    info!(view = %req.view, resume = ?at, "subscription started");
    tokio::spawn(run(shared.clone(), req.view, at, tx, permit));
    Ok(ReceiverStream::new(rx))
}

type Tx = mpsc::Sender<Result<pb::SubscribeEvent, Status>>;

/// A node behind a resuming subscriber's position waits this long to catch up before it
/// sends the subscriber to another node (it never sends an older state).
const CATCH_UP_WAIT: Duration = Duration::from_secs(5);
/// How often a live subscription checks that its node still serves reads and knows a leader.
const HEALTH_CHECK: Duration = Duration::from_secs(1);
/// A node that knows no leader this long ends its subscriptions: it may be cut off from its
/// region, and another node can carry them on.
const LEADERLESS_MAX: Duration = Duration::from_secs(3);

/// Whether this node's position of the view is behind `at` (an older incarnation, epoch or
/// seq, or no table at all).
fn behind(pos: Option<&crate::replica::Position>, at: At) -> bool {
    let (vid, epoch, seq) = at;
    match pos {
        None => true,
        Some(p) if p.view_id != vid => p.view_id < vid,
        Some(p) => p.epoch < epoch || (p.epoch == epoch && p.seq < seq),
    }
}

async fn run(
    shared: Shared,
    view: String,
    mut at: Option<At>,
    tx: Tx,
    _permit: OwnedSemaphorePermit,
) {
    let feed = shared.node.feed().clone();
    // Set once this node reached a resuming subscriber's position: from then on a missing
    // tail means a snapshot, which can no longer be older than what the subscriber holds.
    let mut caught_up = false;
    loop {
        let (vid, epoch, seq) = at.unwrap_or_default();
        let start = feed.start(&view, vid, epoch, seq);
        let mut rx = start.rx;
        match start.since {
            Some(batches) => {
                for event in batches {
                    if !send_batch(&tx, &mut at, &event).await {
                        return;
                    }
                }
            }
            None => {
                if let (Some(pos), false) = (at, caught_up) {
                    if let Err(why) = wait_until_reached(&shared, &view, pos).await {
                        let _ = tx.send(Err(Status::unavailable(why))).await;
                        return;
                    }
                    caught_up = true;
                    // The tail may hold the batches after the position now.
                    continue;
                }
                let snap = match read_snapshot(&shared, &view).await {
                    Ok(Some(s)) => s,
                    Ok(None) => {
                        let _ = tx
                            .send(Err(Status::not_found(format!(
                                "view '{view}' is not held by this node's replica"
                            ))))
                            .await;
                        return;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                let Some(schema) = snap.schema.clone() else {
                    let _ = tx
                        .send(Err(Status::internal("stored view without a schema")))
                        .await;
                    return;
                };
                at = Some((schema.view_id, snap.epoch, snap.seq));
                let event = snapshot_event(&view, schema, snap);
                if tx.send(Ok(event)).await.is_err() {
                    return;
                }
            }
        }
        caught_up = false;
        // Live: every batch applied from here on.
        let mut health = tokio::time::interval(HEALTH_CHECK);
        let mut leaderless_since: Option<std::time::Instant> = None;
        loop {
            let next = tokio::select! {
                r = rx.recv() => r,
                () = tx.closed() => return,
                _ = health.tick() => {
                    if let Err(why) = healthy(&shared, &mut leaderless_since) {
                        let _ = tx.send(Err(Status::unavailable(why))).await;
                        return;
                    }
                    continue;
                }
            };
            match next {
                Ok(event) if !event.concerns(&view) => {}
                Ok(event) => match &*event {
                    FeedEvent::Reset { .. } => {
                        debug!(view = %view, "view replaced; the subscriber gets a snapshot");
                        at = None;
                        break;
                    }
                    FeedEvent::Batch { view_id, batch, .. } => {
                        let Some((vid, epoch, seq)) = at else { break };
                        if *view_id != vid {
                            at = None;
                            break;
                        }
                        if !follows(epoch, seq, batch) {
                            continue;
                        }
                        if !batch.full && batch.epoch == epoch && batch.seq != seq + 1 {
                            // The feed publishes every applied batch, so this is a bug: start over
                            // rather than hand the subscriber a gap.
                            warn!(view = %view, seq = batch.seq, after = seq, "gap in the change feed; the subscriber gets a snapshot");
                            at = None;
                            break;
                        }
                        if !send_batch(&tx, &mut at, &event).await {
                            return;
                        }
                    }
                },
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    debug!(view = %view, missed = n, "subscriber fell behind the feed; resuming from its position");
                    break;
                }
                Err(broadcast::error::RecvError::Closed) => {
                    let _ = tx
                        .send(Err(Status::unavailable("the node is shutting down")))
                        .await;
                    return;
                }
            }
        }
    }
}

/// Waits (at most [`CATCH_UP_WAIT`]) until this node's replica has reached `at`.
async fn wait_until_reached(shared: &Shared, view: &str, at: At) -> Result<(), String> {
    let deadline = std::time::Instant::now() + CATCH_UP_WAIT;
    loop {
        let state = shared.state().await.map_err(|s| s.message().to_string())?;
        let pos = state.positions.get(view);
        if !behind(pos, at) {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            return Err(format!(
                "this node is behind the subscription's position of view '{view}' (seq {} of epoch {}; it holds {}) after {CATCH_UP_WAIT:?}; resume on another node",
                at.2,
                at.1,
                pos.map_or("nothing".to_string(), |p| format!("seq {} of epoch {}", p.seq, p.epoch))
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Why a subscription must move to another node, if it must: this node serves no reads, or
/// has known no leader for [`LEADERLESS_MAX`].
fn healthy(
    shared: &Shared,
    leaderless_since: &mut Option<std::time::Instant>,
) -> Result<(), String> {
    if let Some(why) = shared.node.unavailable() {
        return Err(format!("this node does not serve reads now: {why}"));
    }
    if shared.node.leader_id() != 0 {
        *leaderless_since = None;
        return Ok(());
    }
    let since = *leaderless_since.get_or_insert_with(std::time::Instant::now);
    if since.elapsed() >= LEADERLESS_MAX {
        return Err(format!(
            "this node has known no leader of its region for {:?} (it may be cut off); resume on another node",
            since.elapsed()
        ));
    }
    Ok(())
}

/// Sends a batch event if it follows `at`, and moves `at` past it. False when the subscriber
/// is gone.
async fn send_batch(tx: &Tx, at: &mut Option<At>, event: &Arc<FeedEvent>) -> bool {
    let FeedEvent::Batch { view_id, batch, .. } = &**event else {
        return true;
    };
    if let Some((_, epoch, seq)) = *at {
        if !follows(epoch, seq, batch) {
            return true;
        }
    }
    *at = Some((*view_id, batch.epoch, batch.seq));
    tx.send(Ok(pb::SubscribeEvent {
        schema: None,
        batch: Some(batch.clone()),
        snapshot: false,
        view_id: *view_id,
    }))
    .await
    .is_ok()
}

fn snapshot_event(
    view: &str,
    schema: pb::ViewSchema,
    snap: pb::ViewSnapshot,
) -> pb::SubscribeEvent {
    let changes = snap
        .rows
        .into_iter()
        .map(|row| pb::RowChange {
            key: schema
                .key_indexes
                .iter()
                .map(|&i| row.values.get(i as usize).cloned().unwrap_or_default())
                .collect(),
            row: Some(row),
        })
        .collect();
    pb::SubscribeEvent {
        view_id: schema.view_id,
        batch: Some(pb::ChangeBatch {
            view: view.to_string(),
            seq: snap.seq,
            epoch: snap.epoch,
            checksum: snap.checksum,
            produced_at_ms: snap.produced_at_ms,
            full: true,
            changes,
            ..Default::default()
        }),
        schema: Some(schema),
        snapshot: true,
    }
}

/// A subscription's position as the HTTP endpoint takes it: `view_id:epoch:seq`.
pub fn parse_from(text: &str) -> Result<(u64, u64, u64), String> {
    let parts: Vec<&str> = text.trim().split(':').collect();
    match parts[..] {
        [v, e, s] => match (v.parse(), e.parse(), s.parse()) {
            (Ok(v), Ok(e), Ok(s)) => Ok((v, e, s)),
            _ => Err(format!(
                "from={text}: expected view_id:epoch:seq, as numbers"
            )),
        },
        _ => Err(format!("from={text}: expected view_id:epoch:seq")),
    }
}

/// An event as JSONEachRow lines: before the rows of a full batch,
/// `{"_op":"reset","_view_id":..,"_epoch":..,"_seq":..}` (drop what you hold); then per change
/// `{"_op":"upsert","_epoch":..,"_seq":..,<column>: <value>, ...}` with every column, or
/// `{"_op":"delete",...}` with the key columns. Values as change batches carry them (dates
/// as days, timestamps as microseconds since the Unix epoch, decimals as their text), arrays as
/// JSON arrays.
pub fn json_lines(ev: &pb::SubscribeEvent, schema: Option<&pb::ViewSchema>) -> String {
    use serde_json::{json, Map, Value as Json};
    let Some(b) = &ev.batch else {
        return String::new();
    };
    let mut out = String::new();
    if b.full {
        out.push_str(
            &json!({"_op": "reset", "_view_id": ev.view_id, "_epoch": b.epoch, "_seq": b.seq})
                .to_string(),
        );
        out.push('\n');
    }
    for c in &b.changes {
        let mut obj = Map::new();
        obj.insert(
            "_op".into(),
            Json::from(if c.row.is_some() { "upsert" } else { "delete" }),
        );
        obj.insert("_epoch".into(), Json::from(b.epoch));
        obj.insert("_seq".into(), Json::from(b.seq));
        let value = |v: &pb::Value| crate::formats::json_value(v, false);
        match (&c.row, schema) {
            (Some(row), Some(s)) => {
                for (col, v) in s.columns.iter().zip(&row.values) {
                    // An array travels as its JSON text (admitted as such).
                    let list = match (&v.kind, col.r#type.starts_with("array(")) {
                        (Some(pb::value::Kind::Text(t)), true) => serde_json::from_str(t).ok(),
                        _ => None,
                    };
                    obj.insert(col.name.clone(), list.unwrap_or_else(|| value(v)));
                }
            }
            (None, Some(s)) => {
                for (&i, v) in s.key_indexes.iter().zip(&c.key) {
                    if let Some(col) = s.columns.get(i as usize) {
                        obj.insert(col.name.clone(), value(v));
                    }
                }
            }
            (_, None) => {
                obj.insert(
                    "_key".into(),
                    Json::Array(c.key.iter().map(value).collect()),
                );
            }
        }
        out.push_str(&Json::Object(obj).to_string());
        out.push('\n');
    }
    out
}

/// The view's rows and position from this node's replica, in one transaction.
async fn read_snapshot(shared: &Shared, view: &str) -> Result<Option<pb::ViewSnapshot>, Status> {
    // A snapshot costs what a full read of the view costs: it takes a query permit.
    let permit = shared
        .queries
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| Status::unavailable("the node is shutting down"))?;
    let conn = shared
        .reader
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .try_clone()
        .map_err(|e| Status::unavailable(format!("reading the replica: {e}")))?;
    let view = view.to_string();
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        crate::replica::view_snapshot(&conn, &view)
    })
    .await
    .map_err(|e| Status::internal(format!("snapshot read failed: {e}")))?
    .map_err(|e| Status::unavailable(format!("reading the replica: {e}")))
}

#[cfg(test)]
mod tests {
    use super::behind;
    use crate::replica::Position;

    #[test]
    fn a_node_is_behind_a_subscriber_on_an_older_incarnation_epoch_or_seq() {
        let p = |view_id, epoch, seq| Position {
            view_id,
            epoch,
            seq,
            ..Position::default()
        };
        assert!(behind(None, (3, 1, 5)), "no table yet");
        assert!(
            behind(Some(&p(2, 9, 99)), (3, 1, 5)),
            "an older incarnation"
        );
        assert!(!behind(Some(&p(4, 1, 1)), (3, 1, 5)), "a newer incarnation");
        assert!(behind(Some(&p(3, 1, 4)), (3, 1, 5)));
        assert!(behind(Some(&p(3, 0, 9)), (3, 1, 5)));
        assert!(!behind(Some(&p(3, 1, 5)), (3, 1, 5)));
        assert!(!behind(Some(&p(3, 2, 1)), (3, 1, 5)), "a newer epoch");
    }

    #[test]
    fn json_lines_write_arrays_as_arrays_and_decimals_as_their_text() {
        use meridian_proto::v1 as pb;
        let text = |s: &str| pb::Value {
            kind: Some(pb::value::Kind::Text(s.into())),
        };
        let schema = pb::ViewSchema {
            view: "v".into(),
            columns: vec![
                pb::ColumnSchema {
                    name: "k".into(),
                    r#type: "decimal(10,2)".into(),
                },
                pb::ColumnSchema {
                    name: "tags".into(),
                    r#type: "array(string)".into(),
                },
            ],
            key_indexes: vec![0],
            view_id: 1,
        };
        let ev = pb::SubscribeEvent {
            batch: Some(pb::ChangeBatch {
                seq: 3,
                epoch: 1,
                changes: vec![pb::RowChange {
                    key: vec![text("1.50")],
                    row: Some(pb::Row {
                        values: vec![text("1.50"), text(r#"["a,b",null]"#)],
                    }),
                }],
                ..Default::default()
            }),
            view_id: 1,
            ..Default::default()
        };
        let line: serde_json::Value =
            serde_json::from_str(super::json_lines(&ev, Some(&schema)).trim()).expect("json");
        assert_eq!(line["k"], serde_json::json!("1.50"));
        assert_eq!(line["tags"], serde_json::json!(["a,b", null]));
    }
}
