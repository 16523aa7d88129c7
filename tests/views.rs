//! The view engine end to end: views of each kind the engine computes (expressions and
//! functions, a view without aggregates, min/max/distinct and arg_min/arg_max under retraction,
//! HAVING, exact decimals, arrays from top_k and max_k), all over one Debezium stream through Kafka, on both regions. Each replica must equal DuckDB running
//! the same query, written by hand in DuckDB's dialect, over the source's final rows.

use std::time::Duration;

use meridian::sample::OrdersGenerator;
use meridian_tests::{
    changes, check_replicas, create_topic, oracle, orders_cluster, orders_setup, produce, runtime,
    Broker, Cluster, Workdir, CONVERGE_TIMEOUT,
};
use rdkafka::producer::FutureRecord;

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
        "SELECT country, min(amount) AS lo, max(amount) AS hi, count(DISTINCT customer_id) AS customers, round(avg(amount), 6) AS mean, arg_max(id, amount * 1000000 + id) AS top_order, arg_min(status, amount) AS cheapest_status FROM orders GROUP BY country HAVING count() > 1",
        "country, lo, hi, customers, mean, top_order, cheapest_status",
        "SELECT country, min(amount), max(amount), count(DISTINCT customer_id), round(avg(amount), 6), arg_max(id, amount * 1000000 + id), arg_min(status, (amount, status)) FILTER (WHERE amount IS NOT NULL AND status IS NOT NULL) FROM orders GROUP BY country HAVING count(*) > 1 ORDER BY ALL",
    ),
    (
        "buckets",
        "SELECT lower(status) || '/' || to_string(amount % 5) AS bucket, count() AS n, sum(coalesce(quantity, 0)) AS q FROM orders WHERE status IN ('paid', 'shipped', 'new') GROUP BY bucket",
        "bucket, n, q",
        "SELECT lower(status) || '/' || CAST(amount % 5 AS VARCHAR) AS bucket, count(*), sum(coalesce(quantity, 0)) FROM orders WHERE status IN ('paid', 'shipped', 'new') GROUP BY bucket ORDER BY ALL",
    ),
    (
        // Exact decimals: cents summed, retracted and compared without a float in between. A
        // literal such as 0.01 is a float in Proton's dialect (as in ClickHouse): decimals come
        // from decimal columns and casts.
        "money",
        "SELECT country, sum(amount::decimal(12, 2) * '0.01'::decimal(3, 2)) AS revenue, min(amount::decimal(12, 2) / 100) AS low, max(amount::decimal(12, 2) - '0.005'::decimal(4, 3)) AS high, count(DISTINCT amount::decimal(12, 2)) AS kinds FROM orders GROUP BY country",
        "country, CAST(revenue AS VARCHAR), CAST(low AS VARCHAR), CAST(high AS VARCHAR), kinds",
        "SELECT country, CAST(sum(CAST(amount AS DECIMAL(12, 2)) * CAST('0.01' AS DECIMAL(3, 2))) AS VARCHAR), CAST(min(CAST(amount AS DECIMAL(12, 2)) / 100) AS VARCHAR), CAST(max(CAST(amount AS DECIMAL(12, 2)) - CAST('0.005' AS DECIMAL(4, 3))) AS VARCHAR), count(DISTINCT amount) FROM orders GROUP BY country ORDER BY ALL",
    ),
    (
        // Arrays made by aggregates, stored by every replica as DuckDB lists.
        "tops",
        "SELECT country, top_k(status, 2) AS statuses, max_k(amount, 3) AS biggest FROM orders GROUP BY country",
        "country, CAST(statuses AS VARCHAR), CAST(biggest AS VARCHAR)",
        "WITH c AS (SELECT country, status, count(*) AS c FROM orders GROUP BY 1, 2), \
         t AS (SELECT country, list(status ORDER BY c DESC, status) AS l FROM (SELECT *, row_number() OVER (PARTITION BY country ORDER BY c DESC, status) AS rn FROM c) WHERE rn <= 2 GROUP BY country), \
         h AS (SELECT country, list(amount ORDER BY amount DESC) AS l FROM (SELECT country, amount, row_number() OVER (PARTITION BY country ORDER BY amount DESC) AS rn FROM orders) WHERE rn <= 3 GROUP BY country) \
         SELECT t.country, CAST(t.l AS VARCHAR), CAST(h.l AS VARCHAR) FROM t JOIN h USING (country) ORDER BY ALL",
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

/// Sends JSON payloads to one partition, in order.
fn produce_to(
    rt: &tokio::runtime::Runtime,
    brokers: &str,
    topic: &str,
    partition: i32,
    payloads: &[String],
) {
    let producer = meridian::sample::producer(brokers).expect("producer");
    rt.block_on(async {
        for p in payloads {
            let record: FutureRecord<'_, str, str> = FutureRecord::to(topic)
                .partition(partition)
                .payload(p.as_str());
            producer
                .send(record, Duration::from_secs(30))
                .await
                .map_err(|(e, _)| e)
                .expect("send");
        }
    });
}

/// Tumbling and hopping windows that close, through Kafka: partition 0 is produced a whole ten minutes
/// ahead of partition 1, and no on-time reading of partition 1 may be lost to partition 0's
/// progress. Readings for a window both partitions have passed are late: counted, not applied.
#[test]
fn windows_close_by_the_slowest_partition_and_late_events_are_counted() {
    let rt = runtime();
    let work = Workdir::new("e2e-windows");
    let broker = Broker::start(&work);
    rt.block_on(create_topic(&broker.addr, "readings", 2))
        .expect("create topic");
    let cluster = Cluster::start(&work);
    cluster
        .wait_ready(Duration::from_secs(60))
        .expect("regions elect leaders");
    cluster
        .sql(&format!("CREATE EXTERNAL STREAM readings(sensor int64, at datetime64(3), v int64) SETTINGS type='kafka', brokers='{}', topic='readings', data_format='JSONEachRow'", broker.addr))
        .expect("stream");
    cluster
        .sql("CREATE MATERIALIZED VIEW per_minute AS SELECT window_start, count() AS n, sum(v) AS total FROM tumble(readings, at, 1m) GROUP BY window_start SETTINGS allowed_lateness='0s'")
        .expect("view");
    // The same windows, emitted only once final.
    cluster
        .sql("CREATE MATERIALIZED VIEW per_minute_final AS SELECT window_start, count() AS n, sum(v) AS total FROM tumble(readings, at, 1m) GROUP BY window_start EMIT AFTER WATERMARK SETTINGS allowed_lateness='0s'")
        .expect("final view");
    // Hopping windows over the same readings: each is in three windows.
    cluster
        .sql("CREATE MATERIALIZED VIEW sliding AS SELECT window_start, window_end, count() AS n, max(v) AS top FROM hop(readings, at, 1m, 3m) GROUP BY window_start, window_end SETTINGS allowed_lateness='0s'")
        .expect("hop view");
    let reading = |sensor: i64, minute: i64, second: i64, v: i64| {
        format!("{{\"sensor\": {sensor}, \"at\": \"2024-03-01T10:{minute:02}:{second:02}Z\", \"v\": {v}}}")
    };
    let mut on_time = Vec::new();
    for partition in 0..2i64 {
        let payloads: Vec<String> = (0..11)
            .flat_map(|minute| (0..6).map(move |s| (minute, s * 10)))
            .map(|(minute, second)| {
                reading(partition, minute, second, minute * 100 + second + partition)
            })
            .collect();
        for (minute, second) in (0..11).flat_map(|minute| (0..6).map(move |s| (minute, s * 10))) {
            on_time.push(format!(
                "({partition}, TIMESTAMP '2024-03-01 10:{minute:02}:{second:02}', {})",
                minute * 100 + second + partition
            ));
        }
        produce_to(&rt, &broker.addr, "readings", partition as i32, &payloads);
    }
    let n_on_time = on_time.len() as u64;
    cluster
        .wait_converged("per_minute", n_on_time, CONVERGE_TIMEOUT)
        .expect("converges");
    // Both partitions are at 10:10:50: every window up to 10:10 is closed. Late readings:
    produce_to(
        &rt,
        &broker.addr,
        "readings",
        0,
        &[reading(0, 3, 30, 1_000_000)],
    );
    produce_to(
        &rt,
        &broker.addr,
        "readings",
        1,
        &[reading(1, 9, 59, 1_000_000)],
    );
    let seq = cluster
        .wait_converged("per_minute", n_on_time + 2, CONVERGE_TIMEOUT)
        .expect("converges");
    let setup = vec![
        "CREATE TABLE r(sensor BIGINT, t TIMESTAMP, v BIGINT)".to_string(),
        format!("INSERT INTO r VALUES {}", on_time.join(", ")),
    ];
    let want = oracle(
        &setup,
        "SELECT CAST(make_timestamp(CAST(floor(epoch_us(t) / 60000000) AS BIGINT) * 60000000) AS VARCHAR) AS w, count(*), sum(v) FROM r GROUP BY w ORDER BY ALL",
    );
    assert_eq!(want.len(), 11);
    check_replicas(
        &rt,
        &cluster,
        "per_minute",
        "CAST(window_start AS VARCHAR), n, total",
        &want,
        seq,
    );
    // EMIT AFTER WATERMARK: the closed windows only (10:10 is still open), same rows.
    let seq = cluster
        .wait_converged("per_minute_final", n_on_time + 2, CONVERGE_TIMEOUT)
        .expect("converges");
    let closed: Vec<_> = want[..10].to_vec();
    check_replicas(
        &rt,
        &cluster,
        "per_minute_final",
        "CAST(window_start AS VARCHAR), n, total",
        &closed,
        seq,
    );
    // The hop view: the reading at 10:03:30 is only in closed windows; the one at 10:09:59 is
    // applied in its two windows still open (ending after the watermark, 10:10:50), not in
    // the one that ended at 10:10.
    let seq = cluster
        .wait_converged("sliding", n_on_time + 2, CONVERGE_TIMEOUT)
        .expect("converges");
    let setup = vec![
        "CREATE TABLE r(sensor BIGINT, t TIMESTAMP, v BIGINT, late BOOLEAN)".to_string(),
        format!(
            "INSERT INTO r SELECT *, false FROM (VALUES {})",
            on_time.join(", ")
        ),
        "INSERT INTO r VALUES (0, TIMESTAMP '2024-03-01 10:03:30', 1000000, true), (1, TIMESTAMP '2024-03-01 10:09:59', 1000000, true)".to_string(),
    ];
    let want = oracle(
        &setup,
        "WITH x AS (SELECT *, unnest(generate_series(time_bucket(INTERVAL 1 MINUTE, t) - INTERVAL 2 MINUTE, time_bucket(INTERVAL 1 MINUTE, t), INTERVAL 1 MINUTE)) AS ws FROM r) \
         SELECT CAST(ws AS VARCHAR), CAST(ws + INTERVAL 3 MINUTE AS VARCHAR), count(*), max(v) FROM x \
         WHERE NOT late OR ws + INTERVAL 3 MINUTE > TIMESTAMP '2024-03-01 10:10:50' GROUP BY ws ORDER BY ALL",
    );
    assert_eq!(want.len(), 13, "windows starting 09:58 to 10:10");
    check_replicas(
        &rt,
        &cluster,
        "sliding",
        "CAST(window_start AS VARCHAR), CAST(window_end AS VARCHAR), n, top",
        &want,
        seq,
    );
    let status = cluster.status().expect("status");
    for name in ["per_minute", "per_minute_final", "sliding"] {
        let view = status["views"]
            .as_array()
            .and_then(|v| v.iter().find(|v| v["view"] == name))
            .cloned()
            .unwrap_or_default();
        assert_eq!(view["late_events"].as_u64(), Some(2), "{view:#}");
    }
}
