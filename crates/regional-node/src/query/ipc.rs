//! Results as Arrow IPC or Parquet: DuckDB's own Arrow output, written batch by batch as it
//! comes, within the same limits as a result of rows (rows, bytes, deadline, cancellation).

use arrow::ipc::writer::{FileWriter, StreamWriter};
use parquet::arrow::ArrowWriter;

use super::*;

/// How a result leaves the node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Shape {
    /// Rows of wire values (gRPC rows, the text and JSON formats).
    #[default]
    Rows,
    /// The Arrow IPC stream format (ClickHouse's `ArrowStream`).
    ArrowStream,
    /// The Arrow IPC file format (ClickHouse's `Arrow`).
    ArrowFile,
    /// A Parquet file (ClickHouse's `Parquet`), uncompressed.
    Parquet,
    /// ClickHouse's `Native` format (see [`super::native`]).
    Native,
}

enum Writer {
    Stream(StreamWriter<Vec<u8>>),
    File(FileWriter<Vec<u8>>),
    Parquet(ArrowWriter<Vec<u8>>),
    Native {
        out: Vec<u8>,
        names: Vec<String>,
        types: Vec<super::native::Ch>,
    },
}

impl Writer {
    fn write(&mut self, b: &arrow::record_batch::RecordBatch) -> Result<usize, QueryError> {
        match self {
            Writer::Stream(w) => w.write(b).map(|()| w.get_ref().len()).map_err(failed),
            Writer::File(w) => w.write(b).map(|()| w.get_ref().len()).map_err(failed),
            Writer::Parquet(w) => w
                .write(b)
                .map(|()| w.bytes_written() + w.in_progress_size())
                .map_err(parquet_failed),
            Writer::Native { out, names, types } => {
                super::native::write_block(out, names, types, b).map(|()| out.len())
            }
        }
    }

    fn finish(self) -> Result<Vec<u8>, QueryError> {
        match self {
            Writer::Stream(w) => w.into_inner().map_err(failed),
            Writer::File(w) => w.into_inner().map_err(failed),
            Writer::Parquet(w) => w.into_inner().map_err(parquet_failed),
            // An empty result still names its columns, as ClickHouse does.
            Writer::Native {
                mut out,
                names,
                types,
            } => {
                if out.is_empty() {
                    super::native::write_header(&mut out, &names, &types);
                }
                Ok(out)
            }
        }
    }
}

fn parquet_failed(e: parquet::errors::ParquetError) -> QueryError {
    QueryError::Unreadable(format!("the result cannot be written as Parquet: {e}"))
}

/// A writer refuses what the result holds (a type its format has no place for): the
/// caller's to change, as a cast.
fn failed(e: arrow::error::ArrowError) -> QueryError {
    QueryError::Unreadable(format!("the result cannot be written as Arrow: {e}"))
}

/// Whether `t`, or a type inside it, is one of `refused`.
fn holds(
    t: &arrow::datatypes::DataType,
    refused: &dyn Fn(&arrow::datatypes::DataType) -> bool,
) -> bool {
    use arrow::datatypes::DataType;
    refused(t)
        || match t {
            DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => {
                holds(f.data_type(), refused)
            }
            DataType::Struct(fields) => fields.iter().any(|f| holds(f.data_type(), refused)),
            DataType::Map(f, _) => holds(f.data_type(), refused),
            DataType::Union(fields, _) => fields.iter().any(|(_, f)| holds(f.data_type(), refused)),
            DataType::Dictionary(_, v) => holds(v, refused),
            _ => false,
        }
}

/// Runs `sql` and writes its result as Arrow IPC: its columns (name and DuckDB type) and the
/// IPC bytes.
pub(super) fn run_arrow(
    conn: &Connection,
    sql: &str,
    limits: &QueryLimits,
    deadline: Instant,
    cancel: &AtomicBool,
    shape: Shape,
) -> Result<(Vec<pb::ColumnInfo>, Vec<u8>), QueryError> {
    // DuckDB's own names of the result's types (Arrow gives HUGEINT, UHUGEINT and
    // DECIMAL(38,0) one shape); a statement DESCRIBE does not take (EXPLAIN) goes without.
    let described: Option<Vec<String>> = conn
        .prepare(&format!("DESCRIBE {sql}"))
        .and_then(|mut s| {
            s.query_map([], |r| r.get::<_, String>(1))?
                .collect::<Result<Vec<_>, _>>()
        })
        .ok();
    let mut stmt = conn.prepare(sql)?;
    let batches = stmt.stream_arrow([])?;
    let schema = batches.get_schema();
    let described = described.filter(|d| d.len() == schema.fields().len());
    let columns: Vec<pb::ColumnInfo> = schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| pb::ColumnInfo {
            name: f.name().clone(),
            r#type: described
                .as_ref()
                .map_or_else(|| type_name(f.data_type()), |d| d[i].clone()),
        })
        .collect();
    // DuckDB writes UHUGEINT into Arrow as a signed 128-bit decimal: values past 2^127 would
    // come out negative. Refused, as Parquet refuses unions and intervals (its writer has no
    // place for them), with the cast that reads them.
    if let Some(c) = columns.iter().find(|c| c.r#type.contains("UHUGEINT")) {
        return Err(QueryError::Unreadable(format!(
            "column '{}' is {}, which Arrow cannot carry exactly; cast it (to VARCHAR, or to HUGEINT when it fits)",
            c.name, c.r#type
        )));
    }
    if shape == Shape::Parquet {
        use arrow::datatypes::DataType;
        let refused = |t: &DataType| matches!(t, DataType::Union(..) | DataType::Interval(_));
        if let Some(f) = schema
            .fields()
            .iter()
            .find(|f| holds(f.data_type(), &refused))
        {
            return Err(QueryError::Unreadable(format!(
                "column '{}' holds a UNION or an INTERVAL, which Parquet has no type for; cast it to VARCHAR",
                f.name()
            )));
        }
    }
    let mut writer = match shape {
        Shape::ArrowFile => Writer::File(FileWriter::try_new(Vec::new(), &schema).map_err(failed)?),
        Shape::Parquet => Writer::Parquet(
            ArrowWriter::try_new(Vec::new(), schema.clone(), None).map_err(parquet_failed)?,
        ),
        Shape::Native => Writer::Native {
            out: Vec::new(),
            names: columns.iter().map(|c| c.name.clone()).collect(),
            types: schema
                .fields()
                .iter()
                .zip(&columns)
                .map(|(f, c)| super::native::Ch::of(f.data_type(), Some(c.r#type.as_str())))
                .collect(),
        },
        _ => Writer::Stream(StreamWriter::try_new(Vec::new(), &schema).map_err(failed)?),
    };
    let (mut rows, mut written) = (0usize, 0usize);
    for batch in batches {
        let batch = batch?;
        if cancel.load(Ordering::Relaxed) {
            return Err(QueryError::Cancelled);
        }
        if Instant::now() >= deadline {
            return Err(QueryError::Timeout(limits.timeout));
        }
        rows += batch.num_rows();
        if rows > limits.rows_max {
            return Err(QueryError::TooManyRows(limits.rows_max));
        }
        // Refused before it is encoded, as the rows path refuses row by row: encoding a
        // batch past the limit would hold a second copy of it.
        if written.saturating_add(batch.get_array_memory_size()) > limits.bytes_max {
            return Err(QueryError::TooManyBytes(limits.bytes_max));
        }
        written = writer.write(&batch)?;
        if written > limits.bytes_max {
            return Err(QueryError::TooManyBytes(limits.bytes_max));
        }
    }
    Ok((columns, writer.finish()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, Int64Array, ListArray, StringArray};

    fn run_as(conn: &Connection, sql: &str, limits: &QueryLimits, shape: Shape) -> QueryResult {
        run_shaped(conn, sql, limits, &AtomicBool::new(false), shape).expect("query")
    }

    #[test]
    fn arrow_results_carry_duckdbs_own_arrays_within_the_limits() {
        let conn =
            Connection::open_in_memory_with_flags(crate::replica::open_config().expect("config"))
                .expect("duckdb");
        conn.execute_batch(
            "CREATE TABLE _meridian_applied(view VARCHAR, seq UBIGINT, produced_at_ms BIGINT, applied_at_ms BIGINT, schema_json VARCHAR, view_id UBIGINT, epoch UBIGINT, checksum UBIGINT, fresh_at_ms BIGINT); \
             CREATE TABLE _meridian_raft(id INTEGER, applied_index UBIGINT); INSERT INTO _meridian_raft VALUES (0, 7); \
             CREATE TABLE t AS SELECT i AS n, 'v' || i AS s, [i, NULL] AS l, (i * 1.5)::DECIMAL(10,2) AS d FROM range(5000) r(i)",
        )
        .expect("setup");
        let sql = "SELECT n, s, l, d FROM t ORDER BY n";
        let r = run_as(&conn, sql, &QueryLimits::default(), Shape::ArrowStream);
        assert!(r.rows.is_empty(), "the rows are in the Arrow bytes");
        assert_eq!(r.raft_index, 7);
        let types: Vec<&str> = r.columns.iter().map(|c| c.r#type.as_str()).collect();
        assert_eq!(
            types,
            vec!["BIGINT", "VARCHAR", "BIGINT[]", "DECIMAL(10,2)"]
        );
        let bytes = r.arrow.expect("arrow bytes");
        let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)
            .expect("an IPC stream");
        let batches: Vec<_> = reader.collect::<Result<_, _>>().expect("batches");
        let total: usize = batches.iter().map(|b| b.num_rows()).sum();
        assert_eq!(total, 5000);
        let last = batches.last().expect("a batch");
        let at = last.num_rows() - 1;
        let n = last
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("int64");
        let s = last
            .column(1)
            .as_any()
            .downcast_ref::<StringArray>()
            .expect("utf8");
        let l = last
            .column(2)
            .as_any()
            .downcast_ref::<ListArray>()
            .expect("list");
        assert_eq!((n.value(at), s.value(at)), (4999, "v4999"));
        assert_eq!(l.value(at).len(), 2);
        assert!(l.value(at).is_null(1));
        // The file format reads back too.
        let file = run_as(&conn, sql, &QueryLimits::default(), Shape::ArrowFile)
            .arrow
            .expect("bytes");
        let reader = arrow::ipc::reader::FileReader::try_new(std::io::Cursor::new(file), None)
            .expect("an IPC file");
        assert_eq!(
            reader.map(|b| b.expect("batch").num_rows()).sum::<usize>(),
            5000
        );
        // And Parquet, read back by arrow-rs's reader.
        let pq = run_as(&conn, sql, &QueryLimits::default(), Shape::Parquet)
            .arrow
            .expect("bytes");
        assert_eq!(&pq[..4], b"PAR1");
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
            bytes::Bytes::from(pq),
        )
        .expect("a Parquet file")
        .build()
        .expect("reader");
        let batches: Vec<_> = reader.collect::<Result<_, _>>().expect("batches");
        assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 5000);
        let last = batches.last().expect("a batch");
        let n = last
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("int64");
        assert_eq!(n.value(last.num_rows() - 1), 4999);
        // The limits hold as for rows.
        let few = QueryLimits {
            rows_max: 100,
            ..QueryLimits::default()
        };
        assert!(matches!(
            run_shaped(
                &conn,
                sql,
                &few,
                &AtomicBool::new(false),
                Shape::ArrowStream
            ),
            Err(QueryError::TooManyRows(100))
        ));
        let small = QueryLimits {
            bytes_max: 10_000,
            ..QueryLimits::default()
        };
        assert!(matches!(
            run_shaped(
                &conn,
                sql,
                &small,
                &AtomicBool::new(false),
                Shape::ArrowStream
            ),
            Err(QueryError::TooManyBytes(10_000))
        ));
        // What a format cannot carry exactly is refused with the cast, never mangled or a
        // panic of the node.
        for (sql, shape, words) in [
            (
                "SELECT 340282366920938463463374607431768211455::UHUGEINT AS u",
                Shape::ArrowStream,
                "column 'u' is UHUGEINT",
            ),
            ("SELECT [1::UHUGEINT] AS u", Shape::ArrowStream, "cast it"),
            (
                "SELECT union_value(k := 1) AS u",
                Shape::Parquet,
                "UNION or an INTERVAL",
            ),
            (
                "SELECT [INTERVAL 1 DAY] AS i",
                Shape::Parquet,
                "UNION or an INTERVAL",
            ),
        ] {
            match run_shaped(
                &conn,
                sql,
                &QueryLimits::default(),
                &AtomicBool::new(false),
                shape,
            ) {
                Err(QueryError::Unreadable(m)) => assert!(m.contains(words), "{sql}: {m}"),
                other => panic!("{sql}: {:?}", other.map(|r| r.columns)),
            }
        }
        let typed = run_as(
            &conn,
            "SELECT 5::DECIMAL(38,0) AS d, 5::HUGEINT AS h",
            &QueryLimits::default(),
            Shape::ArrowStream,
        );
        let types: Vec<&str> = typed.columns.iter().map(|c| c.r#type.as_str()).collect();
        assert_eq!(types, vec!["DECIMAL(38,0)", "HUGEINT"]);
        // Only reads, as for rows.
        assert!(run_shaped(
            &conn,
            "DELETE FROM t",
            &QueryLimits::default(),
            &AtomicBool::new(false),
            Shape::ArrowStream
        )
        .is_err());
    }
}
