//! On demand: how fresh a regional read is, one event at a time through the broker.

use std::time::{Duration, Instant};

use meridian::sample;
use meridian_tests::{create_topic, http, runtime, urlencode, Broker, Cluster, Workdir};

/// On demand (a measurement, not a check): freshness, one event at a time, from the producer's
/// send to the event being visible in a regional HTTP read, through the real broker. Two
/// views count the same topic: one with Meridian's consumer defaults, one with librdkafka's
/// `fetch.wait.max.ms=500` (the setting before), as the baseline of the same run.
/// `MERIDIAN_FRESHNESS_EVENTS` (default 100).
#[test]
#[ignore = "a measurement; run with --ignored --nocapture"]
fn freshness_of_one_event_at_a_time() {
    let n: usize = std::env::var("MERIDIAN_FRESHNESS_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let rt = runtime();
    let work = Workdir::new("e2e-freshness");
    let broker = Broker::start(&work);
    rt.block_on(create_topic(&broker.addr, "ticks", 1))
        .expect("create topic");
    let cluster = Cluster::start(&work);
    cluster
        .wait_ready(Duration::from_secs(60))
        .expect("regions elect leaders");
    let views = [
        ("n_default", ""),
        ("n_500", ", properties='fetch.wait.max.ms=500'"),
    ];
    for (view, props) in views {
        let stream = format!("{view}_src");
        cluster
            .sql(&format!("CREATE EXTERNAL STREAM {stream}(v int64) SETTINGS type='kafka', brokers='{}', topic='ticks', data_format='JSONEachRow'{props}", broker.addr))
            .expect("stream");
        cluster
            .sql(&format!(
                "CREATE MATERIALIZED VIEW {view} AS SELECT count() AS n FROM {stream}"
            ))
            .expect("view");
    }
    let node = cluster.node_of("eu-west", 1).http.clone();
    let count = |view: &str| -> Option<u64> {
        let q = urlencode(&format!("SELECT n FROM {view}"));
        let (code, body) = http(
            "GET",
            &node,
            &format!("/?query={q}&default_format=TabSeparated"),
            "",
        )
        .ok()?;
        (code == 200).then(|| body.trim().parse().ok()).flatten()
    };
    // Warm up: both views exist on the node and have counted a first event.
    let producer = sample::producer(&broker.addr).expect("producer");
    let event = |i: usize| sample::Event {
        key: format!("k{i}"),
        value: Some(format!(r#"{{"v":{i}}}"#)),
    };
    rt.block_on(sample::produce(&producer, "ticks", &[event(0)]))
        .expect("produce");
    let deadline = Instant::now() + Duration::from_secs(120);
    while views.iter().any(|(v, _)| count(v) != Some(1)) {
        assert!(
            Instant::now() < deadline,
            "the views never counted the first event"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut lat: Vec<Vec<f64>> = vec![Vec::new(), Vec::new()];
    let (mut reads, mut reading) = (0u32, Duration::ZERO);
    for i in 1..=n {
        let sent = Instant::now();
        rt.block_on(sample::produce(&producer, "ticks", &[event(i)]))
            .expect("produce");
        let mut seen = [false, false];
        while !seen.iter().all(|s| *s) {
            for (k, (view, _)) in views.iter().enumerate() {
                let t = Instant::now();
                let c = if seen[k] { None } else { count(view) };
                reading += t.elapsed();
                reads += 1;
                if !seen[k] && c == Some(i as u64 + 1) {
                    seen[k] = true;
                    lat[k].push(sent.elapsed().as_secs_f64() * 1000.0);
                }
            }
            assert!(
                sent.elapsed() < Duration::from_secs(30),
                "event {i} never became visible"
            );
        }
    }
    eprintln!(
        "a read takes {:.1} ms on average ({reads} reads)",
        reading.as_secs_f64() * 1000.0 / f64::from(reads.max(1))
    );
    for (k, (view, props)) in views.iter().enumerate() {
        let l = &mut lat[k];
        l.sort_by(f64::total_cmp);
        let pct = |p: f64| l[((l.len() as f64 * p).ceil() as usize).clamp(1, l.len()) - 1];
        eprintln!(
            "freshness {view}{}: {} events, p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
            if props.is_empty() {
                " (defaults)"
            } else {
                " (fetch.wait.max.ms=500)"
            },
            l.len(),
            pct(0.5),
            pct(0.99),
            pct(1.0)
        );
    }
    // The views are quiet now: how stale does a read say it may be, while the central tier
    // vouches for them?
    let view = views[0].0;
    let mut stale = Vec::new();
    for _ in 0..50 {
        let q = urlencode(&format!("SELECT n FROM {view}"));
        if let Ok((200, body)) = http(
            "GET",
            &node,
            &format!("/?query={q}&default_format=JSON"),
            "",
        ) {
            let json: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            if let Some(s) = json["meridian"]["positions"]
                .as_array()
                .and_then(|ps| ps.iter().find(|p| p["view"] == view))
                .and_then(|p| p["staleness_ms"].as_f64())
            {
                stale.push(s);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    stale.sort_by(f64::total_cmp);
    if !stale.is_empty() {
        let pct =
            |p: f64| stale[((stale.len() as f64 * p).ceil() as usize).clamp(1, stale.len()) - 1];
        eprintln!(
            "staleness of the quiet view {view} ({} reads, 100 ms apart): p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
            stale.len(),
            pct(0.5),
            pct(0.99),
            pct(1.0)
        );
    }
}
