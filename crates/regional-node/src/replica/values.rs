//! Values between the wire and a replica table: keys for reducing a batch, dates and
//! timestamps as days and microseconds on the wire.

use duckdb::types::Value as DValue;
use meridian_proto::v1 as pb;

/// A hashable form of a wire value, for reducing a batch by key.
#[derive(PartialEq, Eq, Hash)]
pub(super) enum KeyPart {
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

pub(super) fn column_type(schema: &pb::ViewSchema, i: usize) -> &str {
    schema.columns.get(i).map_or("", |c| c.r#type.as_str())
}

/// A row's wire values as DuckDB values of its table's column types.
pub(super) fn typed_row(schema: &pb::ViewSchema, values: &[pb::Value]) -> Vec<DValue> {
    values
        .iter()
        .enumerate()
        .map(|(i, v)| to_duck_as(v, column_type(schema, i)))
        .collect()
}

/// A wire value for a column of type `ty` (a schema type name): dates travel as days since
/// the epoch and timestamps as microseconds since the epoch.
pub(super) fn to_duck_as(v: &pb::Value, ty: &str) -> DValue {
    use pb::value::Kind;
    match (&v.kind, ty) {
        (Some(Kind::Int(d)), "date") => match i32::try_from(*d) {
            Ok(d) => DValue::Date32(d),
            Err(_) => DValue::Null,
        },
        (Some(Kind::Int(t)), "timestamp") => {
            DValue::Timestamp(duckdb::types::TimeUnit::Microsecond, *t)
        }
        _ => to_duck(v),
    }
}

/// A value read from a replica table as it travels on the wire (the inverse of `to_duck_as`).
pub(crate) fn wire_value(v: DValue) -> pb::Value {
    use pb::value::Kind;
    match v {
        DValue::Date32(d) => pb::Value {
            kind: Some(Kind::Int(d.into())),
        },
        DValue::Timestamp(unit, t) => pb::Value {
            kind: catalog::eval::timestamp_micros(unit, t).map(Kind::Int),
        },
        // A list as its JSON text, as it arrived.
        DValue::List(items) => pb::Value {
            kind: Some(Kind::Text(list_json(&items).to_string())),
        },
        other => crate::query::from_duck(other),
    }
}

/// A list of a replica's table as JSON: the types a view's list holds.
fn list_json(items: &[DValue]) -> serde_json::Value {
    use serde_json::Value as Json;
    Json::Array(
        items
            .iter()
            .map(|v| match v {
                DValue::BigInt(i) => Json::from(*i),
                DValue::Double(f) => {
                    serde_json::Number::from_f64(*f).map_or(Json::Null, Json::Number)
                }
                DValue::Text(s) => Json::String(s.clone()),
                DValue::Boolean(b) => Json::Bool(*b),
                _ => Json::Null,
            })
            .collect(),
    )
}

pub(super) fn to_duck(v: &pb::Value) -> DValue {
    use pb::value::Kind;
    match &v.kind {
        None => DValue::Null,
        Some(Kind::Int(i)) => DValue::BigInt(*i),
        Some(Kind::Float(f)) => DValue::Double(*f),
        Some(Kind::Text(s)) => DValue::Text(s.clone()),
        Some(Kind::Boolean(b)) => DValue::Boolean(*b),
    }
}
