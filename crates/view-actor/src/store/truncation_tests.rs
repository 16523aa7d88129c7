//! The store: truncated logs and rows, epochs within a lease.

use super::*;

#[test]
fn a_truncated_log_reads_empty_and_state_reads_at_one_instant() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = ViewStore::new(open_db(dir.path()).expect("db"), 1);
    for seq in 1..=5 {
        let meta = Meta {
            seq,
            ..Meta::default()
        };
        let log = Some(pb::ChangeBatch {
            seq,
            ..Default::default()
        });
        let groups = vec![(
            vec![catalog::Value::Int(seq as i64)],
            Some(GroupState {
                rows: 1,
                ..Default::default()
            }),
        )];
        store
            .commit(Commit {
                meta,
                log,
                groups,
                ..Commit::default()
            })
            .expect("commit");
    }
    store.truncate_log(3).expect("truncate");
    assert!(
        store.read_log(2, 10).expect("read").is_empty(),
        "seq 2 is gone: the reader must resynchronise"
    );
    assert_eq!(
        store
            .read_log(4, 10)
            .expect("read")
            .iter()
            .map(|b| b.seq)
            .collect::<Vec<_>>(),
        vec![4, 5]
    );
    let (meta, groups) = store.consistent_state().expect("state");
    assert_eq!((meta.seq, groups.len()), (5, 5));
}

#[test]
fn epochs_are_created_once_and_only_grow_within_their_lease() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open_db(dir.path()).expect("open");
    let store = ViewStore::new(db.clone(), 3);
    let e1 = store.epoch(2).expect("epoch").expect("lease");
    assert_eq!(e1, first_epoch(2));
    assert_eq!(lease_of(e1), 2);
    assert_eq!(
        store.epoch(2).expect("epoch"),
        Some(e1),
        "kept, not re-created"
    );
    // Above a region's epoch of the same lease.
    let e2 = store.bump_epoch(2, e1 + 5).expect("bump");
    assert_eq!(e2, Some(e1 + 6));
    // A second shipper asking to go above the old epoch sees the new one.
    assert_eq!(store.bump_epoch(2, e1).expect("bump"), Some(e1 + 6));
    // A region holding a newer lease's epoch cannot be out-bid: this worker lost the view.
    assert_eq!(store.bump_epoch(2, first_epoch(3)).expect("bump"), None);
    drop(store);
    let store = ViewStore::new(db, 3);
    assert_eq!(store.epoch(2).expect("epoch"), Some(e1 + 6), "persisted");
    // A new lease starts above every epoch of the old one; the old lease is then refused.
    let e3 = store.epoch(5).expect("epoch").expect("lease");
    assert_eq!(e3, first_epoch(5));
    assert!(e3 > e1 + 6);
    assert_eq!(store.epoch(4).expect("epoch"), None);
    assert_eq!(store.bump_epoch(4, 0).expect("bump"), None);
    // A wiped store starts the lease's first epoch again.
    store.destroy().expect("destroy");
    assert_eq!(store.epoch(5).expect("epoch"), Some(first_epoch(5)));
}

#[test]
fn a_truncate_deletes_stored_rows_before_the_batch_writes_its_own() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = ViewStore::new(open_db(dir.path()).expect("open"), 3);
    let row = |i: i64| {
        (
            vec![catalog::Value::Int(i)],
            Some(vec![catalog::Value::Int(i)]),
        )
    };
    store
        .commit(Commit {
            rows: vec![row(1), row(2)],
            ..Commit::default()
        })
        .expect("commit");
    store
        .commit(Commit {
            rows: vec![row(3)],
            truncate_rows: true,
            ..Commit::default()
        })
        .expect("commit");
    for (i, kept) in [(1, false), (2, false), (3, true)] {
        assert_eq!(
            store
                .get_row(&vec![catalog::Value::Int(i)])
                .expect("get")
                .is_some(),
            kept,
            "row {i}"
        );
    }
}
