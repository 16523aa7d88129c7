use super::*;

fn schema(view_id: u64, second_column: &str) -> pb::ViewSchema {
    pb::ViewSchema {
        view: "v".into(),
        columns: vec![
            pb::ColumnSchema {
                name: "k".into(),
                r#type: "string".into(),
            },
            pb::ColumnSchema {
                name: second_column.into(),
                r#type: "int64".into(),
            },
        ],
        key_indexes: vec![0],
        view_id,
    }
}

fn push(view_id: u64, column: &str, seqs: std::ops::RangeInclusive<u64>) -> pb::PushRequest {
    let first = *seqs.start();
    let batches = (1..=*seqs.end())
        .map(|seq| pb::ChangeBatch {
            view: "v".into(),
            seq,
            changes: vec![pb::RowChange {
                key: vec![pb::Value {
                    kind: Some(pb::value::Kind::Text(format!("k{seq}"))),
                }],
                row: Some(pb::Row {
                    values: vec![
                        pb::Value {
                            kind: Some(pb::value::Kind::Text(format!("k{seq}"))),
                        },
                        pb::Value {
                            kind: Some(pb::value::Kind::Int(seq as i64)),
                        },
                    ],
                }),
            }],
            ..Default::default()
        })
        .collect();
    let batches = super::basics::chain(batches)
        .into_iter()
        .filter(|b| b.seq >= first)
        .collect();
    pb::PushRequest {
        schema: Some(schema(view_id, column)),
        batches,
        ..Default::default()
    }
}

#[test]
fn a_recreated_view_starts_over_and_old_pushes_are_ignored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("r.duckdb");
    let mut r = Replica::open(&path).expect("open");
    assert_eq!(r.apply(1, &push(3, "n", 1..=5), 0).expect("apply"), 5);
    assert_eq!(r.applied_position(&schema(3, "n")).seq, 5);
    assert_eq!(
        r.applied_position(&schema(8, "total")).seq,
        0,
        "a new incarnation has applied nothing"
    );
    // CREATE OR REPLACE (or DROP + CREATE) under the same name: a new id, new columns,
    // sequences from 1 again. While the old table is here, the new incarnation starts only
    // with a full batch: its change log alone would show it half built.
    assert!(r.must_start_full(&schema(8, "total")).is_some());
    assert!(r.must_start_full(&schema(3, "n")).is_none());
    assert_eq!(r.apply(2, &push(8, "total", 1..=2), 0).expect("apply"), 0);
    let conn = r.reader().expect("reader");
    let old: i64 = conn
        .query_row("SELECT sum(n) FROM v", [], |x| x.get(0))
        .expect("the old table still answers");
    assert_eq!(old, 15, "a partial start left the old table in place");
    drop(conn);
    assert_eq!(r.applied_position(&schema(3, "n")).seq, 5);
    let empty = pb::PushRequest {
        schema: Some(schema(8, "total")),
        ..Default::default()
    };
    assert_eq!(r.apply(2, &empty, 0).expect("apply"), 0);
    assert_eq!(r.applied_position(&schema(3, "n")).seq, 5);
    let mut whole = push(8, "total", 1..=2);
    let last = whole.batches.pop().expect("batch 2");
    whole.batches = vec![pb::ChangeBatch {
        full: true,
        changes: push(8, "total", 1..=2)
            .batches
            .into_iter()
            .flat_map(|b| b.changes)
            .collect(),
        ..last
    }];
    assert_eq!(r.apply(2, &whole, 0).expect("apply"), 2);
    assert!(r.must_start_full(&schema(8, "total")).is_none());
    assert!(
        r.refuses(&schema(3, "n"))
            .is_some_and(|why| why.contains("was dropped in this region")),
        "the replaced incarnation is remembered as dropped"
    );
    // A late push of the dropped incarnation changes nothing.
    assert_eq!(r.apply(3, &push(3, "n", 6..=6), 0).expect("apply"), 0);
    drop(r);
    let r = Replica::open(&path).expect("reopen");
    assert_eq!(r.applied_position(&schema(8, "total")).seq, 2);
    let conn = r.reader().expect("reader");
    let rows: Vec<(String, i64)> = conn
        .prepare("SELECT k, total FROM v ORDER BY k")
        .expect("the new columns")
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    assert_eq!(rows, vec![("k1".to_string(), 1), ("k2".to_string(), 2)]);

    // Dropping the old incarnation leaves the new one; dropping the new one removes it.
    let mut r = r;
    let drop_of = |id| pb::PushRequest {
        schema: Some(schema(id, "n")),
        drop_view: true,
        ..Default::default()
    };
    r.apply(4, &drop_of(3), 0).expect("drop old");
    assert_eq!(r.applied_position(&schema(8, "total")).seq, 2);
    r.apply(5, &drop_of(8), 0).expect("drop");
    assert_eq!(r.schemas().count(), 0);
    // A shipper that has not heard of the drop yet pushes again: the table stays gone,
    // across a restart too.
    assert_eq!(
        r.apply(6, &push(8, "total", 1..=3), 0).expect("late push"),
        0
    );
    assert_eq!(r.schemas().count(), 0);
    drop(conn);
    drop(r);
    let mut r = Replica::open(&path).expect("reopen");
    assert_eq!(
        r.apply(7, &push(8, "total", 1..=3), 0).expect("late push"),
        0
    );
    assert_eq!(r.schemas().count(), 0);
    let conn = r.reader().expect("reader");
    let tables: i64 = conn
        .query_row(
            "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'v'",
            [],
            |x| x.get(0),
        )
        .expect("count");
    assert_eq!(tables, 0);
}
