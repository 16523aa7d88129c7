//! Network faults against real processes: a region of three nodes, each in its own network
//! namespace, fed by a central worker and a coordinator in the test's namespace. Two
//! scenarios, each checked to have really cut the traffic it meant to cut:
//! - **minority**: the region's leader is cut off from its two peers (the central tier still
//!   reaches it); the majority elects a new leader and keeps applying, the cut-off node refuses
//!   linearizable reads, and after healing it catches up;
//! - **region cut off**: the central tier cannot reach the region (pushes and status reports
//!   dropped) while the region's nodes still talk to each other; the region stops moving and
//!   says so (its staleness grows), and after healing it catches up;
//! - **slow, lossy links**: every node's link is capped at 32 kbit/s and loses 10 % of the
//!   packets it receives while changes flow; the replicas reach the oracle through it;
//! - **random**: a seeded schedule of these faults.
//!
//! A reader with a session reads throughout and counts reads that went backwards. At the end of
//! each scenario every replica equals the DuckDB oracle, and a table is printed.
//! Needs root (network namespaces, iptables).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meridian::sample::{self, OrdersGenerator};
use meridian_proto::v1::region_client::RegionClient;
use meridian_proto::v1::{NodeStatusRequest, NodeStatusResponse};
use meridian_tests::netns::Net;
use meridian_tests::{
    changes, chaos_seed, create_topic, free_port, http, meridian_bin, orders_oracle, orders_rows,
    produce, runtime, spawn, urlencode, wait_for_addr, Broker, Proc, Rng, Workdir, VIEW,
};
use serde_json::Value as Json;

const REGION: &str = "eu-west";
const GRPC: u16 = 7101;
const HTTP: u16 = 8101;
/// Steps of the seeded random schedule (each about 1 to 2.5 s).
const RANDOM_STEPS: usize = 6;
/// A slow, lossy link: its bandwidth (`tc tbf`) and the share of its packets lost.
const SLOW_RATE: &str = "32kbit";
const SLOW_LOSS: f64 = 0.1;

struct Region {
    // Fields drop in order: the processes stop before their namespaces go.
    _procs: Vec<Proc>,
    net: Net,
    coordinator: String,
    coordinator_port: u16,
}

impl Region {
    fn grpc(&self, host: usize) -> String {
        format!("http://{}:{GRPC}", self.net.ip(host))
    }

    fn http(&self, host: usize) -> String {
        format!("http://{}:{HTTP}", self.net.ip(host))
    }

    fn sql(&self, statement: &str) {
        let out = std::process::Command::new(meridian_bin())
            .args(["sql", statement])
            .env("MERIDIAN_COORDINATOR", &self.coordinator)
            .output()
            .expect("run meridian sql");
        assert!(
            out.status.success(),
            "{statement}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Each node's status as it answers now (`None`: no answer within 2 s).
    fn statuses(&self, rt: &tokio::runtime::Runtime) -> Vec<Option<NodeStatusResponse>> {
        (1..=3)
            .map(|h| {
                let url = self.grpc(h);
                rt.block_on(async {
                    tokio::time::timeout(Duration::from_secs(2), async {
                        let mut c = RegionClient::connect(url).await.ok()?;
                        c.node_status(NodeStatusRequest {}).await.ok()
                    })
                    .await
                    .ok()
                    .flatten()
                    .map(|r| r.into_inner())
                })
            })
            .collect()
    }

    fn leader(&self, rt: &tokio::runtime::Runtime) -> usize {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(h) = self
                .statuses(rt)
                .iter()
                .position(|s| s.as_ref().is_some_and(|s| s.role == "leader"))
            {
                return h + 1;
            }
            assert!(Instant::now() < deadline, "the region elects no leader");
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

fn start(rt: &tokio::runtime::Runtime, work: &Workdir, broker: &Broker) -> Region {
    let net = Net::new(3).expect("network namespaces (root, iproute2 and iptables)");
    let port = free_port();
    let coordinator = format!("http://{}:{port}", net.gateway());
    let mut procs = vec![spawn(
        work,
        "coordinator",
        std::process::Command::new(meridian_bin())
            .args([
                "coordinator",
                "--listen",
                &format!("{}:{port}", net.gateway()),
                "--data-dir",
            ])
            .arg(work.path.join("coordinator")),
    )];
    wait_for_addr(&net.gateway(), port, Duration::from_secs(20)).expect("the coordinator listens");
    procs.push(spawn(
        work,
        "central",
        std::process::Command::new(meridian_bin())
            .args([
                "central",
                "--coordinator",
                &coordinator,
                "--name",
                "central",
            ])
            .arg("--data-dir")
            .arg(work.path.join("central")),
    ));
    let peers = (1..=3)
        .map(|h| format!("{h}=http://{}:{GRPC}", net.ip(h)))
        .collect::<Vec<_>>()
        .join(",");
    for h in 1..=3 {
        let name = format!("{REGION}-{h}");
        procs.push(spawn(
            work,
            &name,
            net.command(h, &meridian_bin())
                .args([
                    "region",
                    "--region",
                    REGION,
                    "--node-id",
                    &h.to_string(),
                    "--peers",
                    &peers,
                    "--listen",
                    &format!("{}:{GRPC}", net.ip(h)),
                    "--http-listen",
                    &format!("{}:{HTTP}", net.ip(h)),
                    "--coordinator",
                    &coordinator,
                    "--data-dir",
                ])
                .arg(work.path.join(&name)),
        ));
    }
    let region = Region {
        net,
        coordinator,
        coordinator_port: port,
        _procs: procs,
    };
    region.leader(rt);
    rt.block_on(create_topic(&broker.addr, "orders", 3))
        .expect("create topic");
    region.sql(&sample::stream_ddl(&broker.addr, "orders"));
    region.sql(&sample::view_ddl(VIEW, REGION));
    region
}

/// Waits until every node's replica equals the oracle; returns how long that took.
fn converge(
    rt: &tokio::runtime::Runtime,
    region: &Region,
    g: &OrdersGenerator,
    what: &str,
) -> Duration {
    let expected = orders_oracle(g);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(180);
    for h in 1..=3 {
        let client = rt
            .block_on(client::Client::connect([region.grpc(h)]))
            .expect("client");
        loop {
            let rows = orders_rows(rt, &client).ok().map(|(rows, _)| rows);
            if rows.as_ref() == Some(&expected) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: node {h} does not reach the oracle ({} rows, the oracle {})",
                rows.map_or(0, |r| r.len()),
                expected.len()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    started.elapsed()
}

/// What the reader saw.
#[derive(Default, Debug)]
struct Seen {
    reads: u64,
    failed: u64,
    backwards: u64,
    worst_staleness_ms: i64,
}

/// What the reader saw since the last call.
fn take(seen: &Mutex<Seen>) -> Seen {
    std::mem::take(&mut *seen.lock().unwrap_or_else(|p| p.into_inner()))
}

/// Reads the view through one SDK session (monotonic reads) until `stop`, counting answers
/// that reflect an older change batch than one it already returned.
fn reader(
    urls: Vec<String>,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let rt = runtime();
        let client = rt.block_on(client::Client::connect(urls)).expect("client");
        let mut last_seq = 0;
        while !stop.load(Ordering::Relaxed) {
            let r = rt.block_on(async {
                tokio::time::timeout(
                    Duration::from_secs(10),
                    client.query(&format!("SELECT count(*) FROM {VIEW}")),
                )
                .await
            });
            let mut s = seen.lock().unwrap_or_else(|p| p.into_inner());
            match r {
                Ok(Ok(r)) => {
                    s.reads += 1;
                    let p = r.positions.iter().find(|p| p.view == VIEW);
                    let seq = p.map_or(0, |p| p.applied_seq);
                    if seq < last_seq {
                        s.backwards += 1;
                    }
                    last_seq = last_seq.max(seq);
                    let staleness = p.and_then(|p| p.staleness_ms).unwrap_or(0);
                    s.worst_staleness_ms = s.worst_staleness_ms.max(staleness);
                }
                _ => s.failed += 1,
            }
            drop(s);
            std::thread::sleep(Duration::from_millis(200));
        }
    })
}

/// The view's staleness and seq on a node, over HTTP.
fn freshness(node: &str) -> Option<(i64, u64)> {
    let q = urlencode(&format!("SELECT count(*) FROM {VIEW}"));
    let (code, body) = http("GET", node, &format!("/?query={q}&default_format=JSON"), "").ok()?;
    if code != 200 {
        return None;
    }
    let json: Json = serde_json::from_str(&body).ok()?;
    let p = json["meridian"]["positions"]
        .as_array()?
        .iter()
        .find(|p| p["view"] == VIEW)?
        .clone();
    Some((
        p["staleness_ms"].as_i64().unwrap_or(-1),
        p["applied_seq"].as_u64()?,
    ))
}

#[test]
fn cut_off_nodes_regions_and_slow_lossy_links_lose_nothing_and_catch_up() {
    let rt = runtime();
    let work = Workdir::new("chaos-partition");
    let broker = Broker::start(&work);
    let region = start(&rt, &work, &broker);
    let net = &region.net;
    let mut g = OrdersGenerator::new(2_026);
    let events = changes(&mut g, 500);
    produce(&rt, &broker.addr, "orders", &events);
    converge(&rt, &region, &g, "first load");
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let reading = reader(
        (1..=3).map(|h| region.grpc(h)).collect(),
        stop.clone(),
        seen.clone(),
    );
    let mut table = vec![];

    // Minority: the leader is cut off from its peers.
    let cut = region.leader(&rt);
    let peers: Vec<usize> = (1..=3).filter(|&h| h != cut).collect();
    for &p in &peers {
        net.cut(cut, &net.ip(p)).expect("cut");
    }
    for &p in &peers {
        assert!(
            net.is_cut(Some(cut), &net.ip(p), GRPC) && net.is_cut(Some(p), &net.ip(cut), GRPC),
            "the cut node and peer {p} still reach each other"
        );
    }
    assert!(
        net.connects_within(None, &net.ip(cut), GRPC, Duration::from_secs(10)),
        "the central tier still reaches it"
    );
    let before = freshness(&region.http(cut))
        .expect("the cut node answers")
        .1;
    let events = changes(&mut g, 300);
    produce(&rt, &broker.addr, "orders", &events);
    let scenario_events = events.len();
    // The majority elects one of its own and moves on without it; the cut node stays behind.
    let deadline = Instant::now() + Duration::from_secs(120);
    while !peers
        .iter()
        .all(|&p| freshness(&region.http(p)).is_some_and(|(_, seq)| seq > before))
    {
        assert!(Instant::now() < deadline, "the majority does not move on");
        std::thread::sleep(Duration::from_millis(300));
    }
    let statuses = region.statuses(&rt);
    assert!(
        peers
            .iter()
            .any(|&p| statuses[p - 1].as_ref().is_some_and(|s| s.role == "leader")),
        "no new leader among the majority: {statuses:?}"
    );
    assert_eq!(
        freshness(&region.http(cut))
            .expect("the cut node answers")
            .1,
        before,
        "the cut node applied a batch without its peers"
    );
    let q = urlencode(&format!("SELECT count(*) FROM {VIEW}"));
    let (code, body) = http(
        "GET",
        &region.http(peers[0]),
        &format!("/?query={q}&consistency=linearizable&max_staleness_wait_ms=5000"),
        "",
    )
    .expect("GET");
    assert_eq!(
        code, 200,
        "a majority node refused a linearizable read: {body}"
    );
    let (code, body) = http(
        "GET",
        &region.http(cut),
        &format!("/?query={q}&consistency=linearizable&max_staleness_wait_ms=1500"),
        "",
    )
    .expect("GET");
    assert_eq!(
        code, 503,
        "the cut-off node answered a linearizable read: {body}"
    );
    net.heal(cut).expect("heal");
    assert!(
        net.connects_within(Some(cut), &net.ip(peers[0]), GRPC, Duration::from_secs(10)),
        "healed"
    );
    let recovered = converge(&rt, &region, &g, "after the minority partition");
    table.push((
        "minority: leader cut from peers".to_string(),
        1,
        scenario_events,
        recovered,
        take(&seen),
    ));

    // The region cut off from the central tier: pushes and reports dropped, peers still talk.
    for h in 1..=3 {
        net.cut_port(h, &net.gateway(), GRPC).expect("cut pushes");
        net.cut_port(h, &net.gateway(), region.coordinator_port)
            .expect("cut reports");
    }
    for h in 1..=3 {
        assert!(
            net.is_cut(None, &net.ip(h), GRPC),
            "the central tier still reaches node {h}"
        );
        assert!(
            net.is_cut(Some(h), &net.gateway(), region.coordinator_port),
            "node {h} still reaches the coordinator"
        );
    }
    assert!(
        net.connects_within(Some(1), &net.ip(2), GRPC, Duration::from_secs(10)),
        "the region's peers are cut too"
    );
    // Read once the cut is in place: nothing may arrive from here on.
    let (_, seq_before) = freshness(&region.http(1)).expect("node 1 answers");
    let events = changes(&mut g, 300);
    produce(&rt, &broker.addr, "orders", &events);
    let scenario_events = events.len();
    // Nothing arrives, and the region says so: its staleness grows past 3 s.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (staleness, seq) = freshness(&region.http(1)).expect("node 1 answers over HTTP");
        assert_eq!(seq, seq_before, "a batch crossed the cut");
        if staleness > 3_000 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "staleness does not grow: {staleness} ms"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    for h in 1..=3 {
        net.heal(h).expect("heal");
    }
    assert!(
        net.connects_within(None, &net.ip(1), GRPC, Duration::from_secs(10)),
        "healed"
    );
    let recovered = converge(&rt, &region, &g, "after the region was cut off");
    table.push((
        "region cut off from the central tier".to_string(),
        3,
        scenario_events,
        recovered,
        take(&seen),
    ));

    // Slow, lossy links: every node's link (to its peers and to the central tier) is capped
    // at 32 kbit/s and loses 10 % of the packets it receives, while changes flow; the
    // replicas must reach the oracle without healing. The kernel's counters prove packets
    // were really lost.
    for h in 1..=3 {
        net.degrade(h, SLOW_RATE, SLOW_LOSS)
            .expect("tc tbf and iptables statistic");
    }
    // Timed from the first change produced: the faults stay on.
    let started = Instant::now();
    let events = changes(&mut g, 2_000);
    produce(&rt, &broker.addr, "orders", &events);
    let scenario_events = events.len();
    converge(&rt, &region, &g, "through slow, lossy links");
    let recovered = started.elapsed();
    let drops: Vec<(u64, u64)> = (1..=3).map(|h| net.degraded_drops(h)).collect();
    eprintln!(
        "slow, lossy links: packets dropped per node (at random, by the bandwidth cap): {drops:?}"
    );
    assert!(
        drops.iter().all(|(random, _)| *random > 0),
        "every node lost packets at random: {drops:?}"
    );
    table.push((
        format!(
            "slow, lossy links ({SLOW_RATE}, {}% loss, every node)",
            SLOW_LOSS * 100.0
        ),
        3,
        scenario_events,
        recovered,
        take(&seen),
    ));
    for h in 1..=3 {
        net.heal(h).expect("heal");
    }

    // Random: a seeded schedule of the faults above and of single links cut, with changes
    // flowing, then healed. MERIDIAN_CHAOS_SEED replays one.
    let seed = chaos_seed("random faults");
    let mut rng = Rng(seed);
    let mut next = |n: u64| rng.below(n);
    let (mut faults, mut produced) = (0, 0);
    for _ in 0..RANDOM_STEPS {
        for h in 1..=3 {
            net.heal(h).expect("heal");
        }
        let h = next(3) as usize + 1;
        let other = (h + next(2) as usize) % 3 + 1;
        match next(5) {
            0 => {
                for p in (1..=3).filter(|&p| p != h) {
                    net.cut(h, &net.ip(p)).expect("cut");
                }
                faults += 1;
            }
            1 => {
                net.cut(h, &net.ip(other)).expect("cut a link");
                faults += 1;
            }
            2 => {
                for n in 1..=3 {
                    net.cut_port(n, &net.gateway(), GRPC).expect("cut pushes");
                }
                faults += 1;
            }
            3 => {
                net.degrade(h, SLOW_RATE, SLOW_LOSS)
                    .expect("tc tbf and iptables statistic");
                faults += 1;
            }
            _ => {}
        }
        let events = changes(&mut g, 100);
        produce(&rt, &broker.addr, "orders", &events);
        produced += events.len();
        std::thread::sleep(Duration::from_millis(1_000 + 500 * next(4)));
    }
    for h in 1..=3 {
        net.heal(h).expect("heal");
    }
    let recovered = converge(
        &rt,
        &region,
        &g,
        &format!("after random faults (seed {seed})"),
    );
    table.push((
        format!("random, seed {seed}"),
        faults,
        produced,
        recovered,
        take(&seen),
    ));

    stop.store(true, Ordering::Relaxed);
    let _ = reading.join();
    eprintln!("\n| scenario | faults | events produced | replicas checked | lost or duplicated changes | reads (failed) | reads that went backwards | time to recover | worst staleness seen |");
    eprintln!("|---|---|---|---|---|---|---|---|---|");
    for (name, faults, produced, recovered, seen) in &table {
        eprintln!(
            "| {name} | {faults} | {produced} | 3 | 0 | {} ({}) | {} | {:.1} s | {} ms |",
            seen.reads,
            seen.failed,
            seen.backwards,
            recovered.as_secs_f64(),
            seen.worst_staleness_ms
        );
    }
    for (name, _, _, _, seen) in &table {
        assert_eq!(seen.backwards, 0, "{name}: a session's read went backwards");
        assert!(seen.reads > 0, "{name}: the reader read");
    }
}
