//! Linearizable reads: Raft ReadIndex. A node asks the leader for its commit index; the leader
//! answers only after a majority has confirmed it still leads (raft-rs's `ReadOnlyOption::Safe`),
//! so once this node's replica has applied up to that index, it holds every batch the region
//! acknowledged before the read began. A node cut off from a majority never gets an answer:
//! its read fails at its deadline instead of serving a stale state.

use std::time::{Duration, Instant};

use raft::prelude::ReadState;
use tokio::sync::oneshot;
use tracing::debug;

use super::Node;

/// Linearizable reads a node keeps waiting at once; more are refused.
pub const READS_PENDING_MAX: usize = 1024;
/// A ReadIndex request the leader has not answered by then is failed (its callers may ask
/// again: a new leader drops its predecessor's requests and those sent before it committed an
/// entry of its own term).
pub const READ_INDEX_TIMEOUT: Duration = Duration::from_secs(1);

/// Reply to a linearizable read: the index to wait for, or why there is none.
pub type ReadReply = oneshot::Sender<Result<u64, String>>;

/// Reads share ReadIndex requests: one request is in flight at a time, and the reads that
/// arrive meanwhile wait for the next one. A read may only use an index the leader confirmed
/// *after* the read arrived, so it never joins a request already asked.
#[derive(Default)]
pub(super) struct Reads {
    next: u64,
    /// The request in flight: its id, when it was asked, and the reads it answers.
    inflight: Option<(u64, Instant, Vec<ReadReply>)>,
    /// Reads that arrived after the request in flight was asked.
    waiting: Vec<ReadReply>,
}

impl Reads {
    fn len(&self) -> usize {
        self.waiting.len() + self.inflight.as_ref().map_or(0, |(_, _, r)| r.len())
    }
}

impl Node {
    pub(super) fn read_index(&mut self, reply: ReadReply) {
        if self.raw.raft.leader_id == raft::INVALID_ID {
            let _ = reply.send(Err(
                "no leader is known to this node (it may be cut off from a majority of its region)"
                    .into(),
            ));
            return;
        }
        if self.reads.len() >= READS_PENDING_MAX {
            let _ = reply.send(Err(format!(
                "{READS_PENDING_MAX} linearizable reads are already waiting on this node"
            )));
            return;
        }
        self.reads.waiting.push(reply);
    }

    /// Asks one ReadIndex for every waiting read, unless a request is in flight; whether it
    /// asked. Never while a Ready is being handled: raft-rs forbids changing its state between
    /// `ready` and `advance` (a follower's request is a message, and a message there is fatal).
    pub(super) fn ask_read_index(&mut self) -> bool {
        if self.reads.inflight.is_some() {
            return false;
        }
        if self.reads.waiting.is_empty() {
            return false;
        }
        self.reads.next += 1;
        let id = self.reads.next;
        // The leader keys requests by their context: node and process make it unique in
        // the region.
        let mut ctx = Vec::with_capacity(24);
        for word in [self.id, self.incarnation, id] {
            ctx.extend_from_slice(&word.to_be_bytes());
        }
        self.raw.read_index(ctx);
        let replies = std::mem::take(&mut self.reads.waiting);
        self.reads.inflight = Some((id, Instant::now(), replies));
        true
    }

    /// Answers the reads whose index the leader confirmed (the next request is asked after
    /// the Ready, by the Raft thread's loop).
    pub(super) fn read_states(&mut self, states: Vec<ReadState>) {
        for rs in states {
            let Some(id) = read_ctx(&rs.request_ctx, self.id, self.incarnation) else {
                continue;
            };
            if self
                .reads
                .inflight
                .as_ref()
                .is_some_and(|(i, _, _)| *i == id)
            {
                if let Some((_, _, replies)) = self.reads.inflight.take() {
                    for r in replies {
                        let _ = r.send(Ok(rs.index));
                    }
                }
            }
        }
    }

    /// Fails the reads of the request in flight once it is older than [`READ_INDEX_TIMEOUT`]
    /// (the loop then asks for the reads waiting behind it), and forgets abandoned reads.
    pub(super) fn expire_reads(&mut self, now: Instant) {
        self.reads.waiting.retain(|r| !r.is_closed());
        let expired = self
            .reads
            .inflight
            .as_ref()
            .is_some_and(|(_, asked, _)| now.duration_since(*asked) >= READ_INDEX_TIMEOUT);
        if expired {
            if let Some((id, _, replies)) = self.reads.inflight.take() {
                debug!(id, reads = replies.len(), "read index request expired");
                for r in replies {
                    let _ = r.send(Err(format!(
                        "the region's leader did not confirm a read index within {READ_INDEX_TIMEOUT:?}"
                    )));
                }
            }
        }
    }
}

fn read_ctx(ctx: &[u8], id: u64, incarnation: u64) -> Option<u64> {
    if ctx.len() != 24 {
        return None;
    }
    let word = |i: usize| -> Option<u64> {
        ctx.get(i * 8..i * 8 + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes)
    };
    (word(0)? == id && word(1)? == incarnation).then_some(word(2)?)
}

#[cfg(test)]
mod tests {
    #[test]
    fn read_contexts_name_this_node_and_process_only() {
        let ctx: Vec<u8> = [3u64, 77, 9].iter().flat_map(|w| w.to_be_bytes()).collect();
        assert_eq!(super::read_ctx(&ctx, 3, 77), Some(9));
        assert_eq!(super::read_ctx(&ctx, 2, 77), None);
        assert_eq!(super::read_ctx(&ctx, 3, 78), None);
        assert_eq!(super::read_ctx(&ctx[..16], 3, 77), None);
    }
}
