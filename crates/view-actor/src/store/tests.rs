//! The store: views listed, commits read back, catalog identities, epochs.

use super::*;
use catalog::Value;

#[test]
fn stored_views_are_listed_and_a_destroyed_one_is_gone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open_db(dir.path()).expect("open");
    for id in [3u64, 17, 4] {
        let store = ViewStore::new(db.clone(), id);
        store.epoch(1).expect("epoch");
    }
    assert_eq!(stored_view_ids(&db).expect("list"), vec![3, 4, 17]);
    ViewStore::new(db.clone(), 4).destroy().expect("destroy");
    assert_eq!(stored_view_ids(&db).expect("list"), vec![3, 17]);
}

#[test]
fn state_kept_under_another_catalog_is_never_resumed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open_db(dir.path()).expect("open");
    let store = ViewStore::new(db.clone(), 3);
    let commit = |seq| Commit {
        meta: Meta {
            seq,
            ..Meta::default()
        },
        offsets: vec![(0, 10)],
        ..Commit::default()
    };
    // State kept before catalog identities is adopted by the catalog that starts it.
    store.commit(commit(5)).expect("commit");
    assert!(!store.claim(77).expect("claim"));
    assert_eq!(store.load_meta().expect("meta").seq, 5);
    assert_eq!(store.catalog_id().expect("id"), Some(77));
    // The same catalog resumes it.
    assert!(!store.claim(77).expect("claim"));
    assert_eq!(store.load_offsets().expect("offsets").get(&0), Some(&10));
    // Another catalog's view with the same id starts from nothing.
    assert!(store.claim(91).expect("claim"));
    assert_eq!(store.load_meta().expect("meta").seq, 0);
    assert!(store.load_offsets().expect("offsets").is_empty());
    assert_eq!(store.catalog_id().expect("id"), Some(91));
}

#[test]
fn commit_is_read_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open_db(dir.path()).expect("open");
    let store = ViewStore::new(db.clone(), 3);
    let other = ViewStore::new(db, 4);
    let key = vec![Value::Text("eu".into())];
    let meta = Meta {
        seq: 1,
        events: 2,
        dead_letters: 1,
        last_batch_at_ms: 5,
        checksum: 9,
        ..Meta::default()
    };
    store
        .commit(Commit {
            meta: meta.clone(),
            offsets: vec![(0, 10), (1, 4)],
            groups: vec![(
                key.clone(),
                Some(GroupState {
                    rows: 2,
                    ..Default::default()
                }),
            )],
            rows: vec![(vec![Value::Int(1)], Some(vec![Value::Int(1)]))],
            log: Some(pb::ChangeBatch {
                view: "v".into(),
                seq: 1,
                ..Default::default()
            }),
            dead_letters: vec![DeadLetter {
                topic: "t".into(),
                partition: 0,
                offset: 3,
                reason: "bad".into(),
            }],
            truncate_rows: false,
            join: None,
        })
        .expect("commit");
    assert_eq!(store.load_meta().expect("meta"), meta);
    assert_eq!(
        store.load_offsets().expect("offsets"),
        HashMap::from([(0, 10), (1, 4)])
    );
    assert_eq!(store.consistent_state().expect("groups").1.len(), 1);
    assert_eq!(
        store.get_row(&vec![Value::Int(1)]),
        Ok(Some(vec![Value::Int(1)]))
    );
    assert_eq!(store.read_log(1, 10).expect("log").len(), 1);
    assert_eq!(store.recent_dead_letters(5).expect("dlq")[0].offset, 3);
    assert_eq!(
        other.load_meta().expect("meta"),
        Meta::default(),
        "views do not see each other's keys"
    );
    // Only the newest DEAD_LETTERS_KEPT records stay.
    let flood: Vec<DeadLetter> = (0..DEAD_LETTERS_KEPT + 5)
        .map(|i| DeadLetter {
            topic: "t".into(),
            partition: 0,
            offset: 100 + i as i64,
            reason: "bad".into(),
        })
        .collect();
    let meta = Meta {
        dead_letters: 1 + flood.len() as u64,
        ..meta
    };
    store
        .commit(Commit {
            meta,
            dead_letters: flood,
            ..Commit::default()
        })
        .expect("commit");
    let kept = store.recent_dead_letters(usize::MAX).expect("dlq");
    assert_eq!(kept.len() as u64, DEAD_LETTERS_KEPT);
    assert_eq!(
        kept.last().map(|d| d.offset),
        Some(105),
        "the oldest are gone"
    );
    store.destroy().expect("destroy");
    assert_eq!(store.load_meta().expect("meta"), Meta::default());
}

/// A join's rows and index round-trip through RocksDB: rows by side, the index by join key
/// (a key that is a prefix of another's text is not confused with it), and a truncate in the
/// same commit as later writes deletes only what came before.
#[test]
fn join_rows_and_index_are_read_back_and_truncated_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open_db(dir.path()).expect("open");
    let store = ViewStore::new(db.clone(), 3);
    let other = ViewStore::new(db, 4);
    let k = |i: i64| vec![Value::Int(i)];
    let row = |i: i64| vec![Value::Int(i), Value::Text(format!("r{i}"))];
    let commit = |j: JoinWrites| Commit {
        join: Some(j),
        ..Commit::default()
    };
    store
        .commit(commit(JoinWrites {
            left: vec![
                (k(1), Some(row(1))),
                (k(2), Some(row(2))),
                (k(3), Some(row(3))),
            ],
            right: vec![(k(7), Some(row(7))), (k(70), Some(row(70)))],
            index: vec![(k(7), k(1), true), (k(7), k(2), true), (k(70), k(3), true)],
            ..JoinWrites::default()
        }))
        .expect("commit");
    other
        .commit(commit(JoinWrites {
            left: vec![(k(9), Some(row(9)))],
            index: vec![(k(7), k(9), true)],
            ..JoinWrites::default()
        }))
        .expect("commit");
    assert_eq!(
        store.get_side(Side::Left, &k(2)).expect("get"),
        Some(row(2))
    );
    assert_eq!(
        store.get_side(Side::Right, &k(70)).expect("get"),
        Some(row(70))
    );
    assert_eq!(store.get_side(Side::Right, &k(1)).expect("get"), None);
    assert_eq!(store.holders(&k(7)).expect("holders"), vec![k(1), k(2)]);
    assert_eq!(store.holders(&k(70)).expect("holders"), vec![k(3)]);
    let mut left = store.left_keys().expect("keys");
    left.sort_by_key(|k| format!("{k:?}"));
    assert_eq!(left, vec![k(1), k(2), k(3)]);
    // Entries leave the index; a truncate of the left side clears rows and index first.
    store
        .commit(commit(JoinWrites {
            index: vec![(k(7), k(1), false)],
            ..JoinWrites::default()
        }))
        .expect("commit");
    assert_eq!(store.holders(&k(7)).expect("holders"), vec![k(2)]);
    store
        .commit(commit(JoinWrites {
            truncate_left: true,
            left: vec![(k(5), Some(row(5)))],
            index: vec![(k(70), k(5), true)],
            ..JoinWrites::default()
        }))
        .expect("commit");
    assert_eq!(store.left_keys().expect("keys"), vec![k(5)]);
    assert!(store.holders(&k(7)).expect("holders").is_empty());
    assert_eq!(store.holders(&k(70)).expect("holders"), vec![k(5)]);
    assert_eq!(
        store.get_side(Side::Right, &k(7)).expect("get"),
        Some(row(7)),
        "the other side stays"
    );
    store
        .commit(commit(JoinWrites {
            truncate_right: true,
            right: vec![(k(8), Some(row(8)))],
            ..JoinWrites::default()
        }))
        .expect("commit");
    assert_eq!(store.get_side(Side::Right, &k(7)).expect("get"), None);
    assert_eq!(
        store.get_side(Side::Right, &k(8)).expect("get"),
        Some(row(8))
    );
    // The other view's state is its own.
    assert_eq!(other.holders(&k(7)).expect("holders"), vec![k(9)]);
    assert_eq!(other.left_keys().expect("keys"), vec![k(9)]);
}
