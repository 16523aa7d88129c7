use super::*;

fn locked_db() -> Connection {
    let conn =
        Connection::open_in_memory_with_flags(crate::replica::open_config().expect("config"))
            .expect("open");
    conn.execute_batch(
        "CREATE TABLE t (a BIGINT, b VARCHAR); INSERT INTO t VALUES (1, 'x'), (2, NULL);
         CREATE TABLE _meridian_applied (view VARCHAR, seq UBIGINT, produced_at_ms BIGINT, applied_at_ms BIGINT, view_id UBIGINT, epoch UBIGINT, fresh_at_ms BIGINT);
         CREATE TABLE _meridian_raft (id INTEGER PRIMARY KEY, applied_index UBIGINT NOT NULL);
         INSERT INTO _meridian_raft VALUES (0, 42);",
    )
    .expect("setup");
    conn
}

fn query(conn: &Connection, sql: &str) -> Result<QueryResult, QueryError> {
    run(conn, sql, &QueryLimits::default(), &AtomicBool::new(false))
}

fn count(conn: &Connection) -> i64 {
    conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .expect("count")
}

#[test]
fn writes_chains_and_side_effects_are_refused() {
    let conn = locked_db();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("f.csv");
    let file = file.display();
    for sql in [
        "DELETE FROM t",
        "  insert into t values (3, 'y')",
        "/* hi */ DROP TABLE t",
        "SELECT 1; COMMIT; DELETE FROM t; BEGIN; SELECT 1",
        "SELECT 1; DELETE FROM t; SELECT 1",
        "SELECT 1; DELETE FROM t",
        "COMMIT; DELETE FROM t",
        "SELECT 1; COPY (SELECT 'x') TO 'f.csv'; SELECT 1",
        &format!("COPY t TO '{file}'"),
        &format!("SELECT 1; COPY (SELECT 'x') TO '{file}'; SELECT 1"),
        &format!("ATTACH '{file}.db' AS other"),
        "INSTALL httpfs",
        "LOAD httpfs",
        "SET threads = 1",
        "SELECT 1; SET enable_external_access = true; SELECT 1",
        "PRAGMA enable_profiling",
        &format!("EXPORT DATABASE '{}'", dir.path().display()),
        "SELECT content FROM read_text('/etc/passwd')",
        "SELECT * FROM read_csv_auto('/etc/passwd')",
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM read_blob('/etc/hostname')",
        "SELECT * FROM glob('/etc/*')",
        "SELECT * FROM checkpoint()",
        "select * from FORCE_CHECKPOINT ( )",
        "CHECKPOINT",
        "EXPLAIN ANALYZE DELETE FROM t",
        "EXPLAIN DELETE FROM t",
        "EXPLAIN ANALYZE SELECT 1; DELETE FROM t",
        "SELECT * FROM _meridian_applied",
        "SELECT * FROM \"_MERIDIAN_APPLIED\"",
        "SELECT * FROM query('DELETE FROM t')",
        "SELECT * FROM query('SELECT 1; DELETE FROM t')",
        "/* /* */ EXPLAIN SELECT '*/ COMMIT; DELETE FROM t; SELECT 1 --'",
        "--\rCOMMIT; DELETE FROM t; --\nEXPLAIN SELECT 1",
        "/* /* */ SELECT '*/ COMMIT; DELETE FROM t; SELECT 1 --'",
        "EXPLAIN /* x */ SELECT 1; DELETE FROM t",
        "SELECT '\\'; DELETE FROM t; --'",
        "SELECT $$x$$; DELETE FROM t",
        "",
        "   ",
        "-- only a comment",
        ";",
    ] {
        let r = query(&conn, sql);
        assert!(r.is_err(), "{sql:?} must be refused");
        assert_eq!(count(&conn), 2, "{sql:?} changed the table");
    }
    assert!(!dir.path().join("f.csv").exists(), "a file was written");
    assert!(
        !std::path::Path::new("f.csv").exists(),
        "a file was written"
    );
    let setting: String = conn
        .query_row(
            "SELECT value FROM duckdb_settings() WHERE name = 'enable_external_access'",
            [],
            |r| r.get(0),
        )
        .expect("setting");
    assert_eq!(setting, "false");
    // The messages say what was wrong.
    let msg = query(&conn, "SELECT 1; DELETE FROM t")
        .err()
        .map(|e| e.to_string());
    assert!(msg.is_some_and(|m| m.contains("only one read-only query statement")));
    let msg = query(&conn, "SELECT * FROM _meridian_applied")
        .err()
        .map(|e| e.to_string());
    assert!(msg.is_some_and(|m| m.contains("'_meridian_applied' is internal")));
}

#[test]
fn every_type_reads_as_clickhouse_prints_it_never_as_debug_text() {
    let conn = locked_db();
    let r = query(
        &conn,
        "SELECT DATE '2024-01-01' AS d, 1.5::DECIMAL(10,2) AS x, (-0.05)::DECIMAL(4,3) AS y, \
         TIMESTAMP '2024-01-01 10:00:00.25' AS ts, TIME '12:30:05' AS tm, [1, 2] AS l, \
         ['a', 'b''c'] AS ls, {'k': 1, 's': 'v'} AS st, MAP {'a': 1} AS m, \
         170141183460469231731687303715884105727::UHUGEINT AS big, 'x'::BLOB AS b",
    )
    .expect("select");
    let got: Vec<Option<pb::value::Kind>> =
        r.rows[0].values.iter().map(|v| v.kind.clone()).collect();
    let text = |s: &str| Some(pb::value::Kind::Text(s.to_string()));
    assert_eq!(
        got,
        vec![
            text("2024-01-01"),
            text("1.50"),
            text("-0.050"),
            text("2024-01-01 10:00:00.250000"),
            text("12:30:05"),
            text("[1,2]"),
            text("['a','b\\'c']"),
            text("(1,'v')"),
            text("{'a':1}"),
            text("170141183460469231731687303715884105727"),
            text("x"),
        ]
    );
}

#[test]
fn a_38_digit_decimal_is_a_decimal_and_a_hugeint_is_not() {
    let conn = locked_db();
    let r = query(
        &conn,
        "SELECT 99999999999999999999999999999999999999::DECIMAL(38,0) AS d, 5::HUGEINT AS h, -12345678901234567890123456789.5::DECIMAL(38,1) AS e",
    )
    .expect("select");
    let types: Vec<&str> = r.columns.iter().map(|c| c.r#type.as_str()).collect();
    assert_eq!(types, vec!["DECIMAL(38,0)", "HUGEINT", "DECIMAL(38,1)"]);
    let lists = query(
        &conn,
        "SELECT ['a'] AS s, [[1]] AS n, [1.5::DECIMAL(4,2)] AS d",
    )
    .expect("select");
    let types: Vec<&str> = lists.columns.iter().map(|c| c.r#type.as_str()).collect();
    assert_eq!(types, vec!["VARCHAR[]", "INTEGER[][]", "DECIMAL(4,2)[]"]);
    let text = |s: &str| Some(pb::value::Kind::Text(s.to_string()));
    let got: Vec<Option<pb::value::Kind>> =
        r.rows[0].values.iter().map(|v| v.kind.clone()).collect();
    assert_eq!(
        got,
        vec![
            text("99999999999999999999999999999999999999"),
            Some(pb::value::Kind::Int(5)),
            text("-12345678901234567890123456789.5"),
        ]
    );
}

#[test]
fn reads_answer() {
    let conn = locked_db();
    let r = query(
        &conn,
        "-- comment\nSELECT a, b, sum(a) OVER () AS s FROM t ORDER BY a DESC",
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
    assert_eq!(
        r.raft_index, 42,
        "the Raft index read in the answer's transaction"
    );
    // DuckDB's NULL type reads as a null, in and out of lists and structs.
    let nulls = query(&conn, "SELECT NULL AS n, 1 AS one").expect("nulls");
    assert_eq!(nulls.rows[0].values[0].kind, None);
    assert_eq!(nulls.rows[0].values[1].kind, Some(pb::value::Kind::Int(1)));
    assert_eq!(nulls.columns[0].r#type, "NULL");
    // One the bindings cannot convert is refused with the column, not a crash.
    let Err(e) = query(&conn, "SELECT 1 AS one, [NULL] AS l") else {
        panic!("a list of NULL is refused");
    };
    assert!(
        matches!(&e, QueryError::Unreadable(m) if m.contains("column 'l'")),
        "{e}"
    );
    assert_eq!(count(&conn), 2, "the connection still serves");
    assert_eq!(r.rows[0].values[0].kind, Some(pb::value::Kind::Int(2)));
    assert_eq!(r.rows[0].values[1].kind, None);
    for sql in [
        "SELECT 1;",
        "WITH x AS (SELECT a FROM t) SELECT * FROM x",
        "FROM t",
        "VALUES (1), (2)",
        "SHOW TABLES",
        "DESCRIBE t",
        "SUMMARIZE t",
        "EXPLAIN SELECT * FROM t",
        "EXPLAIN ANALYZE SELECT * FROM t",
        "SELECT 'it''s; DELETE FROM t' AS s",
        "SELECT count(*) AS checkpoints FROM t",
    ] {
        if let Err(e) = query(&conn, sql) {
            panic!("{sql:?} must answer: {e}");
        }
    }
    assert_eq!(count(&conn), 2);
}

#[test]
fn limits_stop_large_and_long_reads() {
    let conn = locked_db();
    let limits = QueryLimits {
        timeout: Duration::from_millis(300),
        rows_max: 10,
        bytes_max: 1000,
    };
    let no = AtomicBool::new(false);
    assert!(matches!(
        run(&conn, "SELECT * FROM range(11)", &limits, &no),
        Err(QueryError::TooManyRows(10))
    ));
    assert!(matches!(
        run(&conn, "SELECT repeat('x', 2000)", &limits, &no),
        Err(QueryError::TooManyBytes(1000))
    ));
    // A runaway cross join is interrupted by the caller's watchdog at the deadline.
    let handle = conn.interrupt_handle();
    let done = std::sync::Arc::new(AtomicBool::new(false));
    let watchdog = {
        let done = done.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            while !done.load(Ordering::Relaxed) {
                handle.interrupt();
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let r = run(
        &conn,
        "SELECT count(*) FROM range(100000000) a, range(100000000) b",
        &limits,
        &no,
    );
    done.store(true, Ordering::Relaxed);
    let _ = watchdog.join();
    assert!(
        matches!(r, Err(QueryError::Timeout(_))),
        "got {:?}",
        r.err()
    );
    // The connection still answers afterwards. The watchdog's last interrupt may land
    // after the read returned and stop the next statement on this connection (the node
    // uses a connection per read, so only this test reuses one): one retry.
    let first = run(&conn, "SELECT 1", &limits, &no);
    assert!(
        first.is_ok() || run(&conn, "SELECT 1", &limits, &no).is_ok(),
        "{:?}",
        first.err()
    );
}

mod memory_tests {
    use super::*;

    /// Reads that need more memory than the replica's instance may use spill to disk (or fail
    /// alone); the writer's transactions, running at the same time, all commit.
    #[test]
    fn memory_hungry_reads_do_not_starve_the_writer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = crate::replica::open_config()
            .and_then(|c| c.max_memory("64MB"))
            .expect("config");
        let writer =
            Connection::open_with_flags(dir.path().join("r.duckdb"), config).expect("open");
        writer
            .execute_batch(
                "CREATE TABLE _meridian_applied (view VARCHAR, seq UBIGINT, produced_at_ms BIGINT, applied_at_ms BIGINT, view_id UBIGINT, epoch UBIGINT, fresh_at_ms BIGINT);
                 CREATE TABLE t (k BIGINT, v VARCHAR);",
            )
            .expect("setup");
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let reader = writer.try_clone().expect("reader");
                std::thread::spawn(move || {
                    let limits = QueryLimits {
                        timeout: Duration::from_secs(120),
                        rows_max: 10,
                        bytes_max: 1 << 20,
                    };
                    run(
                        &reader,
                        "SELECT count(*) FROM (SELECT i % 3000000 AS g, string_agg(i::VARCHAR, ',') AS s FROM range(6000000) t(i) GROUP BY g)",
                        &limits,
                        &AtomicBool::new(false),
                    )
                    .map(|r| r.rows.len())
                    .map_err(|e| e.to_string())
                })
            })
            .collect();
        for batch in 0..20 {
            writer
                .execute_batch(&format!(
                    "BEGIN; INSERT INTO t SELECT i + {}, repeat('x', 100) FROM range(10000) t(i); COMMIT;",
                    batch * 10_000
                ))
                .unwrap_or_else(|e| panic!("write {batch} failed while reads ran: {e}"));
        }
        for r in readers {
            let answer = r.join().expect("reader thread");
            eprintln!("hungry read: {answer:?}");
        }
        let n: i64 = writer
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .expect("count");
        assert_eq!(n, 200_000);
    }
}
