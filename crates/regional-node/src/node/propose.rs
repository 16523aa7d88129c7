//! The leader's side of a push: which batches it proposes (checked against the catalog, the
//! replica's table and the applied position, so that no node fails on them deterministically),
//! and the table drops it proposes for views the region no longer holds.

use meridian_proto::v1 as pb;
use prost::Message as _;
use raft::StateRole;
use tokio::sync::oneshot;
use tracing::{info, warn};

use super::{Ack, Node, Pending, PushOutcome};
use crate::replica::{admit, Admit, Position};

/// A push with nothing new but the sender's freshness is proposed (so that every node of the
/// region learns it) only when it moves the view's freshness by at least this much: a bound
/// on Raft entries per quiet view.
pub const FRESH_STEP_MS: i64 = 250;

/// Which of a push's batches the leader proposes, from the position `known` (applied, or
/// already proposed), and what it tells the sender when it takes none: `need_full` when only
/// a full batch can go on (`start_full`: the replica holds an older incarnation of the view,
/// which only a full batch replaces, even when the sender has no batch to send). Pure: what
/// every node would decide alike.
pub fn leading_batches(
    mut known: Position,
    pushed: Vec<pb::ChangeBatch>,
    start_full: Option<String>,
) -> (Vec<pb::ChangeBatch>, Position, String) {
    let mut batches = Vec::new();
    let mut need_full = String::new();
    for b in pushed {
        match admit(&known, &b) {
            Admit::Skip => continue,
            Admit::Apply if batches.is_empty() && !b.full && start_full.is_some() => break,
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
    if batches.is_empty() && need_full.is_empty() {
        if let Some(why) = start_full {
            need_full = why;
        }
    }
    (batches, known, need_full)
}

impl Node {
    pub(super) fn push(&mut self, push: pb::PushRequest, reply: oneshot::Sender<PushOutcome>) {
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
        if let Some(why) = self.fenced(schema, &push.batches) {
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
        let known = in_flight
            .as_ref()
            .map_or(applied.clone(), |(p, _)| p.clone());
        let start_full = in_flight
            .is_none()
            .then(|| self.replica.must_start_full(schema))
            .flatten();
        let (batches, known, need_full) = leading_batches(known, push.batches, start_full);
        // The sender's word on how fresh its change log is; not from a sender whose lease the
        // view has left.
        let fresh = push.fresh.filter(|f| !self.lease_lapsed(schema, f.epoch));
        if batches.is_empty() {
            if need_full.is_empty() && in_flight.is_none() {
                if let Some(f) = fresh {
                    self.propose_freshness(&view, schema, &applied, f);
                }
            }
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
            fresh,
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

    /// Proposes the sender's freshness alone, when the replica has applied the change log as
    /// far as it vouches for, in its epoch, and it moves the view's freshness by
    /// [`FRESH_STEP_MS`] beyond what is applied or already proposed. Nobody waits for it.
    fn propose_freshness(
        &mut self,
        view: &str,
        schema: &pb::ViewSchema,
        applied: &Position,
        f: pb::Freshness,
    ) {
        let known = applied
            .fresh_at_ms
            .max(self.fresh_proposed.get(view).copied().unwrap_or(0));
        if applied.epoch == 0
            || f.epoch != applied.epoch
            || applied.seq < f.seq
            || f.at_ms < known + FRESH_STEP_MS
        {
            return;
        }
        let at_ms = f.at_ms;
        let data = pb::PushRequest {
            schema: Some(schema.clone()),
            fresh: Some(f),
            ..Default::default()
        }
        .encode_to_vec();
        match self.raw.propose(Vec::new(), data) {
            Ok(()) => {
                self.fresh_proposed.insert(view.to_string(), at_ms);
            }
            Err(e) => warn!(error = %e, "proposing a view's freshness failed"),
        }
    }

    /// The view's current lease epoch, as the catalog last told this node.
    fn current_lease(&self, schema: &pb::ViewSchema) -> Option<u64> {
        let (live, _) = self.catalog.as_ref()?;
        live.iter()
            .find(|l| l.view_id == schema.view_id)
            .map(|l| l.lease_epoch)
    }

    /// Whether `epoch` belongs to a lease older than the view's current one.
    fn lease_lapsed(&self, schema: &pb::ViewSchema, epoch: u64) -> bool {
        self.current_lease(schema)
            .is_some_and(|current| (epoch >> 32) < current)
    }

    /// A batch whose epoch belongs to a lease older than the view's current one (as the
    /// catalog last told this node) comes from a worker that lost the view: refused, so a
    /// paused or cut-off former owner never gets a batch applied once the move is known here.
    /// (Batches that arrive before are still bounded by the epoch rule of `admit`.)
    fn fenced(&self, schema: &pb::ViewSchema, batches: &[pb::ChangeBatch]) -> Option<String> {
        let current = self.current_lease(schema)?;
        let b = batches.iter().find(|b| (b.epoch >> 32) < current)?;
        Some(format!(
            "batch {} of view '{}' was sent under lease {}, but the view's lease is now {}: its sender no longer owns the view",
            b.seq,
            schema.view,
            b.epoch >> 32,
            current
        ))
    }

    pub(super) fn prune(&mut self, live: &[pb::LiveView], next_view_id: u64) {
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
                // A table whose view was replaced stays until the new incarnation's first
                // (full) batch takes its place: readers never see the view missing.
                s.view_id < next_view_id
                    && !live
                        .iter()
                        .any(|l| l.name.eq_ignore_ascii_case(&s.view) && l.view_id >= s.view_id)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(seq: u64, prev: u64, full: bool) -> pb::ChangeBatch {
        let mut b = pb::ChangeBatch {
            view: "v".into(),
            seq,
            epoch: 7,
            full,
            ..Default::default()
        };
        b.checksum = meridian_proto::chain_checksum(prev, &b);
        b
    }

    #[test]
    fn a_replacing_incarnation_is_proposed_only_from_a_full_batch() {
        let b1 = batch(1, 0, false);
        let b2 = batch(2, b1.checksum, false);
        let replaces = Some("replaces id 3".to_string());
        // A fresh view goes on from its first batch.
        let (taken, known, need_full) =
            leading_batches(Position::default(), vec![b1.clone(), b2.clone()], None);
        assert_eq!((taken.len(), known.seq, need_full.as_str()), (2, 2, ""));
        // Replacing an older incarnation: its change log alone would show it half built.
        let (taken, _, need_full) = leading_batches(
            Position::default(),
            vec![b1.clone(), b2.clone()],
            replaces.clone(),
        );
        assert!(taken.is_empty());
        assert_eq!(need_full, "replaces id 3");
        // Even with nothing to send (a view that committed no batch yet), it is told to send
        // its rows, or the older table would be served as this view for good.
        let (taken, _, need_full) =
            leading_batches(Position::default(), Vec::new(), replaces.clone());
        assert!(taken.is_empty());
        assert_eq!(need_full, "replaces id 3");
        // A full batch, and what follows it, goes.
        let full = batch(2, 0, true);
        let b3 = batch(3, full.checksum, false);
        let (taken, known, need_full) =
            leading_batches(Position::default(), vec![full, b3], replaces);
        assert_eq!((taken.len(), known.seq, need_full.as_str()), (2, 3, ""));
    }
}
