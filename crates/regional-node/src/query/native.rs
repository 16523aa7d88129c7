//! ClickHouse's Native format (as its HTTP interface answers `FORMAT Native`, which
//! clickhouse-connect reads): one block per Arrow batch of DuckDB's output, column by column.
//! Scalars are `Nullable(T)` (every DuckDB column may hold NULL), lists `Array(Nullable(T))`
//! (a NULL list is an empty array: ClickHouse has no nullable arrays), and a type with no
//! Native counterpart here (structs, maps, times, intervals) a `Nullable(String)` of its text.

use arrow::array::{Array, AsArray};
use arrow::datatypes::DataType;
use arrow::util::display::{ArrayFormatter, FormatOptions};

use super::QueryError;

/// A column's type in Native.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Ch {
    Int {
        bytes: u8,
        signed: bool,
    },
    Int128,
    Float32,
    Float64,
    Bool,
    String,
    Date32,
    DateTime64,
    Decimal {
        precision: u8,
        scale: i8,
    },
    /// A BLOB's bytes, as a String (ClickHouse's strings are bytes).
    Bytes,
    Array(Box<Ch>),
    /// Anything else, as its text.
    Text,
}

impl Ch {
    /// The Native type of a column of Arrow type `t` (`duck`: DuckDB's name, which tells a
    /// HUGEINT from a DECIMAL(38,0)).
    pub(super) fn of(t: &DataType, duck: Option<&str>) -> Ch {
        match t {
            DataType::Int8 => Ch::Int {
                bytes: 1,
                signed: true,
            },
            DataType::Int16 => Ch::Int {
                bytes: 2,
                signed: true,
            },
            DataType::Int32 => Ch::Int {
                bytes: 4,
                signed: true,
            },
            DataType::Int64 => Ch::Int {
                bytes: 8,
                signed: true,
            },
            DataType::UInt8 => Ch::Int {
                bytes: 1,
                signed: false,
            },
            DataType::UInt16 => Ch::Int {
                bytes: 2,
                signed: false,
            },
            DataType::UInt32 => Ch::Int {
                bytes: 4,
                signed: false,
            },
            DataType::UInt64 => Ch::Int {
                bytes: 8,
                signed: false,
            },
            DataType::Float32 => Ch::Float32,
            DataType::Float64 => Ch::Float64,
            DataType::Boolean => Ch::Bool,
            DataType::Utf8 | DataType::LargeUtf8 => Ch::String,
            DataType::Binary | DataType::LargeBinary => Ch::Bytes,
            DataType::Date32 => Ch::Date32,
            DataType::Timestamp(..) => Ch::DateTime64,
            DataType::Decimal128(38, 0) if duck == Some("HUGEINT") => Ch::Int128,
            DataType::Decimal128(p, s) => Ch::Decimal {
                precision: *p,
                scale: *s,
            },
            DataType::List(f) | DataType::LargeList(f) => Ch::Array(Box::new(Ch::of(
                f.data_type(),
                duck.and_then(|d| d.strip_suffix("[]")),
            ))),
            _ => Ch::Text,
        }
    }

    /// The type's name, nullable where ClickHouse allows it.
    pub(super) fn name(&self) -> String {
        match self {
            Ch::Array(inner) => format!("Array({})", inner.name()),
            scalar => format!("Nullable({})", scalar.scalar_name()),
        }
    }

    fn scalar_name(&self) -> String {
        match self {
            Ch::Int { bytes, signed } => {
                format!(
                    "{}Int{}",
                    if *signed { "" } else { "U" },
                    u32::from(*bytes) * 8
                )
            }
            Ch::Int128 => "Int128".into(),
            Ch::Float32 => "Float32".into(),
            Ch::Float64 => "Float64".into(),
            Ch::Bool => "Bool".into(),
            Ch::String | Ch::Text | Ch::Bytes => "String".into(),
            Ch::Date32 => "Date32".into(),
            Ch::DateTime64 => "DateTime64(6, 'UTC')".into(),
            Ch::Decimal { precision, scale } => format!("Decimal({precision}, {scale})"),
            Ch::Array(inner) => format!("Array({})", inner.name()),
        }
    }
}

fn leb128(out: &mut Vec<u8>, mut n: u64) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn string(out: &mut Vec<u8>, s: &[u8]) {
    leb128(out, s.len() as u64);
    out.extend_from_slice(s);
}

/// Appends a block of no rows: the columns' names and types only (an empty result).
pub(super) fn write_header(out: &mut Vec<u8>, names: &[String], types: &[Ch]) {
    leb128(out, names.len() as u64);
    leb128(out, 0);
    for (name, ch) in names.iter().zip(types) {
        string(out, name.as_bytes());
        string(out, ch.name().as_bytes());
    }
}

/// Appends one block: the batch's columns with their names and types.
pub(super) fn write_block(
    out: &mut Vec<u8>,
    names: &[String],
    types: &[Ch],
    batch: &arrow::record_batch::RecordBatch,
) -> Result<(), QueryError> {
    leb128(out, batch.num_columns() as u64);
    leb128(out, batch.num_rows() as u64);
    for ((name, ch), column) in names.iter().zip(types).zip(batch.columns()) {
        string(out, name.as_bytes());
        string(out, ch.name().as_bytes());
        write_column(out, ch, column.as_ref())?;
    }
    Ok(())
}

fn write_column(out: &mut Vec<u8>, ch: &Ch, a: &dyn Array) -> Result<(), QueryError> {
    if let Ch::Array(inner) = ch {
        return write_lists(out, inner, a);
    }
    // The null map, then every value. A NULL's slot holds 0, as ClickHouse writes it: what
    // DuckDB leaves there (its minimum, for a date) is no value a client could read. A column
    // of DuckDB's NULL type has no validity buffer: its nulls are logical.
    let nulls = a.logical_nulls();
    let is_null = |i: usize| nulls.as_ref().is_some_and(|n| n.is_null(i));
    out.extend((0..a.len()).map(|i| u8::from(is_null(i))));
    write_values(out, ch, a, &is_null)
}

fn write_lists(out: &mut Vec<u8>, inner: &Ch, a: &dyn Array) -> Result<(), QueryError> {
    let (offsets, values): (Vec<i64>, _) = match a.data_type() {
        DataType::List(_) => {
            let l = a.as_list::<i32>();
            (
                l.value_offsets().iter().map(|&o| i64::from(o)).collect(),
                l.values().clone(),
            )
        }
        DataType::LargeList(_) => {
            let l = a.as_list::<i64>();
            (l.value_offsets().to_vec(), l.values().clone())
        }
        other => return Err(unreadable(other)),
    };
    let first = offsets.first().copied().unwrap_or(0);
    let last = offsets.last().copied().unwrap_or(0);
    for end in offsets.iter().skip(1) {
        let n = u64::try_from(end - first).map_err(|_| unreadable(a.data_type()))?;
        out.extend_from_slice(&n.to_le_bytes());
    }
    let (start, len) = (
        usize::try_from(first).map_err(|_| unreadable(a.data_type()))?,
        usize::try_from(last - first).map_err(|_| unreadable(a.data_type()))?,
    );
    write_column(out, inner, values.slice(start, len).as_ref())
}

fn unreadable(t: &DataType) -> QueryError {
    QueryError::Unreadable(format!("a {t} value cannot be written in Native format"))
}

/// The days of 0001-01-01 and 9999-12-31: the dates a client's calendar holds.
const DAYS: std::ops::RangeInclusive<i64> = -719_162..=2_932_896;
const MICROS_PER_DAY: i64 = 86_400_000_000;

fn out_of_range(what: &str) -> QueryError {
    QueryError::Unreadable(format!(
        "a {what} outside the years 1 to 9999 (such as 'infinity') cannot be written in Native format; cast it to VARCHAR"
    ))
}

fn write_values(
    out: &mut Vec<u8>,
    ch: &Ch,
    a: &dyn Array,
    is_null: &dyn Fn(usize) -> bool,
) -> Result<(), QueryError> {
    use arrow::datatypes::*;
    macro_rules! le {
        ($t:ty, $as:ty) => {
            for (i, v) in a.as_primitive::<$t>().values().iter().enumerate() {
                let v = if is_null(i) { 0 as $as } else { *v as $as };
                out.extend_from_slice(&v.to_le_bytes());
            }
        };
    }
    match (ch, a.data_type()) {
        (Ch::Int { .. }, DataType::Int8) => le!(Int8Type, i8),
        (Ch::Int { .. }, DataType::Int16) => le!(Int16Type, i16),
        (Ch::Int { .. }, DataType::Int32) => le!(Int32Type, i32),
        (Ch::Int { .. }, DataType::Int64) => le!(Int64Type, i64),
        (Ch::Int { .. }, DataType::UInt8) => le!(UInt8Type, u8),
        (Ch::Int { .. }, DataType::UInt16) => le!(UInt16Type, u16),
        (Ch::Int { .. }, DataType::UInt32) => le!(UInt32Type, u32),
        (Ch::Int { .. }, DataType::UInt64) => le!(UInt64Type, u64),
        (Ch::Float32, _) => le!(Float32Type, f32),
        (Ch::Float64, _) => le!(Float64Type, f64),
        (Ch::Int128, _) => le!(Decimal128Type, i128),
        (Ch::Date32, _) => {
            let days = a.as_primitive::<Date32Type>().values();
            if (0..days.len()).any(|i| !is_null(i) && !DAYS.contains(&i64::from(days[i]))) {
                return Err(out_of_range("date"));
            }
            le!(Date32Type, i32)
        }
        (Ch::Bool, _) => {
            let b = a.as_boolean();
            out.extend((0..b.len()).map(|i| u8::from(!is_null(i) && b.value(i))));
        }
        (Ch::DateTime64, DataType::Timestamp(unit, _)) => {
            let (mul, div) = match unit {
                TimeUnit::Second => (1_000_000, 1),
                TimeUnit::Millisecond => (1_000, 1),
                TimeUnit::Microsecond => (1, 1),
                TimeUnit::Nanosecond => (1, 1_000),
            };
            let values: Vec<i64> = match unit {
                TimeUnit::Second => a.as_primitive::<TimestampSecondType>().values().to_vec(),
                TimeUnit::Millisecond => a
                    .as_primitive::<TimestampMillisecondType>()
                    .values()
                    .to_vec(),
                TimeUnit::Microsecond => a
                    .as_primitive::<TimestampMicrosecondType>()
                    .values()
                    .to_vec(),
                TimeUnit::Nanosecond => a
                    .as_primitive::<TimestampNanosecondType>()
                    .values()
                    .to_vec(),
            };
            let (lo, hi) = (
                DAYS.start() * MICROS_PER_DAY,
                (DAYS.end() + 1) * MICROS_PER_DAY - 1,
            );
            for (i, v) in values.into_iter().enumerate() {
                let micros = if is_null(i) {
                    0
                } else {
                    v.checked_mul(mul)
                        .map(|m| m.div_euclid(div))
                        .filter(|m| (lo..=hi).contains(m))
                        .ok_or_else(|| out_of_range("timestamp"))?
                };
                out.extend_from_slice(&micros.to_le_bytes());
            }
        }
        (Ch::Decimal { precision, .. }, _) => {
            for (i, v) in a
                .as_primitive::<Decimal128Type>()
                .values()
                .iter()
                .enumerate()
            {
                let v = if is_null(i) { 0 } else { *v };
                match precision {
                    0..=9 => out.extend_from_slice(&(v as i32).to_le_bytes()),
                    10..=18 => out.extend_from_slice(&(v as i64).to_le_bytes()),
                    _ => out.extend_from_slice(&v.to_le_bytes()),
                }
            }
        }
        (Ch::String, DataType::Utf8) => {
            let s = a.as_string::<i32>();
            for i in 0..s.len() {
                string(
                    out,
                    if is_null(i) {
                        b""
                    } else {
                        s.value(i).as_bytes()
                    },
                );
            }
        }
        (Ch::String, DataType::LargeUtf8) => {
            let s = a.as_string::<i64>();
            for i in 0..s.len() {
                string(
                    out,
                    if is_null(i) {
                        b""
                    } else {
                        s.value(i).as_bytes()
                    },
                );
            }
        }
        (Ch::Bytes, DataType::Binary) => {
            let b = a.as_binary::<i32>();
            for i in 0..b.len() {
                string(out, if is_null(i) { b"" } else { b.value(i) });
            }
        }
        (Ch::Bytes, DataType::LargeBinary) => {
            let b = a.as_binary::<i64>();
            for i in 0..b.len() {
                string(out, if is_null(i) { b"" } else { b.value(i) });
            }
        }
        (Ch::Text, _) => {
            let f = ArrayFormatter::try_new(a, &FormatOptions::default())
                .map_err(|_| unreadable(a.data_type()))?;
            for i in 0..a.len() {
                let text = if is_null(i) {
                    String::new()
                } else {
                    f.value(i).to_string()
                };
                string(out, text.as_bytes());
            }
        }
        (_, other) => return Err(unreadable(other)),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::query::{run_shaped, QueryLimits, Shape};
    use std::sync::atomic::AtomicBool;

    /// The exact bytes ClickHouse writes for a block: sizes as LEB128, names and types as
    /// strings, a null map before each nullable column, offsets before an array's elements.
    #[test]
    fn a_block_is_written_as_clickhouse_writes_it() {
        let conn = duckdb::Connection::open_in_memory_with_flags(
            crate::replica::open_config().expect("config"),
        )
        .expect("duckdb");
        conn.execute_batch(
            "CREATE TABLE _meridian_applied (view VARCHAR, seq UBIGINT, produced_at_ms BIGINT, applied_at_ms BIGINT, view_id UBIGINT, epoch UBIGINT, fresh_at_ms BIGINT); \
             CREATE TABLE _meridian_raft (id INTEGER PRIMARY KEY, applied_index UBIGINT NOT NULL); INSERT INTO _meridian_raft VALUES (0, 1);",
        )
        .expect("setup");
        let r = run_shaped(
            &conn,
            "SELECT 1::BIGINT AS a, NULL::VARCHAR AS s, [1, 2]::INTEGER[] AS l, 1.5::DECIMAL(4,2) AS d",
            &QueryLimits::default(),
            &AtomicBool::new(false),
            Shape::Native,
        )
        .expect("query");
        let mut want = vec![4u8, 1];
        let mut column = |name: &str, ty: &str, data: &[u8]| {
            want.push(name.len() as u8);
            want.extend_from_slice(name.as_bytes());
            want.push(ty.len() as u8);
            want.extend_from_slice(ty.as_bytes());
            want.extend_from_slice(data);
        };
        column("a", "Nullable(Int64)", &[0, 1, 0, 0, 0, 0, 0, 0, 0]);
        column("s", "Nullable(String)", &[1, 0]);
        column(
            "l",
            "Array(Nullable(Int32))",
            &[2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0],
        );
        column("d", "Nullable(Decimal(4, 2))", &[0, 150, 0, 0, 0]);
        assert_eq!(r.arrow.expect("bytes"), want);

        let native = |sql: &str| {
            run_shaped(
                &conn,
                sql,
                &QueryLimits::default(),
                &AtomicBool::new(false),
                Shape::Native,
            )
        };
        let header = |name: &str, ty: &str| {
            let mut h = vec![name.len() as u8];
            h.extend_from_slice(name.as_bytes());
            h.push(ty.len() as u8);
            h.extend_from_slice(ty.as_bytes());
            h
        };
        // A stored NULL date is written as 0, not DuckDB's minimum, which no client reads.
        conn.execute_batch(
            "CREATE TABLE t (d DATE, b BLOB); INSERT INTO t VALUES (NULL, 'a\\x00b'::BLOB)",
        )
        .expect("table");
        let got = native("SELECT d, b FROM t")
            .expect("query")
            .arrow
            .expect("bytes");
        let mut want = vec![2u8, 1];
        want.extend(header("d", "Nullable(Date32)"));
        want.extend([1, 0, 0, 0, 0]);
        want.extend(header("b", "Nullable(String)"));
        want.extend([0, 3, b'a', 0, b'b']);
        assert_eq!(got, want, "a NULL date as 0, a BLOB as its bytes");
        // DuckDB's NULL type: its nulls are logical.
        let got = native("SELECT NULL AS n")
            .expect("query")
            .arrow
            .expect("bytes");
        let mut want = vec![1u8, 1];
        want.extend(header("n", "Nullable(String)"));
        want.extend([1, 0]);
        assert_eq!(got, want);
        // An empty result still names its columns.
        let got = native("SELECT 1 AS a WHERE false")
            .expect("query")
            .arrow
            .expect("bytes");
        let mut want = vec![1u8, 0];
        want.extend(header("a", "Nullable(Int32)"));
        assert_eq!(got, want);
        // A date no client's calendar holds is refused with the cast.
        match native("SELECT 'infinity'::DATE AS d") {
            Err(crate::query::QueryError::Unreadable(m)) => assert!(m.contains("VARCHAR"), "{m}"),
            other => panic!("{:?}", other.map(|r| r.columns)),
        }
    }
}
