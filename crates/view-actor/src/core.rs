//! The view's aggregation state machine: events in, absolute row changes out. No IO.
//!
//! The core keeps every group's accumulators. For streams with a primary key it also needs the
//! last version of each source row, to retract it when the row is updated or deleted; those
//! rows live in the actor's store, so the core reads them through a [`RowLookup`] and returns
//! the rows it changed, for the shell to persist in the same atomic write as the offsets.

use std::collections::{BTreeSet, HashMap};

use catalog::{OutputKind, Value, ViewDef};
use serde::{Deserialize, Serialize};

use crate::decode::SourceEvent;

pub type Key = Vec<Value>;
pub type Row = Vec<Value>;

/// Reads the stored version of a source row by primary key.
pub trait RowLookup {
    fn get_row(&self, pk: &Key) -> Result<Option<Row>, String>;
}

/// Accumulators of one group.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GroupState {
    /// Source rows in the group; the group's row exists while this is above zero.
    pub rows: i64,
    /// One entry per output column that is an aggregate, in output order.
    pub aggregates: Vec<Accumulator>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Accumulator {
    Count,
    /// Non-null values seen.
    CountColumn(i64),
    /// Integer sums are exact; `non_null` decides between the sum and NULL.
    SumInt {
        sum: i128,
        non_null: i64,
    },
    SumFloat {
        sum: f64,
        non_null: i64,
    },
}

/// One change of the view's rows.
#[derive(Clone, Debug, PartialEq)]
pub struct RowChange {
    pub key: Key,
    /// The full row after the change, or `None` when the group is gone.
    pub row: Option<Row>,
}

/// What one batch of events did.
#[derive(Debug, Default)]
pub struct BatchOutput {
    /// One change per touched group, in key order.
    pub changes: Vec<RowChange>,
    /// The groups' new states (`None`: the group is gone), to persist.
    pub groups: Vec<(Key, Option<GroupState>)>,
    /// Source rows written (`None`: deleted), to persist.
    pub rows: Vec<(Key, Option<Row>)>,
    /// The source was truncated in this batch: every stored source row is deleted before
    /// `rows` are written.
    pub truncate_rows: bool,
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
        let rank = |v: &Value| match v {
            Value::Null => 0,
            Value::Bool(_) => 1,
            Value::Int(_) | Value::Float(_) => 2,
            Value::Text(_) => 3,
        };
        for (a, b) in self.0.iter().zip(&other.0) {
            let ord = rank(a)
                .cmp(&rank(b))
                .then_with(|| a.sql_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
            if ord.is_ne() {
                return ord;
            }
        }
        self.0.len().cmp(&other.0.len())
    }
}

impl ViewCore {
    /// `pk_columns` are the stream's primary key columns (empty for append-only streams);
    /// `groups` is the persisted state.
    pub fn new(def: ViewDef, pk_columns: Vec<usize>, groups: HashMap<Key, GroupState>) -> ViewCore {
        let mut core = ViewCore {
            def,
            pk_columns,
            groups,
            pending_rows: HashMap::new(),
            touched: BTreeSet::new(),
            truncated: false,
        };
        if core.def.group_columns.is_empty() && !core.groups.contains_key(&Vec::new()) {
            // Without GROUP BY, SQL answers one row even over no rows: count 0, sums NULL.
            core.groups.insert(Vec::new(), new_group(&core.def));
            core.touched.insert(KeyOrd(Vec::new()));
        }
        core
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

    /// The current row of every group, for a full resynchronisation.
    pub fn all_rows(&self) -> Vec<RowChange> {
        let mut keys: Vec<KeyOrd> = self.groups.keys().cloned().map(KeyOrd).collect();
        keys.sort();
        keys.into_iter()
            .map(|k| RowChange {
                row: self.output_row(&k.0),
                key: k.0,
            })
            .collect()
    }

    pub fn apply(&mut self, event: SourceEvent, store: &dyn RowLookup) -> Result<(), String> {
        match event {
            SourceEvent::Append(row) => {
                self.add(&row, 1);
            }
            SourceEvent::Upsert(row) => {
                let pk: Key = self.pk_columns.iter().map(|&i| row[i].clone()).collect();
                if let Some(old) = self.lookup(&pk, store)? {
                    self.add(&old, -1);
                }
                self.add(&row, 1);
                self.pending_rows.insert(pk, Some(row));
            }
            SourceEvent::Delete { key } => {
                // A delete of a row never seen (created before the stream's retained history)
                // has nothing to retract.
                if let Some(old) = self.lookup(&key, store)? {
                    self.add(&old, -1);
                    self.pending_rows.insert(key, None);
                }
            }
            SourceEvent::Move { old_key, row } => {
                self.apply(SourceEvent::Delete { key: old_key }, store)?;
                self.apply(SourceEvent::Upsert(row), store)?;
            }
            SourceEvent::Truncate => {
                // Every group goes; a view without GROUP BY keeps its one row, at zero.
                for key in self.groups.keys() {
                    self.touched.insert(KeyOrd(key.clone()));
                }
                self.groups.clear();
                if self.def.group_columns.is_empty() {
                    self.groups.insert(Vec::new(), new_group(&self.def));
                }
                self.pending_rows.clear();
                self.truncated = true;
            }
        }
        Ok(())
    }

    fn lookup(&self, pk: &Key, store: &dyn RowLookup) -> Result<Option<Row>, String> {
        match self.pending_rows.get(pk) {
            Some(row) => Ok(row.clone()),
            None if self.truncated => Ok(None),
            None => store.get_row(pk),
        }
    }

    /// Adds (`sign` 1) or retracts (`sign` -1) one source row.
    fn add(&mut self, row: &Row, sign: i64) {
        if let Some(filter) = &self.def.filter {
            if !filter.matches(row) {
                return;
            }
        }
        let key: Key = self
            .def
            .group_columns
            .iter()
            .map(|&i| row[i].clone())
            .collect();
        let outputs = &self.def.outputs;
        let group = self
            .groups
            .entry(key.clone())
            .or_insert_with(|| new_group(&self.def));
        group.rows += sign;
        let inputs = outputs.iter().filter_map(|o| match o.kind {
            OutputKind::Key(_) => None,
            OutputKind::Count => Some(None),
            OutputKind::CountColumn(c) | OutputKind::Sum(c) => Some(Some(c)),
        });
        for (acc, input) in group.aggregates.iter_mut().zip(inputs) {
            let value = input.map_or(&Value::Null, |c| &row[c]);
            match (acc, value) {
                (Accumulator::Count, _) | (_, Value::Null) => {}
                (Accumulator::CountColumn(n), _) => *n += sign,
                (Accumulator::SumInt { sum, non_null }, Value::Int(v)) => {
                    *sum += i128::from(*v) * i128::from(sign);
                    *non_null += sign;
                }
                (Accumulator::SumFloat { sum, non_null }, Value::Float(v)) => {
                    *sum += v * sign as f64;
                    *non_null += sign;
                }
                (Accumulator::SumFloat { sum, non_null }, Value::Int(v)) => {
                    *sum += *v as f64 * sign as f64;
                    *non_null += sign;
                }
                // The decoder types every value by its column, so a sum never sees a string.
                (_, _) => {}
            }
        }
        assert!(
            group.rows >= 0,
            "group row count went negative: a row was retracted twice"
        );
        self.touched.insert(KeyOrd(key));
    }

    fn output_row(&self, key: &Key) -> Option<Row> {
        let group = self.groups.get(key)?;
        if group.rows == 0 && !key.is_empty() {
            return None;
        }
        let mut aggregates = group.aggregates.iter();
        // Key columns are filled from the key below: they may be selected in any order.
        let mut row: Row = self
            .def
            .outputs
            .iter()
            .map(|o| match o.kind {
                OutputKind::Key(_) => Value::Null,
                _ => match aggregates.next() {
                    Some(Accumulator::Count) => Value::Int(group.rows),
                    Some(Accumulator::CountColumn(n)) => Value::Int(*n),
                    Some(Accumulator::SumInt { non_null: 0, .. })
                    | Some(Accumulator::SumFloat { non_null: 0, .. }) => Value::Null,
                    Some(Accumulator::SumInt { sum, .. }) => {
                        Value::Int(i64::try_from(*sum).unwrap_or(if *sum < 0 {
                            i64::MIN
                        } else {
                            i64::MAX
                        }))
                    }
                    Some(Accumulator::SumFloat { sum, .. }) => Value::Float(*sum),
                    None => Value::Null,
                },
            })
            .collect();
        for (k, &pos) in key.iter().zip(&self.def.key_outputs) {
            row[pos] = k.clone();
        }
        Some(row)
    }

    /// Ends the batch: the change of every touched group and what to persist.
    pub fn finish_batch(&mut self) -> BatchOutput {
        let mut out = BatchOutput::default();
        for KeyOrd(key) in std::mem::take(&mut self.touched) {
            let row = self.output_row(&key);
            if row.is_none() {
                self.groups.remove(&key);
                out.groups.push((key.clone(), None));
            } else {
                out.groups
                    .push((key.clone(), self.groups.get(&key).cloned()));
            }
            out.changes.push(RowChange { key, row });
        }
        out.rows = self.pending_rows.drain().collect();
        out.truncate_rows = std::mem::take(&mut self.truncated);
        out
    }
}

/// The accumulators of a group with no rows yet.
fn new_group(def: &ViewDef) -> GroupState {
    GroupState {
        rows: 0,
        aggregates: def
            .outputs
            .iter()
            .filter_map(|o| match o.kind {
                OutputKind::Key(_) => None,
                OutputKind::Count => Some(Accumulator::Count),
                OutputKind::CountColumn(_) => Some(Accumulator::CountColumn(0)),
                OutputKind::Sum(_) if o.ty == catalog::ColumnType::Float64 => {
                    Some(Accumulator::SumFloat {
                        sum: 0.0,
                        non_null: 0,
                    })
                }
                OutputKind::Sum(_) => Some(Accumulator::SumInt {
                    sum: 0,
                    non_null: 0,
                }),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use catalog::{Catalog, Change, Object};
    use std::cell::RefCell;

    /// A store double: the rows the shell would have persisted.
    #[derive(Default)]
    struct Rows(RefCell<HashMap<Key, Row>>);

    impl RowLookup for Rows {
        fn get_row(&self, pk: &Key) -> Result<Option<Row>, String> {
            Ok(self.0.borrow().get(pk).cloned())
        }
    }

    impl Rows {
        fn persist(&self, out: &BatchOutput) {
            if out.truncate_rows {
                self.0.borrow_mut().clear();
            }
            for (k, r) in &out.rows {
                match r {
                    Some(r) => self.0.borrow_mut().insert(k.clone(), r.clone()),
                    None => self.0.borrow_mut().remove(k),
                };
            }
        }
    }

    fn core(view_sql: &str) -> ViewCore {
        let stream = "CREATE EXTERNAL STREAM orders(id int64, region string, amount int64, price float64) SETTINGS type='kafka', brokers='b:1', topic='t', data_format='Debezium', primary_key='id'";
        let mut c = Catalog::default();
        let ch = c.plan(stream).expect("stream");
        c.apply(1, stream, ch);
        let Ok(Change::Create(Object::View(v))) = c.plan(view_sql) else {
            panic!("view")
        };
        ViewCore::new(v, vec![0], HashMap::new())
    }

    fn order(id: i64, region: &str, amount: Option<i64>) -> Row {
        vec![
            Value::Int(id),
            Value::Text(region.into()),
            amount.map_or(Value::Null, Value::Int),
            Value::Float(0.5),
        ]
    }

    fn text(s: &str) -> Value {
        Value::Text(s.into())
    }

    #[test]
    fn update_moves_a_row_between_groups_and_delete_retracts() {
        let mut c = core("CREATE MATERIALIZED VIEW v AS SELECT count() AS n, region, sum(amount) AS total FROM orders GROUP BY region");
        let store = Rows::default();
        c.apply(SourceEvent::Upsert(order(1, "eu", Some(10))), &store)
            .expect("apply");
        c.apply(SourceEvent::Upsert(order(2, "eu", Some(5))), &store)
            .expect("apply");
        let out = c.finish_batch();
        store.persist(&out);
        assert_eq!(
            out.changes,
            vec![RowChange {
                key: vec![text("eu")],
                row: Some(vec![Value::Int(2), text("eu"), Value::Int(15)])
            }]
        );

        c.apply(SourceEvent::Upsert(order(1, "us", Some(7))), &store)
            .expect("apply");
        let out = c.finish_batch();
        store.persist(&out);
        assert_eq!(
            out.changes,
            vec![
                RowChange {
                    key: vec![text("eu")],
                    row: Some(vec![Value::Int(1), text("eu"), Value::Int(5)])
                },
                RowChange {
                    key: vec![text("us")],
                    row: Some(vec![Value::Int(1), text("us"), Value::Int(7)])
                },
            ]
        );

        c.apply(
            SourceEvent::Delete {
                key: vec![Value::Int(1)],
            },
            &store,
        )
        .expect("apply");
        c.apply(
            SourceEvent::Delete {
                key: vec![Value::Int(1)],
            },
            &store,
        )
        .expect("a second delete retracts nothing");
        let out = c.finish_batch();
        assert_eq!(
            out.changes,
            vec![RowChange {
                key: vec![text("us")],
                row: None
            }]
        );
        assert_eq!(out.groups, vec![(vec![text("us")], None)]);
        assert_eq!(c.n_groups(), 1);
    }

    #[test]
    fn sum_of_nulls_is_null_and_filter_applies_to_retractions() {
        let mut c = core("CREATE MATERIALIZED VIEW v AS SELECT region, count(amount) AS c, sum(amount) AS s FROM orders WHERE amount IS NULL OR amount > 3 GROUP BY region");
        let store = Rows::default();
        c.apply(SourceEvent::Upsert(order(1, "eu", None)), &store)
            .expect("apply");
        let out = c.finish_batch();
        store.persist(&out);
        assert_eq!(
            out.changes[0].row,
            Some(vec![text("eu"), Value::Int(0), Value::Null])
        );
        // Row 1 moves from passing the filter to failing it: the group disappears.
        c.apply(SourceEvent::Upsert(order(1, "eu", Some(1))), &store)
            .expect("apply");
        let out = c.finish_batch();
        assert_eq!(
            out.changes,
            vec![RowChange {
                key: vec![text("eu")],
                row: None
            }]
        );
    }

    #[test]
    fn a_global_aggregate_has_its_row_before_any_event_and_keeps_it() {
        let mut c =
            core("CREATE MATERIALIZED VIEW v AS SELECT count() AS n, sum(amount) AS s FROM orders");
        assert!(
            c.has_pending_changes(),
            "the row exists before any event, as in SQL"
        );
        let store = Rows::default();
        let out = c.finish_batch();
        store.persist(&out);
        assert_eq!(
            out.changes,
            vec![RowChange {
                key: vec![],
                row: Some(vec![Value::Int(0), Value::Null])
            }]
        );
        c.apply(SourceEvent::Upsert(order(1, "eu", Some(4))), &store)
            .expect("apply");
        let out = c.finish_batch();
        store.persist(&out);
        assert_eq!(out.changes[0].row, Some(vec![Value::Int(1), Value::Int(4)]));
        c.apply(
            SourceEvent::Delete {
                key: vec![Value::Int(1)],
            },
            &store,
        )
        .expect("apply");
        assert_eq!(
            c.finish_batch().changes[0].row,
            Some(vec![Value::Int(0), Value::Null]),
            "back to no rows: still one row"
        );
        let reloaded = ViewCore::new(
            c.def().clone(),
            vec![0],
            [(
                vec![],
                GroupState {
                    rows: 0,
                    aggregates: vec![
                        Accumulator::Count,
                        Accumulator::SumInt {
                            sum: 0,
                            non_null: 0,
                        },
                    ],
                },
            )]
            .into(),
        );
        assert!(
            !reloaded.has_pending_changes(),
            "a restarted view does not emit its row again"
        );
    }

    #[test]
    fn same_key_many_times_in_one_batch_yields_one_change() {
        let mut c = core(
            "CREATE MATERIALIZED VIEW v AS SELECT region, count() AS n FROM orders GROUP BY region",
        );
        let store = Rows::default();
        for amount in 0..5 {
            c.apply(
                SourceEvent::Upsert(order(
                    1,
                    if amount % 2 == 0 { "eu" } else { "us" },
                    Some(amount),
                )),
                &store,
            )
            .expect("apply");
        }
        let out = c.finish_batch();
        assert_eq!(
            out.changes,
            vec![
                RowChange {
                    key: vec![text("eu")],
                    row: Some(vec![text("eu"), Value::Int(1)])
                },
                RowChange {
                    key: vec![text("us")],
                    row: None
                },
            ]
        );
        assert_eq!(out.rows.len(), 1, "one stored version per source row");
    }

    #[test]
    fn a_key_change_retracts_the_old_key_and_truncate_clears_everything() {
        let mut c = core("CREATE MATERIALIZED VIEW v AS SELECT region, count() AS n, sum(amount) AS total FROM orders GROUP BY region");
        let store = Rows::default();
        c.apply(SourceEvent::Upsert(order(1, "eu", Some(10))), &store)
            .expect("apply");
        c.apply(SourceEvent::Upsert(order(2, "us", Some(5))), &store)
            .expect("apply");
        let out = c.finish_batch();
        store.persist(&out);
        // Row 1 becomes row 3 in another group: counted once, in its new group only.
        c.apply(
            SourceEvent::Move {
                old_key: vec![Value::Int(1)],
                row: order(3, "us", Some(1)),
            },
            &store,
        )
        .expect("apply");
        let out = c.finish_batch();
        store.persist(&out);
        assert_eq!(
            out.changes,
            vec![
                RowChange {
                    key: vec![text("eu")],
                    row: None
                },
                RowChange {
                    key: vec![text("us")],
                    row: Some(vec![text("us"), Value::Int(2), Value::Int(6)])
                },
            ]
        );
        assert_eq!(store.0.borrow().len(), 2, "rows 2 and 3 remain");

        // A truncate, then a row in the same batch: only that row counts afterwards.
        c.apply(SourceEvent::Truncate, &store).expect("truncate");
        c.apply(SourceEvent::Upsert(order(2, "jp", Some(4))), &store)
            .expect("apply");
        let out = c.finish_batch();
        store.persist(&out);
        assert!(out.truncate_rows);
        assert_eq!(
            out.changes,
            vec![
                RowChange {
                    key: vec![text("jp")],
                    row: Some(vec![text("jp"), Value::Int(1), Value::Int(4)])
                },
                RowChange {
                    key: vec![text("us")],
                    row: None
                },
            ]
        );
        assert_eq!(store.0.borrow().len(), 1);
        // Row 3 was truncated away: deleting it retracts nothing.
        c.apply(
            SourceEvent::Delete {
                key: vec![Value::Int(3)],
            },
            &store,
        )
        .expect("apply");
        assert!(c.finish_batch().changes.is_empty());
        assert_eq!(c.n_groups(), 1);
    }
}
