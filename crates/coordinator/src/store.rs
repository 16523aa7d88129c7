//! The catalog on disk: `entry/` + id (16 hex digits) → the statement's SQL. Statements are
//! replayed in id order on start, through the same validation as when they were accepted.

use std::path::Path;

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
}

const NEXT_ID: &[u8] = b"next_id";

fn key(id: u64) -> String {
    format!("entry/{id:016x}")
}

impl CatalogStore {
    pub fn open(path: &Path) -> Result<CatalogStore, StoreError> {
        let mut opts = rocksdb::Options::default();
        opts.create_if_missing(true);
        Ok(CatalogStore {
            db: DB::open(&opts, path)?,
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

    pub fn delete(&self, id: u64) -> Result<(), StoreError> {
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        self.db.delete_opt(key(id), &opts)?;
        Ok(())
    }
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
}
