//! Writing a batch's row changes into a view's table: key by key for small batches, through
//! a staging table for larger ones.

use super::*;

/// Replaces the rows of a batch's keys: the batch is first reduced to its last change per key
/// (DuckDB's `INSERT OR REPLACE` would keep the first), then staged and applied as one
/// delete-join and one insert. Keys may be NULL, so they match with `IS NOT DISTINCT FROM`.
pub(super) fn apply_changes(
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
    let n_cols = schema.columns.len();
    if reduced.len() <= DIRECT_CHANGES_MAX {
        return apply_directly(conn, schema, changes, &reduced);
    }
    let stage = quote(&format!("_meridian_stage_{}", schema.view));
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
            Some(row) => checked_row(schema, row)?,
            None => {
                // A deletion only needs the key columns; the others stay NULL.
                let mut vals = vec![DValue::Null; n_cols];
                for (k, &idx) in c.key.iter().zip(&schema.key_indexes) {
                    if let Some(slot) = vals.get_mut(idx as usize) {
                        *slot = to_duck_as(k, column_type(schema, idx as usize));
                    }
                }
                vals
            }
        };
        values.push(DValue::Boolean(c.row.is_none()));
        staged.push(values);
    }
    let mut marks = placeholders(schema);
    marks.push("?".to_string());
    insert_rows(conn, &stage, &marks, staged)?;
    let on = key_match(schema, |c| format!("t.{c} IS NOT DISTINCT FROM s.{c}"));
    conn.execute_batch(&format!(
        "DELETE FROM {table} AS t USING {stage} AS s WHERE {on}; INSERT INTO {table} SELECT {col_list} FROM {stage} WHERE NOT _meridian_delete;"
    ))?;
    Ok(())
}

/// The condition matching a row's key (`true` for a view without keys): `each` of the key
/// columns' quoted names, joined with AND.
fn key_match(schema: &pb::ViewSchema, each: impl Fn(&str) -> String) -> String {
    if schema.key_indexes.is_empty() {
        return "true".to_string();
    }
    schema
        .key_indexes
        .iter()
        .filter_map(|&i| schema.columns.get(i as usize))
        .map(|c| each(&quote(&c.name)))
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// A changed row as DuckDB values, refused when it does not have the table's width.
fn checked_row(schema: &pb::ViewSchema, row: &pb::Row) -> Result<Vec<DValue>, ReplicaError> {
    let n_cols = schema.columns.len();
    if row.values.len() != n_cols {
        return Err(ReplicaError::Schema {
            view: schema.view.clone(),
            detail: format!(
                "row has {} values, table has {n_cols} columns",
                row.values.len()
            ),
        });
    }
    Ok(typed_row(schema, &row.values))
}

/// Applies the changes `which` (at most one per key) key by key: a prepared delete of the
/// key's row (keys may be NULL, so they match with `IS NOT DISTINCT FROM`), then a prepared
/// insert of its new row.
fn apply_directly(
    conn: &Connection,
    schema: &pb::ViewSchema,
    changes: &[pb::RowChange],
    which: &[usize],
) -> Result<(), ReplicaError> {
    let table = quote(&schema.view);
    let cond = key_match(schema, |c| format!("{c} IS NOT DISTINCT FROM ?"));
    let delete = format!("DELETE FROM {table} WHERE {cond}");
    let insert = format!(
        "INSERT INTO {table} VALUES ({})",
        placeholders(schema).join(", ")
    );
    for &i in which {
        let c = &changes[i];
        match &c.row {
            Some(row) => {
                let values = checked_row(schema, row)?;
                // The key as the row has it, as the staged way matches it.
                let key: Vec<&DValue> = schema
                    .key_indexes
                    .iter()
                    .filter_map(|&k| values.get(k as usize))
                    .collect();
                conn.prepare_cached(&delete)?
                    .execute(params_from_iter(key))?;
                conn.prepare_cached(&insert)?
                    .execute(params_from_iter(&values))?;
            }
            None => {
                let key: Vec<DValue> = c
                    .key
                    .iter()
                    .zip(&schema.key_indexes)
                    .map(|(k, &idx)| to_duck_as(k, column_type(schema, idx as usize)))
                    .collect();
                conn.prepare_cached(&delete)?
                    .execute(params_from_iter(&key))?;
            }
        }
    }
    Ok(())
}

/// The placeholder of each of a view's columns in an INSERT: `?`, or for a list, which travels
/// as its JSON text, `from_json(?, '["BIGINT"]')`.
pub(super) fn placeholders(schema: &pb::ViewSchema) -> Vec<String> {
    schema
        .columns
        .iter()
        .map(|c| match catalog::ColumnType::from_name(&c.r#type) {
            Some(catalog::ColumnType::List(e)) => {
                format!("from_json(?, '[\"{}\"]')", e.duckdb_type())
            }
            _ => "?".to_string(),
        })
        .collect()
}

/// Inserts rows, each with a value for each of `marks` (the placeholders), with multi-row
/// INSERTs of a bounded size.
pub(super) fn insert_rows(
    conn: &Connection,
    table: &str,
    marks: &[String],
    rows: Vec<Vec<DValue>>,
) -> Result<(), ReplicaError> {
    let placeholders = format!("({})", marks.join(", "));
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
