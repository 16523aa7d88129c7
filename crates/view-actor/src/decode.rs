//! Decoding Kafka message values into source events. Pure: no IO.

use catalog::{ColumnType, DataFormat, StreamDef, Value};
use serde_json::Value as Json;

/// One change of the source, as the aggregation core consumes it.
#[derive(Clone, Debug, PartialEq)]
pub enum SourceEvent {
    /// An insert of a row in a stream without a primary key (never retracted).
    Append(Vec<Value>),
    /// The row with this primary key now has these values (insert, update or snapshot read).
    Upsert(Vec<Value>),
    /// The row with this primary key is gone.
    Delete { key: Vec<Value> },
    /// An update that changed the primary key: the row under `old_key` is gone and `row` is
    /// the new version under its own key.
    Move {
        old_key: Vec<Value>,
        row: Vec<Value>,
    },
    /// Every row of the stream is gone (a Debezium truncate).
    Truncate,
}

/// Decodes one message. `Ok(None)` is a message to skip (a Debezium tombstone).
/// The error text says what was wrong, for the dead-letter record.
pub fn decode(
    stream: &StreamDef,
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
) -> Result<Option<SourceEvent>, String> {
    decode_with_epoch(stream, key, payload).map(|(event, _)| event)
}

/// [`decode`], with the change-log epoch a message of a view's change log carries
/// (`DataFormat::ChangeLog`; `None` for other formats).
pub fn decode_with_epoch(
    stream: &StreamDef,
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
) -> Result<(Option<SourceEvent>, Option<u64>), String> {
    if stream.format == DataFormat::ChangeLog {
        let payload = payload.ok_or("message has no value")?;
        return crate::changes::decode(stream, payload).map(|(e, epoch)| (Some(e), Some(epoch)));
    }
    decode_source(stream, key, payload).map(|e| (e, None))
}

fn decode_source(
    stream: &StreamDef,
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
) -> Result<Option<SourceEvent>, String> {
    let Some(payload) = payload else {
        return match stream.format {
            DataFormat::Debezium => Ok(None),
            _ => Err("message has no value".to_string()),
        };
    };
    match stream.format {
        DataFormat::Raw => {
            let text = std::str::from_utf8(payload)
                .map_err(|e| format!("value is not valid UTF-8: {e}"))?;
            Ok(Some(SourceEvent::Append(vec![Value::Text(
                text.to_string(),
            )])))
        }
        DataFormat::JsonEachRow => {
            let json: Json =
                serde_json::from_slice(payload).map_err(|e| format!("value is not JSON: {e}"))?;
            let Json::Object(_) = json else {
                return Err(format!("expected a JSON object, got {}", json_kind(&json)));
            };
            let row = decode_row(stream, &json)?;
            if stream.primary_key.is_empty() {
                Ok(Some(SourceEvent::Append(row)))
            } else {
                check_key(stream, &row)?;
                Ok(Some(SourceEvent::Upsert(row)))
            }
        }
        DataFormat::Debezium => decode_debezium(stream, key, payload),
        DataFormat::PeerDb => decode_peerdb(stream, payload),
        // Read by `decode_with_epoch`, which never comes here with it.
        DataFormat::ChangeLog => Err("a change-log message decoded as a source".to_string()),
    }
}

fn decode_debezium(
    stream: &StreamDef,
    key: Option<&[u8]>,
    payload: &[u8],
) -> Result<Option<SourceEvent>, String> {
    let json: Json =
        serde_json::from_slice(payload).map_err(|e| format!("value is not JSON: {e}"))?;
    let envelope = unwrap_schema(&json);
    let Json::Object(fields) = envelope else {
        return Err(format!(
            "expected a Debezium envelope object, got {}",
            json_kind(envelope)
        ));
    };
    let op = fields
        .get("op")
        .and_then(Json::as_str)
        .ok_or("Debezium envelope has no 'op' field")?;
    match op {
        "c" | "r" | "u" => {
            let after = fields
                .get("after")
                .filter(|a| a.is_object())
                .ok_or_else(|| format!("op '{op}' needs an 'after' object"))?;
            let after = precise_decimals(stream, &json, Some("after"), after)?;
            let row = decode_row(stream, &after).map_err(|e| format!("after: {e}"))?;
            check_key(stream, &row)?;
            let before = fields.get("before").filter(|b| op == "u" && b.is_object());
            let before = before
                .map(|b| precise_decimals(stream, &json, Some("before"), b))
                .transpose()?;
            upsert_or_move(stream, before.as_deref(), row).map(Some)
        }
        "d" => {
            // The primary key of a deleted row comes from `before`, or from the message key
            // when the source sends only keys in `before` (REPLICA IDENTITY DEFAULT).
            let source = match fields.get("before").filter(|b| b.is_object()) {
                Some(before) => {
                    precise_decimals(stream, &json, Some("before"), before)?.into_owned()
                }
                None => {
                    let key =
                        key.ok_or("op 'd' has no 'before' object and the message has no key")?;
                    let key: Json = serde_json::from_slice(key)
                        .map_err(|e| format!("message key is not JSON: {e}"))?;
                    precise_decimals(stream, &key, None, unwrap_schema(&key))?.into_owned()
                }
            };
            let mut pk = Vec::with_capacity(stream.primary_key.len());
            for &idx in &stream.primary_key {
                let col = &stream.columns[idx];
                let v = decode_column(col, source.get(&col.name).unwrap_or(&Json::Null))
                    .map_err(|e| format!("column '{}': {e}", col.name))?;
                if v.is_null() {
                    return Err(format!(
                        "delete has no value for primary key column '{}'",
                        col.name
                    ));
                }
                pk.push(v);
            }
            Ok(Some(SourceEvent::Delete { key: pk }))
        }
        "t" => Ok(Some(SourceEvent::Truncate)),
        other => Err(format!("unknown Debezium op '{other}'")),
    }
}

/// Debezium's default `decimal.handling.mode=precise` sends a decimal as the base64 of its
/// unscaled value's big-endian two's complement, with the scale in the field's schema. With
/// the schema envelope (`schemas.enable=true`), such values of `part` ("after", "before") are
/// rewritten here as decimal text, exactly; without it a base64 value is refused by the
/// decimal column as not a number (set `decimal.handling.mode=string` then).
fn precise_decimals<'a>(
    stream: &StreamDef,
    json: &Json,
    part: Option<&str>,
    row: &'a Json,
) -> Result<std::borrow::Cow<'a, Json>, String> {
    use std::borrow::Cow;
    if !stream
        .columns
        .iter()
        .any(|c| matches!(c.ty, ColumnType::Decimal { .. }))
    {
        return Ok(Cow::Borrowed(row));
    }
    let mut row = row.clone();
    // The struct's fields: the envelope's `part` ("after", "before"), or for a message key
    // (`part` None) the key's own struct.
    let top = json
        .get("schema")
        .and_then(|s| s.get("fields"))
        .and_then(Json::as_array);
    let fields = match part {
        None => top,
        Some(part) => top
            .and_then(|f| {
                f.iter()
                    .find(|f| f.get("field").and_then(Json::as_str) == Some(part))
            })
            .and_then(|f| f.get("fields"))
            .and_then(Json::as_array),
    };
    let Some(fields) = fields else {
        return Ok(Cow::Owned(row));
    };
    let part = part.unwrap_or("key");
    for col in &stream.columns {
        if !matches!(col.ty, ColumnType::Decimal { .. }) {
            continue;
        }
        let Some(schema) = fields
            .iter()
            .find(|f| f.get("field").and_then(Json::as_str) == Some(col.name.as_str()))
        else {
            continue;
        };
        if schema.get("name").and_then(Json::as_str)
            != Some("org.apache.kafka.connect.data.Decimal")
        {
            continue;
        }
        let scale = schema
            .get("parameters")
            .and_then(|p| p.get("scale"))
            .and_then(|s| {
                s.as_str()
                    .map(str::to_string)
                    .or_else(|| s.as_u64().map(|n| n.to_string()))
            })
            .and_then(|s| s.parse::<u8>().ok())
            .ok_or_else(|| {
                format!(
                    "{part}: column '{}': its Decimal schema has no scale",
                    col.name
                )
            })?;
        if let Some(slot) = row.get_mut(&col.name) {
            if let Json::String(b64) = slot {
                let unscaled = unscaled_from_base64(b64).ok_or_else(|| {
                    format!(
                        "{part}: column '{}': '{}' is not a base64 decimal",
                        col.name,
                        truncate(b64, 40)
                    )
                })?;
                *slot = Json::String(catalog::decimal::format(unscaled, scale));
            }
        }
    }
    Ok(Cow::Owned(row))
}

/// A big-endian two's complement integer of at most 16 bytes, from standard base64.
fn unscaled_from_base64(text: &str) -> Option<i128> {
    let mut bytes = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.trim_end_matches('=').bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            bytes.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    if bytes.is_empty() || bytes.len() > 16 {
        return None;
    }
    let negative = bytes[0] & 0x80 != 0;
    let mut v: i128 = if negative { -1 } else { 0 };
    for b in bytes {
        v = (v << 8) | i128::from(b);
    }
    Some(v)
}

/// A PeerDB record, as PeerDB's Kafka connector writes it without a script: `kind` is
/// `insert`, `update` or `delete`; `new` holds the row after an insert or update, `old` the
/// primary key (with REPLICA IDENTITY DEFAULT) or the whole row of a delete, and an update's
/// old key when the update changed it. Other kinds (`relation`, `message`) carry no row.
fn decode_peerdb(stream: &StreamDef, payload: &[u8]) -> Result<Option<SourceEvent>, String> {
    let json: Json =
        serde_json::from_slice(payload).map_err(|e| format!("value is not JSON: {e}"))?;
    let Json::Object(fields) = &json else {
        return Err(format!(
            "expected a PeerDB record object, got {}",
            json_kind(&json)
        ));
    };
    let kind = fields
        .get("kind")
        .and_then(Json::as_str)
        .ok_or("PeerDB record has no 'kind' field")?;
    let object = |name: &str| fields.get(name).filter(|o| o.is_object());
    match kind {
        "insert" | "update" => {
            let new = object("new").ok_or_else(|| format!("kind '{kind}' needs a 'new' object"))?;
            // PeerDB leaves unchanged TOASTed values out of an update: the row it sends is
            // not whole, and taking the missing columns as NULL would be wrong.
            if let Some(Json::Array(unchanged)) = fields.get("unchanged_columns") {
                let missing: Vec<&str> = unchanged
                    .iter()
                    .filter_map(Json::as_str)
                    .filter(|c| stream.columns.iter().any(|col| col.name == *c))
                    // PeerDB may fill a value in from an earlier record of the row.
                    .filter(|c| new.get(*c).is_none())
                    .collect();
                if !missing.is_empty() {
                    return Err(format!("the update leaves out unchanged column(s) {missing:?} (TOASTed values): the view needs whole rows (REPLICA IDENTITY FULL on the source table)"));
                }
            }
            let row = decode_row(stream, new).map_err(|e| format!("new: {e}"))?;
            check_key(stream, &row)?;
            upsert_or_move(stream, object("old"), row).map(Some)
        }
        "delete" => {
            let old = object("old").ok_or("kind 'delete' needs an 'old' object")?;
            let key = key_of(stream, old)?.ok_or_else(|| {
                let cols: Vec<&str> = stream
                    .primary_key
                    .iter()
                    .map(|&i| stream.columns[i].name.as_str())
                    .collect();
                format!("delete has no value for primary key column(s) {cols:?}")
            })?;
            Ok(Some(SourceEvent::Delete { key }))
        }
        "relation" | "message" => Ok(None),
        other => Err(format!("unknown PeerDB record kind '{other}'")),
    }
}

/// A row's changes must be read in order, and Kafka keeps order only within a partition. A
/// PeerDB record without a key (PeerDB's default) may be on any partition, so it is taken only
/// from a topic of one partition. `partitions`: how many partitions of its topic the view
/// reads (asked only for such a record).
pub fn check_order(
    stream: &StreamDef,
    key: Option<&[u8]>,
    partition: i32,
    partitions: impl FnOnce() -> usize,
) -> Result<(), String> {
    if stream.format != DataFormat::PeerDb || key.is_some_and(|k| !k.is_empty()) {
        return Ok(());
    }
    let partitions = partitions();
    if partitions > 1 {
        return Err(format!("a PeerDB record without a key, on partition {partition} of a topic of {partitions} partitions: its row's changes may be read out of order; key the mirror's records by primary key (a script returning {{key = ..., value = json.encode(record)}}) or use a topic of one partition"));
    }
    Ok(())
}

/// An upsert of `row`, or a move when `old` (an update's old row, or its old key) names
/// another primary key: an update may change the key, and the old key's row must be retracted.
fn upsert_or_move(
    stream: &StreamDef,
    old: Option<&Json>,
    row: Vec<Value>,
) -> Result<SourceEvent, String> {
    if let Some(old_key) = old.map(|o| key_of(stream, o)).transpose()?.flatten() {
        let new_key: Vec<Value> = stream.primary_key.iter().map(|&i| row[i].clone()).collect();
        if old_key != new_key {
            return Ok(SourceEvent::Move { old_key, row });
        }
    }
    Ok(SourceEvent::Upsert(row))
}

/// The primary key in a `before` object, when it has every key column (with REPLICA IDENTITY
/// DEFAULT an update's `before` may be absent or partial).
fn key_of(stream: &StreamDef, before: &Json) -> Result<Option<Vec<Value>>, String> {
    let mut key = Vec::with_capacity(stream.primary_key.len());
    for &idx in &stream.primary_key {
        let col = &stream.columns[idx];
        let v = decode_column(col, before.get(&col.name).unwrap_or(&Json::Null))
            .map_err(|e| format!("before: column '{}': {e}", col.name))?;
        if v.is_null() {
            return Ok(None);
        }
        key.push(v);
    }
    Ok(Some(key))
}

/// Debezium's JSON converter with schemas enabled wraps the event as `{schema, payload}`.
fn unwrap_schema(json: &Json) -> &Json {
    match json.get("payload") {
        Some(p) if json.get("schema").is_some() => p,
        _ => json,
    }
}

fn check_key(stream: &StreamDef, row: &[Value]) -> Result<(), String> {
    for &idx in &stream.primary_key {
        if row[idx].is_null() {
            return Err(format!(
                "primary key column '{}' is null",
                stream.columns[idx].name
            ));
        }
    }
    Ok(())
}

/// Decodes a JSON object into a row in the stream's column order. A missing field is NULL.
pub fn decode_row(stream: &StreamDef, json: &Json) -> Result<Vec<Value>, String> {
    stream
        .columns
        .iter()
        .map(|col| {
            decode_column(col, json.get(&col.name).unwrap_or(&Json::Null))
                .map_err(|e| format!("column '{}': {e}", col.name))
        })
        .collect()
}

/// Decodes one value of a column, refusing integers outside the declared type's range (an
/// `int32` column never holds 2^40, as it would not in the source database or in DuckDB).
fn decode_column(col: &catalog::Column, json: &Json) -> Result<Value, String> {
    let v = match (col.ty, json) {
        // An epoch number in the column's precision.
        (ColumnType::Timestamp, Json::Number(n)) => {
            let (mul, div) = col.epoch_scale();
            let micros = n
                .as_i64()
                .and_then(|e| e.checked_mul(mul))
                .map(|e| e.div_euclid(div));
            micros.map(Value::Timestamp).ok_or_else(|| {
                format!("{n} is not an epoch time in {}'s precision", col.declared)
            })?
        }
        // An array's integers in the range of its declared element type.
        (ColumnType::List(_), Json::Array(items)) => {
            if let Some((lo, hi)) = col.elem_int_range() {
                let out = items
                    .iter()
                    .filter_map(Json::as_i64)
                    .find(|i| !(lo..=hi).contains(i));
                if let Some(bad) = out {
                    return Err(format!(
                        "{bad} is out of range for {} [{lo}, {hi}]",
                        col.declared
                    ));
                }
            }
            decode_value(col.ty, json)?
        }
        _ => decode_value(col.ty, json)?,
    };
    if let (Value::Int(i), Some((lo, hi))) = (&v, col.int_range()) {
        if *i < lo || *i > hi {
            return Err(format!(
                "{i} is out of range for {} [{lo}, {hi}]",
                col.declared
            ));
        }
    }
    Ok(v)
}

fn decode_value(ty: ColumnType, json: &Json) -> Result<Value, String> {
    let mismatch = || {
        format!(
            "expected {ty}, got {} {}",
            json_kind(json),
            truncate(&json.to_string(), 40)
        )
    };
    match (ty, json) {
        (_, Json::Null) => Ok(Value::Null),
        (ColumnType::Int64, Json::Number(n)) => n.as_i64().map(Value::Int).ok_or_else(mismatch),
        (ColumnType::Float64, Json::Number(n)) => n.as_f64().map(Value::Float).ok_or_else(mismatch),
        // A numeric value written as text (PeerDB's `numeric`, Debezium's
        // `decimal.handling.mode=string`), for a column declared float64.
        (ColumnType::Float64, Json::String(t)) => t
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .map(Value::Float)
            .ok_or_else(mismatch),
        (ColumnType::String, Json::String(s)) => Ok(Value::Text(s.clone())),
        (ColumnType::Bool, Json::Bool(b)) => Ok(Value::Bool(*b)),
        // Exact from text (Debezium's `decimal.handling.mode=string`, PeerDB's numeric) and
        // from JSON integers. A JSON number with a fraction or an exponent is refused: it is
        // parsed to a double, which cannot say which decimal was written (1.0000000000000001
        // would be read as 1.0).
        // A JSON array (Debezium's and PeerDB's arrays), kept as its JSON text.
        (ColumnType::List(e), Json::Array(_)) => e.list_text(json).map(Value::List),
        (ColumnType::Decimal { precision, scale }, Json::String(t)) => {
            catalog::decimal::parse(t, precision, scale).map(|v| Value::Decimal(v, scale))
        }
        (ColumnType::Decimal { precision, scale }, Json::Number(n)) => {
            let text = n.to_string();
            if n.is_f64() {
                return Err(format!(
                    "{text} is a JSON number with a fraction, which is read as a double and may not be the decimal that was sent; send decimals as strings (Debezium decimal.handling.mode=string)"
                ));
            }
            catalog::decimal::parse(&text, precision, scale).map(|v| Value::Decimal(v, scale))
        }
        // Debezium's Date is days since the epoch.
        (ColumnType::Date, Json::Number(n)) => n
            .as_i64()
            .and_then(|d| i32::try_from(d).ok())
            .map(Value::Date)
            .ok_or_else(mismatch),
        (ColumnType::Date, Json::String(s)) => catalog::parse_date(s)
            .map(Value::Date)
            .ok_or_else(|| format!("'{}' is not a date (YYYY-MM-DD)", truncate(s, 40))),
        (ColumnType::Timestamp, Json::String(s)) => catalog::parse_timestamp(s)
            .map(Value::Timestamp)
            .ok_or_else(|| {
                format!(
                    "'{}' is not an ISO-8601 time (YYYY-MM-DD HH:MM:SS[.f][Z|+HH:MM])",
                    truncate(s, 40)
                )
            }),
        _ => Err(mismatch()),
    }
}

fn json_kind(json: &Json) -> &'static str {
    match json {
        Json::Null => "null",
        Json::Bool(_) => "bool",
        Json::Number(_) => "number",
        Json::String(_) => "string",
        Json::Array(_) => "array",
        Json::Object(_) => "object",
    }
}

fn truncate(s: &str, max_chars: usize) -> String {
    if s.chars().count() <= max_chars {
        s.to_string()
    } else {
        format!("{}...", s.chars().take(max_chars).collect::<String>())
    }
}

#[cfg(test)]
mod tests;
