//! Applying committed entries to the replica, and what happens when that fails: the node
//! stalls (serves no reads, keeps `applied` below the entry), retries from the log with
//! backoff, and can install a peer's replica instead.

use std::time::{Duration, Instant};

use meridian_proto::v1 as pb;
use prost::Message as _;
use raft::prelude::{Entry, EntryType};
use raft::Storage as _;
use tracing::{error, info, info_span, warn};

use super::{now_ms, own_proposal, Ack, Node, PushOutcome};

/// First wait before a failed apply is tried again; it doubles up to `APPLY_RETRY_MAX`.
const APPLY_RETRY_MIN: Duration = Duration::from_millis(100);
const APPLY_RETRY_MAX: Duration = Duration::from_secs(10);
/// Bytes of committed entries read back from the log per retry round.
const APPLY_RETRY_BYTES_MAX: u64 = 16 << 20;

/// A committed entry the replica could not apply. Nothing after it is applied until it is:
/// the node keeps its applied index below it and answers no reads.
pub(super) struct Stall {
    pub(super) index: u64,
    pub(super) error: String,
    pub(super) attempts: u32,
    pub(super) next_try: Instant,
}

impl Node {
    /// Applies committed entries in order. An entry the replica already holds (its recorded
    /// index is at or above it) is skipped. The first one that fails stops the rest: the node
    /// stalls there and `retry_stalled` reads them back from the log later.
    pub(super) fn apply_entries(&mut self, entries: Vec<Entry>) {
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
    pub(super) fn retry_stalled(&mut self) -> Result<(), raft::Error> {
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
    pub(super) fn abandon_proposals(&mut self, why: &str) {
        self.proposed_seq.clear();
        self.fresh_proposed.clear();
        for (_, p) in self.pending.drain() {
            for r in p.reply {
                let _ = r.send(PushOutcome::Retry(why.to_string()));
            }
        }
    }

    pub(super) fn publish_health(&self) {
        let why = self.stall.as_ref().map(|st| {
            format!(
                "its replica cannot apply raft entry {}: {}",
                st.index, st.error
            )
        });
        *self.unavailable.lock().unwrap_or_else(|p| p.into_inner()) = why;
    }
}
