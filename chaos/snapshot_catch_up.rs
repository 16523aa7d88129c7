//! Chaos: a follower is down while its region's log moves on and is compacted past it. When it
//! comes back it cannot catch up from log entries; the leader sends a snapshot of its replica,
//! the follower installs it, and every replica still equals the oracle.

use std::time::{Duration, Instant};

use meridian::sample::OrdersGenerator;
use meridian_tests::{changes, converge_to_oracle, orders_cluster_with, produce, runtime, Workdir};

#[test]
fn a_follower_behind_the_compacted_log_catches_up_from_a_snapshot() {
    let rt = runtime();
    let work = Workdir::new("chaos-snapshot");
    // Keep only two entries behind the replica, so that the log is compacted quickly.
    let (broker, mut cluster) = orders_cluster_with(&rt, &work, &["--raft-log-retain", "2"], &[]);
    let leader = cluster
        .region_nodes("eu-west")
        .iter()
        .find(|n| n["role"] == "leader")
        .and_then(|n| n["node_id"].as_u64())
        .expect("eu-west has a leader");
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    // The last Raft index the follower has; the live nodes must compact their logs past it.
    let follower_last = cluster
        .region_nodes("eu-west")
        .iter()
        .find(|n| n["node_id"] == follower)
        .and_then(|n| n["commit_index"].as_u64())
        .expect("the follower reported");
    cluster.kill_node("eu-west", follower);

    // Small bursts, each a change batch, a push and a Raft entry, until the live nodes have
    // compacted away entries the follower needs (bounded: shipping may merge bursts).
    let mut g = OrdersGenerator::new(5);
    let mut total = 0u64;
    let mut bursts = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let first = cluster
            .region_nodes("eu-west")
            .iter()
            .filter(|n| n["node_id"] != follower)
            .map(|n| n["log_first_index"].as_u64().unwrap_or(0))
            .min()
            .unwrap_or(0);
        if bursts >= 10 && first > follower_last + 1 {
            break;
        }
        assert!(
            bursts < 60 && Instant::now() < deadline,
            "the live nodes never compacted past index {follower_last} (first index {first})"
        );
        let burst = changes(&mut g, 200);
        total += burst.len() as u64;
        produce(&rt, &broker.addr, "orders", &burst);
        bursts += 1;
        std::thread::sleep(Duration::from_millis(300));
    }
    cluster.restart_node("eu-west", follower);
    converge_to_oracle(&rt, &cluster, &g, total, "the follower catches up");
    let log = work.log_text(&format!("eu-west-{follower}"));
    assert!(
        log.contains("replica restored from a leader's snapshot"),
        "the follower caught up without a snapshot:\n{log}"
    );
}
