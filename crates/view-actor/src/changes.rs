//! A view's change log as Kafka messages, for views over the view (`DataFormat::ChangeLog`).
//! Pure: no IO. The sink (`crate::sink`) encodes, the reading view's actor decodes.
//!
//! One message per row change, JSON, keyed by the row's key:
//! - `{"view":"v","epoch":E,"seq":S,"op":"u","row":[..]}`: the row with this key now has these
//!   values, every output column in order;
//! - `{"view":"v","epoch":E,"seq":S,"op":"d","key":[..]}`: the row with this key is gone;
//! - `{"view":"v","epoch":E,"seq":S,"op":"t","rows":N}`: every row is gone; the next `N`
//!   messages are the view's rows at `seq` (a snapshot), which a reader applies in one batch.
//!
//! Values are JSON numbers, strings, booleans and nulls; a float is a string of the shortest
//! digits that read back as the same double (`"0.1"`, `"1e300"`), or `"NaN"`, `"inf"`, `"-inf"`
//! (JSON has no number for them, and parsers may round a JSON number); dates are days and
//! timestamps microseconds since the Unix epoch. The epoch is the change log's: a reader
//! applies no message of an older epoch than one it has read (a former owner's late message).

use std::collections::{BTreeMap, HashMap};

use catalog::{ColumnType, StreamDef, Value};
use meridian_proto::v1 as pb;
use serde_json::{json, Value as Json};

use crate::decode::SourceEvent;
use crate::store::epoch_text;

/// What one message of the change log says.
#[derive(Clone, Debug, PartialEq)]
pub enum ChangeOp<'a> {
    Upsert(&'a pb::Row),
    Delete(&'a [pb::Value]),
    /// The start of a snapshot of `rows` rows.
    Truncate {
        rows: u64,
    },
}

/// Encodes one change as (message key, message value).
pub fn encode(view: &str, epoch: u64, seq: u64, op: ChangeOp<'_>) -> (Vec<u8>, Vec<u8>) {
    let (key, body) = match op {
        ChangeOp::Upsert(row) => (
            Json::Null,
            json!({"view": view, "epoch": epoch, "seq": seq, "op": "u", "row": values(&row.values)}),
        ),
        ChangeOp::Delete(key) => (
            values(key),
            json!({"view": view, "epoch": epoch, "seq": seq, "op": "d", "key": values(key)}),
        ),
        ChangeOp::Truncate { rows } => (
            Json::Null,
            json!({"view": view, "epoch": epoch, "seq": seq, "op": "t", "rows": rows}),
        ),
    };
    (key.to_string().into_bytes(), body.to_string().into_bytes())
}

/// Encodes an upsert keyed by `key` (the row's key values, as the change log carries them).
pub fn encode_upsert(
    view: &str,
    epoch: u64,
    seq: u64,
    key: &[pb::Value],
    row: &pb::Row,
) -> (Vec<u8>, Vec<u8>) {
    let (_, body) = encode(view, epoch, seq, ChangeOp::Upsert(row));
    (values(key).to_string().into_bytes(), body)
}

fn values(vs: &[pb::Value]) -> Json {
    Json::Array(vs.iter().map(value).collect())
}

fn value(v: &pb::Value) -> Json {
    use pb::value::Kind;
    match &v.kind {
        None => Json::Null,
        Some(Kind::Int(i)) => json!(i),
        // As text: Rust prints the shortest digits that parse back to the same double, and
        // parses text exactly (a JSON number may be parsed to a neighbouring double).
        Some(Kind::Float(f)) if f.is_nan() => json!("NaN"),
        Some(Kind::Float(f)) if f.is_infinite() && *f > 0.0 => json!("inf"),
        Some(Kind::Float(f)) if f.is_infinite() => json!("-inf"),
        Some(Kind::Float(f)) => json!(format!("{f:?}")),
        Some(Kind::Text(s)) => json!(s),
        Some(Kind::Boolean(b)) => json!(b),
    }
}

/// Decodes one message of a view's change log read as `stream` (the view's change stream):
/// the event and the change log's epoch. The error says what was wrong, for the dead-letter
/// record.
pub fn decode(stream: &StreamDef, payload: &[u8]) -> Result<(SourceEvent, u64), String> {
    let json: Json =
        serde_json::from_slice(payload).map_err(|e| format!("value is not JSON: {e}"))?;
    let Json::Object(fields) = &json else {
        return Err("expected a change-log object".to_string());
    };
    let epoch = fields
        .get("epoch")
        .and_then(Json::as_u64)
        .ok_or("change-log message has no 'epoch' number")?;
    let op = fields
        .get("op")
        .and_then(Json::as_str)
        .ok_or("change-log message has no 'op'")?;
    let array = |name: &str, len: usize| -> Result<&Vec<Json>, String> {
        let a = fields
            .get(name)
            .and_then(Json::as_array)
            .ok_or_else(|| format!("op '{op}' needs a '{name}' array"))?;
        if a.len() != len {
            return Err(format!(
                "'{name}' has {} values, the view has {len}",
                a.len()
            ));
        }
        Ok(a)
    };
    let event = match op {
        "u" => {
            let row = array("row", stream.columns.len())?;
            let row: Vec<Value> = stream
                .columns
                .iter()
                .zip(row)
                .map(|(c, v)| decode_column(c, v).map_err(|e| format!("column '{}': {e}", c.name)))
                .collect::<Result<_, _>>()?;
            // A key value may be NULL: GROUP BY makes one group of the NULLs.
            SourceEvent::Upsert(row)
        }
        "d" => {
            let key = array("key", stream.primary_key.len())?;
            let key: Vec<Value> = stream
                .primary_key
                .iter()
                .zip(key)
                .map(|(&i, v)| {
                    let c = &stream.columns[i];
                    decode_column(c, v).map_err(|e| format!("key column '{}': {e}", c.name))
                })
                .collect::<Result<_, _>>()?;
            SourceEvent::Delete { key }
        }
        "t" => SourceEvent::Truncate,
        other => return Err(format!("unknown change-log op '{other}'")),
    };
    Ok((event, epoch))
}

/// A value of column `c`, within its declared range (a stream written INTO by a view may
/// declare `int32` where the view computes 64-bit integers). A NULL in a column the stream
/// declares without `nullable(...)` is the type's default (0, '', false, 1970-01-01), as Proton
/// and ClickHouse insert it (`insert_null_as_default`); a view's own change stream declares
/// every column nullable.
fn decode_column(c: &catalog::Column, v: &Json) -> Result<Value, String> {
    let value = match decode_value(c.ty, v)? {
        Value::Null if !c.declared.starts_with("nullable(") => default_of(c.ty),
        value => value,
    };
    if let (Value::Int(i), Some((lo, hi))) = (&value, c.int_range()) {
        if *i < lo || *i > hi {
            return Err(format!(
                "{i} is out of range for {} [{lo}, {hi}]",
                c.declared
            ));
        }
    }
    Ok(value)
}

/// The value a column of a non-nullable type holds for a NULL.
fn default_of(ty: ColumnType) -> Value {
    match ty {
        ColumnType::Int64 => Value::Int(0),
        ColumnType::Float64 => Value::Float(0.0),
        ColumnType::String => Value::Text(String::new()),
        ColumnType::Bool => Value::Bool(false),
        ColumnType::Date => Value::Date(0),
        ColumnType::Timestamp => Value::Timestamp(0),
        ColumnType::Decimal { scale, .. } => Value::Decimal(0, scale),
        ColumnType::List(_) => Value::List("[]".into()),
    }
}

fn decode_value(ty: ColumnType, v: &Json) -> Result<Value, String> {
    let wrong = || format!("expected {ty}, got {v}");
    Ok(match (ty, v) {
        (_, Json::Null) => Value::Null,
        (ColumnType::Int64, Json::Number(n)) => Value::Int(n.as_i64().ok_or_else(wrong)?),
        (ColumnType::Float64, Json::Number(n)) => Value::Float(n.as_f64().ok_or_else(wrong)?),
        (ColumnType::Float64, Json::String(s)) => Value::Float(match s.as_str() {
            "NaN" => f64::NAN,
            "inf" => f64::INFINITY,
            "-inf" => f64::NEG_INFINITY,
            text => text
                .parse::<f64>()
                .ok()
                .filter(|f| f.is_finite())
                .ok_or_else(wrong)?,
        }),
        (ColumnType::String, Json::String(s)) => Value::Text(s.clone()),
        (ColumnType::Bool, Json::Bool(b)) => Value::Bool(*b),
        (ColumnType::Date, Json::Number(n)) => Value::Date(
            n.as_i64()
                .and_then(|d| i32::try_from(d).ok())
                .ok_or_else(wrong)?,
        ),
        (ColumnType::Timestamp, Json::Number(n)) => Value::Timestamp(n.as_i64().ok_or_else(wrong)?),
        (ColumnType::Decimal { precision, scale }, Json::String(s)) => {
            Value::Decimal(catalog::decimal::parse(s, precision, scale)?, scale)
        }
        (ColumnType::List(e), Json::String(s)) => {
            let list: Json = serde_json::from_str(s).map_err(|_| wrong())?;
            Value::List(e.list_text(&list)?)
        }
        _ => return Err(wrong()),
    })
}

/// Keeps a reader's batch open while a snapshot of a read view is half read, so that readers
/// of the reader never see the view partly refilled (sans IO; the actor feeds it each message
/// of a change-log input in order). Only the snapshot's own epoch counts: a former owner's
/// late messages are not its rows, a truncate of the same or a newer epoch starts the count
/// again (a writer that failed part-way writes a whole snapshot again), and any other message
/// of a newer epoch ends it.
#[derive(Debug, Default)]
pub struct SnapshotWindow {
    /// The open snapshot's epoch and the rows still to come, by input partition.
    open: HashMap<i32, (u64, u64)>,
}

impl SnapshotWindow {
    pub fn note(&mut self, input: i32, payload: Option<&[u8]>) {
        /// The fields the window reads; the row is skipped, not built.
        #[derive(serde::Deserialize)]
        struct Header {
            epoch: u64,
            op: String,
            rows: Option<u64>,
        }
        let Some(Header { epoch, op, rows }) =
            payload.and_then(|p| serde_json::from_slice::<Header>(p).ok())
        else {
            return;
        };
        let open = self.open.get(&input).copied();
        if op == "t" {
            if open.is_some_and(|(e, _)| epoch < e) {
                return;
            }
            match rows.filter(|&r| r > 0) {
                Some(rows) => self.open.insert(input, (epoch, rows)),
                None => self.open.remove(&input),
            };
            return;
        }
        match open {
            Some((e, left)) if e == epoch && left > 1 => {
                self.open.insert(input, (e, left - 1));
            }
            Some((e, _)) if e <= epoch => {
                self.open.remove(&input);
            }
            _ => {}
        }
    }

    /// Whether a snapshot is half read.
    pub fn open(&self) -> bool {
        !self.open.is_empty()
    }
}

/// The fence of a view over a view: a message of the read view's change log applies only if
/// its epoch is not older than the newest one seen on its partition (`newest`, persisted with
/// the batch); else it is a former owner's late message, dead-lettered with this reason.
pub fn fence_epoch(newest: &mut BTreeMap<i32, u64>, input: i32, epoch: u64) -> Result<(), String> {
    let seen = newest.entry(input).or_insert(epoch);
    if epoch < *seen {
        return Err(format!(
            "change-log epoch {} is older than epoch {} already read: a former owner's late message, not applied",
            epoch_text(epoch),
            epoch_text(*seen)
        ));
    }
    *seen = epoch;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use catalog::{Catalog, Change, Object};

    /// The change stream of `CREATE MATERIALIZED VIEW v AS SELECT <select>` over a stream
    /// with every type.
    fn change_stream() -> StreamDef {
        let mut c = Catalog::default();
        for (id, sql) in [
            (1, "CREATE EXTERNAL STREAM s (id int64, k string, d date, t datetime64(3), f float64, b bool) SETTINGS type='kafka', brokers='b:9092', topic='s', data_format='Debezium', primary_key='id', properties='client.id=x'"),
            (2, "CREATE MATERIALIZED VIEW v AS SELECT k, d, t, b, sum(f) AS f, count() AS n FROM s GROUP BY k, d, t, b"),
        ] {
            let Ok(change @ Change::Create(_)) = c.plan(sql) else {
                panic!("{sql}");
            };
            c.apply(id, sql, change);
        }
        let Some(Object::View(v)) = c.get("v").map(|e| e.object.clone()) else {
            panic!("no view");
        };
        assert_eq!(v.key_outputs, vec![0, 1, 2, 3]);
        c.source("v").expect("v has a key, so a change stream")
    }

    fn wire(v: Value) -> pb::Value {
        crate::wire::to_wire(&v)
    }

    #[test]
    fn the_change_stream_is_the_views_columns_keyed_by_its_key_on_its_streams_brokers() {
        let s = change_stream();
        let names: Vec<&str> = s.columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["k", "d", "t", "b", "f", "n"]);
        assert_eq!(s.primary_key, vec![0, 1, 2, 3]);
        assert_eq!(s.topic, "meridian.changes.0.2.v");
        assert_eq!(s.brokers, "b:9092");
        assert_eq!(
            s.kafka_options,
            vec![("client.id".to_string(), "x".to_string())]
        );
        assert_eq!(s.columns[2].ty, ColumnType::Timestamp);
    }

    #[test]
    fn every_value_survives_the_round_trip_exactly() {
        let s = change_stream();
        // Doubles whose decimal forms are long or near a rounding boundary, and every kind.
        let hard = [
            0.1 + 0.2,
            1.0 / 3.0,
            f64::from_bits(0x000f_ffff_ffff_ffff),
            9007199254740993.0,
            1.7976931348623157e308,
            5e-324,
            -0.0,
        ];
        for f in [
            1.5,
            -0.1,
            1e300,
            f64::MIN_POSITIVE,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ]
        .into_iter()
        .chain(hard)
        {
            let row = vec![
                Value::Text("a\"b\\c ü".into()),
                Value::Date(-719_528),
                Value::Timestamp(1_700_000_000_123_456),
                Value::Bool(false),
                Value::Float(f),
                Value::Int(i64::MIN),
            ];
            let key: Vec<pb::Value> = row[..4].iter().cloned().map(wire).collect();
            let (k, body) = encode_upsert("v", 7, 3, &key, &crate::wire::row_to_wire(&row));
            assert_eq!(serde_json::from_slice::<Json>(&k).ok(), Some(values(&key)));
            let (event, epoch) = decode(&s, &body).expect("decodes");
            assert_eq!(epoch, 7);
            let SourceEvent::Upsert(got) = &event else {
                panic!("an upsert: {event:?}");
            };
            let (Value::Float(a), Value::Float(b)) = (&got[4], &row[4]) else {
                panic!("floats");
            };
            assert_eq!(a.to_bits(), b.to_bits(), "{f:e} reads back bit for bit");
            assert_eq!(event, SourceEvent::Upsert(row));
        }
        // NaN is not equal to itself: check it apart.
        let row = crate::wire::row_to_wire(&[
            Value::Text("a".into()),
            Value::Null,
            Value::Null,
            Value::Null,
            Value::Float(f64::NAN),
            Value::Null,
        ]);
        let (_, body) = encode("v", 1, 1, ChangeOp::Upsert(&row));
        let Ok((SourceEvent::Upsert(r), _)) = decode(&s, &body) else {
            panic!("decodes");
        };
        assert!(matches!(r[4], Value::Float(f) if f.is_nan()));

        let key = vec![
            wire(Value::Text("a".into())),
            wire(Value::Date(3)),
            wire(Value::Timestamp(4)),
            wire(Value::Bool(true)),
        ];
        let (_, body) = encode("v", u64::MAX, 9, ChangeOp::Delete(&key));
        assert_eq!(
            decode(&s, &body),
            Ok((
                SourceEvent::Delete {
                    key: vec![
                        Value::Text("a".into()),
                        Value::Date(3),
                        Value::Timestamp(4),
                        Value::Bool(true)
                    ]
                },
                u64::MAX
            ))
        );
        let (_, body) = encode("v", 2, 0, ChangeOp::Truncate { rows: 3 });
        assert_eq!(decode(&s, &body), Ok((SourceEvent::Truncate, 2)));
    }

    #[test]
    fn a_stream_written_into_keeps_its_declared_integer_ranges() {
        let mut c = Catalog::default();
        for (id, sql) in [
            (1, "CREATE EXTERNAL STREAM s (id int64, k string, n int64) SETTINGS type='kafka', brokers='b:9092', topic='s', data_format='Debezium', primary_key='id'"),
            (2, "CREATE STREAM small (k string, total int16) PRIMARY KEY k SETTINGS mode='versioned_kv'"),
            (3, "CREATE MATERIALIZED VIEW w INTO small AS SELECT k, sum(n) AS total FROM s GROUP BY k"),
        ] {
            let change = c.plan(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
            c.apply(id, sql, change);
        }
        let small = c.source("small").expect("written by w");
        let ok = decode(&small, br#"{"epoch":1,"op":"u","row":["a",32767]}"#);
        assert_eq!(
            ok.map(|(e, _)| e),
            Ok(SourceEvent::Upsert(vec![
                Value::Text("a".into()),
                Value::Int(32767)
            ]))
        );
        let err =
            decode(&small, br#"{"epoch":1,"op":"u","row":["a",32768]}"#).expect_err("beyond int16");
        assert!(
            err.contains("column 'total': 32768 is out of range for int16 [-32768, 32767]"),
            "{err}"
        );
        // The writer's own change stream is 64-bit.
        let wide = c.source("w").expect("w");
        assert!(decode(&wide, br#"{"epoch":1,"op":"u","row":["a",32768]}"#).is_ok());
    }

    #[test]
    fn malformed_messages_say_what_is_wrong() {
        let s = change_stream();
        for (msg, expect) in [
            ("not json", "not JSON"),
            ("[1]", "change-log object"),
            (r#"{"op":"t"}"#, "no 'epoch'"),
            (r#"{"epoch":-1,"op":"t"}"#, "no 'epoch'"),
            (r#"{"epoch":1}"#, "no 'op'"),
            (r#"{"epoch":1,"op":"x"}"#, "unknown change-log op 'x'"),
            (r#"{"epoch":1,"op":"u"}"#, "needs a 'row' array"),
            (
                r#"{"epoch":1,"op":"u","row":[1]}"#,
                "'row' has 1 values, the view has 6",
            ),
            (
                r#"{"epoch":1,"op":"u","row":["a",1,2,true,"x",1]}"#,
                "column 'f': expected",
            ),
            (
                r#"{"epoch":1,"op":"u","row":["a",1,2,true,"1e999",1]}"#,
                "column 'f': expected",
            ),
            (
                r#"{"epoch":1,"op":"u","row":["a",1e10,2,true,1.0,1]}"#,
                "column 'd'",
            ),
            (
                r#"{"epoch":1,"op":"d","key":["a",1,2]}"#,
                "'key' has 3 values, the view has 4",
            ),
            (
                r#"{"epoch":1,"op":"d","key":["a",1,2,"no"]}"#,
                "key column 'b'",
            ),
        ] {
            let err = decode(&s, msg.as_bytes()).expect_err(msg);
            assert!(err.contains(expect), "{msg}: {err}");
        }
    }

    #[test]
    fn a_snapshot_keeps_the_batch_open_until_its_last_row() {
        let row = crate::wire::row_to_wire(&[Value::Text("\"op\":\"t\"".into())]);
        let key = [wire(Value::Text("k".into()))];
        let (_, upsert) = encode_upsert("v", 1, 1, &key, &row);
        let (_, empty) = encode("v", 1, 1, ChangeOp::Truncate { rows: 0 });
        let (_, two) = encode("v", 1, 1, ChangeOp::Truncate { rows: 2 });
        let (_, old_row) = encode_upsert("v", 0, 1, &key, &row);
        let (_, old_truncate) = encode("v", 0, 1, ChangeOp::Truncate { rows: 9 });
        let (_, newer_row) = encode_upsert("v", 2, 1, &key, &row);
        let mut w = SnapshotWindow::default();
        w.note(0, Some(&upsert));
        assert!(!w.open());
        w.note(0, Some(&empty));
        assert!(!w.open(), "an empty view's snapshot is the truncate alone");
        w.note(0, Some(&two));
        assert!(w.open());
        w.note(1, Some(&upsert));
        assert!(w.open(), "another partition does not count");
        w.note(0, Some(&old_row));
        w.note(0, Some(&old_truncate));
        w.note(0, None);
        assert!(
            w.open(),
            "a former owner's messages are not the snapshot's rows"
        );
        w.note(0, Some(&upsert));
        assert!(w.open());
        w.note(0, Some(&upsert));
        assert!(!w.open(), "closed after the last row");
        w.note(0, Some(&upsert));
        assert!(!w.open());

        // A writer that failed part-way writes its snapshot again: the count starts over.
        w.note(0, Some(&two));
        w.note(0, Some(&upsert));
        w.note(0, Some(&two));
        w.note(0, Some(&upsert));
        assert!(w.open(), "one row of the second snapshot read");
        w.note(0, Some(&upsert));
        assert!(!w.open());
        // A newer epoch's change ends a snapshot whose writer lost the view.
        w.note(0, Some(&two));
        w.note(0, Some(&newer_row));
        assert!(!w.open());
    }

    #[test]
    fn a_reader_applies_no_message_of_an_older_epoch_than_one_it_has_read() {
        let mut newest = BTreeMap::new();
        let (old, new) = (3 << 32 | 1, 4 << 32 | 1);
        assert_eq!(fence_epoch(&mut newest, 0, old), Ok(()));
        assert_eq!(
            fence_epoch(&mut newest, 0, old),
            Ok(()),
            "the same epoch goes on"
        );
        assert_eq!(fence_epoch(&mut newest, 0, new), Ok(()));
        let err = fence_epoch(&mut newest, 0, old).expect_err("a former owner's late message");
        assert!(err.contains("epoch 3.1 is older than epoch 4.1"), "{err}");
        assert_eq!(
            newest.get(&0),
            Some(&new),
            "a fenced message does not move the fence back"
        );
        // Partitions are fenced apart.
        assert_eq!(fence_epoch(&mut newest, 1, old), Ok(()));
        assert_eq!(
            fence_epoch(&mut newest, 0, new + 1),
            Ok(()),
            "a new generation goes on"
        );
    }
}

#[cfg(test)]
mod kv_tests {
    use super::*;
    use catalog::Catalog;

    /// A NULL written INTO a stream column declared without `nullable(...)` reads as the
    /// type's default, as Proton inserts it; a nullable column keeps the NULL.
    #[test]
    fn a_null_in_a_non_nullable_stream_column_reads_as_its_default() {
        let mut c = Catalog::default();
        for (i, sql) in [
            "CREATE EXTERNAL STREAM orders(id int64, country string, amount nullable(int64)) SETTINGS type='kafka', brokers='b:1', topic='o', data_format='Debezium', primary_key='id'",
            "CREATE STREAM totals(country string, revenue int64, top nullable(int64)) PRIMARY KEY country SETTINGS mode='versioned_kv'",
            "CREATE MATERIALIZED VIEW w INTO totals AS SELECT country, sum(amount) AS revenue, max(amount) AS top FROM orders GROUP BY country",
        ]
        .iter()
        .enumerate()
        {
            let change = c.plan(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
            c.apply(i as u64 + 1, sql, change);
        }
        let s = c.source("totals").expect("a writer");
        let null = pb::Value { kind: None };
        let de = crate::wire::to_wire(&Value::Text("DE".into()));
        let row = pb::Row {
            values: vec![de.clone(), null.clone(), null],
        };
        let (_, body) = encode_upsert("w", 1, 1, &[de], &row);
        let Ok((SourceEvent::Upsert(got), _)) = decode(&s, &body) else {
            panic!("an upsert")
        };
        assert_eq!(
            got,
            vec![Value::Text("DE".into()), Value::Int(0), Value::Null]
        );
    }
}
