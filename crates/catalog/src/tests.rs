use crate::*;

const ORDERS: &str = "CREATE EXTERNAL STREAM orders(id int64, customer_id int64, region string, status string, amount int64, quantity int32) \
     SETTINGS type='kafka', brokers='127.0.0.1:9092', topic='orders', data_format='Debezium', primary_key='id'";

fn catalog_with_orders() -> Catalog {
    let mut c = Catalog::default();
    let change = c.plan(ORDERS).expect("orders stream is valid");
    c.apply(1, ORDERS, change);
    c
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
    assert_eq!(v.group_columns, vec![2, 3]);
    assert_eq!(v.outputs[2].kind, OutputKind::Count);
    assert_eq!(v.outputs[3].kind, OutputKind::Sum(4));
    assert_eq!(v.outputs[3].ty, ColumnType::Int64);
    assert_eq!(
        v.regions,
        Some(vec!["eu-west".to_string(), "us-east".to_string()])
    );
    assert!(v.assigned_to("eu-west") && !v.assigned_to("ap-south"));
    let filter = v.filter.expect("has a filter");
    let row = |q: Value| {
        vec![
            Value::Int(1),
            Value::Int(2),
            Value::Text("a".into()),
            Value::Text("b".into()),
            Value::Int(5),
            q,
        ]
    };
    assert!(filter.matches(&row(Value::Int(3))));
    assert!(!filter.matches(&row(Value::Int(0))));
    assert!(
        !filter.matches(&row(Value::Null)),
        "NULL filters the row out"
    );
}

/// Each refused statement and the words and column its error must carry.
#[test]
fn refused_statements_name_the_problem_and_position() {
    let cases: &[(&str, &str, usize)] = &[
        ("CREATE MATERIALIZED VIEW v AS SELECT region, count() FROM orders GROUP BY regoin", "unknown column 'regoin'", 75),
        ("CREATE MATERIALIZED VIEW v AS SELECT status, sum(status) FROM orders GROUP BY status", "needs a number", 50),
        ("CREATE MATERIALIZED VIEW v AS SELECT region, count() FROM orders WHERE amount = 'x' GROUP BY region", "type mismatch", 81),
        ("CREATE MATERIALIZED VIEW v AS SELECT region, count() FROM nope GROUP BY region", "stream 'nope' does not exist", 59),
        ("CREATE MATERIALIZED VIEW v AS SELECT region, max(amount) FROM orders GROUP BY region", "unsupported aggregate 'max'", 46),
        ("CREATE MATERIALIZED VIEW v AS SELECT status, count() FROM orders GROUP BY region", "must appear in GROUP BY", 38),
        ("CREATE MATERIALIZED VIEW v AS SELEKT 1", "expected SELECT", 31),
        ("CREATE EXTERNAL STREAM s(a int64) SETTINGS type='kafka', brokers='b:1', topic='t', colour='red'", "unknown stream setting 'colour'", 84),
        ("CREATE EXTERNAL STREAM s(a decimal(10)) SETTINGS type='kafka', brokers='b:1', topic='t'", "unsupported type", 28),
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
    for (sql, words, column) in cases {
        let err = c.plan(sql).expect_err(sql);
        assert!(
            err.message.contains(words),
            "{sql}: {err} does not say {words}"
        );
        assert_eq!(err.pos.column, *column, "{sql}: {err}");
    }
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
fn three_valued_in_list() {
    let c = catalog_with_orders();
    let sql = "CREATE MATERIALIZED VIEW v AS SELECT region, count() FROM orders WHERE status NOT IN ('cancelled', NULL) GROUP BY region";
    let Change::Create(Object::View(v)) = c.plan(sql).expect("valid") else {
        panic!()
    };
    let f = v.filter.expect("filter");
    let row = vec![
        Value::Int(1),
        Value::Int(1),
        Value::Text("r".into()),
        Value::Text("paid".into()),
        Value::Int(1),
        Value::Int(1),
    ];
    assert_eq!(
        f.eval(&row),
        Value::Null,
        "x NOT IN (.., NULL) is unknown when x is not in the list"
    );
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
    let deep = format!(
        "CREATE MATERIALIZED VIEW v AS SELECT region, count() AS n FROM orders WHERE {}amount > 1{} GROUP BY region",
        "(".repeat(100_000),
        ")".repeat(100_000)
    );
    let err = c.plan(&deep).expect_err("too deep").to_string();
    assert!(err.contains("nested deeper than"), "{err}");
    let nots = format!(
        "CREATE MATERIALIZED VIEW v AS SELECT region, count() AS n FROM orders WHERE {}amount > 1 GROUP BY region",
        "NOT ".repeat(100_000)
    );
    assert!(c
        .plan(&nots)
        .expect_err("too deep")
        .to_string()
        .contains("nested deeper than"));
    let long = format!(
        "CREATE MATERIALIZED VIEW v AS SELECT region, count() AS n FROM orders WHERE {} GROUP BY region",
        vec!["amount > 1"; 50_000].join(" AND ")
    );
    assert!(c
        .plan(&long)
        .expect_err("too long")
        .to_string()
        .contains("expression terms"));
    let fine = format!(
        "CREATE MATERIALIZED VIEW v AS SELECT region, count() AS n FROM orders WHERE {}amount > 1{} GROUP BY region",
        "(".repeat(10),
        ")".repeat(10)
    );
    c.plan(&fine).expect("modest nesting is fine");
}
