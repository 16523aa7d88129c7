//! Trustworthy replicas, black box: a reader cannot write or reach the file system, a node
//! whose apply fails serves no reads until it has applied, and a central state that was rolled
//! back or wiped re-seeds the regions under a new epoch instead of letting them diverge.
//! Every test ends with all six replicas equal to the DuckDB oracle.

use std::path::Path;
use std::time::{Duration, Instant};

use meridian::sample::OrdersGenerator;
use meridian_tests::{
    changes, converge_to_oracle, http, orders_cluster, orders_cluster_with, produce, runtime,
    urlencode, Workdir, VIEW,
};

/// Statements a hostile reader sends. Each must be refused (or stopped) on every port.
fn probes(scratch: &Path) -> Vec<String> {
    let file = scratch.join("leak.csv");
    let file = file.display();
    let dir = scratch.display();
    vec![
        format!("SELECT 1; COMMIT; DELETE FROM {VIEW}; BEGIN; SELECT 1"),
        format!("SELECT 1; DELETE FROM {VIEW}; SELECT 1"),
        format!("DELETE FROM {VIEW}"),
        format!("UPDATE {VIEW} SET orders = 0"),
        format!("DROP TABLE {VIEW}"),
        format!("SELECT 1; COPY (SELECT 'x') TO '{file}'; SELECT 1"),
        format!("COPY {VIEW} TO '{file}'"),
        format!("ATTACH '{dir}/other.duckdb' AS other"),
        "INSTALL httpfs".into(),
        "LOAD httpfs".into(),
        "SET enable_external_access = true".into(),
        "SELECT 1; SET enable_external_access = true; SELECT 1".into(),
        "PRAGMA enable_profiling".into(),
        format!("EXPORT DATABASE '{dir}/export'"),
        "SELECT content FROM read_text('/etc/passwd')".into(),
        "SELECT * FROM read_csv('/etc/passwd')".into(),
        "SELECT * FROM read_csv_auto('/etc/passwd')".into(),
        "SELECT * FROM read_blob('/etc/hostname')".into(),
        "SELECT * FROM glob('/etc/*')".into(),
        "SELECT * FROM checkpoint()".into(),
        "CHECKPOINT".into(),
        format!("EXPLAIN ANALYZE DELETE FROM {VIEW}"),
        "SELECT * FROM _meridian_applied".into(),
        "SELECT * FROM _meridian_raft".into(),
        format!("SELECT * FROM query('DELETE FROM {VIEW}')"),
    ]
}

#[test]
fn hostile_reads_are_refused_and_every_replica_still_equals_the_oracle() {
    let rt = runtime();
    let work = Workdir::new("replicas-reads");
    let (broker, cluster) = orders_cluster_with(&rt, &work, &["--query-timeout-ms", "2000"], &[]);
    let mut g = OrdersGenerator::new(55);
    let events = changes(&mut g, 3_000);
    produce(&rt, &broker.addr, "orders", &events);
    let mut total = events.len() as u64;
    converge_to_oracle(&rt, &cluster, &g, total, "before the probes");

    let scratch = work.path.join("scratch");
    std::fs::create_dir_all(&scratch).expect("scratch dir");
    let http_node = cluster.node_of("eu-west", 1).http.clone();
    let grpc_node = cluster.node_of("us-east", 2).grpc.clone();
    let client = rt
        .block_on(client::Client::connect([grpc_node]))
        .expect("client");
    for sql in probes(&scratch) {
        let (status, body) = http(
            "GET",
            &http_node,
            &format!("/?query={}", urlencode(&sql)),
            "",
        )
        .expect("http get");
        assert!(
            (400..600).contains(&status) && !body.trim().is_empty(),
            "HTTP GET accepted {sql:?}: {status} {body}"
        );
        let (status, body) = http("POST", &http_node, "/", &sql).expect("http post");
        assert!(
            (400..600).contains(&status),
            "HTTP POST accepted {sql:?}: {status} {body}"
        );
        let answer = rt.block_on(client.query(&sql));
        assert!(answer.is_err(), "gRPC accepted {sql:?}");
        eprintln!("refused: {sql} -> {}", body.trim());
    }
    // A runaway cross join is stopped at the deadline with a clear error, and the node answers
    // the next read.
    let runaway = "SELECT count(*) FROM range(100000000) a, range(100000000) b";
    let started = Instant::now();
    let (status, body) = http(
        "GET",
        &http_node,
        &format!("/?query={}", urlencode(runaway)),
        "",
    )
    .expect("http runaway");
    assert_eq!(status, 504, "{body}");
    assert!(body.contains("ran longer than"), "{body}");
    eprintln!("runaway query stopped after {:?}", started.elapsed());
    let err = rt
        .block_on(client.query(runaway))
        .expect_err("gRPC runaway stops");
    assert!(err.to_string().contains("ran longer than"), "{err}");
    let (status, body) = http(
        "GET",
        &http_node,
        &format!(
            "/?query={}",
            urlencode(&format!("SELECT count(*) FROM {VIEW}"))
        ),
        "",
    )
    .expect("http read");
    assert_eq!(status, 200, "{body}");
    assert!(
        std::fs::read_dir(&scratch)
            .expect("scratch")
            .next()
            .is_none(),
        "a probe wrote into {}",
        scratch.display()
    );

    // Groups the probes would have deleted would stay missing for good: more changes, then
    // every replica must still equal the oracle.
    let more = changes(&mut g, 3_000);
    produce(&rt, &broker.addr, "orders", &more);
    total += more.len() as u64;
    converge_to_oracle(&rt, &cluster, &g, total, "after the probes");
}

/// Whether a node's `/metrics` says it serves reads.
fn serving(http_addr: &str) -> Option<bool> {
    let (status, body) = http("GET", http_addr, "/metrics", "").ok()?;
    if status != 200 {
        return None;
    }
    body.lines()
        .find(|l| l.starts_with("meridian_node_serving{"))
        .map(|l| l.trim_end().ends_with(" 1"))
}

#[test]
fn a_follower_whose_apply_fails_serves_no_reads_repairs_itself_and_ends_equal() {
    let rt = runtime();
    let work = Workdir::new("replicas-apply-fails");
    let (broker, mut cluster) = orders_cluster(&rt, &work);
    let mut g = OrdersGenerator::new(77);
    let events = changes(&mut g, 2_000);
    produce(&rt, &broker.addr, "orders", &events);
    let mut total = events.len() as u64;
    converge_to_oracle(&rt, &cluster, &g, total, "before the fault");

    let id = cluster.follower("eu-west").expect("a follower");
    cluster.kill_node("eu-west", id);
    // Its first eight attempts to apply fail: retries with backoff fail for more than 5 s, so
    // the node repairs itself from a peer's replica, then fails and retries once more.
    cluster.restart_node_env(
        "eu-west",
        id,
        &[("MERIDIAN_FAILPOINTS", "replica-apply=8*return")],
    );
    let more = changes(&mut g, 2_000);
    let producer = {
        let brokers = broker.addr.clone();
        let more = more.clone();
        std::thread::spawn(move || {
            let rt = runtime();
            for chunk in more.chunks(200) {
                produce(&rt, &brokers, "orders", chunk);
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let node = cluster.node_of("eu-west", id).http.clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut refused = None;
    while refused.is_none() && Instant::now() < deadline {
        if serving(&node) == Some(false) {
            let sql = format!(
                "/?query={}",
                urlencode(&format!("SELECT count(*) FROM {VIEW}"))
            );
            let (status, body) = http("GET", &node, &sql, "").expect("http read");
            if status == 200 && serving(&node) == Some(true) {
                // The apply succeeded between the two requests; look again.
                continue;
            }
            assert_eq!(status, 503, "a stalled node answered a read: {body}");
            assert!(body.contains("does not serve reads"), "{body}");
            refused = Some(body);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let refused = refused.expect("the node was seen not serving while its apply failed");
    eprintln!("stalled node refused a read: {}", refused.trim());
    producer.join().expect("producer");
    total += more.len() as u64;
    converge_to_oracle(&rt, &cluster, &g, total, "after the apply recovered");
    let log = work.log_text(&format!("eu-west-{id}"));
    assert!(
        log.contains("applying a committed entry failed")
            && log.contains("replica repaired from a peer's snapshot")
            && log.contains("stalled apply succeeded"),
        "the node's log shows the failure, the repair and the recovery"
    );
    assert_eq!(serving(&node), Some(true));
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create dir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("dir entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy file");
        }
    }
}

/// The epoch and last re-seed reason every region's shipper reports for the view.
fn shipping(cluster: &meridian_tests::Cluster<'_>) -> Vec<(u64, String)> {
    let s = cluster.status().expect("status");
    s["views"]
        .as_array()
        .and_then(|vs| vs.iter().find(|v| v["view"] == VIEW))
        .and_then(|v| v["shipping"].as_array())
        .map(|sh| {
            sh.iter()
                .map(|x| {
                    (
                        x["epoch"].as_u64().unwrap_or(0),
                        x["last_reseed"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_rolled_back_or_wiped_central_state_reseeds_regions_under_a_new_epoch() {
    let rt = runtime();
    let work = Workdir::new("replicas-epochs");
    let metrics = format!("127.0.0.1:{}", meridian_tests::free_port());
    let (broker, mut cluster) =
        orders_cluster_with(&rt, &work, &[], &["--metrics-listen", &metrics]);
    let mut g = OrdersGenerator::new(99);
    let events = changes(&mut g, 3_000);
    produce(&rt, &broker.addr, "orders", &events);
    let mut total = events.len() as u64;
    let old_seq = converge_to_oracle(&rt, &cluster, &g, total, "first load");

    // Keep a copy of the central state, then move on past it.
    cluster.kill_central();
    let backup = work.path.join("central-backup");
    copy_dir(&cluster.central_dir(), &backup);
    cluster.start_central();
    let more = changes(&mut g, 3_000);
    produce(&rt, &broker.addr, "orders", &more);
    total += more.len() as u64;
    let new_seq = converge_to_oracle(&rt, &cluster, &g, total, "second load");
    assert!(new_seq > old_seq);
    let before = shipping(&cluster);
    assert_eq!(before.len(), 2, "{before:?}");
    let epoch = before[0].0;
    assert!(
        epoch > 0 && before.iter().all(|(e, _)| *e == epoch),
        "{before:?}"
    );

    // Roll the central state back to the copy: it re-consumes from the copy's offsets and
    // numbers batches the regions already hold with other contents.
    cluster.kill_central();
    std::fs::remove_dir_all(cluster.central_dir()).expect("remove central dir");
    copy_dir(&backup, &cluster.central_dir());
    cluster.start_central();
    let third = changes(&mut g, 1_000);
    produce(&rt, &broker.addr, "orders", &third);
    total += third.len() as u64;
    converge_to_oracle(&rt, &cluster, &g, total, "after the rollback");
    let after = shipping(&cluster);
    assert!(
        after.iter().all(|(e, why)| *e > epoch && !why.is_empty()),
        "a new epoch re-seeded every region: before {before:?}, after {after:?}"
    );
    eprintln!("after the rollback: {after:?}");

    // Wipe it: the view is rebuilt from the topic under a new epoch.
    let epoch = after[0].0;
    cluster.kill_central();
    std::fs::remove_dir_all(cluster.central_dir()).expect("remove central dir");
    cluster.start_central();
    let fourth = changes(&mut g, 1_000);
    produce(&rt, &broker.addr, "orders", &fourth);
    total += fourth.len() as u64;
    converge_to_oracle(&rt, &cluster, &g, total, "after the wipe");
    let wiped = shipping(&cluster);
    assert!(
        wiped.iter().all(|(e, why)| *e > epoch && !why.is_empty()),
        "a wiped central state starts a new epoch: {wiped:?}"
    );
    eprintln!("after the wipe: {wiped:?}");
    // The central worker's metrics say the same: where each region stands, in which epoch.
    let (status, body) =
        http("GET", &format!("http://{metrics}"), "/metrics", "").expect("metrics");
    assert_eq!(status, 200);
    for (region_epoch, region) in wiped.iter().zip(["eu-west", "us-east"]) {
        let line = format!(
            "meridian_ship_epoch{{view=\"{VIEW}\",region=\"{region}\"}} {}",
            region_epoch.0
        );
        assert!(body.lines().any(|l| l == line), "{line} not in:\n{body}");
    }
    assert!(
        body.contains(&format!(
            "meridian_view_stalled_partitions{{view=\"{VIEW}\"}} 0"
        )),
        "{body}"
    );
}

#[test]
fn an_append_only_stream_counts_every_message_once_through_a_central_crash() {
    use meridian_tests::{
        check_replicas, clicks, clicks_setup, create_topic, oracle, produce_steadily, Broker,
        Cluster, CONVERGE_TIMEOUT,
    };
    let rt = runtime();
    let work = Workdir::new("replicas-append-only");
    let broker = Broker::start(&work);
    rt.block_on(create_topic(&broker.addr, "clicks", 3))
        .expect("create topic");
    let mut cluster = Cluster::start(&work);
    cluster
        .wait_ready(Duration::from_secs(60))
        .expect("regions elect leaders");
    cluster
        .sql(&format!("CREATE EXTERNAL STREAM clicks(page string, ms int64) SETTINGS type='kafka', brokers='{}', topic='clicks', data_format='JSONEachRow'", broker.addr))
        .expect("stream");
    // Append-only: a message consumed twice or lost changes these totals, which the upsert
    // oracle of a CDC stream could not see.
    let per_page = "SELECT page, count() AS hits, sum(ms) AS total_ms FROM clicks GROUP BY page";
    let overall = "SELECT count() AS hits, sum(ms) AS total_ms FROM clicks";
    cluster
        .sql(&format!("CREATE MATERIALIZED VIEW page_hits AS {per_page}"))
        .expect("view");
    cluster
        .sql(&format!("CREATE MATERIALIZED VIEW all_hits AS {overall}"))
        .expect("view");

    let (events, rows) = clicks(0, 20_000);
    let total = events.len() as u64;
    let producer = produce_steadily(
        &broker.addr,
        "clicks",
        events,
        1_000,
        Duration::from_millis(100),
    );
    // SIGKILL the central worker once it is well into the stream.
    cluster
        .wait_events("page_hits", 5_000, Duration::from_secs(120))
        .expect("the view gets 5000 messages");
    cluster.kill_central();
    std::thread::sleep(Duration::from_millis(300));
    cluster.start_central();
    producer.join().expect("producer");

    let setup = clicks_setup(&rows);
    for (view, select, columns) in [
        ("page_hits", per_page, "page, hits, total_ms"),
        ("all_hits", overall, "hits, total_ms"),
    ] {
        let seq = cluster
            .wait_converged(view, total, CONVERGE_TIMEOUT)
            .expect("converges");
        let expected = oracle(
            &setup,
            &format!("SELECT {columns} FROM ({select}) ORDER BY ALL"),
        );
        check_replicas(&rt, &cluster, view, columns, &expected, seq);
    }
    let status = cluster.status().expect("status");
    for v in status["views"].as_array().expect("views") {
        assert_eq!(
            v["events"].as_u64(),
            Some(total),
            "consumed exactly once: {v:#}"
        );
    }
}
