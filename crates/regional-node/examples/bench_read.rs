//! Benchmark of the read path's isolation cost: the same point reads through
//! `query::run` (one-statement check through DuckDB's `query()`, READ ONLY transaction, limits,
//! positions) and through a baseline measured in the same run on the same replica: prepare and
//! run the text inside a plain transaction that is rolled back, with the positions read, as
//! reads ran before.
//!
//! Run: `cargo run -p regional-node --example bench_read [rows] [reads]`

use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use meridian_proto::v1 as pb;
use regional_node::query::{self, QueryLimits};
use regional_node::replica::Replica;

fn schema() -> pb::ViewSchema {
    let column = |name: &str, ty: &str| pb::ColumnSchema {
        name: name.into(),
        r#type: ty.into(),
    };
    pb::ViewSchema {
        view: "v".into(),
        columns: vec![column("k", "string"), column("n", "int64")],
        key_indexes: vec![0],
        view_id: 1,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn report(name: &str, mut times: Vec<Duration>) -> Duration {
    times.sort();
    let p50 = percentile(&times, 0.5);
    println!(
        "  {name:<44} p50 {:>7.0} us  p99 {:>7.0} us",
        p50.as_secs_f64() * 1e6,
        percentile(&times, 0.99).as_secs_f64() * 1e6
    );
    p50
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let rows = args.first().copied().unwrap_or(10_000);
    let reads = args.get(1).copied().unwrap_or(2_000);
    let dir = tempfile::tempdir()?;
    let mut replica = Replica::open(&dir.path().join("replica.duckdb"))?;
    let text = |s: String| pb::Value {
        kind: Some(pb::value::Kind::Text(s)),
    };
    let mut batch = pb::ChangeBatch {
        view: "v".into(),
        seq: 1,
        changes: (0..rows)
            .map(|i| pb::RowChange {
                key: vec![text(format!("k{i}"))],
                row: Some(pb::Row {
                    values: vec![
                        text(format!("k{i}")),
                        pb::Value {
                            kind: Some(pb::value::Kind::Int(i as i64)),
                        },
                    ],
                }),
            })
            .collect(),
        ..Default::default()
    };
    batch.checksum = meridian_proto::chain_checksum(0, &batch);
    replica.apply(
        1,
        &pb::PushRequest {
            schema: Some(schema()),
            batches: vec![batch],
            ..Default::default()
        },
        0,
    )?;
    let conn = replica.reader()?;
    let limits = QueryLimits::default();
    let cancel = AtomicBool::new(false);
    let sql = |i: usize| format!("SELECT k, n FROM v WHERE k = 'k{}'", (i * 7919) % rows);

    let mut ours = Vec::with_capacity(reads);
    for i in 0..reads {
        let t = Instant::now();
        // A connection per read, as the node serves them.
        let conn = conn.try_clone()?;
        let r = query::run(&conn, &sql(i), &limits, &cancel)?;
        ours.push(t.elapsed());
        assert_eq!(r.rows.len(), 1);
    }
    let mut baseline = Vec::with_capacity(reads);
    for i in 0..reads {
        let t = Instant::now();
        let conn = conn.try_clone()?;
        conn.execute_batch("BEGIN TRANSACTION")?;
        let n = {
            let mut stmt = conn.prepare(&sql(i))?;
            let mut rows = stmt.query([])?;
            let mut n = 0;
            while let Some(row) = rows.next()? {
                let _: String = row.get(0)?;
                n += 1;
            }
            n
        };
        // Reads answered with the positions before too.
        let mut stmt = conn.prepare(
            "SELECT view, seq, produced_at_ms, applied_at_ms, view_id FROM _meridian_applied ORDER BY view",
        )?;
        let mut positions = stmt.query([])?;
        while positions.next()?.is_some() {}
        conn.execute_batch("ROLLBACK")?;
        baseline.push(t.elapsed());
        assert_eq!(n, 1);
    }
    println!("{reads} point reads over {rows} rows, a connection each, sequential");
    let a = report("isolated read (check, READ ONLY, limits)", ours);
    let b = report("baseline (prepare, positions, rollback)", baseline);
    println!(
        "  isolation costs {:.0} us per read at p50 ({:.1}x)",
        (a.as_secs_f64() - b.as_secs_f64()) * 1e6,
        a.as_secs_f64() / b.as_secs_f64()
    );
    Ok(())
}
