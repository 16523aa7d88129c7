//! Chaos: SIGKILL a region's Raft leader while change batches stream in, then restart it.
//! The region elects a new leader, the central worker follows the leader hint, the restarted
//! node catches up from its RocksDB log, and every replica still equals the oracle.

use std::time::{Duration, Instant};

use meridian::sample::OrdersGenerator;
use meridian_tests::{
    changes, converge_to_oracle, orders_cluster, produce, runtime, Cluster, Workdir,
};

fn leader_of(cluster: &Cluster<'_>, region: &str) -> Option<u64> {
    let s = cluster.status().ok()?;
    let r = s["regions"]
        .as_array()?
        .iter()
        .find(|r| r["region"] == region)?
        .clone();
    r["nodes"]
        .as_array()?
        .iter()
        .find(|n| n["role"] == "leader")?["node_id"]
        .as_u64()
}

#[test]
fn killing_a_region_leader_mid_stream_loses_nothing() {
    let rt = runtime();
    let work = Workdir::new("chaos-leader");
    let (broker, mut cluster) = orders_cluster(&rt, &work);

    let mut g = OrdersGenerator::new(99);
    let events = changes(&mut g, 8_000);
    let producer = {
        let (brokers, events) = (broker.addr.clone(), events.clone());
        std::thread::spawn(move || {
            let rt = runtime();
            for chunk in events.chunks(500) {
                produce(&rt, &brokers, "orders", chunk);
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    // Wait until the region has applied something, then kill its leader.
    let deadline = Instant::now() + Duration::from_secs(120);
    while cluster
        .status()
        .ok()
        .and_then(|s| s["views"][0]["seq"].as_u64())
        .unwrap_or(0)
        < 2
    {
        assert!(
            Instant::now() < deadline,
            "no change batches before the kill"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let leader = leader_of(&cluster, "eu-west").expect("eu-west has a leader");
    cluster.kill_node("eu-west", leader);
    eprintln!("killed eu-west leader {leader}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // The dead node keeps its last report for a while; wait for another node to lead.
        if leader_of(&cluster, "eu-west").is_some_and(|l| l != leader) {
            break;
        }
        assert!(Instant::now() < deadline, "eu-west elected no new leader");
        std::thread::sleep(Duration::from_millis(200));
    }
    producer.join().expect("producer");
    cluster.restart_node("eu-west", leader);
    converge_to_oracle(
        &rt,
        &cluster,
        &g,
        events.len() as u64,
        "converges after the failover",
    );
}
