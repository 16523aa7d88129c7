//! Views over views end to end: the sample view `revenue_by_country` (over the Debezium
//! `orders` stream) is read by two views, one of which is read by a third. The read views'
//! change logs go through Kafka topics; every replica of every view must equal DuckDB running
//! the same SQL over the final `orders` rows, before and after the upstream view's owner is
//! SIGKILLed (its new owner rebuilds it under a new epoch and writes a snapshot), after a
//! forged message of an old epoch (a former owner's late write) lands in the change topic, and
//! through the upstream owner's pause past its lease and resumption.

use std::time::{Duration, Instant};

use meridian::sample::{self, OrdersGenerator};
use meridian_tests::{
    changes, check_replicas, oracle, orders_cluster, orders_setup, produce, runtime, wait_rows,
    Cluster, Workdir, CONVERGE_TIMEOUT, VIEW,
};
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde_json::Value as Json;

/// A second upstream view, with floating-point values (averages) for a reader to aggregate.
const MEANS: &str = "country_means";
const MEANS_SELECT: &str =
    "SELECT country, round(avg(amount), 6) AS mean, count() AS n FROM orders GROUP BY country";

/// (view, what it reads, its query, the columns read back, the oracle's query over `orders`,
/// in which `v` is the sample view, `s` is `by_status` and `m` is `country_means`).
const READERS: &[(&str, &str, &str, &str, &str)] = &[
    (
        "by_status",
        VIEW,
        "SELECT status, count() AS countries, sum(orders) AS orders, sum(revenue) AS revenue, max(revenue) AS top, min(with_quantity) AS least FROM revenue_by_country GROUP BY status",
        "status, countries, orders, revenue, top, least",
        "SELECT status, count(*), sum(orders), sum(revenue), max(revenue), min(with_quantity) FROM v GROUP BY ALL ORDER BY ALL",
    ),
    (
        "busy_countries",
        VIEW,
        "SELECT country, status, revenue, orders * 10 AS orders10 FROM revenue_by_country WHERE orders >= 3",
        "country, status, revenue, orders10",
        "SELECT country, status, revenue, orders * 10 FROM v WHERE orders >= 3 ORDER BY ALL",
    ),
    (
        "statuses",
        "by_status",
        "SELECT count() AS statuses, sum(revenue) AS revenue, max(top) AS top FROM by_status",
        "statuses, revenue, top",
        "SELECT count(*), sum(revenue), max(top) FROM s",
    ),
    (
        "mean_extremes",
        MEANS,
        "SELECT n > 100 AS busy, max(mean) AS top, min(mean) AS bottom, count() AS countries FROM country_means GROUP BY n > 100",
        "busy, top, bottom, countries",
        "SELECT n > 100, max(mean), min(mean), count(*) FROM m GROUP BY ALL ORDER BY ALL",
    ),
];

/// The oracle's statements: `orders`, then the sample view `v` and `by_status` over it as
/// tables, so that a reader's query runs as written over them.
fn setup(g: &OrdersGenerator) -> Vec<String> {
    let mut setup = orders_setup(g);
    setup.push(format!("CREATE TABLE v AS {}", sample::VIEW_SELECT));
    setup.push(format!(
        "CREATE TABLE s AS {}",
        READERS[0].2.replace("revenue_by_country", "v")
    ));
    setup.push(format!("CREATE TABLE m AS {MEANS_SELECT}"));
    setup
}

/// The view's entry in the coordinator's status.
fn view_status(cluster: &Cluster<'_>, view: &str) -> Json {
    cluster
        .status()
        .ok()
        .and_then(|s| {
            s["views"]
                .as_array()
                .and_then(|vs| vs.iter().find(|v| v["view"] == view).cloned())
        })
        .unwrap_or(Json::Null)
}

/// Waits until `view`'s change topic holds its change log up to its last seq, and returns the
/// topic's messages (its high watermark): what the views reading `view` must consume.
fn wait_written(cluster: &Cluster<'_>, brokers: &str, view: &str) -> u64 {
    let start = Instant::now();
    let mut last = Json::Null;
    while start.elapsed() < CONVERGE_TIMEOUT {
        let v = view_status(cluster, view);
        let sink = v["shipping"]
            .as_array()
            .and_then(|sh| sh.iter().find(|s| s["topic"] != "").cloned());
        if let Some(sink) = sink {
            let written = sink["acked_seq"].as_u64().unwrap_or(0);
            let topic = sink["topic"].as_str().unwrap_or_default();
            if written > 0 && Some(written) == v["seq"].as_u64() && sink["error"] == "" {
                let consumer: BaseConsumer = rdkafka::ClientConfig::new()
                    .set("bootstrap.servers", brokers)
                    .create()
                    .expect("kafka client");
                let (_, high) = consumer
                    .fetch_watermarks(topic, 0, Duration::from_secs(10))
                    .expect("the change topic's watermarks");
                return high as u64;
            }
        }
        last = v;
        std::thread::sleep(Duration::from_millis(250));
    }
    panic!("view '{view}' did not write its change topic up to its seq; last status: {last:#}");
}

/// Waits for `VIEW` to consume `messages` and then for every reader, level by level, to
/// consume its change topic; then checks every replica of every reader against the oracle.
fn check_readers(
    rt: &tokio::runtime::Runtime,
    cluster: &Cluster<'_>,
    brokers: &str,
    g: &OrdersGenerator,
    messages: u64,
    when: &str,
) {
    cluster
        .wait_converged(VIEW, messages, CONVERGE_TIMEOUT)
        .unwrap_or_else(|e| panic!("{when}: {e}"));
    let setup = setup(g);
    for (name, reads, _, columns, oracle_sql) in READERS {
        let written = wait_written(cluster, brokers, reads);
        let want = oracle(&setup, oracle_sql);
        let seq = wait_rows(rt, cluster, name, columns, &want, written);
        check_replicas(rt, cluster, name, columns, &want, seq);
        eprintln!(
            "{when}: {name}: {} rows on 6 replicas equal the oracle ({} change messages read, the topic's high watermark {written})",
            want.len(),
            view_status(cluster, name)["events"]
        );
    }
}

/// Produces at least `n` more changes of `g` to `orders`; returns how many.
fn more_orders(
    rt: &tokio::runtime::Runtime,
    brokers: &str,
    g: &mut OrdersGenerator,
    n: usize,
) -> u64 {
    let events = changes(g, n);
    produce(rt, brokers, "orders", &events);
    events.len() as u64
}

/// Two workers, the sample view and `country_means`, and every reader.
fn readers_cluster<'w>(
    rt: &tokio::runtime::Runtime,
    work: &'w Workdir,
) -> (meridian_tests::Broker, Cluster<'w>) {
    let (broker, mut cluster) = orders_cluster(rt, work);
    cluster.start_worker("central-b");
    cluster
        .sql(&format!(
            "CREATE MATERIALIZED VIEW {MEANS} AS {MEANS_SELECT}"
        ))
        .expect("the second upstream view");
    for (name, _, query, _, _) in READERS {
        cluster
            .sql(&format!("CREATE MATERIALIZED VIEW {name} AS {query}"))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    (broker, cluster)
}

/// Waits until `view` is owned by another worker than `from`, under a newer lease.
fn wait_moved(cluster: &Cluster<'_>, view: &str, from: &(String, u64)) -> (String, u64) {
    let moved = Instant::now();
    loop {
        match cluster.view_owner(view) {
            Some(o) if o.0 != from.0 && o.1 > from.1 => return o,
            _ if moved.elapsed() > Duration::from_secs(60) => {
                panic!("{view} never moved off {from:?}")
            }
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// The upstream view's owner is paused (SIGSTOP) past its lease while changes flow: the view
/// moves, its heir writes a snapshot under a newer epoch, and the readers follow. Resumed
/// (SIGCONT), the former owner writes nothing the readers apply (what it might still send
/// carries its old epoch): every reader still equals the oracle, and it says it stopped its
/// views. (Views may then be balanced back onto it, as onto any worker that joins.)
#[test]
fn a_paused_upstream_owner_cannot_change_the_readers() {
    let rt = runtime();
    let work = Workdir::new("e2e-over-views-zombie");
    let (broker, mut cluster) = readers_cluster(&rt, &work);
    let mut g = OrdersGenerator::new(78);
    let mut sent = 0u64;
    sent += more_orders(&rt, &broker.addr, &mut g, 2_000);
    check_readers(&rt, &cluster, &broker.addr, &g, sent, "before the pause");

    let zombie = cluster
        .view_owner(VIEW)
        .expect("the upstream view has an owner");
    cluster.signal_worker(&zombie.0, "STOP");
    sent += more_orders(&rt, &broker.addr, &mut g, 2_000);
    wait_moved(&cluster, VIEW, &zombie);
    check_readers(
        &rt,
        &cluster,
        &broker.addr,
        &g,
        sent,
        "while the owner is paused",
    );

    cluster.signal_worker(&zombie.0, "CONT");
    sent += more_orders(&rt, &broker.addr, &mut g, 1_000);
    // Long enough for the resumed worker to try whatever it still had to write.
    std::thread::sleep(Duration::from_secs(6));
    check_readers(
        &rt,
        &cluster,
        &broker.addr,
        &g,
        sent,
        "after the owner resumed",
    );
    let log = cluster.worker_log(&zombie.0);
    assert!(
        log.contains("lease lapsed") || log.contains("no longer holds the view's lease"),
        "the resumed worker says it stopped its views:\n{log}"
    );
}

#[test]
fn views_over_views_equal_the_oracle_through_the_upstream_owners_kill() {
    let rt = runtime();
    let work = Workdir::new("e2e-over-views");
    let (broker, mut cluster) = readers_cluster(&rt, &work);
    let plan = cluster
        .sql("EXPLAIN MATERIALIZED VIEW by_status")
        .expect("explain");
    assert!(plan.contains("scan: view revenue_by_country"), "{plan}");
    let refused = cluster
        .sql(&format!("DROP VIEW {VIEW}"))
        .expect_err("a view read by another cannot be dropped");
    assert!(refused.contains("is read by view"), "{refused}");

    let mut g = OrdersGenerator::new(77);
    let mut sent = 0u64;
    sent += more_orders(&rt, &broker.addr, &mut g, 3_000);
    check_readers(&rt, &cluster, &broker.addr, &g, sent, "before the kill");

    // The upstream view's owner dies under a stream of changes: its heir rebuilds the view from
    // `orders` under a new lease and writes a snapshot to the change topic after the old
    // owner's changes; the readers must end equal to the oracle again.
    let owner = cluster
        .view_owner(VIEW)
        .expect("the upstream view has an owner");
    let second = changes(&mut g, 3_000);
    produce(&rt, &broker.addr, "orders", &second[..1_500]);
    cluster.kill_worker(&owner.0);
    produce(&rt, &broker.addr, "orders", &second[1_500..]);
    sent += second.len() as u64;
    wait_moved(&cluster, VIEW, &owner);
    check_readers(&rt, &cluster, &broker.addr, &g, sent, "after the kill");
    let sink = view_status(&cluster, VIEW)["shipping"]
        .as_array()
        .and_then(|sh| sh.iter().find(|s| s["topic"] != "").cloned())
        .expect("the upstream view writes its change topic");
    assert!(
        sink["last_reseed"].as_str().is_some_and(|r| !r.is_empty()),
        "the heir wrote a snapshot: {sink:#}"
    );

    // A late write of a former owner: a truncate of an old epoch. Applied, it would empty
    // every reader of the sample view; fenced, it is a dead letter and nothing changes.
    let topic = sink["topic"].as_str().expect("topic").to_string();
    let forged = meridian::sample::Event {
        key: "null".into(),
        value: Some(r#"{"view":"revenue_by_country","epoch":4294967297,"seq":1,"op":"t"}"#.into()),
    };
    let readers = ["by_status", "busy_countries"];
    let read = |v: &str| view_status(&cluster, v)["events"].as_u64().unwrap_or(0);
    let before: Vec<u64> = readers.iter().map(|v| read(v)).collect();
    produce(&rt, &broker.addr, &topic, &[forged]);
    let forged_at = Instant::now();
    while readers.iter().zip(&before).any(|(v, b)| read(v) <= *b) {
        assert!(
            forged_at.elapsed() < Duration::from_secs(60),
            "the readers never read the forged message"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    check_readers(
        &rt,
        &cluster,
        &broker.addr,
        &g,
        sent,
        "after a forged late write",
    );
    sent += more_orders(&rt, &broker.addr, &mut g, 1_000);
    check_readers(&rt, &cluster, &broker.addr, &g, sent, "after more changes");
    for reader in readers {
        let v = view_status(&cluster, reader);
        let fenced = v["recent_dead_letters"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|d| {
                d["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("a former owner's late message"))
            });
        assert!(fenced, "{reader} dead-lettered the forged message: {v:#}");
    }
}
