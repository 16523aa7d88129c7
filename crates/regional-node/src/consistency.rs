//! Read consistency levels, chosen per read:
//! - `any`: the node's replica as it is (fastest);
//! - bounded staleness (`max_staleness_ms`): every view the statement names at most so far
//!   behind its source (see [`crate::staleness`]);
//! - `at_least(token)`: a state at least as new as an earlier answer's, on any node of the
//!   region (monotonic reads across failover; see [`meridian_proto::ReadToken`]);
//! - `linearizable`: the leader's commit index, confirmed by a majority (Raft ReadIndex),
//!   applied before the read runs.
//!
//! Each condition that is not met within the read's wait fails the read with its reason;
//! none is ever answered from an older state.

use std::time::{Duration, Instant};

use meridian_proto::ReadToken;
use tokio::sync::oneshot;

use crate::node::Request;
use crate::query::{QueryError, QueryResult};
use crate::service::Shared;

/// How often a linearizable read asks again for a read index the leader did not give.
const READ_INDEX_RETRY: Duration = Duration::from_millis(50);

/// What a read asks of the state it is answered from.
#[derive(Clone, Debug, Default)]
pub struct ReadLevel {
    pub max_staleness_ms: Option<i64>,
    pub at_least: Option<ReadToken>,
    pub linearizable: bool,
    /// How long the node may wait for the conditions, in ms.
    pub wait_ms: u64,
}

impl ReadLevel {
    /// `at_least` as a caller sent it (empty: none).
    pub fn parse_token(text: &str) -> Result<Option<ReadToken>, QueryError> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(None);
        }
        ReadToken::parse(text)
            .map(Some)
            .map_err(|e| QueryError::BadToken(e.to_string()))
    }
}

impl Shared {
    /// The read token of an answer from this node.
    pub fn token(&self, r: &QueryResult) -> ReadToken {
        ReadToken::new(self.region.clone(), r.raft_index)
    }

    /// Runs a read-only query at `level`.
    pub async fn query_at(
        &self,
        sql: String,
        level: &ReadLevel,
    ) -> Result<QueryResult, QueryError> {
        self.query_at_shaped(sql, level, crate::query::Shape::Rows)
            .await
    }

    /// [`Self::query_at`], answering in `shape` (rows, or Arrow IPC).
    pub async fn query_at_shaped(
        &self,
        sql: String,
        level: &ReadLevel,
        shape: crate::query::Shape,
    ) -> Result<QueryResult, QueryError> {
        // A node that cannot apply will not catch up by waiting.
        if let Some(why) = self.node.unavailable() {
            return Err(QueryError::Unavailable(why));
        }
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + Duration::from_millis(level.wait_ms);
        let waited = || started.elapsed().as_millis();
        let mut token_index = 0;
        if let Some(t) = &level.at_least {
            if t.region != self.region {
                return Err(QueryError::BadToken(format!(
                    "the token '{t}' is for region '{}'; this node is in region '{}'",
                    t.region, self.region
                )));
            }
            token_index = t.index;
        }
        let mut required = token_index;
        if level.linearizable {
            required = required.max(self.read_index(deadline, started).await?);
        }
        if required > 0 {
            let applied = self.node.wait_applied(required, deadline).await;
            if applied < required {
                let why = if level.linearizable && required > token_index {
                    "the region's commit index for a linearizable read"
                } else {
                    "the read's at_least token"
                };
                return Err(QueryError::TooStale(format!(
                    "this node has applied the region's log up to index {applied}, short of {required} ({why}); waited {} ms (max_staleness_wait_ms={})",
                    waited(),
                    level.wait_ms
                )));
            }
        }
        let mut result = self.query_shaped(sql.clone(), shape).await;
        if let Ok(r) = &result {
            // Applied index and replica commit move together, so this cannot fail unless the
            // replica went back: refuse rather than answer from an older state.
            if r.raft_index < token_index {
                return Err(QueryError::TooStale(format!(
                    "the replica's state is at index {} of the region's log, older than the read's at_least token ({token_index})",
                    r.raft_index
                )));
            }
        }
        let Some(max_ms) = level.max_staleness_ms else {
            return result;
        };
        let deadline = deadline.into_std();
        while let Ok(r) = &result {
            let Err(why) = crate::staleness::check(&sql, &r.positions, max_ms) else {
                break;
            };
            if Instant::now() + crate::staleness::RETRY > deadline {
                return Err(QueryError::TooStale(format!(
                    "{why}; waited {} ms (max_staleness_wait_ms={})",
                    waited(),
                    level.wait_ms
                )));
            }
            tokio::time::sleep(crate::staleness::RETRY).await;
            result = self.query_shaped(sql.clone(), shape).await;
        }
        result
    }

    /// A linearizable read's index (Raft ReadIndex), asking again until `deadline`: a new
    /// leader drops requests until it has committed an entry of its own term.
    async fn read_index(
        &self,
        deadline: tokio::time::Instant,
        started: Instant,
    ) -> Result<u64, QueryError> {
        let mut last = String::from("no answer from the region's leader");
        loop {
            let (tx, rx) = oneshot::channel();
            self.node
                .send(Request::ReadIndex { reply: tx })
                .await
                .map_err(|e| QueryError::Unavailable(e.into()))?;
            match tokio::time::timeout_at(deadline, rx).await {
                Ok(Ok(Ok(index))) => return Ok(index),
                Ok(Ok(Err(why))) => last = why,
                Ok(Err(_)) => last = "the raft thread is gone".into(),
                Err(_) => break,
            }
            if tokio::time::Instant::now() + READ_INDEX_RETRY >= deadline {
                break;
            }
            tokio::time::sleep(READ_INDEX_RETRY).await;
        }
        Err(QueryError::TooStale(format!(
            "a linearizable read needs the region's leader to confirm its commit index with a majority: {last}; waited {} ms",
            started.elapsed().as_millis()
        )))
    }
}
