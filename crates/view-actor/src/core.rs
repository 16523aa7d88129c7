//! The view's incremental state machine: source events in, absolute row changes out. No IO.
//!
//! A view's [`Plan`] has a stateless part evaluated per source row by DuckDB in memory (the
//! filter, then the GROUP BY keys and the aggregates' arguments, or the output columns of a
//! view without aggregates), the aggregation, which is the only state, and a stateless part
//! per group (output expressions and HAVING). For streams with a primary key the core keeps
//! each source row's *projected* values (only for rows that pass the filter), to retract them
//! when the row is updated or deleted; they live in the actor's store, read through a
//! [`RowLookup`], and the rows a batch changed are returned for the shell to persist in the
//! same atomic write as the offsets.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use catalog::eval::Evaluator;
use catalog::{AggFunc, ColumnType, Finish, PlanKind, Ref, StreamDef, Value, ViewDef};
use serde::{Deserialize, Serialize};

use crate::decode::SourceEvent;

mod accumulate;
mod fsum;
mod join;
mod output;
mod window;

pub use join::{input_partition, split_input, JoinWrites, Side, INPUT_SHIFT};

use accumulate::new_group;
pub use fsum::ExactSum;
use output::agg_row;
pub use output::{all_rows, Finisher};

pub type Key = Vec<Value>;
pub type Row = Vec<Value>;

/// Groups evaluated per call of the per-group stage when all rows are listed.
const FINISH_CHUNK: usize = 10_000;

/// Reads the stored projection of a source row by primary key, and a join view's stored
/// rows and index.
pub trait RowLookup {
    fn get_row(&self, pk: &Key) -> Result<Option<Row>, String>;
    /// A join's stored row of `side` with primary key `pk`.
    fn get_side(&self, side: Side, pk: &Key) -> Result<Option<Row>, String> {
        let _ = (side, pk);
        Err("this store keeps no joined rows".to_string())
    }
    /// The primary keys of the stored left rows whose join key is `key`.
    fn holders(&self, key: &Key) -> Result<Vec<Key>, String> {
        let _ = key;
        Err("this store keeps no joined rows".to_string())
    }
    /// The primary keys of every stored left row.
    fn left_keys(&self) -> Result<Vec<Key>, String> {
        Err("this store keeps no joined rows".to_string())
    }
}

/// The state of one key of the view.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GroupState {
    /// Source rows in the group; the group's row exists while this is above zero.
    pub rows: i64,
    /// One accumulator per aggregate of the plan, in plan order.
    pub aggregates: Vec<Accumulator>,
    /// A view without aggregates: the row itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub row: Option<Row>,
    /// Size of the row last emitted for this key (`row_bytes`), 0 when it has none: the
    /// view's size is kept up to date from it.
    #[serde(default)]
    pub out_bytes: u64,
    /// A closed window: `row` is its final row and the accumulators are gone.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub closed: bool,
}

/// The size of a row as the reduction ratio counts it: 8 bytes a number, 1 a bool or NULL,
/// the length of a string.
pub fn row_bytes(row: &[Value]) -> u64 {
    row.iter()
        .map(|v| match v {
            Value::Int(_) | Value::Float(_) | Value::Date(_) | Value::Timestamp(_) => 8,
            Value::Decimal(..) => 16,
            Value::List(t) => t.len() as u64,
            Value::Null | Value::Bool(_) => 1,
            Value::Text(t) => t.len() as u64,
        })
        .sum::<u64>()
        .max(1)
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Accumulator {
    Count,
    /// Non-null values seen.
    CountColumn(i64),
    /// Integer sums are exact; `non_null` decides between the sum and NULL (and is avg's
    /// divisor).
    SumInt {
        sum: i128,
        non_null: i64,
        /// How many times `sum` wrapped past i128's range (up +1, down -1): the exact sum is
        /// `wraps * 2^128 + sum`, so that a sum of decimals near 10^38 that grows past i128
        /// and is retracted back comes back exact.
        #[serde(default, skip_serializing_if = "is_zero")]
        wraps: i64,
    },
    /// Float sums are exact too (see [`ExactSum`]), so that retractions leave no error.
    SumFloat {
        sum: Box<ExactSum>,
        non_null: i64,
    },
    /// The group's non-null values with their multiplicity, sorted by `Value::total_cmp`:
    /// `min`, `max` and `count(DISTINCT)` stay exact when values are retracted (deleting the
    /// current max reveals the next), with state bounded by the distinct values of the group.
    Values(Vec<(Value, i64)>),
    /// `latest` / `earliest`: the group's non-null values by the arrival number of the event
    /// that brought them, sorted; a retraction removes its own arrival.
    Ordered(Vec<(u64, Value)>),
    /// `arg_min` / `arg_max`: the group's (by, value) pairs with their multiplicity, sorted by
    /// `by` then value (`Value::total_cmp`), so that retracting the row with the least or
    /// greatest `by` reveals the next, as for `Values`.
    Pairs(Vec<(Value, Value, i64)>),
}

/// One change of the view's rows.
#[derive(Clone, Debug, PartialEq)]
pub struct RowChange {
    pub key: Key,
    /// The full row after the change, or `None` when the row is gone.
    pub row: Option<Row>,
}

/// What one batch of events did.
#[derive(Debug, Default)]
pub struct BatchOutput {
    /// One change per touched key, in key order.
    pub changes: Vec<RowChange>,
    /// The groups' new states (`None`: the group is gone), to persist.
    pub groups: Vec<(Key, Option<GroupState>)>,
    /// Source rows' projections written (`None`: deleted), to persist.
    pub rows: Vec<(Key, Option<Row>)>,
    /// The source was truncated in this batch: every stored source row is deleted before
    /// `rows` are written.
    pub truncate_rows: bool,
    /// How the view's row count and size changed.
    pub rows_delta: i64,
    pub bytes_delta: i64,
    /// Keys whose row could not be computed (it is left out of the view), and why.
    pub group_errors: Vec<(Key, String)>,
    /// The event-time watermark after the batch (views with windows that close), and the
    /// latest event time of each partition it comes from, to persist.
    pub watermark: Option<i64>,
    pub event_times: BTreeMap<i32, i64>,
    /// The arrival number of the next event.
    pub arrival: u64,
    /// Events of the batch that changed a closed window, and so were not applied.
    pub late_events: u64,
    /// A join view's rows and index changed by the batch.
    pub join: Option<JoinWrites>,
}

pub struct ViewCore {
    def: ViewDef,
    pk_columns: Vec<usize>,
    groups: HashMap<Key, GroupState>,
    /// Source rows changed in the current batch; they shadow the store.
    pending_rows: HashMap<Key, Option<Row>>,
    touched: BTreeSet<KeyOrd>,
    /// A truncate happened in this batch: the stored source rows are gone.
    truncated: bool,
    project: Evaluator,
    finish: Finisher,
    /// Rows and bytes of rows that left the view with their state (deleted source rows of a
    /// view without aggregates, truncates), since the last `finish_batch`.
    gone_rows: i64,
    gone_bytes: i64,
    /// Latest event time applied from each partition (windows that close). Kafka orders
    /// messages only within a partition, so the watermark follows the slowest one.
    event_times: BTreeMap<i32, i64>,
    /// The partitions the view reads (empty: those in `event_times`).
    partitions: BTreeSet<i32>,
    /// The smallest of `event_times` minus the allowed lateness, never going back.
    watermark: Option<i64>,
    late_events: u64,
    /// The partition of the event being applied, and whether it touched a closed window.
    partition: i32,
    event_late: bool,
    /// The arrival number of the next event (views with `latest` or `earliest`), persisted.
    arrival: u64,
    /// The plan has `latest` or `earliest`: stored slots end with their arrival number.
    ordered: bool,
    /// No open window ends before this (`None`: not known yet), so that groups are scanned for
    /// windows to close only when one does.
    open_end_min: Option<i64>,
    /// No closed window ends before this (`None`: not known yet), so that groups are scanned
    /// for windows past their retention only when one is.
    closed_end_min: Option<i64>,
    /// A view that joins another stream: both sides' rows.
    join: Option<join::JoinState>,
    /// Keys whose emitted row a truncate dropped in this batch (EMIT AFTER WATERMARK, where
    /// a touched key's change is emitted only if the view held its row).
    forgotten: BTreeSet<KeyOrd>,
}

/// A key with a total order, so that a batch's changes come out in a deterministic order.
#[derive(Clone, Debug, PartialEq, Eq)]
struct KeyOrd(Key);

impl PartialOrd for KeyOrd {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for KeyOrd {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        for (a, b) in self.0.iter().zip(&other.0) {
            let ord = a.total_cmp(b);
            if ord.is_ne() {
                return ord;
            }
        }
        self.0.len().cmp(&other.0.len())
    }
}

impl ViewCore {
    /// `groups` is the persisted state.
    pub fn new(
        def: ViewDef,
        stream: &StreamDef,
        groups: HashMap<Key, GroupState>,
    ) -> Result<ViewCore, String> {
        Self::new_joined(def, stream, None, groups)
    }

    /// A view over `stream` that may join stream `right`.
    pub fn new_joined(
        def: ViewDef,
        stream: &StreamDef,
        right: Option<&StreamDef>,
        groups: HashMap<Key, GroupState>,
    ) -> Result<ViewCore, String> {
        let join = match (&def.plan.join, right) {
            (Some(j), Some(r)) => Some(join::JoinState::new((**j).clone(), stream, r)),
            (Some(j), None) => {
                return Err(format!(
                    "view '{}' joins stream '{}', which was not given",
                    def.name, j.stream
                ))
            }
            (None, _) => None,
        };
        let input = def.input(stream, right);
        let columns: Vec<(String, String)> = input
            .columns
            .iter()
            .map(|c| (c.name.clone(), c.ty.duckdb_type().to_string()))
            .collect();
        let slots: Vec<String> = def.plan.project.iter().map(|s| s.sql.clone()).collect();
        let slot_types: Vec<ColumnType> = def.plan.project.iter().map(|s| s.ty).collect();
        let project = Evaluator::new(&columns, &slots, def.plan.filter.as_deref())
            .map_err(|e| format!("view '{}': {e}", def.name))?
            .with_output_types(&slot_types);
        let finish = Finisher::new(&def)?;
        let mut core = ViewCore {
            pk_columns: stream.primary_key.clone(),
            def,
            groups,
            pending_rows: HashMap::new(),
            touched: BTreeSet::new(),
            truncated: false,
            project,
            finish,
            gone_rows: 0,
            gone_bytes: 0,
            event_times: BTreeMap::new(),
            partitions: BTreeSet::new(),
            watermark: None,
            late_events: 0,
            partition: 0,
            event_late: false,
            arrival: 0,
            ordered: false,
            open_end_min: None,
            closed_end_min: None,
            join,
            forgotten: BTreeSet::new(),
        };
        core.ordered = core
            .def
            .plan
            .aggregates
            .iter()
            .any(|a| matches!(a.func, AggFunc::Latest | AggFunc::Earliest));
        if core.def.plan.kind == PlanKind::Aggregate
            && core.def.plan.n_keys == 0
            && !core.groups.contains_key(&Vec::new())
        {
            // Without GROUP BY, SQL answers one row even over no rows: count 0, sums NULL.
            core.groups.insert(Vec::new(), new_group(&core.def));
            core.touched.insert(KeyOrd(Vec::new()));
        }
        Ok(core)
    }

    /// Whether the next `finish_batch` has changes even without new events.
    pub fn has_pending_changes(&self) -> bool {
        !self.touched.is_empty()
    }

    pub fn def(&self) -> &ViewDef {
        &self.def
    }

    pub fn n_groups(&self) -> usize {
        self.groups.len()
    }

    /// The current row of every key, for a full resynchronisation.
    pub fn all_rows(&mut self) -> Result<Vec<RowChange>, String> {
        all_rows(&self.def, &self.groups, &mut self.finish)
    }

    /// Applies a batch of events in order. Returns the events that could not be evaluated
    /// (their index and why), which change nothing and belong in the dead-letter table; an
    /// `Err` is a failure to read the store.
    pub fn apply_batch(
        &mut self,
        events: &[SourceEvent],
        partitions: &[i32],
        store: &dyn RowLookup,
    ) -> Result<Vec<(usize, String)>, String> {
        if self.join.is_some() {
            return self.apply_joined(events, partitions, store);
        }
        let mut rows: Vec<&[Value]> = Vec::new();
        let mut which = Vec::with_capacity(events.len());
        for e in events {
            match e {
                SourceEvent::Append(r)
                | SourceEvent::Upsert(r)
                | SourceEvent::Move { row: r, .. } => {
                    which.push(Some(rows.len()));
                    rows.push(r);
                }
                SourceEvent::Delete { .. } | SourceEvent::Truncate => which.push(None),
            }
        }
        let mut projected = self.project.eval(&rows)?;
        let mut dead = Vec::new();
        for (i, event) in events.iter().enumerate() {
            self.partition = partitions.get(i).copied().unwrap_or(0);
            self.event_late = false;
            let mut result = which[i].map(|j| std::mem::replace(&mut projected[j], Ok(None)));
            if self.ordered {
                // The row's contribution remembers which event brought it.
                if let Some(Ok(Some(t))) = &mut result {
                    t.push(Value::Int(i64::try_from(self.arrival).unwrap_or(i64::MAX)));
                }
            }
            self.arrival += 1;
            self.apply_one(i, event, result, store, &mut dead)?;
            self.late_events += u64::from(self.event_late);
        }
        Ok(dead)
    }

    /// Applies one event; `projected` is its row's evaluation, if it has a row.
    fn apply_one(
        &mut self,
        i: usize,
        event: &SourceEvent,
        projected: Option<catalog::eval::RowResult>,
        store: &dyn RowLookup,
        dead: &mut Vec<(usize, String)>,
    ) -> Result<(), String> {
        {
            let new = match projected {
                None => None,
                Some(result) => match result {
                    Ok(p) => p,
                    Err(reason) => {
                        dead.push((
                            i,
                            format!("evaluating the view's expressions failed: {reason}"),
                        ));
                        // The source row's previous version is gone all the same: it leaves
                        // the view, and the dead letter says which version did not enter.
                        match event {
                            SourceEvent::Upsert(row) => {
                                let pk = self.pk(row);
                                self.upsert(pk, None, store)?;
                            }
                            SourceEvent::Move { old_key, row } => {
                                self.upsert(old_key.clone(), None, store)?;
                                let pk = self.pk(row);
                                self.upsert(pk, None, store)?;
                            }
                            _ => {}
                        }
                        return Ok(());
                    }
                },
            };
            match event {
                SourceEvent::Append(_) => {
                    if let Some(t) = new {
                        let (late, _) = self.add_open(&t, 1);
                        self.event_late |= late;
                        self.advance(&t);
                    }
                }
                SourceEvent::Upsert(row) => {
                    let pk = self.pk(row);
                    self.upsert(pk, new, store)?;
                }
                SourceEvent::Delete { key } => self.upsert(key.clone(), None, store)?,
                SourceEvent::Move { old_key, row } => {
                    self.upsert(old_key.clone(), None, store)?;
                    let pk = self.pk(row);
                    self.upsert(pk, new, store)?;
                }
                SourceEvent::Truncate => self.truncate(),
            }
        }
        Ok(())
    }

    fn pk(&self, row: &[Value]) -> Key {
        self.pk_columns.iter().map(|&i| row[i].clone()).collect()
    }

    /// The source row `pk` now projects to `new` (`None`: deleted, or filtered out).
    fn upsert(&mut self, pk: Key, new: Option<Row>, store: &dyn RowLookup) -> Result<(), String> {
        match self.def.plan.kind {
            PlanKind::Project => {
                let old = match new {
                    Some(row) => {
                        let state = GroupState {
                            rows: 1,
                            row: Some(row),
                            ..GroupState::default()
                        };
                        let old = self.groups.insert(pk.clone(), state);
                        self.touched.insert(KeyOrd(pk));
                        old
                    }
                    None => {
                        let old = self.groups.remove(&pk);
                        if old.is_some() {
                            self.touched.insert(KeyOrd(pk));
                        }
                        old
                    }
                };
                if let Some(old) = old {
                    self.forget(&old);
                }
            }
            PlanKind::Aggregate => {
                let old = self.lookup(&pk, store)?;
                if old.is_none() && new.is_none() {
                    // A delete of a row never seen (or filtered out): nothing to retract.
                    return Ok(());
                }
                // What the row contributes once this event is applied.
                let mut stored = new.clone();
                let mut late = false;
                if let Some(old) = &old {
                    // Frozen in its closed windows, retracted from the open ones.
                    late |= self.add_open(old, -1).0;
                }
                if let Some(new) = &new {
                    let (new_late, any_open) = self.add_open(new, 1);
                    late |= new_late;
                    if !any_open {
                        // In no open window: it contributes nothing, now or later.
                        stored = None;
                    }
                    self.advance(new);
                }
                self.event_late |= late;
                self.pending_rows.insert(pk, stored);
            }
        }
        Ok(())
    }

    /// Restores the arrival number persisted with the view's last batch.
    pub fn set_arrival(&mut self, arrival: u64) {
        self.arrival = arrival;
    }

    /// A key's state is dropped: its emitted row no longer counts.
    fn forget(&mut self, g: &GroupState) {
        if g.out_bytes > 0 {
            self.gone_rows += 1;
            self.gone_bytes += g.out_bytes as i64;
        }
    }

    fn truncate(&mut self) {
        // Every key goes; a view without GROUP BY keeps its one row, at zero.
        for (key, g) in &self.groups {
            self.touched.insert(KeyOrd(key.clone()));
            if g.out_bytes > 0 {
                self.gone_rows += 1;
                self.gone_bytes += g.out_bytes as i64;
                if self.def.plan.emit_final {
                    self.forgotten.insert(KeyOrd(key.clone()));
                }
            }
        }
        self.groups.clear();
        if self.def.plan.kind == PlanKind::Aggregate && self.def.plan.n_keys == 0 {
            self.groups.insert(Vec::new(), new_group(&self.def));
        }
        self.pending_rows.clear();
        self.truncated = true;
        // Every window went with the rows: the source starts over, and so does event time.
        self.event_times.clear();
        self.watermark = None;
        self.open_end_min = None;
        self.closed_end_min = None;
    }

    fn lookup(&self, pk: &Key, store: &dyn RowLookup) -> Result<Option<Row>, String> {
        match self.pending_rows.get(pk) {
            Some(row) => Ok(row.clone()),
            None if self.truncated => Ok(None),
            None => store.get_row(pk),
        }
    }
}

#[cfg(test)]
mod tests;
