//! DuckDB, in memory, as the view engine's expression evaluator and type checker.
//!
//! A view's expressions are translated to DuckDB SQL at CREATE (see `view`), typed here with
//! `DESCRIBE`, and evaluated here over whole batches of rows: the batch is appended to a
//! table of the input's columns and one prepared `SELECT` computes every expression of every
//! row. The instance never touches a file: it is in memory, with external access off.

use duckdb::types::{TimeUnit, Value as Duck, ValueRef};
use duckdb::{appender_params_from_iter, Config, Connection};

use crate::value::{ColumnType, Value};

/// The name of the input table; its first column is the row's position in the batch.
const INPUT: &str = "_in";

/// Most rows evaluated one at a time after a batch failed, to find the rows at fault. A batch
/// is never larger than the actor's batch cap, so this bounds nothing in practice; it is here
/// so that the fallback has a stated bound.
pub const FALLBACK_ROWS_MAX: usize = 100_000;

/// A result per input row: `Ok(None)` when the row did not pass the filter, `Err` with
/// DuckDB's reason when evaluating the row failed (a cast of a bad value, an overflow).
pub type RowResult = Result<Option<Vec<Value>>, String>;

pub struct Evaluator {
    conn: Connection,
    n_inputs: usize,
    sql: String,
    n_outputs: usize,
    /// The table a batch is appended to (`_in`, or the text table under it with lists).
    table: &'static str,
    /// The storage type of each output that DuckDB answers as text (a decimal, a list).
    texts: Vec<Option<ColumnType>>,
}

/// Opens an in-memory DuckDB that reads no files and loads nothing.
fn open() -> Result<Connection, String> {
    let config = Config::default()
        .enable_external_access(false)
        .and_then(|c| c.enable_autoload_extension(false))
        .and_then(|c| c.with("autoinstall_known_extensions", "false"))
        .and_then(|c| c.threads(1))
        .and_then(|c| c.with("lock_configuration", "true"))
        .map_err(|e| e.to_string())?;
    Connection::open_in_memory_with_flags(config).map_err(|e| e.to_string())
}

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The table rows are appended to when the input has list columns: lists are appended as their
/// JSON text, and `_in` is a view that reads them as lists.
const INPUT_TEXT: &str = "_in_text";

/// Creates the input; answers the table rows are appended to.
fn create_input(conn: &Connection, columns: &[(String, String)]) -> Result<&'static str, String> {
    let list = |t: &str| t.strip_suffix("[]").map(str::to_string);
    let cols: Vec<String> = std::iter::once(format!("{} BIGINT", quote("_i")))
        .chain(columns.iter().map(|(n, t)| match list(t) {
            Some(_) => format!("{} VARCHAR", quote(n)),
            None => format!("{} {t}", quote(n)),
        }))
        .collect();
    if !columns.iter().any(|(_, t)| list(t).is_some()) {
        return conn
            .execute_batch(&format!("CREATE TABLE {INPUT} ({})", cols.join(", ")))
            .map(|()| INPUT)
            .map_err(|e| e.to_string());
    }
    let reads: Vec<String> = std::iter::once(quote("_i"))
        .chain(columns.iter().map(|(n, t)| match list(t) {
            Some(elem) => format!("from_json({}, '[\"{elem}\"]') AS {}", quote(n), quote(n)),
            None => quote(n),
        }))
        .collect();
    conn.execute_batch(&format!(
        "CREATE TABLE {INPUT_TEXT} ({}); CREATE VIEW {INPUT} AS SELECT {} FROM {INPUT_TEXT}",
        cols.join(", "),
        reads.join(", ")
    ))
    .map(|()| INPUT_TEXT)
    .map_err(|e| e.to_string())
}

/// Whether DuckDB failed because of the values it was given (a cast of a bad value, an
/// overflow, a malformed JSON text), as opposed to a fault of its own or of the machine.
pub fn is_data_error(reason: &str) -> bool {
    [
        "Conversion Error",
        "Invalid Input Error",
        "Out of Range Error",
    ]
    .iter()
    .any(|class| reason.starts_with(class))
}

/// DuckDB's message without the echo of the statement it appends after the first line.
pub fn clean_error(e: impl std::fmt::Display) -> String {
    let text = e.to_string();
    let first = text.lines().next().unwrap_or("").trim();
    first.to_string()
}

/// The DuckDB types of `exprs` over input columns `(name, DuckDB type)`. On failure, the
/// index of the first expression DuckDB refuses and its reason.
pub fn describe(
    columns: &[(String, String)],
    exprs: &[String],
) -> Result<Vec<String>, (usize, String)> {
    let conn = open().map_err(|e| (0, e))?;
    let table = create_input(&conn, columns).map_err(|e| (0, e))?;
    // One row of NULLs: running the expressions over it finds the errors DuckDB raises only
    // when it evaluates, such as a constant that cannot be cast (amount = 'x'), which would
    // otherwise fail every row of the stream.
    conn.execute_batch(&format!("INSERT INTO {table} DEFAULT VALUES"))
        .map_err(|e| (0, clean_error(e)))?;
    let one = |sql: &str| -> Result<Vec<String>, String> {
        let mut stmt = conn
            .prepare(&format!("DESCRIBE SELECT {sql} FROM {INPUT}"))
            .map_err(clean_error)?;
        let rows = stmt
            .query_map([], |r| r.get::<_, String>(1))
            .map_err(clean_error)?;
        let types = rows.collect::<Result<Vec<_>, _>>().map_err(clean_error)?;
        let mut run = conn
            .prepare(&format!("SELECT {sql} FROM {INPUT}"))
            .map_err(clean_error)?;
        let mut result = run.query([]).map_err(clean_error)?;
        while result.next().map_err(clean_error)?.is_some() {}
        Ok(types)
    };
    if exprs.is_empty() {
        return Ok(Vec::new());
    }
    match one(&exprs.join(", ")) {
        Ok(types) if types.len() == exprs.len() => Ok(types),
        Ok(types) => Err((
            0,
            format!(
                "expected {} result columns, DuckDB described {}",
                exprs.len(),
                types.len()
            ),
        )),
        Err(all) => {
            for (i, e) in exprs.iter().enumerate() {
                if let Err(reason) = one(e) {
                    return Err((i, reason));
                }
            }
            Err((0, all))
        }
    }
}

/// The storage type of a DuckDB result type, and the SQL that converts the expression to it
/// when DuckDB's own type is not already the one a replica stores.
pub fn storage_type(duck: &str, sql: &str) -> Result<(ColumnType, String), String> {
    let t = duck.to_ascii_uppercase();
    Ok(match t.as_str() {
        "BIGINT" | "INTEGER" | "SMALLINT" | "TINYINT" | "UTINYINT" | "USMALLINT" | "UINTEGER" => {
            (ColumnType::Int64, sql.to_string())
        }
        // Out-of-range values make the row fail (a dead letter), never wrap.
        "UBIGINT" | "HUGEINT" | "UHUGEINT" => (ColumnType::Int64, format!("CAST({sql} AS BIGINT)")),
        "DOUBLE" => (ColumnType::Float64, sql.to_string()),
        "FLOAT" => (ColumnType::Float64, format!("CAST({sql} AS DOUBLE)")),
        // Exact: the evaluator reads a decimal as its text (see `Evaluator::run_inner`).
        _ if t.starts_with("DECIMAL") => {
            let ty = duck_decimal(&t).ok_or_else(|| format!("its type {duck} is not a decimal(p, s) a view can hold"))?;
            (ty, format!("CAST({sql} AS VARCHAR)"))
        }
        "VARCHAR" => (ColumnType::String, sql.to_string()),
        "BOOLEAN" => (ColumnType::Bool, sql.to_string()),
        "DATE" => (ColumnType::Date, sql.to_string()),
        "TIMESTAMP" => (ColumnType::Timestamp, sql.to_string()),
        "TIMESTAMP_S" | "TIMESTAMP_MS" | "TIMESTAMP_NS" => {
            (ColumnType::Timestamp, format!("CAST({sql} AS TIMESTAMP)"))
        }
        _ if t.ends_with("[]") => {
            let elem = match &t[..t.len() - 2] {
                "BIGINT" | "INTEGER" | "SMALLINT" | "TINYINT" | "UTINYINT" | "USMALLINT"
                | "UINTEGER" | "UBIGINT" | "HUGEINT" => crate::ListElem::Int64,
                "DOUBLE" | "FLOAT" => crate::ListElem::Float64,
                "VARCHAR" => crate::ListElem::String,
                "BOOLEAN" => crate::ListElem::Bool,
                _ => {
                    return Err(format!(
                        "its type is {duck}; a view holds arrays of integers, floats, strings or bools"
                    ))
                }
            };
            // As JSON text, its elements widened as the replica's column holds them.
            (
                ColumnType::List(elem),
                format!(
                    "CAST(to_json(CAST({sql} AS {}[])) AS VARCHAR)",
                    elem.duckdb_type()
                ),
            )
        }
        // The NULL literal alone.
        "\"NULL\"" | "NULL" => (ColumnType::String, format!("CAST({sql} AS VARCHAR)")),
        other => {
            return Err(format!(
                "its type is {other}, which a view cannot store yet (supported: integers, floating point, string, bool, date, timestamp); convert it, for example with to_string(...)"
            ))
        }
    })
}

/// The column type of DuckDB's `DECIMAL(p,s)`, when a view can hold it.
pub fn duck_decimal(t: &str) -> Option<ColumnType> {
    let args = t.strip_prefix("DECIMAL(")?.strip_suffix(')')?;
    let (p, s) = args.split_once(',')?;
    ColumnType::decimal(p.trim().parse().ok()?, s.trim().parse().ok()?)
}

fn to_duck(v: &Value) -> Duck {
    match v {
        Value::Null => Duck::Null,
        Value::Int(i) => Duck::BigInt(*i),
        Value::Float(f) => Duck::Double(*f),
        Value::Text(s) => Duck::Text(s.clone()),
        Value::Bool(b) => Duck::Boolean(*b),
        Value::Date(d) => Duck::Date32(*d),
        Value::Timestamp(t) => Duck::Timestamp(TimeUnit::Microsecond, *t),
        // Cast exactly by DuckDB into the input's DECIMAL column.
        Value::Decimal(v, scale) => Duck::Text(crate::decimal::format(*v, *scale)),
        // Read as a list by the input view (`create_input`).
        Value::List(json) => Duck::Text(json.clone()),
    }
}

/// A DuckDB timestamp in microseconds since the epoch; `None` when it does not fit.
pub fn timestamp_micros(unit: TimeUnit, v: i64) -> Option<i64> {
    match unit {
        TimeUnit::Second => v.checked_mul(1_000_000),
        TimeUnit::Millisecond => v.checked_mul(1_000),
        TimeUnit::Microsecond => Some(v),
        TimeUnit::Nanosecond => Some(v.div_euclid(1_000)),
    }
}

fn from_duck(v: ValueRef<'_>) -> Result<Value, String> {
    Ok(match v {
        ValueRef::Null => Value::Null,
        ValueRef::Boolean(b) => Value::Bool(b),
        ValueRef::TinyInt(i) => Value::Int(i.into()),
        ValueRef::SmallInt(i) => Value::Int(i.into()),
        ValueRef::Int(i) => Value::Int(i.into()),
        ValueRef::BigInt(i) => Value::Int(i),
        ValueRef::UTinyInt(i) => Value::Int(i.into()),
        ValueRef::USmallInt(i) => Value::Int(i.into()),
        ValueRef::UInt(i) => Value::Int(i.into()),
        // -0.0 is 0.0, as DuckDB groups and compares them.
        ValueRef::Float(f) => Value::Float(f64::from(f) + 0.0),
        ValueRef::Double(f) => Value::Float(f + 0.0),
        ValueRef::Date32(d) => Value::Date(d),
        ValueRef::Timestamp(unit, v) => Value::Timestamp(
            timestamp_micros(unit, v).ok_or_else(|| "a time out of range".to_string())?,
        ),
        ValueRef::Text(t) => Value::Text(
            std::str::from_utf8(t)
                .map_err(|_| "a string result is not valid UTF-8".to_string())?
                .to_string(),
        ),
        other => return Err(format!("unexpected result type {:?}", other.data_type())),
    })
}

impl Evaluator {
    /// An evaluator of `SELECT exprs FROM input WHERE filter`, where the input has the
    /// columns `(name, DuckDB type)`.
    pub fn new(
        columns: &[(String, String)],
        exprs: &[String],
        filter: Option<&str>,
    ) -> Result<Evaluator, String> {
        let conn = open()?;
        let table = create_input(&conn, columns)?;
        let select: Vec<String> = std::iter::once(quote("_i"))
            .chain(exprs.iter().cloned())
            .collect();
        let mut sql = format!("SELECT {} FROM {INPUT}", select.join(", "));
        if let Some(f) = filter {
            sql.push_str(&format!(" WHERE {f}"));
        }
        conn.prepare(&sql).map_err(clean_error)?;
        Ok(Evaluator {
            conn,
            n_inputs: columns.len(),
            sql,
            n_outputs: exprs.len(),
            table,
            texts: vec![None; exprs.len()],
        })
    }

    /// Tells the evaluator the storage types of its outputs ([`storage_type`]), so that it
    /// reads decimals and lists, which it is given as text, as [`Value::Decimal`]s and
    /// [`Value::List`]s.
    pub fn with_output_types(mut self, types: &[ColumnType]) -> Evaluator {
        for (slot, ty) in self.texts.iter_mut().zip(types) {
            if let ColumnType::Decimal { .. } | ColumnType::List(_) = ty {
                *slot = Some(*ty);
            }
        }
        self
    }

    /// Evaluates every row; one result per row, in order. A row fails alone only for an
    /// error about its data ([`is_data_error`]); any other failure (memory, an internal error)
    /// fails the whole call, so that no row is dead-lettered for a fault of the machine.
    pub fn eval(&mut self, rows: &[&[Value]]) -> Result<Vec<RowResult>, String> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        match self.run(rows) {
            Ok(out) => Ok(out),
            Err(reason) if !is_data_error(&reason) => Err(reason),
            Err(_) if rows.len() <= FALLBACK_ROWS_MAX => {
                // A row made the batch fail: find it, and evaluate the others.
                let mut out = Vec::with_capacity(rows.len());
                for row in rows {
                    match self.run(std::slice::from_ref(row)) {
                        Ok(mut one) => out.push(one.pop().unwrap_or(Ok(None))),
                        Err(reason) if is_data_error(&reason) => out.push(Err(reason)),
                        Err(reason) => return Err(reason),
                    }
                }
                Ok(out)
            }
            Err(reason) => Err(reason),
        }
    }

    fn run(&mut self, rows: &[&[Value]]) -> Result<Vec<RowResult>, String> {
        let result = self.run_inner(rows);
        // The input is emptied whatever happened, so the next batch starts clean.
        self.conn
            .execute_batch(&format!("DELETE FROM {}", self.table))
            .map_err(clean_error)?;
        result
    }

    fn run_inner(&mut self, rows: &[&[Value]]) -> Result<Vec<RowResult>, String> {
        {
            let mut app = self.conn.appender(self.table).map_err(clean_error)?;
            for (i, row) in rows.iter().enumerate() {
                if row.len() != self.n_inputs {
                    return Err(format!(
                        "a row has {} values, the input has {} columns",
                        row.len(),
                        self.n_inputs
                    ));
                }
                let values = std::iter::once(Duck::BigInt(i as i64)).chain(row.iter().map(to_duck));
                app.append_row(appender_params_from_iter(values))
                    .map_err(clean_error)?;
            }
            app.flush().map_err(clean_error)?;
        }
        let mut out: Vec<RowResult> = (0..rows.len()).map(|_| Ok(None)).collect();
        let mut stmt = self.conn.prepare_cached(&self.sql).map_err(clean_error)?;
        let mut result = stmt.query([]).map_err(clean_error)?;
        while let Some(r) = result.next().map_err(clean_error)? {
            let i: i64 = r.get(0).map_err(clean_error)?;
            let mut values = Vec::with_capacity(self.n_outputs);
            let mut failed = None;
            for c in 0..self.n_outputs {
                let v = from_duck(r.get_ref(c + 1).map_err(clean_error)?)?;
                values.push(match (v, self.texts.get(c).copied().flatten()) {
                    (
                        Value::Text(t),
                        Some(ColumnType::Decimal {
                            precision: p,
                            scale: s,
                        }),
                    ) => match crate::decimal::parse(&t, p, s) {
                        Ok(d) => Value::Decimal(d, s),
                        Err(reason) => {
                            failed = Some(format!("Out of Range Error: {reason}"));
                            Value::Null
                        }
                    },
                    // Canonical JSON, and only what a replica admits (DuckDB writes NaN and
                    // Infinity into JSON, which no JSON reader takes).
                    (Value::Text(t), Some(ColumnType::List(e))) => {
                        match serde_json::from_str::<serde_json::Value>(&t)
                            .map_err(|_| format!("{t} is not a JSON array"))
                            .and_then(|j| e.list_text(&j))
                        {
                            Ok(list) => Value::List(list),
                            Err(reason) => {
                                failed = Some(format!(
                                    "Invalid Input Error: an array cannot be stored: {reason}"
                                ));
                                Value::Null
                            }
                        }
                    }
                    (v, _) => v,
                });
            }
            let slot = usize::try_from(i)
                .ok()
                .and_then(|i| out.get_mut(i))
                .ok_or_else(|| format!("row position {i} out of the batch"))?;
            *slot = match failed {
                Some(reason) => Err(reason),
                None => Ok(Some(values)),
            };
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cols() -> Vec<(String, String)> {
        vec![
            ("id".into(), "BIGINT".into()),
            ("raw".into(), "VARCHAR".into()),
        ]
    }

    #[test]
    fn a_batch_is_filtered_and_projected_and_a_bad_row_is_singled_out() {
        let mut e = Evaluator::new(
            &cols(),
            &[
                "\"id\" * 2".into(),
                "CAST(json_extract_string(\"raw\", '$.n') AS BIGINT)".into(),
            ],
            Some("\"id\" > 1"),
        )
        .expect("evaluator");
        let rows = [
            vec![Value::Int(1), Value::Text("{\"n\": 1}".into())],
            vec![Value::Int(2), Value::Text("{\"n\": \"x\"}".into())],
            vec![Value::Int(3), Value::Text("{\"n\": 7}".into())],
        ];
        let refs: Vec<&[Value]> = rows.iter().map(Vec::as_slice).collect();
        let out = e.eval(&refs).expect("eval");
        assert_eq!(out[0], Ok(None), "filtered out");
        assert!(
            out[1].as_ref().is_err_and(|r| r.contains("Conversion")),
            "{:?}",
            out[1]
        );
        assert_eq!(out[2], Ok(Some(vec![Value::Int(6), Value::Int(7)])));
        // The evaluator is clean for the next batch.
        let out = e.eval(&refs[2..]).expect("eval");
        assert_eq!(out, vec![Ok(Some(vec![Value::Int(6), Value::Int(7)]))]);
    }

    #[test]
    fn describe_types_and_locates_the_refused_expression() {
        assert_eq!(
            describe(&cols(), &["\"id\" + 1".into(), "lower(\"raw\")".into()]),
            Ok(vec!["BIGINT".to_string(), "VARCHAR".to_string()])
        );
        let err = describe(&cols(), &["\"id\"".into(), "lower(\"id\")".into()])
            .expect_err("lower of a number");
        assert_eq!(err.0, 1);
        assert!(err.1.contains("lower"), "{}", err.1);
    }

    #[test]
    fn files_are_out_of_reach() {
        let err = describe(
            &cols(),
            &["(SELECT count(*) FROM read_text('/etc/passwd'))".into()],
        );
        assert!(err.is_err(), "{err:?}");
    }
}
