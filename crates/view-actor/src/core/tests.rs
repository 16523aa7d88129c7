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

/// A deterministic generator (xorshift), so that a failing seed can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn random_row(rng: &mut Rng, id: i64) -> Row {
    let regions = ["eu", "us", "EU", "ap"];
    vec![
        Value::Int(id),
        text(regions[rng.below(4) as usize]),
        if rng.below(6) == 0 {
            Value::Null
        } else {
            Value::Int(rng.below(12) as i64 - 2)
        },
        // Not multiples of a power of two, negative too, and now and then -0.0.
        if rng.below(15) == 0 {
            Value::Float(-0.0)
        } else {
            Value::Float((rng.below(2000) as f64 - 1000.0) / 7.0)
        },
        text(&format!(
            "{{\"k\": {}, \"tag\": \"t{}\"}}",
            rng.below(4),
            rng.below(3)
        )),
        // Within two hours, to the millisecond.
        Value::Timestamp(1_709_287_200_000_000 + rng.below(7_200_000) as i64 * 1_000),
    ]
}

/// Views and the DuckDB SQL that computes the same rows over the final source rows (`src`),
/// written by hand: the oracle does not share the translation under test.
const CASES: &[(&str, &str)] = &[
    (
        "CREATE MATERIALIZED VIEW v AS SELECT region, latest(amount) AS last, earliest(price) AS first, any_last(note:k) AS k, count() AS n FROM orders GROUP BY region",
        "SELECT region, arg_max(amount, seq) FILTER (WHERE amount IS NOT NULL), arg_min(price, seq), arg_max(json_extract_string(note, '$.k'), seq) FILTER (WHERE json_extract_string(note, '$.k') IS NOT NULL), count(*) FROM src GROUP BY region",
    ),
    (
        "CREATE MATERIALIZED VIEW v AS SELECT window_start, window_end, count() AS n, sum(amount) AS s, max(ts) AS last FROM tumble(orders, ts, 10m) GROUP BY window_start, window_end",
        "SELECT make_timestamp(CAST(floor(epoch_us(ts) / 600000000) AS BIGINT) * 600000000) AS ws, ws + INTERVAL 10 MINUTE, count(*), sum(amount), max(ts) FROM src GROUP BY ws",
    ),
    (
        "CREATE MATERIALIZED VIEW v AS SELECT round(price / 50) AS r, count() AS n, sum(price) AS s, avg(price) AS a, count(DISTINCT price) AS d, max(price) AS hi FROM orders GROUP BY r",
        "SELECT round(price / 50), count(*), sum(price), avg(price), count(DISTINCT price), max(price) FROM src GROUP BY 1",
    ),
    (
        "CREATE MATERIALIZED VIEW v AS SELECT region, count() AS n, sum(amount) AS s, min(amount) AS lo, max(amount) AS hi, count(DISTINCT amount) AS d, avg(amount) AS av, count(amount) AS c FROM orders WHERE amount IS NULL OR amount > 0 GROUP BY region",
        "SELECT region, count(*), sum(amount), min(amount), max(amount), count(DISTINCT amount), avg(amount), count(amount) FROM src WHERE amount IS NULL OR amount > 0 GROUP BY region",
    ),
    (
        "CREATE MATERIALIZED VIEW v AS SELECT lower(region) || '-' || to_string(amount % 3) AS k, count() AS n, sum(amount * 2 + 1) AS s, uniq(note:tag) AS tags FROM orders GROUP BY k HAVING count() > 1",
        "SELECT lower(region) || '-' || CAST(amount % 3 AS VARCHAR) AS k, count(*), sum(amount * 2 + 1), count(DISTINCT json_extract_string(note, '$.tag')) FROM src GROUP BY k HAVING count(*) > 1",
    ),
    (
        "CREATE MATERIALIZED VIEW v AS SELECT id, upper(region) AS r, amount * 10 AS a10, note:k::int AS k FROM orders WHERE amount > 3 OR region = 'ap'",
        "SELECT id, upper(region), amount * 10, CAST(json_extract_string(note, '$.k') AS INTEGER) FROM src WHERE amount > 3 OR region = 'ap'",
    ),
    (
        "CREATE MATERIALIZED VIEW v AS SELECT count() AS n, max(price) AS m, sum(price) AS p, min(region) AS r FROM orders",
        "SELECT count(*), max(price), sum(price), min(region) FROM src",
    ),
    (
        "CREATE MATERIALIZED VIEW v AS SELECT note:k AS k, if(amount > 5, 'big', 'small') AS size, count() AS n, avg(price) AS ap FROM orders GROUP BY k, size",
        "SELECT json_extract_string(note, '$.k'), CASE WHEN amount > 5 THEN 'big' ELSE 'small' END AS size, count(*), avg(price) FROM src GROUP BY 1, 2",
    ),
];

fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Float(x), Value::Float(y)) => (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0),
        (Value::Float(x), Value::Int(y)) | (Value::Int(y), Value::Float(x)) => {
            (*x - *y as f64).abs() < 1e-9
        }
        _ => a == b,
    }
}

fn oracle(oracle_sql: &str, rows: &HashMap<i64, Row>) -> Vec<Row> {
    let conn = duckdb::Connection::open_in_memory().expect("duckdb");
    conn.execute_batch(
        "CREATE TABLE src(id BIGINT, region VARCHAR, amount BIGINT, price DOUBLE, note VARCHAR, ts TIMESTAMP, seq BIGINT)",
    )
    .expect("create");
    {
        let mut app = conn.appender("src").expect("appender");
        for r in rows.values() {
            let v: Vec<duckdb::types::Value> = r
                .iter()
                .map(|v| match v {
                    Value::Null => duckdb::types::Value::Null,
                    Value::Int(i) => duckdb::types::Value::BigInt(*i),
                    Value::Float(f) => duckdb::types::Value::Double(*f),
                    Value::Text(s) => duckdb::types::Value::Text(s.clone()),
                    Value::Bool(b) => duckdb::types::Value::Boolean(*b),
                    Value::Timestamp(t) => {
                        duckdb::types::Value::Timestamp(duckdb::types::TimeUnit::Microsecond, *t)
                    }
                    other => panic!("no such column type in this test: {other:?}"),
                })
                .collect();
            app.append_row(duckdb::appender_params_from_iter(v))
                .expect("append");
        }
    }
    let mut stmt = conn.prepare(oracle_sql).expect("oracle sql");
    let mut out = Vec::new();
    let mut q = stmt.query([]).expect("query");
    while let Some(r) = q.next().expect("row") {
        let n = r.as_ref().column_count();
        let row: Row = (0..n)
            .map(|i| match r.get_ref(i).expect("value") {
                duckdb::types::ValueRef::Null => Value::Null,
                duckdb::types::ValueRef::BigInt(v) => Value::Int(v),
                duckdb::types::ValueRef::Int(v) => Value::Int(v.into()),
                duckdb::types::ValueRef::HugeInt(v) => Value::Int(i64::try_from(v).expect("fits")),
                duckdb::types::ValueRef::Double(v) => Value::Float(v),
                duckdb::types::ValueRef::Text(t) => {
                    Value::Text(String::from_utf8_lossy(t).into_owned())
                }
                duckdb::types::ValueRef::Boolean(b) => Value::Bool(b),
                duckdb::types::ValueRef::Timestamp(duckdb::types::TimeUnit::Microsecond, t) => {
                    Value::Timestamp(t)
                }
                other => panic!("oracle type {other:?}"),
            })
            .collect();
        out.push(row);
    }
    out
}

/// Random CDC streams (inserts, updates that move rows between groups, key changes, deletes,
/// truncates) through each kind of view, with crashes at random points (the batch in flight is
/// lost and replayed from the last commit, as the actor does from its stored offsets). The
/// replica built from the change batches must equal DuckDB's answer over the final source rows.
#[test]
fn random_cdc_streams_with_crashes_equal_the_duckdb_oracle() {
    for (case, (view_sql, oracle_sql)) in CASES.iter().enumerate() {
        let mut rows_seen = 0;
        for seed in 1..=6u64 {
            let mut rng = Rng(seed * 7919 + case as u64 * 104_729);
            let (def, stream) = plan(view_sql);
            let store = Store::default();
            let mut c = ViewCore::new(def.clone(), &stream, HashMap::new()).expect("core");
            let mut source: HashMap<i64, Row> = HashMap::new();
            let mut replica: HashMap<Key, Row> = HashMap::new();
            for _batch in 0..40 {
                let mut events = Vec::new();
                let mut after = source.clone();
                // The arrival number each event gets: the source rows keep the one of their
                // current version, for latest() and earliest().
                let first_arrival = store.arrival.get() as i64;
                for arrival in first_arrival..first_arrival + rng.below(25) as i64 {
                    let id = rng.below(40) as i64;
                    let e = match rng.below(20) {
                        0..=11 => SourceEvent::Upsert(random_row(&mut rng, id)),
                        12..=15 => SourceEvent::Delete {
                            key: vec![Value::Int(id)],
                        },
                        16..=18 => {
                            let new_id = 40 + rng.below(20) as i64;
                            SourceEvent::Move {
                                old_key: vec![Value::Int(id)],
                                row: random_row(&mut rng, new_id),
                            }
                        }
                        _ if rng.below(4) == 0 => SourceEvent::Truncate,
                        _ => SourceEvent::Upsert(random_row(&mut rng, id)),
                    };
                    let versioned = |r: &Row| {
                        let mut r = r.clone();
                        r.push(Value::Int(arrival));
                        r
                    };
                    match &e {
                        SourceEvent::Upsert(r) => {
                            after.insert(
                                match r[0] {
                                    Value::Int(i) => i,
                                    _ => unreachable!(),
                                },
                                versioned(r),
                            );
                        }
                        SourceEvent::Delete { key } => {
                            if let Value::Int(i) = key[0] {
                                after.remove(&i);
                            }
                        }
                        SourceEvent::Move { old_key, row } => {
                            if let Value::Int(i) = old_key[0] {
                                after.remove(&i);
                            }
                            after.insert(
                                match row[0] {
                                    Value::Int(i) => i,
                                    _ => unreachable!(),
                                },
                                versioned(row),
                            );
                        }
                        SourceEvent::Truncate => after.clear(),
                        SourceEvent::Append(_) => {}
                    }
                    events.push(e);
                }
                if rng.below(5) == 0 {
                    // A crash before the commit: the batch's effects are lost with the
                    // process; the restarted core sees only what was persisted.
                    c.apply_batch(&events, &vec![0; events.len()], &store)
                        .expect("apply");
                    c = ViewCore::new(def.clone(), &stream, store.groups.borrow().clone())
                        .expect("core");
                    c.set_arrival(store.arrival.get());
                }
                let dead = c
                    .apply_batch(&events, &vec![0; events.len()], &store)
                    .expect("apply");
                assert!(dead.is_empty(), "case {case} seed {seed}: {dead:?}");
                let out = c.finish_batch().expect("finish");
                store.persist(&out);
                for ch in out.changes {
                    match ch.row {
                        Some(r) => replica.insert(ch.key, r),
                        None => replica.remove(&ch.key),
                    };
                }
                source = after;
            }
            let mut want = oracle(oracle_sql, &source);
            rows_seen += want.len();
            let mut got: Vec<Row> = replica.into_values().collect();
            want.sort_by_key(|r| KeyOrd(r.clone()));
            got.sort_by_key(|r| KeyOrd(r.clone()));
            assert_eq!(
                got.len(),
                want.len(),
                "case {case} seed {seed}: rows\n got {got:?}\nwant {want:?}"
            );
            for (g, w) in got.iter().zip(&want) {
                assert!(
                    g.len() == w.len() && g.iter().zip(w).all(|(a, b)| same(a, b)),
                    "case {case} seed {seed}:\n got {g:?}\nwant {w:?}"
                );
            }
            // A full resynchronisation lists the same rows.
            let (def2, stream2) = plan(view_sql);
            let mut reloaded =
                ViewCore::new(def2, &stream2, store.groups.borrow().clone()).expect("core");
            assert_eq!(
                reloaded.all_rows().expect("rows").len(),
                want.len(),
                "case {case} seed {seed}: full batch"
            );
        }
        assert!(
            rows_seen > 0,
            "case {case}: the oracle had rows in some run: a test over nothing proves nothing"
        );
    }
}

#[test]
fn times_group_by_minute_and_keep_exact_extremes_under_retraction() {
    let stream_sql = "CREATE EXTERNAL STREAM ev(id int64, at datetime64(3), day date) SETTINGS type='kafka', brokers='b:1', topic='t', data_format='Debezium', primary_key='id'";
    let view_sql = "CREATE MATERIALIZED VIEW v AS SELECT to_start_of_minute(at) AS minute, count() AS n, max(at) AS last, min(day) AS first_day FROM ev GROUP BY minute";
    let (def, stream) = plan_over(stream_sql, view_sql);
    let mut c = ViewCore::new(def, &stream, HashMap::new()).expect("core");
    let store = Store::default();
    let ts = |s: &str| Value::Timestamp(catalog::parse_timestamp(s).expect("ts"));
    let day = |s: &str| Value::Date(catalog::parse_date(s).expect("date"));
    let row = |id: i64, at: &str, d: &str| vec![Value::Int(id), ts(at), day(d)];
    run(
        &mut c,
        &store,
        &[
            SourceEvent::Upsert(row(1, "2024-03-01 10:00:05", "2024-03-01")),
            SourceEvent::Upsert(row(2, "2024-03-01 10:00:59.999", "2024-02-28")),
            SourceEvent::Upsert(row(3, "2024-03-01 10:01:00", "2024-03-01")),
        ],
    );
    // The latest event of 10:00 and the earliest day go: the next ones show.
    let out = run(
        &mut c,
        &store,
        &[SourceEvent::Delete {
            key: vec![Value::Int(2)],
        }],
    );
    assert_eq!(
        out.changes,
        vec![RowChange {
            key: vec![ts("2024-03-01 10:00:00")],
            row: Some(vec![
                ts("2024-03-01 10:00:00"),
                Value::Int(1),
                ts("2024-03-01 10:00:05"),
                day("2024-03-01")
            ]),
        }]
    );
    let out = run(
        &mut c,
        &store,
        &[SourceEvent::Upsert(row(
            1,
            "2024-03-01 10:01:30",
            "2024-03-01",
        ))],
    );
    assert_eq!(
        out.changes.len(),
        2,
        "row 1 moves to 10:01: {:?}",
        out.changes
    );
    assert_eq!(out.changes[0].row, None);
    assert_eq!(
        out.changes[1].row.as_ref().map(|r| r[1].clone()),
        Some(Value::Int(2))
    );
}

#[test]
fn closed_windows_are_final_their_state_is_evicted_and_late_changes_are_counted() {
    let stream_sql = "CREATE EXTERNAL STREAM ev(id int64, at datetime64(3), v int64) SETTINGS type='kafka', brokers='b:1', topic='t', data_format='Debezium', primary_key='id'";
    let view_sql = "CREATE MATERIALIZED VIEW w AS SELECT window_start, count() AS n, sum(v) AS total, max(v) AS top FROM tumble(ev, at, 1m) GROUP BY window_start SETTINGS allowed_lateness='10s'";
    let (def, stream) = plan_over(stream_sql, view_sql);
    assert!(def.plan.window.is_some());
    let mut c = ViewCore::new(def.clone(), &stream, HashMap::new()).expect("core");
    let store = Store::default();
    let ts = |s: &str| Value::Timestamp(catalog::parse_timestamp(s).expect("ts"));
    let row = |id: i64, at: &str, v: i64| vec![Value::Int(id), ts(at), Value::Int(v)];
    let w10 = ts("2024-03-01 10:00:00");
    run(
        &mut c,
        &store,
        &[
            SourceEvent::Upsert(row(1, "2024-03-01 10:00:30", 5)),
            SourceEvent::Upsert(row(2, "2024-03-01 10:00:50", 7)),
            // Within the lateness: the 10:00 window is still open at a watermark of 10:00:55.
            SourceEvent::Upsert(row(3, "2024-03-01 10:01:05", 1)),
            SourceEvent::Upsert(row(4, "2024-03-01 10:00:59", 2)),
        ],
    );
    assert!(!store.groups.borrow()[&vec![w10.clone()]].closed);
    // 10:01:15 moves the watermark to 10:01:05: the 10:00 window closes.
    let out = run(
        &mut c,
        &store,
        &[SourceEvent::Upsert(row(5, "2024-03-01 10:01:15", 1))],
    );
    assert_eq!(
        out.watermark,
        Some(catalog::parse_timestamp("2024-03-01 10:01:05").expect("ts"))
    );
    let closed = store.groups.borrow()[&vec![w10.clone()]].clone();
    assert!(closed.closed && closed.aggregates.is_empty(), "{closed:?}");
    let final_row = vec![w10.clone(), Value::Int(3), Value::Int(14), Value::Int(7)];
    assert_eq!(closed.row, Some(final_row.clone()));
    // Late: a new event for 10:00, an update and a delete of rows in it. None is applied;
    // the update's new version, in the open 10:01 window, is.
    let out = run(
        &mut c,
        &store,
        &[
            SourceEvent::Upsert(row(6, "2024-03-01 10:00:40", 100)),
            SourceEvent::Delete {
                key: vec![Value::Int(1)],
            },
            SourceEvent::Upsert(row(2, "2024-03-01 10:01:20", 7)),
        ],
    );
    assert_eq!(out.late_events, 3);
    assert_eq!(
        out.changes,
        vec![RowChange {
            key: vec![ts("2024-03-01 10:01:00")],
            row: Some(vec![
                ts("2024-03-01 10:01:00"),
                Value::Int(3),
                Value::Int(9),
                Value::Int(7)
            ]),
        }]
    );
    // After a restart with the persisted watermark, a full resync lists the final row.
    let mut reloaded = ViewCore::new(def, &stream, store.groups.borrow().clone()).expect("core");
    reloaded.set_event_times(out.event_times.clone(), out.watermark);
    let all = reloaded.all_rows().expect("rows");
    assert_eq!(all[0].row, Some(final_row));
    let out = run(
        &mut reloaded,
        &store,
        &[SourceEvent::Upsert(row(7, "2024-03-01 10:00:01", 1))],
    );
    assert_eq!(
        (out.late_events, out.changes.len()),
        (1, 0),
        "still closed after a restart"
    );
}

/// Kafka orders messages only within a partition: a partition read ahead must not close the
/// windows another partition is still filling.
#[test]
fn the_watermark_follows_the_slowest_partition() {
    let (def, stream) = plan_over(
        "CREATE EXTERNAL STREAM ev(id int64, at datetime64(3), v int64) SETTINGS type='kafka', brokers='b:1', topic='t', data_format='Debezium', primary_key='id'",
        "CREATE MATERIALIZED VIEW w AS SELECT window_start, count() AS n FROM tumble(ev, at, 1m) GROUP BY window_start SETTINGS allowed_lateness='10s'",
    );
    let mut c = ViewCore::new(def, &stream, HashMap::new()).expect("core");
    c.set_partitions(&[0, 1]);
    let store = Store::default();
    let ts = |s: &str| Value::Timestamp(catalog::parse_timestamp(s).expect("ts"));
    let row = |id: i64, at: &str| SourceEvent::Upsert(vec![Value::Int(id), ts(at), Value::Int(1)]);
    let mut batch = |events: &[SourceEvent], partitions: &[i32]| {
        let dead = c.apply_batch(events, partitions, &store).expect("apply");
        assert!(dead.is_empty());
        let out = c.finish_batch().expect("finish");
        store.persist(&out);
        out
    };
    // Partition 0 runs five minutes ahead; partition 1 has said nothing yet.
    let out = batch(
        &[row(1, "2024-03-01 10:00:10"), row(2, "2024-03-01 10:05:00")],
        &[0, 0],
    );
    assert_eq!(out.watermark, None);
    let out = batch(&[row(3, "2024-03-01 10:00:20")], &[1]);
    assert_eq!(out.late_events, 0, "partition 1's 10:00 event is on time");
    assert_eq!(
        out.watermark,
        Some(catalog::parse_timestamp("2024-03-01 10:00:10").expect("ts"))
    );
    let out = batch(&[row(4, "2024-03-01 10:06:00")], &[1]);
    let w10 = vec![ts("2024-03-01 10:00:00")];
    let closed = store.groups.borrow()[&w10].clone();
    assert!(closed.closed, "both partitions are past 10:01:10 now");
    assert_eq!(
        closed.row,
        Some(vec![ts("2024-03-01 10:00:00"), Value::Int(2)])
    );
    assert_eq!(out.late_events, 0);
    // A truncate starts event time over: the re-snapshot fills the window again.
    let out = batch(
        &[SourceEvent::Truncate, row(1, "2024-03-01 10:00:10")],
        &[0, 0],
    );
    assert_eq!(out.late_events, 0);
    assert!(
        out.changes
            .iter()
            .any(|ch| ch.key == w10 && ch.row == Some(vec![w10[0].clone(), Value::Int(1)])),
        "{:?}",
        out.changes
    );
}
