//! A node's DuckDB replica: one table per view, plus `_meridian_applied` (per-view applied
//! sequence and freshness) and `_meridian_raft` (the last Raft index applied). A batch is
//! applied in one DuckDB transaction together with its position, so a batch applied twice
//! changes nothing.

use std::collections::HashMap;
use std::path::Path;

use catalog::ColumnType;
use duckdb::types::Value as DValue;
use duckdb::{params_from_iter, Connection};
use meridian_proto::v1 as pb;
use tracing::{debug, info, warn};

/// Rows staged by one multi-row INSERT: bounds the statement's size.
const STAGE_ROWS_PER_STATEMENT: usize = 256;
/// A batch changing at most this many keys is applied key by key with prepared statements (a
/// delete and an insert each); larger ones go through the staging table, one delete-join and
/// one insert. Each statement costs a scan of the table, so the direct way pays only for
/// small batches, which are what a trickle of events sends and where latency counts.
const DIRECT_CHANGES_MAX: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error("duckdb: {0}")]
    DuckDb(#[from] duckdb::Error),
    #[error("view '{view}': {detail}")]
    Schema { view: String, detail: String },
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Position {
    /// Catalog id of the view incarnation applied.
    pub view_id: u64,
    pub seq: u64,
    pub produced_at_ms: i64,
    pub applied_at_ms: i64,
    /// Epoch of the change log applied (0 before the first batch).
    pub epoch: u64,
    /// Running checksum of the change log at `seq` ([`meridian_proto::chain_checksum`]).
    pub checksum: u64,
    /// The replica reflects every source message the brokers held at this time (ms since the
    /// Unix epoch; 0 while not known), as the central tier vouched with a push.
    pub fresh_at_ms: i64,
}

/// The wall clock in milliseconds since the Unix epoch, as positions and staleness use it.
pub fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl Position {
    /// How far behind the source the replica may be at `now_ms` (`None`: not known).
    pub fn staleness_ms(&self, now_ms: i64) -> Option<i64> {
        (self.fresh_at_ms > 0).then(|| (now_ms - self.fresh_at_ms).max(0))
    }
}

mod admit;
mod changes;
mod snapshot;
mod values;

pub use admit::{admit, validate_batch, Admit};
use changes::{apply_changes, insert_rows, placeholders};
use snapshot::{schema_from_json, schema_to_json};
pub use snapshot::{snapshot, view_snapshot};
pub(crate) use values::wire_value;
use values::{column_type, to_duck_as, typed_row, KeyPart};

pub struct Replica {
    conn: Connection,
    positions: HashMap<String, Position>,
    /// Views whose table exists, with the schema it was created with.
    tables: HashMap<String, pb::ViewSchema>,
    applied_index: u64,
    /// Incarnations of views dropped here. A shipper that has not yet heard of the drop may
    /// still push them; those pushes must not bring the table back.
    dropped: std::collections::HashSet<(String, u64)>,
    /// Where applied batches are published for subscribers (none in tests that do not ask).
    feed: Option<std::sync::Arc<crate::feed::Feed>>,
}

/// Quotes an identifier for DuckDB.
pub fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// The configuration every replica database is opened with. Readers share the instance (DuckDB
/// opens a file once per process), so it is locked down for them: no statement may reach the
/// file system or the network (`COPY`, `ATTACH`, `read_*`, `EXPORT`), install or load an
/// extension, or change a setting.
pub fn open_config() -> Result<duckdb::Config, duckdb::Error> {
    duckdb::Config::default()
        .enable_external_access(false)?
        .enable_autoload_extension(false)?
        .with("lock_configuration", "true")
}

impl Replica {
    pub fn open(path: &Path) -> Result<Replica, ReplicaError> {
        Replica::open_with_memory(path, None)
    }

    /// Opens the replica with DuckDB's memory for it capped at `memory_max` (such as `1GB`):
    /// readers and the writer share one instance, and a read that needs more spills to disk
    /// instead of taking the memory the writer's next transaction needs.
    pub fn open_with_memory(
        path: &Path,
        memory_max: Option<&str>,
    ) -> Result<Replica, ReplicaError> {
        let mut config = open_config()?;
        if let Some(m) = memory_max {
            config = config.max_memory(m)?;
        }
        let conn = Connection::open_with_flags(path, config)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS _meridian_applied (view VARCHAR PRIMARY KEY, seq UBIGINT NOT NULL, produced_at_ms BIGINT NOT NULL, applied_at_ms BIGINT NOT NULL, schema_json VARCHAR NOT NULL, view_id UBIGINT NOT NULL, epoch UBIGINT NOT NULL DEFAULT 0, checksum UBIGINT NOT NULL DEFAULT 0);
             ALTER TABLE _meridian_applied ADD COLUMN IF NOT EXISTS epoch UBIGINT DEFAULT 0;
             ALTER TABLE _meridian_applied ADD COLUMN IF NOT EXISTS checksum UBIGINT DEFAULT 0;
             ALTER TABLE _meridian_applied ADD COLUMN IF NOT EXISTS fresh_at_ms BIGINT DEFAULT 0;
             CREATE TABLE IF NOT EXISTS _meridian_raft (id INTEGER PRIMARY KEY, applied_index UBIGINT NOT NULL);
             CREATE TABLE IF NOT EXISTS _meridian_dropped (view VARCHAR NOT NULL, view_id UBIGINT NOT NULL, PRIMARY KEY (view, view_id));",
        )?;
        // What readers may know of Meridian's own state, in a schema of its own so that no
        // view's table can collide with it.
        conn.execute_batch(
            "CREATE SCHEMA IF NOT EXISTS meridian;
             CREATE OR REPLACE VIEW meridian.views AS
               SELECT view, view_id, epoch, seq AS applied_seq, produced_at_ms, applied_at_ms,
                      greatest(applied_at_ms - produced_at_ms, 0) AS lag_ms, fresh_at_ms
               FROM main._meridian_applied;",
        )?;
        let mut positions = HashMap::new();
        let mut tables = HashMap::new();
        {
            let mut stmt = conn.prepare("SELECT view, seq, produced_at_ms, applied_at_ms, schema_json, view_id, epoch, checksum, coalesce(fresh_at_ms, 0) FROM _meridian_applied")?;
            let mut rows = stmt.query([])?;
            while let Some(row) = rows.next()? {
                let view: String = row.get(0)?;
                let seq: u64 = row.get(1)?;
                positions.insert(
                    view.clone(),
                    Position {
                        view_id: row.get(5)?,
                        seq,
                        produced_at_ms: row.get(2)?,
                        applied_at_ms: row.get(3)?,
                        epoch: row.get(6)?,
                        checksum: row.get(7)?,
                        fresh_at_ms: row.get(8)?,
                    },
                );
                let json: String = row.get(4)?;
                if let Some(schema) = schema_from_json(&view, &json) {
                    tables.insert(view, schema);
                }
            }
        }
        let applied_index = recorded_raft_index(&conn)?;
        let dropped = read_dropped(&conn)?;
        Ok(Replica {
            conn,
            positions,
            tables,
            applied_index,
            dropped,
            feed: None,
        })
    }

    /// Publishes every batch applied from now on, and every wholesale replacement, to `feed`.
    pub fn set_feed(&mut self, feed: std::sync::Arc<crate::feed::Feed>) {
        self.feed = Some(feed);
    }

    /// A new connection to the same database, for readers.
    pub fn reader(&self) -> Result<Connection, ReplicaError> {
        Ok(self.conn.try_clone()?)
    }

    pub fn applied_index(&self) -> u64 {
        self.applied_index
    }

    pub fn position(&self, view: &str) -> Position {
        self.positions.get(view).cloned().unwrap_or_default()
    }

    /// Replaces the whole state with a snapshot taken at Raft index `raft_index`, in one
    /// transaction.
    pub fn restore(&mut self, raft_index: u64, data: &[u8]) -> Result<(), ReplicaError> {
        use prost::Message as _;
        let snap = pb::ReplicaSnapshot::decode(data).map_err(|e| ReplicaError::Schema {
            view: "?".into(),
            detail: format!("undecodable snapshot: {e}"),
        })?;
        let tx = self.conn.transaction()?;
        for view in self.tables.keys() {
            drop_table(&tx, view)?;
        }
        tx.execute_batch("DELETE FROM _meridian_applied; DELETE FROM _meridian_dropped;")?;
        let mut dropped = std::collections::HashSet::new();
        for d in &snap.dropped {
            tx.execute(
                "INSERT OR REPLACE INTO _meridian_dropped VALUES (?, ?)",
                duckdb::params![d.view, d.view_id],
            )?;
            dropped.insert((d.view.clone(), d.view_id));
        }
        let mut tables = HashMap::new();
        let mut positions = HashMap::new();
        for v in snap.views {
            let schema = v.schema.ok_or_else(|| ReplicaError::Schema {
                view: "?".into(),
                detail: "snapshot view without a schema".into(),
            })?;
            drop_table(&tx, &schema.view)?;
            create_table(&tx, &schema)?;
            let rows = v
                .rows
                .iter()
                .map(|r| typed_row(&schema, &r.values))
                .collect();
            insert_rows(&tx, &quote(&schema.view), &placeholders(&schema), rows)?;
            let pos = Position {
                view_id: schema.view_id,
                seq: v.seq,
                produced_at_ms: v.produced_at_ms,
                applied_at_ms: v.applied_at_ms,
                epoch: v.epoch,
                checksum: v.checksum,
                fresh_at_ms: v.fresh_at_ms,
            };
            record_position(&tx, &schema, &pos)?;
            positions.insert(schema.view.clone(), pos);
            tables.insert(schema.view.clone(), schema);
        }
        record_raft_index(&tx, raft_index)?;
        tx.commit()?;
        self.tables = tables;
        self.positions = positions;
        self.dropped = dropped;
        self.applied_index = raft_index;
        if let Some(feed) = &self.feed {
            feed.reset(None);
        }
        Ok(())
    }

    /// Schemas of the views this replica holds.
    pub fn schemas(&self) -> impl Iterator<Item = &pb::ViewSchema> {
        self.tables.values()
    }

    /// Drops the table of this incarnation of the view (a newer one is left alone).
    fn drop_view(&mut self, raft_index: u64, schema: &pb::ViewSchema) -> Result<u64, ReplicaError> {
        let view = schema.view.clone();
        if self
            .tables
            .get(&view)
            .is_none_or(|t| t.view_id != schema.view_id)
        {
            return Ok(0);
        }
        let tx = self.conn.transaction()?;
        drop_table(&tx, &view)?;
        tx.execute("DELETE FROM _meridian_applied WHERE view = ?", [&view])?;
        tx.execute(
            "INSERT OR REPLACE INTO _meridian_dropped VALUES (?, ?)",
            duckdb::params![view, schema.view_id],
        )?;
        record_raft_index(&tx, raft_index)?;
        tx.commit()?;
        self.tables.remove(&view);
        self.positions.remove(&view);
        self.dropped.insert((view.clone(), schema.view_id));
        self.applied_index = raft_index;
        if let Some(feed) = &self.feed {
            feed.reset(Some(&view));
        }
        info!(view = %view, "view table dropped");
        Ok(0)
    }

    /// Why a push for this incarnation of the view must be refused for good, if it must: its id
    /// was dropped here or replaced by a newer one, or its schema differs from the table's.
    /// These checks would fail alike on every node, so the leader makes them before proposing.
    pub fn refuses(&self, schema: &pb::ViewSchema) -> Option<String> {
        if self
            .dropped
            .contains(&(schema.view.clone(), schema.view_id))
        {
            return Some(format!(
                "view '{}' with id {} was dropped in this region",
                schema.view, schema.view_id
            ));
        }
        match self.held(&schema.view).map(|(_, t)| t) {
            Some(t) if t.view_id > schema.view_id => Some(format!(
                "view '{}' with id {} was replaced by id {} in this region",
                schema.view, schema.view_id, t.view_id
            )),
            Some(t) if t.view_id == schema.view_id && t != schema => Some(format!(
                "view '{}': the pushed schema differs from the replica table's",
                schema.view
            )),
            _ => None,
        }
    }

    /// The table a view's name holds, under any spelling: DuckDB folds the case of names, so
    /// `v` and `V` are one table (a view dropped and created again may be spelt otherwise).
    fn held(&self, view: &str) -> Option<(&String, &pb::ViewSchema)> {
        self.tables.get_key_value(view).or_else(|| {
            self.tables
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(view))
        })
    }

    /// Why this incarnation of the view must begin with a full batch, if it must: the replica
    /// holds an older incarnation's table (`CREATE OR REPLACE`). Readers keep that table until
    /// one entry swaps in every row of the new incarnation, so no answer mixes the two or shows
    /// the new one half built.
    pub fn must_start_full(&self, schema: &pb::ViewSchema) -> Option<String> {
        match self.held(&schema.view) {
            Some((_, t)) if t.view_id < schema.view_id => Some(format!(
                "view '{}' with id {} replaces id {} here: it starts with a full batch, so that readers switch at once",
                schema.view, schema.view_id, t.view_id
            )),
            _ => None,
        }
    }

    /// The applied position of this incarnation of the view (the default when the replica
    /// holds none, or an older one).
    pub fn applied_position(&self, schema: &pb::ViewSchema) -> Position {
        match self.tables.get(&schema.view) {
            Some(t) if t.view_id == schema.view_id => self.position(&schema.view),
            _ => Position {
                view_id: schema.view_id,
                ..Position::default()
            },
        }
    }

    pub fn positions(&self) -> &HashMap<String, Position> {
        &self.positions
    }

    /// Applies the batches of one committed Raft entry at `raft_index`. Batches at or below
    /// the view's applied sequence are skipped; a batch that would leave a gap stops the entry
    /// (the shipper resends from the position it is told). Deterministic: every replica of the
    /// region reaches the same state from the same log.
    pub fn apply(
        &mut self,
        raft_index: u64,
        push: &pb::PushRequest,
        now_ms: i64,
    ) -> Result<u64, ReplicaError> {
        let schema = push.schema.as_ref().ok_or_else(|| ReplicaError::Schema {
            view: "?".into(),
            detail: "push without a schema".into(),
        })?;
        let view = schema.view.clone();
        if push.drop_view {
            return self.drop_view(raft_index, schema);
        }
        if self.dropped.contains(&(view.clone(), schema.view_id)) {
            return Ok(0);
        }
        if let Some(why) = self.must_start_full(schema) {
            if !push.batches.first().is_some_and(|b| b.full) {
                // The leader proposes a full batch first (see `must_start_full`); an entry
                // that does not start with one leaves the older table in place, alike on
                // every node.
                warn!(view = %view, raft_index, reason = %why, "entry does not start with a full batch; skipped");
                return Ok(0);
            }
        }
        // An older incarnation's table, which this push's first (full) batch replaces.
        let replaced = self
            .held(&view)
            .filter(|(_, t)| t.view_id < schema.view_id)
            .map(|(k, t)| (k.clone(), t.view_id));
        let recreate = match self.held(&view).map(|(_, t)| t) {
            // A push from a dropped incarnation of the view: nothing to do.
            Some(t) if t.view_id > schema.view_id => return Ok(0),
            Some(t) if t.view_id < schema.view_id => true,
            Some(t) if t != schema => {
                // Deterministic on every node (the leader refuses such pushes before
                // proposing): skipped alike everywhere rather than stalling the region.
                warn!(view = %view, raft_index, "entry's schema differs from the replica table's; skipped");
                return Ok(self.position(&view).seq);
            }
            Some(_) => false,
            None => {
                // The table of a view that never applied a batch may exist from an earlier
                // incarnation; start it over too.
                true
            }
        };
        if let Some(why) = push
            .batches
            .iter()
            .find_map(|b| validate_batch(schema, b).err())
        {
            warn!(raft_index, reason = %why, "entry does not fit its view's schema; skipped");
            return Ok(self.applied_position(schema).seq);
        }
        let mut pos = if recreate {
            Position {
                view_id: schema.view_id,
                ..Position::default()
            }
        } else {
            self.position(&view)
        };
        let started = std::time::Instant::now();
        let tx = self.conn.transaction()?;
        if recreate {
            if let Some((old, old_id)) = &replaced {
                // Remembered as dropped, so that a late push of it never brings it back.
                drop_table(&tx, old)?;
                tx.execute("DELETE FROM _meridian_applied WHERE view = ?", [old])?;
                tx.execute(
                    "INSERT OR REPLACE INTO _meridian_dropped VALUES (?, ?)",
                    duckdb::params![old, old_id],
                )?;
            }
            drop_table(&tx, &view)?;
            create_table(&tx, schema)?;
        }
        let mut applied = Vec::new();
        for batch in &push.batches {
            match admit(&pos, batch) {
                Admit::Skip => continue,
                Admit::Apply => {}
                Admit::Gap => {
                    warn!(view = %view, seq = batch.seq, applied_seq = pos.seq, "batch would leave a gap; not applied");
                    break;
                }
                Admit::NeedFull(why) => {
                    warn!(view = %view, seq = batch.seq, epoch = batch.epoch, applied_seq = pos.seq, applied_epoch = pos.epoch, reason = %why, "batch not applied; the view needs a full batch");
                    break;
                }
            }
            if batch.full {
                // Every row of the view at `batch.seq`: what is not in it is gone.
                tx.execute_batch(&format!("DELETE FROM {}", quote(&view)))?;
            }
            apply_changes(&tx, schema, &batch.changes)?;
            pos = Position {
                view_id: schema.view_id,
                seq: batch.seq,
                produced_at_ms: batch.produced_at_ms,
                applied_at_ms: now_ms,
                epoch: batch.epoch,
                checksum: batch.checksum,
                // A new epoch's state may be older than the last one's: what was vouched for
                // that one says nothing of it.
                fresh_at_ms: if batch.epoch == pos.epoch {
                    pos.fresh_at_ms
                } else {
                    0
                },
            };
            applied.push(batch);
        }
        let applied_any = !applied.is_empty();
        // The central tier vouches that the change log up to `fresh.seq` reflects the source
        // as of `fresh.at_ms`: it holds for this replica once it applied that far.
        let mut fresher = false;
        if let Some(f) = &push.fresh {
            if f.epoch == pos.epoch
                && pos.seq >= f.seq
                && pos.epoch != 0
                && f.at_ms > pos.fresh_at_ms
            {
                pos.fresh_at_ms = f.at_ms;
                fresher = true;
            }
        }
        if applied_any || recreate || fresher {
            record_position(&tx, schema, &pos)?;
        }
        record_raft_index(&tx, raft_index)?;
        let before_commit = started.elapsed();
        tx.commit()?;
        debug!(view = %view, seq = pos.seq, raft_index, elapsed_us = started.elapsed().as_micros() as u64, commit_us = (started.elapsed() - before_commit).as_micros() as u64, "applied");
        self.applied_index = raft_index;
        if let Some(feed) = &self.feed {
            if recreate {
                feed.reset(Some(&view));
            }
            feed.publish(&view, schema.view_id, &applied);
        }
        if let Some((old, old_id)) = replaced {
            self.tables.remove(&old);
            self.positions.remove(&old);
            self.dropped.insert((old, old_id));
        }
        self.tables.insert(view.clone(), schema.clone());
        self.positions.insert(view, pos.clone());
        Ok(pos.seq)
    }
}

/// Drops a view's table and the staging table the writer keeps for it.
fn drop_table(conn: &Connection, view: &str) -> Result<(), ReplicaError> {
    conn.execute_batch(&format!(
        "DROP TABLE IF EXISTS {}; DROP TABLE IF EXISTS {};",
        quote(view),
        quote(&format!("_meridian_stage_{view}"))
    ))?;
    Ok(())
}

fn create_table(conn: &Connection, schema: &pb::ViewSchema) -> Result<(), ReplicaError> {
    let mut cols = Vec::new();
    for c in &schema.columns {
        let ty = ColumnType::from_name(&c.r#type).ok_or_else(|| ReplicaError::Schema {
            view: schema.view.clone(),
            detail: format!("unknown column type '{}'", c.r#type),
        })?;
        cols.push(format!("{} {}", quote(&c.name), ty.duckdb_type()));
    }
    conn.execute_batch(&format!(
        "CREATE TABLE IF NOT EXISTS {} ({})",
        quote(&schema.view),
        cols.join(", ")
    ))?;
    Ok(())
}

fn read_dropped(
    conn: &Connection,
) -> Result<std::collections::HashSet<(String, u64)>, ReplicaError> {
    let mut stmt = conn.prepare("SELECT view, view_id FROM _meridian_dropped")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Records a view's applied position (and the schema its table has) in `_meridian_applied`.
/// An UPDATE of the view's row, or an INSERT when it has none: DuckDB's `INSERT OR REPLACE`
/// costs several milliseconds a statement, which a one-row batch would pay twice.
fn record_position(
    conn: &Connection,
    schema: &pb::ViewSchema,
    pos: &Position,
) -> Result<(), ReplicaError> {
    let schema_json = schema_to_json(schema);
    let updated = conn
        .prepare_cached(
            "UPDATE _meridian_applied SET seq = ?, produced_at_ms = ?, applied_at_ms = ?, schema_json = ?, view_id = ?, epoch = ?, checksum = ?, fresh_at_ms = ? WHERE view = ?",
        )?
        .execute(duckdb::params![
            pos.seq,
            pos.produced_at_ms,
            pos.applied_at_ms,
            schema_json,
            schema.view_id,
            pos.epoch,
            pos.checksum,
            pos.fresh_at_ms,
            schema.view
        ])?;
    if updated == 0 {
        conn.prepare_cached(
            "INSERT INTO _meridian_applied (view, seq, produced_at_ms, applied_at_ms, schema_json, view_id, epoch, checksum, fresh_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )?
        .execute(duckdb::params![
            schema.view,
            pos.seq,
            pos.produced_at_ms,
            pos.applied_at_ms,
            schema_json,
            schema.view_id,
            pos.epoch,
            pos.checksum,
            pos.fresh_at_ms
        ])?;
    }
    Ok(())
}

/// Records, in the transaction that changes the replica, the Raft index the change came from.
fn record_raft_index(conn: &Connection, raft_index: u64) -> Result<(), ReplicaError> {
    let updated = conn
        .prepare_cached("UPDATE _meridian_raft SET applied_index = ? WHERE id = 0")?
        .execute([raft_index])?;
    if updated == 0 {
        conn.prepare_cached("INSERT INTO _meridian_raft VALUES (0, ?)")?
            .execute([raft_index])?;
    }
    Ok(())
}

/// The last Raft index recorded with a change of the replica (0 before any).
fn recorded_raft_index(conn: &Connection) -> Result<u64, ReplicaError> {
    match conn.query_row(
        "SELECT applied_index FROM _meridian_raft WHERE id = 0",
        [],
        |r| r.get(0),
    ) {
        Err(duckdb::Error::QueryReturnedNoRows) => Ok(0),
        other => Ok(other?),
    }
}

#[cfg(test)]
mod tests;
