//! Benchmark of the view engine's hot path: decoding Debezium messages and maintaining a
//! GROUP BY view over many groups, a tumbling-window view and a hopping-window view (each row
//! in five windows), one core.
//!
//! Prints the engine's figure beside the design notes' baseline measured in the same run on the
//! same messages: each message decoded and written with its own `INSERT OR REPLACE` into a
//! DuckDB table keyed by the primary key (the view would then be computed at read time).
//!
//! Run: `cargo run -p view-actor --example bench_engine [events] [groups]`
//! (the shared dev profile: Meridian's code unoptimised, DuckDB optimised).

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Instant;

use catalog::{Catalog, Change, Object, Value};
use view_actor::actor::BATCH_EVENTS_MAX;
use view_actor::core::{Key, Row, RowLookup, ViewCore};
use view_actor::decode::{decode, SourceEvent};

const STREAM: &str = "CREATE EXTERNAL STREAM orders(id int64, customer int64, amount int64, at datetime64(3)) SETTINGS type='kafka', brokers='b:1', topic='t', data_format='Debezium', primary_key='id'";
/// The views measured: (what, DDL).
const VIEWS: &[(&str, &str)] = &[
    ("group by", "CREATE MATERIALIZED VIEW by_customer AS SELECT customer, count() AS n, sum(amount) AS total, max(amount) AS top FROM orders GROUP BY customer"),
    ("tumble 1m", "CREATE MATERIALIZED VIEW per_minute AS SELECT window_start, count() AS n, sum(amount) AS total, max(amount) AS top FROM tumble(orders, at, 1m) GROUP BY window_start SETTINGS allowed_lateness='10m'"),
    ("hop 1m/5m", "CREATE MATERIALIZED VIEW sliding AS SELECT window_start, window_end, count() AS n, sum(amount) AS total FROM hop(orders, at, 1m, 5m) GROUP BY window_start, window_end SETTINGS allowed_lateness='10m'"),
];

/// Messages the baseline is measured over.
const BASELINE_MAX: usize = 20_000;

#[derive(Default)]
struct Rows(RefCell<HashMap<Key, Row>>);

impl RowLookup for Rows {
    fn get_row(&self, pk: &Key) -> Result<Option<Row>, String> {
        Ok(self.0.borrow().get(pk).cloned())
    }
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
    Ok(())
}
