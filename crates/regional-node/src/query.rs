//! Read-only SQL against a replica. A statement must start with a reading keyword, and it runs
//! inside a transaction that is always rolled back, so nothing a reader sends can change the
//! replica.

use duckdb::arrow::datatypes::DataType;
use duckdb::types::Value as DValue;
use duckdb::Connection;
use meridian_proto::v1 as pb;

/// Most rows one query may return: bounds the response's memory.
pub const QUERY_ROWS_MAX: usize = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("empty query")]
    Empty,
    #[error("only read-only statements are allowed (SELECT, WITH, FROM, VALUES, SHOW, DESCRIBE, SUMMARIZE, EXPLAIN); got '{0}'")]
    NotReadOnly(String),
    #[error("{0}")]
    DuckDb(#[from] duckdb::Error),
    #[error("the result has more than {QUERY_ROWS_MAX} rows; add a LIMIT")]
    TooManyRows,
}

pub struct QueryResult {
    pub columns: Vec<pb::ColumnInfo>,
    pub rows: Vec<pb::Row>,
    /// Per-view applied positions read in the same transaction as the rows, so they say
    /// exactly which change batches the rows reflect.
    pub positions: Vec<pb::ViewPosition>,
}

/// The first keyword of a statement, skipping white space, comments and parentheses.
fn first_keyword(sql: &str) -> String {
    let mut s = sql;
    loop {
        let t = s.trim_start_matches(|c: char| c.is_whitespace() || c == '(');
        if let Some(rest) = t.strip_prefix("--") {
            s = rest.split_once('\n').map_or("", |(_, r)| r);
        } else if let Some(rest) = t.strip_prefix("/*") {
            s = rest.split_once("*/").map_or("", |(_, r)| r);
        } else {
            s = t;
            break;
        }
    }
    s.chars()
        .take_while(|c| c.is_ascii_alphabetic())
        .collect::<String>()
        .to_ascii_uppercase()
}

pub fn check_read_only(sql: &str) -> Result<(), QueryError> {
    if sql.trim().is_empty() {
        return Err(QueryError::Empty);
    }
    let kw = first_keyword(sql);
    match kw.as_str() {
        "SELECT" | "WITH" | "FROM" | "VALUES" | "SHOW" | "DESCRIBE" | "DESC" | "SUMMARIZE"
        | "EXPLAIN" | "TABLE" => Ok(()),
        _ => Err(QueryError::NotReadOnly(if kw.is_empty() {
            sql.chars().take(20).collect()
        } else {
            kw
        })),
    }
}

pub fn run(conn: &Connection, sql: &str) -> Result<QueryResult, QueryError> {
    check_read_only(sql)?;
    conn.execute_batch("BEGIN TRANSACTION")?;
    let result = run_inside(conn, sql);
    // Always roll back: a reader never changes the replica, whatever it sent.
    let rollback = conn.execute_batch("ROLLBACK");
    let result = result?;
    rollback?;
    Ok(result)
}

fn run_inside(conn: &Connection, sql: &str) -> Result<QueryResult, QueryError> {
    let mut stmt = conn.prepare(sql)?;
    let mut rows_out = Vec::new();
    let mut rows = stmt.query([])?;
    let mut n_cols = 0;
    let mut columns = Vec::new();
    if let Some(s) = rows.as_ref() {
        n_cols = s.column_count();
        columns = (0..n_cols)
            .map(|i| pb::ColumnInfo {
                name: s
                    .column_name(i)
                    .map_or_else(|_| format!("column{i}"), |n| n.to_string()),
                r#type: type_name(&s.column_type(i)),
            })
            .collect();
    }
    while let Some(row) = rows.next()? {
        if rows_out.len() >= QUERY_ROWS_MAX {
            return Err(QueryError::TooManyRows);
        }
        let mut values = Vec::with_capacity(n_cols);
        for i in 0..n_cols {
            let v: DValue = row.get(i)?;
            values.push(from_duck(v));
        }
        rows_out.push(pb::Row { values });
    }
    drop(rows);
    let mut positions = Vec::new();
    let has_positions: bool = conn.query_row(
        "SELECT count(*) > 0 FROM duckdb_tables() WHERE table_name = '_meridian_applied'",
        [],
        |r| r.get(0),
    )?;
    if has_positions {
        let mut stmt = conn.prepare(
            "SELECT view, seq, produced_at_ms, applied_at_ms, view_id FROM _meridian_applied ORDER BY view",
        )?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            positions.push(pb::ViewPosition {
                view: r.get(0)?,
                applied_seq: r.get(1)?,
                produced_at_ms: r.get(2)?,
                applied_at_ms: r.get(3)?,
                view_id: r.get(4)?,
            });
        }
    }
    Ok(QueryResult {
        columns,
        rows: rows_out,
        positions,
    })
}

/// DuckDB's name for a result column's type.
fn type_name(t: &DataType) -> String {
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
        other => Some(Kind::Text(format!("{other:?}"))),
    };
    pb::Value { kind }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_are_refused_and_reads_answer() {
        let conn = Connection::open_in_memory().expect("open");
        conn.execute_batch(
            "CREATE TABLE t (a BIGINT, b VARCHAR); INSERT INTO t VALUES (1, 'x'), (2, NULL)",
        )
        .expect("setup");
        for sql in [
            "DELETE FROM t",
            "  insert into t values (3, 'y')",
            "/* hi */ DROP TABLE t",
            "COPY t TO 'x.csv'",
            "ATTACH 'x.db'",
            "",
            "   ",
        ] {
            assert!(run(&conn, sql).is_err(), "{sql} must be refused");
        }
        let r = run(
            &conn,
            "-- comment\nSELECT a, b, sum(a) OVER () AS s FROM t ORDER BY a",
        )
        .expect("select");
        assert_eq!(
            r.columns
                .iter()
                .map(|c| (c.name.as_str(), c.r#type.as_str()))
                .collect::<Vec<_>>(),
            vec![("a", "BIGINT"), ("b", "VARCHAR"), ("s", "HUGEINT")]
        );
        assert_eq!(r.rows.len(), 2);
        assert_eq!(r.rows[1].values[1].kind, None);
        let n: i64 = conn
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .expect("count");
        assert_eq!(n, 2);
    }
}
