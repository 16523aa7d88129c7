//! Chaos: a regional node crashes (a panic at a failpoint, which exits the process) at each
//! step of Raft Ready handling and of snapshot install, one test per step. Restarted without
//! the failpoint, it must start (raft-rs refuses to when the replica is ahead of the durable
//! commit index) and every replica must end equal to the oracle.

use std::time::{Duration, Instant};

use meridian::sample::OrdersGenerator;
use meridian_tests::{
    changes, converge_to_oracle, orders_cluster_with, produce, runtime, Cluster, Workdir,
};

fn first_log_index(cluster: &Cluster<'_>, region: &str, except: u64) -> u64 {
    cluster
        .region_nodes(region)
        .iter()
        .filter(|n| n["node_id"] != except)
        .map(|n| n["log_first_index"].as_u64().unwrap_or(0))
        .min()
        .unwrap_or(0)
}

fn commit_index(cluster: &Cluster<'_>, region: &str, id: u64) -> u64 {
    cluster
        .region_nodes(region)
        .iter()
        .find(|n| n["node_id"] == id)
        .and_then(|n| n["commit_index"].as_u64())
        .unwrap_or(0)
}

/// Crashes a follower of eu-west at `point`, restarts it, and checks every replica.
/// `snapshot`: the follower is first left behind the compacted log, so that it is sent a
/// snapshot (the snapshot failpoints are on that path).
fn crash_at(point: &str, snapshot: bool) {
    let rt = runtime();
    let work = Workdir::new(&format!("chaos-crash-{point}"));
    let region_args: &[&str] = if snapshot {
        &["--raft-log-retain", "2"]
    } else {
        &[]
    };
    let (broker, mut cluster) = orders_cluster_with(&rt, &work, region_args, &[]);
    let mut g = OrdersGenerator::new(point.len() as u64 * 7919);
    let first = changes(&mut g, 500);
    produce(&rt, &broker.addr, "orders", &first);
    let mut total = first.len() as u64;
    converge_to_oracle(&rt, &cluster, &g, total, "before the crash");

    let id = cluster.follower("eu-west").expect("a follower");
    let behind = commit_index(&cluster, "eu-west", id);
    cluster.kill_node("eu-west", id);
    let deadline = Instant::now() + Duration::from_secs(120);
    if snapshot {
        // Bursts of batches until the live nodes compacted past what the follower has.
        let mut bursts = 0;
        while bursts < 10 || first_log_index(&cluster, "eu-west", id) <= behind + 1 {
            assert!(
                Instant::now() < deadline,
                "the live nodes never compacted past {behind}"
            );
            let burst = changes(&mut g, 100);
            total += burst.len() as u64;
            produce(&rt, &broker.addr, "orders", &burst);
            bursts += 1;
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    let failpoint = format!("{point}=1*panic");
    cluster.restart_node_env(
        "eu-west",
        id,
        &[("MERIDIAN_FAILPOINTS", failpoint.as_str())],
    );
    // Traffic until the node reaches the failpoint and its process exits.
    while cluster.node_running("eu-west", id) {
        assert!(
            Instant::now() < deadline,
            "the node never reached failpoint {point}"
        );
        let burst = changes(&mut g, 100);
        total += burst.len() as u64;
        produce(&rt, &broker.addr, "orders", &burst);
        std::thread::sleep(Duration::from_millis(200));
    }
    let log = work.log_text(&format!("eu-west-{id}"));
    assert!(
        log.contains("raft thread panicked"),
        "the node stopped at the failpoint:\n{log}"
    );
    eprintln!("eu-west/{id} crashed at {point}");
    cluster.restart_node("eu-west", id);
    let more = changes(&mut g, 500);
    produce(&rt, &broker.addr, "orders", &more);
    total += more.len() as u64;
    converge_to_oracle(
        &rt,
        &cluster,
        &g,
        total,
        &format!("after a crash at {point}"),
    );
}

#[test]
fn crash_before_persisting_a_ready() {
    crash_at("ready-before-persist", false);
}

#[test]
fn crash_after_persisting_a_ready() {
    crash_at("ready-after-persist", false);
}

#[test]
fn crash_after_applying_a_ready() {
    crash_at("ready-after-apply", false);
}

#[test]
fn crash_after_applying_a_light_ready() {
    crash_at("light-after-apply", false);
}

#[test]
fn crash_before_restoring_a_snapshot() {
    crash_at("snapshot-before-restore", true);
}

#[test]
fn crash_between_snapshot_restore_and_log_reset() {
    crash_at("snapshot-after-restore", true);
}

#[test]
fn crash_after_a_snapshot_reset_the_log() {
    crash_at("snapshot-after-log-reset", true);
}
