//! Reads a region of a running cluster: typed rows, the freshness of each answer, a
//! linearizable read, an analytical result as Arrow record batches, and a few changes of a
//! subscription.
//!
//! Start a cluster with `./dev.sh` (or `meridian dev`), then:
//! `cargo run -p client --example regional_reads -- http://127.0.0.1:7000 us-east`
//! (the coordinator's address and a region; those are `meridian dev`'s defaults).

use std::time::Duration;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let coordinator = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:7000".to_string());
    let region = args.next().unwrap_or_else(|| "us-east".to_string());
    let client = client::Client::discover(&coordinator, &region).await?;

    // Typed rows, and which change batch of each view they reflect, and how fresh.
    let r = client
        .query("SELECT country, sum(revenue) AS revenue FROM revenue_by_country GROUP BY country ORDER BY revenue DESC LIMIT 3")
        .await?;
    println!("node {} of {} answered:", r.node_id, r.region);
    for row in &r.rows {
        println!("  {row:?}");
    }
    for p in &r.positions {
        println!(
            "  {} at batch {} (staleness {:?} ms)",
            p.view, p.applied_seq, p.staleness_ms
        );
    }

    // Linearizable: every batch the region acknowledged before the read began.
    let options = client::QueryOptions {
        linearizable: true,
        ..Default::default()
    };
    let r = client
        .query_with(
            "SELECT count(*) AS groups FROM revenue_by_country",
            &options,
        )
        .await?;
    println!("linearizable count: {:?}", r.rows[0]);

    // An analytical result as Arrow record batches (DuckDB's own Arrow output).
    let arrow = client
        .query_arrow("SELECT * FROM revenue_by_country ORDER BY country")
        .await?;
    let rows: usize = arrow.batches.iter().map(|b| b.num_rows()).sum();
    println!("arrow: {rows} rows in {} batches", arrow.batches.len());

    // A subscription: a snapshot first, then every change as the region applies it.
    let mut sub = client.subscribe("revenue_by_country");
    let first = tokio::time::timeout(Duration::from_secs(10), sub.next()).await;
    if let Ok(Some(Ok(ev))) = first {
        println!(
            "subscription: {} changes at batch {} (full: {})",
            ev.changes.len(),
            ev.position.seq,
            ev.full
        );
    }
    Ok(())
}
