use super::*;
use pb::coordinator_server::Coordinator;

#[tokio::test]
async fn statements_persist_and_missing_topics_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let check: TopicCheck = Arc::new(|s: &catalog::StreamDef| {
        let t = s.topic.as_str();
        if t == "orders" {
            Ok(())
        } else {
            Err(format!("topic '{t}' does not exist"))
        }
    });
    // Deleting a change topic answers "deleted" and records its name.
    let deleted = Arc::new(Mutex::new(Vec::<String>::new()));
    let record = deleted.clone();
    let delete: TopicDelete = Arc::new(move |s: &catalog::StreamDef| {
        record.lock().expect("lock").push(s.topic.clone());
        Ok(true)
    });
    let topics = Topics {
        check: check.clone(),
        delete,
    };
    let stream = "CREATE EXTERNAL STREAM orders(id int64, region string) SETTINGS type='kafka', brokers='b:1', topic='orders', data_format='Debezium', primary_key='id'";
    let view = "CREATE MATERIALIZED VIEW by_region AS SELECT region, count() AS n FROM orders GROUP BY region";
    {
        let svc = CoordinatorService::open(
            CatalogStore::open(dir.path()).expect("open"),
            Some(topics.clone()),
        )
        .expect("service");
        let exec = |sql: &str| svc.execute(Request::new(pb::ExecuteRequest { sql: sql.into() }));
        exec(stream).await.expect("stream");
        exec(view).await.expect("view");
        let err = exec("CREATE EXTERNAL STREAM x(raw string) SETTINGS type='kafka', brokers='b:1', topic='missing'").await.expect_err("no topic");
        assert!(
            err.message().contains("topic 'missing' does not exist"),
            "{}",
            err.message()
        );
        let err =
            exec("CREATE MATERIALIZED VIEW v2 AS SELECT regin, count() FROM orders GROUP BY regin")
                .await
                .expect_err("bad column");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
    }
    let svc = CoordinatorService::open(
        CatalogStore::open(dir.path()).expect("reopen"),
        Some(topics.clone()),
    )
    .expect("service");
    let cat = svc
        .get_catalog(Request::new(pb::GetCatalogRequest {}))
        .await
        .expect("catalog")
        .into_inner();
    assert_eq!(
        cat.entries
            .iter()
            .map(|e| (e.kind.as_str(), e.name.as_str()))
            .collect::<Vec<_>>(),
        vec![("stream", "orders"), ("view", "by_region")]
    );
    // Dropping the newest entry and creating it again gives a new id, across a restart too.
    let exec = |sql: &str| svc.execute(Request::new(pb::ExecuteRequest { sql: sql.into() }));
    let identity = svc.identity;
    let done = exec("DROP MATERIALIZED VIEW by_region")
        .await
        .expect("drop")
        .into_inner();
    let topic = format!("meridian.changes.{identity:x}.2.by_region");
    assert_eq!(
        done.message,
        format!("dropped view 'by_region'; deleted its change topic '{topic}'")
    );
    assert_eq!(*deleted.lock().expect("lock"), [topic]);
    drop(svc);
    let svc = CoordinatorService::open(
        CatalogStore::open(dir.path()).expect("reopen"),
        Some(topics.clone()),
    )
    .expect("service");
    svc.execute(Request::new(pb::ExecuteRequest { sql: view.into() }))
        .await
        .expect("create again");
    let cat = svc
        .get_catalog(Request::new(pb::GetCatalogRequest {}))
        .await
        .expect("catalog")
        .into_inner();
    assert_eq!(
        cat.entries.iter().map(|e| e.id).collect::<Vec<_>>(),
        vec![1, 3],
        "id 2 is not reused"
    );
    // CREATE OR REPLACE: the new incarnation takes a new id and the old entry is gone,
    // across a restart too.
    let replace = "CREATE OR REPLACE MATERIALIZED VIEW by_region AS SELECT region, sum(id) AS s FROM orders GROUP BY region";
    let done = svc
        .execute(Request::new(pb::ExecuteRequest {
            sql: replace.into(),
        }))
        .await
        .expect("replace")
        .into_inner();
    assert!(
        done.message
            .starts_with("replaced materialized view 'by_region'")
            && done.message.ends_with(&format!(
                "deleted its change topic 'meridian.changes.{identity:x}.3.by_region'"
            )),
        "{}",
        done.message
    );
    assert_eq!(deleted.lock().expect("lock").len(), 2);
    drop(svc);
    let svc = CoordinatorService::open(
        CatalogStore::open(dir.path()).expect("reopen"),
        Some(topics),
    )
    .expect("service");
    let cat = svc
        .get_catalog(Request::new(pb::GetCatalogRequest {}))
        .await
        .expect("catalog")
        .into_inner();
    assert_eq!(
        cat.entries
            .iter()
            .map(|e| (e.id, e.sql.as_str()))
            .collect::<Vec<_>>(),
        vec![(1, stream), (4, replace)]
    );
}
