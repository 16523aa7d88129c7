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
