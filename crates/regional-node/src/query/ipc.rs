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
}

enum Writer {
    Stream(StreamWriter<Vec<u8>>),
    File(FileWriter<Vec<u8>>),
    Parquet(ArrowWriter<Vec<u8>>),
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
        }
    }

    fn finish(self) -> Result<Vec<u8>, QueryError> {
        match self {
            Writer::Stream(w) => w.into_inner().map_err(failed),
            Writer::File(w) => w.into_inner().map_err(failed),
            Writer::Parquet(w) => w.into_inner().map_err(parquet_failed),
        }
    }
}

fn parquet_failed(e: parquet::errors::ParquetError) -> QueryError {
    QueryError::Failed(format!("writing the Parquet result failed: {e}"))
}

fn failed(e: arrow::error::ArrowError) -> QueryError {
    QueryError::Failed(format!("writing the Arrow result failed: {e}"))
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
    let mut stmt = conn.prepare(sql)?;
    let batches = stmt.stream_arrow([])?;
    let schema = batches.get_schema();
    let columns = schema
        .fields()
        .iter()
        .map(|f| pb::ColumnInfo {
            name: f.name().clone(),
            r#type: type_name(f.data_type()),
        })
        .collect();
    let mut writer = match shape {
        Shape::ArrowFile => Writer::File(FileWriter::try_new(Vec::new(), &schema).map_err(failed)?),
        Shape::Parquet => Writer::Parquet(
            ArrowWriter::try_new(Vec::new(), schema.clone(), None).map_err(parquet_failed)?,
        ),
        _ => Writer::Stream(StreamWriter::try_new(Vec::new(), &schema).map_err(failed)?),
    };
    let mut rows = 0usize;
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
        if writer.write(&batch)? > limits.bytes_max {
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
