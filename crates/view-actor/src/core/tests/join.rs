//! Joins: random CDC streams on both sides with crashes, against DuckDB joining the final rows.

use super::*;

const ORDERS: &str = "CREATE EXTERNAL STREAM orders(id int64, customer nullable(int64), amount nullable(int64), name string) SETTINGS type='kafka', brokers='b:1', topic='o', data_format='Debezium', primary_key='id'";
const CUSTOMERS: &str = "CREATE EXTERNAL STREAM customers(id int64, country string, name string, tier nullable(int64)) SETTINGS type='kafka', brokers='b:1', topic='c', data_format='Debezium', primary_key='id'";

/// A join store double: what the shell would have persisted, both sides and the index.
#[derive(Default)]
struct JoinStore {
    base: Store,
    left: RefCell<HashMap<Key, Row>>,
    right: RefCell<HashMap<Key, Row>>,
    index: RefCell<BTreeSet<(KeyOrd, KeyOrd)>>,
}

impl RowLookup for JoinStore {
    fn get_row(&self, pk: &Key) -> Result<Option<Row>, String> {
        self.base.get_row(pk)
    }
    fn get_side(&self, side: Side, pk: &Key) -> Result<Option<Row>, String> {
        let map = match side {
            Side::Left => &self.left,
            Side::Right => &self.right,
        };
        Ok(map.borrow().get(pk).cloned())
    }
    fn holders(&self, key: &Key) -> Result<Vec<Key>, String> {
        Ok(self
            .index
            .borrow()
            .iter()
            .filter(|(k, _)| k.0 == *key)
            .map(|(_, pk)| pk.0.clone())
            .collect())
    }
    fn left_keys(&self) -> Result<Vec<Key>, String> {
        Ok(self.left.borrow().keys().cloned().collect())
    }
}

impl JoinStore {
    fn persist(&self, out: &BatchOutput) {
        self.base.persist(out);
        let j = out
            .join
            .as_ref()
            .expect("a join view's batch has join writes");
        if j.truncate_left {
            self.left.borrow_mut().clear();
            self.index.borrow_mut().clear();
        }
        if j.truncate_right {
            self.right.borrow_mut().clear();
        }
        for (map, rows) in [(&self.left, &j.left), (&self.right, &j.right)] {
            for (k, r) in rows {
                match r {
                    Some(r) => map.borrow_mut().insert(stored(k), stored(r)),
                    None => map.borrow_mut().remove(&stored(k)),
                };
            }
        }
        for (k, pk, present) in &j.index {
            let entry = (KeyOrd(stored(k)), KeyOrd(stored(pk)));
            if *present {
                self.index.borrow_mut().insert(entry);
            } else {
                self.index.borrow_mut().remove(&entry);
            }
        }
    }
}

fn plan_join(view_sql: &str) -> Result<(ViewDef, StreamDef, StreamDef), catalog::SqlError> {
    let mut c = Catalog::default();
    for (id, sql) in [(1, ORDERS), (2, CUSTOMERS)] {
        let ch = c.plan(sql).expect("stream");
        c.apply(id, sql, ch);
    }
    let v = match c.plan(view_sql)? {
        Change::Create(Object::View(v)) => v,
        other => panic!("view {view_sql}: {other:?}"),
    };
    let left = c.stream("orders").expect("orders").clone();
    let right = c.stream("customers").expect("customers").clone();
    Ok((v, left, right))
}

/// Join views and DuckDB's SQL for them over the final rows (`o`, `c`), written by hand.
const CASES: &[(&str, &str)] = &[
    (
        "CREATE MATERIALIZED VIEW v AS SELECT c.country, count() AS n, sum(o.amount) AS s, max(o.amount) AS hi, count(DISTINCT o.customer) AS d FROM orders AS o JOIN customers AS c ON o.customer = c.id GROUP BY c.country",
        "SELECT c.country, count(*), sum(o.amount), max(o.amount), count(DISTINCT o.customer) FROM o JOIN c ON o.customer = c.id GROUP BY c.country",
    ),
    (
        "CREATE MATERIALIZED VIEW v AS SELECT o.id, o.amount, c.country, upper(c.name) AS cname, o.name FROM orders AS o LEFT JOIN customers AS c ON o.customer = c.id WHERE o.amount IS NULL OR o.amount > 2",
        "SELECT o.id, o.amount, c.country, upper(c.name), o.name FROM o LEFT JOIN c ON o.customer = c.id WHERE o.amount IS NULL OR o.amount > 2",
    ),
    (
        "CREATE MATERIALIZED VIEW v AS SELECT coalesce(country, 'none') AS k, count() AS n, sum(amount * coalesce(tier, 1)) AS s, min(customers.name) AS first FROM orders LEFT OUTER JOIN customers ON customer = customers.id GROUP BY k",
        "SELECT coalesce(c.country, 'none'), count(*), sum(o.amount * coalesce(c.tier, 1)), min(c.name) FROM o LEFT JOIN c ON o.customer = c.id GROUP BY 1",
    ),
    (
        "CREATE MATERIALIZED VIEW v AS SELECT count() AS n, sum(o.amount) AS s FROM orders o INNER JOIN customers c ON c.id = o.customer WHERE c.tier > 1",
        "SELECT count(*), sum(o.amount) FROM o JOIN c ON o.customer = c.id WHERE c.tier > 1",
    ),
];

fn oracle(sql: &str, orders: &HashMap<i64, Row>, customers: &HashMap<i64, Row>) -> Vec<Row> {
    let conn = duckdb::Connection::open_in_memory().expect("duckdb");
    conn.execute_batch(
        "CREATE TABLE o(id BIGINT, customer BIGINT, amount BIGINT, name VARCHAR); CREATE TABLE c(id BIGINT, country VARCHAR, name VARCHAR, tier BIGINT)",
    )
    .expect("create");
    super::oracle::append_rows(&conn, "o", orders.values());
    super::oracle::append_rows(&conn, "c", customers.values());
    super::oracle::query_rows(&conn, sql)
}

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn random_order(rng: &mut Rng, id: i64) -> Row {
    vec![
        Value::Int(id),
        if rng.below(8) == 0 {
            Value::Null
        } else {
            Value::Int(rng.below(14) as i64)
        },
        if rng.below(6) == 0 {
            Value::Null
        } else {
            Value::Int(rng.below(10) as i64 - 1)
        },
        text(&format!("o{}", rng.below(3))),
    ]
}

fn random_customer(rng: &mut Rng, id: i64) -> Row {
    let countries = ["fr", "us", "jp"];
    vec![
        Value::Int(id),
        text(countries[rng.below(3) as usize]),
        text(&format!("n{}", rng.below(4))),
        if rng.below(5) == 0 {
            Value::Null
        } else {
            Value::Int(rng.below(3) as i64)
        },
    ]
}

fn id_of(r: &Row) -> i64 {
    match r[0] {
        Value::Int(i) => i,
        _ => unreachable!("ids are ints"),
    }
}

/// A random event on one side, applied to that side's model of the final rows.
fn random_event(rng: &mut Rng, right: bool, model: &mut HashMap<i64, Row>) -> SourceEvent {
    // A customer's key change moves it onto ids orders name, so it gains orders as well as
    // losing them.
    let (n, moved, row): (u64, i64, fn(&mut Rng, i64) -> Row) = if right {
        (12, 10, random_customer)
    } else {
        (40, 40, random_order)
    };
    let id = rng.below(n) as i64;
    let e = match rng.below(40) {
        0..=25 => SourceEvent::Upsert(row(rng, id)),
        26..=33 => SourceEvent::Delete {
            key: vec![Value::Int(id)],
        },
        34..=38 => {
            let new_id = moved + rng.below(4) as i64;
            SourceEvent::Move {
                old_key: vec![Value::Int(id)],
                row: row(rng, new_id),
            }
        }
        _ => SourceEvent::Truncate,
    };
    match &e {
        SourceEvent::Upsert(r) => {
            model.insert(id_of(r), r.clone());
        }
        SourceEvent::Delete { key } => {
            model.remove(&id_of(key));
        }
        SourceEvent::Move { old_key, row } => {
            model.remove(&id_of(old_key));
            model.insert(id_of(row), row.clone());
        }
        SourceEvent::Truncate => model.clear(),
        SourceEvent::Append(_) => {}
    }
    e
}

/// Both sides change in every batch (customers updated under their orders, orders moving
/// between customers, deletes and truncates on either side), with crashes at random points:
/// the replica built from the change batches equals DuckDB joining the final rows.
#[test]
fn random_changes_on_both_sides_with_crashes_equal_the_duckdb_join() {
    let right_input = input_partition(1, 0).expect("input");
    for (case, (view_sql, oracle_sql)) in CASES.iter().enumerate() {
        let mut rows_seen = 0;
        for seed in 1..=6u64 {
            let mut rng = Rng(seed * 6007 + case as u64 * 7919);
            let (def, left, right) = plan_join(view_sql).expect("plan");
            let store = JoinStore::default();
            let new_core = |store: &JoinStore| {
                ViewCore::new_joined(
                    def.clone(),
                    &left,
                    Some(&right),
                    store.base.groups.borrow().clone(),
                )
                .expect("core")
            };
            let mut c = new_core(&store);
            let (mut orders, mut customers) = (HashMap::new(), HashMap::new());
            let mut replica: HashMap<Key, Row> = HashMap::new();
            for _batch in 0..40 {
                let (mut o, mut cu) = (orders.clone(), customers.clone());
                let mut events = Vec::new();
                let mut partitions = Vec::new();
                for _ in 0..rng.below(20) {
                    let on_right = rng.below(3) == 0;
                    let model = if on_right { &mut cu } else { &mut o };
                    events.push(random_event(&mut rng, on_right, model));
                    partitions.push(if on_right { right_input } else { 0 });
                }
                if rng.below(5) == 0 {
                    // A crash before the commit: the batch is lost and replayed.
                    c.apply_batch(&events, &partitions, &store).expect("apply");
                    c = new_core(&store);
                }
                let dead = c.apply_batch(&events, &partitions, &store).expect("apply");
                assert!(dead.is_empty(), "case {case} seed {seed}: {dead:?}");
                let out = c.finish_batch().expect("finish");
                store.persist(&out);
                super::oracle::apply_changes(&mut replica, out.changes);
                (orders, customers) = (o, cu);
            }
            let mut want = oracle(oracle_sql, &orders, &customers);
            rows_seen += want.len();
            let mut got: Vec<Row> = replica.into_values().collect();
            want.sort_by_key(|r| KeyOrd(r.clone()));
            got.sort_by_key(|r| KeyOrd(r.clone()));
            assert_eq!(got, want, "case {case} seed {seed}");
            // The stored sides are the final rows.
            assert_eq!(
                store.left.borrow().len(),
                orders.len(),
                "case {case} seed {seed}: stored orders"
            );
            assert_eq!(
                store.right.borrow().len(),
                customers.len(),
                "case {case} seed {seed}: stored customers"
            );
        }
        assert!(
            rows_seen > 0,
            "case {case}: the oracle had rows in some run"
        );
    }
}

/// A customer's update re-joins every order it has, and nothing else; its delete takes them
/// out of an inner join and leaves them with NULLs in a left join.
#[test]
fn a_change_to_the_joined_row_rejoins_exactly_the_rows_holding_its_key() {
    let (def, left, right) = plan_join("CREATE MATERIALIZED VIEW v AS SELECT o.id, c.country FROM orders AS o LEFT JOIN customers AS c ON o.customer = c.id").expect("plan");
    let store = JoinStore::default();
    let mut c = ViewCore::new_joined(def, &left, Some(&right), HashMap::new()).expect("core");
    let r = input_partition(1, 0).expect("input");
    let order = |id: i64, customer: i64| {
        SourceEvent::Upsert(vec![
            Value::Int(id),
            Value::Int(customer),
            Value::Int(1),
            text("x"),
        ])
    };
    let customer = |id: i64, country: &str| {
        SourceEvent::Upsert(vec![Value::Int(id), text(country), text("n"), Value::Null])
    };
    let mut batch = |events: Vec<SourceEvent>, parts: Vec<i32>| {
        let dead = c.apply_batch(&events, &parts, &store).expect("apply");
        assert!(dead.is_empty());
        let out = c.finish_batch().expect("finish");
        store.persist(&out);
        out.changes
    };
    let changes = batch(
        vec![order(1, 7), order(2, 7), order(3, 8), customer(7, "fr")],
        vec![0, 0, 0, r],
    );
    assert_eq!(changes.len(), 3);
    assert_eq!(changes[0].row, Some(vec![Value::Int(1), text("fr")]));
    assert_eq!(changes[2].row, Some(vec![Value::Int(3), Value::Null]));
    // The update touches orders 1 and 2 only.
    let changes = batch(vec![customer(7, "jp")], vec![r]);
    let keys: Vec<Key> = changes.iter().map(|c| c.key.clone()).collect();
    assert_eq!(keys, vec![vec![Value::Int(1)], vec![Value::Int(2)]]);
    assert!(changes
        .iter()
        .all(|c| c.row.as_ref().is_some_and(|r| r[1] == text("jp"))));
    // An order moving to another customer leaves the old customer's index.
    batch(vec![order(2, 8)], vec![0]);
    let changes = batch(vec![customer(7, "us")], vec![r]);
    assert_eq!(changes.len(), 1, "{changes:?}");
    let changes = batch(
        vec![SourceEvent::Delete {
            key: vec![Value::Int(7)],
        }],
        vec![r],
    );
    assert_eq!(
        changes,
        vec![RowChange {
            key: vec![Value::Int(1)],
            row: Some(vec![Value::Int(1), Value::Null])
        }]
    );
}

#[test]
fn joins_outside_the_supported_set_are_refused_at_create_with_the_reason() {
    let refused = [
        ("SELECT o.id FROM orders AS o JOIN customers AS c ON o.amount = c.tier", "whole primary key"),
        ("SELECT o.id FROM orders AS o JOIN customers AS c ON o.name = c.id", "equal types"),
        ("SELECT o.id FROM orders AS o JOIN customers AS c ON o.customer > c.id", "equates columns"),
        ("SELECT o.id FROM orders AS o JOIN customers AS c ON o.customer = c.id OR o.id = c.id", "equates columns"),
        ("SELECT id FROM orders AS o JOIN customers AS c ON o.customer = c.id", "in both stream"),
        ("SELECT * FROM orders AS o JOIN customers AS c ON o.customer = c.id", "list the columns"),
        ("SELECT o.id FROM orders AS o RIGHT JOIN customers AS c ON o.customer = c.id", "only INNER and LEFT"),
        ("SELECT o.id FROM orders AS o JOIN customers AS c USING (id)", "needs ON"),
        ("SELECT o.id FROM orders AS o JOIN customers AS c ON o.customer = c.id JOIN customers AS d ON o.customer = d.id", "one stream with one other"),
        ("SELECT c.country, latest(o.amount) AS l FROM orders AS o JOIN customers AS c ON o.customer = c.id GROUP BY c.country", "over a join is not supported"),
        ("SELECT o.id FROM orders AS o JOIN orders AS p ON o.id = p.id", "joined with itself"),
        ("SELECT o.id FROM orders AS o JOIN nowhere AS c ON o.customer = c.id", "does not exist"),
        ("SELECT o.nope FROM orders AS o JOIN customers AS c ON o.customer = c.id", "unknown column 'nope'"),
        ("SELECT c.nope FROM orders AS o JOIN customers AS c ON o.customer = c.id", "unknown column 'nope' in stream 'customers'"),
        ("SELECT window_start, count() AS n FROM tumble(orders, ts, 1m) AS o JOIN customers AS c ON o.customer = c.id GROUP BY window_start", "windows over a join"),
        ("SELECT o.id FROM orders AS o JOIN customers AS o ON o.customer = o.id", "both sides of the join are named 'o'"),
        ("SELECT o.id FROM orders AS customers JOIN customers ON customer = customers.id", "both sides of the join are named 'customers'"),
        ("SELECT o.id, c.country FROM orders AS o JOIN customers AS c(id, country, name, tier) ON o.customer = c.id", "name and an alias only"),
        ("SELECT o.id FROM orders AS o(a, b, c, d) JOIN customers AS c ON o.customer = c.id", "name and an alias only"),
        // An aliased stream is named by its alias only, as in SQL.
        ("SELECT customers.country AS k FROM orders AS o JOIN customers AS c ON o.customer = c.id", "customers.country"),
    ];
    for (query, why) in refused {
        let sql = format!("CREATE MATERIALIZED VIEW v AS {query}");
        match plan_join(&sql) {
            Err(e) => assert!(
                e.message.contains(why),
                "{query}: {} (wanted '{why}')",
                e.message
            ),
            Ok(_) => panic!("accepted: {query}"),
        }
    }
    // Floating-point keys: SQL's = and a key lookup disagree on -0.0.
    let mut cat = Catalog::default();
    for (id, sql) in [
        (1, "CREATE EXTERNAL STREAM a(id int64, x float64) SETTINGS type='kafka', brokers='b:1', topic='a', data_format='Debezium', primary_key='id'"),
        (2, "CREATE EXTERNAL STREAM b(x float64, y int64) SETTINGS type='kafka', brokers='b:1', topic='b', data_format='Debezium', primary_key='x'"),
    ] {
        let ch = cat.plan(sql).expect("stream");
        cat.apply(id, sql, ch);
    }
    let e = cat
        .plan("CREATE MATERIALIZED VIEW v AS SELECT a.id, b.y FROM a JOIN b ON a.x = b.x")
        .expect_err("refused");
    assert!(e.message.contains("floating-point"), "{}", e.message);
    // The position points at what is wrong: the ON's offending term.
    let e = plan_join("CREATE MATERIALIZED VIEW v AS SELECT o.id FROM orders AS o JOIN customers AS c ON o.name = c.id")
        .expect_err("refused");
    assert_eq!((e.pos.line, e.pos.column), (1, 83), "{}", e.message);
    // And EXPLAIN says how the join runs.
    let (def, left, right) = plan_join("CREATE MATERIALIZED VIEW v AS SELECT o.id, c.name FROM orders AS o LEFT JOIN customers AS c ON o.customer = c.id").expect("plan");
    let text = def
        .plan
        .explain(&def.input(&left, Some(&right)), &def.outputs);
    assert!(
        text.contains("join: left stream customers on its primary key = (customer)"),
        "{text}"
    );
    assert!(text.contains("\"c.name\""), "{text}");
}
