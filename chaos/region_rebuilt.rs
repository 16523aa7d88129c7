//! Chaos: a whole region loses its disks while the central worker keeps only a short change
//! log. The rebuilt region is resynchronised with one full batch (every row of the view), then
//! follows the change log again, and every replica equals the oracle.

use std::time::Duration;

use meridian::sample::OrdersGenerator;
use meridian_tests::{
    changes, converge_to_oracle, orders_cluster_with, produce, runtime, Workdir, CONVERGE_TIMEOUT,
    VIEW,
};

#[test]
fn a_region_rebuilt_from_scratch_is_resynchronised_with_a_full_batch() {
    let rt = runtime();
    let work = Workdir::new("chaos-rebuilt");
    // Keep one change batch behind the slowest region.
    let (broker, mut cluster) = orders_cluster_with(&rt, &work, &[], &["--change-log-retain", "1"]);
    let mut g = OrdersGenerator::new(11);
    let mut total = 0u64;
    for _ in 0..6 {
        let burst = changes(&mut g, 500);
        total += burst.len() as u64;
        produce(&rt, &broker.addr, "orders", &burst);
        std::thread::sleep(Duration::from_millis(300));
    }
    let seq = cluster
        .wait_converged(VIEW, total, CONVERGE_TIMEOUT)
        .expect("converges");
    // 3 000 messages make at least two batches (a batch takes at most 2 000), so batch 1 is
    // truncated once both regions acknowledged batch 2.
    assert!(
        seq >= 2,
        "several change batches, so that the log was truncated (seq {seq})"
    );

    // Wait for the central worker to truncate its change log, then rebuild a region.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while cluster
        .status()
        .ok()
        .and_then(|s| s["views"][0]["log_first_seq"].as_u64())
        .unwrap_or(0)
        < 2
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the change log was never truncated"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    cluster.wipe_region("us-east");
    cluster
        .wait_ready(Duration::from_secs(60))
        .expect("the rebuilt region elects a leader");
    converge_to_oracle(&rt, &cluster, &g, total, "the rebuilt region catches up");

    assert!(
        work.log_text("central-1").contains("sending a full batch"),
        "the region was not resynchronised with a full batch"
    );

    // And it follows the change log again afterwards.
    let burst = changes(&mut g, 2_000);
    total += burst.len() as u64;
    produce(&rt, &broker.addr, "orders", &burst);
    converge_to_oracle(&rt, &cluster, &g, total, "converges again");
}
