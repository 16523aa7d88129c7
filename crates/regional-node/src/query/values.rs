//! Result values: DuckDB's column types by name, and its values on the wire, printed as
//! ClickHouse prints them where the wire has no kind of their own.

use duckdb::arrow::datatypes::DataType;
use duckdb::types::Value as DValue;
use meridian_proto::v1 as pb;

/// DuckDB's name for a result column's type.
pub(crate) fn type_name(t: &DataType) -> String {
    match t {
        DataType::Boolean => "BOOLEAN".into(),
        DataType::Int8 => "TINYINT".into(),
        DataType::Int16 => "SMALLINT".into(),
        DataType::Int32 => "INTEGER".into(),
        DataType::Int64 => "BIGINT".into(),
        DataType::UInt8 => "UTINYINT".into(),
        DataType::UInt16 => "USMALLINT".into(),
        DataType::UInt32 => "UINTEGER".into(),
        DataType::UInt64 => "UBIGINT".into(),
        DataType::Float16 | DataType::Float32 => "FLOAT".into(),
        DataType::Float64 => "DOUBLE".into(),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "VARCHAR".into(),
        DataType::Decimal128(p, s) if *p > 38 => format!("HUGEINT({p},{s})"),
        DataType::Decimal128(p, s) if *s == 0 && *p == 38 => "HUGEINT".into(),
        DataType::Decimal128(p, s) => format!("DECIMAL({p},{s})"),
        DataType::Date32 | DataType::Date64 => "DATE".into(),
        DataType::Timestamp(..) => "TIMESTAMP".into(),
        DataType::Binary | DataType::LargeBinary => "BLOB".into(),
        DataType::List(f) | DataType::LargeList(f) => format!("{}[]", type_name(f.data_type())),
        other => format!("{other:?}").to_uppercase(),
    }
}

pub(crate) fn from_duck(v: DValue) -> pb::Value {
    use pb::value::Kind;
    let kind = match v {
        DValue::Null => None,
        DValue::Boolean(b) => Some(Kind::Boolean(b)),
        DValue::TinyInt(i) => Some(Kind::Int(i.into())),
        DValue::SmallInt(i) => Some(Kind::Int(i.into())),
        DValue::Int(i) => Some(Kind::Int(i.into())),
        DValue::BigInt(i) => Some(Kind::Int(i)),
        DValue::UTinyInt(i) => Some(Kind::Int(i.into())),
        DValue::USmallInt(i) => Some(Kind::Int(i.into())),
        DValue::UInt(i) => Some(Kind::Int(i.into())),
        DValue::UBigInt(i) => {
            Some(i64::try_from(i).map_or_else(|_| Kind::Text(i.to_string()), Kind::Int))
        }
        DValue::HugeInt(i) => {
            Some(i64::try_from(i).map_or_else(|_| Kind::Text(i.to_string()), Kind::Int))
        }
        DValue::Float(f) => Some(Kind::Float(f.into())),
        DValue::Double(f) => Some(Kind::Float(f)),
        DValue::Text(s) => Some(Kind::Text(s)),
        // As ClickHouse prints them, in UTC.
        DValue::Date32(d) => Some(Kind::Text(catalog::format_date(d))),
        DValue::Timestamp(unit, t) => Some(catalog::eval::timestamp_micros(unit, t).map_or_else(
            || Kind::Text(t.to_string()),
            |m| Kind::Text(catalog::format_timestamp(m)),
        )),
        DValue::UHugeInt(i) => {
            Some(i64::try_from(i).map_or_else(|_| Kind::Text(i.to_string()), Kind::Int))
        }
        // Exact, with the column's scale: 1.50 for DECIMAL(10,2).
        DValue::Decimal(d) => Some(Kind::Text(d.to_string())),
        DValue::Enum(s) => Some(Kind::Text(s)),
        DValue::Union(v) => return from_duck(*v),
        other => Some(Kind::Text(text(&other))),
    };
    pb::Value { kind }
}

/// A value without a wire kind of its own, as ClickHouse prints it: `[1,2]`, `('a',1)`,
/// `{'k':1}`, `12:30:00`; text inside them quoted.
fn text(v: &DValue) -> String {
    fn inner(v: &DValue) -> String {
        match v {
            DValue::Null => "NULL".into(),
            DValue::Text(s) | DValue::Enum(s) => quote(s),
            DValue::Date32(_) | DValue::Timestamp(..) | DValue::Time64(..) => quote(&text(v)),
            DValue::Blob(b) | DValue::Geometry(b) => quote(&String::from_utf8_lossy(b)),
            DValue::Union(v) => inner(v),
            other => text(other),
        }
    }
    fn quote(s: &str) -> String {
        format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
    }
    match v {
        DValue::Null => String::new(),
        DValue::Boolean(b) => b.to_string(),
        DValue::TinyInt(i) => i.to_string(),
        DValue::SmallInt(i) => i.to_string(),
        DValue::Int(i) => i.to_string(),
        DValue::BigInt(i) => i.to_string(),
        DValue::HugeInt(i) => i.to_string(),
        DValue::UHugeInt(i) => i.to_string(),
        DValue::UTinyInt(i) => i.to_string(),
        DValue::USmallInt(i) => i.to_string(),
        DValue::UInt(i) => i.to_string(),
        DValue::UBigInt(i) => i.to_string(),
        DValue::Float(f) => f.to_string(),
        DValue::Double(f) => f.to_string(),
        DValue::Decimal(d) => d.to_string(),
        DValue::Text(s) | DValue::Enum(s) => s.clone(),
        DValue::Blob(b) | DValue::Geometry(b) => String::from_utf8_lossy(b).into_owned(),
        DValue::Date32(d) => catalog::format_date(*d),
        DValue::Timestamp(unit, t) => catalog::eval::timestamp_micros(*unit, *t)
            .map_or_else(|| t.to_string(), catalog::format_timestamp),
        DValue::Time64(unit, t) => {
            let micros = catalog::eval::timestamp_micros(*unit, *t).unwrap_or(*t);
            let (secs, frac) = (micros.div_euclid(1_000_000), micros.rem_euclid(1_000_000));
            let hms = format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60);
            if frac == 0 {
                hms
            } else {
                format!("{hms}.{frac:06}")
            }
        }
        DValue::Interval {
            months,
            days,
            nanos,
        } => format!("{months} months {days} days {nanos} nanoseconds"),
        DValue::List(items) | DValue::Array(items) => {
            format!(
                "[{}]",
                items.iter().map(inner).collect::<Vec<_>>().join(",")
            )
        }
        DValue::Struct(fields) => format!(
            "({})",
            fields
                .iter()
                .map(|(_, v)| inner(v))
                .collect::<Vec<_>>()
                .join(",")
        ),
        DValue::Map(entries) => format!(
            "{{{}}}",
            entries
                .iter()
                .map(|(k, v)| format!("{}:{}", inner(k), inner(v)))
                .collect::<Vec<_>>()
                .join(",")
        ),
        DValue::Union(v) => text(v),
        // A type a later DuckDB adds: its debug text until it gets a printer here.
        other => format!("{other:?}"),
    }
}
