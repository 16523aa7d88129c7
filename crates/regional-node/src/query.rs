//! Read-only SQL against a replica, safe against a hostile caller by construction:
//!
//! - DuckDB's own parser decides what the text is: it must be exactly one query statement,
//!   checked by binding it inside DuckDB's `query()` table function, which refuses anything but a
//!   single SELECT (SHOW, DESCRIBE, SUMMARIZE, FROM-first and VALUES are SELECTs to DuckDB).
//!   Only then is the text prepared, so duckdb-rs's `prepare` has no earlier statements to run.
//! - It runs in a `READ ONLY` transaction that is always rolled back.
//! - The database instance is opened with external access, extension loading and configuration
//!   changes off (`replica::open_config`), so no statement reaches the file system or network.
//! - Meridian's own `_meridian_*` tables are not readable; each answer carries the positions.
//! - Every read is bounded in time (interrupted at its deadline), rows and bytes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use duckdb::types::Value as DValue;
use duckdb::Connection;
use meridian_proto::v1 as pb;

mod ipc;
mod native;
mod values;

pub use ipc::Shape;
pub(crate) use values::from_duck;
use values::type_name;

/// Most rows one query may return by default: bounds the response's memory.
pub const QUERY_ROWS_MAX: usize = 100_000;
/// Most bytes of values one query may return by default (estimated: text length, 8 per other value).
pub const QUERY_BYTES_MAX: usize = 64 << 20;
/// Default time a query may run before it is interrupted.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(30);
/// Tries at rolling back a read's transaction (see `run`).
const ROLLBACK_ATTEMPTS: usize = 10;
/// Pause between two rollback attempts: over the attempts, longer than a watchdog's interval
/// between interrupts.
const ROLLBACK_PAUSE: Duration = Duration::from_millis(10);
/// Rows fetched between two checks of the deadline and the cancel flag.
const ROWS_PER_CHECK: usize = 1024;

/// Table functions that are not reads although DuckDB runs them inside a SELECT.
const REFUSED_FUNCTIONS: &[&str] = &["checkpoint", "force_checkpoint"];

/// Bounds on one read.
#[derive(Clone, Copy, Debug)]
pub struct QueryLimits {
    pub timeout: Duration,
    pub rows_max: usize,
    pub bytes_max: usize,
}

impl Default for QueryLimits {
    fn default() -> Self {
        QueryLimits {
            timeout: QUERY_TIMEOUT,
            rows_max: QUERY_ROWS_MAX,
            bytes_max: QUERY_BYTES_MAX,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("empty query")]
    Empty,
    #[error("only one read-only query statement is allowed (SELECT, WITH, FROM, VALUES, SHOW, DESCRIBE, SUMMARIZE, or EXPLAIN of one): {0}")]
    NotReadOnly(String),
    #[error("'{0}' is internal to Meridian and cannot be read; read meridian.views for each view's applied position and lag")]
    Internal(String),
    #[error("{0}")]
    DuckDb(#[from] duckdb::Error),
    #[error("the result has more than {0} rows; add a LIMIT")]
    TooManyRows(usize),
    #[error("the result has more than {0} bytes; select fewer columns or add a LIMIT")]
    TooManyBytes(usize),
    #[error("the query ran longer than {0:?} and was stopped")]
    Timeout(Duration),
    #[error("the query was cancelled")]
    Cancelled,
    #[error("this node does not serve reads now: {0}")]
    Unavailable(String),
    /// A consistency condition (staleness bound, at_least token, linearizable) not met
    /// within the wait.
    #[error("{0}")]
    TooStale(String),
    /// An `at_least` token that is malformed or from another region.
    #[error("{0}")]
    BadToken(String),
    /// A result value the node cannot read (a type the DuckDB bindings do not convert).
    #[error("{0}")]
    Unreadable(String),
    /// The read failed inside the node (a bug): nothing was answered.
    #[error("the query failed inside the node: {0}")]
    Failed(String),
}

pub struct QueryResult {
    pub columns: Vec<pb::ColumnInfo>,
    pub rows: Vec<pb::Row>,
    /// Per-view applied positions read in the same transaction as the rows, so they say
    /// exactly which change batches the rows reflect.
    pub positions: Vec<pb::ViewPosition>,
    /// Raft index of the last entry the replica had applied, read in the same transaction:
    /// the answer reflects exactly the region's log up to it (a read token's index).
    pub raft_index: u64,
    /// The result as Arrow IPC (stream or file format), when asked for in that shape; `rows`
    /// is then empty.
    pub arrow: Option<Vec<u8>>,
}

/// Skips white space and comments at the start of `sql`.
fn skip_blank(mut s: &str) -> &str {
    loop {
        let t = s.trim_start();
        if let Some(rest) = t.strip_prefix("--") {
            s = rest.split_once('\n').map_or("", |(_, r)| r);
        } else if let Some(rest) = t.strip_prefix("/*") {
            s = rest.split_once("*/").map_or("", |(_, r)| r);
        } else {
            return t;
        }
    }
}

/// Strips a leading keyword (case-insensitive) preceded and followed by plain white space
/// only. No comment may come before or after it: DuckDB's tokenizer and ours could disagree on
/// where a comment ends, and then the text checked would not be the text run.
fn strip_keyword<'a>(sql: &'a str, kw: &str) -> Option<&'a str> {
    let s = sql.trim_start();
    let head = s.get(..kw.len())?;
    let rest = &s[kw.len()..];
    (head.eq_ignore_ascii_case(kw) && rest.starts_with(|c: char| c.is_whitespace())).then_some(rest)
}

/// A SQL string literal holding `text`.
fn string_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// Identifier-like words of `sql` that are directly followed by `(`, lowercased.
fn called_names(sql: &str) -> Vec<String> {
    let lower = sql.to_ascii_lowercase();
    let bytes = lower.as_bytes();
    let mut names = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i].is_ascii_alphabetic() || bytes[i] == b'_' {
            let start = i;
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            let word = &lower[start..i];
            let next = lower[i..].trim_start();
            if next.starts_with('(') {
                names.push(word.to_string());
            }
        } else {
            i += 1;
        }
    }
    names
}

/// Checks that `sql` is one read-only query, using DuckDB's parser and binder on `conn`
/// (nothing is executed).
pub fn check_read_only(conn: &Connection, sql: &str) -> Result<(), QueryError> {
    if skip_blank(sql)
        .trim_end_matches(|c: char| c == ';' || c.is_whitespace())
        .is_empty()
    {
        return Err(QueryError::Empty);
    }
    if sql.contains('\0') {
        return Err(QueryError::NotReadOnly(
            "the text contains a NUL character".into(),
        ));
    }
    let lower = sql.to_ascii_lowercase();
    if let Some(i) = lower.find("_meridian") {
        let name: String = sql[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        return Err(QueryError::Internal(name));
    }
    if let Some(f) = called_names(sql)
        .into_iter()
        .find(|n| REFUSED_FUNCTIONS.contains(&n.as_str()))
    {
        return Err(QueryError::NotReadOnly(format!(
            "{f}() changes the database"
        )));
    }
    // EXPLAIN [ANALYZE] of a query is a read; of anything else it is not. What follows the
    // keywords is checked as a whole, so `EXPLAIN` + that text is one statement too.
    let inner = match strip_keyword(sql, "explain") {
        Some(rest) => strip_keyword(rest, "analyze").unwrap_or(rest),
        None => sql,
    };
    let probe = format!("SELECT * FROM query({})", string_literal(inner));
    match conn.prepare(&probe) {
        Ok(_) => Ok(()),
        Err(e) => {
            let msg = e.to_string();
            if msg.contains("Expected a single SELECT statement") {
                Err(QueryError::NotReadOnly(format!(
                    "got '{}'",
                    first_words(inner)
                )))
            } else {
                // The text parsed as one SELECT (or not at all): preparing it as written runs
                // nothing and gives DuckDB's error about the caller's own text, not the probe's.
                match conn.prepare(sql) {
                    Err(own) => Err(QueryError::DuckDb(own)),
                    Ok(_) => Err(QueryError::DuckDb(e)),
                }
            }
        }
    }
}

/// The first few words of a statement, for an error message.
fn first_words(sql: &str) -> String {
    let s = skip_blank(sql);
    let words: Vec<&str> = s.split_whitespace().take(3).collect();
    let mut out = words.join(" ");
    if out.len() > 60 {
        out = out.chars().take(60).collect();
    }
    out
}

/// Runs one read-only query. `cancel` stops it between batches of rows; the caller interrupts
/// DuckDB itself through the connection's interrupt handle.
pub fn run(
    conn: &Connection,
    sql: &str,
    limits: &QueryLimits,
    cancel: &AtomicBool,
) -> Result<QueryResult, QueryError> {
    run_shaped(conn, sql, limits, cancel, Shape::Rows)
}

/// [`run`], answering in `shape`.
pub fn run_shaped(
    conn: &Connection,
    sql: &str,
    limits: &QueryLimits,
    cancel: &AtomicBool,
    shape: Shape,
) -> Result<QueryResult, QueryError> {
    let deadline = Instant::now() + limits.timeout;
    // A connection an earlier read left inside its transaction (interrupts that kept landing
    // on every rollback) is brought back first, so that one unlucky read does not fail the next.
    if !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    conn.execute_batch("BEGIN TRANSACTION READ ONLY")?;
    let result = check_read_only(conn, sql).and_then(|()| match shape {
        Shape::Rows => run_inside(conn, sql, limits, deadline, cancel),
        _ => {
            let (columns, bytes) = ipc::run_arrow(conn, sql, limits, deadline, cancel, shape)?;
            Ok(QueryResult {
                columns,
                rows: Vec::new(),
                positions: read_positions(conn)?,
                raft_index: raft_index(conn)?,
                arrow: Some(bytes),
            })
        }
    });
    // Always roll back: a reader never changes the replica, whatever it sent. The interrupts
    // that stopped a query may still be arriving and can hit the rollback too, so it is tried
    // again; a connection left inside the transaction could not serve the next read.
    let mut rollback = conn.execute_batch("ROLLBACK");
    for _ in 1..ROLLBACK_ATTEMPTS {
        if rollback.is_ok() || conn.is_autocommit() {
            break;
        }
        // Let the interrupts still in flight (one every 20 ms from a watchdog) land first.
        std::thread::sleep(ROLLBACK_PAUSE);
        rollback = conn.execute_batch("ROLLBACK");
    }
    let result = match result {
        // An interrupted query surfaces as a DuckDB error; name the real reason.
        Err(QueryError::DuckDb(e)) if Instant::now() >= deadline => {
            tracing::debug!(error = %e, "query interrupted at its deadline");
            Err(QueryError::Timeout(limits.timeout))
        }
        Err(QueryError::DuckDb(_)) if cancel.load(Ordering::Relaxed) => Err(QueryError::Cancelled),
        other => other,
    }?;
    rollback?;
    Ok(result)
}

fn value_bytes(v: &pb::Value) -> usize {
    match &v.kind {
        Some(pb::value::Kind::Text(s)) => s.len() + 8,
        _ => 8,
    }
}

/// The Raft index the replica has applied, read in the query's transaction.
fn raft_index(conn: &Connection) -> Result<u64, QueryError> {
    Ok(conn
        .prepare_cached("SELECT coalesce(max(applied_index), 0::UBIGINT) FROM _meridian_raft")?
        .query_row([], |r| r.get::<_, u64>(0))?)
}

fn run_inside(
    conn: &Connection,
    sql: &str,
    limits: &QueryLimits,
    deadline: Instant,
    cancel: &AtomicBool,
) -> Result<QueryResult, QueryError> {
    let mut stmt = conn.prepare(sql)?;
    let mut rows_out = Vec::new();
    let mut rows = stmt.query([])?;
    let mut n_cols = 0;
    let mut columns = Vec::new();
    // Columns of DuckDB's NULL type (`SELECT NULL`): duckdb-rs panics reading them as values.
    let mut null_typed = Vec::new();
    if let Some(s) = rows.as_ref() {
        n_cols = s.column_count();
        null_typed = (0..n_cols)
            .map(|i| matches!(s.column_type(i), duckdb::arrow::datatypes::DataType::Null))
            .collect();
        columns = (0..n_cols)
            .map(|i| pb::ColumnInfo {
                name: s
                    .column_name(i)
                    .map_or_else(|_| format!("column{i}"), |n| n.to_string()),
                r#type: match s.column_type(i) {
                    // Arrow gives HUGEINT and DECIMAL(38,0) one shape (a sum of a
                    // decimal(p,0) column is the latter): DuckDB's own type tells them apart.
                    duckdb::arrow::datatypes::DataType::Decimal128(38, 0)
                        if s.column_logical_type(i).id()
                            == duckdb::core::LogicalTypeId::Decimal =>
                    {
                        "DECIMAL(38,0)".to_string()
                    }
                    t => type_name(&t),
                },
            })
            .collect();
    }
    let mut bytes = 0usize;
    while let Some(row) = rows.next()? {
        if rows_out.len() >= limits.rows_max {
            return Err(QueryError::TooManyRows(limits.rows_max));
        }
        if rows_out.len() % ROWS_PER_CHECK == 0 {
            if cancel.load(Ordering::Relaxed) {
                return Err(QueryError::Cancelled);
            }
            if Instant::now() >= deadline {
                return Err(QueryError::Timeout(limits.timeout));
            }
        }
        let mut values = Vec::with_capacity(n_cols);
        for i in 0..n_cols {
            let v = if null_typed.get(i).copied().unwrap_or(false) {
                pb::Value { kind: None }
            } else {
                // The bindings panic on some nested types (a list of DuckDB's NULL type).
                let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    row.get::<_, DValue>(i)
                }));
                match read {
                    Ok(v) => from_duck(v?),
                    Err(_) => {
                        let c = columns.get(i);
                        return Err(QueryError::Unreadable(format!(
                            "column '{}' of type {} holds values this node cannot read; cast it to a concrete type (such as [NULL]::INTEGER[])",
                            c.map_or("?", |c| c.name.as_str()),
                            c.map_or("?", |c| c.r#type.as_str()),
                        )));
                    }
                }
            };
            bytes += value_bytes(&v);
            values.push(v);
        }
        if bytes > limits.bytes_max {
            return Err(QueryError::TooManyBytes(limits.bytes_max));
        }
        rows_out.push(pb::Row { values });
    }
    drop(rows);
    let positions = read_positions(conn)?;
    let raft_index = raft_index(conn)?;
    Ok(QueryResult {
        columns,
        rows: rows_out,
        positions,
        raft_index,
        arrow: None,
    })
}

/// The applied position of every view, read by Meridian (not the caller) in the caller's
/// transaction.
fn read_positions(conn: &Connection) -> Result<Vec<pb::ViewPosition>, QueryError> {
    let mut positions = Vec::new();
    {
        // Every replica has the table (`Replica::open` creates it).
        let mut stmt = conn.prepare_cached(
            "SELECT view, seq, produced_at_ms, applied_at_ms, view_id, epoch, coalesce(fresh_at_ms, 0) FROM _meridian_applied ORDER BY view",
        )?;
        let mut rows = stmt.query([])?;
        let now_ms = crate::replica::wall_ms();
        while let Some(r) = rows.next()? {
            let fresh_at_ms: i64 = r.get(6)?;
            positions.push(pb::ViewPosition {
                view: r.get(0)?,
                applied_seq: r.get(1)?,
                produced_at_ms: r.get(2)?,
                applied_at_ms: r.get(3)?,
                view_id: r.get(4)?,
                epoch: r.get(5)?,
                fresh_at_ms,
                staleness_ms: if fresh_at_ms > 0 {
                    (now_ms - fresh_at_ms).max(0)
                } else {
                    -1
                },
            });
        }
    }
    Ok(positions)
}

#[cfg(test)]
mod tests;
