//! A view over a stream joined with a table-like stream (`FROM s JOIN t ON s.a = t.pk`).
//!
//! Each row of `s` joins the one row of `t` whose primary key equals its join key, so the
//! joined row is identified by the `s` row's primary key, and the rest of the core (slots,
//! aggregation, retraction by key) works on joined rows as it does on source rows. The core
//! keeps both sides' rows and an index from a join key to the `s` rows holding it, all in the
//! store: a change to an `s` row re-joins that row, a change to a `t` row re-joins every `s`
//! row holding its key. A batch's changes are applied to the sides first, then every `s` row
//! they touched is joined once, from the sides' state at the end of the batch, and evaluated
//! with the rest of the batch: the view's state after a batch is what the batch's final rows
//! give, as the oracle (the same SQL over the final rows of both streams) has it.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use catalog::{JoinKind, JoinPlan, StreamDef, Value};

use super::{Key, KeyOrd, Row, RowLookup, ViewCore};
use crate::decode::SourceEvent;

/// A view that joins reads two streams with one consumer. A partition of its input holds the
/// stream (0: the view's own, 1: the one it joins) above this bit and the Kafka partition
/// below it, so offsets, starting points and progress stay keyed by one number.
pub const INPUT_SHIFT: u32 = 24;

/// The input partition of `partition` of input stream `source`; `None` for a Kafka partition
/// number that does not fit below [`INPUT_SHIFT`].
pub fn input_partition(source: usize, partition: i32) -> Option<i32> {
    if !(0..1 << INPUT_SHIFT).contains(&partition) || source > 1 {
        return None;
    }
    Some(((source as i32) << INPUT_SHIFT) | partition)
}

/// The input stream and Kafka partition of an input partition.
pub fn split_input(p: i32) -> (usize, i32) {
    ((p >> INPUT_SHIFT) as usize, p & ((1 << INPUT_SHIFT) - 1))
}

/// Which side of the join a stored row is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The view's own stream.
    Left,
    /// The joined, table-like stream.
    Right,
}

/// What a batch changed in the join's state, for the shell to persist with the batch.
#[derive(Debug, Default, PartialEq)]
pub struct JoinWrites {
    /// Every stored row of the side is deleted first (a truncate), then `left`/`right` are
    /// written.
    pub truncate_left: bool,
    pub truncate_right: bool,
    pub left: Vec<(Key, Option<Row>)>,
    pub right: Vec<(Key, Option<Row>)>,
    /// `(join key, left key, present)`: an entry of the index from a join key to the left
    /// rows holding it, added or removed.
    pub index: Vec<(Key, Key, bool)>,
}

pub(super) struct JoinState {
    plan: JoinPlan,
    left_pk: Vec<usize>,
    right_pk: Vec<usize>,
    n_right: usize,
    /// Rows changed in the current batch; they shadow the store.
    left: HashMap<Key, Option<Row>>,
    right: HashMap<Key, Option<Row>>,
    index: HashMap<Key, HashMap<Key, bool>>,
    left_truncated: bool,
    right_truncated: bool,
}

/// Whether a join key can match: SQL's `=` is never true for NULL.
fn matchable(k: &Key) -> bool {
    !k.iter().any(|v| matches!(v, Value::Null))
}

impl JoinState {
    pub(super) fn new(plan: JoinPlan, left: &StreamDef, right: &StreamDef) -> JoinState {
        JoinState {
            plan,
            left_pk: left.primary_key.clone(),
            right_pk: right.primary_key.clone(),
            n_right: right.columns.len(),
            left: HashMap::new(),
            right: HashMap::new(),
            index: HashMap::new(),
            left_truncated: false,
            right_truncated: false,
        }
    }

    fn join_key(&self, left: &Row) -> Key {
        self.plan
            .left_key
            .iter()
            .map(|&c| left[c].clone())
            .collect()
    }

    fn pk(cols: &[usize], row: &Row) -> Key {
        cols.iter().map(|&c| row[c].clone()).collect()
    }

    fn get(&self, side: Side, pk: &Key, store: &dyn RowLookup) -> Result<Option<Row>, String> {
        let (pending, truncated) = match side {
            Side::Left => (&self.left, self.left_truncated),
            Side::Right => (&self.right, self.right_truncated),
        };
        match pending.get(pk) {
            Some(row) => Ok(row.clone()),
            None if truncated => Ok(None),
            None => store.get_side(side, pk),
        }
    }

    /// The left rows whose join key is `key`.
    fn holders(&self, key: &Key, store: &dyn RowLookup) -> Result<BTreeSet<KeyOrd>, String> {
        let mut out: BTreeSet<KeyOrd> = if self.left_truncated {
            BTreeSet::new()
        } else {
            store.holders(key)?.into_iter().map(KeyOrd).collect()
        };
        if let Some(changed) = self.index.get(key) {
            for (pk, present) in changed {
                if *present {
                    out.insert(KeyOrd(pk.clone()));
                } else {
                    out.remove(&KeyOrd(pk.clone()));
                }
            }
        }
        Ok(out)
    }

    fn set_left(&mut self, pk: Key, new: Option<Row>, store: &dyn RowLookup) -> Result<(), String> {
        if let Some(old) = self.get(Side::Left, &pk, store)? {
            let k = self.join_key(&old);
            if matchable(&k) {
                self.index.entry(k).or_default().insert(pk.clone(), false);
            }
        }
        if let Some(new) = &new {
            let k = self.join_key(new);
            if matchable(&k) {
                self.index.entry(k).or_default().insert(pk.clone(), true);
            }
        }
        self.left.insert(pk, new);
        Ok(())
    }

    /// Applies one event of input `source` to the sides, and marks the left rows it touches
    /// (with the event's index, to blame it if their joined row fails to evaluate). Returns
    /// whether the event truncated the left side (every left row is gone).
    pub(super) fn apply(
        &mut self,
        i: usize,
        source: usize,
        event: &SourceEvent,
        store: &dyn RowLookup,
        touched: &mut BTreeMap<KeyOrd, usize>,
    ) -> Result<bool, String> {
        if source == 0 {
            match event {
                SourceEvent::Upsert(row) => {
                    let pk = Self::pk(&self.left_pk, row);
                    self.set_left(pk.clone(), Some(row.clone()), store)?;
                    touched.insert(KeyOrd(pk), i);
                }
                SourceEvent::Delete { key } => {
                    self.set_left(key.clone(), None, store)?;
                    touched.insert(KeyOrd(key.clone()), i);
                }
                SourceEvent::Move { old_key, row } => {
                    self.set_left(old_key.clone(), None, store)?;
                    touched.insert(KeyOrd(old_key.clone()), i);
                    let pk = Self::pk(&self.left_pk, row);
                    self.set_left(pk.clone(), Some(row.clone()), store)?;
                    touched.insert(KeyOrd(pk), i);
                }
                SourceEvent::Truncate => {
                    self.left.clear();
                    self.index.clear();
                    self.left_truncated = true;
                    touched.clear();
                    return Ok(true);
                }
                // Both streams of a join have a primary key (checked at CREATE).
                SourceEvent::Append(_) => {}
            }
            return Ok(false);
        }
        let mut changed = Vec::new();
        match event {
            SourceEvent::Upsert(row) => {
                let pk = Self::pk(&self.right_pk, row);
                self.right.insert(pk.clone(), Some(row.clone()));
                changed.push(pk);
            }
            SourceEvent::Delete { key } => {
                self.right.insert(key.clone(), None);
                changed.push(key.clone());
            }
            SourceEvent::Move { old_key, row } => {
                self.right.insert(old_key.clone(), None);
                changed.push(old_key.clone());
                let pk = Self::pk(&self.right_pk, row);
                self.right.insert(pk.clone(), Some(row.clone()));
                changed.push(pk);
            }
            SourceEvent::Truncate => {
                self.right.clear();
                self.right_truncated = true;
                // Every left row may have lost its match.
                let mut all: BTreeSet<KeyOrd> = if self.left_truncated {
                    BTreeSet::new()
                } else {
                    store.left_keys()?.into_iter().map(KeyOrd).collect()
                };
                for (pk, row) in &self.left {
                    if row.is_some() {
                        all.insert(KeyOrd(pk.clone()));
                    } else {
                        all.remove(&KeyOrd(pk.clone()));
                    }
                }
                for pk in all {
                    touched.insert(pk, i);
                }
            }
            SourceEvent::Append(_) => {}
        }
        for key in changed {
            for pk in self.holders(&key, store)? {
                touched.insert(pk, i);
            }
        }
        Ok(false)
    }

    /// The joined row of left row `pk` as the batch leaves it: the left row followed by its
    /// match, or by NULLs in a left join; `None` when the left row is gone or, in an inner
    /// join, has no match.
    pub(super) fn joined(&self, pk: &Key, store: &dyn RowLookup) -> Result<Option<Row>, String> {
        let Some(mut row) = self.get(Side::Left, pk, store)? else {
            return Ok(None);
        };
        let key = self.join_key(&row);
        let right = if matchable(&key) {
            self.get(Side::Right, &key, store)?
        } else {
            None
        };
        match (right, self.plan.kind) {
            (Some(r), _) => {
                row.extend(r);
                Ok(Some(row))
            }
            (None, JoinKind::Left) => {
                row.extend(std::iter::repeat_n(Value::Null, self.n_right));
                Ok(Some(row))
            }
            (None, JoinKind::Inner) => Ok(None),
        }
    }

    /// What the batch changed, to persist; the state starts the next batch empty.
    pub(super) fn take_writes(&mut self) -> JoinWrites {
        let mut index = Vec::new();
        for (key, entries) in self.index.drain() {
            for (pk, present) in entries {
                index.push((key.clone(), pk, present));
            }
        }
        JoinWrites {
            truncate_left: std::mem::take(&mut self.left_truncated),
            truncate_right: std::mem::take(&mut self.right_truncated),
            left: self.left.drain().collect(),
            right: self.right.drain().collect(),
            index,
        }
    }
}

/// A join's touched rows joined and evaluated per call (a change to a joined row may touch
/// many), well below the evaluator's row-by-row fallback bound.
const JOIN_EVAL_CHUNK: usize = 2_000;

impl ViewCore {
    /// A join view's batch: the events change the sides, then every left row they touched
    /// is joined from the sides' state at the end of the batch, evaluated, and its slots
    /// replace the ones it had. A row whose evaluation fails leaves the view, and the event
    /// that last touched it is the dead letter. Touched rows are joined and evaluated
    /// [`JOIN_EVAL_CHUNK`] at a time: a change to a joined row may touch many left rows.
    ///
    /// Windows and `latest`/`earliest` are refused over a join at CREATE, so the event-time
    /// and arrival bookkeeping of [`Self::apply_batch`] has nothing to do here.
    pub(super) fn apply_joined(
        &mut self,
        events: &[SourceEvent],
        partitions: &[i32],
        store: &dyn RowLookup,
    ) -> Result<Vec<(usize, String)>, String> {
        debug_assert!(
            self.def.plan.window.is_none() && self.def.plan.hop.is_none() && !self.ordered
        );
        let Some(mut j) = self.join.take() else {
            return Ok(Vec::new());
        };
        let result = self.apply_joined_with(&mut j, events, partitions, store);
        self.join = Some(j);
        result
    }

    fn apply_joined_with(
        &mut self,
        j: &mut JoinState,
        events: &[SourceEvent],
        partitions: &[i32],
        store: &dyn RowLookup,
    ) -> Result<Vec<(usize, String)>, String> {
        let mut touched = BTreeMap::new();
        for (i, event) in events.iter().enumerate() {
            let source = split_input(partitions.get(i).copied().unwrap_or(0)).0;
            if j.apply(i, source, event, store, &mut touched)? {
                self.truncate();
            }
        }
        let touched: Vec<(Key, usize)> = touched.into_iter().map(|(KeyOrd(k), i)| (k, i)).collect();
        let mut dead: Vec<(usize, String)> = Vec::new();
        for chunk in touched.chunks(JOIN_EVAL_CHUNK) {
            let mut rows = Vec::with_capacity(chunk.len());
            let mut has_row = Vec::with_capacity(chunk.len());
            for (pk, _) in chunk {
                let row = j.joined(pk, store)?;
                has_row.push(row.is_some());
                rows.extend(row);
            }
            let refs: Vec<&[Value]> = rows.iter().map(Vec::as_slice).collect();
            let mut projected = self.project.eval(&refs)?.into_iter();
            for ((pk, i), has_row) in chunk.iter().zip(has_row) {
                let new = match has_row.then(|| projected.next()).flatten() {
                    None => None,
                    Some(Ok(p)) => p,
                    Some(Err(reason)) => {
                        if !dead.iter().any(|(d, _)| d == i) {
                            let key: Vec<String> = pk.iter().map(ToString::to_string).collect();
                            dead.push((*i, format!("evaluating the view's expressions over the joined row of ({}) failed: {reason}", key.join(", "))));
                        }
                        None
                    }
                };
                self.upsert(pk.clone(), new, store)?;
            }
        }
        dead.sort_by_key(|(i, _)| *i);
        Ok(dead)
    }
}
