//! Whether a replica applies a change batch: the rules every node of a region follows alike,
//! from the replicated position and the batch alone (epochs, checksums, gaps, schema fit).

use catalog::ColumnType;
use meridian_proto::v1 as pb;

use super::Position;

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
                | (
                    Some(Kind::Int(_)),
                    ColumnType::Int64
                        | ColumnType::Float64
                        | ColumnType::Date
                        | ColumnType::Timestamp
                )
                | (Some(Kind::Float(_)), ColumnType::Float64)
                | (Some(Kind::Text(_)), ColumnType::String)
                | (Some(Kind::Boolean(_)), ColumnType::Bool)
        ) || match (&v.kind, ty) {
            // A decimal travels as its text: one its column holds exactly, written with its
            // scale's digits, so that one key is one text when a batch is reduced by key.
            (Some(Kind::Text(t)), ColumnType::Decimal { precision, scale }) => {
                catalog::decimal::parse(t, precision, scale)
                    .is_ok_and(|v| catalog::decimal::format(v, scale) == *t)
            }
            // A list travels as its JSON text: an array of its elements' type.
            (Some(Kind::Text(t)), ColumnType::List(e)) => serde_json::from_str(t)
                .ok()
                .is_some_and(|j: serde_json::Value| e.list_text(&j).is_ok()),
            _ => false,
        }
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
