//! Reading a replica whole: the Raft snapshot of every view (what a node missing compacted
//! log entries is sent), one view's rows for a subscriber's snapshot, and a view schema as
//! the replica records it.

use super::*;

/// The replica's whole state, read through `conn` in one transaction: the Raft index it
/// reflects and the encoded [`pb::ReplicaSnapshot`].
pub fn snapshot(conn: &Connection) -> Result<(u64, Vec<u8>), ReplicaError> {
    conn.execute_batch("BEGIN TRANSACTION")?;
    let result = snapshot_inside(conn);
    conn.execute_batch("ROLLBACK")?;
    result
}

fn snapshot_inside(conn: &Connection) -> Result<(u64, Vec<u8>), ReplicaError> {
    use prost::Message as _;
    let index = recorded_raft_index(conn)?;
    let views = views_inside(conn, None)?;
    let dropped = read_dropped(conn)?
        .into_iter()
        .map(|(view, view_id)| pb::DroppedView { view, view_id })
        .collect();
    Ok((
        index,
        pb::ReplicaSnapshot { views, dropped }.encode_to_vec(),
    ))
}

/// One view's rows and applied position, read through `conn` in one read-only transaction
/// (a subscription's snapshot); `None` when the replica holds no such view.
pub fn view_snapshot(
    conn: &Connection,
    view: &str,
) -> Result<Option<pb::ViewSnapshot>, ReplicaError> {
    conn.execute_batch("BEGIN TRANSACTION READ ONLY")?;
    let result = views_inside(conn, Some(view)).map(|mut v| v.pop());
    conn.execute_batch("ROLLBACK")?;
    result
}

/// Every view's rows and position (or only `only`'s), inside the caller's transaction.
fn views_inside(
    conn: &Connection,
    only: Option<&str>,
) -> Result<Vec<pb::ViewSnapshot>, ReplicaError> {
    let mut views = Vec::new();
    let mut stmt = conn.prepare("SELECT view, seq, produced_at_ms, applied_at_ms, schema_json, epoch, checksum, coalesce(fresh_at_ms, 0) FROM _meridian_applied WHERE ?::VARCHAR IS NULL OR view = ? ORDER BY view")?;
    let mut rows = stmt.query(duckdb::params![only, only])?;
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
                .map(|i| row.get::<_, DValue>(i).map(wire_value))
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
            fresh_at_ms: r.get(7)?,
        });
    }
    Ok(views)
}

pub(super) fn schema_to_json(s: &pb::ViewSchema) -> String {
    let cols: Vec<serde_json::Value> = s
        .columns
        .iter()
        .map(|c| serde_json::json!([c.name, c.r#type]))
        .collect();
    serde_json::json!({ "columns": cols, "key_indexes": s.key_indexes, "view_id": s.view_id })
        .to_string()
}

pub(super) fn schema_from_json(view: &str, json: &str) -> Option<pb::ViewSchema> {
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
