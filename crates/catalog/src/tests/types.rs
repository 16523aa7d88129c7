//! Column types beyond the scalars: exact decimals, arrays, and the EMIT clause's period.

use super::*;

#[test]
fn decimals_are_typed_as_duckdb_types_them() {
    let c = catalog_over("CREATE EXTERNAL STREAM pay(id int64, amount decimal(12, 2), fee decimal64(4), n int32, k decimal(5)) SETTINGS type='kafka', brokers='b:1', topic='p', data_format='Debezium', primary_key='id'");
    let dec = |precision, scale| ColumnType::Decimal { precision, scale };
    let sql = "CREATE MATERIALIZED VIEW v AS SELECT k, sum(amount) AS total, min(fee) AS low, max(amount) AS high, avg(amount) AS mean, sum(amount) * 2 AS twice, count(DISTINCT amount) AS kinds, sum(n::decimal(10,1)) AS tenths FROM pay GROUP BY k";
    let v = planned_view(&c, sql);
    let got: Vec<ColumnType> = v.outputs.iter().map(|o| o.ty).collect();
    assert_eq!(
        got,
        vec![
            dec(5, 0),
            dec(38, 2),
            dec(18, 4),
            dec(12, 2),
            ColumnType::Float64,
            dec(38, 2),
            ColumnType::Int64,
            dec(38, 1),
        ]
    );
    let projection =
        "CREATE MATERIALIZED VIEW p AS SELECT id, amount, amount + fee AS gross FROM pay";
    let p = planned_view(&c, projection);
    assert_eq!(p.outputs[1].ty, dec(12, 2));
    assert_eq!(p.outputs[2].ty, dec(19, 4));
    assert_eq!(ColumnType::from_name(&dec(12, 2).name()), Some(dec(12, 2)));
    assert_eq!(dec(12, 2).duckdb_type(), "DECIMAL(12,2)");
}

#[test]
fn arrays_pass_through_views_and_are_refused_where_they_would_be_compared() {
    use crate::ListElem;
    let c = catalog_over("CREATE EXTERNAL STREAM ev(id int64, tags array(string), ids nullable(array(int32)), w array(float32), k string) SETTINGS type='kafka', brokers='b:1', topic='e', data_format='Debezium', primary_key='id'");
    let v = planned_view(
        &c,
        "CREATE MATERIALIZED VIEW v AS SELECT id, tags, ids, w FROM ev WHERE k != 'x'",
    );
    let got: Vec<ColumnType> = v.outputs.iter().map(|o| o.ty).collect();
    assert_eq!(
        got,
        vec![
            ColumnType::Int64,
            ColumnType::List(ListElem::String),
            ColumnType::List(ListElem::Int64),
            ColumnType::List(ListElem::Float64),
        ]
    );
    assert_eq!(ColumnType::List(ListElem::Int64).duckdb_type(), "BIGINT[]");
    assert_eq!(
        ColumnType::from_name("array(string)"),
        Some(ColumnType::List(ListElem::String))
    );
    let agg = "CREATE MATERIALIZED VIEW a AS SELECT k, latest(tags) AS t, count(ids) AS n FROM ev GROUP BY k";
    assert!(c.plan(agg).is_ok(), "{:?}", c.plan(agg));
    for (sql, words) in [
        ("CREATE MATERIALIZED VIEW a AS SELECT tags, count() AS n FROM ev GROUP BY tags", "cannot be a group key"),
        ("CREATE MATERIALIZED VIEW a AS SELECT k, min(tags) AS m FROM ev GROUP BY k", "not compared or aggregated"),
        ("CREATE MATERIALIZED VIEW a AS SELECT k, arg_max(k, ids) AS m FROM ev GROUP BY k", "not compared or aggregated"),
        ("CREATE EXTERNAL STREAM x(id array(int64)) SETTINGS type='kafka', brokers='b:1', topic='x', data_format='Debezium', primary_key='id'", "cannot be a key"),
        ("CREATE EXTERNAL STREAM x(a array(date)) SETTINGS type='kafka', brokers='b:1', topic='x'", "unsupported type"),
    ] {
        let err = c.plan(sql).expect_err(sql).to_string();
        assert!(err.contains(words), "{sql}: {err}");
    }
}

#[test]
fn emit_periodic_sets_the_period_a_batch_of_changes_stays_open() {
    let c = catalog_with_orders();
    for (sql, us) in [
        ("CREATE MATERIALIZED VIEW v AS SELECT region, count() AS n FROM orders GROUP BY region EMIT PERIODIC 5s", Some(5_000_000)),
        ("CREATE MATERIALIZED VIEW v AS SELECT region, count() AS n FROM orders GROUP BY region EMIT PERIODIC 250ms SETTINGS regions='eu'", Some(250_000)),
        ("CREATE MATERIALIZED VIEW v AS SELECT id, region FROM orders EMIT PERIODIC 1m", Some(60_000_000)),
        ("CREATE MATERIALIZED VIEW v AS SELECT region, count() AS n FROM orders GROUP BY region EMIT CHANGELOG", None),
        ("CREATE MATERIALIZED VIEW v AS SELECT region, count() AS n FROM orders GROUP BY region", None),
    ] {
        let v = planned_view(&c, sql);
        assert_eq!(v.plan.emit_period_us, us, "{sql}");
        let Some(Object::Stream(orders)) = c.entries().first().map(|e| e.object.clone()) else {
            panic!("orders")
        };
        let explained = v.plan.explain(&orders, &v.outputs);
        assert_eq!(explained.contains("emit: periodic"), us.is_some(), "{explained}");
    }
    let err = c
        .plan("CREATE MATERIALIZED VIEW v AS SELECT region, count() AS n FROM orders GROUP BY region EMIT PERIODIC 2h")
        .expect_err("too long");
    assert!(err.message.contains("from 10ms to 1h"), "{}", err.message);
}
