//! Against librdkafka's in-process mock broker: a view whose next messages were deleted by the
//! broker's retention stops with `DataLost` instead of silently skipping ahead.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use catalog::{Catalog, Change, Object, StreamDef, ViewDef};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use tokio::sync::watch;
use view_actor::actor::{ActorError, ActorStatus, ViewActor};
use view_actor::store::{open_db, ViewStore};
use view_actor::SystemClock;

fn defs(brokers: &str) -> (StreamDef, ViewDef) {
    let mut c = Catalog::default();
    let stream = format!("CREATE EXTERNAL STREAM s(k string, pad string) SETTINGS type='kafka', brokers='{brokers}', topic='t', data_format='JSONEachRow'");
    let ch = c.plan(&stream).expect("stream");
    c.apply(1, &stream, ch);
    let Ok(Change::Create(Object::View(v))) =
        c.plan("CREATE MATERIALIZED VIEW v AS SELECT k, count() AS n FROM s GROUP BY k")
    else {
        panic!("view")
    };
    (c.stream("s").expect("stream").clone(), v)
}

async fn produce(brokers: &str, n: usize, pad_bytes: usize) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("producer");
    let pad = "x".repeat(pad_bytes);
    for i in 0..n {
        let value = format!(r#"{{"k":"k{}","pad":"{pad}"}}"#, i % 3);
        producer
            .send(
                FutureRecord::<(), String>::to("t").payload(&value),
                Duration::from_secs(5),
            )
            .await
            .expect("delivered");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn messages_lost_to_retention_stop_the_view() {
    let mock = MockCluster::new(1).expect("mock broker");
    mock.create_topic("t", 1, 1).expect("topic");
    let brokers = mock.bootstrap_servers();
    let (stream, def) = defs(&brokers);
    let dir = tempfile::tempdir().expect("tempdir");
    let store = ViewStore::new(open_db(dir.path()).expect("db"), 2);
    let status = Arc::new(Mutex::new(ActorStatus::default()));
    let (latest, mut latest_rx) = watch::channel(0);
    let actor = Arc::new(ViewActor {
        view_id: 2,
        def,
        stream,
        joined: None,
        store: store.clone(),
        clock: Arc::new(SystemClock),
        latest,
        status: status.clone(),
        check_interval: view_actor::actor::PARTITION_CHECK_INTERVAL,
        start: None,
        caught_up: None,
        fresh: None,
    });

    produce(&brokers, 10, 10).await;
    let (stop, stop_rx) = watch::channel(false);
    let running = tokio::spawn({
        let actor = actor.clone();
        async move { actor.run(stop_rx).await }
    });
    tokio::time::timeout(Duration::from_secs(30), latest_rx.wait_for(|seq| *seq >= 1))
        .await
        .expect("first batch in time")
        .expect("actor alive");
    stop.send_replace(true);
    running.await.expect("join").expect("a clean stop");
    assert_eq!(store.load_offsets().expect("offsets").get(&0), Some(&10));

    // The broker keeps about 5 MB per partition: 7 MB more pushes the unread offset 10 out.
    produce(&brokers, 70, 100_000).await;
    let (_stop, stop_rx) = watch::channel(false);
    let result = tokio::time::timeout(Duration::from_secs(30), actor.run(stop_rx))
        .await
        .expect("the actor stops by itself");
    assert!(matches!(result, Err(ActorError::DataLost(_))), "{result:?}");
    assert_eq!(
        store.load_meta().expect("meta").events,
        10,
        "nothing after the gap was counted"
    );
}
