//! Chaos: a crash loop. Under a steady stream of changes, regional nodes are SIGKILLed at
//! seeded random moments and restarted, at least 50 times across both regions (one node of a
//! region down at a time, so the region keeps a quorum). Every node must come back each time,
//! and at the end every replica must equal the oracle. `MERIDIAN_CHAOS_SEED` replays a run.

use std::time::{Duration, Instant};

use meridian::sample::OrdersGenerator;
use meridian_tests::{
    changes, chaos_seed, converge_to_oracle, orders_cluster, produce, runtime, Rng, Workdir,
    REGIONS,
};

/// Kills in one run: the issue asks for at least 50.
const KILLS: usize = 50;

#[test]
fn regional_nodes_killed_fifty_times_under_a_stream_all_restart_and_equal_the_oracle() {
    let seed = chaos_seed("crash loop");
    let mut rng = Rng(seed);
    let rt = runtime();
    let work = Workdir::new("chaos-crash-loop");
    let (broker, mut cluster) = orders_cluster(&rt, &work);
    // The stream: bursts of changes for as long as the kills go on (bounded).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let producer = {
        let brokers = broker.addr.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            /// Bursts at most, should the kills take far longer than planned.
            const BURSTS_MAX: usize = 1_000;
            let rt = runtime();
            let mut g = OrdersGenerator::new(seed);
            let mut sent = 0u64;
            for _ in 0..BURSTS_MAX {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let burst = changes(&mut g, 200);
                produce(&rt, &brokers, "orders", &burst);
                sent += burst.len() as u64;
                std::thread::sleep(Duration::from_millis(100));
            }
            (g, sent)
        })
    };

    let started = Instant::now();
    for kill in 0..KILLS {
        let region = REGIONS[rng.below(REGIONS.len() as u64) as usize];
        let id = rng.below(3) + 1;
        std::thread::sleep(Duration::from_millis(50 + rng.below(400)));
        cluster.kill_node(region, id);
        std::thread::sleep(Duration::from_millis(rng.below(300)));
        cluster.restart_node(region, id);
        // The restarted process must still be running a moment later: a node that cannot
        // start (a panic on its recovered state) exits at once.
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            cluster.node_running(region, id),
            "kill {kill}: {region}/{id} did not survive its restart (seed {seed}):\n{}",
            work.log_text(&format!("{region}-{id}"))
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    eprintln!("{KILLS} kills in {:?}", started.elapsed());
    let (g, total) = producer.join().expect("producer");
    eprintln!("{total} changes produced during the kills");
    converge_to_oracle(
        &rt,
        &cluster,
        &g,
        total,
        &format!("after {KILLS} kills (seed {seed})"),
    );
}
