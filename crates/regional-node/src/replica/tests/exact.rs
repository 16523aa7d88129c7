//! Decimals and arrays in a replica: applied by both ways of writing a batch, read back
//! typed and exact, carried whole by a snapshot, and refused when a batch holds a text that is
//! not one the column would store as it is.

use super::*;

fn text(s: &str) -> pb::Value {
    pb::Value {
        kind: Some(pb::value::Kind::Text(s.into())),
    }
}

fn schema() -> pb::ViewSchema {
    let col = |name: &str, ty: &str| pb::ColumnSchema {
        name: name.into(),
        r#type: ty.into(),
    };
    pb::ViewSchema {
        view: "t".into(),
        columns: vec![
            col("k", "decimal(10,2)"),
            col("total", "decimal(38,2)"),
            col("tags", "array(string)"),
            col("ids", "array(int64)"),
        ],
        key_indexes: vec![0],
        view_id: 1,
    }
}

fn change(k: &str, total: &str, tags: &str) -> pb::RowChange {
    pb::RowChange {
        key: vec![text(k)],
        row: Some(pb::Row {
            values: vec![text(k), text(total), text(tags), text("[1,null,-3]")],
        }),
    }
}

fn read(r: &Replica) -> Vec<Vec<Option<pb::value::Kind>>> {
    crate::query::run(
        &r.reader().expect("reader"),
        "SELECT k, total, tags, ids, typeof(total), typeof(tags), tags[2] FROM t ORDER BY k",
        &crate::query::QueryLimits::default(),
        &std::sync::atomic::AtomicBool::new(false),
    )
    .expect("read")
    .rows
    .iter()
    .map(|row| row.values.iter().map(|v| v.kind.clone()).collect())
    .collect()
}

#[test]
fn decimals_and_arrays_apply_exactly_by_key_and_staged_and_survive_a_snapshot() {
    let big = "123456789012345678901234567890123456.78";
    let tricky = r#"["b,c","q\"uote",null,"[x]"]"#;
    // Few changes are applied key by key; many through the staging table.
    let few = vec![change("1.50", big, tricky), change("-0.07", "0.00", "[]")];
    let many: Vec<pb::RowChange> = (0..40)
        .map(|i| change(&format!("{i}.25"), &format!("-{i}.10"), r#"["a"]"#))
        .collect();
    for changes in [few, many] {
        let n = changes.len();
        let push = pb::PushRequest {
            schema: Some(schema()),
            batches: basics::chain(vec![pb::ChangeBatch {
                view: "t".into(),
                seq: 1,
                changes,
                ..Default::default()
            }]),
            ..Default::default()
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let mut r = Replica::open(&dir.path().join("r.duckdb")).expect("open");
        assert_eq!(r.apply(1, &push, 0).expect("apply"), 1);
        let rows = read(&r);
        assert_eq!(rows.len(), n);
        let t = |s: &str| Some(pb::value::Kind::Text(s.into()));
        if n == 2 {
            assert_eq!(
                rows[1],
                vec![
                    t("1.50"),
                    t(big),
                    t(r#"['b,c','q"uote',NULL,'[x]']"#),
                    t("[1,NULL,-3]"),
                    t("DECIMAL(38,2)"),
                    t("VARCHAR[]"),
                    t("q\"uote"),
                ],
                "the array's strings stay whole"
            );
            assert_eq!(rows[0][0], t("-0.07"));
        }
        let (index, data) = snapshot(&r.reader().expect("reader")).expect("snapshot");
        let dir2 = tempfile::tempdir().expect("tempdir");
        let mut r2 = Replica::open(&dir2.path().join("r.duckdb")).expect("open");
        r2.restore(index, &data).expect("restore");
        assert_eq!(read(&r2), rows, "a snapshot carries them exactly");
    }
}

#[test]
fn a_batch_with_a_decimal_or_array_text_its_column_would_change_is_refused() {
    let ok = pb::ChangeBatch {
        view: "t".into(),
        seq: 1,
        changes: vec![change("1.50", "2.00", r#"["a"]"#)],
        ..Default::default()
    };
    assert_eq!(admit::validate_batch(&schema(), &ok), Ok(()));
    for bad in [
        change("1.5", "2.00", "[]"),
        change("1.505", "2.00", "[]"),
        change("1.50", "x", "[]"),
        change("1.50", "2.00", "[1]"),
        change("1.50", "2.00", "[\"a\""),
        change("1.50", "2.00", "[NaN]"),
    ] {
        let b = pb::ChangeBatch {
            changes: vec![bad.clone()],
            ..ok.clone()
        };
        assert!(
            admit::validate_batch(&schema(), &b).is_err(),
            "{bad:?} must be refused"
        );
    }
}
