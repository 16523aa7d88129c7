//! `meridian dev`: the whole system in one process, every component on its own gRPC port on
//! loopback, with sample CDC data.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use meridian::sample;
use meridian_proto::v1 as pb;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::FutureProducer;
use rdkafka::ClientConfig;
use tokio::sync::watch;

use crate::cli::{CentralArgs, CoordinatorArgs, DevArgs, RegionArgs};
use crate::status;

const REGIONS: [&str; 2] = ["eu-west", "us-east"];
const VIEW: &str = "revenue_by_country";
/// A second view over the same stream, to show the view engine: extremes and an average that
/// stay exact as orders are updated and deleted, and a HAVING.
const EXTREMES: &str = "order_extremes";
/// The demo's join: orders joined with the customers they name.
const BY_TIER: &str = "revenue_by_tier";
const BY_TIER_SELECT: &str = "SELECT c.tier, count() AS orders, sum(o.amount) AS revenue FROM orders AS o LEFT JOIN customers AS c ON o.customer_id = c.id WHERE o.status <> 'cancelled' GROUP BY c.tier";
/// The demo's view over a view: it reads `revenue_by_country`'s changes.
const BY_STATUS: &str = "revenue_by_status";
const BY_STATUS_SELECT: &str = "SELECT status, count() AS countries, sum(orders) AS orders, sum(revenue) AS revenue FROM revenue_by_country GROUP BY status";
/// The same query run on a replica of `revenue_by_country`, typed as the view's columns.
const BY_STATUS_CHECK: &str = "SELECT status, count()::BIGINT AS countries, sum(orders)::BIGINT AS orders, sum(revenue)::BIGINT AS revenue FROM revenue_by_country GROUP BY status ORDER BY status";
/// The topic of the customers stream.
const CUSTOMERS_TOPIC: &str = "customers";
const EXTREMES_SELECT: &str = "SELECT country, count() AS orders, min(amount) AS smallest, max(amount) AS largest, round(avg(amount), 2) AS mean FROM orders WHERE status <> 'cancelled' GROUP BY country HAVING count() > 10";
/// Marks a data dir as made by `meridian dev` on the embedded broker, so it may be wiped.
const MARKER: &str = ".meridian-dev-embedded";
/// Partitions of the sample topic.
const PARTITIONS: i32 = 3;
/// Central workers `meridian dev` runs.
const CENTRAL_WORKERS: u16 = 2;
/// How long the demo waits for the regions to elect leaders and for the view to catch up.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(300);
/// Events produced between two progress lines.
const PRODUCE_CHUNK: usize = 2_000;
/// With the embedded broker, how far production may run ahead of the view (its retention is
/// 5 MB per partition, which held as few as 2 000 sample events in a test).
const LAG_MAX: u64 = 10_000;

fn prepare_data_dir(dir: &Path, embedded: bool) -> anyhow::Result<()> {
    if embedded && dir.exists() {
        let is_ours = dir.join(MARKER).exists();
        let empty = std::fs::read_dir(dir)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
        if !is_ours && !empty {
            bail!("--data-dir {} is not empty and was not made by `meridian dev`; pass another --data-dir", dir.display());
        }
        // The embedded broker keeps nothing across runs, so state that points into it would be
        // stale: start clean.
        println!("embedded broker: starting from a clean {}", dir.display());
        std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    if embedded {
        std::fs::write(
            dir.join(MARKER),
            "made by meridian dev with the embedded broker\n",
        )?;
    }
    Ok(())
}

async fn ensure_topic(brokers: &str, topic: &str) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let new = NewTopic::new(topic, PARTITIONS, TopicReplication::Fixed(1));
    let results = admin
        .create_topics(
            [&new],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await?;
    for r in results {
        match r {
            Ok(_) | Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, e)) => bail!("creating topic '{t}' on {brokers}: {e}"),
        }
    }
    Ok(())
}

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    let embedded = args.brokers.is_none();
    prepare_data_dir(&args.data_dir, embedded)?;
    let mut mock = None;
    let brokers = match &args.brokers {
        Some(b) => {
            ensure_topic(b, &args.topic).await?;
            ensure_topic(b, CUSTOMERS_TOPIC).await?;
            b.clone()
        }
        None => {
            let m = MockCluster::new(1).context("starting the embedded Kafka broker")?;
            m.create_topic(&args.topic, PARTITIONS, 1)
                .context("creating the sample topic")?;
            m.create_topic(CUSTOMERS_TOPIC, 1, 1)
                .context("creating the customers topic")?;
            mock.insert(m).bootstrap_servers()
        }
    };
    println!(
        "kafka brokers: {brokers}{}",
        if embedded { " (embedded)" } else { "" }
    );

    let (stop, shutdown) = watch::channel(false);
    let base = args.port_base;
    let coordinator_addr = SocketAddr::from(([127, 0, 0, 1], base));
    let coordinator_url = format!("http://{coordinator_addr}");
    let mut tasks = Vec::new();
    tasks.push(tokio::spawn(crate::roles::coordinator(
        CoordinatorArgs {
            listen: coordinator_addr,
            data_dir: args.data_dir.join("coordinator"),
            lease_ms: 4_000,
        },
        shutdown.clone(),
    )));
    // Two central workers: the coordinator spreads the views over them, and moves a worker's
    // views to the other when it stops.
    for w in 1..=CENTRAL_WORKERS {
        tasks.push(tokio::spawn(crate::roles::central(
            CentralArgs {
                action: None,
                coordinator: coordinator_url.clone(),
                data_dir: args.data_dir.join(format!("central-{w}")),
                name: Some(format!("central-{w}")),
                change_log_retain: 1_000,
                metrics_listen: Some(SocketAddr::from((
                    [127, 0, 0, 1],
                    args.port_base + 1000 - 1 + w,
                ))),
            },
            shutdown.clone(),
        )));
    }
    for (r, region) in REGIONS.iter().enumerate() {
        let grpc_port = |n: u16| base + 100 * (r as u16 + 1) + n;
        let peers: Vec<String> = (1..=3)
            .map(|n| format!("{n}=http://127.0.0.1:{}", grpc_port(n)))
            .collect();
        for n in 1..=3u16 {
            tasks.push(tokio::spawn(crate::roles::region(
                RegionArgs {
                    region: region.to_string(),
                    node_id: Some(n.into()),
                    peers: peers.join(","),
                    listen: None,
                    http_listen: SocketAddr::from(([127, 0, 0, 1], grpc_port(n) + 1000)),
                    http_advertise: None,
                    data_dir: args.data_dir.join(region).join(format!("node-{n}")),
                    coordinator: coordinator_url.clone(),
                    raft_log_retain: 10_000,
                    query_timeout_ms: 30_000,
                    query_rows_max: regional_node::query::QUERY_ROWS_MAX,
                    query_bytes_max: regional_node::query::QUERY_BYTES_MAX,
                    replica_memory_max: "1GB".into(),
                },
                shutdown.clone(),
            )));
        }
    }
    let result = demo(&args, &brokers, &coordinator_url, mock.as_ref()).await;
    match &result {
        Ok(()) if !args.exit_after_demo => {
            println!("\nthe cluster keeps running; press Ctrl-C to stop. Try:");
            println!("  meridian status");
            println!("  meridian sql \"SHOW VIEWS\"");
            println!("  meridian query --region us-east \"SELECT * FROM {VIEW} ORDER BY revenue DESC LIMIT 5\"");
            println!("  curl 'http://127.0.0.1:{}/?query=SELECT+*+FROM+{VIEW}+LIMIT+3&default_format=JSONEachRow'", base + 1101);
            let mut signal = crate::roles::ctrl_c();
            let _ = signal.changed().await;
        }
        _ => {}
    }
    stop.send_replace(true);
    for t in tasks {
        if let Ok(Ok(Err(e))) = tokio::time::timeout(Duration::from_secs(10), t).await {
            eprintln!("a component failed: {e:#}")
        }
    }
    result
}

async fn demo(
    args: &DevArgs,
    brokers: &str,
    coordinator: &str,
    mock: Option<&MockCluster<'_, rdkafka::producer::DefaultProducerContext>>,
) -> anyhow::Result<()> {
    let embedded = mock.is_some();
    // Wait for the coordinator and for every region to have a leader.
    let started = Instant::now();
    loop {
        if let Ok(s) = status::fetch(coordinator).await {
            let ready = REGIONS.iter().all(|r| {
                s.regions.iter().find(|x| x.region == *r).is_some_and(|x| {
                    x.nodes.len() == 3
                        && x.nodes
                            .iter()
                            .filter_map(|n| n.status.as_ref())
                            .any(|n| n.role == "leader")
                })
            });
            if ready {
                break;
            }
        }
        if started.elapsed() > STARTUP_TIMEOUT {
            bail!(
                "the regions did not elect leaders within {STARTUP_TIMEOUT:?}; see the log above"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "regions up: {} (3 Raft nodes each), leaders elected in {:.1}s",
        REGIONS.join(", "),
        started.elapsed().as_secs_f64()
    );

    let mut c = status::connect(coordinator).await?;
    let stream = sample::stream_ddl(brokers, &args.topic).replacen(
        "STREAM orders",
        "STREAM IF NOT EXISTS orders",
        1,
    );
    let view = sample::view_ddl(VIEW, &REGIONS.join(",")).replacen(
        &format!("VIEW {VIEW}"),
        &format!("VIEW IF NOT EXISTS {VIEW}"),
        1,
    );
    let extremes = format!(
        "CREATE MATERIALIZED VIEW IF NOT EXISTS {EXTREMES} AS {EXTREMES_SELECT} SETTINGS regions='{}'",
        REGIONS.join(",")
    );
    let by_status = format!(
        "CREATE MATERIALIZED VIEW IF NOT EXISTS {BY_STATUS} AS {BY_STATUS_SELECT} SETTINGS regions='{}'",
        REGIONS.join(",")
    );
    let customers = sample::customers_ddl(brokers, CUSTOMERS_TOPIC).replacen(
        "STREAM customers",
        "STREAM IF NOT EXISTS customers",
        1,
    );
    let by_tier = format!(
        "CREATE MATERIALIZED VIEW IF NOT EXISTS {BY_TIER} AS {BY_TIER_SELECT} SETTINGS regions='{}'",
        REGIONS.join(",")
    );
    for sql in [&stream, &view, &by_status, &extremes, &customers, &by_tier] {
        println!("> {sql}");
        let r = c
            .execute(pb::ExecuteRequest { sql: sql.clone() })
            .await
            .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
        println!("  {}", r.into_inner().message);
    }
    // The embedded broker does not create topics on request: the change topic of the view
    // another view reads is made here.
    if let Some(m) = mock {
        let stored = c
            .get_catalog(pb::GetCatalogRequest {})
            .await
            .map_err(|s| anyhow::anyhow!("{}", s.message()))?
            .into_inner();
        let mut catalog = catalog::Catalog::load(
            stored
                .entries
                .iter()
                .map(|e| (e.id, e.sql.clone()))
                .collect(),
        )?;
        catalog.set_identity(stored.catalog_id);
        for v in catalog
            .views()
            .filter(|v| catalog.is_read_by_a_view(&v.name))
        {
            if let Some(s) = catalog.source(&v.name) {
                m.create_topic(&s.topic, 1, 1)
                    .with_context(|| format!("creating the change topic {}", s.topic))?;
            }
        }
    }

    // Produce the sample changes, with one malformed message to show the dead-letter table.
    let mut generator = sample::OrdersGenerator::new(42);
    let mut events = Vec::with_capacity(args.events + args.events / 5);
    while events.len() < args.events {
        events.extend(generator.next_events());
        if events.len() == args.events / 2 {
            events.push(sample::Event {
                key: "{\"id\":0}".into(),
                value: Some("{\"op\":\"c\",\"after\":{\"id\":\"not-a-number\"}}".into()),
            });
        }
    }
    let producer: FutureProducer = sample::producer(brokers)?;
    // The customers first: the join view reads them beside the orders.
    let by_tier_before = status::fetch(coordinator)
        .await
        .ok()
        .and_then(|s| s.views.iter().find(|v| v.view == BY_TIER).map(|v| v.events))
        .unwrap_or(0);
    let customer_events = sample::customer_events();
    sample::produce(&producer, CUSTOMERS_TOPIC, &customer_events)
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    println!("produced {} customer changes", customer_events.len());
    let t0 = Instant::now();
    let before = view_events(coordinator).await;
    let mut produced = 0u64;
    let mut last_line = Instant::now();
    for chunk in events.chunks(PRODUCE_CHUNK) {
        // The embedded broker keeps only 5 MB per partition: keep the view close behind the
        // producer so that nothing is deleted before it is read.
        while embedded && view_events(coordinator).await + LAG_MAX < before + produced {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        sample::produce(&producer, &args.topic, chunk)
            .await
            .map_err(|e| anyhow::anyhow!(e))?;
        produced += chunk.len() as u64;
        if last_line.elapsed() > Duration::from_secs(1) || produced == events.len() as u64 {
            println!("produced {produced}/{} change events", events.len());
            last_line = Instant::now();
        }
    }
    let target = before + events.len() as u64;

    // Wait until the view consumed everything and every replica applied its last batch.
    let mut last_print = Instant::now();
    loop {
        let s = status::fetch(coordinator).await?;
        let v = s.views.iter().find(|v| v.view == VIEW);
        let (seq, consumed) = v.map_or((0, 0), |v| (v.seq, v.events));
        let applied: Vec<(String, u64, u64)> = s
            .regions
            .iter()
            .flat_map(|r| {
                r.nodes
                    .iter()
                    .filter_map(|n| n.status.as_ref())
                    .map(move |st| {
                        (
                            r.region.clone(),
                            st.node_id,
                            st.positions
                                .iter()
                                .find(|p| p.view == VIEW)
                                .map_or(0, |p| p.applied_seq),
                        )
                    })
            })
            .collect();
        let done = consumed >= target
            && seq > 0
            && applied.len() == 6
            && applied.iter().all(|(_, _, a)| *a == seq);
        if done || last_print.elapsed() > Duration::from_secs(2) {
            let nodes = applied
                .iter()
                .map(|(r, n, a)| format!("{r}/{n}@{a}"))
                .collect::<Vec<_>>()
                .join(" ");
            println!("view {VIEW}: consumed {consumed}/{target} messages, change batch {seq}; replicas: {nodes}");
            last_print = Instant::now();
        }
        if done {
            break;
        }
        if t0.elapsed() > CATCH_UP_TIMEOUT {
            print!("{}", status::render(&s));
            bail!("the view did not catch up within {CATCH_UP_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "all 6 replicas caught up in {secs:.1}s ({:.0} events/s end to end)\n",
        events.len() as f64 / secs
    );

    let s = status::fetch(coordinator).await?;
    print!("{}", status::render(&s));
    let sql = format!("SELECT country, sum(orders) AS orders, sum(revenue) AS revenue FROM {VIEW} GROUP BY country ORDER BY country");
    println!("\n> {sql}");
    let mut by_region: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in &s.regions {
        by_region.insert(r.region.clone(), grpc_addrs(r));
    }
    for (region, nodes) in by_region {
        let client = client::Client::connect(nodes).await?;
        // The first query also opens the connection; the second shows a region-local read.
        client.query(&sql).await?;
        let t = Instant::now();
        let r = client.query(&sql).await?;
        let elapsed_ms = t.elapsed().as_secs_f64() * 1000.0;
        println!(
            "\n{region} (node {}, change batch {}, answered in {elapsed_ms:.1} ms):",
            r.node_id,
            r.position(VIEW).unwrap_or(0)
        );
        print!("{}", status::result_table(&r));
    }

    // The second view: its plan, then its rows once every replica has them.
    wait_caught_up(coordinator, EXTREMES, target).await?;
    let explain = format!("EXPLAIN MATERIALIZED VIEW {EXTREMES}");
    println!("\n> {explain}");
    let plan = c
        .execute(pb::ExecuteRequest { sql: explain })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner();
    for row in &plan.rows {
        println!("  {}", row.cells.join(" "));
    }
    let sql = format!("SELECT * FROM {EXTREMES} ORDER BY country");
    println!("\n> {sql}");
    let region = s.regions.iter().find(|r| r.region == REGIONS[1]).cloned();
    show(region.as_ref(), &sql).await?;

    // The join: orders by their customer's tier (NULL: no such customer).
    let by_tier_target = by_tier_before + (customer_events.len() + events.len()) as u64;
    wait_caught_up(coordinator, BY_TIER, by_tier_target).await?;
    let sql = format!("SELECT * FROM {BY_TIER} ORDER BY tier");
    println!("\n> {sql}");
    show(region.as_ref(), &sql).await?;

    // The view over a view, once it equals its query run on a replica of the view it reads.
    let sql = format!("SELECT * FROM {BY_STATUS} ORDER BY status");
    println!("\n> {sql}   -- a view over {VIEW}, read from its change topic");
    wait_same(region.as_ref(), &sql, BY_STATUS_CHECK).await?;
    show(region.as_ref(), &sql).await
}

/// Waits until `sql` and `check` answer the same rows on `region`.
async fn wait_same(
    region: Option<&pb::RegionStatus>,
    sql: &str,
    check: &str,
) -> anyhow::Result<()> {
    let Some(r) = region else {
        return Ok(());
    };
    let client = client::Client::connect(grpc_addrs(r)).await?;
    let started = Instant::now();
    loop {
        // The view's table exists in the region once its first batch arrived.
        let last = match (client.query(sql).await, client.query(check).await) {
            (Ok(a), Ok(b)) if !a.rows.is_empty() && a.rows == b.rows => return Ok(()),
            (Ok(_), Ok(_)) => "the rows differ".to_string(),
            (Err(e), _) | (_, Err(e)) => e.to_string(),
        };
        if started.elapsed() > CATCH_UP_TIMEOUT {
            bail!("{sql} did not come to equal {check} within {CATCH_UP_TIMEOUT:?}: {last}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits until `view` consumed `target` messages and every replica applied its last batch.
async fn wait_caught_up(coordinator: &str, view: &str, target: u64) -> anyhow::Result<()> {
    let started = Instant::now();
    while !caught_up(&status::fetch(coordinator).await?, view, target) {
        if started.elapsed() > CATCH_UP_TIMEOUT {
            bail!("view {view} did not catch up within {CATCH_UP_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(())
}

/// The gRPC addresses of the region's nodes that reported.
fn grpc_addrs(r: &pb::RegionStatus) -> Vec<String> {
    r.nodes
        .iter()
        .filter_map(|n| n.status.as_ref())
        .map(|st| st.grpc_addr.clone())
        .collect()
}

/// Runs `sql` on `region`'s nodes through the SDK and prints the answer as a table.
async fn show(region: Option<&pb::RegionStatus>, sql: &str) -> anyhow::Result<()> {
    if let Some(r) = region {
        let client = client::Client::connect(grpc_addrs(r)).await?;
        let r = client.query(sql).await?;
        print!("{}", status::result_table(&r));
    }
    Ok(())
}

/// Messages consumed by the slower of the demo's views (the embedded broker keeps little, so
/// the producer waits for both).
async fn view_events(coordinator: &str) -> u64 {
    status::fetch(coordinator)
        .await
        .ok()
        .map(|s| {
            [VIEW, EXTREMES]
                .iter()
                .map(|name| {
                    s.views
                        .iter()
                        .find(|v| v.view == *name)
                        .map_or(0, |v| v.events)
                })
                .min()
                .unwrap_or(0)
        })
        .unwrap_or(0)
}

/// Whether `view` consumed `target` messages and all six replicas applied its last batch.
fn caught_up(s: &pb::ClusterStatus, view: &str, target: u64) -> bool {
    let Some(v) = s.views.iter().find(|v| v.view == view) else {
        return false;
    };
    let applied: Vec<u64> = s
        .regions
        .iter()
        .flat_map(|r| r.nodes.iter().filter_map(|n| n.status.as_ref()))
        .map(|st| {
            st.positions
                .iter()
                .find(|p| p.view == view)
                .map_or(0, |p| p.applied_seq)
        })
        .collect();
    v.events >= target && v.seq > 0 && applied.len() == 6 && applied.iter().all(|a| *a == v.seq)
}
