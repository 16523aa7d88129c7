//! Subscriptions: a view's changes, in seq order, from any node of the region, resumed on
//! another node from the last position received when the node answering goes away.
//!
//! ```no_run
//! # async fn demo() -> Result<(), client::Error> {
//! let client = client::Client::connect(["http://127.0.0.1:7101", "http://127.0.0.1:7102"]).await?;
//! let mut sub = client.subscribe("revenue_by_region");
//! let mut rows = std::collections::HashMap::new();
//! while let Some(event) = sub.next().await {
//!     let event = event?;
//!     if event.full {
//!         rows.clear();
//!     }
//!     for change in event.changes {
//!         match change {
//!             client::Change::Upsert { key, row } => {
//!                 rows.insert(format!("{key:?}"), row);
//!             }
//!             client::Change::Delete { key } => {
//!                 rows.remove(&format!("{key:?}"));
//!             }
//!         }
//!     }
//! }
//! # Ok(()) }
//! ```

use std::time::Duration;

use meridian_proto::v1 as pb;
use meridian_proto::v1::region_client::RegionClient;
use tonic::transport::Channel;
use tonic::{Code, Streaming};

use crate::{Column, Error, Value};

/// Rounds over every node of the region a subscription tries before `next` reports an error
/// (calling `next` again tries again).
pub const RESUME_ROUNDS_MAX: u32 = 3;
const RESUME_PAUSE_MIN: Duration = Duration::from_millis(200);
const RESUME_PAUSE_MAX: Duration = Duration::from_secs(2);

/// A subscription's place in a view's change log: the last event received.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SubscribePosition {
    pub view_id: u64,
    pub epoch: u64,
    pub seq: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    /// The row with this key is now `row` (every column, in the view's column order).
    Upsert {
        key: Vec<Value>,
        row: Vec<Value>,
    },
    Delete {
        key: Vec<Value>,
    },
}

#[derive(Clone, Debug)]
pub struct SubscriptionEvent {
    /// The changes hold every row of the view: drop what you held first.
    pub full: bool,
    /// Read from the node's replica to start or restart the subscription (a full event).
    pub snapshot: bool,
    /// The view's columns and the indexes of its key columns (on a snapshot).
    pub columns: Vec<Column>,
    pub key_indexes: Vec<usize>,
    pub position: SubscribePosition,
    pub changes: Vec<Change>,
}

/// A view's change stream; see [`crate::Client::subscribe`].
pub struct Subscription {
    pub(crate) view: String,
    pub(crate) nodes: Vec<(String, RegionClient<Channel>)>,
    pub(crate) next_node: usize,
    pub(crate) stream: Option<(String, Streaming<pb::SubscribeEvent>)>,
    pub(crate) position: Option<SubscribePosition>,
    /// Snapshots received, the first one included.
    pub(crate) snapshots: u64,
}

impl Subscription {
    /// The last event's position (`None` before the first).
    pub fn position(&self) -> Option<SubscribePosition> {
        self.position
    }

    /// Snapshots received so far: one at the start, more only when a resume could not
    /// continue from the position.
    pub fn snapshots(&self) -> u64 {
        self.snapshots
    }

    /// The URL of the node streaming now.
    pub fn node(&self) -> Option<&str> {
        self.stream.as_ref().map(|(url, _)| url.as_str())
    }

    /// The next event. A node that fails or goes away is replaced by the region's next one,
    /// resuming after the last event; `Err` when no node gave an event for
    /// [`RESUME_ROUNDS_MAX`] rounds, or every node refused the view. Never ends by itself.
    pub async fn next(&mut self) -> Option<Result<SubscriptionEvent, Error>> {
        let n = self.nodes.len() as u32;
        // Nodes that failed (or refused the view) in a row since the last event.
        let (mut failures, mut refusals) = (0u32, 0u32);
        let mut pause = RESUME_PAUSE_MIN;
        loop {
            if failures > 0 && failures % n == 0 && self.stream.is_none() {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(RESUME_PAUSE_MAX);
            }
            if self.stream.is_none() {
                match self.open().await {
                    Ok(()) => {}
                    Err((url, status)) => {
                        if let Some(e) = self.failed(url, &status, &mut failures, &mut refusals) {
                            return Some(Err(e));
                        }
                        continue;
                    }
                }
            }
            let Some((url, stream)) = self.stream.as_mut() else {
                continue;
            };
            let url = url.clone();
            let failure = match stream.message().await {
                Ok(Some(ev)) => return Some(Ok(self.take(ev))),
                Ok(None) => tonic::Status::unavailable("the node ended the subscription"),
                Err(status) => status,
            };
            tracing::debug!(node = %url, error = %failure.message(), "subscription broke; resuming on the next node");
            self.stream = None;
            if let Some(e) = self.failed(url, &failure, &mut failures, &mut refusals) {
                return Some(Err(e));
            }
        }
    }

    /// Counts a node's failure and moves to the next node; the error to return once every
    /// node refused the view, or none answered for [`RESUME_ROUNDS_MAX`] rounds.
    fn failed(
        &mut self,
        url: String,
        status: &tonic::Status,
        failures: &mut u32,
        refusals: &mut u32,
    ) -> Option<Error> {
        let n = self.nodes.len() as u32;
        self.next_node += 1;
        *failures += 1;
        let message = status.message().to_string();
        match status.code() {
            Code::InvalidArgument => return Some(Error::Refused { node: url, message }),
            // A node that does not hold the view (yet): another may.
            Code::NotFound => {
                *refusals += 1;
                if *refusals >= n {
                    return Some(Error::Refused { node: url, message });
                }
            }
            _ => *refusals = 0,
        }
        if *failures >= RESUME_ROUNDS_MAX * n {
            return Some(Error::Unavailable { node: url, message });
        }
        None
    }

    async fn open(&mut self) -> Result<(), (String, tonic::Status)> {
        let idx = self.next_node % self.nodes.len();
        let (url, client) = &self.nodes[idx];
        let pos = self.position.unwrap_or_default();
        let req = pb::SubscribeRequest {
            view: self.view.clone(),
            view_id: pos.view_id,
            epoch: pos.epoch,
            seq: pos.seq,
        };
        match client.clone().subscribe(req).await {
            Ok(resp) => {
                // Stay on this node until it fails.
                self.next_node = idx;
                self.stream = Some((url.clone(), resp.into_inner()));
                Ok(())
            }
            Err(s) => Err((url.clone(), s)),
        }
    }

    fn take(&mut self, ev: pb::SubscribeEvent) -> SubscriptionEvent {
        let batch = ev.batch.unwrap_or_default();
        let position = SubscribePosition {
            view_id: ev.view_id,
            epoch: batch.epoch,
            seq: batch.seq,
        };
        self.position = Some(position);
        if ev.snapshot {
            self.snapshots += 1;
        }
        let (columns, key_indexes) = ev.schema.map_or_else(Default::default, |s| {
            (
                s.columns
                    .into_iter()
                    .map(|c| Column {
                        name: c.name,
                        type_name: c.r#type,
                    })
                    .collect(),
                s.key_indexes.into_iter().map(|i| i as usize).collect(),
            )
        });
        SubscriptionEvent {
            full: batch.full,
            snapshot: ev.snapshot,
            columns,
            key_indexes,
            position,
            changes: batch
                .changes
                .into_iter()
                .map(|c| {
                    let key = c.key.into_iter().map(Value::from).collect();
                    match c.row {
                        Some(row) => Change::Upsert {
                            key,
                            row: row.values.into_iter().map(Value::from).collect(),
                        },
                        None => Change::Delete { key },
                    }
                })
                .collect(),
        }
    }
}
