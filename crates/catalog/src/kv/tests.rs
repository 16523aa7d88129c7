use crate::*;

const ORDERS: &str = "CREATE EXTERNAL STREAM orders(id int64, country string, status string, amount int64) \
     SETTINGS type='kafka', brokers='127.0.0.1:9092', topic='orders', data_format='Debezium', primary_key='id'";
const TOTALS: &str = "CREATE STREAM totals(country string, orders int64, revenue int64) PRIMARY KEY country SETTINGS mode='versioned_kv'";
const WRITER: &str = "CREATE MATERIALIZED VIEW totals_mv INTO totals AS SELECT country, count() AS orders, sum(amount) AS revenue FROM orders GROUP BY country";
const READER: &str =
    "CREATE MATERIALIZED VIEW big AS SELECT country, revenue FROM totals WHERE orders > 10";

fn with(statements: &[&str]) -> Catalog {
    let mut c = Catalog::default();
    c.set_identity(0xabc);
    for (i, sql) in statements.iter().enumerate() {
        let change = c.plan(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
        c.apply(i as u64 + 1, sql, change);
    }
    c
}

#[test]
fn a_view_writes_into_a_stream_that_views_read_as_its_change_log() {
    let c = with(&[ORDERS, TOTALS, WRITER, READER]);
    let Some(Object::KvStream(k)) = c.get("totals").map(|e| &e.object) else {
        panic!("totals is a stream views write INTO");
    };
    assert_eq!(
        (k.mode, k.primary_key.as_slice()),
        (KvMode::VersionedKv, &[0][..])
    );
    assert_eq!(
        c.writer_of("TOTALS").map(|w| w.name.as_str()),
        Some("totals_mv")
    );
    // Read as the writer's change log, under the stream's name.
    let s = c.source("totals").expect("a writer");
    assert_eq!(s.name, "totals");
    assert_eq!(s.topic, "meridian.changes.abc.3.totals_mv");
    assert_eq!(s.format, DataFormat::ChangeLog);
    assert_eq!(s.brokers, "127.0.0.1:9092");
    assert_eq!(s.primary_key, vec![0]);
    assert_eq!(
        c.source("totals_mv").map(|w| w.topic),
        Some(s.topic.clone())
    );
    // The writer's sink runs: a view reads it through the stream.
    assert!(c.is_read_by_a_view("totals_mv"));
    assert_eq!(
        c.reader_of("totals_mv").map(|r| r.name.as_str()),
        Some("big")
    );
    let Change::Explain(plan) = c.plan("EXPLAIN MATERIALIZED VIEW big").expect("explain") else {
        panic!("not a plan");
    };
    assert!(plan.starts_with("scan: stream totals (the change log of view totals_mv writing INTO it, topic meridian.changes.abc.3.totals_mv"), "{plan}");
    let Change::Explain(plan) = c
        .plan("EXPLAIN MATERIALIZED VIEW totals_mv")
        .expect("explain")
    else {
        panic!("not a plan");
    };
    assert!(
        plan.ends_with("into: stream totals (its change log is read by the views over it)"),
        "{plan}"
    );
    // Reloads alike; changelog_kv and a key list in parentheses are accepted too.
    let stored: Vec<(u64, String)> = c.entries().iter().map(|e| (e.id, e.sql.clone())).collect();
    assert_eq!(
        Catalog::load(stored).expect("reloads").entries(),
        c.entries()
    );
    let c2 = with(&["CREATE STREAM IF NOT EXISTS kv2(a string, b int64, n int64) PRIMARY KEY (a, b) SETTINGS mode='changelog_kv'"]);
    let Some(Object::KvStream(k)) = c2.get("kv2").map(|e| &e.object) else {
        panic!("kv2");
    };
    assert_eq!(
        (k.mode, k.primary_key.as_slice()),
        (KvMode::ChangelogKv, &[0, 1][..])
    );
}

#[test]
fn into_and_streams_outside_the_supported_set_are_refused_with_the_reason() {
    let c = with(&[ORDERS, TOTALS, WRITER, READER]);
    for (sql, message, at) in [
        // The stream.
        ("CREATE STREAM s(a string)", "needs SETTINGS mode='versioned_kv'", "s("),
        ("CREATE STREAM s(a string) SETTINGS mode='append'", "mode 'append' is not supported", "'append'"),
        ("CREATE STREAM s(a string) SETTINGS mode='versioned_kv'", "needs a PRIMARY KEY", "s("),
        ("CREATE STREAM s(a string) PRIMARY KEY b SETTINGS mode='versioned_kv'", "primary key column 'b' is not a column", "b SET"),
        ("CREATE STREAM s(a string) PRIMARY KEY (a, a) SETTINGS mode='versioned_kv'", "named twice", "a)"),
        ("CREATE STREAM s(a string) PRIMARY KEY a SETTINGS mode='versioned_kv', brokers='b:1'", "unsupported setting 'brokers'", "brokers"),
        ("CREATE EXTERNAL STREAM s(a string) PRIMARY KEY a SETTINGS type='kafka'", "names its primary key in SETTINGS primary_key", "PRIMARY"),
        // INTO.
        ("CREATE MATERIALIZED VIEW w INTO nowhere AS SELECT country, count() AS orders, sum(amount) AS revenue FROM orders GROUP BY country", "'nowhere' does not exist", "nowhere"),
        ("CREATE MATERIALIZED VIEW w INTO orders AS SELECT id FROM orders", "'orders' is a stream: a view writes INTO a stream created with CREATE STREAM", "orders AS"),
        ("CREATE MATERIALIZED VIEW w INTO totals AS SELECT country, count() AS orders, sum(amount) AS revenue FROM orders GROUP BY country", "stream 'totals' is written by view 'totals_mv'; a stream takes INTO from one view", "totals AS"),
        ("CREATE MATERIALIZED VIEW w INTO totals AS SELECT * FROM totals", "stream 'totals' is written by view 'totals_mv'", "totals AS"),
        ("CREATE MATERIALIZED VIEW big2 AS SELECT t.country FROM orders AS o JOIN totals AS t ON o.country = t.country", "written by a view (INTO): a join over it is not supported yet", "totals AS t"),
        // The stream's columns, types and key.
        ("DROP STREAM totals", "stream 'totals' is read by view 'big'; drop the view first", "totals"),
        ("DROP VIEW totals_mv", "view 'totals_mv' is read by view 'big'; drop the view first", "totals_mv"),
        ("CREATE OR REPLACE MATERIALIZED VIEW totals_mv INTO totals AS SELECT country, count() AS orders, sum(amount) AS revenue FROM orders GROUP BY country", "view 'totals_mv' is read by view 'big'", "totals_mv"),
    ] {
        let err = c.plan(sql).expect_err(sql);
        assert!(err.message.contains(message), "{sql}: {}", err.message);
        let col = sql.find(at).expect("position") + 1;
        assert_eq!((err.pos.line, err.pos.column), (1, col), "{sql}");
    }
    let c = with(&[ORDERS, TOTALS]);
    for (sql, message) in [
        ("CREATE MATERIALIZED VIEW w INTO totals AS SELECT country, sum(amount) AS revenue, count() AS orders FROM orders GROUP BY country", "view 'w' has columns (country, revenue, orders); stream 'totals' has (country, orders, revenue)"),
        ("CREATE MATERIALIZED VIEW w INTO totals AS SELECT country, count() AS orders, max(status) AS revenue FROM orders GROUP BY country", "column 'revenue' is string in view 'w' but int64 ('int64') in stream 'totals'"),
        ("CREATE MATERIALIZED VIEW w INTO totals AS SELECT country, count() AS orders FROM orders GROUP BY country", "has columns (country, orders)"),
        ("CREATE MATERIALIZED VIEW r AS SELECT country FROM totals", "stream 'totals' has no view writing INTO it yet; create that view first"),
    ] {
        let err = c.plan(sql).expect_err(sql);
        assert!(err.message.contains(message), "{sql}: {}", err.message);
    }
    // A writer replaced by a view over the stream it writes would read itself.
    let c = with(&[ORDERS, TOTALS, WRITER]);
    for sql in [
        "CREATE OR REPLACE MATERIALIZED VIEW totals_mv AS SELECT country, orders, revenue FROM totals",
        "CREATE OR REPLACE MATERIALIZED VIEW totals_mv INTO totals AS SELECT country, orders, revenue FROM totals",
    ] {
        let err = c.plan(sql).expect_err(sql);
        assert!(err.message.contains("a view cannot read the stream it writes ('totals' is written INTO by 'totals_mv', the view being replaced)"), "{}", err.message);
        assert_eq!(err.pos.column, sql.rfind("totals").expect("from") + 1);
    }
    // A writer whose key differs from the stream's.
    let c = with(&[ORDERS, "CREATE STREAM per_order(id int64, country string) PRIMARY KEY country SETTINGS mode='versioned_kv'"]);
    let err = c
        .plan("CREATE MATERIALIZED VIEW w INTO per_order AS SELECT id, country FROM orders")
        .expect_err("key");
    assert!(
        err.message
            .contains("view 'w' is keyed by (id), stream 'per_order' by (country)"),
        "{}",
        err.message
    );

    // Dropped writer first is refused while read; reader, then writer, then stream go.
    let mut c = with(&[ORDERS, TOTALS, WRITER, READER]);
    let err = c.plan("DROP STREAM totals").expect_err("read");
    assert!(
        err.message.contains("read by view 'big'"),
        "{}",
        err.message
    );
    for sql in ["DROP VIEW big", "DROP STREAM totals"] {
        if sql == "DROP STREAM totals" {
            let err = c.plan(sql).expect_err("written");
            assert!(
                err.message.contains(
                    "stream 'totals' is written by view 'totals_mv' (INTO); drop the view first"
                ),
                "{}",
                err.message
            );
            let change = c.plan("DROP VIEW totals_mv").expect("the writer goes");
            c.apply(0, "DROP VIEW totals_mv", change);
        }
        let change = c.plan(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
        c.apply(0, sql, change);
    }
    assert_eq!(c.entries().len(), 1);
}
