//! The catalog on disk: `entry/` + id (16 hex digits) → the statement's SQL. Statements are
//! replayed in id order on start, through the same validation as when they were accepted.
//! Beside them, per view: `lease/` + id → its last lease grant (JSON), and `start/` + id → the
//! starting offset of each partition (JSON), recorded once.

use std::collections::BTreeMap;
use std::path::Path;

use crate::placement::Grant;

use rocksdb::{Direction, IteratorMode, WriteOptions, DB};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("corrupt catalog entry {key}: {detail}")]
    Corrupt { key: String, detail: String },
}

pub struct CatalogStore {
    db: DB,
    /// Serialises the read-modify-write of starting offsets.
    starts: std::sync::Mutex<()>,
}

const NEXT_ID: &[u8] = b"next_id";
const IDENTITY: &[u8] = b"identity";

fn key(id: u64) -> String {
    format!("entry/{id:016x}")
}

/// Deletes a statement, and a view's lease and starting offsets with it.
fn delete_entry(wb: &mut rocksdb::WriteBatch, id: u64) {
    wb.delete(key(id));
    wb.delete(tagged("lease/", id));
    wb.delete(tagged("start/", id));
}

impl CatalogStore {
    pub fn open(path: &Path) -> Result<CatalogStore, StoreError> {
        let mut opts = rocksdb::Options::default();
        opts.create_if_missing(true);
        Ok(CatalogStore {
            db: DB::open(&opts, path)?,
            starts: std::sync::Mutex::new(()),
        })
    }

    /// Every stored `(id, sql)`, in id order.
    pub fn load(&self) -> Result<Vec<(u64, String)>, StoreError> {
        let mut out = Vec::new();
        for item in self
            .db
            .iterator(IteratorMode::From(b"entry/", Direction::Forward))
        {
            let (k, v) = item?;
            let Some(hex) = k.strip_prefix(b"entry/") else {
                break;
            };
            let k_str = String::from_utf8_lossy(&k).to_string();
            let hex = std::str::from_utf8(hex).map_err(|e| StoreError::Corrupt {
                key: k_str.clone(),
                detail: e.to_string(),
            })?;
            let id = u64::from_str_radix(hex, 16).map_err(|e| StoreError::Corrupt {
                key: k_str.clone(),
                detail: e.to_string(),
            })?;
            let sql = String::from_utf8(v.to_vec()).map_err(|e| StoreError::Corrupt {
                key: k_str,
                detail: e.to_string(),
            })?;
            out.push((id, sql));
        }
        Ok(out)
    }

    /// Durable before it returns: a statement acknowledged to the user survives a crash. Also
    /// moves the id counter past `id`, so that ids are never reused.
    pub fn put(&self, id: u64, sql: &str) -> Result<(), StoreError> {
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        let mut wb = rocksdb::WriteBatch::default();
        wb.put(key(id), sql);
        wb.put(NEXT_ID, (id + 1).to_be_bytes());
        self.db.write_opt(wb, &opts)?;
        Ok(())
    }

    /// The next unused id (1 for a new catalog).
    pub fn next_id(&self) -> Result<u64, StoreError> {
        match self.db.get(NEXT_ID)? {
            None => Ok(1),
            Some(b) => Ok(u64::from_be_bytes(b.as_slice().try_into().map_err(
                |_| StoreError::Corrupt {
                    key: "next_id".into(),
                    detail: format!("{b:?}"),
                },
            )?)),
        }
    }

    /// The catalog's identity: a number drawn (`draw`) when the catalog is created and kept
    /// with it. Central workers keep it beside each view's state, so that a catalog made anew
    /// (a coordinator on an empty data dir issues ids from 1 again) is never mistaken for the
    /// one whose views they hold state for.
    pub fn identity(&self, draw: impl FnOnce() -> u64) -> Result<u64, StoreError> {
        if let Some(b) = self.db.get(IDENTITY)? {
            return Ok(u64::from_be_bytes(b.as_slice().try_into().map_err(
                |_| StoreError::Corrupt {
                    key: "identity".into(),
                    detail: format!("{b:?}"),
                },
            )?));
        }
        let id = draw() | 1;
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        self.db.put_opt(IDENTITY, id.to_be_bytes(), &opts)?;
        Ok(id)
    }

    /// Stores a `CREATE OR REPLACE` under `id` and deletes the statement it replaces (with its
    /// lease and starting offsets) in one durable write: a crash leaves the old view or the
    /// new one, never both or neither.
    pub fn replace(&self, old: u64, id: u64, sql: &str) -> Result<(), StoreError> {
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        let mut wb = rocksdb::WriteBatch::default();
        delete_entry(&mut wb, old);
        wb.put(key(id), sql);
        wb.put(NEXT_ID, (id + 1).to_be_bytes());
        self.db.write_opt(wb, &opts)?;
        Ok(())
    }

    /// Deletes a statement, and a view's lease and starting offsets with it.
    pub fn delete(&self, id: u64) -> Result<(), StoreError> {
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        let mut wb = rocksdb::WriteBatch::default();
        delete_entry(&mut wb, id);
        self.db.write_opt(wb, &opts)?;
        Ok(())
    }

    /// Every view's last lease grant.
    pub fn load_grants(&self) -> Result<Vec<(u64, Grant)>, StoreError> {
        let mut out = Vec::new();
        for item in self
            .db
            .iterator(IteratorMode::From(b"lease/", Direction::Forward))
        {
            let (k, v) = item?;
            let Some(hex) = k.strip_prefix(b"lease/") else {
                break;
            };
            let what = String::from_utf8_lossy(&k).to_string();
            let id = std::str::from_utf8(hex)
                .ok()
                .and_then(|h| u64::from_str_radix(h, 16).ok())
                .ok_or_else(|| StoreError::Corrupt {
                    key: what.clone(),
                    detail: "not a view id".into(),
                })?;
            let grant: Grant = serde_json::from_slice(&v).map_err(|e| StoreError::Corrupt {
                key: what,
                detail: e.to_string(),
            })?;
            out.push((id, grant));
        }
        Ok(out)
    }

    /// Durable before it returns: an epoch is never granted twice, across a crash too.
    /// `None` forgets the view's lease.
    pub fn put_grants(&self, grants: &[(u64, Option<&Grant>)]) -> Result<(), StoreError> {
        if grants.is_empty() {
            return Ok(());
        }
        let mut wb = rocksdb::WriteBatch::default();
        for (view, grant) in grants {
            match grant {
                Some(g) => {
                    let v = serde_json::to_vec(g).map_err(|e| StoreError::Corrupt {
                        key: tagged("lease/", *view),
                        detail: e.to_string(),
                    })?;
                    wb.put(tagged("lease/", *view), v);
                }
                None => wb.delete(tagged("lease/", *view)),
            }
        }
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        self.db.write_opt(wb, &opts)?;
        Ok(())
    }

    /// Records the starting offsets of partitions that have none yet and returns every
    /// recorded one: the first worker to start a partition decides where the view starts.
    pub fn record_start(
        &self,
        view: u64,
        offsets: &[(i32, i64)],
    ) -> Result<BTreeMap<i32, i64>, StoreError> {
        let _guard = self.starts.lock().unwrap_or_else(|p| p.into_inner());
        let k = tagged("start/", view);
        let mut recorded: BTreeMap<i32, i64> = match self.db.get(&k)? {
            None => BTreeMap::new(),
            Some(v) => serde_json::from_slice(&v).map_err(|e| StoreError::Corrupt {
                key: k.clone(),
                detail: e.to_string(),
            })?,
        };
        let before = recorded.len();
        for (p, o) in offsets {
            recorded.entry(*p).or_insert(*o);
        }
        if recorded.len() != before {
            let v = serde_json::to_vec(&recorded).map_err(|e| StoreError::Corrupt {
                key: k.clone(),
                detail: e.to_string(),
            })?;
            let mut opts = WriteOptions::default();
            opts.set_sync(true);
            self.db.put_opt(&k, v, &opts)?;
        }
        Ok(recorded)
    }
}

/// A catalog identity, drawn once when the catalog is first created.
pub use meridian_proto::draw_run_id as draw_identity;

fn tagged(tag: &str, id: u64) -> String {
    format!("{tag}{id:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_survive_reopen_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let s = CatalogStore::open(dir.path()).expect("open");
            s.put(2, "b").expect("put");
            s.put(17, "c").expect("put");
            s.put(1, "a").expect("put");
            s.delete(2).expect("delete");
        }
        let s = CatalogStore::open(dir.path()).expect("reopen");
        assert_eq!(
            s.load().expect("load"),
            vec![(1, "a".to_string()), (17, "c".to_string())]
        );
    }

    #[test]
    fn the_identity_is_drawn_once_and_a_new_catalog_draws_another() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = CatalogStore::open(dir.path())
            .expect("open")
            .identity(|| 40)
            .expect("identity");
        assert_eq!(first, 41);
        let again = CatalogStore::open(dir.path())
            .expect("reopen")
            .identity(|| 1000)
            .expect("identity");
        assert_eq!(again, first);
        let other = tempfile::tempdir().expect("tempdir");
        let fresh = CatalogStore::open(other.path())
            .expect("open")
            .identity(|| 1000)
            .expect("identity");
        assert_ne!(fresh, first);
    }

    #[test]
    fn grants_and_starting_offsets_survive_reopen_and_go_with_the_view() {
        use crate::placement::Holder;
        let dir = tempfile::tempdir().expect("tempdir");
        let g = Grant {
            epoch: 3,
            holder: Holder {
                worker: "w".into(),
                session: 5,
            },
        };
        {
            let s = CatalogStore::open(dir.path()).expect("open");
            s.put(1, "a").expect("put");
            s.put(2, "b").expect("put");
            s.put_grants(&[(1, Some(&g)), (2, Some(&g))])
                .expect("grants");
            assert_eq!(
                s.record_start(1, &[(0, 10), (1, 0)]).expect("start"),
                BTreeMap::from([(0, 10), (1, 0)])
            );
            // The first record wins; a new partition is added.
            assert_eq!(
                s.record_start(1, &[(0, 99), (2, 7)]).expect("start"),
                BTreeMap::from([(0, 10), (1, 0), (2, 7)])
            );
            s.delete(2).expect("delete");
        }
        let s = CatalogStore::open(dir.path()).expect("reopen");
        assert_eq!(s.load_grants().expect("grants"), vec![(1, g)]);
        assert_eq!(
            s.record_start(1, &[]).expect("start"),
            BTreeMap::from([(0, 10), (1, 0), (2, 7)])
        );
        assert!(s.record_start(2, &[]).expect("start").is_empty());
    }
}
