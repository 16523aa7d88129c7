//! Linearizable reads: Raft ReadIndex. A node asks the leader for its commit index; the leader
//! answers only after a majority has confirmed it still leads (raft-rs's `ReadOnlyOption::Safe`),
//! so once this node's replica has applied up to that index, it holds every batch the region
//! acknowledged before the read began. A node cut off from a majority never gets an answer:
//! its read fails at its deadline instead of serving a stale state.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use raft::prelude::ReadState;
use tokio::sync::oneshot;
use tracing::debug;

use super::Node;

/// ReadIndex requests a node keeps waiting at once; more are refused.
pub const READS_PENDING_MAX: usize = 1024;
/// A ReadIndex request the leader has not answered by then is failed (its caller may ask
/// again: a new leader drops its predecessor's requests and those sent before it committed an
/// entry of its own term).
pub const READ_INDEX_TIMEOUT: Duration = Duration::from_secs(1);

/// Reply to a ReadIndex request: the index to wait for, or why there is none.
pub type ReadReply = oneshot::Sender<Result<u64, String>>;

#[derive(Default)]
pub(super) struct Reads {
    next: u64,
    pending: HashMap<u64, (ReadReply, Instant)>,
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
        if self.reads.pending.len() >= READS_PENDING_MAX {
            let _ = reply.send(Err(format!(
                "{READS_PENDING_MAX} linearizable reads are already waiting on this node"
            )));
            return;
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
        self.reads.pending.insert(id, (reply, Instant::now()));
    }

    /// Answers the requests whose index the leader confirmed.
    pub(super) fn read_states(&mut self, states: Vec<ReadState>) {
        for rs in states {
            let Some(id) = read_ctx(&rs.request_ctx, self.id, self.incarnation) else {
                continue;
            };
            if let Some((reply, _)) = self.reads.pending.remove(&id) {
                let _ = reply.send(Ok(rs.index));
            }
        }
    }

    /// Fails requests older than [`READ_INDEX_TIMEOUT`] and forgets abandoned ones.
    pub(super) fn expire_reads(&mut self, now: Instant) {
        let expired: Vec<u64> = self
            .reads
            .pending
            .iter()
            .filter(|(_, (reply, asked))| {
                reply.is_closed() || now.duration_since(*asked) >= READ_INDEX_TIMEOUT
            })
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some((reply, _)) = self.reads.pending.remove(&id) {
                debug!(id, "read index request expired");
                let _ = reply.send(Err(format!(
                    "the region's leader did not confirm a read index within {READ_INDEX_TIMEOUT:?}"
                )));
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
