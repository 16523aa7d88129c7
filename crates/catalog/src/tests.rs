use crate::*;

const ORDERS: &str = "CREATE EXTERNAL STREAM orders(id int64, customer_id int64, region string, status string, amount int64, quantity int32) \
     SETTINGS type='kafka', brokers='127.0.0.1:9092', topic='orders', data_format='Debezium', primary_key='id'";

fn catalog_with_orders() -> Catalog {
    catalog_over(ORDERS)
}

/// A catalog holding the one stream `stream_sql` creates.
fn catalog_over(stream_sql: &str) -> Catalog {
    let mut c = Catalog::default();
    let change = c.plan(stream_sql).expect("the stream is valid");
    c.apply(1, stream_sql, change);
    c
}

/// The view `sql` would create in `c`.
fn planned_view(c: &Catalog, sql: &str) -> crate::ViewDef {
    match c.plan(sql) {
        Ok(Change::Create(Object::View(v))) => v,
        other => panic!("{sql}: {other:?}"),
    }
}

#[test]
fn design_notes_statement_is_accepted_as_written() {
    let sql = "CREATE EXTERNAL STREAM frontend_events(raw string)\nSETTINGS type='kafka',\n         brokers='localhost:9092',\n         topic='my_topic';";
    let Change::Create(Object::Stream(s)) = Catalog::default().plan(sql).expect("accepted") else {
        panic!("not a stream")
    };
    assert_eq!(s.name, "frontend_events");
    assert_eq!(s.topic, "my_topic");
    assert_eq!(s.brokers, "localhost:9092");
    assert_eq!(s.format, DataFormat::Raw);
    assert_eq!(s.columns[0].ty, ColumnType::String);
}

#[test]
fn view_resolves_keys_and_aggregates() {
    let c = catalog_with_orders();
    let sql = "CREATE MATERIALIZED VIEW revenue AS SELECT region, status, count() AS orders, sum(amount) AS revenue FROM orders WHERE quantity > 0 GROUP BY region, status SETTINGS regions='eu-west,us-east'";
    let Change::Create(Object::View(v)) = c.plan(sql).expect("valid view") else {
        panic!("not a view")
    };
    assert_eq!(v.key_outputs, vec![0, 1]);
    assert_eq!(v.plan.kind, PlanKind::Aggregate);
    assert_eq!(v.plan.n_keys, 2);
    assert_eq!(v.plan.filter.as_deref(), Some("(\"quantity\" > 0)"));
    assert_eq!(v.plan.project[0].sql, "\"region\"");
    assert_eq!(v.plan.aggregates[0].func, AggFunc::Count);
    assert_eq!(v.plan.aggregates[1].func, AggFunc::Sum);
    assert_eq!(
        v.plan.finish,
        Finish::Direct(vec![Ref::Key(0), Ref::Key(1), Ref::Agg(0), Ref::Agg(1)])
    );
    assert_eq!(v.outputs[3].ty, ColumnType::Int64);
    assert_eq!(
        v.regions,
        Some(vec!["eu-west".to_string(), "us-east".to_string()])
    );
    assert!(v.assigned_to("eu-west") && !v.assigned_to("ap-south"));
}

/// Views written as Proton users write them: expressions, functions, casts, JSON paths, HAVING,
/// projections; each is accepted and typed.
#[test]
fn proton_views_are_accepted_and_typed() {
    let mut c = catalog_with_orders();
    let raw =
        "CREATE EXTERNAL STREAM events(raw string) SETTINGS type='kafka', brokers='b:1', topic='e'";
    let ch = c.plan(raw).expect("raw stream");
    c.apply(2, raw, ch);
    let cases: &[(&str, &[ColumnType])] = &[
        ("CREATE MATERIALIZED VIEW v AS SELECT lower(region) AS r, count() AS n, sum(amount * quantity) AS total, avg(amount) AS mean, max(amount) - min(amount) AS spread FROM orders WHERE status IN ('paid', 'shipped') AND amount BETWEEN 1 AND 1000 GROUP BY r HAVING count() > 2",
            &[ColumnType::String, ColumnType::Int64, ColumnType::Int64, ColumnType::Float64, ColumnType::Int64]),
        ("CREATE MATERIALIZED VIEW v AS SELECT raw:payload.after.region AS region, count(DISTINCT raw:payload.after.id::int) AS customers FROM events GROUP BY region",
            &[ColumnType::String, ColumnType::Int64]),
        ("CREATE MATERIALIZED VIEW v AS SELECT id, upper(status) AS s, if(amount > 100, 'big', 'small') AS size, amount * 1.5 AS scaled FROM orders WHERE status != 'cancelled'",
            &[ColumnType::Int64, ColumnType::String, ColumnType::String, ColumnType::Float64]),
        ("CREATE MATERIALIZED VIEW v AS SELECT * FROM orders WHERE amount > 0",
            &[ColumnType::Int64, ColumnType::Int64, ColumnType::String, ColumnType::String, ColumnType::Int64, ColumnType::Int64]),
        ("CREATE MATERIALIZED VIEW v AS SELECT region, count_if(amount > 10) AS big, uniq_exact(customer_id) AS c, multi_if(count() > 10, 'many', count() > 1, 'some', 'one') AS howmany FROM orders GROUP BY 1",
            &[ColumnType::String, ColumnType::Int64, ColumnType::Int64, ColumnType::String]),
        ("CREATE MATERIALIZED VIEW v AS SELECT count() AS n, coalesce(sum(amount), 0) AS total FROM orders",
            &[ColumnType::Int64, ColumnType::Int64]),
    ];
    for (sql, types) in cases {
        let v = match c.plan(sql) {
            Ok(Change::Create(Object::View(v))) => v,
            other => panic!("{sql}: {other:?}"),
        };
        let got: Vec<ColumnType> = v.outputs.iter().map(|o| o.ty).collect();
        assert_eq!(&got, types, "{sql}");
    }
}

#[test]
fn time_columns_and_functions_are_typed() {
    let mut c = Catalog::default();
    let ev = "CREATE EXTERNAL STREAM ev(id int64, at datetime64(3), day date, raw string) SETTINGS type='kafka', brokers='b:1', topic='e', data_format='JSONEachRow'";
    let ch = c.plan(ev).expect("stream");
    c.apply(1, ev, ch);
    let windows = "CREATE MATERIALIZED VIEW w AS SELECT window_start, window_end, count() AS n, max(at) AS last FROM tumble(ev, at, 5m) WHERE at < window_end GROUP BY window_start, window_end";
    let Ok(Change::Create(Object::View(w))) = c.plan(windows) else {
        panic!("window view")
    };
    assert_eq!(w.outputs[0].ty, ColumnType::Timestamp);
    assert!(
        w.plan.project[0]
            .sql
            .contains("time_bucket(INTERVAL '5 minute'"),
        "{:?}",
        w.plan.project[0]
    );
    let sql = "CREATE MATERIALIZED VIEW v AS SELECT to_start_of_minute(at) AS minute, to_date(at) AS d, count() AS n, max(at) AS last, min(day) AS first_day, to_start_of_hour(to_datetime(raw:ts)) AS h FROM ev GROUP BY minute, d, h";
    let Ok(Change::Create(Object::View(v))) = c.plan(sql) else {
        panic!("view")
    };
    let got: Vec<ColumnType> = v.outputs.iter().map(|o| o.ty).collect();
    assert_eq!(
        got,
        vec![
            ColumnType::Timestamp,
            ColumnType::Date,
            ColumnType::Int64,
            ColumnType::Timestamp,
            ColumnType::Date,
            ColumnType::Timestamp
        ]
    );
}

#[test]
fn hop_windows_are_planned_and_their_limits_refused_with_positions() {
    let mut c = Catalog::default();
    let ev = "CREATE EXTERNAL STREAM ev(id int64, at datetime64(3), v int64) SETTINGS type='kafka', brokers='b:1', topic='e', data_format='Debezium', primary_key='id'";
    let ch = c.plan(ev).expect("stream");
    c.apply(1, ev, ch);
    let sql = "CREATE MATERIALIZED VIEW h AS SELECT window_end AS e, window_start, count() AS n, sum(v) AS s FROM hop(ev, at, 1m, 5m) GROUP BY window_start, e SETTINGS allowed_lateness='30s'";
    let Ok(Change::Create(Object::View(h))) = c.plan(sql) else {
        panic!("hop view: {:?}", c.plan(sql).err())
    };
    let hop = h.plan.hop.clone().expect("hop plan");
    assert_eq!((hop.slide_us, hop.size_us), (60_000_000, 300_000_000));
    assert_eq!(hop.shifted, vec![(0, false), (1, true)]);
    let w = h.plan.window.clone().expect("closing windows");
    assert_eq!(
        (w.start_key, w.time_slot, w.size_us),
        (0, hop.time_slot, 300_000_000)
    );
    assert_eq!(h.plan.project[hop.time_slot].ty, ColumnType::Timestamp);
    let starts: Vec<(i64, i64)> = hop.windows(600_000_000, 630_000_000).collect();
    assert_eq!(starts.len(), 5, "a row is in size / slide windows");
    assert_eq!(starts[0], (600_000_000, 900_000_000));
    assert_eq!(starts[4], (360_000_000, 660_000_000));
    c.apply(2, sql, Change::Create(Object::View(h)));
    let Ok(Change::Explain(text)) = c.plan("EXPLAIN MATERIALIZED VIEW h") else {
        panic!("explain")
    };
    assert!(
        text.contains("hop: each row is in the 5 windows of 300 s starting every 60 s"),
        "{text}"
    );

    let refused: &[(&str, &str, &str)] = &[
        ("CREATE MATERIALIZED VIEW x AS SELECT window_start, count() FROM hop(ev, at, 2m, 5m) GROUP BY window_start", "a whole number of slides", "5m)"),
        ("CREATE MATERIALIZED VIEW x AS SELECT window_start, count() FROM hop(ev, at, 1s, 2h) GROUP BY window_start", "each row 7200 times", "2h)"),
        ("CREATE MATERIALIZED VIEW x AS SELECT window_start, count() FROM hop(ev, at, 1m) GROUP BY window_start", "hop(stream, time_column, slide, size)", "hop("),
        ("CREATE MATERIALIZED VIEW x AS SELECT window_start, count() FROM hop(ev, v, 1m, 5m) GROUP BY window_start", "needs a date or datetime column", "v, 1m"),
        ("CREATE MATERIALIZED VIEW x AS SELECT window_start, count() FROM hop(ev, at, INTERVAL 1 MONTH, INTERVAL 2 MONTH) GROUP BY window_start", "fixed, positive slide", "1 MONTH"),
        ("CREATE MATERIALIZED VIEW x AS SELECT to_hour(window_start) AS hr, count() FROM hop(ev, at, 1m, 5m) GROUP BY hr", "not by an expression over them", "hr"),
        ("CREATE MATERIALIZED VIEW x AS SELECT v, count() FROM hop(ev, at, 1m, 5m) GROUP BY v", "must GROUP BY window_start", "SELECT"),
        ("CREATE MATERIALIZED VIEW x AS SELECT window_start, count() FROM hop(ev, at, 1m, 5m) WHERE at < window_end GROUP BY window_start", "not used in WHERE", "SELECT"),
        ("CREATE MATERIALIZED VIEW x AS SELECT window_start, max(window_end) FROM hop(ev, at, 1m, 5m) GROUP BY window_start", "inside an aggregate", "SELECT"),
        ("CREATE MATERIALIZED VIEW x AS SELECT id, window_start FROM hop(ev, at, 1m, 5m)", "a hop() view aggregates", "SELECT"),
    ];
    for (sql, words, at) in refused {
        let e = match c.plan(sql) {
            Err(e) => e,
            Ok(_) => panic!("accepted: {sql}"),
        };
        let msg = e.to_string();
        assert!(msg.contains(words), "{sql}: {msg}");
        let want = sql.rfind(at).expect("position text") + 1;
        assert!(
            msg.contains(&format!("column {want}")),
            "{sql}: wanted column {want}: {msg}"
        );
    }
}

#[test]
fn a_subquery_or_with_query_that_computes_columns_is_read_through() {
    let mut c = catalog_with_orders();
    let same = [
        (
            "CREATE MATERIALIZED VIEW v AS SELECT r, count() AS n, sum(a) AS s FROM (SELECT lower(region) AS r, amount * 2 AS a FROM orders WHERE status = 'paid') WHERE a > 10 GROUP BY r",
            "CREATE MATERIALIZED VIEW v AS SELECT lower(region) AS r, count() AS n, sum(amount * 2) AS s FROM orders WHERE (status = 'paid') AND ((amount * 2) > 10) GROUP BY r",
        ),
        (
            "CREATE MATERIALIZED VIEW v AS WITH o AS (SELECT *, amount + 1 AS a1 FROM orders) SELECT id, o.a1 AS a1, region FROM o WHERE customer_id > 3",
            "CREATE MATERIALIZED VIEW v AS SELECT id, (amount + 1) AS a1, region FROM orders WHERE customer_id > 3",
        ),
        (
            "CREATE MATERIALIZED VIEW v AS SELECT * FROM (SELECT id, upper(region) AS big FROM orders)",
            "CREATE MATERIALIZED VIEW v AS SELECT id, upper(region) AS big FROM orders",
        ),
    ];
    for (through, direct) in same {
        let (Ok(Change::Create(Object::View(a))), Ok(Change::Create(Object::View(b)))) =
            (c.plan(through), c.plan(direct))
        else {
            panic!("{through}: {:?}", c.plan(through).err());
        };
        assert_eq!(a.outputs, b.outputs, "{through}");
        let sqls = |v: &ViewDef| -> Vec<String> {
            v.plan
                .project
                .iter()
                .map(|s| s.sql.replace(['(', ')'], ""))
                .collect()
        };
        assert_eq!(sqls(&a), sqls(&b), "{through}");
        assert_eq!(
            a.plan.filter.as_ref().map(|f| f.replace(['(', ')'], "")),
            b.plan.filter.as_ref().map(|f| f.replace(['(', ')'], "")),
            "{through}"
        );
    }
    let refused: &[(&str, &str, &str)] = &[
        ("CREATE MATERIALIZED VIEW x AS SELECT r, count() FROM (SELECT region AS r, count() AS n FROM orders GROUP BY region) GROUP BY r", "a subquery that groups", "SELECT region"),
        ("CREATE MATERIALIZED VIEW x AS SELECT n FROM (SELECT id, count() AS n FROM orders)", "a subquery that aggregates", "count() AS n"),
        ("CREATE MATERIALIZED VIEW x AS SELECT id, nope FROM (SELECT id, region FROM orders)", "unknown column 'nope' in the subquery (its columns: id, region)", "nope"),
        ("CREATE MATERIALIZED VIEW x AS SELECT id FROM (SELECT id FROM (SELECT id FROM orders))", "nest one level", "SELECT id FROM orders"),
        ("CREATE MATERIALIZED VIEW x AS WITH a AS (SELECT id FROM orders), b AS (SELECT id FROM orders) SELECT id FROM a", "one WITH query", "WITH"),
        ("CREATE MATERIALIZED VIEW x AS WITH a AS (SELECT id FROM orders) SELECT count() FROM tumble(orders, id, 1m)", "must be what the view reads FROM", "WITH"),
        ("CREATE MATERIALIZED VIEW x AS WITH a AS (SELECT id FROM orders) SELECT id FROM b", "not the WITH query 'a'", "b"),
        ("CREATE MATERIALIZED VIEW x AS SELECT id FROM (SELECT id FROM orders LIMIT 3)", "ORDER BY and LIMIT", "SELECT id FROM orders"),
        ("CREATE MATERIALIZED VIEW x AS SELECT region, count() AS n FROM (SELECT DISTINCT region FROM orders) GROUP BY region", "DISTINCT in a subquery", "SELECT DISTINCT"),
        ("CREATE MATERIALIZED VIEW x AS SELECT sum(amount) AS s FROM (SELECT * REPLACE (amount * 100 AS amount) FROM orders)", "REPLACE, RENAME or ILIKE is not supported", "* REPLACE"),
        ("CREATE MATERIALIZED VIEW x AS SELECT upper(r) AS r, count() AS n FROM (SELECT region AS r FROM orders) GROUP BY r", "both a column of the subquery and the alias", "r) AS r"),
        ("CREATE MATERIALIZED VIEW x AS SELECT id, orders.amount FROM (SELECT id, amount * 100 AS amount FROM orders) AS d", "names the stream inside the subquery", "orders.amount"),
    ];
    for (sql, words, at) in refused {
        let e = match c.plan(sql) {
            Err(e) => e,
            Ok(_) => panic!("accepted: {sql}"),
        };
        let msg = e.to_string();
        assert!(msg.contains(words), "{sql}: {msg}");
        let want = sql.rfind(at).expect("position text") + 1;
        assert!(
            msg.contains(&format!("column {want}")),
            "{sql}: wanted column {want}: {msg}"
        );
    }
    // The planned view over a subquery runs like any other.
    let sql = same[0].0;
    let ch = c.plan(sql).expect("plan");
    c.apply(2, sql, ch);
    let Ok(Change::Explain(text)) = c.plan("EXPLAIN MATERIALIZED VIEW v") else {
        panic!("explain")
    };
    assert!(text.contains("scan: stream orders"), "{text}");
}

#[test]
fn explain_prints_the_plan() {
    let mut c = catalog_with_orders();
    let sql = "CREATE MATERIALIZED VIEW big AS SELECT region, count() AS n, max(amount) AS top FROM orders WHERE amount > 10 GROUP BY region HAVING n > 1";
    let ch = c.plan(sql).expect("view");
    c.apply(2, sql, ch);
    let Ok(Change::Explain(text)) = c.plan("EXPLAIN MATERIALIZED VIEW big") else {
        panic!("explain")
    };
    for needle in [
        "scan: stream orders",
        "filter: (\"amount\" > 10)",
        "aggregate: by (k0) compute a0 = count()",
        "having: (a0 > 1)",
        "output: region string, n int64, top int64",
    ] {
        assert!(text.contains(needle), "{needle} not in\n{text}");
    }
}

/// Each refused statement and the words and column its error must carry.
#[test]
fn refused_statements_name_the_problem_and_position() {
    let cases: &[(&str, &str, usize)] = &[
        ("CREATE MATERIALIZED VIEW v AS SELECT region, count() FROM orders GROUP BY regoin", "unknown column 'regoin'", 75),
        ("CREATE MATERIALIZED VIEW v AS SELECT status, sum(status) FROM orders GROUP BY status", "needs a number", 46),
        ("CREATE MATERIALIZED VIEW v AS SELECT region, count() FROM orders WHERE amount = 'x' GROUP BY region", "Conversion Error", 72),
        ("CREATE MATERIALIZED VIEW v AS SELECT region, count() FROM nope GROUP BY region", "stream 'nope' does not exist", 59),
        ("CREATE MATERIALIZED VIEW v AS SELECT region, top_k(amount) FROM orders GROUP BY region", "top_k(x, k) takes the value and how many to keep", 46),
        ("CREATE MATERIALIZED VIEW v AS SELECT region, max_k(amount, 5000) AS m FROM orders GROUP BY region", "an integer from 1 to 1000", 60),
        ("CREATE MATERIALIZED VIEW v AS SELECT region, median(amount) FROM orders GROUP BY region", "aggregate 'median' is not supported yet", 46),
        ("CREATE MATERIALIZED VIEW v AS SELECT status, count() FROM orders GROUP BY region", "must appear in GROUP BY", 38),
        ("CREATE MATERIALIZED VIEW v AS SELEKT 1", "expected SELECT", 31),
        ("CREATE MATERIALIZED VIEW v AS SELECT region, count() FROM orders WHERE now() IS NOT NULL GROUP BY region", "now() is not deterministic", 72),
        ("CREATE MATERIALIZED VIEW v AS SELECT region, count() FROM hop(orders, id, 1m, 5m) GROUP BY region", "hop() needs a date or datetime column", 71),
        ("CREATE MATERIALIZED VIEW v AS SELECT region, count() FROM session(orders, id, 1m) GROUP BY region", "session() windows are not supported yet", 59),
        ("CREATE MATERIALIZED VIEW v AS SELECT region, count() FROM tumble(orders, 1m) GROUP BY region", "the time column is required", 59),
        ("CREATE MATERIALIZED VIEW v AS SELECT region, count() FROM tumble(orders, amount, 1m) GROUP BY region", "needs a date or datetime column", 74),
        ("CREATE MATERIALIZED VIEW v AS SELECT window_start, count() FROM tumble(orders, amount, 1m) GROUP BY window_start", "needs a date or datetime column", 80),
        ("CREATE MATERIALIZED VIEW v AS SELECT window_start, count() FROM orders GROUP BY window_start", "unknown column 'window_start'", 38),
        ("CREATE MATERIALIZED VIEW v AS SELECT o.region, count() FROM orders o JOIN customers c ON o.customer_id = c.id GROUP BY o.region", "stream 'customers' does not exist", 75),
        ("CREATE MATERIALIZED VIEW v AS SELECT region, count() FROM orders GROUP BY region EMIT PERIODIC 0s", "write a period from 10ms to 1h", 82),
        ("CREATE MATERIALIZED VIEW v AS SELECT region, count() FROM orders GROUP BY region EMIT LAST 1h", "EMIT clauses other than EMIT AFTER WATERMARK", 82),
        ("CREATE MATERIALIZED VIEW v AS SELECT region, lower(amount) AS l FROM orders", "lower", 46),
        ("CREATE MATERIALIZED VIEW v AS SELECT id, region FROM orders ORDER BY id", "ORDER BY is not supported", 70),
        ("CREATE MATERIALIZED VIEW v AS SELECT region, count() FROM orders WHERE sum(amount) > 1 GROUP BY region", "aggregates are not allowed in WHERE", 72),
        ("CREATE MATERIALIZED VIEW v AS SELECT region, frobnicate(amount) AS f FROM orders", "unsupported function 'frobnicate'", 46),
        ("CREATE MATERIALIZED VIEW v AS SELECT region FROM orders", "keyed by the stream's primary key: select column 'id'", 31),
        ("CREATE MATERIALIZED VIEW v AS SELECT region, count() FROM orders GROUP BY region SETTINGS colour='red'", "unknown view setting 'colour'", 91),
        ("CREATE MATERIALIZED VIEW v AS SELECT region AS status, count() AS n FROM orders GROUP BY region HAVING status = 'x'", "both a column of stream 'orders' and the alias", 104),
        ("CREATE MATERIALIZED VIEW v AS SELECT region, count() FROM orders GROUP BY region SETTINGS allowed_lateness='5s'", "allowed_lateness needs FROM tumble", 108),
        ("CREATE MATERIALIZED VIEW v AS SELECT region, count() FROM orders GROUP BY region SETTINGS allowed_lateness='soon'", "write a duration such as '30s'", 108),
        ("CREATE MATERIALIZED VIEW v AS SELECT region, sum(amount::decimal(40,2)) AS s FROM orders GROUP BY region", "unsupported type 'DECIMAL(40,2)' in a cast", 50),
        ("CREATE EXTERNAL STREAM s(a int64) SETTINGS type='kafka', brokers='b:1', topic='t', colour='red'", "unknown stream setting 'colour'", 84),
        ("CREATE EXTERNAL STREAM s(a decimal(39, 2)) SETTINGS type='kafka', brokers='b:1', topic='t'", "unsupported type", 28),
        ("CREATE EXTERNAL STREAM s(a decimal(4, 5)) SETTINGS type='kafka', brokers='b:1', topic='t'", "unsupported type", 28),
        ("CREATE EXTERNAL STREAM s(a int64) SETTINGS type='kafka', brokers='<bootstrap-servers>', topic='t'", "not a host:port list", 66),
        ("CREATE EXTERNAL STREAM orders(a int64) SETTINGS type='kafka', brokers='b:1', topic='t'", "already exists", 24),
        ("DROP STREAM orders", "read by view", 13),
        ("SELECT 1", "expected CREATE", 1),
    ];
    let mut c = catalog_with_orders();
    let view =
        "CREATE MATERIALIZED VIEW by_region AS SELECT region, count() FROM orders GROUP BY region";
    let change = c.plan(view).expect("valid view");
    c.apply(2, view, change);
    let mut wrong = Vec::new();
    for (sql, words, column) in cases {
        match c.plan(sql) {
            Ok(ch) => wrong.push(format!("{sql}: accepted as {ch:?}")),
            Err(err) if !err.message.contains(words) || err.pos.column != *column => {
                wrong.push(format!("{sql}: {err}; want '{words}' at column {column}"))
            }
            Err(_) => {}
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn catalog_reloads_from_stored_statements() {
    let mut c = catalog_with_orders();
    let view = "CREATE MATERIALIZED VIEW by_region AS SELECT region, count() AS n FROM orders GROUP BY region";
    let change = c.plan(view).expect("valid");
    c.apply(7, view, change);
    let reloaded =
        Catalog::load(vec![(7, view.to_string()), (1, ORDERS.to_string())]).expect("reloads");
    assert_eq!(reloaded.entries(), c.entries());
    assert_eq!(reloaded.next_id(), 8);
}

#[test]
fn names_are_case_insensitive_and_reserved_prefixes_refused() {
    let mut c = catalog_with_orders();
    let view = "CREATE MATERIALIZED VIEW Revenue AS SELECT region, count() AS n FROM Orders GROUP BY Region";
    let change = c
        .plan(view)
        .expect("columns and streams resolve in any case");
    c.apply(2, view, change);
    for (sql, needle) in [
        (
            "CREATE MATERIALIZED VIEW revenue AS SELECT region, count() AS n FROM orders GROUP BY region",
            "already exists as 'Revenue'",
        ),
        (
            "CREATE EXTERNAL STREAM ORDERS(id int64) SETTINGS type='kafka', brokers='b:1', topic='t'",
            "already exists as 'orders'",
        ),
        (
            "CREATE EXTERNAL STREAM s(id int64, ID string) SETTINGS type='kafka', brokers='b:1', topic='t'",
            "differs only by case",
        ),
        (
            "CREATE MATERIALIZED VIEW v2 AS SELECT region, count() AS n, sum(amount) AS N FROM orders GROUP BY region",
            "appears twice",
        ),
        (
            "CREATE MATERIALIZED VIEW _MERIDIAN_x AS SELECT region, count() AS n FROM orders GROUP BY region",
            "reserved",
        ),
        (
            "CREATE EXTERNAL STREAM _meridian_s(id int64) SETTINGS type='kafka', brokers='b:1', topic='t'",
            "reserved",
        ),
        (
            "CREATE EXTERNAL STREAM s(_Meridian_delete int64) SETTINGS type='kafka', brokers='b:1', topic='t'",
            "reserved",
        ),
        (
            "CREATE MATERIALIZED VIEW v3 AS SELECT region, count() AS _meridian_delete FROM orders GROUP BY region",
            "reserved",
        ),
    ] {
        let err = c.plan(sql).expect_err(sql).to_string();
        assert!(err.contains(needle), "{sql}: {err}");
    }
    // DROP finds the object whatever the case, and removes it.
    let change = c.plan("DROP MATERIALIZED VIEW REVENUE").expect("drop");
    c.apply(0, "DROP MATERIALIZED VIEW REVENUE", change);
    assert!(c.get("revenue").is_none());
}

#[test]
fn deep_or_huge_expressions_are_refused_not_overflowed() {
    let c = catalog_with_orders();
    for (n, needle) in [
        (100, "nested deeper than"),
        (100_000, "too many expression terms"),
    ] {
        let deep = format!(
            "CREATE MATERIALIZED VIEW v AS SELECT region, count() AS n FROM orders WHERE {}amount > 1{} GROUP BY region",
            "(".repeat(n),
            ")".repeat(n)
        );
        let err = c.plan(&deep).expect_err("too deep").to_string();
        assert!(err.contains(needle), "{n}: {err}");
        let nots = format!(
            "CREATE MATERIALIZED VIEW v AS SELECT region, count() AS n FROM orders WHERE {}amount > 1 GROUP BY region",
            "NOT ".repeat(n)
        );
        // sqlparser reports a NOT chain past its limit as unparsed text; refused either way.
        let err = c.plan(&nots).expect_err("too deep").to_string();
        assert!(n < 1_000 || err.contains(needle), "{n}: {err}");
    }
    for n in [100, 50_000] {
        let long = format!(
            "CREATE MATERIALIZED VIEW v AS SELECT region, count() AS n FROM orders WHERE {} GROUP BY region",
            vec!["amount > 1"; n].join(" AND ")
        );
        let err = c.plan(&long).expect_err("too long").to_string();
        assert!(
            err.contains("nested deeper than") || err.contains("too many expression terms"),
            "{err}"
        );
    }
    let fine = format!(
        "CREATE MATERIALIZED VIEW v AS SELECT region, count() AS n FROM orders WHERE {}amount > 1{} AND status IN ({}) GROUP BY region",
        "(".repeat(10),
        ")".repeat(10),
        vec!["'x'"; 300].join(", ")
    );
    c.plan(&fine)
        .expect("modest nesting and a long IN list are fine");
}

#[test]
fn stream_properties_and_security_settings_become_librdkafka_options() {
    let sql = "CREATE EXTERNAL STREAM s(raw string) SETTINGS type='kafka', brokers='b:9093', topic='t', properties='fetch.wait.max.ms=10; message.max.bytes=2000000', security_protocol='sasl_ssl', sasl_mechanism='SCRAM-SHA-256', username='app', password='pw', skip_ssl_cert_check='true'";
    let Ok(Change::Create(Object::Stream(s))) = Catalog::default().plan(sql) else {
        panic!("stream")
    };
    let want: Vec<(String, String)> = [
        ("fetch.wait.max.ms", "10"),
        ("message.max.bytes", "2000000"),
        ("security.protocol", "sasl_ssl"),
        ("sasl.mechanism", "SCRAM-SHA-256"),
        ("sasl.username", "app"),
        ("sasl.password", "pw"),
        ("enable.ssl.certificate.verification", "false"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(s.kafka_options, want);
    for (bad, needle) in [
        ("properties='group.id=x'", "set by Meridian"),
        ("properties='nonsense'", "is not key=value"),
        ("security_protocol='TLS'", "expected PLAINTEXT"),
    ] {
        let sql = format!("CREATE EXTERNAL STREAM s(raw string) SETTINGS type='kafka', brokers='b:1', topic='t', {bad}");
        let err = Catalog::default().plan(&sql).expect_err(bad).to_string();
        assert!(err.contains(needle), "{bad}: {err}");
    }
}

/// A view reads another view's change log as a stream keyed by the read view's key; chains
/// work, a view read by another cannot be dropped, and views without a key cannot be read.
#[test]
fn a_view_reads_another_views_change_log() {
    let mut c = catalog_with_orders();
    c.set_identity(0xabc);
    let create = |c: &mut Catalog, id: u64, sql: &str| {
        let change = c.plan(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
        c.apply(id, sql, change);
    };
    create(&mut c, 2, "CREATE MATERIALIZED VIEW by_region AS SELECT region, status, count() AS n, sum(amount) AS revenue FROM orders GROUP BY region, status");
    create(&mut c, 3, "CREATE MATERIALIZED VIEW by_status AS SELECT status, sum(revenue) AS revenue, max(n) AS top FROM by_region GROUP BY status");
    create(
        &mut c,
        4,
        "CREATE MATERIALIZED VIEW total AS SELECT sum(revenue) AS revenue FROM by_status",
    );

    let s = c.source("by_region").expect("by_region is keyed");
    assert_eq!(s.format, DataFormat::ChangeLog);
    assert_eq!(s.topic, "meridian.changes.abc.2.by_region");
    assert_eq!(s.brokers, "127.0.0.1:9092");
    assert_eq!(s.primary_key, vec![0, 1]);
    let names: Vec<&str> = s.columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["region", "status", "n", "revenue"]);
    // A chain: by_status's change log is on the brokers of the stream at the root.
    let s2 = c.source("by_status").expect("by_status is keyed");
    assert_eq!(
        (s2.topic.as_str(), s2.brokers.as_str()),
        ("meridian.changes.abc.3.by_status", "127.0.0.1:9092")
    );
    assert!(
        c.source("total").is_none(),
        "a view without a key has no change stream"
    );
    assert!(c.is_read_by_a_view("by_region") && c.is_read_by_a_view("BY_STATUS"));
    assert!(!c.is_read_by_a_view("total"));

    let Change::Explain(plan) = c
        .plan("EXPLAIN MATERIALIZED VIEW by_status")
        .expect("explain")
    else {
        panic!("not a plan");
    };
    assert!(plan.starts_with("scan: view by_region (its change log, topic meridian.changes.abc.2.by_region, primary key region, status)"), "{plan}");

    // Reloading from the stored statements gives the same sources.
    let stored: Vec<(u64, String)> = c.entries().iter().map(|e| (e.id, e.sql.clone())).collect();
    let mut reloaded = Catalog::load(stored).expect("reloads");
    reloaded.set_identity(0xabc);
    assert_eq!(reloaded.source("by_status"), c.source("by_status"));

    for (sql, message, at) in [
        ("DROP VIEW by_region", "view 'by_region' is read by view 'by_status'; drop the view first", "by_region"),
        ("CREATE MATERIALIZED VIEW x AS SELECT revenue FROM total", "view 'total' has no key", "total"),
        ("CREATE MATERIALIZED VIEW x AS SELECT b.status FROM by_status AS b JOIN orders AS o ON b.top = o.id", "a join over a view is not supported", "by_status"),
        ("CREATE MATERIALIZED VIEW x AS SELECT o.id FROM orders AS o JOIN by_status AS b ON o.status = b.status", "is a view, not a stream", "by_status"),
    ] {
        let err = c.plan(sql).expect_err(sql);
        assert!(err.message.contains(message), "{sql}: {}", err.message);
        let col = sql.find(at).expect("position") + 1;
        assert_eq!((err.pos.line, err.pos.column), (1, col), "{sql}");
    }
    // Dropped from the top down, every view goes.
    for name in ["total", "by_status", "by_region"] {
        let sql = format!("DROP VIEW {name}");
        let change = c.plan(&sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
        c.apply(0, &sql, change);
    }
    assert!(c.views().next().is_none());
}

#[test]
fn create_or_replace_makes_a_new_incarnation_of_a_view() {
    let mut c = catalog_with_orders();
    let by_region = "CREATE MATERIALIZED VIEW by_region AS SELECT region, count() AS n FROM orders GROUP BY region";
    let change = c.plan(by_region).expect("valid");
    c.apply(2, by_region, change);

    // A new view: CREATE OR REPLACE of a name not taken creates it.
    let fresh = "CREATE OR REPLACE MATERIALIZED VIEW big AS SELECT id, amount FROM orders WHERE amount > 100";
    let Ok(change @ Change::Create(_)) = c.plan(fresh) else {
        panic!("a new view is created");
    };
    c.apply(3, fresh, change);

    let replace = "CREATE OR REPLACE MATERIALIZED VIEW by_region AS SELECT region, status, sum(amount) AS revenue FROM orders GROUP BY region, status";
    let change = c.plan(replace).expect("replaces");
    let Change::Replace {
        replaces: 2,
        object: Object::View(v),
    } = &change
    else {
        panic!("not a replacement of entry 2: {change:?}");
    };
    assert_eq!(v.name, "by_region");
    c.apply(4, replace, change);
    let ids: Vec<(u64, &str)> = c
        .entries()
        .iter()
        .map(|e| (e.id, e.object.name()))
        .collect();
    assert_eq!(ids, [(1, "orders"), (3, "big"), (4, "by_region")]);
    assert_eq!(c.next_id(), 5);
    let Some(Object::View(v)) = c.get("by_region").map(|e| &e.object) else {
        panic!("by_region is gone");
    };
    let names: Vec<&str> = v.outputs.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, ["region", "status", "revenue"]);

    // The stored statements (the old one deleted with the write of the new) reload alike.
    let stored: Vec<(u64, String)> = c.entries().iter().map(|e| (e.id, e.sql.clone())).collect();
    assert_eq!(
        Catalog::load(stored).expect("reloads").entries(),
        c.entries()
    );

    let reader = "CREATE MATERIALIZED VIEW by_status AS SELECT status, sum(revenue) AS revenue FROM by_region GROUP BY status";
    let change = c.plan(reader).expect("valid");
    c.apply(5, reader, change);
    for (sql, message, at) in [
        ("CREATE OR REPLACE MATERIALIZED VIEW by_region AS SELECT region, count() AS n FROM orders GROUP BY region", "view 'by_region' is read by view 'by_status', which follows this incarnation's change log; drop 'by_status' first", "by_region"),
        ("CREATE OR REPLACE MATERIALIZED VIEW orders AS SELECT id FROM orders", "'orders' is a stream; CREATE OR REPLACE replaces a materialized view", "orders AS"),
        ("CREATE OR REPLACE MATERIALIZED VIEW big AS SELECT id, amount FROM big", "a view cannot read itself ('big' is the view being replaced)", "big\n"),
        ("CREATE OR REPLACE MATERIALIZED VIEW BIG AS SELECT id FROM orders", "the view is named 'big'; CREATE OR REPLACE must spell its name the same way", "BIG"),
        ("CREATE OR REPLACE MATERIALIZED VIEW IF NOT EXISTS x AS SELECT id FROM orders", "OR REPLACE and IF NOT EXISTS contradict each other", "OR"),
        ("CREATE OR REPLACE EXTERNAL STREAM s(id int64) SETTINGS type='kafka'", "CREATE OR REPLACE replaces a materialized view only", "EXTERNAL"),
        ("CREATE OR big", "expected REPLACE", "big"),
    ] {
        let sql = sql.replace("FROM big", "FROM big\n");
        let err = c.plan(&sql).expect_err(&sql);
        assert!(err.message.contains(message), "{sql}: {}", err.message);
        let col = sql.find(at).expect("position") + 1;
        assert_eq!((err.pos.line, err.pos.column), (1, col), "{sql}");
    }
    assert_eq!(c.entries().len(), 4, "a refused statement changes nothing");
}

#[test]
fn arg_min_and_arg_max_take_the_value_and_what_orders_the_rows() {
    let c = catalog_with_orders();
    let sql = "CREATE MATERIALIZED VIEW v AS SELECT region, arg_max(status, amount) AS top_status, min_by(id, amount) AS cheapest, arg_max(status, amount) AS again, arg_max(status, id) AS last_status FROM orders GROUP BY region";
    let Ok(Change::Create(Object::View(v))) = c.plan(sql) else {
        panic!("accepted");
    };
    let aggs: Vec<(AggFunc, ColumnType, bool)> = v
        .plan
        .aggregates
        .iter()
        .map(|a| (a.func, a.ty, a.by.is_some()))
        .collect();
    assert_eq!(
        aggs,
        [
            (AggFunc::ArgMax, ColumnType::String, true),
            (AggFunc::ArgMin, ColumnType::Int64, true),
            (AggFunc::ArgMax, ColumnType::String, true),
        ],
        "typed as their value; the same call is computed once, another `by` apart"
    );
    let mut c = c;
    c.apply(2, sql, Change::Create(Object::View(v)));
    let Ok(Change::Explain(plan)) = c.plan("EXPLAIN MATERIALIZED VIEW v") else {
        panic!("explain");
    };
    assert!(
        plan.contains("a0 = argmax(p0, p1) :: string, a1 = argmin(p2, p1) :: int64, a2 = argmax(p0, p2) :: string"),
        "{plan}"
    );
    for (sql, message, at) in [
        (
            "CREATE MATERIALIZED VIEW v AS SELECT arg_max(status) FROM orders",
            "arg_max(x, by) takes two arguments",
            "arg_max",
        ),
        (
            "CREATE MATERIALIZED VIEW v AS SELECT arg_min(DISTINCT status, id) FROM orders",
            "arg_min(x, by) takes two arguments",
            "arg_min",
        ),
        (
            "CREATE MATERIALIZED VIEW v AS SELECT max_by(status, max(id)) FROM orders",
            "an aggregate cannot be inside another aggregate",
            "max(id)",
        ),
        (
            "CREATE MATERIALIZED VIEW v AS SELECT top_k(status, 3, true) FROM orders",
            "with counts",
            "top_k",
        ),
    ] {
        let err = catalog_with_orders().plan(sql).expect_err(sql);
        assert!(err.message.contains(message), "{sql}: {}", err.message);
        let col = sql.find(at).expect("position") + 1;
        assert_eq!((err.pos.line, err.pos.column), (1, col), "{sql}");
    }
}

mod types;
