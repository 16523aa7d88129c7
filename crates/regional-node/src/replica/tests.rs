//! Replica tests: apply, positions, epochs, re-created views and full batches.

use super::*;

mod basics {
    use super::*;

    fn schema() -> pb::ViewSchema {
        pb::ViewSchema {
            view: "by_region".into(),
            columns: vec![
                pb::ColumnSchema {
                    name: "region".into(),
                    r#type: "string".into(),
                },
                pb::ColumnSchema {
                    name: "n".into(),
                    r#type: "int64".into(),
                },
            ],
            key_indexes: vec![0],
            view_id: 1,
        }
    }

    fn text(s: Option<&str>) -> pb::Value {
        pb::Value {
            kind: s.map(|s| pb::value::Kind::Text(s.into())),
        }
    }

    fn upsert(region: Option<&str>, n: i64) -> pb::RowChange {
        pb::RowChange {
            key: vec![text(region)],
            row: Some(pb::Row {
                values: vec![
                    text(region),
                    pb::Value {
                        kind: Some(pb::value::Kind::Int(n)),
                    },
                ],
            }),
        }
    }

    fn batch(seq: u64, changes: Vec<pb::RowChange>) -> pb::ChangeBatch {
        pb::ChangeBatch {
            view: "by_region".into(),
            seq,
            changes,
            produced_at_ms: 10,
            ..Default::default()
        }
    }

    /// Stamps the running checksum on consecutive batches starting at seq 1.
    pub(super) fn chain(mut batches: Vec<pb::ChangeBatch>) -> Vec<pb::ChangeBatch> {
        let mut prev = 0;
        for b in &mut batches {
            b.checksum = meridian_proto::chain_checksum(prev, b);
            prev = b.checksum;
        }
        batches
    }

    fn rows(r: &Replica) -> Vec<(Option<String>, i64)> {
        let conn = r.reader().expect("reader");
        let mut stmt = conn
            .prepare("SELECT region, n FROM by_region ORDER BY region NULLS FIRST")
            .expect("prepare");
        let out = stmt
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
            .expect("query")
            .collect::<Result<Vec<_>, _>>()
            .expect("rows");
        out
    }

    /// Batches small enough to apply key by key and large enough to be staged, mixed, with
    /// repeated keys, NULL keys and deletes, against a map of what the view must hold.
    #[test]
    fn small_and_large_batches_apply_alike() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut r = Replica::open(&dir.path().join("r.duckdb")).expect("open");
        let mut want: std::collections::BTreeMap<Option<String>, i64> = Default::default();
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let mut batches = Vec::new();
        let mut sizes = std::collections::BTreeSet::new();
        for seq in 1..=60u64 {
            let size = match next(3) {
                0 => 1 + next(3) as usize,
                1 => 1 + next(DIRECT_CHANGES_MAX as u64 + 4) as usize,
                _ => 1 + next(40) as usize,
            };
            sizes.insert(size);
            let mut changes = Vec::new();
            for _ in 0..size {
                let k = next(12);
                let key = (k > 0).then(|| format!("k{k}"));
                if next(4) == 0 {
                    changes.push(pb::RowChange {
                        key: vec![text(key.as_deref())],
                        row: None,
                    });
                    want.remove(&key);
                } else {
                    let n = next(1000) as i64;
                    changes.push(upsert(key.as_deref(), n));
                    want.insert(key, n);
                }
            }
            batches.push(batch(seq, changes));
        }
        assert!(
            sizes.iter().any(|&s| s <= DIRECT_CHANGES_MAX)
                && sizes.iter().any(|&s| s > DIRECT_CHANGES_MAX + 4)
        );
        // One entry per batch, checked after each against the map as of that batch.
        let chained = chain(batches);
        let mut model: std::collections::BTreeMap<Option<String>, i64> = Default::default();
        for (i, b) in chained.into_iter().enumerate() {
            for c in &b.changes {
                let key = match &c.key[0].kind {
                    Some(pb::value::Kind::Text(t)) => Some(t.clone()),
                    _ => None,
                };
                match &c.row {
                    Some(row) => match row.values[1].kind {
                        Some(pb::value::Kind::Int(n)) => {
                            model.insert(key, n);
                        }
                        _ => unreachable!(),
                    },
                    None => {
                        model.remove(&key);
                    }
                }
            }
            let push = pb::PushRequest {
                schema: Some(schema()),
                batches: vec![b],
                ..Default::default()
            };
            assert_eq!(
                r.apply(i as u64 + 1, &push, 20).expect("apply"),
                i as u64 + 1
            );
            let expected: Vec<(Option<String>, i64)> = model.clone().into_iter().collect();
            assert_eq!(rows(&r), expected, "after batch {}", i + 1);
        }
        assert_eq!(model, want);
    }

    #[test]
    fn apply_is_idempotent_keeps_last_change_and_handles_null_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("r.duckdb");
        let mut r = Replica::open(&path).expect("open");
        let push = pb::PushRequest {
            schema: Some(schema()),
            batches: chain(vec![
                batch(
                    1,
                    vec![
                        upsert(Some("eu"), 1),
                        upsert(None, 4),
                        upsert(Some("eu"), 2),
                    ],
                ),
                batch(
                    2,
                    vec![
                        upsert(Some("us"), 3),
                        pb::RowChange {
                            key: vec![text(None)],
                            row: None,
                        },
                    ],
                ),
            ]),
            ..Default::default()
        };
        assert_eq!(r.apply(5, &push, 20).expect("apply"), 2);
        assert_eq!(
            rows(&r),
            vec![(Some("eu".into()), 2), (Some("us".into()), 3)]
        );
        // The same entry again, and an older batch: nothing changes.
        assert_eq!(r.apply(6, &push, 30).expect("apply"), 2);
        assert_eq!(
            rows(&r),
            vec![(Some("eu".into()), 2), (Some("us".into()), 3)]
        );
        // A gap is refused.
        let gap = pb::PushRequest {
            schema: Some(schema()),
            batches: vec![batch(4, vec![upsert(Some("eu"), 9)])],
            ..Default::default()
        };
        assert_eq!(r.apply(7, &gap, 40).expect("apply"), 2);
        assert_eq!(r.position("by_region").seq, 2);
        drop(r);
        let r = Replica::open(&path).expect("reopen");
        assert_eq!(r.applied_index(), 7);
        assert_eq!(
            r.position("by_region"),
            Position {
                view_id: 1,
                seq: 2,
                produced_at_ms: 10,
                applied_at_ms: 20,
                epoch: 0,
                fresh_at_ms: 0,
                checksum: r.position("by_region").checksum,
            }
        );
        assert_eq!(rows(&r).len(), 2);
    }
}

/// View `v` (id 1) with one string column `k`, its key: for tests of positions and batches.
/// The keys of view `v` (see [`key_only_schema`]), in order.
fn keys(r: &Replica) -> Vec<String> {
    r.reader()
        .expect("reader")
        .prepare("SELECT k FROM v ORDER BY k")
        .expect("prepare")
        .query_map([], |x| x.get(0))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
}

fn key_only_schema() -> pb::ViewSchema {
    pb::ViewSchema {
        view: "v".into(),
        columns: vec![pb::ColumnSchema {
            name: "k".into(),
            r#type: "string".into(),
        }],
        key_indexes: vec![0],
        view_id: 1,
    }
}

mod epochs {
    use super::*;

    fn batch(seq: u64, epoch: u64, key: &str) -> pb::ChangeBatch {
        let text = |s: &str| pb::Value {
            kind: Some(pb::value::Kind::Text(s.into())),
        };
        pb::ChangeBatch {
            view: "v".into(),
            seq,
            epoch,
            changes: vec![pb::RowChange {
                key: vec![text(key)],
                row: Some(pb::Row {
                    values: vec![text(key)],
                }),
            }],
            ..Default::default()
        }
    }

    fn chained(prev: u64, mut b: pb::ChangeBatch) -> pb::ChangeBatch {
        b.checksum = meridian_proto::chain_checksum(prev, &b);
        b
    }

    #[test]
    fn admit_follows_epochs_and_checksums() {
        let fresh = Position::default();
        let b1 = chained(0, batch(1, 10, "a"));
        assert_eq!(admit(&fresh, &b1), Admit::Apply);
        let at1 = Position {
            seq: 1,
            epoch: 10,
            checksum: b1.checksum,
            ..Position::default()
        };
        assert_eq!(admit(&at1, &b1), Admit::Skip, "applied already");
        let b2 = chained(b1.checksum, batch(2, 10, "b"));
        assert_eq!(admit(&at1, &b2), Admit::Apply);
        let b3 = chained(0, batch(3, 10, "c"));
        assert_eq!(admit(&at1, &b3), Admit::Gap);
        // Batch 2 of another history: same seq and epoch, other predecessor.
        let other = chained(12345, batch(2, 10, "b"));
        assert!(matches!(admit(&at1, &other), Admit::NeedFull(w) if w.contains("diverged")));
        // Older epochs never apply, not even full batches.
        let mut old_full = batch(9, 9, "z");
        old_full.full = true;
        assert_eq!(admit(&at1, &chained(0, batch(2, 9, "b"))), Admit::Skip);
        assert_eq!(admit(&at1, &old_full), Admit::Skip);
        // A newer epoch starts from a full batch, even at a lower seq.
        assert!(matches!(
            admit(&at1, &chained(b1.checksum, batch(2, 11, "b"))),
            Admit::NeedFull(_)
        ));
        let mut reseed = batch(1, 11, "q");
        reseed.full = true;
        assert_eq!(admit(&at1, &reseed), Admit::Apply);
    }

    #[test]
    fn a_replica_reseeds_on_a_new_epoch_and_refuses_another_history() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut r = Replica::open(&dir.path().join("r.duckdb")).expect("open");
        let schema = key_only_schema();
        let push = |batches: Vec<pb::ChangeBatch>| pb::PushRequest {
            schema: Some(schema.clone()),
            batches,
            ..Default::default()
        };
        let b1 = chained(0, batch(1, 10, "a"));
        let b2 = chained(b1.checksum, batch(2, 10, "b"));
        assert_eq!(
            r.apply(1, &push(vec![b1.clone(), b2.clone()]), 0)
                .expect("apply"),
            2
        );
        // Batch 3 of a history that differs at 2 is not applied.
        let b2x = chained(b1.checksum, batch(2, 10, "x"));
        let b3x = chained(b2x.checksum, batch(3, 10, "y"));
        assert_eq!(r.apply(2, &push(vec![b3x]), 0).expect("apply"), 2);
        assert_eq!(keys(&r), vec!["a", "b"]);
        // A new epoch re-seeds from a full batch; the old epoch is then refused.
        let mut full = batch(2, 11, "x");
        full.full = true;
        full.checksum = b2x.checksum;
        assert_eq!(r.apply(3, &push(vec![full]), 0).expect("apply"), 2);
        assert_eq!(keys(&r), vec!["x"]);
        let pos = r.position("v");
        assert_eq!((pos.seq, pos.epoch, pos.checksum), (2, 11, b2x.checksum));
        let stale = chained(b2.checksum, batch(3, 10, "old"));
        assert_eq!(r.apply(4, &push(vec![stale]), 0).expect("apply"), 2);
        let mut next = chained(b2x.checksum, batch(3, 11, "z"));
        next.epoch = 11;
        assert_eq!(r.apply(5, &push(vec![next]), 0).expect("apply"), 3);
        assert_eq!(keys(&r), vec!["x", "z"]);
        // The position survives a reopen and a snapshot round trip.
        drop(r);
        let r = Replica::open(&dir.path().join("r.duckdb")).expect("reopen");
        assert_eq!(r.position("v").epoch, 11);
        // Readers see positions through the documented system view.
        let got = crate::query::run(
            &r.reader().expect("reader"),
            "SELECT view, applied_seq, epoch FROM meridian.views",
            &crate::query::QueryLimits::default(),
            &std::sync::atomic::AtomicBool::new(false),
        )
        .expect("meridian.views");
        let cells: Vec<Option<pb::value::Kind>> =
            got.rows[0].values.iter().map(|v| v.kind.clone()).collect();
        assert_eq!(
            cells,
            vec![
                Some(pb::value::Kind::Text("v".into())),
                Some(pb::value::Kind::Int(3)),
                Some(pb::value::Kind::Int(11)),
            ]
        );
        let (index, data) = snapshot(&r.reader().expect("reader")).expect("snapshot");
        let dir2 = tempfile::tempdir().expect("tempdir");
        let mut r2 = Replica::open(&dir2.path().join("r.duckdb")).expect("open");
        r2.restore(index, &data).expect("restore");
        assert_eq!(r2.position("v"), r.position("v"));
    }

    /// The central tier's word on freshness holds for a replica only once it applied the
    /// change log that far, in the same epoch; it survives a reopen and a snapshot, and a
    /// freshness older than the replica's never takes it back.
    #[test]
    fn freshness_holds_once_applied_that_far_in_the_same_epoch() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut r = Replica::open(&dir.path().join("r.duckdb")).expect("open");
        let schema = key_only_schema();
        let push =
            |batches: Vec<pb::ChangeBatch>, seq: u64, epoch: u64, at_ms: i64| pb::PushRequest {
                schema: Some(schema.clone()),
                batches,
                fresh: Some(pb::Freshness { seq, epoch, at_ms }),
                ..Default::default()
            };
        let b1 = chained(0, batch(1, 10, "a"));
        let b2 = chained(b1.checksum, batch(2, 10, "b"));
        // Vouched at seq 2, but the replica reaches only 1.
        r.apply(1, &push(vec![b1], 2, 10, 5_000), 0).expect("apply");
        assert_eq!(r.position("v").fresh_at_ms, 0);
        assert_eq!(r.position("v").staleness_ms(9_000), None);
        // With batch 2 in the same entry, it holds.
        r.apply(2, &push(vec![b2], 2, 10, 5_000), 0).expect("apply");
        assert_eq!(r.position("v").fresh_at_ms, 5_000);
        assert_eq!(r.position("v").staleness_ms(9_000), Some(4_000));
        // Another epoch's word does not count; an older one does not take it back.
        r.apply(3, &push(vec![], 1, 11, 8_000), 0).expect("apply");
        r.apply(4, &push(vec![], 2, 10, 4_000), 0).expect("apply");
        assert_eq!(r.position("v").fresh_at_ms, 5_000);
        // A heartbeat alone moves it.
        r.apply(5, &push(vec![], 2, 10, 7_000), 0).expect("apply");
        assert_eq!(r.position("v").fresh_at_ms, 7_000);
        assert_eq!(r.position("v").seq, 2);
        drop(r);
        let r = Replica::open(&dir.path().join("r.duckdb")).expect("reopen");
        assert_eq!(r.position("v").fresh_at_ms, 7_000);
        let (index, data) = snapshot(&r.reader().expect("reader")).expect("snapshot");
        let dir2 = tempfile::tempdir().expect("tempdir");
        let mut r2 = Replica::open(&dir2.path().join("r.duckdb")).expect("open");
        r2.restore(index, &data).expect("restore");
        assert_eq!(r2.position("v").fresh_at_ms, 7_000);
        // A re-seed in a new epoch may hold older data: what was vouched for is forgotten.
        let mut full = batch(2, 11, "x");
        full.full = true;
        full.checksum = 99;
        r2.apply(index + 1, &push(vec![full], 0, 0, 0), 0)
            .expect("apply");
        assert_eq!(r2.position("v").epoch, 11);
        assert_eq!(r2.position("v").fresh_at_ms, 0);
    }
}

mod exact;
mod recreate;

mod full_batch {
    use super::*;

    #[test]
    fn a_full_batch_replaces_every_row_and_jumps_the_position() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut r = Replica::open(&dir.path().join("r.duckdb")).expect("open");
        let schema = key_only_schema();
        let text = |s: &str| pb::Value {
            kind: Some(pb::value::Kind::Text(s.into())),
        };
        let row = |k: &str| pb::RowChange {
            key: vec![text(k)],
            row: Some(pb::Row {
                values: vec![text(k)],
            }),
        };
        let batch = |seq, full, keys: &[&str]| pb::ChangeBatch {
            view: "v".into(),
            seq,
            full,
            changes: keys.iter().map(|k| row(k)).collect(),
            ..Default::default()
        };
        let push = |b| pb::PushRequest {
            schema: Some(schema.clone()),
            batches: vec![b],
            ..Default::default()
        };
        let mut first = batch(1, false, &["old", "kept"]);
        first.checksum = meridian_proto::chain_checksum(0, &first);
        r.apply(1, &push(first), 0).expect("apply");
        // The region missed batches 2..=40, which the central worker no longer keeps.
        assert_eq!(
            r.apply(2, &push(batch(41, true, &["kept", "new"])), 0)
                .expect("apply"),
            41
        );
        assert_eq!(keys(&r), vec!["kept", "new"]);
        // An older full batch changes nothing.
        assert_eq!(
            r.apply(3, &push(batch(30, true, &[])), 0).expect("apply"),
            41
        );
    }
}

mod times {
    use super::*;

    fn int(i: i64) -> pb::Value {
        pb::Value {
            kind: Some(pb::value::Kind::Int(i)),
        }
    }

    /// Dates and timestamps travel as numbers (days, microseconds); a replica stores them as
    /// DATE and TIMESTAMP, reads print them as text, and a snapshot carries them exactly.
    #[test]
    fn dates_and_timestamps_apply_read_and_survive_a_snapshot() {
        let schema = pb::ViewSchema {
            view: "t".into(),
            columns: vec![
                pb::ColumnSchema {
                    name: "minute".into(),
                    r#type: "timestamp".into(),
                },
                pb::ColumnSchema {
                    name: "day".into(),
                    r#type: "date".into(),
                },
            ],
            key_indexes: vec![0],
            view_id: 1,
        };
        let at = catalog::parse_timestamp("2024-03-01 10:01:00.25").expect("ts");
        let batch = pb::ChangeBatch {
            view: "t".into(),
            seq: 1,
            changes: vec![pb::RowChange {
                key: vec![int(at)],
                row: Some(pb::Row {
                    values: vec![int(at), int(19_783)],
                }),
            }],
            ..Default::default()
        };
        let push = pb::PushRequest {
            schema: Some(schema),
            batches: basics::chain(vec![batch]),
            ..Default::default()
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let mut r = Replica::open(&dir.path().join("r.duckdb")).expect("open");
        assert_eq!(r.apply(1, &push, 0).expect("apply"), 1);
        let read = |r: &Replica| {
            crate::query::run(
                &r.reader().expect("reader"),
                "SELECT minute, day, typeof(minute), typeof(day) FROM t",
                &crate::query::QueryLimits::default(),
                &std::sync::atomic::AtomicBool::new(false),
            )
            .expect("read")
            .rows[0]
                .values
                .iter()
                .map(|v| v.kind.clone())
                .collect::<Vec<_>>()
        };
        let text = |s: &str| Some(pb::value::Kind::Text(s.into()));
        let want = vec![
            text("2024-03-01 10:01:00.250000"),
            text("2024-03-01"),
            text("TIMESTAMP"),
            text("DATE"),
        ];
        assert_eq!(read(&r), want);
        let (index, data) = snapshot(&r.reader().expect("reader")).expect("snapshot");
        let dir2 = tempfile::tempdir().expect("tempdir");
        let mut r2 = Replica::open(&dir2.path().join("r.duckdb")).expect("open");
        r2.restore(index, &data).expect("restore");
        assert_eq!(read(&r2), want);
    }
}
