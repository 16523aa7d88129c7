//! `CREATE OR REPLACE MATERIALIZED VIEW` end to end: the sample view is replaced by another
//! query (other columns, another key) while a reader on every regional node queries it without
//! pause. Each answer must be the old view's rows or the new view's, whole: never an error (the
//! view missing between the two), never a mix, and never the old one again after the new one.
//! Afterwards more changes flow and every replica must equal the new query's oracle.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use meridian::sample::OrdersGenerator;
use meridian_tests::{
    changes, check_replicas, converge_to_oracle, oracle, orders_cluster, orders_oracle,
    orders_setup, produce, rows_text, runtime, Row, Workdir, CONVERGE_TIMEOUT, VIEW,
};

const NEW_SELECT: &str = "SELECT status, count() AS orders, sum(amount) AS revenue, max(amount) AS top FROM orders GROUP BY status";
const NEW_COLUMNS: &str = "status, orders, revenue, top";
const NEW_ORACLE: &str =
    "SELECT status, count(*), sum(amount), max(amount) FROM orders GROUP BY ALL ORDER BY ALL";

/// What one node's reader saw: answers equal to the old rows, then to the new rows, and
/// anything else (as text, for the failure message).
#[derive(Default, Debug)]
struct Seen {
    old: u64,
    new: u64,
    old_after_new: u64,
    other: Vec<String>,
}

/// Queries `SELECT *` of the view on one node until `stop`, sorting each answer into `Seen`.
fn read_until(
    node: String,
    old: Vec<Row>,
    new: Vec<Row>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Seen> {
    std::thread::spawn(move || {
        let rt = runtime();
        let mut seen = Seen::default();
        rt.block_on(async {
            let c = client::Client::connect([node.clone()])
                .await
                .expect("client");
            while !stop.load(Ordering::Relaxed) {
                match c.query(&format!("SELECT * FROM {VIEW} ORDER BY ALL")).await {
                    Ok(r) if rows_text(&r) == old => {
                        seen.old += 1;
                        if seen.new > 0 {
                            seen.old_after_new += 1;
                        }
                    }
                    Ok(r) if rows_text(&r) == new => seen.new += 1,
                    Ok(r) if seen.other.len() < 5 => seen.other.push(format!(
                        "{node}: {} rows, first {:?}",
                        r.rows.len(),
                        rows_text(&r).first()
                    )),
                    Ok(_) => {}
                    Err(e) if seen.other.len() < 5 => seen.other.push(format!("{node}: {e}")),
                    Err(_) => {}
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        seen
    })
}

#[test]
fn a_replaced_view_switches_every_replica_at_once() {
    let rt = runtime();
    let work = Workdir::new("e2e-replace");
    let (broker, cluster) = orders_cluster(&rt, &work);
    let mut g = OrdersGenerator::new(4242);
    let events = changes(&mut g, 3_000);
    produce(&rt, &broker.addr, "orders", &events);
    converge_to_oracle(&rt, &cluster, &g, events.len() as u64, "before");

    // The source is still while the view is replaced: the old view and the new one each have
    // exactly one right answer.
    let old = orders_oracle(&g);
    let new = oracle(&orders_setup(&g), NEW_ORACLE);
    assert_ne!(old.len(), new.len());
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = cluster
        .nodes()
        .map(|n| read_until(n.grpc.clone(), old.clone(), new.clone(), stop.clone()))
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let said = cluster
        .sql(&format!(
            "CREATE OR REPLACE MATERIALIZED VIEW {VIEW} AS {NEW_SELECT} SETTINGS regions='eu-west,us-east'"
        ))
        .expect("replace");
    assert!(said.contains("replaced materialized view"), "{said}");
    let seq = cluster
        .wait_converged(VIEW, events.len() as u64, CONVERGE_TIMEOUT)
        .expect("the new view reaches every replica");
    check_replicas(&rt, &cluster, VIEW, NEW_COLUMNS, &new, seq);
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    for (node, r) in cluster.nodes().zip(readers) {
        let seen = r.join().expect("reader");
        eprintln!(
            "{}/{}: {} answers of the old view, then {} of the new",
            node.region, node.id, seen.old, seen.new
        );
        assert!(
            seen.other.is_empty(),
            "{}/{}: answers that were neither view, whole: {:?}",
            node.region,
            node.id,
            seen.other
        );
        assert_eq!(
            seen.old_after_new, 0,
            "{}/{}: the old view again",
            node.region, node.id
        );
        assert!(
            seen.old > 0 && seen.new > 0,
            "{}/{}: {seen:?}",
            node.region,
            node.id
        );
    }

    // The new incarnation goes on with the stream.
    let more = changes(&mut g, 1_000);
    produce(&rt, &broker.addr, "orders", &more);
    let seq = cluster
        .wait_converged(VIEW, (events.len() + more.len()) as u64, CONVERGE_TIMEOUT)
        .expect("converges after more changes");
    let new = oracle(&orders_setup(&g), NEW_ORACLE);
    check_replicas(&rt, &cluster, VIEW, NEW_COLUMNS, &new, seq);
}
