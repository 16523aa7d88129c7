//! Benchmark of the view engine's hot path: decoding Debezium messages and maintaining a
//! GROUP BY view over many groups, a tumbling-window view, a hopping-window view (each row
//! in five windows) and a join with a table-like customers stream that changes too, one core.
//!
//! Prints the engine's figure beside the design notes' baseline measured in the same run on the
//! same messages: each message decoded and written with its own `INSERT OR REPLACE` into a
//! DuckDB table keyed by the primary key (the view would then be computed at read time).
//!
//! Run: `cargo run -p view-actor --example bench_engine [events] [groups]`
//! (the shared dev profile: Meridian's code unoptimised, DuckDB optimised).

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::time::Instant;

use catalog::{Catalog, Change, Object, Value};
use view_actor::actor::BATCH_EVENTS_MAX;
use view_actor::core::{input_partition, Key, Row, RowLookup, Side, ViewCore};
use view_actor::decode::{decode, SourceEvent};

const STREAM: &str = "CREATE EXTERNAL STREAM orders(id int64, customer int64, amount int64, at datetime64(3)) SETTINGS type='kafka', brokers='b:1', topic='t', data_format='Debezium', primary_key='id'";
/// The views measured: (what, DDL).
const VIEWS: &[(&str, &str)] = &[
    ("group by", "CREATE MATERIALIZED VIEW by_customer AS SELECT customer, count() AS n, sum(amount) AS total, max(amount) AS top FROM orders GROUP BY customer"),
    ("tumble 1m", "CREATE MATERIALIZED VIEW per_minute AS SELECT window_start, count() AS n, sum(amount) AS total, max(amount) AS top FROM tumble(orders, at, 1m) GROUP BY window_start SETTINGS allowed_lateness='10m'"),
    ("hop 1m/5m", "CREATE MATERIALIZED VIEW sliding AS SELECT window_start, window_end, count() AS n, sum(amount) AS total FROM hop(orders, at, 1m, 5m) GROUP BY window_start, window_end SETTINGS allowed_lateness='10m'"),
];

const CUSTOMERS: &str = "CREATE EXTERNAL STREAM customers(id int64, country string) SETTINGS type='kafka', brokers='b:1', topic='c', data_format='Debezium', primary_key='id'";
const JOIN_VIEW: &str = "CREATE MATERIALIZED VIEW by_country AS SELECT c.country, count() AS n, sum(o.amount) AS total, max(o.amount) AS top FROM orders AS o JOIN customers AS c ON o.customer = c.id GROUP BY c.country";
/// One customer update (a move to another country, re-joining its orders) per this many
/// order messages.
const CUSTOMER_UPDATE_EVERY: u64 = 20;

/// Messages the baseline is measured over.
const BASELINE_MAX: usize = 20_000;

#[derive(Default)]
struct Rows(RefCell<HashMap<Key, Row>>);

impl RowLookup for Rows {
    fn get_row(&self, pk: &Key) -> Result<Option<Row>, String> {
        Ok(self.0.borrow().get(pk).cloned())
    }
}

/// A join's store, in memory: the slots, both sides and the index.
#[derive(Default)]
struct JoinRows {
    slots: Rows,
    left: RefCell<HashMap<Key, Row>>,
    right: RefCell<HashMap<Key, Row>>,
    index: RefCell<HashMap<Key, BTreeSet<String>>>,
}

impl RowLookup for JoinRows {
    fn get_row(&self, pk: &Key) -> Result<Option<Row>, String> {
        self.slots.get_row(pk)
    }
    fn get_side(&self, side: Side, pk: &Key) -> Result<Option<Row>, String> {
        let map = if side == Side::Left {
            &self.left
        } else {
            &self.right
        };
        Ok(map.borrow().get(pk).cloned())
    }
    fn holders(&self, key: &Key) -> Result<Vec<Key>, String> {
        Ok(self
            .index
            .borrow()
            .get(key)
            .into_iter()
            .flatten()
            .filter_map(|k| serde_json::from_str(k).ok())
            .collect())
    }
    fn left_keys(&self) -> Result<Vec<Key>, String> {
        Ok(self.left.borrow().keys().cloned().collect())
    }
}

impl JoinRows {
    fn persist(&self, out: view_actor::core::BatchOutput) {
        let mut rows = self.slots.0.borrow_mut();
        for (k, r) in out.rows {
            match r {
                Some(r) => rows.insert(k, r),
                None => rows.remove(&k),
            };
        }
        let Some(j) = out.join else { return };
        for (map, changed) in [(&self.left, j.left), (&self.right, j.right)] {
            let mut map = map.borrow_mut();
            for (k, r) in changed {
                match r {
                    Some(r) => map.insert(k, r),
                    None => map.remove(&k),
                };
            }
        }
        let mut index = self.index.borrow_mut();
        for (k, pk, present) in j.index {
            let pk = serde_json::to_string(&pk).unwrap_or_default();
            let set = index.entry(k).or_default();
            if present {
                set.insert(pk);
            } else {
                set.remove(&pk);
            }
        }
    }
}

/// The join benchmark's input: every customer first, then orders with a customer update
/// every [`CUSTOMER_UPDATE_EVERY`] orders; each message with its input partition.
fn join_messages(orders: &[Vec<u8>], customers: u64) -> Vec<(i32, Vec<u8>)> {
    let countries = ["fr", "de", "us", "jp", "br", "in", "ng", "au"];
    let right = input_partition(1, 0).unwrap_or(1 << 24);
    let customer = |id: u64, k: u64, op: &str| {
        let country = countries[(k % countries.len() as u64) as usize];
        (right, format!("{{\"before\":null,\"after\":{{\"id\":{id},\"country\":\"{country}\"}},\"op\":\"{op}\"}}").into_bytes())
    };
    let mut out: Vec<(i32, Vec<u8>)> = (0..customers).map(|id| customer(id, id, "c")).collect();
    for (i, m) in orders.iter().enumerate() {
        out.push((0, m.clone()));
        let i = i as u64;
        if i % CUSTOMER_UPDATE_EVERY == CUSTOMER_UPDATE_EVERY - 1 {
            out.push(customer((i * 7919) % customers, i, "u"));
        }
    }
    out
}

fn messages(n: u64, groups: u64) -> Vec<Vec<u8>> {
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    (0..n)
        .map(|i| {
            // Two thirds new rows, one third updates of an earlier row (moving it to another
            // group).
            let id = if i % 3 == 2 { next() % (i + 1) } else { i };
            let op = if i % 3 == 2 { "u" } else { "c" };
            // Event time moves forward a second per message, give or take a minute.
            let at = 1_709_287_200_000 + i as i64 * 1_000 - (next() % 60_000) as i64;
            format!(
                "{{\"before\":null,\"after\":{{\"id\":{id},\"customer\":{},\"amount\":{},\"at\":{at}}},\"op\":\"{op}\"}}",
                next() % groups,
                next() % 10_000
            )
            .into_bytes()
        })
        .collect()
}

fn main() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let n: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(300_000);
    let groups: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let mut catalog = Catalog::default();
    let ch = catalog.plan(STREAM).map_err(|e| e.to_string())?;
    catalog.apply(1, STREAM, ch);
    let stream = catalog.stream("orders").ok_or("stream")?.clone();
    let msgs = messages(n, groups);
    println!("{n} Debezium messages, {groups} customers, event time a second apart");
    let mut engine = 0.0;
    for (what, sql) in VIEWS {
        let Ok(Change::Create(Object::View(def))) = catalog.plan(sql) else {
            return Err(format!("view {what}"));
        };
        // The engine: decode, evaluate the batch, update groups, emit one change per group.
        let store = Rows::default();
        let mut core = ViewCore::new(def, &stream, HashMap::new())?;
        let started = Instant::now();
        let mut changes = 0usize;
        for chunk in msgs.chunks(BATCH_EVENTS_MAX) {
            let events: Vec<SourceEvent> = chunk
                .iter()
                .filter_map(|m| decode(&stream, None, Some(m)).ok().flatten())
                .collect();
            let dead = core.apply_batch(&events, &vec![0; events.len()], &store)?;
            assert!(dead.is_empty());
            let out = core.finish_batch()?;
            changes += out.changes.len();
            let mut rows = store.0.borrow_mut();
            for (k, r) in out.rows {
                match r {
                    Some(r) => rows.insert(k, r),
                    None => rows.remove(&k),
                };
            }
        }
        let rate = n as f64 / started.elapsed().as_secs_f64();
        if engine == 0.0 {
            engine = rate;
        }
        println!(
            "engine, {what:<9}: {rate:>9.0} events/s ({} groups, {changes} row changes emitted, batches of {BATCH_EVENTS_MAX})",
            core.n_groups()
        );
    }

    // The design notes' baseline: decode, then one INSERT OR REPLACE per message. It is two
    // orders of magnitude slower, so it runs over the first BASELINE_MAX messages.
    let conn = duckdb::Connection::open_in_memory().map_err(|e| e.to_string())?;
    conn.execute_batch(
        "CREATE TABLE orders(id BIGINT PRIMARY KEY, customer BIGINT, amount BIGINT)",
    )
    .map_err(|e| e.to_string())?;
    let started = Instant::now();
    let mut stmt = conn
        .prepare("INSERT OR REPLACE INTO orders VALUES (?, ?, ?)")
        .map_err(|e| e.to_string())?;
    let sample = &msgs[..msgs.len().min(BASELINE_MAX)];
    for m in sample {
        if let Ok(Some(SourceEvent::Upsert(row))) = decode(&stream, None, Some(m)) {
            let int = |v: &Value| match v {
                Value::Int(i) => *i,
                _ => 0,
            };
            stmt.execute(duckdb::params![int(&row[0]), int(&row[1]), int(&row[2])])
                .map_err(|e| e.to_string())?;
        }
    }
    let baseline = sample.len() as f64 / started.elapsed().as_secs_f64();
    println!(
        "baseline:            {baseline:>9.0} events/s (per-message INSERT OR REPLACE, the design notes' microservice; first {} messages)",
        sample.len()
    );
    println!("engine (group by) / baseline: {:.1}x", engine / baseline);

    // The join: orders joined with customers, grouped by the customer's country.
    let ch = catalog.plan(CUSTOMERS).map_err(|e| e.to_string())?;
    catalog.apply(2, CUSTOMERS, ch);
    let right = catalog.stream("customers").ok_or("customers")?.clone();
    let Ok(Change::Create(Object::View(def))) = catalog.plan(JOIN_VIEW) else {
        return Err("join view".into());
    };
    let input = join_messages(&msgs, groups);
    let store = JoinRows::default();
    let mut core = ViewCore::new_joined(def, &stream, Some(&right), HashMap::new())?;
    let started = Instant::now();
    let mut changes = 0usize;
    for chunk in input.chunks(BATCH_EVENTS_MAX) {
        let mut events = Vec::with_capacity(chunk.len());
        let mut parts = Vec::with_capacity(chunk.len());
        for (p, m) in chunk {
            let s = if *p == 0 { &stream } else { &right };
            if let Ok(Some(e)) = decode(s, None, Some(m)) {
                events.push(e);
                parts.push(*p);
            }
        }
        let dead = core.apply_batch(&events, &parts, &store)?;
        assert!(dead.is_empty());
        let out = core.finish_batch()?;
        changes += out.changes.len();
        store.persist(out);
    }
    let rate = input.len() as f64 / started.elapsed().as_secs_f64();
    println!(
        "engine, join     : {rate:>9.0} events/s ({} messages: {groups} customers, then the orders with a customer update every {CUSTOMER_UPDATE_EVERY}; {} groups, {changes} row changes emitted)",
        input.len(),
        core.n_groups()
    );
    println!("engine (join) / baseline: {:.1}x", rate / baseline);
    Ok(())
}
