//! Joins end to end: the Debezium `orders` stream joined with a Debezium `customers` stream
//! (a table-like stream on another topic), while both change: customers are created, renamed,
//! moved between tiers and deleted under their orders. Each replica of both regions must equal
//! DuckDB joining the final rows of both tables.

use std::collections::BTreeMap;

use meridian::sample::{Event, OrdersGenerator};
use meridian_tests::{
    changes, check_replicas, create_topic, oracle, orders_cluster, orders_setup, produce, runtime,
    Workdir, CONVERGE_TIMEOUT,
};
use serde_json::json;

/// (view, its query, the columns read back, the oracle's query over `orders` and `customers`).
const VIEWS: &[(&str, &str, &str, &str)] = &[
    (
        "revenue_by_tier",
        "SELECT c.tier, o.country, count() AS n, sum(o.amount) AS revenue, max(o.amount) AS top FROM orders AS o JOIN customers AS c ON o.customer_id = c.id GROUP BY c.tier, o.country",
        "tier, country, n, revenue, top",
        "SELECT c.tier, o.country, count(*), sum(o.amount), max(o.amount) FROM orders o JOIN customers c ON o.customer_id = c.id GROUP BY ALL ORDER BY ALL",
    ),
    (
        "big_orders_named",
        "SELECT o.id, o.amount, c.name AS customer, upper(coalesce(c.tier, 'none')) AS tier FROM orders AS o LEFT JOIN customers AS c ON o.customer_id = c.id WHERE o.amount > 800",
        "id, amount, customer, tier",
        "SELECT o.id, o.amount, c.name, upper(coalesce(c.tier, 'none')) FROM orders o LEFT JOIN customers c ON o.customer_id = c.id WHERE o.amount > 800 ORDER BY ALL",
    ),
];

/// Customers as Debezium changes, with the final rows kept for the oracle.
struct Customers {
    rows: BTreeMap<i64, (String, String)>,
    events: Vec<Event>,
    rng: u64,
}

impl Customers {
    fn roll(&mut self, n: u64) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng % n
    }

    fn upsert(&mut self, id: i64) {
        let tiers = ["gold", "silver", "bronze"];
        let row = (
            format!("customer-{id}-{}", self.roll(5)),
            tiers[self.roll(3) as usize].to_string(),
        );
        let after = json!({"id": id, "name": row.0, "tier": row.1});
        let (op, before) = match self.rows.get(&id) {
            Some((name, tier)) => ("u", json!({"id": id, "name": name, "tier": tier})),
            None => ("c", serde_json::Value::Null),
        };
        let value =
            json!({"before": before, "after": after, "op": op, "source": {"table": "customers"}});
        self.events.push(Event {
            key: json!({"id": id}).to_string(),
            value: Some(value.to_string()),
        });
        self.rows.insert(id, row);
    }

    fn delete(&mut self, id: i64) {
        let Some((name, tier)) = self.rows.remove(&id) else {
            return;
        };
        let value = json!({"before": {"id": id, "name": name, "tier": tier}, "after": null, "op": "d", "source": {"table": "customers"}});
        let key = json!({"id": id}).to_string();
        self.events.push(Event {
            key: key.clone(),
            value: Some(value.to_string()),
        });
        self.events.push(Event { key, value: None });
    }

    fn setup(&self) -> Vec<String> {
        let values: Vec<String> = self
            .rows
            .iter()
            .map(|(id, (name, tier))| format!("({id}, '{name}', '{tier}')"))
            .collect();
        vec![
            "CREATE TABLE customers(id BIGINT, name VARCHAR, tier VARCHAR)".to_string(),
            format!("INSERT INTO customers VALUES {}", values.join(", ")),
        ]
    }
}

#[test]
fn joins_follow_changes_on_both_sides_on_every_replica() {
    let rt = runtime();
    let work = Workdir::new("e2e-joins");
    let (broker, cluster) = orders_cluster(&rt, &work);
    rt.block_on(create_topic(&broker.addr, "customers", 2))
        .expect("create topic");
    cluster
        .sql(&format!("CREATE EXTERNAL STREAM customers(id int64, name string, tier nullable(string)) SETTINGS type='kafka', brokers='{}', topic='customers', data_format='Debezium', primary_key='id'", broker.addr))
        .expect("customers stream");
    for (name, query, _, _) in VIEWS {
        cluster
            .sql(&format!("CREATE MATERIALIZED VIEW {name} AS {query}"))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let plan = cluster
        .sql("EXPLAIN MATERIALIZED VIEW big_orders_named")
        .expect("explain");
    assert!(plan.contains("join: left stream customers"), "{plan}");
    // A stream a view joins cannot be dropped from under it.
    let refused = cluster.sql("DROP STREAM customers").expect_err("in use");
    assert!(refused.to_string().contains("is read by view"), "{refused}");

    // Customers 1..=400 exist (orders name customers 1..=500: some never match), then half the
    // orders, then customers change under them, then the rest of the orders and more changes.
    let mut customers = Customers {
        rows: BTreeMap::new(),
        events: Vec::new(),
        rng: 0x9e37_79b9,
    };
    for id in 1..=400 {
        customers.upsert(id);
    }
    let mut g = OrdersGenerator::new(31);
    let first = changes(&mut g, 2_000);
    produce(&rt, &broker.addr, "customers", &customers.events);
    produce(&rt, &broker.addr, "orders", &first);
    let mut sent = customers.events.len() + first.len();
    customers.events.clear();
    for _ in 0..300 {
        let id = customers.roll(450) as i64 + 1;
        if customers.roll(6) == 0 {
            customers.delete(id);
        } else {
            customers.upsert(id);
        }
    }
    let second = changes(&mut g, 2_000);
    produce(&rt, &broker.addr, "customers", &customers.events);
    produce(&rt, &broker.addr, "orders", &second);
    sent += customers.events.len() + second.len();

    let mut setup = orders_setup(&g);
    setup.extend(customers.setup());
    for (name, _, columns, oracle_sql) in VIEWS {
        let seq = cluster
            .wait_converged(name, sent as u64, CONVERGE_TIMEOUT)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let want = oracle(&setup, oracle_sql);
        check_replicas(&rt, &cluster, name, columns, &want, seq);
        eprintln!("{name}: {} rows on 6 replicas equal the oracle", want.len());
    }
}
