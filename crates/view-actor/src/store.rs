//! The view actor's durable state in RocksDB: group accumulators, source rows, consumed
//! offsets, the change log and dead letters. Everything one batch changes is written in one
//! atomic `WriteBatch`, so a restart resumes exactly where the last batch ended.

use std::collections::HashMap;
use std::sync::Arc;

use meridian_proto::v1 as pb;
use prost::Message;
use rocksdb::{Direction, IteratorMode, WriteBatch, DB};
use serde::{Deserialize, Serialize};

use crate::core::{GroupState, JoinWrites, Key, Row, RowLookup, Side};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("corrupt {what} in the view store: {detail}")]
    Corrupt { what: &'static str, detail: String },
}

/// Dead-letter records kept per view: a flood of bad messages must not fill the disk.
pub const DEAD_LETTERS_KEPT: u64 = 10_000;

/// Per-view counters that change with every batch.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    /// Sequence of the last change batch (0 before the first).
    pub seq: u64,
    /// Source messages consumed, dead letters included.
    pub events: u64,
    pub dead_letters: u64,
    pub last_batch_at_ms: i64,
    /// Running checksum of the change log at `seq` (`meridian_proto::chain_checksum`).
    #[serde(default)]
    pub checksum: u64,
    /// Bytes of the messages consumed (keys and values).
    #[serde(default)]
    pub source_bytes: u64,
    /// Rows the view has now, and their size (`core::row_bytes`).
    #[serde(default)]
    pub view_rows: u64,
    #[serde(default)]
    pub view_bytes: u64,
    /// The layout of the view's state ([`STATE_FORMAT`] when written by this version).
    #[serde(default)]
    pub state_format: u32,
    /// Event-time watermark (µs) of a view whose windows close, and the latest event time
    /// applied from each partition.
    #[serde(default)]
    pub watermark_us: Option<i64>,
    #[serde(default)]
    pub event_times_us: std::collections::BTreeMap<i32, i64>,
    /// The arrival number of the next event (views with `latest` or `earliest`).
    #[serde(default)]
    pub arrival: u64,
    /// Events that changed a closed window and were not applied.
    #[serde(default)]
    pub late_events: u64,
    /// For a view over a view: the newest epoch of the read view's change log seen on each
    /// input partition. A message of an older epoch (a former owner's, late) is not applied.
    #[serde(default)]
    pub change_epochs: std::collections::BTreeMap<i32, u64>,
}

/// The layout of a view's state: 4 adds closed windows; 3 stores each source row's plan
/// slots, floats by bit pattern and float sums exactly (2 stored floats as JSON numbers, 1
/// stored the source row).
pub const STATE_FORMAT: u32 = 4;

/// A change log's epoch is its lease epoch (granted by the coordinator, larger on every grant
/// to a worker session) in the high 32 bits, and a generation within the lease (a new one
/// whenever the central state is found rolled back or diverged) in the low 32: an epoch of a
/// newer lease is above every epoch of an older one, so a worker that lost a view can never
/// out-bid its new owner.
pub const EPOCH_LEASE_SHIFT: u32 = 32;

/// An epoch as `lease.generation`, as status prints it.
pub fn epoch_text(epoch: u64) -> String {
    format!("{}.{}", lease_of(epoch), epoch & 0xffff_ffff)
}

/// The lease epoch an epoch belongs to.
pub fn lease_of(epoch: u64) -> u64 {
    epoch >> EPOCH_LEASE_SHIFT
}

/// The first epoch of a lease.
pub fn first_epoch(lease: u64) -> u64 {
    (lease << EPOCH_LEASE_SHIFT) | 1
}

/// Serialises the read-modify-write of epochs (shippers of several regions may race on one).
static EPOCH_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub reason: String,
}

/// Everything one batch changes.
#[derive(Default)]
pub struct Commit {
    pub meta: Meta,
    pub offsets: Vec<(i32, i64)>,
    pub groups: Vec<(Key, Option<GroupState>)>,
    pub rows: Vec<(Key, Option<Row>)>,
    pub log: Option<pb::ChangeBatch>,
    pub dead_letters: Vec<DeadLetter>,
    /// Delete every stored source row first (the source was truncated).
    pub truncate_rows: bool,
    /// A join view's rows and index.
    pub join: Option<JoinWrites>,
}

/// The tags of a join view's stored rows (by side) and of its index from a join key to the
/// left rows holding it (`jx/` + join key + NUL + left key; JSON text holds no NUL, so a
/// join key's entries are exactly those under its prefix).
const JOIN_LEFT: &[u8] = b"jl/";
const JOIN_RIGHT: &[u8] = b"jr/";
const JOIN_INDEX: &[u8] = b"jx/";

fn side_tag(side: Side) -> &'static [u8] {
    match side {
        Side::Left => JOIN_LEFT,
        Side::Right => JOIN_RIGHT,
    }
}

fn index_prefix(key: &Key) -> Result<Vec<u8>, String> {
    let mut k = serde_json::to_vec(key).map_err(|e| e.to_string())?;
    k.push(0);
    Ok(k)
}

/// A key (without the view's prefix) and its value.
type KeyValue = (Box<[u8]>, Box<[u8]>);

#[derive(Clone)]
pub struct ViewStore {
    db: Arc<DB>,
    prefix: Vec<u8>,
}

impl ViewStore {
    /// The state of the view with catalog id `view_id`: a dropped and re-created view gets a
    /// new id and so starts from nothing.
    pub fn new(db: Arc<DB>, view_id: u64) -> ViewStore {
        ViewStore {
            db,
            prefix: format!("view/{view_id:016x}/").into_bytes(),
        }
    }

    fn key(&self, part: &[u8]) -> Vec<u8> {
        let mut k = self.prefix.clone();
        k.extend_from_slice(part);
        k
    }

    fn tagged(&self, tag: &[u8], rest: &[u8]) -> Vec<u8> {
        let mut k = self.key(tag);
        k.extend_from_slice(rest);
        k
    }

    fn scan(&self, tag: &[u8]) -> impl Iterator<Item = Result<KeyValue, rocksdb::Error>> + '_ {
        let start = self.key(tag);
        let len = start.len();
        let prefix = start.clone();
        self.db
            .iterator(IteratorMode::From(&start, Direction::Forward))
            .take_while(move |item| item.as_ref().map_or(true, |(k, _)| k.starts_with(&prefix)))
            .map(move |item| item.map(|(k, v)| (k[len..].into(), v)))
    }

    pub fn load_meta(&self) -> Result<Meta, StoreError> {
        parse_meta(self.db.get(self.key(b"meta"))?)
    }

    pub fn load_offsets(&self) -> Result<HashMap<i32, i64>, StoreError> {
        let mut out = HashMap::new();
        for item in self.scan(b"off/") {
            let (k, v) = item?;
            let partition =
                i32::from_be_bytes(k.as_ref().try_into().map_err(|_| StoreError::Corrupt {
                    what: "offset key",
                    detail: format!("{k:?}"),
                })?);
            let offset =
                i64::from_be_bytes(v.as_ref().try_into().map_err(|_| StoreError::Corrupt {
                    what: "offset",
                    detail: format!("{v:?}"),
                })?);
            out.insert(partition, offset);
        }
        Ok(out)
    }

    pub fn commit(&self, c: Commit) -> Result<(), StoreError> {
        let mut wb = WriteBatch::default();
        let json = |v: &dyn erased::Ser| v.to_json();
        if c.truncate_rows {
            // Before the batch's own rows, which came after the truncate.
            let start = self.key(b"row/");
            let mut end = self.key(b"row/");
            end.push(0xff);
            wb.delete_range(start, end);
        }
        if let Some(j) = &c.join {
            for (truncated, tag) in [(j.truncate_left, JOIN_LEFT), (j.truncate_right, JOIN_RIGHT)] {
                if truncated {
                    let mut end = self.key(tag);
                    end.push(0xff);
                    wb.delete_range(self.key(tag), end);
                }
            }
            if j.truncate_left {
                let mut end = self.key(JOIN_INDEX);
                end.push(0xff);
                wb.delete_range(self.key(JOIN_INDEX), end);
            }
            for (side, rows) in [(Side::Left, &j.left), (Side::Right, &j.right)] {
                for (k, r) in rows {
                    let key = self.tagged(side_tag(side), &json(k));
                    match r {
                        Some(r) => wb.put(key, json(r)),
                        None => wb.delete(key),
                    }
                }
            }
            for (jk, pk, present) in &j.index {
                let mut rest = json(jk);
                rest.push(0);
                rest.extend_from_slice(&json(pk));
                let key = self.tagged(JOIN_INDEX, &rest);
                if *present {
                    wb.put(key, b"");
                } else {
                    wb.delete(key);
                }
            }
        }
        wb.put(self.key(b"meta"), json(&c.meta));
        for (p, o) in &c.offsets {
            wb.put(self.tagged(b"off/", &p.to_be_bytes()), o.to_be_bytes());
        }
        for (k, g) in &c.groups {
            let key = self.tagged(b"grp/", &json(k));
            match g {
                Some(g) => wb.put(key, json(g)),
                None => wb.delete(key),
            }
        }
        for (k, r) in &c.rows {
            let key = self.tagged(b"row/", &json(k));
            match r {
                Some(r) => wb.put(key, json(r)),
                None => wb.delete(key),
            }
        }
        if let Some(batch) = &c.log {
            assert_eq!(
                batch.seq, c.meta.seq,
                "the logged batch is the meta's last sequence"
            );
            wb.put(
                self.tagged(b"log/", &batch.seq.to_be_bytes()),
                batch.encode_to_vec(),
            );
        }
        let first_dead = c.meta.dead_letters - c.dead_letters.len() as u64;
        for (i, d) in c.dead_letters.iter().enumerate() {
            wb.put(
                self.tagged(b"dlq/", &(first_dead + i as u64 + 1).to_be_bytes()),
                json(d),
            );
        }
        if !c.dead_letters.is_empty() && c.meta.dead_letters > DEAD_LETTERS_KEPT {
            // Keep the newest records; the count in `meta` keeps counting them all.
            let oldest_kept = c.meta.dead_letters - DEAD_LETTERS_KEPT + 1;
            wb.delete_range(
                self.tagged(b"dlq/", &0u64.to_be_bytes()),
                self.tagged(b"dlq/", &oldest_kept.to_be_bytes()),
            );
        }
        // Durable before visible: a batch is shipped only after this returns, so a region can
        // never hold a batch that a power loss takes from the central tier.
        let mut opts = rocksdb::WriteOptions::default();
        opts.set_sync(true);
        self.db.write_opt(wb, &opts)?;
        Ok(())
    }

    /// The change log's epoch under lease epoch `lease`: kept while it was made under that
    /// lease, else the first epoch of the lease (a view whose central state is new or wiped
    /// gets the same, and a region's checksum tells them apart). `None` when this store has
    /// seen a newer lease: its worker lost the view.
    pub fn epoch(&self, lease: u64) -> Result<Option<u64>, StoreError> {
        let _guard = EPOCH_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        match self.read_epoch()? {
            Some(e) if lease_of(e) == lease => Ok(Some(e)),
            Some(e) if lease_of(e) > lease => Ok(None),
            _ => self.write_epoch(first_epoch(lease)).map(Some),
        }
    }

    /// Starts a new epoch of lease `lease` above both the current one and `above` (an epoch a
    /// region holds), as the central state was found rolled back or diverged. Synced before
    /// it is used. `None` when that would leave the lease: the region holds a newer lease's
    /// epoch, so this worker no longer owns the view.
    pub fn bump_epoch(&self, lease: u64, above: u64) -> Result<Option<u64>, StoreError> {
        let _guard = EPOCH_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.read_epoch()?.unwrap_or(0);
        if current > above && lease_of(current) == lease {
            // Another shipper of this view bumped it already.
            return Ok(Some(current));
        }
        let next = (current.saturating_add(1))
            .max(above.saturating_add(1))
            .max(first_epoch(lease));
        if lease_of(next) != lease {
            return Ok(None);
        }
        self.write_epoch(next).map(Some)
    }

    fn read_epoch(&self) -> Result<Option<u64>, StoreError> {
        match self.db.get(self.key(b"epoch"))? {
            None => Ok(None),
            Some(v) => Ok(Some(u64::from_be_bytes(v.as_slice().try_into().map_err(
                |_| StoreError::Corrupt {
                    what: "epoch",
                    detail: format!("{v:?}"),
                },
            )?))),
        }
    }

    fn write_epoch(&self, epoch: u64) -> Result<u64, StoreError> {
        let mut opts = rocksdb::WriteOptions::default();
        opts.set_sync(true);
        self.db
            .put_opt(self.key(b"epoch"), epoch.to_be_bytes(), &opts)?;
        Ok(epoch)
    }

    /// How far the view's change topic has been written (for views over the view): the
    /// change log's epoch and seq of the last change written.
    pub fn sink_position(&self) -> Result<Option<(u64, u64)>, StoreError> {
        let Some(v) = self.db.get(self.key(b"sink"))? else {
            return Ok(None);
        };
        let corrupt = || StoreError::Corrupt {
            what: "change topic position",
            detail: format!("{v:?}"),
        };
        let (epoch, seq) = v.split_at_checked(8).ok_or_else(corrupt)?;
        Ok(Some((
            u64::from_be_bytes(epoch.try_into().map_err(|_| corrupt())?),
            u64::from_be_bytes(seq.try_into().map_err(|_| corrupt())?),
        )))
    }

    /// Records how far the change topic has been written (`None`: start it over).
    pub fn set_sink_position(&self, position: Option<(u64, u64)>) -> Result<(), StoreError> {
        match position {
            None => self.db.delete(self.key(b"sink"))?,
            Some((epoch, seq)) => {
                let mut v = epoch.to_be_bytes().to_vec();
                v.extend_from_slice(&seq.to_be_bytes());
                self.db.put(self.key(b"sink"), v)?;
            }
        }
        Ok(())
    }

    /// Up to `max` consecutive change batches starting at `from_seq`.
    pub fn read_log(&self, from_seq: u64, max: usize) -> Result<Vec<pb::ChangeBatch>, StoreError> {
        let mut out = Vec::new();
        let start = self.tagged(b"log/", &from_seq.to_be_bytes());
        let prefix = self.key(b"log/");
        for item in self
            .db
            .iterator(IteratorMode::From(&start, Direction::Forward))
        {
            let (k, v) = item?;
            if !k.starts_with(&prefix) || out.len() >= max {
                break;
            }
            let batch = pb::ChangeBatch::decode(v.as_ref()).map_err(|e| StoreError::Corrupt {
                what: "change batch",
                detail: e.to_string(),
            })?;
            let expected = from_seq + out.len() as u64;
            if out.is_empty() && batch.seq > from_seq {
                // `from_seq` was truncated away: the caller resynchronises with a full batch.
                return Ok(Vec::new());
            }
            if batch.seq != expected {
                return Err(StoreError::Corrupt {
                    what: "change log",
                    detail: format!("expected seq {expected}, found {}", batch.seq),
                });
            }
            out.push(batch);
        }
        Ok(out)
    }

    /// Drops change batches up to `seq` (inclusive).
    pub fn truncate_log(&self, seq: u64) -> Result<(), StoreError> {
        let mut wb = WriteBatch::default();
        wb.delete_range(
            self.tagged(b"log/", &0u64.to_be_bytes()),
            self.tagged(b"log/", &(seq + 1).to_be_bytes()),
        );
        self.db.write(wb)?;
        Ok(())
    }

    /// The view's state read at one instant: the last sequence and every group's accumulators.
    pub fn consistent_state(&self) -> Result<(Meta, HashMap<Key, GroupState>), StoreError> {
        let snapshot = self.db.snapshot();
        let meta = parse_meta(snapshot.get(self.key(b"meta"))?)?;
        let prefix = self.key(b"grp/");
        let mut groups = HashMap::new();
        for item in snapshot.iterator(IteratorMode::From(&prefix, Direction::Forward)) {
            let (k, v) = item?;
            let Some(key) = k.strip_prefix(prefix.as_slice()) else {
                break;
            };
            let key: Key = serde_json::from_slice(key).map_err(|e| StoreError::Corrupt {
                what: "group key",
                detail: e.to_string(),
            })?;
            let state: GroupState =
                serde_json::from_slice(&v).map_err(|e| StoreError::Corrupt {
                    what: "group state",
                    detail: e.to_string(),
                })?;
            groups.insert(key, state);
        }
        Ok((meta, groups))
    }

    /// The most recent dead letters, newest first.
    pub fn recent_dead_letters(&self, max: usize) -> Result<Vec<DeadLetter>, StoreError> {
        let prefix = self.key(b"dlq/");
        let mut end = prefix.clone();
        end.push(0xff);
        let mut out = Vec::new();
        for item in self
            .db
            .iterator(IteratorMode::From(&end, Direction::Reverse))
        {
            let (k, v) = item?;
            if !k.starts_with(&prefix) || out.len() >= max {
                break;
            }
            out.push(serde_json::from_slice(&v).map_err(|e| StoreError::Corrupt {
                what: "dead letter",
                detail: e.to_string(),
            })?);
        }
        Ok(out)
    }

    /// The identity of the catalog that issued the view's id, kept beside its state (`None`:
    /// nothing kept, or kept by a version before catalog identities).
    pub fn catalog_id(&self) -> Result<Option<u64>, StoreError> {
        match self.db.get(self.key(b"catalog"))? {
            None => Ok(None),
            Some(b) => {
                let id = u64::from_be_bytes(b.as_slice().try_into().map_err(|_| {
                    StoreError::Corrupt {
                        what: "catalog identity",
                        detail: format!("{b:?}"),
                    }
                })?);
                // 0 is no identity.
                Ok((id != 0).then_some(id))
            }
        }
    }

    pub fn set_catalog_id(&self, id: u64) -> Result<(), StoreError> {
        self.db.put(self.key(b"catalog"), id.to_be_bytes())?;
        Ok(())
    }

    /// Makes the state the view's under catalog `catalog_id`: state kept under another
    /// catalog's identity belongs to another view that had the same id, and is deleted.
    /// Answers whether it was.
    pub fn claim(&self, catalog_id: u64) -> Result<bool, StoreError> {
        if catalog_id == 0 {
            return Ok(false);
        }
        let kept = self.catalog_id()?;
        if kept == Some(catalog_id) {
            return Ok(false);
        }
        let other = kept.is_some();
        if other {
            self.destroy()?;
        }
        self.set_catalog_id(catalog_id)?;
        Ok(other)
    }

    /// Removes every key of the view (after `DROP MATERIALIZED VIEW`).
    pub fn destroy(&self) -> Result<(), StoreError> {
        let mut end = self.prefix.clone();
        end.push(0xff);
        let mut wb = WriteBatch::default();
        wb.delete_range(&self.prefix, &end);
        self.db.write(wb)?;
        Ok(())
    }
}

impl ViewStore {
    fn get_json_row(&self, tag: &[u8], pk: &Key) -> Result<Option<Row>, String> {
        let key = self.tagged(tag, &serde_json::to_vec(pk).map_err(|e| e.to_string())?);
        match self.db.get(key).map_err(|e| format!("rocksdb: {e}"))? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| format!("corrupt source row: {e}")),
        }
    }

    /// The keys stored under `tag` + `prefix`, each parsed from what follows the prefix.
    fn keys_under(&self, tag: &[u8], prefix: &[u8]) -> Result<Vec<Key>, String> {
        let mut start = self.key(tag);
        start.extend_from_slice(prefix);
        let skip = start.len();
        let mut out = Vec::new();
        for item in self
            .db
            .iterator(IteratorMode::From(&start, Direction::Forward))
        {
            let (k, _) = item.map_err(|e| format!("rocksdb: {e}"))?;
            if !k.starts_with(&start) {
                break;
            }
            out.push(
                serde_json::from_slice(&k[skip..]).map_err(|e| format!("corrupt join key: {e}"))?,
            );
        }
        Ok(out)
    }
}

impl RowLookup for ViewStore {
    fn get_row(&self, pk: &Key) -> Result<Option<Row>, String> {
        self.get_json_row(b"row/", pk)
    }

    fn get_side(&self, side: Side, pk: &Key) -> Result<Option<Row>, String> {
        self.get_json_row(side_tag(side), pk)
    }

    fn holders(&self, key: &Key) -> Result<Vec<Key>, String> {
        self.keys_under(JOIN_INDEX, &index_prefix(key)?)
    }

    fn left_keys(&self) -> Result<Vec<Key>, String> {
        self.keys_under(JOIN_LEFT, b"")
    }
}

/// Serialising our own in-memory types to JSON cannot fail (no maps with non-string keys).
mod erased {
    pub trait Ser {
        fn to_json(&self) -> Vec<u8>;
    }
    impl<T: serde::Serialize> Ser for T {
        fn to_json(&self) -> Vec<u8> {
            serde_json::to_vec(self).expect("view state serialises to JSON")
        }
    }
}

fn parse_meta(bytes: Option<Vec<u8>>) -> Result<Meta, StoreError> {
    match bytes {
        None => Ok(Meta::default()),
        Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
            what: "meta",
            detail: e.to_string(),
        }),
    }
}

/// Opens (or creates) the central worker's RocksDB.
pub fn open_db(path: &std::path::Path) -> Result<Arc<DB>, StoreError> {
    let mut opts = rocksdb::Options::default();
    opts.create_if_missing(true);
    Ok(Arc::new(DB::open(&opts, path)?))
}

/// The ids of the views that have state in `db`.
pub fn stored_view_ids(db: &DB) -> Result<Vec<u64>, StoreError> {
    let mut ids = Vec::new();
    let mut from = b"view/".to_vec();
    loop {
        let Some(item) = db
            .iterator(IteratorMode::From(&from, Direction::Forward))
            .next()
        else {
            break;
        };
        let (k, _) = item?;
        let Some(id) = k
            .strip_prefix(b"view/")
            .and_then(|rest| rest.get(..16))
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        else {
            break;
        };
        ids.push(id);
        let Some(next) = id.checked_add(1) else {
            break;
        };
        from = format!("view/{next:016x}/").into_bytes();
    }
    Ok(ids)
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod truncation_tests;
