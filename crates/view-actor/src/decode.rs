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
            let row = decode_row(stream, after).map_err(|e| format!("after: {e}"))?;
            check_key(stream, &row)?;
            let before = fields.get("before").filter(|b| op == "u" && b.is_object());
            upsert_or_move(stream, before, row).map(Some)
        }
        "d" => {
            // The primary key of a deleted row comes from `before`, or from the message key
            // when the source sends only keys in `before` (REPLICA IDENTITY DEFAULT).
            let source = match fields.get("before").filter(|b| b.is_object()) {
                Some(before) => before.clone(),
                None => {
                    let key =
                        key.ok_or("op 'd' has no 'before' object and the message has no key")?;
                    let key: Json = serde_json::from_slice(key)
                        .map_err(|e| format!("message key is not JSON: {e}"))?;
                    unwrap_schema(&key).clone()
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
mod tests {
    use super::*;
    use catalog::{Catalog, Change, Object};

    fn orders() -> StreamDef {
        let sql = "CREATE EXTERNAL STREAM orders(id int64, region string, amount int64, paid bool, qty nullable(int32), small uint8) SETTINGS type='kafka', brokers='b:1', topic='t', data_format='Debezium', primary_key='id'";
        match Catalog::default().plan(sql) {
            Ok(Change::Create(Object::Stream(s))) => s,
            other => panic!("{other:?}"),
        }
    }

    fn row(id: i64, region: &str, amount: i64) -> Vec<Value> {
        vec![
            Value::Int(id),
            Value::Text(region.into()),
            Value::Int(amount),
            Value::Null,
            Value::Null,
            Value::Null,
        ]
    }

    #[test]
    fn debezium_ops() {
        let s = orders();
        let cases: Vec<(&str, Option<SourceEvent>)> = vec![
            (
                r#"{"op":"c","before":null,"after":{"id":1,"region":"eu","amount":5}}"#,
                Some(SourceEvent::Upsert(row(1, "eu", 5))),
            ),
            (
                r#"{"op":"r","after":{"id":1,"region":"eu","amount":5}}"#,
                Some(SourceEvent::Upsert(row(1, "eu", 5))),
            ),
            (
                r#"{"op":"u","before":{"id":1},"after":{"id":1,"region":"us","amount":7}}"#,
                Some(SourceEvent::Upsert(row(1, "us", 7))),
            ),
            (
                r#"{"op":"d","before":{"id":1,"region":"us","amount":7},"after":null}"#,
                Some(SourceEvent::Delete {
                    key: vec![Value::Int(1)],
                }),
            ),
            (
                r#"{"schema":{},"payload":{"op":"c","after":{"id":2,"region":"eu","amount":1}}}"#,
                Some(SourceEvent::Upsert(row(2, "eu", 1))),
            ),
        ];
        let more: Vec<(&str, Option<SourceEvent>)> = vec![
            (
                r#"{"op":"u","before":{"id":1,"region":"eu"},"after":{"id":2,"region":"us","amount":7}}"#,
                Some(SourceEvent::Move {
                    old_key: vec![Value::Int(1)],
                    row: row(2, "us", 7),
                }),
            ),
            (
                r#"{"op":"u","before":{"region":"eu"},"after":{"id":2,"region":"us","amount":7}}"#,
                Some(SourceEvent::Upsert(row(2, "us", 7))),
            ),
            (
                r#"{"op":"t","before":null,"after":null}"#,
                Some(SourceEvent::Truncate),
            ),
            (
                r#"{"op":"c","after":{"id":3,"region":"eu","amount":1,"qty":2147483647,"small":255}}"#,
                Some(SourceEvent::Upsert(vec![
                    Value::Int(3),
                    Value::Text("eu".into()),
                    Value::Int(1),
                    Value::Null,
                    Value::Int(2147483647),
                    Value::Int(255),
                ])),
            ),
        ];
        for (json, expected) in cases.into_iter().chain(more) {
            assert_eq!(
                decode(&s, None, Some(json.as_bytes())),
                Ok(expected),
                "{json}"
            );
        }
        assert_eq!(
            decode(&s, Some(b"{\"id\":1}"), None),
            Ok(None),
            "tombstones are skipped"
        );
        assert_eq!(
            decode(
                &s,
                Some(br#"{"id":9}"#),
                Some(br#"{"op":"d","before":null}"#)
            ),
            Ok(Some(SourceEvent::Delete {
                key: vec![Value::Int(9)]
            })),
            "a delete without before takes its key from the message key"
        );
    }

    #[test]
    fn bad_messages_say_what_is_wrong() {
        let s = orders();
        let cases = [
            ("not json", "value is not JSON"),
            (r#"{"after":{}}"#, "no 'op' field"),
            (r#"{"op":"x"}"#, "unknown Debezium op 'x'"),
            (
                r#"{"op":"c","after":{"id":1,"amount":"lots"}}"#,
                "column 'amount': expected int64, got string",
            ),
            (
                r#"{"op":"c","after":{"region":"eu"}}"#,
                "primary key column 'id' is null",
            ),
            (
                r#"{"op":"c","after":{"id":1.5}}"#,
                "column 'id': expected int64",
            ),
            (r#"[1,2]"#, "expected a Debezium envelope object, got array"),
            (
                r#"{"op":"c","after":{"id":1,"qty":2147483648}}"#,
                "column 'qty': 2147483648 is out of range for nullable(int32) [-2147483648, 2147483647]",
            ),
            (
                r#"{"op":"c","after":{"id":1,"qty":-2147483649}}"#,
                "out of range for nullable(int32)",
            ),
            (
                r#"{"op":"c","after":{"id":1,"small":-1}}"#,
                "out of range for uint8 [0, 255]",
            ),
        ];
        for (json, words) in cases {
            let err = decode(&s, None, Some(json.as_bytes())).expect_err(json);
            assert!(
                err.contains(words),
                "{json}: '{err}' does not say '{words}'"
            );
        }
    }

    #[test]
    fn dates_and_times_decode_from_iso_text_and_from_epoch_numbers_in_the_column_precision() {
        let sql = "CREATE EXTERNAL STREAM ev(id int64, at datetime64(3), at_us datetime64(6, 'UTC'), day date) SETTINGS type='kafka', brokers='b:1', topic='t', data_format='JSONEachRow'";
        let Ok(Change::Create(Object::Stream(s))) = Catalog::default().plan(sql) else {
            panic!("stream")
        };
        let msg =
            br#"{"id": 1, "at": 1709214306500, "at_us": "2024-02-29T13:45:06.5Z", "day": 19782}"#;
        let Ok(Some(SourceEvent::Append(row))) = decode(&s, None, Some(msg)) else {
            panic!("decodes")
        };
        let t = catalog::parse_timestamp("2024-02-29 13:45:06.5").expect("ts");
        assert_eq!(
            row[1],
            Value::Timestamp(t),
            "milliseconds for datetime64(3)"
        );
        assert_eq!(row[2], Value::Timestamp(t));
        assert_eq!(row[3], Value::Date(19_782));
        let msg = br#"{"id": 1, "at": "2024-02-30 00:00:00", "day": "2024-02-29"}"#;
        let err = decode(&s, None, Some(msg)).expect_err("no such day");
        assert!(
            err.contains("column 'at'") && err.contains("not an ISO-8601 time"),
            "{err}"
        );
    }

    #[test]
    fn peerdb_records_as_its_kafka_connector_writes_them() {
        let sql = "CREATE EXTERNAL STREAM items(id int64, name string, price float64, active bool, created_at datetime64(6), born date) SETTINGS type='kafka', brokers='b:1', topic='t', data_format='PeerDB', primary_key='id'";
        let Ok(Change::Create(Object::Stream(s))) = Catalog::default().plan(sql) else {
            panic!("stream")
        };
        let at = catalog::parse_timestamp("2024-05-01 12:34:56.789012").expect("ts");
        let insert = br#"{"kind":"insert","new":{"active":true,"blob":"3q2+7w==","born":"2024-05-01","created_at":"2024-05-01 12:34:56.789012+0000","id":1,"name":"widget","price":"19.9","tags":["a","b"]},"checkpoint":24502360,"commit_time":"2024-05-01T12:34:56.801234Z","transaction_id":745,"source":"public.items"}"#;
        let born = catalog::parse_date("2024-05-01").expect("date");
        let widget = vec![
            Value::Int(1),
            Value::Text("widget".into()),
            Value::Float(19.9),
            Value::Bool(true),
            Value::Timestamp(at),
            Value::Date(born),
        ];
        assert_eq!(
            decode(&s, None, Some(insert)),
            Ok(Some(SourceEvent::Upsert(widget.clone())))
        );
        // REPLICA IDENTITY DEFAULT: an update's `old` is empty.
        let update = br#"{"kind":"update","old":{},"new":{"active":true,"born":"2024-05-01","created_at":"2024-05-01 12:34:56.789012+0000","id":1,"name":null,"price":"21"},"checkpoint":24502712}"#;
        let mut updated = widget.clone();
        updated[1] = Value::Null;
        updated[2] = Value::Float(21.0);
        assert_eq!(
            decode(&s, None, Some(update)),
            Ok(Some(SourceEvent::Upsert(updated.clone())))
        );
        // An update that changed the key carries the old key in `old`.
        let moved = br#"{"kind":"update","old":{"id":1,"name":null},"new":{"id":7,"active":true,"born":"2024-05-01","created_at":"2024-05-01 12:34:56.789012+0000","price":"21"}}"#;
        let mut row7 = updated.clone();
        row7[0] = Value::Int(7);
        assert_eq!(
            decode(&s, None, Some(moved)),
            Ok(Some(SourceEvent::Move {
                old_key: vec![Value::Int(1)],
                row: row7
            }))
        );
        // A delete's `old` has every column, only the key filled in.
        let delete = br#"{"kind":"delete","old":{"active":null,"born":null,"created_at":null,"id":1,"name":null,"price":null},"checkpoint":24503000}"#;
        assert_eq!(
            decode(&s, None, Some(delete)),
            Ok(Some(SourceEvent::Delete {
                key: vec![Value::Int(1)]
            }))
        );
        assert_eq!(decode(&s, None, Some(br#"{"kind":"relation"}"#)), Ok(None));
        for (bad, why) in [
            (&br#"{"kind":"update","new":{"id":1,"price":"2"},"unchanged_columns":["name","blob","price"]}"#[..], "leaves out unchanged column(s) [\"name\"]"),
            (br#"{"kind":"delete","old":{"id":null}}"#, "delete has no value for primary key column(s) [\"id\"]"),
            (br#"{"kind":"delete"}"#, "kind 'delete' needs an 'old' object"),
            (br#"{"kind":"insert","new":{"id":1,"price":"cheap"}}"#, "new: column 'price': expected float64, got string"),
            (br#"{"kind":"insert","new":{"id":1,"price":"1e400"}}"#, "column 'price'"),
            (br#"{"kind":"truncate"}"#, "unknown PeerDB record kind 'truncate'"),
            (br#"{"new":{}}"#, "PeerDB record has no 'kind' field"),
            (br#"[]"#, "expected a PeerDB record object, got array"),
        ] {
            let err = decode(&s, None, Some(bad)).expect_err(why);
            assert!(err.contains(why), "{err}");
        }
        // Order: a keyless record is taken only from a topic of one partition.
        assert_eq!(check_order(&s, None, 0, || 1), Ok(()));
        assert_eq!(check_order(&s, Some(b"1"), 2, || 3), Ok(()));
        let err = check_order(&s, None, 2, || 3).expect_err("out of order");
        assert!(
            err.contains("on partition 2 of a topic of 3 partitions"),
            "{err}"
        );
        assert!(check_order(&s, Some(b""), 0, || 2).is_err());
        assert_eq!(check_order(&orders(), None, 2, || 3), Ok(()), "only PeerDB");
    }
}
