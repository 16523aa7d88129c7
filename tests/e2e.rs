//! End to end: a real Kafka-protocol broker (tansu), the coordinator, the central worker and
//! two regions of three Raft nodes, each its own process. The oracle for a view is the same SQL
//! run by DuckDB over the source table's final rows; every replica must equal it exactly.

// The view engine's and the central cluster's end-to-end tests share this binary (one link
// instead of three).
mod central;
mod config;
mod consistency;
mod deploy;
mod freshness;
mod into;
mod joins;
mod over_views;
mod peerdb;
mod replace;
mod subscribe;
mod views;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use meridian::sample::{self, OrdersGenerator};
use meridian_tests::{
    changes, check_replicas, converge_to_oracle, create_topic, http, oracle, orders_cluster,
    orders_oracle, produce, runtime, urlencode, Broker, Cluster, Workdir, CONVERGE_TIMEOUT, VIEW,
};

#[test]
fn replicas_equal_the_oracle_through_a_central_worker_crash() {
    let rt = runtime();
    let work = Workdir::new("e2e-oracle");
    let (broker, mut cluster) = orders_cluster(&rt, &work);

    // Phase 1: 10 000+ changes with updates, deletes and tombstones.
    let mut g = OrdersGenerator::new(2026);
    let events = changes(&mut g, 10_000);
    let started = Instant::now();
    produce(&rt, &broker.addr, "orders", &events);
    let seq = cluster
        .wait_converged(VIEW, events.len() as u64, CONVERGE_TIMEOUT)
        .expect("converges");
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "phase 1: {} messages produced and applied on 6 replicas in {secs:.1}s: {:.0} events/s",
        events.len(),
        events.len() as f64 / secs
    );
    check_replicas(
        &rt,
        &cluster,
        VIEW,
        "country, status, orders, revenue, with_quantity",
        &orders_oracle(&g),
        seq,
    );
    let mut total = events.len() as u64;

    // Phase 2: SIGKILL the central worker while it consumes, restart it, keep producing.
    let more = changes(&mut g, 10_000);
    let producer_thread = {
        let brokers = broker.addr.clone();
        let more = more.clone();
        std::thread::spawn(move || {
            let rt = runtime();
            for chunk in more.chunks(1_000) {
                produce(&rt, &brokers, "orders", chunk);
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    cluster
        .wait_events(VIEW, total + 2_000, Duration::from_secs(120))
        .expect("the central worker gets 2000 messages into phase 2");
    cluster.kill_central();
    // The catalog survives a coordinator restart too.
    cluster.restart_coordinator();
    std::thread::sleep(Duration::from_millis(500));
    cluster.start_central();
    producer_thread.join().expect("producer thread");
    total += more.len() as u64;
    converge_to_oracle(&rt, &cluster, &g, total, "converges after the crash");
    let status = cluster.status().expect("status");
    assert_eq!(
        status["views"][0]["events"].as_u64(),
        Some(total),
        "every message consumed exactly once across the crash: {status:#}"
    );
    let views = cluster.sql("SHOW VIEWS").expect("show views");
    assert!(views.contains(VIEW), "{views}");
}

#[test]
fn malformed_messages_are_dead_lettered_and_regions_serve_reads() {
    let rt = runtime();
    let work = Workdir::new("e2e-dlq");
    let broker = Broker::start(&work);
    for topic in ["clicks", "my_topic"] {
        rt.block_on(create_topic(&broker.addr, topic, 1))
            .expect("create topic");
    }
    let mut cluster = Cluster::start(&work);
    cluster
        .wait_ready(Duration::from_secs(60))
        .expect("regions elect leaders");

    // The design notes' statement, as written.
    let design_notes = format!("CREATE EXTERNAL STREAM frontend_events(raw string)\nSETTINGS type='kafka',\n         brokers='{}',\n         topic='my_topic';", broker.addr);
    cluster
        .sql(&design_notes)
        .expect("the design notes' stream is accepted");
    let err = cluster.sql(&format!("CREATE EXTERNAL STREAM nope(raw string) SETTINGS type='kafka', brokers='{}', topic='absent'", broker.addr)).expect_err("missing topic");
    assert!(err.contains("topic 'absent' does not exist"), "{err}");

    cluster
        .sql(&format!("CREATE EXTERNAL STREAM clicks(page string, ms int64, ok bool) SETTINGS type='kafka', brokers='{}', topic='clicks', data_format='JSONEachRow'", broker.addr))
        .expect("clicks stream");
    let err = cluster
        .sql("CREATE MATERIALIZED VIEW bad AS SELECT page, sum(pgae) FROM clicks GROUP BY page")
        .expect_err("unknown column");
    assert!(
        err.contains("unknown column 'pgae'") && err.contains("line 1, column 50"),
        "{err}"
    );
    let err = cluster
        .sql("CREATE MATERIALIZED VIEW bad AS SELECT page, sum(page) FROM clicks GROUP BY page")
        .expect_err("type mismatch");
    assert!(err.contains("needs a number"), "{err}");
    // A view without GROUP BY: one row, as SQL answers, even before any message.
    let totals_select = "SELECT count() AS n, sum(ms) AS total_ms, count(ms) AS timed FROM clicks";
    cluster
        .sql(&format!(
            "CREATE MATERIALIZED VIEW totals AS {totals_select}"
        ))
        .expect("global aggregate view");
    let view_select =
        "SELECT page, count() AS hits, sum(ms) AS total_ms FROM clicks WHERE ok GROUP BY page";
    cluster
        .sql(&format!(
            "CREATE MATERIALIZED VIEW page_hits AS {view_select}"
        ))
        .expect("view");

    let mut events = Vec::new();
    let mut rows = Vec::new();
    for i in 0..300i64 {
        if i == 100 {
            events.push(sample::Event {
                key: "k".into(),
                value: Some("this is not json".into()),
            });
        }
        if i == 200 {
            events.push(sample::Event {
                key: "k".into(),
                value: Some(r#"{"page":"/a","ms":"slow","ok":true}"#.into()),
            });
        }
        let page = ["/a", "/b", "/c", "/d"][(i % 4) as usize];
        let ms = if i % 7 == 0 {
            "null".to_string()
        } else {
            (i * 3).to_string()
        };
        let ok = i % 5 != 0;
        events.push(sample::Event {
            key: "k".into(),
            value: Some(format!(r#"{{"page":"{page}","ms":{ms},"ok":{ok}}}"#)),
        });
        rows.push(format!("('{page}', {ms}, {ok})"));
    }
    produce(&rt, &broker.addr, "clicks", &events);
    let seq = cluster
        .wait_converged("page_hits", events.len() as u64, CONVERGE_TIMEOUT)
        .expect("converges past bad messages");
    let expected = oracle(
        &[
            "CREATE TABLE clicks(page VARCHAR, ms BIGINT, ok BOOLEAN)".into(),
            format!("INSERT INTO clicks VALUES {}", rows.join(", ")),
        ],
        &format!("SELECT page, hits, total_ms FROM ({view_select}) ORDER BY ALL"),
    );
    check_replicas(
        &rt,
        &cluster,
        "page_hits",
        "page, hits, total_ms",
        &expected,
        seq,
    );
    let totals_seq = cluster
        .wait_converged("totals", events.len() as u64, CONVERGE_TIMEOUT)
        .expect("totals converge");
    let expected_totals = oracle(
        &[
            "CREATE TABLE clicks(page VARCHAR, ms BIGINT, ok BOOLEAN)".into(),
            format!("INSERT INTO clicks VALUES {}", rows.join(", ")),
        ],
        &format!("SELECT n, total_ms, timed FROM ({totals_select})"),
    );
    check_replicas(
        &rt,
        &cluster,
        "totals",
        "n, total_ms, timed",
        &expected_totals,
        totals_seq,
    );

    let status = cluster.status().expect("status");
    let view = status["views"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["view"] == "page_hits"))
        .cloned()
        .expect("view in status");
    assert_eq!(view["dead_letters"].as_u64(), Some(2), "{view:#}");
    let reasons: BTreeMap<i64, String> = view["recent_dead_letters"]
        .as_array()
        .expect("recent dead letters")
        .iter()
        .map(|d| {
            (
                d["offset"].as_i64().unwrap_or(-1),
                d["reason"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert!(
        reasons
            .get(&100)
            .is_some_and(|r| r.contains("value is not JSON")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .get(&201)
            .is_some_and(|r| r.contains("column 'ms': expected int64, got string")),
        "{reasons:?}"
    );
    let text = cluster.cli(&["status"]).expect("status text");
    assert!(
        text.contains("page_hits") && text.contains("clicks[0]@100"),
        "{text}"
    );

    // HTTP, chDB style.
    let node = cluster.nodes().next().expect("a node").http.clone();
    let (code, metrics) = http("GET", &node, "/metrics", "").expect("metrics");
    assert_eq!(code, 200);
    let applied = format!(
        "meridian_view_applied_seq{{region=\"eu-west\",node=\"1\",view=\"page_hits\"}} {seq}"
    );
    assert!(
        metrics.lines().any(|l| l == applied),
        "{applied} not in:\n{metrics}"
    );
    let q = urlencode("SELECT page, hits FROM page_hits ORDER BY page");
    let (code, body) = http(
        "GET",
        &node,
        &format!("/?query={q}&default_format=JSONCompact"),
        "",
    )
    .expect("GET");
    assert_eq!(code, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).expect("JSONCompact is JSON");
    assert_eq!(
        json["meta"][1],
        serde_json::json!({"name": "hits", "type": "Int64"})
    );
    assert_eq!(json["rows"], 4);
    // The body says which change batch of each view it reflects.
    let position = json["meridian"]["positions"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["view"] == "page_hits"))
        .cloned()
        .expect("page_hits' position in the body");
    assert!(
        position["applied_seq"].as_u64().is_some_and(|s| s > 0)
            && position["epoch"].as_u64().is_some_and(|e| e > 0),
        "{position}"
    );
    let expected_a_hits = expected
        .iter()
        .find(|r| r[0] == "/a")
        .map(|r| r[1].clone())
        .expect("/a in oracle");
    assert_eq!(json["data"][0], serde_json::json!(["/a", expected_a_hits]));
    let (code, body) = http(
        "POST",
        &node,
        "/?default_format=CSV",
        "SELECT page, hits FROM page_hits ORDER BY page LIMIT 1",
    )
    .expect("POST");
    assert_eq!(
        (code, body.as_str()),
        (200, format!("\"/a\",{expected_a_hits}\n").as_str())
    );
    let (code, body) = http(
        "POST",
        &node,
        "/?default_format=JSONEachRow",
        "SELECT page FROM page_hits ORDER BY page LIMIT 2",
    )
    .expect("POST");
    assert_eq!(
        (code, body.as_str()),
        (200, "{\"page\":\"/a\"}\n{\"page\":\"/b\"}\n")
    );
    // Ready for reads, as a load balancer asks.
    let (code, body) = http("GET", &node, "/replicas_status", "").expect("replicas_status");
    assert_eq!((code, body.as_str()), (200, "Ok.\n"));
    // A trailing FORMAT wins over default_format, as in ClickHouse; dates and decimals read
    // as ClickHouse prints them.
    let (code, body) = http(
        "POST",
        &node,
        "/?default_format=CSV",
        "SELECT DATE '2024-01-01' AS d, 1.5::DECIMAL(10,2) AS x FORMAT JSONEachRow;",
    )
    .expect("POST");
    assert_eq!(
        (code, body.as_str()),
        (200, "{\"d\":\"2024-01-01\",\"x\":\"1.50\"}\n")
    );
    for (method, path, body, words) in [
        ("GET", "/?query=".to_string(), "", "Query not found"),
        (
            "POST",
            "/".to_string(),
            "DELETE FROM page_hits",
            "read-only",
        ),
        ("POST", "/".to_string(), "SELEC 1", "syntax error"),
        (
            "POST",
            "/".to_string(),
            "SELECT * FRM page_hits",
            "syntax error",
        ),
        (
            "POST",
            "/".to_string(),
            "SELECT nope FROM page_hits",
            "nope",
        ),
        (
            "GET",
            format!("/?query={q}&default_format=PrettyCompact"),
            "",
            "Unknown output format",
        ),
    ] {
        let (code, text) = http(method, &node, &path, body).expect("request");
        assert_eq!(code, 400, "{method} {path} {body}: {text}");
        assert!(
            text.to_lowercase().contains(&words.to_lowercase()),
            "{method} {path} {body}: {text}"
        );
    }
    let (_, body) = http(
        "GET",
        &node,
        &format!(
            "/?query={}&default_format=CSV",
            urlencode("SELECT count(*) FROM page_hits")
        ),
        "",
    )
    .expect("GET");
    assert_eq!(body.trim(), "4", "the refused DELETE changed nothing");

    // DROP and CREATE under the same name, with other columns: the replicas start over.
    cluster
        .sql("DROP MATERIALIZED VIEW page_hits")
        .expect("drop");
    let recreated = "SELECT page, count() AS hits FROM clicks GROUP BY page";
    cluster
        .sql(&format!(
            "CREATE MATERIALIZED VIEW page_hits AS {recreated}"
        ))
        .expect("create again");
    let seq = cluster
        .wait_converged("page_hits", events.len() as u64, CONVERGE_TIMEOUT)
        .expect("the new view converges");
    let expected_again = oracle(
        &[
            "CREATE TABLE clicks(page VARCHAR, ms BIGINT, ok BOOLEAN)".into(),
            format!("INSERT INTO clicks VALUES {}", rows.join(", ")),
        ],
        &format!("SELECT page, hits FROM ({recreated}) ORDER BY ALL"),
    );
    check_replicas(&rt, &cluster, "page_hits", "*", &expected_again, seq);

    // Only the leader takes change batches; a follower names the leader.
    let view_id = cluster.status().expect("status")["views"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["view"] == "page_hits"))
        .and_then(|v| v["view_id"].as_u64())
        .expect("the view's id");
    let answers: Vec<(String, meridian_proto::v1::PushResponse)> = rt.block_on(async {
        let mut out = Vec::new();
        for url in cluster.region_endpoints("eu-west") {
            let mut c = meridian_proto::v1::region_client::RegionClient::connect(url.clone())
                .await
                .expect("connect");
            let column = |name: &str, ty: &str| meridian_proto::v1::ColumnSchema {
                name: name.into(),
                r#type: ty.into(),
            };
            let schema = meridian_proto::v1::ViewSchema {
                view: "page_hits".into(),
                view_id,
                // As the re-created view defines it.
                columns: vec![column("page", "string"), column("hits", "int64")],
                key_indexes: vec![0],
            };
            // A push whose schema is not the catalog's is refused, not applied.
            let wrong = meridian_proto::v1::ViewSchema {
                columns: vec![column("page", "string"), column("hits", "string")],
                ..schema.clone()
            };
            match c
                .push(meridian_proto::v1::PushRequest {
                    schema: Some(wrong),
                    ..Default::default()
                })
                .await
            {
                Ok(r) => assert!(
                    r.into_inner().not_leader.is_some(),
                    "{url} took a wrong schema"
                ),
                Err(status) => {
                    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}")
                }
            }
            let resp = c
                .push(meridian_proto::v1::PushRequest {
                    schema: Some(schema),
                    ..Default::default()
                })
                .await
                .expect("push answered");
            out.push((url, resp.into_inner()));
        }
        out
    });
    let leaders: Vec<&String> = answers
        .iter()
        .filter(|(_, r)| r.not_leader.is_none())
        .map(|(u, _)| u)
        .collect();
    assert_eq!(leaders.len(), 1, "{answers:?}");
    for (url, r) in &answers {
        if let Some(nl) = &r.not_leader {
            assert_eq!(&nl.leader_addr, leaders[0], "{url} names the leader");
        } else {
            assert_eq!(
                r.applied_seq, seq,
                "the leader answers with the region's position"
            );
        }
    }

    // The SDK goes to another node of the region when one is down.
    let endpoints = cluster.region_endpoints("eu-west");
    cluster.kill_node("eu-west", 1);
    let r = rt
        .block_on(async {
            client::Client::connect(endpoints)
                .await
                .expect("client")
                .query("SELECT sum(hits) AS n FROM page_hits")
                .await
        })
        .expect("a live node answers");
    assert_ne!(r.node_id, 1);
    assert_eq!(r.rows.len(), 1);

    // DROP removes the view's table from every live replica.
    cluster
        .sql("DROP MATERIALIZED VIEW page_hits")
        .expect("drop");
    let deadline = Instant::now() + Duration::from_secs(60);
    for node in cluster
        .nodes()
        .filter(|n| !(n.region == "eu-west" && n.id == 1))
    {
        loop {
            let sql =
                urlencode("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'page_hits'");
            let (_, body) = http(
                "GET",
                &node.http,
                &format!("/?query={sql}&default_format=CSV"),
                "",
            )
            .expect("GET");
            if body.trim() == "0" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{}/{} still has the dropped view's table",
                node.region,
                node.id
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    // Freshness: the central tier vouches for a quiet view, so a read can tell "no news"
    // from "behind". Once no news can come (the central worker is killed), the view's
    // vouched time stays put and its staleness only grows.
    let node = cluster
        .nodes()
        .find(|n| !(n.region == "eu-west" && n.id == 1))
        .expect("a live node")
        .http
        .clone();
    let fresh_of = |node: &str| -> (i64, i64) {
        let q = urlencode("SELECT n FROM totals");
        let (code, body) =
            http("GET", node, &format!("/?query={q}&default_format=JSON"), "").expect("GET");
        assert_eq!(code, 200, "{body}");
        let json: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        let p = json["meridian"]["positions"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["view"] == "totals"))
            .cloned()
            .expect("totals' position in the body");
        (
            p["fresh_at_ms"].as_i64().unwrap_or(0),
            p["staleness_ms"].as_i64().unwrap_or(-1),
        )
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let first = loop {
        let (fresh_at, staleness) = fresh_of(&node);
        if fresh_at > 0 {
            assert!(staleness >= 0, "a vouched view has a staleness");
            break fresh_at;
        }
        assert!(
            Instant::now() < deadline,
            "the quiet view is never vouched for"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    // No message arrives meanwhile, and the view is vouched for again, later.
    loop {
        if fresh_of(&node).0 > first {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the quiet view is not vouched for again"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    cluster.kill_central();
    // Pushes already on their way land first.
    std::thread::sleep(Duration::from_secs(3));
    let (f1, s1) = fresh_of(&node);
    std::thread::sleep(Duration::from_millis(1_500));
    let (f2, s2) = fresh_of(&node);
    assert_eq!(
        f1, f2,
        "nobody vouches for the view without a central worker"
    );
    assert!(s1 >= 0 && s2 > s1, "staleness grows: {s1} ms, then {s2} ms");
    // Probes see it: `status --check` fails naming the view once it is past the bound.
    let deadline = Instant::now() + Duration::from_secs(30);
    let why = loop {
        match cluster.cli(&["status", "--check", "--max-staleness-ms", "2000"]) {
            Err(why) => break why,
            Ok(out) => assert!(Instant::now() < deadline, "the check keeps passing: {out}"),
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(
        why.contains("view 'totals' is") && why.contains("behind its source (bound 2000 ms)"),
        "{why}"
    );
    // Bounded staleness: served within the bound, refused with the reason past it (the last
    // word is more than 3 s old by now).
    let q = urlencode("SELECT n FROM totals");
    let (code, body) = http(
        "GET",
        &node,
        &format!("/?query={q}&default_format=CSV&max_staleness_ms=3600000"),
        "",
    )
    .expect("GET");
    assert_eq!(code, 200, "{body}");
    let (code, body) = http(
        "GET",
        &node,
        &format!("/?query={q}&default_format=CSV&max_staleness_ms=1000&max_staleness_wait_ms=300"),
        "",
    )
    .expect("GET");
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("'totals' is") && body.contains("behind its source"),
        "{body}"
    );
    // The same through the SDK: every live node is too stale, so the read fails with the
    // reason; a loose bound is served.
    let bounded = |max: Duration| {
        rt.block_on(async {
            client::Client::connect(cluster.region_endpoints("us-east"))
                .await
                .expect("client")
                .query_with(
                    "SELECT n FROM totals",
                    &client::QueryOptions {
                        max_staleness: Some(max),
                        max_staleness_wait: Some(Duration::from_millis(300)),
                        ..Default::default()
                    },
                )
                .await
        })
    };
    let err = bounded(Duration::from_secs(1)).expect_err("no node is fresh enough");
    assert!(err.to_string().contains("behind its source"), "{err}");
    let r = bounded(Duration::from_secs(3_600)).expect("a loose bound is served");
    assert_eq!(r.rows.len(), 1);
}
