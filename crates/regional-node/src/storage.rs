//! The Raft log and hard state in RocksDB, behind raft-rs's [`Storage`] trait.
//!
//! Layout (only this module knows it): `hs` → HardState, `cs` → ConfState, `e` + index (8
//! bytes big-endian) → Entry, all protobuf-2 encoded as raft-rs defines them, and `trunc` →
//! the index and term of the last entry compacted away (16 bytes, big-endian). Compacted
//! entries live on in the DuckDB replica; a node that needs them gets a snapshot of it.

use std::path::Path;
use std::sync::Arc;

use protobuf::Message as PbMessage;
use raft::prelude::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};
use rocksdb::{Direction, IteratorMode, WriteBatch, WriteOptions, DB};

fn entry_key(index: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = b'e';
    k[1..].copy_from_slice(&index.to_be_bytes());
    k
}

fn other(e: impl std::error::Error + Send + Sync + 'static) -> raft::Error {
    raft::Error::Store(StorageError::Other(Box::new(e)))
}

pub struct RaftStore {
    db: Arc<DB>,
    hard_state: HardState,
    conf_state: ConfState,
    /// Index of the last entry in the log (the truncation point when empty).
    last_index: u64,
    last_term: u64,
    /// Index and term of the last entry compacted away (0, 0 before any compaction).
    trunc_index: u64,
    trunc_term: u64,
    /// Reads the replica when a follower needs a snapshot (set once the replica is open).
    replica: Option<duckdb::Connection>,
}

impl RaftStore {
    /// Opens the log; a new one starts with `voters` as its configuration.
    pub fn open(path: &Path, voters: &[u64]) -> Result<RaftStore, raft::Error> {
        let mut opts = rocksdb::Options::default();
        opts.create_if_missing(true);
        let db = Arc::new(DB::open(&opts, path).map_err(other)?);
        let hard_state = match db.get(b"hs").map_err(other)? {
            Some(b) => HardState::parse_from_bytes(&b).map_err(other)?,
            None => HardState::default(),
        };
        let conf_state = match db.get(b"cs").map_err(other)? {
            Some(b) => ConfState::parse_from_bytes(&b).map_err(other)?,
            None => {
                let mut cs = ConfState::default();
                cs.set_voters(voters.to_vec());
                db.put(b"cs", cs.write_to_bytes().map_err(other)?)
                    .map_err(other)?;
                cs
            }
        };
        let (trunc_index, trunc_term) = match db.get(b"trunc").map_err(other)? {
            Some(b) if b.len() == 16 => (
                u64::from_be_bytes(b[..8].try_into().expect("8 bytes")),
                u64::from_be_bytes(b[8..].try_into().expect("8 bytes")),
            ),
            Some(b) => {
                return Err(other(std::io::Error::other(format!(
                    "corrupt truncation record: {b:?}"
                ))))
            }
            None => (0, 0),
        };
        let (last_index, last_term) = match db
            .iterator(IteratorMode::From(&entry_key(u64::MAX), Direction::Reverse))
            .next()
        {
            Some(item) => {
                let (k, v) = item.map_err(other)?;
                if k.first() == Some(&b'e') {
                    let e = Entry::parse_from_bytes(&v).map_err(other)?;
                    (e.index, e.term)
                } else {
                    (trunc_index, trunc_term)
                }
            }
            None => (trunc_index, trunc_term),
        };
        assert!(
            hard_state.commit <= last_index,
            "commit index {} is past the last log index {last_index}",
            hard_state.commit
        );
        Ok(RaftStore {
            db,
            hard_state,
            conf_state,
            last_index,
            last_term,
            trunc_index,
            trunc_term,
            replica: None,
        })
    }

    /// Appends entries (truncating any conflicting suffix) and saves the hard state, in one
    /// write, synced when `sync` (raft-rs's `Ready::must_sync`: new entries, a new term or a
    /// vote), since Raft must not acknowledge what a crash could lose. A hard state that only
    /// moves the commit index needs no sync: a commit index lost in a crash is learnt again
    /// from the leader, and a replica found ahead of it is handled at start.
    pub fn persist(
        &mut self,
        entries: &[Entry],
        hs: Option<&HardState>,
        sync: bool,
    ) -> Result<(), raft::Error> {
        let mut wb = WriteBatch::default();
        if let Some(first) = entries.first() {
            assert!(
                first.index >= 1 && first.index <= self.last_index + 1,
                "log gap: appending {} after {}",
                first.index,
                self.last_index
            );
            for e in entries {
                wb.put(entry_key(e.index), e.write_to_bytes().map_err(other)?);
            }
            let new_last = entries[entries.len() - 1].index;
            if new_last < self.last_index {
                wb.delete_range(entry_key(new_last + 1), entry_key(self.last_index + 1));
            }
        }
        if let Some(hs) = hs {
            wb.put(b"hs", hs.write_to_bytes().map_err(other)?);
        }
        let mut opts = WriteOptions::default();
        opts.set_sync(sync || !entries.is_empty());
        self.db.write_opt(wb, &opts).map_err(other)?;
        if let Some(last) = entries.last() {
            self.last_index = last.index;
            self.last_term = last.term;
        }
        if let Some(hs) = hs {
            self.hard_state = hs.clone();
        }
        Ok(())
    }

    /// Lets the store read the replica to build snapshots.
    pub fn set_replica_reader(&mut self, conn: duckdb::Connection) {
        self.replica = Some(conn);
    }

    /// Index of the first entry still in the log.
    pub fn log_first_index(&self) -> u64 {
        self.trunc_index + 1
    }

    /// Drops the entries up to `index` (inclusive), which the replica has applied.
    pub fn compact(&mut self, index: u64) -> Result<(), raft::Error> {
        if index <= self.trunc_index {
            return Ok(());
        }
        assert!(
            index <= self.last_index,
            "compacting to {index} past the last index {}",
            self.last_index
        );
        let term = self.term(index)?;
        let mut wb = WriteBatch::default();
        wb.delete_range(entry_key(0), entry_key(index + 1));
        wb.put(b"trunc", [index.to_be_bytes(), term.to_be_bytes()].concat());
        self.db.write(wb).map_err(other)?;
        self.trunc_index = index;
        self.trunc_term = term;
        Ok(())
    }

    /// Replaces the log with a snapshot's position (the replica was restored from its data).
    pub fn apply_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), raft::Error> {
        let meta = snapshot.get_metadata();
        let mut hs = self.hard_state.clone();
        hs.term = hs.term.max(meta.term);
        hs.commit = hs.commit.max(meta.index);
        let mut wb = WriteBatch::default();
        wb.delete_range(entry_key(0), entry_key(u64::MAX));
        wb.put(
            b"trunc",
            [meta.index.to_be_bytes(), meta.term.to_be_bytes()].concat(),
        );
        wb.put(b"hs", hs.write_to_bytes().map_err(other)?);
        wb.put(
            b"cs",
            meta.get_conf_state().write_to_bytes().map_err(other)?,
        );
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        self.db.write_opt(wb, &opts).map_err(other)?;
        self.hard_state = hs;
        self.conf_state = meta.get_conf_state().clone();
        self.trunc_index = meta.index;
        self.trunc_term = meta.term;
        self.last_index = meta.index;
        self.last_term = meta.term;
        Ok(())
    }

    /// Records a new commit index (from a LightReady), without a sync: the entries it covers
    /// are durable already, and a commit index lost in a crash is learnt again from the
    /// leader. The replica may then be ahead of the durable commit index; the node starts from
    /// the commit index and skips what the replica has applied (raft-rs refuses to start with
    /// `applied` above `commit`).
    pub fn set_commit(&mut self, commit: u64) -> Result<(), raft::Error> {
        self.hard_state.commit = commit;
        self.db
            .put(b"hs", self.hard_state.write_to_bytes().map_err(other)?)
            .map_err(other)
    }

    /// The durable commit index.
    pub fn commit_index(&self) -> u64 {
        self.hard_state.commit
    }

    fn entry(&self, index: u64) -> Result<Entry, raft::Error> {
        match self.db.get(entry_key(index)).map_err(other)? {
            Some(b) => Entry::parse_from_bytes(&b).map_err(other),
            None => Err(raft::Error::Store(StorageError::Unavailable)),
        }
    }
}

impl Storage for RaftStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState {
            hard_state: self.hard_state.clone(),
            conf_state: self.conf_state.clone(),
        })
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let max_size = max_size.into();
        if low <= self.trunc_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        assert!(
            high <= self.last_index + 1,
            "index out of bound (last: {}, high: {high})",
            self.last_index
        );
        let mut out = Vec::with_capacity((high - low) as usize);
        let mut size = 0u64;
        for item in self
            .db
            .iterator(IteratorMode::From(&entry_key(low), Direction::Forward))
        {
            let (k, v) = item.map_err(other)?;
            if k.as_ref() >= entry_key(high).as_slice() {
                break;
            }
            size += v.len() as u64;
            if !out.is_empty() && max_size.is_some_and(|m| size > m) {
                break;
            }
            out.push(Entry::parse_from_bytes(&v).map_err(other)?);
        }
        if out.len() as u64 != high - low && max_size.is_none() {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.trunc_index {
            return Ok(self.trunc_term);
        }
        if idx < self.trunc_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx == self.last_index {
            return Ok(self.last_term);
        }
        if idx > self.last_index {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        Ok(self.entry(idx)?.term)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.trunc_index + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last_index)
    }

    fn snapshot(&self, _request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let Some(conn) = &self.replica else {
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        };
        // The replica's state is exactly the state at the last entry that changed it, which
        // compaction never passes.
        let (index, data) = crate::replica::snapshot(conn).map_err(other)?;
        if index < self.trunc_index {
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        let mut snap = Snapshot {
            data: data.into(),
            ..Default::default()
        };
        let meta = snap.mut_metadata();
        meta.index = index;
        meta.term = self.term(index)?;
        meta.set_conf_state(self.conf_state.clone());
        Ok(snap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: vec![index as u8].into(),
            ..Default::default()
        }
    }

    #[test]
    fn log_survives_reopen_and_truncates_conflicts() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut s = RaftStore::open(dir.path(), &[1, 2, 3]).expect("open");
            let hs = HardState {
                term: 2,
                vote: 1,
                commit: 2,
                ..Default::default()
            };
            s.persist(
                &[entry(1, 1), entry(2, 1), entry(3, 2), entry(4, 2)],
                Some(&hs),
                true,
            )
            .expect("persist");
            // A new leader overwrites index 3 onwards with a shorter suffix.
            s.persist(&[entry(3, 3)], None, true).expect("truncate");
            assert_eq!(s.last_index().expect("last"), 3);
        }
        let s = RaftStore::open(dir.path(), &[9]).expect("reopen");
        let state = s.initial_state().expect("state");
        assert_eq!(state.hard_state.term, 2);
        assert_eq!(state.hard_state.commit, 2);
        assert_eq!(
            state.conf_state.voters,
            vec![1, 2, 3],
            "the first configuration is kept"
        );
        assert_eq!(s.last_index().expect("last"), 3);
        assert_eq!(s.term(3).expect("term"), 3);
        assert_eq!(s.term(2).expect("term"), 1);
        assert!(s.term(4).is_err());
        let es = s
            .entries(1, 4, None, GetEntriesContext::empty(false))
            .expect("entries");
        assert_eq!(
            es.iter().map(|e| (e.index, e.term)).collect::<Vec<_>>(),
            vec![(1, 1), (2, 1), (3, 3)]
        );
        let limited = s
            .entries(1, 4, Some(1), GetEntriesContext::empty(false))
            .expect("entries");
        assert_eq!(limited.len(), 1, "max_size still returns one entry");
    }
}

#[cfg(test)]
mod compaction_tests {
    use super::*;
    use crate::replica::Replica;
    use meridian_proto::v1 as pb;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            ..Default::default()
        }
    }

    /// The push of batch `seq` of a deterministic change log, its checksum chained from 1.
    fn push(seq: u64) -> pb::PushRequest {
        let mut p = push_unchained(seq);
        let mut prev = 0;
        for s in 1..seq {
            prev = meridian_proto::chain_checksum(prev, &push_unchained(s).batches[0]);
        }
        p.batches[0].checksum = meridian_proto::chain_checksum(prev, &p.batches[0]);
        p
    }

    fn push_unchained(seq: u64) -> pb::PushRequest {
        let text = |s: &str| pb::Value {
            kind: Some(pb::value::Kind::Text(s.into())),
        };
        pb::PushRequest {
            schema: Some(pb::ViewSchema {
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
                ],
                key_indexes: vec![0],
                view_id: 7,
            }),
            batches: vec![pb::ChangeBatch {
                view: "v".into(),
                seq,
                changes: vec![pb::RowChange {
                    key: vec![text("a")],
                    row: Some(pb::Row {
                        values: vec![
                            text("a"),
                            pb::Value {
                                kind: Some(pb::value::Kind::Int(seq as i64)),
                            },
                        ],
                    }),
                }],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn compaction_and_snapshots_carry_the_replica_to_an_empty_node() {
        let dir = tempfile::tempdir().expect("tempdir");
        // The leader: entries 1..=10, the replica applied 1..=8, the log compacted to 5.
        let mut leader_replica = Replica::open(&dir.path().join("leader.duckdb")).expect("replica");
        for i in 1..=8 {
            leader_replica.apply(i, &push(i), 100).expect("apply");
        }
        let mut log = RaftStore::open(&dir.path().join("leader-raft"), &[1, 2, 3]).expect("log");
        let entries: Vec<Entry> = (1..=10).map(|i| entry(i, 2)).collect();
        log.persist(
            &entries,
            Some(&HardState {
                term: 2,
                commit: 10,
                ..Default::default()
            }),
            true,
        )
        .expect("persist");
        log.set_replica_reader(leader_replica.reader().expect("reader"));
        log.compact(5).expect("compact");
        assert_eq!(log.first_index().expect("first"), 6);
        assert!(matches!(
            log.entries(3, 7, None, GetEntriesContext::empty(false)),
            Err(raft::Error::Store(StorageError::Compacted))
        ));
        assert_eq!(log.term(5).expect("the truncation point keeps its term"), 2);
        let snap = log.snapshot(0, 2).expect("snapshot");
        assert_eq!(snap.get_metadata().index, 8, "the replica's own position");
        assert_eq!(snap.get_metadata().get_conf_state().voters, vec![1, 2, 3]);

        // A new node installs it.
        let mut replica = Replica::open(&dir.path().join("follower.duckdb")).expect("replica");
        replica
            .restore(snap.get_metadata().index, &snap.data)
            .expect("restore");
        let mut flog = RaftStore::open(&dir.path().join("follower-raft"), &[1, 2, 3]).expect("log");
        flog.apply_snapshot(&snap).expect("apply snapshot");
        assert_eq!(
            (
                flog.first_index().expect("first"),
                flog.last_index().expect("last")
            ),
            (9, 8)
        );
        assert_eq!(replica.applied_index(), 8);
        let n: i64 = replica
            .reader()
            .expect("reader")
            .query_row("SELECT n FROM v WHERE k = 'a'", [], |r| r.get(0))
            .expect("row");
        assert_eq!(n, 8);
        drop(flog);
        let flog = RaftStore::open(&dir.path().join("follower-raft"), &[9]).expect("reopen");
        assert_eq!(flog.initial_state().expect("state").hard_state.commit, 8);
        assert_eq!(flog.term(8).expect("term"), 2);
        drop(replica);
        let replica = Replica::open(&dir.path().join("follower.duckdb")).expect("reopen");
        assert_eq!(replica.position("v").seq, 8);
    }
}
