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
}

/// What a replica at a position does with a change batch. The leader asks before it
/// proposes and every node asks again when it applies, so all nodes decide alike.
#[derive(Debug, PartialEq)]
pub enum Admit {
    /// Already applied, or from an older epoch: never applied.
    Skip,
    Apply,
    /// Does not follow the applied seq: the sender resends from the position.
    Gap,
    /// Cannot continue from this batch (a newer epoch, or a history that differs): only a full
    /// batch can re-seed the view.
    NeedFull(String),
}

/// Whether a batch fits its view's schema: key and row widths, and every value of the kind its
/// column holds. A batch that does not would fail alike on every node, so the leader refuses
/// it before proposing and every node skips it if one is in the log.
pub fn validate_batch(schema: &pb::ViewSchema, b: &pb::ChangeBatch) -> Result<(), String> {
    use pb::value::Kind;
    let n_cols = schema.columns.len();
    let mut types = Vec::with_capacity(n_cols);
    for c in &schema.columns {
        types.push(ColumnType::from_name(&c.r#type).ok_or_else(|| {
            format!("view '{}': unknown column type '{}'", schema.view, c.r#type)
        })?);
    }
    if schema.key_indexes.iter().any(|&i| i as usize >= n_cols) {
        return Err(format!(
            "view '{}': a key index is out of range",
            schema.view
        ));
    }
    for (i, c) in schema.columns.iter().enumerate() {
        if catalog::is_reserved(&c.name)
            || schema.columns[..i]
                .iter()
                .any(|d| d.name.eq_ignore_ascii_case(&c.name))
        {
            return Err(format!(
                "view '{}': column name '{}' is reserved or repeated",
                schema.view, c.name
            ));
        }
    }
    let fits = |ty: ColumnType, v: &pb::Value| {
        matches!(
            (&v.kind, ty),
            (None, _)
                | (Some(Kind::Int(_)), ColumnType::Int64 | ColumnType::Float64)
                | (Some(Kind::Float(_)), ColumnType::Float64)
                | (Some(Kind::Text(_)), ColumnType::String)
                | (Some(Kind::Boolean(_)), ColumnType::Bool)
        )
    };
    for (i, c) in b.changes.iter().enumerate() {
        if c.key.len() != schema.key_indexes.len() {
            return Err(format!(
                "view '{}' batch {}: change {i} has {} key values, the view has {} key columns",
                schema.view,
                b.seq,
                c.key.len(),
                schema.key_indexes.len()
            ));
        }
        for (k, &idx) in c.key.iter().zip(&schema.key_indexes) {
            if !fits(types[idx as usize], k) {
                return Err(format!(
                    "view '{}' batch {}: change {i} has a key value of the wrong type for column '{}'",
                    schema.view, b.seq, schema.columns[idx as usize].name
                ));
            }
        }
        if let Some(row) = &c.row {
            if row.values.len() != n_cols {
                return Err(format!(
                    "view '{}' batch {}: change {i} has {} values, the view has {n_cols} columns",
                    schema.view,
                    b.seq,
                    row.values.len()
                ));
            }
            if let Some(j) = (0..n_cols).find(|&j| !fits(types[j], &row.values[j])) {
                return Err(format!(
                    "view '{}' batch {}: change {i} has a value of the wrong type for column '{}'",
                    schema.view, b.seq, schema.columns[j].name
                ));
            }
        }
    }
    Ok(())
}

pub fn admit(pos: &Position, b: &pb::ChangeBatch) -> Admit {
    if b.epoch < pos.epoch {
        return Admit::Skip;
    }
    if b.full {
        if b.epoch == pos.epoch && b.seq <= pos.seq {
            return Admit::Skip;
        }
        return Admit::Apply;
    }
    if b.epoch > pos.epoch {
        let fresh = pos.seq == 0 && pos.checksum == 0 && b.seq == 1;
        if !fresh {
            return Admit::NeedFull(format!(
                "change log epoch {} replaces the applied epoch {}",
                b.epoch, pos.epoch
            ));
        }
    } else if b.seq <= pos.seq {
        return Admit::Skip;
    }
    if b.seq != pos.seq + 1 {
        return Admit::Gap;
    }
    if meridian_proto::chain_checksum(pos.checksum, b) != b.checksum {
        return Admit::NeedFull(format!(
            "diverged: batch {} of epoch {} does not continue the applied change log (checksum mismatch)",
            b.seq, b.epoch
        ));
    }
    Admit::Apply
}

pub struct Replica {
    conn: Connection,
    positions: HashMap<String, Position>,
    /// Views whose table exists, with the schema it was created with.
    tables: HashMap<String, pb::ViewSchema>,
    applied_index: u64,
    /// Incarnations of views dropped here. A shipper that has not yet heard of the drop may
    /// still push them; those pushes must not bring the table back.
    dropped: std::collections::HashSet<(String, u64)>,
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
             CREATE TABLE IF NOT EXISTS _meridian_raft (id INTEGER PRIMARY KEY, applied_index UBIGINT NOT NULL);
             CREATE TABLE IF NOT EXISTS _meridian_dropped (view VARCHAR NOT NULL, view_id UBIGINT NOT NULL, PRIMARY KEY (view, view_id));",
        )?;
        // What readers may know of Meridian's own state, in a schema of its own so that no
        // view's table can collide with it.
        conn.execute_batch(
            "CREATE SCHEMA IF NOT EXISTS meridian;
             CREATE OR REPLACE VIEW meridian.views AS
               SELECT view, view_id, epoch, seq AS applied_seq, produced_at_ms, applied_at_ms,
                      greatest(applied_at_ms - produced_at_ms, 0) AS lag_ms
               FROM main._meridian_applied;",
        )?;
        let mut positions = HashMap::new();
        let mut tables = HashMap::new();
        {
            let mut stmt = conn.prepare("SELECT view, seq, produced_at_ms, applied_at_ms, schema_json, view_id, epoch, checksum FROM _meridian_applied")?;
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
        })
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
                .map(|r| r.values.iter().map(to_duck).collect())
                .collect();
            insert_rows(&tx, &quote(&schema.view), schema.columns.len(), rows)?;
            let pos = Position {
                view_id: schema.view_id,
                seq: v.seq,
                produced_at_ms: v.produced_at_ms,
                applied_at_ms: v.applied_at_ms,
                epoch: v.epoch,
                checksum: v.checksum,
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
        info!(view = %view, "view table dropped");
        Ok(0)
    }

    /// The applied sequence of this incarnation of the view (0 when the replica holds none, or
    /// an older one).
    pub fn applied_seq(&self, schema: &pb::ViewSchema) -> u64 {
        match self.tables.get(&schema.view) {
            Some(t) if t.view_id == schema.view_id => self.position(&schema.view).seq,
            _ => 0,
        }
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
        match self.tables.get(&schema.view) {
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
        let recreate = match self.tables.get(&view) {
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
        let tx = self.conn.transaction()?;
        if recreate {
            drop_table(&tx, &view)?;
            create_table(&tx, schema)?;
        }
        let mut applied_any = false;
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
            };
            applied_any = true;
        }
        if applied_any || recreate {
            record_position(&tx, schema, &pos)?;
        }
        record_raft_index(&tx, raft_index)?;
        tx.commit()?;
        debug!(view = %view, seq = pos.seq, raft_index, "applied");
        self.applied_index = raft_index;
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

/// Replaces the rows of a batch's keys: the batch is first reduced to its last change per key
/// (DuckDB's `INSERT OR REPLACE` would keep the first), then staged and applied as one
/// delete-join and one insert. Keys may be NULL, so they match with `IS NOT DISTINCT FROM`.
fn apply_changes(
    conn: &Connection,
    schema: &pb::ViewSchema,
    changes: &[pb::RowChange],
) -> Result<(), ReplicaError> {
    let mut last: HashMap<Vec<KeyPart>, usize> = HashMap::with_capacity(changes.len());
    for (i, c) in changes.iter().enumerate() {
        last.insert(c.key.iter().map(KeyPart::from).collect(), i);
    }
    let mut reduced: Vec<usize> = last.into_values().collect();
    reduced.sort_unstable();

    let table = quote(&schema.view);
    let stage = quote(&format!("_meridian_stage_{}", schema.view));
    let n_cols = schema.columns.len();
    let col_list = schema
        .columns
        .iter()
        .map(|c| quote(&c.name))
        .collect::<Vec<_>>()
        .join(", ");
    conn.execute_batch(&format!(
        "CREATE TEMP TABLE IF NOT EXISTS {stage} AS SELECT *, true AS _meridian_delete FROM {table} LIMIT 0; DELETE FROM {stage};"
    ))?;
    let mut staged: Vec<Vec<DValue>> = Vec::with_capacity(reduced.len());
    for &i in &reduced {
        let c = &changes[i];
        let mut values = match &c.row {
            Some(row) => {
                if row.values.len() != n_cols {
                    return Err(ReplicaError::Schema {
                        view: schema.view.clone(),
                        detail: format!(
                            "row has {} values, table has {n_cols} columns",
                            row.values.len()
                        ),
                    });
                }
                row.values.iter().map(to_duck).collect::<Vec<_>>()
            }
            None => {
                // A deletion only needs the key columns; the others stay NULL.
                let mut vals = vec![DValue::Null; n_cols];
                for (k, &idx) in c.key.iter().zip(&schema.key_indexes) {
                    if let Some(slot) = vals.get_mut(idx as usize) {
                        *slot = to_duck(k);
                    }
                }
                vals
            }
        };
        values.push(DValue::Boolean(c.row.is_none()));
        staged.push(values);
    }
    insert_rows(conn, &stage, n_cols + 1, staged)?;
    let on = if schema.key_indexes.is_empty() {
        "true".to_string()
    } else {
        schema
            .key_indexes
            .iter()
            .filter_map(|&i| schema.columns.get(i as usize))
            .map(|c| format!("t.{0} IS NOT DISTINCT FROM s.{0}", quote(&c.name)))
            .collect::<Vec<_>>()
            .join(" AND ")
    };
    conn.execute_batch(&format!(
        "DELETE FROM {table} AS t USING {stage} AS s WHERE {on}; INSERT INTO {table} SELECT {col_list} FROM {stage} WHERE NOT _meridian_delete;"
    ))?;
    Ok(())
}

/// Inserts rows of `width` values with multi-row INSERTs of a bounded size.
fn insert_rows(
    conn: &Connection,
    table: &str,
    width: usize,
    rows: Vec<Vec<DValue>>,
) -> Result<(), ReplicaError> {
    let placeholders = format!("({})", vec!["?"; width].join(", "));
    for chunk in rows.chunks(STAGE_ROWS_PER_STATEMENT) {
        let sql = format!(
            "INSERT INTO {table} VALUES {}",
            vec![placeholders.as_str(); chunk.len()].join(", ")
        );
        let params: Vec<&DValue> = chunk.iter().flatten().collect();
        conn.prepare_cached(&sql)?
            .execute(params_from_iter(params))?;
    }
    Ok(())
}

/// The replica's whole state, read through `conn` in one transaction: the Raft index it
/// reflects and the encoded [`pb::ReplicaSnapshot`].
pub fn snapshot(conn: &Connection) -> Result<(u64, Vec<u8>), ReplicaError> {
    conn.execute_batch("BEGIN TRANSACTION")?;
    let result = snapshot_inside(conn);
    conn.execute_batch("ROLLBACK")?;
    result
}

fn read_dropped(
    conn: &Connection,
) -> Result<std::collections::HashSet<(String, u64)>, ReplicaError> {
    let mut stmt = conn.prepare("SELECT view, view_id FROM _meridian_dropped")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Records a view's applied position (and the schema its table has) in `_meridian_applied`.
fn record_position(
    conn: &Connection,
    schema: &pb::ViewSchema,
    pos: &Position,
) -> Result<(), ReplicaError> {
    conn.execute(
        "INSERT OR REPLACE INTO _meridian_applied (view, seq, produced_at_ms, applied_at_ms, schema_json, view_id, epoch, checksum) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        duckdb::params![
            schema.view,
            pos.seq,
            pos.produced_at_ms,
            pos.applied_at_ms,
            schema_to_json(schema),
            schema.view_id,
            pos.epoch,
            pos.checksum
        ],
    )?;
    Ok(())
}

/// Records, in the transaction that changes the replica, the Raft index the change came from.
fn record_raft_index(conn: &Connection, raft_index: u64) -> Result<(), ReplicaError> {
    conn.execute(
        "INSERT OR REPLACE INTO _meridian_raft VALUES (0, ?)",
        [raft_index],
    )?;
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

fn snapshot_inside(conn: &Connection) -> Result<(u64, Vec<u8>), ReplicaError> {
    use prost::Message as _;
    let index = recorded_raft_index(conn)?;
    let mut views = Vec::new();
    let mut stmt = conn.prepare("SELECT view, seq, produced_at_ms, applied_at_ms, schema_json, epoch, checksum FROM _meridian_applied ORDER BY view")?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let view: String = r.get(0)?;
        let json: String = r.get(4)?;
        let schema = schema_from_json(&view, &json).ok_or_else(|| ReplicaError::Schema {
            view: view.clone(),
            detail: "unreadable stored schema".into(),
        })?;
        let cols = schema
            .columns
            .iter()
            .map(|c| quote(&c.name))
            .collect::<Vec<_>>()
            .join(", ");
        let mut data = conn.prepare(&format!("SELECT {cols} FROM {}", quote(&view)))?;
        let mut table_rows = data.query([])?;
        let mut out = Vec::new();
        while let Some(row) = table_rows.next()? {
            let values = (0..schema.columns.len())
                .map(|i| row.get::<_, DValue>(i).map(crate::query::from_duck))
                .collect::<Result<Vec<_>, _>>()?;
            out.push(pb::Row { values });
        }
        views.push(pb::ViewSnapshot {
            schema: Some(schema),
            seq: r.get(1)?,
            produced_at_ms: r.get(2)?,
            applied_at_ms: r.get(3)?,
            rows: out,
            epoch: r.get(5)?,
            checksum: r.get(6)?,
        });
    }
    let dropped = read_dropped(conn)?
        .into_iter()
        .map(|(view, view_id)| pb::DroppedView { view, view_id })
        .collect();
    Ok((
        index,
        pb::ReplicaSnapshot { views, dropped }.encode_to_vec(),
    ))
}

/// A hashable form of a wire value, for reducing a batch by key.
#[derive(PartialEq, Eq, Hash)]
enum KeyPart {
    Null,
    Int(i64),
    Float(u64),
    Text(String),
    Bool(bool),
}

impl From<&pb::Value> for KeyPart {
    fn from(v: &pb::Value) -> KeyPart {
        use pb::value::Kind;
        match &v.kind {
            None => KeyPart::Null,
            Some(Kind::Int(i)) => KeyPart::Int(*i),
            Some(Kind::Float(f)) => KeyPart::Float(f.to_bits()),
            Some(Kind::Text(s)) => KeyPart::Text(s.clone()),
            Some(Kind::Boolean(b)) => KeyPart::Bool(*b),
        }
    }
}

fn to_duck(v: &pb::Value) -> DValue {
    use pb::value::Kind;
    match &v.kind {
        None => DValue::Null,
        Some(Kind::Int(i)) => DValue::BigInt(*i),
        Some(Kind::Float(f)) => DValue::Double(*f),
        Some(Kind::Text(s)) => DValue::Text(s.clone()),
        Some(Kind::Boolean(b)) => DValue::Boolean(*b),
    }
}

fn schema_to_json(s: &pb::ViewSchema) -> String {
    let cols: Vec<serde_json::Value> = s
        .columns
        .iter()
        .map(|c| serde_json::json!([c.name, c.r#type]))
        .collect();
    serde_json::json!({ "columns": cols, "key_indexes": s.key_indexes, "view_id": s.view_id })
        .to_string()
}

fn schema_from_json(view: &str, json: &str) -> Option<pb::ViewSchema> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    let columns = v.get("columns")?.as_array()?.iter().map(|c| {
        Some(pb::ColumnSchema {
            name: c.get(0)?.as_str()?.to_string(),
            r#type: c.get(1)?.as_str()?.to_string(),
        })
    });
    let key_indexes = v
        .get("key_indexes")?
        .as_array()?
        .iter()
        .map(|k| k.as_u64().map(|k| k as u32));
    Some(pb::ViewSchema {
        view: view.to_string(),
        columns: columns.collect::<Option<_>>()?,
        key_indexes: key_indexes.collect::<Option<_>>()?,
        view_id: v.get("view_id")?.as_u64()?,
    })
}

#[cfg(test)]
mod tests {
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
                checksum: r.position("by_region").checksum,
            }
        );
        assert_eq!(rows(&r).len(), 2);
    }
}

/// View `v` (id 1) with one string column `k`, its key: for tests of positions and batches.
#[cfg(test)]
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

#[cfg(test)]
mod epoch_tests {
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
        let keys = |r: &Replica| -> Vec<String> {
            r.reader()
                .expect("reader")
                .prepare("SELECT k FROM v ORDER BY k")
                .expect("prepare")
                .query_map([], |x| x.get(0))
                .expect("query")
                .collect::<Result<_, _>>()
                .expect("rows")
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
}

#[cfg(test)]
mod recreate_tests {
    use super::*;

    fn schema(view_id: u64, second_column: &str) -> pb::ViewSchema {
        pb::ViewSchema {
            view: "v".into(),
            columns: vec![
                pb::ColumnSchema {
                    name: "k".into(),
                    r#type: "string".into(),
                },
                pb::ColumnSchema {
                    name: second_column.into(),
                    r#type: "int64".into(),
                },
            ],
            key_indexes: vec![0],
            view_id,
        }
    }

    fn push(view_id: u64, column: &str, seqs: std::ops::RangeInclusive<u64>) -> pb::PushRequest {
        let first = *seqs.start();
        let batches = (1..=*seqs.end())
            .map(|seq| pb::ChangeBatch {
                view: "v".into(),
                seq,
                changes: vec![pb::RowChange {
                    key: vec![pb::Value {
                        kind: Some(pb::value::Kind::Text(format!("k{seq}"))),
                    }],
                    row: Some(pb::Row {
                        values: vec![
                            pb::Value {
                                kind: Some(pb::value::Kind::Text(format!("k{seq}"))),
                            },
                            pb::Value {
                                kind: Some(pb::value::Kind::Int(seq as i64)),
                            },
                        ],
                    }),
                }],
                ..Default::default()
            })
            .collect();
        let batches = super::tests::chain(batches)
            .into_iter()
            .filter(|b| b.seq >= first)
            .collect();
        pb::PushRequest {
            schema: Some(schema(view_id, column)),
            batches,
            ..Default::default()
        }
    }

    #[test]
    fn a_recreated_view_starts_over_and_old_pushes_are_ignored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("r.duckdb");
        let mut r = Replica::open(&path).expect("open");
        assert_eq!(r.apply(1, &push(3, "n", 1..=5), 0).expect("apply"), 5);
        assert_eq!(r.applied_seq(&schema(3, "n")), 5);
        assert_eq!(
            r.applied_seq(&schema(8, "total")),
            0,
            "a new incarnation has applied nothing"
        );
        // DROP + CREATE under the same name: a new id, new columns, sequences from 1 again.
        assert_eq!(r.apply(2, &push(8, "total", 1..=2), 0).expect("apply"), 2);
        // A late push of the dropped incarnation changes nothing.
        assert_eq!(r.apply(3, &push(3, "n", 6..=6), 0).expect("apply"), 0);
        drop(r);
        let r = Replica::open(&path).expect("reopen");
        assert_eq!(r.applied_seq(&schema(8, "total")), 2);
        let conn = r.reader().expect("reader");
        let rows: Vec<(String, i64)> = conn
            .prepare("SELECT k, total FROM v ORDER BY k")
            .expect("the new columns")
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows");
        assert_eq!(rows, vec![("k1".to_string(), 1), ("k2".to_string(), 2)]);

        // Dropping the old incarnation leaves the new one; dropping the new one removes it.
        let mut r = r;
        let drop_of = |id| pb::PushRequest {
            schema: Some(schema(id, "n")),
            drop_view: true,
            ..Default::default()
        };
        r.apply(4, &drop_of(3), 0).expect("drop old");
        assert_eq!(r.applied_seq(&schema(8, "total")), 2);
        r.apply(5, &drop_of(8), 0).expect("drop");
        assert_eq!(r.schemas().count(), 0);
        // A shipper that has not heard of the drop yet pushes again: the table stays gone,
        // across a restart too.
        assert_eq!(
            r.apply(6, &push(8, "total", 1..=3), 0).expect("late push"),
            0
        );
        assert_eq!(r.schemas().count(), 0);
        drop(conn);
        drop(r);
        let mut r = Replica::open(&path).expect("reopen");
        assert_eq!(
            r.apply(7, &push(8, "total", 1..=3), 0).expect("late push"),
            0
        );
        assert_eq!(r.schemas().count(), 0);
        let conn = r.reader().expect("reader");
        let tables: i64 = conn
            .query_row(
                "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'v'",
                [],
                |x| x.get(0),
            )
            .expect("count");
        assert_eq!(tables, 0);
    }
}

#[cfg(test)]
mod full_batch_tests {
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
        let keys: Vec<String> = r
            .reader()
            .expect("reader")
            .prepare("SELECT k FROM v ORDER BY k")
            .expect("prepare")
            .query_map([], |x| x.get(0))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows");
        assert_eq!(keys, vec!["kept", "new"]);
        // An older full batch changes nothing.
        assert_eq!(
            r.apply(3, &push(batch(30, true, &[])), 0).expect("apply"),
            41
        );
    }
}
