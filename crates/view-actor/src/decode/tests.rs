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
    let msg = br#"{"id": 1, "at": 1709214306500, "at_us": "2024-02-29T13:45:06.5Z", "day": 19782}"#;
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

#[test]
fn decimals_decode_exactly_from_text_numbers_and_debeziums_precise_bytes() {
    let sql = "CREATE EXTERNAL STREAM pay(id int64, amount decimal(10, 2)) SETTINGS type='kafka', brokers='b:1', topic='t', data_format='Debezium', primary_key='id'";
    let Ok(Change::Create(Object::Stream(s))) = Catalog::default().plan(sql) else {
        panic!("stream")
    };
    let amount = |msg: &str| match decode(&s, None, Some(msg.as_bytes())) {
        Ok(Some(SourceEvent::Upsert(row))) => Ok(row[1].clone()),
        Ok(other) => panic!("{other:?}"),
        Err(e) => Err(e),
    };
    let plain = |v: &str| format!(r#"{{"op":"c","after":{{"id":1,"amount":{v}}}}}"#);
    assert_eq!(amount(&plain(r#""1.50""#)), Ok(Value::Decimal(150, 2)));
    assert_eq!(amount(&plain("-7")), Ok(Value::Decimal(-700, 2)));
    let err = amount(&plain("1.5")).expect_err("a double");
    assert!(err.contains("as strings"), "{err}");
    let err = amount(&plain(r#""1.505""#)).expect_err("not rounded");
    assert!(
        err.contains("column 'amount'") && err.contains("round"),
        "{err}"
    );
    let err = amount(&plain("100000000000000000001")).expect_err("beyond u64: a double");
    assert!(err.contains("as strings"), "{err}");
    let err = amount(&plain(r#""123456789.00""#)).expect_err("too wide");
    assert!(err.contains("does not fit in decimal(10,2)"), "{err}");
    // Debezium's default, decimal.handling.mode=precise: base64 bytes, the scale in the schema.
    let field = |name: &str| {
        format!(
            r#"{{"type":"struct","field":"{name}","fields":[{{"type":"int64","field":"id"}},{{"type":"bytes","name":"org.apache.kafka.connect.data.Decimal","parameters":{{"scale":"2","connect.decimal.precision":"10"}},"field":"amount"}}]}}"#
        )
    };
    let precise = |before: &str, after: &str| {
        format!(
            r#"{{"schema":{{"type":"struct","fields":[{},{}]}},"payload":{{"op":"u","before":{before},"after":{after}}}}}"#,
            field("before"),
            field("after")
        )
    };
    assert_eq!(
        amount(&precise("null", r#"{"id":1,"amount":"AJY="}"#)),
        Ok(Value::Decimal(150, 2))
    );
    assert_eq!(
        amount(&precise("null", r#"{"id":1,"amount":"/2o="}"#)),
        Ok(Value::Decimal(-150, 2))
    );
    assert_eq!(
        amount(&precise("null", r#"{"id":1,"amount":null}"#)),
        Ok(Value::Null)
    );
    let err = amount(&precise("null", r#"{"id":1,"amount":"A!=="}"#)).expect_err("bad base64");
    assert!(err.contains("not a base64 decimal"), "{err}");
    // A delete keyed by a decimal, its key (with its own schema) in the message key.
    let key_sql = "CREATE EXTERNAL STREAM pay(amount decimal(10, 2), note string) SETTINGS type='kafka', brokers='b:1', topic='t', data_format='Debezium', primary_key='amount'";
    let Ok(Change::Create(Object::Stream(keyed))) = Catalog::default().plan(key_sql) else {
        panic!("stream")
    };
    let key = r#"{"schema":{"type":"struct","fields":[{"type":"bytes","name":"org.apache.kafka.connect.data.Decimal","parameters":{"scale":"2"},"field":"amount"}]},"payload":{"amount":"/2o="}}"#;
    assert_eq!(
        decode(
            &keyed,
            Some(key.as_bytes()),
            Some(br#"{"op":"d","before":null}"#)
        ),
        Ok(Some(SourceEvent::Delete {
            key: vec![Value::Decimal(-150, 2)]
        }))
    );
    // Without the schema, bytes cannot be read: refused, never guessed.
    let err = amount(&plain(r#""AJY=""#)).expect_err("no schema");
    assert!(err.contains("not a decimal number"), "{err}");
}

#[test]
fn arrays_decode_from_json_arrays_of_their_element_type() {
    let sql = "CREATE EXTERNAL STREAM ev(id int64, tags array(string), ids nullable(array(int64)), small array(nullable(int8))) SETTINGS type='kafka', brokers='b:1', topic='t', data_format='JSONEachRow'";
    let Ok(Change::Create(Object::Stream(s))) = Catalog::default().plan(sql) else {
        panic!("stream")
    };
    let row = |msg: &str| match decode(&s, None, Some(msg.as_bytes())) {
        Ok(Some(SourceEvent::Append(row))) => Ok(row),
        Ok(other) => panic!("{other:?}"),
        Err(e) => Err(e),
    };
    let r = row(r#"{"id": 1, "tags": ["a", "b \"c\"", null], "ids": [1, 2]}"#).expect("row");
    assert_eq!(r[1], Value::List(r#"["a","b \"c\"",null]"#.into()));
    assert_eq!(r[2], Value::List("[1,2]".into()));
    let r = row(r#"{"id": 1, "tags": [], "ids": null}"#).expect("row");
    assert_eq!(r[1], Value::List("[]".into()));
    assert_eq!(r[2], Value::Null);
    let err = row(r#"{"id": 1, "tags": ["a"], "ids": [1, "2"]}"#).expect_err("a string in int64s");
    assert!(
        err.contains("column 'ids'") && err.contains("array element"),
        "{err}"
    );
    let err = row(r#"{"id": 1, "tags": "a", "ids": null}"#).expect_err("not an array");
    assert!(err.contains("column 'tags'"), "{err}");
    let err = row(r#"{"id": 1, "tags": [1.5], "ids": null}"#).expect_err("a number in strings");
    assert!(err.contains("array element"), "{err}");
    let r = row(r#"{"id": 1, "tags": [], "small": [-128, null, 127]}"#).expect("in range");
    assert_eq!(r[3], Value::List("[-128,null,127]".into()));
    let err = row(r#"{"id": 1, "tags": [], "small": [1, 1000]}"#).expect_err("not an int8");
    assert!(
        err.contains("1000 is out of range for array(nullable(int8))"),
        "{err}"
    );
}
