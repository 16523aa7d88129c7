//! Read consistency levels against real processes: read tokens order a region's states, a
//! session's reads never go back even when the node that answered dies and a lagging one takes
//! over, and a linearizable read on a node cut off from its majority fails instead of
//! answering stale. Ends with every replica equal to the DuckDB oracle.

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

    // Typed results: dates, timestamps and decimals arrive typed; rows map onto structs. The
    // client finds the region's nodes through the coordinator.
    let sdk = rt
        .block_on(client::Client::discover(&cluster.coordinator, REGION))
        .expect("the coordinator lists the region's nodes");
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
            "SELECT DATE '2024-01-01' AS d, TIMESTAMP '2024-01-01 00:00:01.5' AS t, 1.50::DECIMAL(10,2) AS x, NULL AS n",
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
}

/// A subscriber's copy of the view: rows by key, as the events built it.
#[derive(Default)]
struct Copy {
    columns: Vec<String>,
    rows: std::collections::BTreeMap<Vec<String>, Vec<String>>,
    /// (epoch, seq) of the last event.
    at: Option<(u64, u64)>,
}

impl Copy {
    fn take(&mut self, ev: client::SubscriptionEvent) {
        // No batch missed or repeated: each one follows the last within its epoch, and only a
        // full one may jump.
        let (epoch, seq) = (ev.position.epoch, ev.position.seq);
        if let Some((e, s)) = self.at {
            if ev.full {
                assert!(
                    (epoch, seq) >= (e, s),
                    "a full event went back: ({e}, {s}) then ({epoch}, {seq})"
                );
            } else {
                assert_eq!((epoch, seq), (e, s + 1), "a batch missed or repeated");
            }
        }
        self.at = Some((epoch, seq));
        if !ev.columns.is_empty() {
            self.columns = ev.columns.iter().map(|c| c.name.clone()).collect();
        }
        if ev.full {
            self.rows.clear();
        }
        for change in ev.changes {
            match change {
                client::Change::Upsert { key, row } => {
                    self.rows.insert(
                        key.iter().map(meridian_tests::text).collect(),
                        row.iter().map(meridian_tests::text).collect(),
                    );
                }
                client::Change::Delete { key } => {
                    self.rows
                        .remove(&key.iter().map(meridian_tests::text).collect::<Vec<_>>());
                }
            }
        }
    }

    /// The rows as the oracle lists them: its columns, sorted.
    fn as_oracle(&self) -> Vec<meridian_tests::Row> {
        let idx: Vec<usize> = meridian_tests::ORDERS_COLUMNS
            .split(", ")
            .map(|c| {
                self.columns
                    .iter()
                    .position(|x| x == c)
                    .unwrap_or_else(|| panic!("column {c} in {:?}", self.columns))
            })
            .collect();
        let mut rows: Vec<_> = self
            .rows
            .values()
            .map(|r| idx.iter().map(|&i| r[i].clone()).collect())
            .collect();
        rows.sort();
        rows
    }
}

fn next_event(
    rt: &tokio::runtime::Runtime,
    sub: &mut client::Subscription,
) -> client::SubscriptionEvent {
    rt.block_on(async { tokio::time::timeout(Duration::from_secs(120), sub.next()).await })
        .unwrap_or_else(|_| panic!("no event within 120 s at {:?}", sub.position()))
        .expect("a subscription never ends")
        .expect("an event")
}

/// Takes events until the subscription reaches `seq`.
fn follow_to(
    rt: &tokio::runtime::Runtime,
    sub: &mut client::Subscription,
    copy: &mut Copy,
    seq: u64,
) {
    while sub.position().is_none_or(|p| p.seq < seq) {
        copy.take(next_event(rt, sub));
    }
    assert_eq!(
        sub.position().map(|p| p.seq),
        Some(seq),
        "past the view's seq"
    );
}

/// The first `n` lines of a chunked HTTP response that does not end by itself.
fn stream_lines(node: &str, path: &str, n: usize) -> Vec<Json> {
    use std::io::{BufRead, BufReader, Read, Write};
    let host = node.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(host).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    write!(s, "GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").expect("request");
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).expect("status line");
    assert!(line.contains(" 200 "), "{line}");
    loop {
        line.clear();
        r.read_line(&mut line).expect("header");
        if line == "\r\n" {
            break;
        }
    }
    let (mut text, mut out) = (String::new(), Vec::new());
    while out.len() < n {
        line.clear();
        r.read_line(&mut line).expect("chunk size");
        let size = usize::from_str_radix(line.trim(), 16).expect("hex chunk size");
        assert!(size > 0, "the stream ended after {} lines", out.len());
        let mut chunk = vec![0; size + 2];
        r.read_exact(&mut chunk).expect("chunk");
        text.push_str(std::str::from_utf8(&chunk[..size]).expect("utf-8"));
        while let Some((first, rest)) = text.split_once('\n') {
            out.push(serde_json::from_str(first).expect("a JSON line"));
            text = rest.to_string();
        }
    }
    out.truncate(n);
    out
}

fn json_text(v: &Json) -> String {
    match v {
        Json::Null => "NULL".into(),
        Json::String(s) => s.clone(),
        Json::Number(n) => n.as_i64().map_or_else(
            || n.as_f64().unwrap_or(f64::NAN).to_string(),
            |i| i.to_string(),
        ),
        other => other.to_string(),
    }
}

#[test]
fn a_subscriber_sees_every_change_and_resumes_on_another_node_without_a_snapshot() {
    let rt = runtime();
    let work = Workdir::new("subscribe");
    let (broker, mut cluster) = orders_cluster(&rt, &work);
    let mut g = OrdersGenerator::new(93);
    let events = changes(&mut g, 400);
    produce(&rt, &broker.addr, "orders", &events);
    let mut total = events.len() as u64;
    let seq = converge_to_oracle(&rt, &cluster, &g, total, "first load");

    let client = rt
        .block_on(client::Client::connect(cluster.region_endpoints("us-east")))
        .expect("client");
    let mut sub = client.subscribe(VIEW);
    let mut copy = Copy::default();
    follow_to(&rt, &mut sub, &mut copy, seq);
    assert_eq!(sub.snapshots(), 1, "one snapshot to start");
    assert_eq!(
        copy.as_oracle(),
        meridian_tests::orders_oracle(&g),
        "the snapshot"
    );
    // The same over HTTP, as JSONEachRow lines: a reset, then every row.
    let expected = meridian_tests::orders_oracle(&g);
    let node = cluster.node_of("us-east", 1).http.clone();
    let lines = stream_lines(
        &node,
        &format!("/subscribe?view={VIEW}"),
        expected.len() + 1,
    );
    assert_eq!(lines[0]["_op"], "reset", "{}", lines[0]);
    assert_eq!(lines[0]["_seq"].as_u64(), Some(seq));
    let mut rows: Vec<meridian_tests::Row> = lines[1..]
        .iter()
        .map(|l| {
            assert_eq!(l["_op"], "upsert", "{l}");
            meridian_tests::ORDERS_COLUMNS
                .split(", ")
                .map(|c| json_text(&l[c]))
                .collect()
        })
        .collect();
    rows.sort();
    assert_eq!(rows, expected, "the HTTP snapshot");

    // Changes, with deletes, stream in. Then the node the subscription would move to next is
    // paused while more changes arrive, the node streaming dies, and the paused one resumes
    // far behind the subscription: it must not hand it an older state (it catches up first,
    // or sends the subscription on to the third node).
    let events = changes(&mut g, 600);
    let (first, rest) = events.split_at(300);
    produce(&rt, &broker.addr, "orders", first);
    total += first.len() as u64;
    let mid = cluster
        .wait_converged(VIEW, total, meridian_tests::CONVERGE_TIMEOUT)
        .expect("the first half converges");
    follow_to(&rt, &mut sub, &mut copy, mid);
    let streaming = sub.node().expect("a node streams").to_string();
    let id = cluster
        .nodes()
        .find(|n| n.grpc == streaming)
        .map(|n| n.id)
        .expect("the streaming node is one of the region's");
    // The SDK tries the region's nodes in order after the one that failed.
    let lagging = id % 3 + 1;
    cluster.signal_node("us-east", lagging, "STOP");
    produce(&rt, &broker.addr, "orders", rest);
    total += rest.len() as u64;
    cluster
        .wait_events(VIEW, total - 1, Duration::from_secs(120))
        .expect("the view consumes the second half");
    let end = oracle_seq(&rt, &streaming, &g);
    follow_to(&rt, &mut sub, &mut copy, end);
    let more = changes(&mut g, 200);
    cluster.kill_node("us-east", id);
    cluster.signal_node("us-east", lagging, "CONT");
    produce(&rt, &broker.addr, "orders", &more);
    total += more.len() as u64;
    // The resume happens now, while the resumed node is still behind.
    copy.take(next_event(&rt, &mut sub));
    cluster
        .wait_events(VIEW, total - 1, Duration::from_secs(120))
        .expect("the view consumes the last changes");
    let third = cluster
        .nodes()
        .find(|n| n.region == "us-east" && n.id != id && n.id != lagging)
        .map(|n| n.grpc.clone())
        .expect("a third node");
    let end = oracle_seq(&rt, &third, &g);
    follow_to(&rt, &mut sub, &mut copy, end);
    assert_ne!(
        sub.node(),
        Some(streaming.as_str()),
        "resumed on another node"
    );
    assert_eq!(
        sub.snapshots(),
        1,
        "resumed from its position, without a new snapshot"
    );
    assert_eq!(
        copy.as_oracle(),
        meridian_tests::orders_oracle(&g),
        "after the resume"
    );

    cluster.restart_node("us-east", id);
    converge_to_oracle(&rt, &cluster, &g, total, "after the restart");
}

/// The view's seq once the replica of the node at `grpc` equals the oracle.
fn oracle_seq(rt: &tokio::runtime::Runtime, grpc: &str, g: &OrdersGenerator) -> u64 {
    let expected = meridian_tests::orders_oracle(g);
    let node = rt
        .block_on(client::Client::connect([grpc.to_string()]))
        .expect("client");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let r = rt
            .block_on(node.query(&format!(
                "SELECT {} FROM {VIEW} ORDER BY ALL",
                meridian_tests::ORDERS_COLUMNS
            )))
            .expect("the node answers");
        let rows: Vec<meridian_tests::Row> = r
            .rows
            .iter()
            .map(|row| row.iter().map(meridian_tests::text).collect())
            .collect();
        if rows == expected {
            return r.position(VIEW).expect("the view's position");
        }
        assert!(
            Instant::now() < deadline,
            "{grpc} does not reach the oracle"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}
