//! Read consistency levels against real processes: read tokens order a region's states, a
//! session's reads never go back even when the node that answered dies and a lagging one takes
//! over, and a linearizable read on a node cut off from its majority fails instead of
//! answering stale. Ends with every replica equal to the DuckDB oracle. (Subscriptions are in
//! `subscribe.rs`.)

use std::time::{Duration, Instant};

use meridian::sample::OrdersGenerator;
use meridian_proto::v1::region_client::RegionClient;
use meridian_proto::v1::NodeStatusRequest;
use meridian_proto::ReadToken;
use meridian_tests::{
    changes, converge_to_oracle, http, orders_cluster, produce, runtime, urlencode, Cluster,
    Workdir, VIEW,
};
use serde_json::Value as Json;

const REGION: &str = "eu-west";

/// The leader of `REGION` as its nodes say (not the coordinator's last report), and the
/// leader's applied seq of the view.
fn leader(rt: &tokio::runtime::Runtime, cluster: &Cluster<'_>) -> (u64, u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for node in cluster.nodes().filter(|n| n.region == REGION) {
            // A paused node accepts the connection and never answers: bounded.
            let st = rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(2), async {
                    let mut c = RegionClient::connect(node.grpc.clone()).await.ok()?;
                    c.node_status(NodeStatusRequest {}).await.ok()
                })
                .await
                .ok()
                .flatten()
            });
            if let Some(st) = st.map(|s| s.into_inner()) {
                if st.role == "leader" {
                    let seq = st
                        .positions
                        .iter()
                        .find(|p| p.view == VIEW)
                        .map_or(0, |p| p.applied_seq);
                    return (st.node_id, seq);
                }
            }
        }
        assert!(Instant::now() < deadline, "{REGION} has no leader");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// An HTTP read of the view's row count with extra parameters: (status, body as JSON or the
/// error text).
fn read(node: &str, params: &str) -> (u16, Json, String) {
    try_read(node, params).expect("GET")
}

/// [`read`] of a node that may not listen (yet).
fn try_read(node: &str, params: &str) -> anyhow::Result<(u16, Json, String)> {
    let q = urlencode(&format!("SELECT count(*) AS n FROM {VIEW}"));
    let (code, body) = http(
        "GET",
        node,
        &format!("/?query={q}&default_format=JSON{params}"),
        "",
    )?;
    Ok((
        code,
        serde_json::from_str(&body).unwrap_or(Json::Null),
        body,
    ))
}

fn http_of(cluster: &Cluster<'_>, id: u64) -> String {
    cluster.node_of(REGION, id).http.clone()
}

fn grpc_of(cluster: &Cluster<'_>, id: u64) -> String {
    cluster.node_of(REGION, id).grpc.clone()
}

/// The gRPC health service's status of `service` at `url` (1 SERVING, 2 NOT_SERVING).
fn health(rt: &tokio::runtime::Runtime, url: &str, service: &str) -> Option<i32> {
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(3), async {
            let channel = tonic::transport::Endpoint::from_shared(url.to_string())
                .ok()?
                .connect()
                .await
                .ok()?;
            let mut c = HealthClient::new(channel);
            c.check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .ok()
            .map(|r| r.into_inner().status)
        })
        .await
        .ok()
        .flatten()
    })
}

fn token_of(json: &Json) -> ReadToken {
    ReadToken::parse(json["meridian"]["token"].as_str().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e} in {json}"))
}

fn seq_of(r: &client::QueryResult) -> u64 {
    r.position(VIEW).expect("the answer's position of the view")
}

#[test]
fn reads_never_go_back_and_a_cut_off_node_refuses_linearizable_reads() {
    let rt = runtime();
    let work = Workdir::new("consistency");
    let (broker, mut cluster) = orders_cluster(&rt, &work);
    let mut g = OrdersGenerator::new(71);
    let events = changes(&mut g, 400);
    produce(&rt, &broker.addr, "orders", &events);
    let mut total = events.len() as u64;
    let first_seq = converge_to_oracle(&rt, &cluster, &g, total, "first load");

    // Typed results: dates, timestamps, decimals and lists arrive typed; rows map onto structs. The
    // client finds the region's nodes through the coordinator.
    let sdk = rt
        .block_on(client::Client::discover(&cluster.coordinator, REGION))
        .expect("the coordinator lists the region's nodes");
    // The region's members as they report themselves: three, one of them the leader, and
    // the SDK asks the healthiest first.
    let members = rt.block_on(sdk.members());
    assert_eq!(members.len(), 3, "{members:?}");
    assert!(
        members.iter().all(|m| m.status.is_some()),
        "every node reports itself: {members:?}"
    );
    // One leader, once the region is settled (a term may be changing).
    let deadline = Instant::now() + Duration::from_secs(30);
    while rt.block_on(sdk.leader()).is_none() {
        assert!(Instant::now() < deadline, "no leader: {members:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let err = rt
        .block_on(client::Client::discover(&cluster.coordinator, "mars"))
        .err()
        .expect("no such region");
    assert!(
        err.to_string().contains("no node of region 'mars'"),
        "{err}"
    );
    let r = rt
        .block_on(sdk.query(
            "SELECT DATE '2024-01-01' AS d, TIMESTAMP '2024-01-01 00:00:01.5' AS t, 1.50::DECIMAL(10,2) AS x, NULL AS n, ['a,b', NULL] AS l",
        ))
        .expect("typed values");
    assert_eq!(
        r.rows[0],
        vec![
            client::Value::Date(client::Date { days: 19_723 }),
            client::Value::Timestamp(client::Timestamp {
                micros: 1_704_067_201_500_000
            }),
            client::Value::Decimal(client::Decimal {
                unscaled: 150,
                scale: 2
            }),
            client::Value::Null,
            client::Value::List(vec![client::Value::Text("a,b".into()), client::Value::Null]),
        ]
    );
    #[derive(serde::Deserialize, Debug, PartialEq)]
    struct Totals {
        country: String,
        status: String,
        orders: i64,
        revenue: f64,
    }
    let mut got: Vec<Totals> = rt
        .block_on(sdk.query_as(&format!("SELECT * FROM {VIEW}")))
        .expect("rows map onto the struct");
    got.sort_by(|a, b| (&a.country, &a.status).cmp(&(&b.country, &b.status)));
    let expected: Vec<Totals> = meridian_tests::orders_oracle(&g)
        .into_iter()
        .map(|row| Totals {
            country: row[0].clone(),
            status: row[1].clone(),
            orders: row[2].parse().expect("orders"),
            revenue: row[3].parse().expect("revenue"),
        })
        .collect();
    assert_eq!(got, expected, "query_as equals the oracle");
    let err = rt
        .block_on(sdk.query_as::<Totals>("SELECT 'x' AS country"))
        .expect_err("a missing field");
    assert!(err.to_string().contains("missing field"), "{err}");

    // Analytical results as Arrow: DuckDB's record batches through the SDK (Arrow IPC over
    // gRPC) and over HTTP (FORMAT ArrowStream), the same rows as the oracle's.
    let want = meridian_tests::orders_oracle(&g);
    let sql = format!("SELECT country, status, orders FROM {VIEW} ORDER BY ALL");
    let arrow = rt.block_on(sdk.query_arrow(&sql)).expect("arrow answer");
    assert!(arrow.rows.is_empty() && arrow.token.is_some());
    let strings = |batches: &[client::arrow::record_batch::RecordBatch]| -> Vec<String> {
        use client::arrow::array::{Array, Int64Array, StringArray};
        let mut out = Vec::new();
        for b in batches {
            let country = b
                .column(0)
                .as_any()
                .downcast_ref::<StringArray>()
                .expect("utf8");
            let status = b
                .column(1)
                .as_any()
                .downcast_ref::<StringArray>()
                .expect("utf8");
            let orders = b
                .column(2)
                .as_any()
                .downcast_ref::<Int64Array>()
                .expect("int64");
            for i in 0..b.num_rows() {
                assert!(!orders.is_null(i));
                out.push(format!(
                    "{}|{}|{}",
                    country.value(i),
                    status.value(i),
                    orders.value(i)
                ));
            }
        }
        out
    };
    let oracle_rows: Vec<String> = want
        .iter()
        .map(|r| format!("{}|{}|{}", r[0], r[1], r[2]))
        .collect();
    assert_eq!(strings(&arrow.batches), oracle_rows);
    let (leader_id, _) = leader(&rt, &cluster);
    let (code, bytes) = meridian_tests::http_bytes(
        &http_of(&cluster, leader_id),
        &format!(
            "/?query={}",
            urlencode(&format!("{sql} FORMAT ArrowStream"))
        ),
    )
    .expect("GET");
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&bytes));
    let batches: Vec<_> =
        client::arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)
            .expect("an Arrow IPC stream")
            .collect::<Result<_, _>>()
            .expect("batches");
    assert_eq!(strings(&batches), oracle_rows);
    let (code, bytes) = meridian_tests::http_bytes(
        &http_of(&cluster, leader_id),
        &format!("/?query={}", urlencode(&format!("{sql} FORMAT Parquet"))),
    )
    .expect("GET");
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&bytes));
    let batches: Vec<_> = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        bytes::Bytes::from(bytes),
    )
    .expect("a Parquet file")
    .build()
    .expect("reader")
    .collect::<Result<_, _>>()
    .expect("batches");
    assert_eq!(strings(&batches), oracle_rows);

    // ClickHouse's own Python client (clickhouse-connect) connects over HTTP, asks what a
    // ClickHouse server is, and reads typed rows in Native format: the oracle's rows, and
    // dates, timestamps, decimals, NULLs and lists as Python values.
    let script = format!(
        r#"
import clickhouse_connect
c = clickhouse_connect.get_client(host="127.0.0.1", port={port})
print(c.server_version, c.server_tz)
for row in c.query("SELECT country, status, orders FROM {VIEW} ORDER BY ALL").result_rows:
    print("|".join(str(v) for v in row))
print(c.command("SELECT count(*) FROM {VIEW}"))
typed = c.query("SELECT DATE '2024-01-01' AS d, TIMESTAMP '2024-01-01 10:00:00.25' AS t, 1.50::DECIMAL(10,2) AS x, NULL::INTEGER AS n, ['a,b', NULL] AS l").result_rows[0]
print(repr(typed))
"#,
        port = http_of(&cluster, leader_id)
            .rsplit(':')
            .next()
            .expect("a port")
    );
    let out = std::process::Command::new("python3")
        .args(["-c", &script])
        .output()
        .expect("python3 runs (scripts/setup.sh installs clickhouse-connect)");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "clickhouse-connect: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.first().copied(), Some("24.8.1.1 UTC"), "{stdout}");
    assert_eq!(
        &lines[1..lines.len() - 2],
        oracle_rows.as_slice(),
        "{stdout}"
    );
    assert_eq!(
        lines[lines.len() - 2],
        oracle_rows.len().to_string(),
        "command() reads ClickHouse's default format: {stdout}"
    );
    assert_eq!(
        lines.last().copied(),
        Some("(datetime.date(2024, 1, 1), datetime.datetime(2024, 1, 1, 10, 0, 0, 250000), Decimal('1.50'), None, ['a,b', None])"),
        "{stdout}"
    );

    // Tokens: every node's answer carries one of its region, and every node serves a token
    // it has reached; one past the region's log is refused after the wait, naming the index.
    let (leader_id, _) = leader(&rt, &cluster);
    let (code, json, body) = read(&http_of(&cluster, leader_id), "");
    assert_eq!(code, 200, "{body}");
    let t = token_of(&json);
    assert_eq!(t.region, REGION);
    assert!(t.index > 0, "{t}");
    for id in 1..=3 {
        let (code, json, body) = read(
            &http_of(&cluster, id),
            &format!("&at_least={}", urlencode(&t.to_string())),
        );
        assert_eq!(code, 200, "node {id}: {body}");
        assert!(
            token_of(&json).index >= t.index,
            "node {id} answered from before {t}"
        );
    }
    let ahead = ReadToken::new(REGION, t.index + 1_000_000).to_string();
    let (code, _, body) = read(
        &http_of(&cluster, leader_id),
        &format!("&at_least={}&max_staleness_wait_ms=300", urlencode(&ahead)),
    );
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("short of"), "{body}");
    let foreign = ReadToken::new("us-east", t.index).to_string();
    let (code, _, body) = read(
        &http_of(&cluster, leader_id),
        &format!("&at_least={}", urlencode(&foreign)),
    );
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("for region 'us-east'"), "{body}");
    let (code, _, body) = read(&http_of(&cluster, leader_id), "&at_least=nonsense");
    assert_eq!(code, 400, "{body}");

    // Monotonic reads across failover: a follower is paused while the region moves on; the
    // session reads from the leader, the leader dies, and the follower resumes far behind.
    // Its answer must wait until it has caught up past what the session saw.
    let (leader_id, _) = leader(&rt, &cluster);
    let lagging = (1..=3).find(|&id| id != leader_id).expect("a follower");
    cluster.signal_node(REGION, lagging, "STOP");
    let events = changes(&mut g, 400);
    produce(&rt, &broker.addr, "orders", &events);
    total += events.len() as u64;
    cluster
        .wait_events(VIEW, total - 1, Duration::from_secs(120))
        .expect("the view consumes the second load");
    // A paused node does not report itself: the SDK prefers another.
    let whole = rt
        .block_on(client::Client::connect(
            (1..=3).map(|n| grpc_of(&cluster, n)).collect::<Vec<_>>(),
        ))
        .expect("client");
    let preferred = rt
        .block_on(whole.prefer_healthiest())
        .expect("a healthy node");
    assert_ne!(
        preferred,
        grpc_of(&cluster, lagging),
        "the paused node is not preferred"
    );
    let client = rt
        .block_on(client::Client::connect([
            grpc_of(&cluster, leader_id),
            grpc_of(&cluster, lagging),
        ]))
        .expect("client");
    // Until the leader's answer reflects the second load, which the paused follower lacks.
    let deadline = Instant::now() + Duration::from_secs(60);
    let seen = loop {
        let r = rt
            .block_on(client.query(&format!("SELECT count(*) FROM {VIEW}")))
            .expect("the leader answers");
        assert_eq!(r.node_id, leader_id, "the session's first node answers");
        if seq_of(&r) > first_seq {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "the second load does not reach the leader"
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    let seen_token = client.token().expect("the session keeps its token");
    assert_eq!(Some(&seen_token), seen.token.as_ref());
    cluster.kill_node(REGION, leader_id);
    cluster.signal_node(REGION, lagging, "CONT");
    let after = rt
        .block_on(client.query_with(
            &format!("SELECT count(*) FROM {VIEW}"),
            &client::QueryOptions {
                max_staleness_wait: Some(Duration::from_secs(20)),
                ..Default::default()
            },
        ))
        .expect("the resumed follower answers once it has caught up");
    assert_eq!(after.node_id, lagging);
    let after_token = after.token.clone().expect("a token");
    assert!(
        after_token.index >= seen_token.index && seq_of(&after) >= seq_of(&seen),
        "the session went back: saw {seen_token} (seq {}), then {after_token} (seq {})",
        seq_of(&seen),
        seq_of(&after)
    );
    cluster.restart_node(REGION, leader_id);

    // Linearizable: a follower paused while the region moves on answers, right after it
    // resumes, with at least the batches the leader had applied before the read (a local read
    // there would still see the old state).
    let deadline = Instant::now() + Duration::from_secs(60);
    let (leader_id, before) = loop {
        let (id, seq) = leader(&rt, &cluster);
        let ok = |n: u64, params: &str| {
            try_read(&http_of(&cluster, n), params).is_ok_and(|(code, _, _)| code == 200)
        };
        if ok(id, "&consistency=linearizable") && (1..=3).all(|n| ok(n, "")) {
            break (id, seq);
        }
        // The restarted node may still be catching up, or the region electing.
        assert!(Instant::now() < deadline, "the region does not settle");
        std::thread::sleep(Duration::from_millis(300));
    };
    let paused = (1..=3).find(|&id| id != leader_id).expect("a follower");
    cluster.signal_node(REGION, paused, "STOP");
    let events = changes(&mut g, 300);
    produce(&rt, &broker.addr, "orders", &events);
    total += events.len() as u64;
    cluster
        .wait_events(VIEW, total - 1, Duration::from_secs(120))
        .expect("the view consumes the third load");
    let deadline = Instant::now() + Duration::from_secs(60);
    let leader_seq = loop {
        let (_, seq) = leader(&rt, &cluster);
        std::thread::sleep(Duration::from_secs(1));
        if seq > before && leader(&rt, &cluster).1 == seq {
            break seq;
        }
        assert!(Instant::now() < deadline, "the leader does not settle");
    };
    cluster.signal_node(REGION, paused, "CONT");
    let (code, json, body) = read(
        &http_of(&cluster, paused),
        "&consistency=linearizable&max_staleness_wait_ms=10000",
    );
    assert_eq!(code, 200, "{body}");
    let seq = json["meridian"]["positions"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["view"] == VIEW))
        .and_then(|p| p["applied_seq"].as_u64())
        .unwrap_or(0);
    assert!(
        seq >= leader_seq,
        "a linearizable read on the resumed follower saw seq {seq}, older than the leader's {leader_seq} before it"
    );
    // A node whose two peers are paused cannot reach a majority: local reads still answer,
    // linearizable ones fail with the reason, and work again once the peers are back.
    let alone = 1;
    for id in [2, 3] {
        cluster.signal_node(REGION, id, "STOP");
    }
    let (code, _, body) = read(&http_of(&cluster, alone), "");
    assert_eq!(code, 200, "{body}");
    let started = Instant::now();
    let (code, _, body) = read(
        &http_of(&cluster, alone),
        "&consistency=linearizable&max_staleness_wait_ms=1500",
    );
    assert_eq!(
        code, 503,
        "a node without a majority answered a linearizable read: {body}"
    );
    assert!(
        body.contains("linearizable") || body.contains("short of"),
        "{body}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the wait is bounded"
    );
    // The standard gRPC health service says so too, once the node knows no leader.
    let deadline = Instant::now() + Duration::from_secs(20);
    while health(&rt, &grpc_of(&cluster, alone), "meridian.v1.Region") != Some(2) {
        assert!(
            Instant::now() < deadline,
            "a node without a majority stays SERVING"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    for id in [2, 3] {
        cluster.signal_node(REGION, id, "CONT");
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (code, _, body) = read(&http_of(&cluster, alone), "&consistency=linearizable");
        if code == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "linearizable reads do not come back: {body}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }

    // Many linearizable reads at once on one node share ReadIndex requests: all answer.
    let node = rt
        .block_on(client::Client::connect([grpc_of(&cluster, alone)]))
        .expect("client");
    let options = client::QueryOptions {
        linearizable: true,
        max_staleness_wait: Some(Duration::from_secs(10)),
        ..Default::default()
    };
    let sql = format!("SELECT count(*) FROM {VIEW}");
    let timed = |options: &client::QueryOptions| {
        let started = Instant::now();
        let answers = rt.block_on(async {
            let reads = (0..64).map(|_| node.query_with(&sql, options));
            futures::future::join_all(reads).await
        });
        (answers, started.elapsed())
    };
    let (_, local) = timed(&client::QueryOptions::default());
    let (answers, linearizable) = timed(&options);
    // A figure, not a bound: printed with --nocapture.
    eprintln!("64 concurrent reads on one node: {local:?} local, {linearizable:?} linearizable");
    // Figures, not bounds: a point lookup's latency at each read level, one read at a time
    // through the SDK (debug build, loopback).
    let point = format!("SELECT orders FROM {VIEW} WHERE country = 'DE' AND status = 'paid'");
    let token = node.token();
    for (level, options) in [
        ("any", client::QueryOptions::default()),
        (
            "bounded_staleness(60 s)",
            client::QueryOptions {
                max_staleness: Some(Duration::from_secs(60)),
                ..Default::default()
            },
        ),
        (
            "at_least(token)",
            client::QueryOptions {
                at_least: token.clone(),
                ..Default::default()
            },
        ),
        ("linearizable", options.clone()),
    ] {
        let mut took: Vec<Duration> = (0..200)
            .map(|_| {
                let started = Instant::now();
                rt.block_on(node.query_with(&point, &options))
                    .expect("a point read");
                started.elapsed()
            })
            .collect();
        took.sort();
        eprintln!(
            "point read, {level}: p50 {:?}, p99 {:?}",
            took[took.len() / 2],
            took[took.len() * 99 / 100]
        );
    }
    assert!(
        answers.iter().all(|a| a.is_ok()),
        "{:?}",
        answers.iter().find(|a| a.is_err())
    );

    let events = changes(&mut g, 200);
    produce(&rt, &broker.addr, "orders", &events);
    total += events.len() as u64;
    converge_to_oracle(&rt, &cluster, &g, total, "after the pauses and the kill");
    let out = cluster
        .cli(&["status", "--check"])
        .expect("a healthy cluster passes the check");
    assert!(out.starts_with("ok:"), "{out}");
    // SERVING (1) on every node and on the coordinator.
    for id in 1..=3 {
        assert_eq!(
            health(&rt, &grpc_of(&cluster, id), "meridian.v1.Region"),
            Some(1)
        );
    }
    assert_eq!(health(&rt, &cluster.coordinator, ""), Some(1));
    for path in ["/healthz", "/readyz"] {
        let (code, body) = http("GET", &http_of(&cluster, 1), path, "").expect("GET");
        assert_eq!((code, body.as_str()), (200, "Ok.\n"), "{path}");
    }

    // A session reads on, thousands of times, while changes stream in and the node it reads
    // from is SIGKILLed: no answer reflects an older state than one it already returned.
    let session = rt
        .block_on(client::Client::connect(
            (1..=3).map(|n| grpc_of(&cluster, n)).collect::<Vec<_>>(),
        ))
        .expect("client");
    let sql = format!("SELECT count(*) FROM {VIEW}");
    let victim = rt.block_on(session.query(&sql)).expect("a read").node_id;
    let events = changes(&mut g, 600);
    total += events.len() as u64;
    let producing = {
        let brokers = broker.addr.clone();
        std::thread::spawn(move || {
            let rt = runtime();
            for chunk in events.chunks(20) {
                produce(&rt, &brokers, "orders", chunk);
                std::thread::sleep(Duration::from_millis(30));
            }
        })
    };
    // A region whose leader died answers the session's token once it has a new one.
    let patient = client::QueryOptions {
        max_staleness_wait: Some(Duration::from_secs(20)),
        ..Default::default()
    };
    let (mut newest, mut killed, mut first_after) = ((0u64, 0u64), false, None);
    for i in 0..3_000 {
        if i == 500 {
            cluster.kill_node(REGION, victim);
            killed = true;
        }
        let r = rt
            .block_on(session.query_with(&sql, &patient))
            .unwrap_or_else(|e| panic!("read {i}: {e}"));
        let at = (r.token.as_ref().expect("a token").index, seq_of(&r));
        assert!(
            at.0 >= newest.0 && at.1 >= newest.1,
            "read {i} went back: (index, seq) {newest:?} then {at:?} from node {}",
            r.node_id
        );
        newest = at;
        if killed && first_after.is_none() {
            first_after = Some(r.node_id);
        }
    }
    producing.join().expect("the producer");
    assert_ne!(
        first_after,
        Some(victim),
        "the first read after the kill came from another node"
    );
    cluster.restart_node(REGION, victim);
    converge_to_oracle(&rt, &cluster, &g, total, "after the session's failover");
}
