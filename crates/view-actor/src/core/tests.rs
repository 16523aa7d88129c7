use super::*;
use catalog::{Catalog, Change, Object};
use std::cell::RefCell;

/// A store double: the rows and groups the shell would have persisted.
#[derive(Default)]
struct Store {
    rows: RefCell<HashMap<Key, Row>>,
    groups: RefCell<HashMap<Key, GroupState>>,
    arrival: std::cell::Cell<u64>,
}

impl RowLookup for Store {
    fn get_row(&self, pk: &Key) -> Result<Option<Row>, String> {
        Ok(self.rows.borrow().get(pk).cloned())
    }
}

/// Through JSON, as the real store keeps state: what is read back must be what was written.
fn stored<T: serde::Serialize + serde::de::DeserializeOwned>(v: &T) -> T {
    serde_json::from_str(&serde_json::to_string(v).expect("to json")).expect("from json")
}

impl ViewCore {
    /// Every event from partition 0.
    fn apply_batch_p0(
        &mut self,
        events: &[SourceEvent],
        store: &dyn RowLookup,
    ) -> Result<Vec<(usize, String)>, String> {
        self.apply_batch(events, &vec![0; events.len()], store)
    }
}

impl Store {
    fn persist(&self, out: &BatchOutput) {
        self.arrival.set(out.arrival);
        if out.truncate_rows {
            self.rows.borrow_mut().clear();
        }
        for (k, r) in &out.rows {
            match r {
                Some(r) => self.rows.borrow_mut().insert(stored(k), stored(r)),
                None => self.rows.borrow_mut().remove(&stored(k)),
            };
        }
        for (k, g) in &out.groups {
            match g {
                Some(g) => self.groups.borrow_mut().insert(stored(k), stored(g)),
                None => self.groups.borrow_mut().remove(&stored(k)),
            };
        }
    }
}

const STREAM: &str = "CREATE EXTERNAL STREAM orders(id int64, region string, amount nullable(int64), price float64, note string, ts datetime64(3)) SETTINGS type='kafka', brokers='b:1', topic='t', data_format='Debezium', primary_key='id'";

fn plan(view_sql: &str) -> (ViewDef, StreamDef) {
    plan_over(STREAM, view_sql)
}

/// A view planned over the one stream `stream_sql` creates.
fn plan_over(stream_sql: &str, view_sql: &str) -> (ViewDef, StreamDef) {
    let mut c = Catalog::default();
    let ch = c.plan(stream_sql).expect("stream");
    c.apply(1, stream_sql, ch);
    let v = match c.plan(view_sql) {
        Ok(Change::Create(Object::View(v))) => v,
        other => panic!("view {view_sql}: {other:?}"),
    };
    let stream = c.entries()[0].object.clone();
    let Object::Stream(stream) = stream else {
        panic!("stream")
    };
    (v, stream)
}

fn core(view_sql: &str) -> ViewCore {
    let (v, s) = plan(view_sql);
    ViewCore::new(v, &s, HashMap::new()).expect("core")
}

fn order(id: i64, region: &str, amount: Option<i64>) -> Row {
    vec![
        Value::Int(id),
        Value::Text(region.into()),
        amount.map_or(Value::Null, Value::Int),
        Value::Float(0.5),
        Value::Text(format!("{{\"k\": {}}}", id % 3)),
        Value::Timestamp(1_709_287_200_000_000 + id * 1_000_000),
    ]
}

fn text(s: &str) -> Value {
    Value::Text(s.into())
}

fn run(c: &mut ViewCore, store: &Store, events: &[SourceEvent]) -> BatchOutput {
    let dead = c
        .apply_batch(events, &vec![0; events.len()], store)
        .expect("apply");
    assert!(dead.is_empty(), "{dead:?}");
    let out = c.finish_batch().expect("finish");
    store.persist(&out);
    out
}

#[test]
fn update_moves_a_row_between_groups_and_delete_retracts() {
    let mut c = core("CREATE MATERIALIZED VIEW v AS SELECT count() AS n, region, sum(amount) AS total FROM orders GROUP BY region");
    let store = Store::default();
    let out = run(
        &mut c,
        &store,
        &[
            SourceEvent::Upsert(order(1, "eu", Some(10))),
            SourceEvent::Upsert(order(2, "eu", Some(5))),
        ],
    );
    assert_eq!(
        out.changes,
        vec![RowChange {
            key: vec![text("eu")],
            row: Some(vec![Value::Int(2), text("eu"), Value::Int(15)])
        }]
    );
    let out = run(
        &mut c,
        &store,
        &[SourceEvent::Upsert(order(1, "us", Some(7)))],
    );
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
    let del = SourceEvent::Delete {
        key: vec![Value::Int(1)],
    };
    let out = run(&mut c, &store, &[del.clone(), del]);
    assert_eq!(
        out.changes,
        vec![RowChange {
            key: vec![text("us")],
            row: None
        }],
        "a second delete retracts nothing"
    );
    assert_eq!(out.groups, vec![(vec![text("us")], None)]);
    assert_eq!(c.n_groups(), 1);
}

#[test]
fn deleting_the_max_reveals_the_next_and_distinct_counts_stay_exact() {
    let mut c = core("CREATE MATERIALIZED VIEW v AS SELECT region, max(amount) AS hi, min(amount) AS lo, count(DISTINCT amount) AS d FROM orders GROUP BY region");
    let store = Store::default();
    run(
        &mut c,
        &store,
        &[
            SourceEvent::Upsert(order(1, "eu", Some(9))),
            SourceEvent::Upsert(order(2, "eu", Some(4))),
            SourceEvent::Upsert(order(3, "eu", Some(4))),
            SourceEvent::Upsert(order(4, "eu", Some(1))),
        ],
    );
    let out = run(
        &mut c,
        &store,
        &[
            SourceEvent::Delete {
                key: vec![Value::Int(1)],
            },
            SourceEvent::Delete {
                key: vec![Value::Int(4)],
            },
        ],
    );
    assert_eq!(
        out.changes[0].row,
        Some(vec![
            text("eu"),
            Value::Int(4),
            Value::Int(4),
            Value::Int(1)
        ])
    );
    let out = run(&mut c, &store, &[SourceEvent::Upsert(order(2, "eu", None))]);
    assert_eq!(
        out.changes[0].row,
        Some(vec![
            text("eu"),
            Value::Int(4),
            Value::Int(4),
            Value::Int(1)
        ]),
        "one 4 is left"
    );
}

#[test]
fn having_hides_a_group_without_dropping_its_state() {
    let mut c = core("CREATE MATERIALIZED VIEW v AS SELECT region, count() AS n, sum(amount) / count() AS mean FROM orders GROUP BY region HAVING n > 1");
    let store = Store::default();
    let out = run(
        &mut c,
        &store,
        &[SourceEvent::Upsert(order(1, "eu", Some(10)))],
    );
    assert_eq!(
        out.changes,
        vec![RowChange {
            key: vec![text("eu")],
            row: None
        }]
    );
    let out = run(
        &mut c,
        &store,
        &[SourceEvent::Upsert(order(2, "eu", Some(20)))],
    );
    assert_eq!(
        out.changes[0].row,
        Some(vec![text("eu"), Value::Int(2), Value::Float(15.0)])
    );
    assert_eq!(store.groups.borrow().len(), 1);
}

#[test]
fn a_global_aggregate_has_its_row_before_any_event_and_keeps_it() {
    let mut c =
        core("CREATE MATERIALIZED VIEW v AS SELECT count() AS n, sum(amount) AS s FROM orders");
    assert!(
        c.has_pending_changes(),
        "the row exists before any event, as in SQL"
    );
    let store = Store::default();
    let out = run(&mut c, &store, &[]);
    assert_eq!(
        out.changes,
        vec![RowChange {
            key: vec![],
            row: Some(vec![Value::Int(0), Value::Null])
        }]
    );
    let out = run(
        &mut c,
        &store,
        &[SourceEvent::Upsert(order(1, "eu", Some(4)))],
    );
    assert_eq!(out.changes[0].row, Some(vec![Value::Int(1), Value::Int(4)]));
    let out = run(
        &mut c,
        &store,
        &[SourceEvent::Delete {
            key: vec![Value::Int(1)],
        }],
    );
    assert_eq!(
        out.changes[0].row,
        Some(vec![Value::Int(0), Value::Null]),
        "back to no rows: still one row"
    );
    let (v, s) =
        plan("CREATE MATERIALIZED VIEW v AS SELECT count() AS n, sum(amount) AS s FROM orders");
    let reloaded = ViewCore::new(v, &s, store.groups.borrow().clone()).expect("core");
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
    let store = Store::default();
    let events: Vec<SourceEvent> = (0..5)
        .map(|a| SourceEvent::Upsert(order(1, if a % 2 == 0 { "eu" } else { "us" }, Some(a))))
        .collect();
    let out = run(&mut c, &store, &events);
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
fn a_row_that_fails_to_evaluate_is_a_dead_letter_and_changes_nothing() {
    let mut c = core("CREATE MATERIALIZED VIEW v AS SELECT region, sum(note:k::int) AS s FROM orders GROUP BY region");
    let store = Store::default();
    let mut bad = order(2, "eu", Some(1));
    bad[4] = text("{\"k\": \"seven\"}");
    let dead = c
        .apply_batch_p0(
            &[
                SourceEvent::Upsert(order(1, "eu", Some(1))),
                SourceEvent::Upsert(bad),
            ],
            &store,
        )
        .expect("apply");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].0, 1);
    assert!(dead[0].1.contains("seven"), "{}", dead[0].1);
    let out = c.finish_batch().expect("finish");
    assert_eq!(out.changes[0].row, Some(vec![text("eu"), Value::Int(1)]));
    store.persist(&out);
    // A row moving to a new key whose new version fails: the old version leaves all the same.
    let mut bad = order(3, "eu", Some(1));
    bad[4] = text("{\"k\": \"eight\"}");
    let dead = c
        .apply_batch_p0(
            &[SourceEvent::Move {
                old_key: vec![Value::Int(1)],
                row: bad,
            }],
            &store,
        )
        .expect("apply");
    assert_eq!(dead.len(), 1);
    let out = c.finish_batch().expect("finish");
    assert_eq!(
        out.changes,
        vec![RowChange {
            key: vec![text("eu")],
            row: None
        }]
    );
}

#[test]
fn a_sum_beyond_int64_leaves_its_row_out_with_a_reason_and_comes_back() {
    let mut c = core(
        "CREATE MATERIALIZED VIEW v AS SELECT region, sum(amount) AS s FROM orders GROUP BY region",
    );
    let store = Store::default();
    let big = 5_000_000_000_000_000_000;
    let dead = c
        .apply_batch_p0(
            &[
                SourceEvent::Upsert(order(1, "eu", Some(big))),
                SourceEvent::Upsert(order(2, "eu", Some(big))),
            ],
            &store,
        )
        .expect("apply");
    assert!(dead.is_empty());
    let out = c.finish_batch().expect("finish");
    store.persist(&out);
    assert_eq!(
        out.changes,
        vec![RowChange {
            key: vec![text("eu")],
            row: None
        }]
    );
    assert_eq!(out.group_errors.len(), 1);
    assert!(
        out.group_errors[0].1.contains("does not fit in int64"),
        "{:?}",
        out.group_errors
    );
    let out = run(
        &mut c,
        &store,
        &[SourceEvent::Delete {
            key: vec![Value::Int(2)],
        }],
    );
    assert_eq!(out.changes[0].row, Some(vec![text("eu"), Value::Int(big)]));
}

#[test]
fn a_view_without_aggregates_follows_its_source_rows() {
    let mut c = core(
        "CREATE MATERIALIZED VIEW v AS SELECT id, upper(region) AS r FROM orders WHERE amount > 3",
    );
    let store = Store::default();
    let out = run(
        &mut c,
        &store,
        &[
            SourceEvent::Upsert(order(1, "eu", Some(5))),
            SourceEvent::Upsert(order(2, "eu", Some(1))),
        ],
    );
    assert_eq!(
        out.changes,
        vec![RowChange {
            key: vec![Value::Int(1)],
            row: Some(vec![Value::Int(1), text("EU")])
        }]
    );
    // Row 1 stops passing the filter: it leaves the view; row 2 never was in it.
    let out = run(
        &mut c,
        &store,
        &[
            SourceEvent::Upsert(order(1, "eu", Some(0))),
            SourceEvent::Delete {
                key: vec![Value::Int(2)],
            },
        ],
    );
    assert_eq!(
        out.changes,
        vec![RowChange {
            key: vec![Value::Int(1)],
            row: None
        }]
    );
    assert!(
        store.rows.borrow().is_empty(),
        "no source rows are kept for a projection"
    );
}

#[test]
fn a_key_change_retracts_the_old_key_and_truncate_clears_everything() {
    let mut c = core("CREATE MATERIALIZED VIEW v AS SELECT region, count() AS n, sum(amount) AS total FROM orders GROUP BY region");
    let store = Store::default();
    run(
        &mut c,
        &store,
        &[
            SourceEvent::Upsert(order(1, "eu", Some(10))),
            SourceEvent::Upsert(order(2, "us", Some(5))),
        ],
    );
    let out = run(
        &mut c,
        &store,
        &[SourceEvent::Move {
            old_key: vec![Value::Int(1)],
            row: order(3, "us", Some(1)),
        }],
    );
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
    assert_eq!(store.rows.borrow().len(), 2, "rows 2 and 3 remain");
    let out = run(
        &mut c,
        &store,
        &[
            SourceEvent::Truncate,
            SourceEvent::Upsert(order(2, "jp", Some(4))),
        ],
    );
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
    assert_eq!(store.rows.borrow().len(), 1);
    let out = run(
        &mut c,
        &store,
        &[SourceEvent::Delete {
            key: vec![Value::Int(3)],
        }],
    );
    assert!(
        out.changes.is_empty(),
        "row 3 was truncated away: deleting it retracts nothing"
    );
}

mod join;
mod oracle;
mod windows;
