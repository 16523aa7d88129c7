//! The workload and the oracle shared by the end-to-end and chaos tests: the sample orders
//! cluster, producing changes, DuckDB running a view's SQL over the source rows, and the check
//! that every replica equals it.

use std::time::Duration;

use meridian::sample::{self, OrdersGenerator};

use crate::{Broker, Cluster, Workdir, CONVERGE_TIMEOUT, VIEW};

pub type Row = Vec<String>;

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

pub fn text(v: &client::Value) -> String {
    match v {
        client::Value::Null => "NULL".into(),
        client::Value::Int(i) => i.to_string(),
        client::Value::Float(f) => f.to_string(),
        client::Value::Text(s) => s.clone(),
        client::Value::Bool(b) => b.to_string(),
        client::Value::Date(d) => d.to_string(),
        client::Value::Timestamp(t) => t.to_string(),
        client::Value::Decimal(d) => d.to_string(),
        client::Value::List(items) => {
            format!("[{}]", items.iter().map(text).collect::<Vec<_>>().join(","))
        }
    }
}

/// A result's rows as text, as the oracle lists them.
pub fn rows_text(r: &client::QueryResult) -> Vec<Row> {
    r.rows
        .iter()
        .map(|row| row.iter().map(text).collect())
        .collect()
}

/// The sample view's rows on the node(s) `client` reads from, in the oracle's columns and
/// order, and the view's applied seq there.
pub fn orders_rows(
    rt: &tokio::runtime::Runtime,
    client: &client::Client,
) -> anyhow::Result<(Vec<Row>, Option<u64>)> {
    let r =
        rt.block_on(client.query(&format!("SELECT {ORDERS_COLUMNS} FROM {VIEW} ORDER BY ALL")))?;
    Ok((rows_text(&r), r.position(VIEW)))
}

/// Runs `select` over `rows_sql` (statements that build the source table) in DuckDB.
pub fn oracle(setup: &[String], select: &str) -> Vec<Row> {
    let conn = duckdb::Connection::open_in_memory().expect("duckdb");
    for s in setup {
        conn.execute_batch(s).expect("oracle setup");
    }
    let mut stmt = conn.prepare(select).expect("oracle query prepares");
    let mut rows = stmt.query([]).expect("oracle query runs");
    let mut out = Vec::new();
    while let Some(r) = rows.next().expect("oracle row") {
        let n = r.as_ref().column_count();
        out.push(
            (0..n)
                .map(
                    |i| match r.get::<_, duckdb::types::Value>(i).expect("value") {
                        duckdb::types::Value::Null => "NULL".to_string(),
                        duckdb::types::Value::Text(s) => s,
                        duckdb::types::Value::BigInt(v) => v.to_string(),
                        duckdb::types::Value::HugeInt(v) => v.to_string(),
                        duckdb::types::Value::Int(v) => v.to_string(),
                        // As the client prints a float.
                        duckdb::types::Value::Double(v) => v.to_string(),
                        duckdb::types::Value::Boolean(v) => v.to_string(),
                        other => format!("{other:?}"),
                    },
                )
                .collect(),
        );
    }
    out
}

pub fn orders_setup(g: &OrdersGenerator) -> Vec<String> {
    let mut setup = vec![sample::ORACLE_TABLE.to_string()];
    let values: Vec<String> = g
        .live()
        .map(|o| {
            format!(
                "({}, {}, '{}', '{}', {}, {})",
                o.id,
                o.customer_id,
                o.country,
                o.status,
                o.amount,
                o.quantity.map_or("NULL".into(), |q| q.to_string())
            )
        })
        .collect();
    for chunk in values.chunks(1000) {
        setup.push(format!("INSERT INTO orders VALUES {}", chunk.join(", ")));
    }
    setup
}

/// Waits until `view` consumed at least `messages` and every node applied its last batch, and
/// then until one node's rows equal `want`: a view over another view's change log consumes
/// change messages, not source events, and tansu's reported high watermark for a topic written
/// in batches is below the messages it holds, so the count alone does not prove it read them
/// all. Returns the view's seq; `check_replicas` then checks every node.
pub fn wait_rows(
    rt: &tokio::runtime::Runtime,
    cluster: &Cluster<'_>,
    view: &str,
    columns: &str,
    want: &[Row],
    messages: u64,
) -> u64 {
    let start = std::time::Instant::now();
    let node = cluster.nodes().next().expect("a node").grpc.clone();
    loop {
        let seq = cluster
            .wait_converged(view, messages, CONVERGE_TIMEOUT)
            .unwrap_or_else(|e| panic!("{view}: {e}"));
        let got = rt.block_on(async {
            let c = client::Client::connect([node.clone()]).await.ok()?;
            c.query(&format!("SELECT {columns} FROM {view} ORDER BY ALL"))
                .await
                .ok()
        });
        let equal = got.is_some_and(|r| rows_text(&r) == want && r.position(view) == Some(seq));
        if equal || start.elapsed() > CONVERGE_TIMEOUT {
            return seq;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Every node's replica of `view` must equal the oracle's rows, at the view's last sequence.
pub fn check_replicas(
    rt: &tokio::runtime::Runtime,
    cluster: &Cluster<'_>,
    view: &str,
    columns: &str,
    expected: &[Row],
    seq: u64,
) {
    assert!(
        !expected.is_empty(),
        "the oracle has rows: a test over nothing proves nothing"
    );
    for node in cluster.nodes() {
        let got = rt.block_on(async {
            let c = client::Client::connect([node.grpc.clone()])
                .await
                .expect("client");
            c.query(&format!("SELECT {columns} FROM {view} ORDER BY ALL"))
                .await
                .expect("replica query")
        });
        assert_eq!(
            got.position(view),
            Some(seq),
            "{}/{} applied seq",
            node.region,
            node.id
        );
        let rows = rows_text(&got);
        assert_eq!(
            rows.len(),
            expected.len(),
            "{}/{}: row count differs from the oracle",
            node.region,
            node.id
        );
        assert_eq!(
            rows, expected,
            "{}/{}: replica differs from the oracle",
            node.region, node.id
        );
    }
}

pub fn produce(rt: &tokio::runtime::Runtime, brokers: &str, topic: &str, events: &[sample::Event]) {
    let producer = sample::producer(brokers).expect("producer");
    rt.block_on(sample::produce(&producer, topic, events))
        .expect("produce");
}

pub fn orders_oracle(g: &OrdersGenerator) -> Vec<Row> {
    oracle(
        &orders_setup(g),
        &format!(
            "SELECT country, status, orders, revenue, with_quantity FROM ({}) ORDER BY ALL",
            sample::VIEW_SELECT
        ),
    )
}

/// A tansu broker with a 3-partition `orders` topic, and a cluster with the sample stream and
/// view on it, ready to take changes.
pub fn orders_cluster<'w>(
    rt: &tokio::runtime::Runtime,
    work: &'w Workdir,
) -> (Broker, Cluster<'w>) {
    orders_cluster_with(rt, work, &[], &[])
}

/// [`orders_cluster`] whose regional nodes get `region_args` too.
pub fn orders_cluster_with<'w>(
    rt: &tokio::runtime::Runtime,
    work: &'w Workdir,
    region_args: &[&str],
    central_args: &[&str],
) -> (Broker, Cluster<'w>) {
    let broker = Broker::start(work);
    rt.block_on(create_topic(&broker.addr, "orders", 3))
        .expect("create topic");
    let cluster = Cluster::start_with(work, region_args, central_args);
    cluster
        .wait_ready(Duration::from_secs(60))
        .expect("regions elect leaders");
    cluster
        .sql(&sample::stream_ddl(&broker.addr, "orders"))
        .expect("create stream");
    cluster
        .sql(&sample::view_ddl(VIEW, "eu-west,us-east"))
        .expect("create view");
    (broker, cluster)
}

/// At least `n` change events (a delete brings its tombstone along).
pub fn changes(g: &mut OrdersGenerator, n: usize) -> Vec<sample::Event> {
    let mut events = Vec::with_capacity(n + 1);
    while events.len() < n {
        events.extend(g.next_events());
    }
    events
}

/// The columns of the sample view, in its SELECT order.
pub const ORDERS_COLUMNS: &str = "country, status, orders, revenue, with_quantity";

/// Waits for every replica to apply all `messages`, then checks each against the oracle over
/// the generator's rows. Returns the view's sequence.
pub fn converge_to_oracle(
    rt: &tokio::runtime::Runtime,
    cluster: &Cluster<'_>,
    g: &OrdersGenerator,
    messages: u64,
    what: &str,
) -> u64 {
    let seq = cluster
        .wait_converged(VIEW, messages, CONVERGE_TIMEOUT)
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    check_replicas(rt, cluster, VIEW, ORDERS_COLUMNS, &orders_oracle(g), seq);
    seq
}

/// Messages `from..from + n` of the append-only `clicks` stream (JSON `{"page", "ms"}`), and
/// the same rows as SQL tuples for the oracle's `clicks(page VARCHAR, ms BIGINT)` table.
pub fn clicks(from: i64, n: i64) -> (Vec<meridian::sample::Event>, Vec<String>) {
    (from..from + n)
        .map(|i| {
            let page = format!("/p{}", i % 37);
            let ms = (i * 7919) % 1000;
            (
                meridian::sample::Event {
                    key: format!("k{i}"),
                    value: Some(format!(r#"{{"page":"{page}","ms":{ms}}}"#)),
                },
                format!("('{page}', {ms})"),
            )
        })
        .unzip()
}

/// The oracle's table of the `clicks` rows.
pub fn clicks_setup(rows: &[String]) -> Vec<String> {
    std::iter::once("CREATE TABLE clicks(page VARCHAR, ms BIGINT)".to_string())
        .chain(
            rows.chunks(1_000)
                .map(|c| format!("INSERT INTO clicks VALUES {}", c.join(", "))),
        )
        .collect()
}

/// Produces `events` in chunks with a pause after each, on a thread of its own: a steady
/// stream while the test does something else.
pub fn produce_steadily(
    brokers: &str,
    topic: &str,
    events: Vec<meridian::sample::Event>,
    chunk: usize,
    pause: Duration,
) -> std::thread::JoinHandle<()> {
    let (brokers, topic) = (brokers.to_string(), topic.to_string());
    std::thread::spawn(move || {
        let rt = runtime();
        for c in events.chunks(chunk) {
            produce(&rt, &brokers, &topic, c);
            std::thread::sleep(pause);
        }
    })
}

/// Creates a topic through the Kafka admin API (tansu does not auto-create topics).
pub async fn create_topic(brokers: &str, topic: &str, partitions: i32) -> anyhow::Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let results = admin
        .create_topics(
            [&NewTopic::new(
                topic,
                partitions,
                TopicReplication::Fixed(1),
            )],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await?;
    for r in results {
        r.map_err(|(t, e)| anyhow::anyhow!("creating topic {t}: {e}"))?;
    }
    Ok(())
}
