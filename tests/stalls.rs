//! A view must never skip or stall silently. Against tansu, which answers a fetch that starts
//! inside a multi-record batch with the *next* batch (so a plain consumer positioned at offset
//! 50 of a 100-message batch gets offset 100 next, and never sees 50..99): a view whose stored
//! position is in the middle of a producer batch notices the jump, fetches again from earlier,
//! skips what it had consumed, and ends with exactly the messages after its position.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use catalog::{Catalog, Change, Object};
use meridian_tests::{create_topic, runtime, Broker, Workdir};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use tokio::sync::watch;
use view_actor::actor::{ActorStatus, ViewActor};
use view_actor::store::{open_db, Commit, ViewStore};
use view_actor::SystemClock;

#[test]
fn a_view_positioned_inside_a_producer_batch_does_not_stall() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("info")
        .with_test_writer()
        .try_init();
    let rt = runtime();
    let work = Workdir::new("stalls-mid-batch");
    let broker = Broker::start(&work);
    rt.block_on(create_topic(&broker.addr, "t", 1))
        .expect("create topic");
    // One producer batch of 100 messages (a long linger, every send before the first await),
    // then one more batch of one.
    let produce = |n: usize| {
        rt.block_on(async {
            let producer: FutureProducer = ClientConfig::new()
                .set("bootstrap.servers", &broker.addr)
                .set("linger.ms", "2000")
                .set("batch.num.messages", "1000")
                .create()
                .expect("producer");
            let values: Vec<String> = (0..n).map(|i| format!(r#"{{"k":"k{}"}}"#, i % 4)).collect();
            let sends: Vec<_> = values
                .iter()
                .map(|v| {
                    producer
                        .send_result(FutureRecord::<(), String>::to("t").payload(v))
                        .map_err(|(e, _)| e)
                        .expect("enqueue")
                })
                .collect();
            for s in sends {
                s.await.expect("delivered").expect("acknowledged");
            }
        })
    };
    produce(100);
    produce(1);

    let mut c = Catalog::default();
    let stream = format!("CREATE EXTERNAL STREAM s(k string) SETTINGS type='kafka', brokers='{}', topic='t', data_format='JSONEachRow'", broker.addr);
    let ch = c.plan(&stream).expect("stream");
    c.apply(1, &stream, ch);
    let Ok(Change::Create(Object::View(def))) =
        c.plan("CREATE MATERIALIZED VIEW v AS SELECT k, count() AS n FROM s GROUP BY k")
    else {
        panic!("view")
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let store = ViewStore::new(open_db(dir.path()).expect("db"), 2);
    // The view consumed offsets 0..50 before (say) a restart: its next offset is 50.
    store
        .commit(Commit {
            offsets: vec![(0, 50)],
            ..Commit::default()
        })
        .expect("commit the position");
    let status = Arc::new(Mutex::new(ActorStatus::default()));
    let (latest, _latest_rx) = watch::channel(0);
    let actor = Arc::new(ViewActor {
        view_id: 2,
        def,
        stream: c.stream("s").expect("stream").clone(),
        joined: None,
        store: store.clone(),
        clock: Arc::new(SystemClock),
        latest,
        status: status.clone(),
        check_interval: Duration::from_millis(500),
        start: None,
        caught_up: None,
        fresh: None,
    });
    let (stop, stop_rx) = watch::channel(false);
    let running = rt.spawn({
        let actor = actor.clone();
        async move { actor.run(stop_rx).await }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while store.load_meta().expect("meta").events < 51 {
        if running.is_finished() {
            panic!("the view stopped: {:?}", rt.block_on(running));
        }
        assert!(
            Instant::now() < deadline,
            "the view never consumed the 51 messages from its position on; status: {:?}",
            status.lock().expect("status")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Nothing below the position was counted again, nothing after it twice.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(store.load_meta().expect("meta").events, 51);
    assert_eq!(store.load_offsets().expect("offsets").get(&0), Some(&101));
    // The per-key counts say which messages were counted: 50..=100, k0 to k3 by i % 4.
    let (_, groups) = store.consistent_state().expect("state");
    let mut counts: Vec<(String, i64)> = groups
        .iter()
        .map(|(k, g)| (format!("{:?}", k[0]), g.rows))
        .collect();
    counts.sort();
    assert_eq!(counts.iter().map(|(_, n)| n).sum::<i64>(), 51, "{counts:?}");
    stop.send_replace(true);
    rt.block_on(running).expect("join").expect("a clean stop");
}
