//! Conversions between catalog values and wire values.

use catalog::{Value, ViewDef};
use meridian_proto::v1 as pb;

pub fn to_wire(v: &Value) -> pb::Value {
    use pb::value::Kind;
    pb::Value {
        kind: match v {
            Value::Null => None,
            Value::Int(i) => Some(Kind::Int(*i)),
            Value::Float(f) => Some(Kind::Float(*f)),
            Value::Text(s) => Some(Kind::Text(s.clone())),
            Value::Bool(b) => Some(Kind::Boolean(*b)),
            // The column's schema type (date, timestamp) says what the number is.
            Value::Date(d) => Some(Kind::Int(i64::from(*d))),
            Value::Timestamp(t) => Some(Kind::Int(*t)),
            // Exact, as its text: `decimal(p,s)` in the schema says what it is.
            Value::Decimal(v, scale) => Some(Kind::Text(catalog::decimal::format(*v, *scale))),
            // A list as its JSON text: `array(T)` in the schema says what it is.
            Value::List(json) => Some(Kind::Text(json.clone())),
        },
    }
}

pub fn row_to_wire(row: &[Value]) -> pb::Row {
    pb::Row {
        values: row.iter().map(to_wire).collect(),
    }
}

pub fn change_to_wire(c: &crate::core::RowChange) -> pb::RowChange {
    pb::RowChange {
        key: c.key.iter().map(to_wire).collect(),
        row: c.row.as_deref().map(row_to_wire),
    }
}

/// The replica table a region must hold for this view.
pub fn schema(def: &ViewDef, view_id: u64) -> pb::ViewSchema {
    meridian_proto::view_schema(def, view_id)
}
