//! Chaos: long pauses (SIGSTOP, then SIGCONT) while changes stream in. The coordinator paused
//! for twice the worker's lease: the worker cannot renew its lease, stops pushing once it
//! lapses, and the flow resumes when the coordinator does. A region's leader paused: the other
//! two elect a new leader and keep applying; resumed, the old leader steps down and catches up.
//! Every replica equals the DuckDB oracle after each pause.

use std::time::{Duration, Instant};

use meridian::sample::OrdersGenerator;
use meridian_tests::{changes, converge_to_oracle, orders_cluster, produce, runtime, Workdir};

const REGION: &str = "us-east";

#[test]
fn pausing_the_coordinator_or_a_region_leader_loses_nothing() {
    let rt = runtime();
    let work = Workdir::new("chaos-pauses");
    let (broker, mut cluster) = orders_cluster(&rt, &work);
    let mut g = OrdersGenerator::new(4_242);
    let events = changes(&mut g, 400);
    produce(&rt, &broker.addr, "orders", &events);
    let mut total = events.len() as u64;
    converge_to_oracle(&rt, &cluster, &g, total, "first load");

    // The coordinator paused for 8 s, twice the 4 s lease, while changes arrive.
    cluster.signal_coordinator("STOP");
    let events = changes(&mut g, 400);
    produce(&rt, &broker.addr, "orders", &events);
    total += events.len() as u64;
    std::thread::sleep(Duration::from_secs(8));
    cluster.signal_coordinator("CONT");
    converge_to_oracle(&rt, &cluster, &g, total, "after the coordinator's pause");

    // A region's leader paused while changes arrive: the others elect and move on.
    let leader = leader_of(&cluster, REGION);
    cluster.signal_node(REGION, leader, "STOP");
    let events = changes(&mut g, 400);
    produce(&rt, &broker.addr, "orders", &events);
    total += events.len() as u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // Reported by a live node of the region: another leader.
        if leader_of_reported(&cluster, REGION).is_some_and(|l| l != leader) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no new leader while {leader} is paused"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    std::thread::sleep(Duration::from_secs(3));
    cluster.signal_node(REGION, leader, "CONT");
    converge_to_oracle(&rt, &cluster, &g, total, "after the leader's pause");
}

fn leader_of(cluster: &meridian_tests::Cluster<'_>, region: &str) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(l) = leader_of_reported(cluster, region) {
            return l;
        }
        assert!(Instant::now() < deadline, "{region} has no leader");
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// The leader a node of `region` that reported recently (within 3 s) says it is.
fn leader_of_reported(cluster: &meridian_tests::Cluster<'_>, region: &str) -> Option<u64> {
    cluster
        .region_nodes(region)
        .iter()
        .filter(|n| n["report_age_ms"].as_i64().is_some_and(|a| a < 3_000))
        .find(|n| n["role"] == "leader")
        .and_then(|n| n["node_id"].as_u64())
}
