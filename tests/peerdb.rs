//! PeerDB records end to end: a table mirrored by PeerDB's Kafka connector (no script, so no
//! Kafka key) into a topic of one partition, with inserts, updates (some moving a row to a new
//! key), deletes whose `old` holds only the key, and numerics written as text. Two views over
//! it must equal DuckDB over the table's final rows on every replica. A keyless record on a
//! topic of two partitions is a dead letter that says why, and the keyed one beside it counts.

use std::collections::BTreeMap;

use meridian_tests::{
    check_replicas, create_topic, oracle, runtime, Broker, Cluster, Workdir, CONVERGE_TIMEOUT,
};
use rdkafka::producer::FutureRecord;
use serde_json::{json, Value as Json};

/// (view, its query, the columns read back, the oracle's query over `items`).
const VIEWS: &[(&str, &str, &str, &str)] = &[
    (
        "by_active",
        "SELECT active, count() AS n, round(sum(price), 2) AS total, max(price) AS top FROM items GROUP BY active",
        "active, n, total, top",
        "SELECT active, count(*), round(sum(price), 2), max(price) FROM items GROUP BY ALL ORDER BY ALL",
    ),
    (
        "pricey",
        "SELECT id, upper(name) AS n, price FROM items WHERE price > 50",
        "id, n, price",
        "SELECT id, upper(name), price FROM items WHERE price > 50 ORDER BY ALL",
    ),
];

/// An `items` row: name, price as PeerDB writes a numeric, active.
type Item = (String, String, bool);

/// PeerDB records of random changes to `items`, with the table's final rows.
fn records(n: usize, seed: u64) -> (Vec<String>, BTreeMap<i64, Item>) {
    let mut rng = seed | 1;
    let mut roll = |m: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % m
    };
    let mut rows: BTreeMap<i64, Item> = BTreeMap::new();
    let mut out = Vec::with_capacity(n);
    let new_of = |id: i64, r: &Item| json!({"id": id, "name": r.0, "price": r.1, "active": r.2, "blob": "3q2+7w=="});
    for checkpoint in 0..n as i64 {
        let id = roll(300) as i64;
        // numeric as PeerDB writes it: text, trailing zeros trimmed.
        let cents = roll(10_000);
        let price = format!("{}.{:02}", cents / 100, cents % 100)
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string();
        let row = (format!("item-{}", roll(50)), price, roll(3) > 0);
        let mut record: Json = match (rows.get(&id).cloned(), roll(10)) {
            (None, _) => {
                rows.insert(id, row.clone());
                json!({"kind": "insert", "new": new_of(id, &row)})
            }
            (Some(_), 0..=1) => {
                rows.remove(&id);
                // REPLICA IDENTITY DEFAULT: only the key is filled in.
                json!({"kind": "delete", "old": {"id": id, "name": null, "price": null, "active": null, "blob": null}})
            }
            (Some(_), 2) if !rows.contains_key(&(id + 1000)) => {
                rows.remove(&id);
                rows.insert(id + 1000, row.clone());
                json!({"kind": "update", "old": {"id": id, "name": null}, "new": new_of(id + 1000, &row)})
            }
            (Some(_), _) => {
                rows.insert(id, row.clone());
                json!({"kind": "update", "old": {}, "new": new_of(id, &row)})
            }
        };
        record["checkpoint"] = json!(24_500_000 + checkpoint);
        record["commit_time"] = json!("2024-05-01T12:34:56.801234Z");
        record["source"] = json!("public.items");
        out.push(record.to_string());
    }
    (out, rows)
}

/// Sends records without a key (as PeerDB does by default) or with one, to one partition.
fn send(
    rt: &tokio::runtime::Runtime,
    brokers: &str,
    topic: &str,
    partition: i32,
    records: &[(Option<&str>, String)],
) {
    let producer = meridian::sample::producer(brokers).expect("producer");
    rt.block_on(async {
        for (key, value) in records {
            let mut record: FutureRecord<'_, str, str> = FutureRecord::to(topic)
                .partition(partition)
                .payload(value.as_str());
            if let Some(k) = key {
                record = record.key(k);
            }
            producer
                .send(record, std::time::Duration::from_secs(30))
                .await
                .map_err(|(e, _)| e)
                .expect("send");
        }
    });
}

#[test]
fn peerdb_records_build_views_equal_to_the_oracle() {
    let rt = runtime();
    let work = Workdir::new("e2e-peerdb");
    let broker = Broker::start(&work);
    rt.block_on(create_topic(&broker.addr, "items", 1))
        .expect("create topic");
    rt.block_on(create_topic(&broker.addr, "items2", 2))
        .expect("create topic");
    let cluster = Cluster::start(&work);
    cluster
        .wait_ready(std::time::Duration::from_secs(60))
        .expect("regions elect leaders");
    let columns = "(id int64, name string, price float64, active bool)";
    for topic in ["items", "items2"] {
        cluster
            .sql(&format!("CREATE EXTERNAL STREAM {topic}{columns} SETTINGS type='kafka', brokers='{}', topic='{topic}', data_format='PeerDB', primary_key='id'", broker.addr))
            .expect("stream");
    }
    for (name, query, _, _) in VIEWS {
        cluster
            .sql(&format!("CREATE MATERIALIZED VIEW {name} AS {query}"))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    cluster
        .sql("CREATE MATERIALIZED VIEW items2_n AS SELECT count() AS n, sum(price) AS total FROM items2")
        .expect("view over items2");

    let (recs, rows) = records(3_000, 2026);
    let keyless: Vec<(Option<&str>, String)> = recs.into_iter().map(|r| (None, r)).collect();
    send(&rt, &broker.addr, "items", 0, &keyless);
    let values: Vec<String> = rows
        .iter()
        .map(|(id, (name, price, active))| format!("({id}, '{name}', {price}, {active})"))
        .collect();
    let setup = vec![
        "CREATE TABLE items(id BIGINT, name VARCHAR, price DOUBLE, active BOOLEAN)".to_string(),
        format!("INSERT INTO items VALUES {}", values.join(", ")),
    ];
    for (name, _, columns, oracle_sql) in VIEWS {
        let seq = cluster
            .wait_converged(name, keyless.len() as u64, CONVERGE_TIMEOUT)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let want = oracle(&setup, oracle_sql);
        check_replicas(&rt, &cluster, name, columns, &want, seq);
        eprintln!(
            "{name}: {} rows on 6 replicas equal the oracle ({} rows in the table)",
            want.len(),
            rows.len()
        );
    }

    // Two partitions: the keyless record cannot be ordered against the other partition.
    let insert = |id: i64, price: &str| {
        json!({"kind": "insert", "new": {"id": id, "name": "x", "price": price, "active": true}})
            .to_string()
    };
    send(&rt, &broker.addr, "items2", 1, &[(None, insert(1, "1.5"))]);
    send(
        &rt,
        &broker.addr,
        "items2",
        0,
        &[(Some("2"), insert(2, "2.25"))],
    );
    let seq = cluster
        .wait_converged("items2_n", 2, CONVERGE_TIMEOUT)
        .expect("items2_n converges");
    check_replicas(
        &rt,
        &cluster,
        "items2_n",
        "n, total",
        &[vec!["1".into(), "2.25".into()]],
        seq,
    );
    let status = cluster.status().expect("status");
    let view = status["views"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["view"] == "items2_n"))
        .cloned()
        .expect("view in status");
    assert_eq!(view["dead_letters"].as_u64(), Some(1), "{view:#}");
    let reason = view["recent_dead_letters"][0]["reason"]
        .as_str()
        .unwrap_or_default();
    assert!(
        reason.contains("a PeerDB record without a key, on partition 1 of a topic of 2 partitions"),
        "{view:#}"
    );
}
