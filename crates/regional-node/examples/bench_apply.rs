//! Benchmark of the replica's hot path: applying change batches to DuckDB.
//!
//! Prints the figures of `Replica::apply` (reduce; then key by key with prepared statements
//! for batches of up to 8 keys, else stage, one delete-join and one insert; then the applied
//! position and Raft index) beside a baseline measured in the same run on the same data: a row-at-a-time apply
//! (`DELETE ... WHERE key IS NOT DISTINCT FROM ?` then `INSERT`, one statement per change).
//!
//! Run: `cargo run -p regional-node --example bench_apply [groups] [batches] [changes_per_batch]`
//! (built with the shared dev profile; DuckDB itself is compiled optimised).

use std::time::Instant;

use duckdb::params;
use meridian_proto::v1 as pb;
use regional_node::replica::Replica;

fn schema() -> pb::ViewSchema {
    pb::ViewSchema {
        view: "v".into(),
        columns: vec![
            pb::ColumnSchema {
                name: "k".into(),
                r#type: "string".into(),
            },
            pb::ColumnSchema {
                name: "n".into(),
                r#type: "int64".into(),
            },
            pb::ColumnSchema {
                name: "s".into(),
                r#type: "int64".into(),
            },
        ],
        key_indexes: vec![0],
        view_id: 1,
    }
}

fn int(i: i64) -> pb::Value {
    pb::Value {
        kind: Some(pb::value::Kind::Int(i)),
    }
}

fn text(s: String) -> pb::Value {
    pb::Value {
        kind: Some(pb::value::Kind::Text(s)),
    }
}

/// Deterministic batches: upserts of random groups, every tenth change a delete.
fn batches(groups: u64, n_batches: u64, per_batch: u64) -> Vec<pb::ChangeBatch> {
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    (1..=n_batches)
        .map(|seq| pb::ChangeBatch {
            view: "v".into(),
            seq,
            changes: (0..per_batch)
                .map(|i| {
                    let key = format!("group-{}", next() % groups);
                    let row = (i % 10 != 9).then(|| pb::Row {
                        values: vec![
                            text(key.clone()),
                            int(i as i64),
                            int((next() % 1000) as i64),
                        ],
                    });
                    pb::RowChange {
                        key: vec![text(key)],
                        row,
                    }
                })
                .collect(),
            ..Default::default()
        })
        .scan(0u64, |prev, mut b| {
            b.checksum = meridian_proto::chain_checksum(*prev, &b);
            *prev = b.checksum;
            Some(b)
        })
        .collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let groups = args.first().copied().unwrap_or(10_000);
    let n_batches = args.get(1).copied().unwrap_or(20);
    let per_batch = args.get(2).copied().unwrap_or(1_000);
    let data = batches(groups, n_batches, per_batch);
    let changes = (n_batches * per_batch) as f64;
    let dir = tempfile::tempdir()?;

    let mut replica = Replica::open(&dir.path().join("replica.duckdb"))?;
    let t = Instant::now();
    for (i, b) in data.iter().enumerate() {
        replica.apply(
            i as u64 + 1,
            &pb::PushRequest {
                schema: Some(schema()),
                batches: vec![b.clone()],
                ..Default::default()
            },
            0,
        )?;
    }
    let ours = t.elapsed().as_secs_f64();
    let reader = replica.reader()?;
    let rows_ours: i64 = reader.query_row("SELECT count(*) FROM v", [], |r| r.get(0))?;

    let base = duckdb::Connection::open(dir.path().join("baseline.duckdb"))?;
    base.execute_batch("CREATE TABLE v (k VARCHAR, n BIGINT, s BIGINT)")?;
    let t = Instant::now();
    for b in &data {
        let tx = base.unchecked_transaction()?;
        for c in &b.changes {
            let key = match &c.key[0].kind {
                Some(pb::value::Kind::Text(s)) => s.clone(),
                _ => unreachable!("the generator makes text keys"),
            };
            tx.prepare_cached("DELETE FROM v WHERE k IS NOT DISTINCT FROM ?")?
                .execute([&key])?;
            if let Some(row) = &c.row {
                let num = |v: &pb::Value| match v.kind {
                    Some(pb::value::Kind::Int(i)) => i,
                    _ => 0,
                };
                tx.prepare_cached("INSERT INTO v VALUES (?, ?, ?)")?
                    .execute(params![key, num(&row.values[1]), num(&row.values[2])])?;
            }
        }
        tx.commit()?;
    }
    let baseline = t.elapsed().as_secs_f64();
    let rows_base: i64 = base.query_row("SELECT count(*) FROM v", [], |r| r.get(0))?;
    if rows_ours != rows_base {
        return Err(
            format!("the two applies disagree: {rows_ours} rows against {rows_base}").into(),
        );
    }

    println!("apply {n_batches} batches x {per_batch} changes over {groups} groups ({rows_ours} rows at the end)");
    println!(
        "  replica apply (Replica::apply, positions included): {:>8.1} ms  {:>10.0} changes/s",
        ours * 1e3,
        changes / ours
    );
    println!(
        "  baseline (row at a time DELETE + INSERT):          {:>8.1} ms  {:>10.0} changes/s",
        baseline * 1e3,
        changes / baseline
    );
    println!("  speed-up: {:.1}x", baseline / ours);
    Ok(())
}
