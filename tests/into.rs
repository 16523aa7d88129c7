//! A view writing INTO a stream, end to end, as Proton users write it: `CREATE STREAM totals
//! (...) PRIMARY KEY country SETTINGS mode='versioned_kv'`, a view `INTO totals` over the
//! Debezium `orders`, and views reading `totals`. Every replica of the writer and of the readers
//! must equal DuckDB over the final `orders` rows.

use meridian::sample::OrdersGenerator;
use meridian_tests::{
    changes, check_replicas, oracle, orders_cluster, orders_setup, produce, runtime, wait_rows,
    Workdir, CONVERGE_TIMEOUT,
};

/// (view, its DDL, the columns read back, the oracle's query over `orders`).
const VIEWS: &[(&str, &str, &str, &str)] = &[
    (
        "totals_mv",
        "CREATE MATERIALIZED VIEW totals_mv INTO totals AS SELECT country, count() AS orders, sum(amount) AS revenue FROM orders GROUP BY country",
        "country, orders, revenue",
        "SELECT country, count(*), sum(amount) FROM orders GROUP BY ALL ORDER BY ALL",
    ),
    (
        "busy",
        "CREATE MATERIALIZED VIEW busy AS SELECT country, revenue, orders * 2 AS twice FROM totals WHERE orders > 20",
        "country, revenue, twice",
        "SELECT country, sum(amount), count(*) * 2 FROM orders GROUP BY ALL HAVING count(*) > 20 ORDER BY ALL",
    ),
    (
        "overall",
        "CREATE MATERIALIZED VIEW overall AS SELECT count() AS countries, sum(revenue) AS revenue, max(orders) AS top FROM totals",
        "countries, revenue, top",
        "SELECT count(*), sum(r), max(n) FROM (SELECT count(*) AS n, sum(amount) AS r FROM orders GROUP BY country)",
    ),
];

#[test]
fn views_read_a_stream_that_a_view_writes_into() {
    let rt = runtime();
    let work = Workdir::new("e2e-into");
    let (broker, cluster) = orders_cluster(&rt, &work);
    let said = cluster
        .sql("CREATE STREAM totals(country string, orders int64, revenue int64) PRIMARY KEY country SETTINGS mode='versioned_kv'")
        .expect("stream");
    assert!(
        said.contains("created stream 'totals' (versioned_kv)"),
        "{said}"
    );
    let err = cluster
        .sql("CREATE MATERIALIZED VIEW early AS SELECT country FROM totals")
        .expect_err("no writer yet");
    assert!(err.contains("has no view writing INTO it yet"), "{err}");
    for (name, ddl, _, _) in VIEWS {
        cluster.sql(ddl).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let shown = cluster.sql("SHOW STREAMS").expect("show");
    assert!(
        shown.contains("versioned_kv, written by view totals_mv"),
        "{shown}"
    );

    let mut g = OrdersGenerator::new(99);
    let events = changes(&mut g, 3_000);
    produce(&rt, &broker.addr, "orders", &events);
    let setup = orders_setup(&g);
    // The writer first: its change log, written to its change topic, is what the readers read.
    let (name, _, columns, oracle_sql) = VIEWS[0];
    let seq = cluster
        .wait_converged(name, events.len() as u64, CONVERGE_TIMEOUT)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    check_replicas(
        &rt,
        &cluster,
        name,
        columns,
        &oracle(&setup, oracle_sql),
        seq,
    );
    for (name, _, columns, oracle_sql) in &VIEWS[1..] {
        let want = oracle(&setup, oracle_sql);
        // A reader consumes change messages, not source events: wait for its rows.
        let seq = wait_rows(&rt, &cluster, name, columns, &want, 0);
        check_replicas(&rt, &cluster, name, columns, &want, seq);
        eprintln!("{name}: {} rows on 6 replicas equal the oracle", want.len());
    }
    let err = cluster
        .sql("DROP STREAM totals")
        .expect_err("read and written");
    assert!(err.contains("is read by view"), "{err}");
}
