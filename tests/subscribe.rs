//! Subscriptions against real processes: a subscriber's copy of a view equals the oracle,
//! every batch follows the last one, and a subscription resumes on another node (one that was
//! behind included) without going back and without a new snapshot; the same snapshot over
//! HTTP as JSONEachRow lines.

use std::time::{Duration, Instant};

use meridian::sample::OrdersGenerator;
use meridian_tests::{
    changes, converge_to_oracle, orders_cluster, produce, runtime, Workdir, VIEW,
};
use serde_json::Value as Json;

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
    let seq = converge_to_oracle(&rt, &cluster, &g, total, "after the restart");

    // Several hundred subscribers on one node: each starts with a snapshot, then follows the
    // same changes to the oracle's rows. The time is a figure, not a bound.
    const SUBSCRIBERS: usize = 300;
    let one = rt
        .block_on(client::Client::connect([third.clone()]))
        .expect("client");
    let started = Instant::now();
    let mut many: Vec<(client::Subscription, Copy)> = (0..SUBSCRIBERS)
        .map(|_| (one.subscribe(VIEW), Copy::default()))
        .collect();
    for (sub, copy) in &mut many {
        follow_to(&rt, sub, copy, seq);
    }
    let more = changes(&mut g, 300);
    produce(&rt, &broker.addr, "orders", &more);
    total += more.len() as u64;
    let end = cluster
        .wait_converged(VIEW, total, meridian_tests::CONVERGE_TIMEOUT)
        .expect("the last changes converge");
    let want = meridian_tests::orders_oracle(&g);
    for (sub, copy) in &mut many {
        follow_to(&rt, sub, copy, end);
        assert_eq!(
            copy.as_oracle(),
            want,
            "every subscriber ends at the oracle"
        );
        assert_eq!(sub.node(), Some(third.as_str()), "all on the one node");
    }
    eprintln!(
        "{SUBSCRIBERS} subscribers on one node: snapshot and {} batches each in {:?}",
        end - seq,
        started.elapsed()
    );
}

/// The view's seq once the replica of the node at `grpc` equals the oracle.
fn oracle_seq(rt: &tokio::runtime::Runtime, grpc: &str, g: &OrdersGenerator) -> u64 {
    let expected = meridian_tests::orders_oracle(g);
    let node = rt
        .block_on(client::Client::connect([grpc.to_string()]))
        .expect("client");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (rows, seq) = meridian_tests::orders_rows(rt, &node).expect("the node answers");
        if rows == expected {
            return seq.expect("the view's position");
        }
        assert!(
            Instant::now() < deadline,
            "{grpc} does not reach the oracle"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}
