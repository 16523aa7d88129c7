//! Times and windows: grouping by time, windows that close, the watermark.

use super::*;

#[test]
fn times_group_by_minute_and_keep_exact_extremes_under_retraction() {
    let stream_sql = "CREATE EXTERNAL STREAM ev(id int64, at datetime64(3), day date) SETTINGS type='kafka', brokers='b:1', topic='t', data_format='Debezium', primary_key='id'";
    let view_sql = "CREATE MATERIALIZED VIEW v AS SELECT to_start_of_minute(at) AS minute, count() AS n, max(at) AS last, min(day) AS first_day FROM ev GROUP BY minute";
    let (def, stream) = plan_over(stream_sql, view_sql);
    let mut c = ViewCore::new(def, &stream, HashMap::new()).expect("core");
    let store = Store::default();
    let ts = |s: &str| Value::Timestamp(catalog::parse_timestamp(s).expect("ts"));
    let day = |s: &str| Value::Date(catalog::parse_date(s).expect("date"));
    let row = |id: i64, at: &str, d: &str| vec![Value::Int(id), ts(at), day(d)];
    run(
        &mut c,
        &store,
        &[
            SourceEvent::Upsert(row(1, "2024-03-01 10:00:05", "2024-03-01")),
            SourceEvent::Upsert(row(2, "2024-03-01 10:00:59.999", "2024-02-28")),
            SourceEvent::Upsert(row(3, "2024-03-01 10:01:00", "2024-03-01")),
        ],
    );
    // The latest event of 10:00 and the earliest day go: the next ones show.
    let out = run(
        &mut c,
        &store,
        &[SourceEvent::Delete {
            key: vec![Value::Int(2)],
        }],
    );
    assert_eq!(
        out.changes,
        vec![RowChange {
            key: vec![ts("2024-03-01 10:00:00")],
            row: Some(vec![
                ts("2024-03-01 10:00:00"),
                Value::Int(1),
                ts("2024-03-01 10:00:05"),
                day("2024-03-01")
            ]),
        }]
    );
    let out = run(
        &mut c,
        &store,
        &[SourceEvent::Upsert(row(
            1,
            "2024-03-01 10:01:30",
            "2024-03-01",
        ))],
    );
    assert_eq!(
        out.changes.len(),
        2,
        "row 1 moves to 10:01: {:?}",
        out.changes
    );
    assert_eq!(out.changes[0].row, None);
    assert_eq!(
        out.changes[1].row.as_ref().map(|r| r[1].clone()),
        Some(Value::Int(2))
    );
}

#[test]
fn closed_windows_are_final_their_state_is_evicted_and_late_changes_are_counted() {
    let stream_sql = "CREATE EXTERNAL STREAM ev(id int64, at datetime64(3), v int64) SETTINGS type='kafka', brokers='b:1', topic='t', data_format='Debezium', primary_key='id'";
    let view_sql = "CREATE MATERIALIZED VIEW w AS SELECT window_start, count() AS n, sum(v) AS total, max(v) AS top FROM tumble(ev, at, 1m) GROUP BY window_start SETTINGS allowed_lateness='10s'";
    let (def, stream) = plan_over(stream_sql, view_sql);
    assert!(def.plan.window.is_some());
    let mut c = ViewCore::new(def.clone(), &stream, HashMap::new()).expect("core");
    let store = Store::default();
    let ts = |s: &str| Value::Timestamp(catalog::parse_timestamp(s).expect("ts"));
    let row = |id: i64, at: &str, v: i64| vec![Value::Int(id), ts(at), Value::Int(v)];
    let w10 = ts("2024-03-01 10:00:00");
    run(
        &mut c,
        &store,
        &[
            SourceEvent::Upsert(row(1, "2024-03-01 10:00:30", 5)),
            SourceEvent::Upsert(row(2, "2024-03-01 10:00:50", 7)),
            // Within the lateness: the 10:00 window is still open at a watermark of 10:00:55.
            SourceEvent::Upsert(row(3, "2024-03-01 10:01:05", 1)),
            SourceEvent::Upsert(row(4, "2024-03-01 10:00:59", 2)),
        ],
    );
    assert!(!store.groups.borrow()[&vec![w10.clone()]].closed);
    // 10:01:15 moves the watermark to 10:01:05: the 10:00 window closes.
    let out = run(
        &mut c,
        &store,
        &[SourceEvent::Upsert(row(5, "2024-03-01 10:01:15", 1))],
    );
    assert_eq!(
        out.watermark,
        Some(catalog::parse_timestamp("2024-03-01 10:01:05").expect("ts"))
    );
    let closed = store.groups.borrow()[&vec![w10.clone()]].clone();
    assert!(closed.closed && closed.aggregates.is_empty(), "{closed:?}");
    let final_row = vec![w10.clone(), Value::Int(3), Value::Int(14), Value::Int(7)];
    assert_eq!(closed.row, Some(final_row.clone()));
    // Late: a new event for 10:00, an update and a delete of rows in it. None is applied;
    // the update's new version, in the open 10:01 window, is.
    let out = run(
        &mut c,
        &store,
        &[
            SourceEvent::Upsert(row(6, "2024-03-01 10:00:40", 100)),
            SourceEvent::Delete {
                key: vec![Value::Int(1)],
            },
            SourceEvent::Upsert(row(2, "2024-03-01 10:01:20", 7)),
        ],
    );
    assert_eq!(out.late_events, 3);
    assert_eq!(
        out.changes,
        vec![RowChange {
            key: vec![ts("2024-03-01 10:01:00")],
            row: Some(vec![
                ts("2024-03-01 10:01:00"),
                Value::Int(3),
                Value::Int(9),
                Value::Int(7)
            ]),
        }]
    );
    // After a restart with the persisted watermark, a full resync lists the final row.
    let mut reloaded = ViewCore::new(def, &stream, store.groups.borrow().clone()).expect("core");
    reloaded.set_event_times(out.event_times.clone(), out.watermark);
    let all = reloaded.all_rows().expect("rows");
    assert_eq!(all[0].row, Some(final_row));
    let out = run(
        &mut reloaded,
        &store,
        &[SourceEvent::Upsert(row(7, "2024-03-01 10:00:01", 1))],
    );
    assert_eq!(
        (out.late_events, out.changes.len()),
        (1, 0),
        "still closed after a restart"
    );
}

/// Kafka orders messages only within a partition: a partition read ahead must not close the
/// windows another partition is still filling.
#[test]
fn the_watermark_follows_the_slowest_partition() {
    let (def, stream) = plan_over(
        "CREATE EXTERNAL STREAM ev(id int64, at datetime64(3), v int64) SETTINGS type='kafka', brokers='b:1', topic='t', data_format='Debezium', primary_key='id'",
        "CREATE MATERIALIZED VIEW w AS SELECT window_start, count() AS n FROM tumble(ev, at, 1m) GROUP BY window_start SETTINGS allowed_lateness='10s'",
    );
    let mut c = ViewCore::new(def, &stream, HashMap::new()).expect("core");
    c.set_partitions(&[0, 1]);
    let store = Store::default();
    let ts = |s: &str| Value::Timestamp(catalog::parse_timestamp(s).expect("ts"));
    let row = |id: i64, at: &str| SourceEvent::Upsert(vec![Value::Int(id), ts(at), Value::Int(1)]);
    let mut batch = |events: &[SourceEvent], partitions: &[i32]| {
        let dead = c.apply_batch(events, partitions, &store).expect("apply");
        assert!(dead.is_empty());
        let out = c.finish_batch().expect("finish");
        store.persist(&out);
        out
    };
    // Partition 0 runs five minutes ahead; partition 1 has said nothing yet.
    let out = batch(
        &[row(1, "2024-03-01 10:00:10"), row(2, "2024-03-01 10:05:00")],
        &[0, 0],
    );
    assert_eq!(out.watermark, None);
    let out = batch(&[row(3, "2024-03-01 10:00:20")], &[1]);
    assert_eq!(out.late_events, 0, "partition 1's 10:00 event is on time");
    assert_eq!(
        out.watermark,
        Some(catalog::parse_timestamp("2024-03-01 10:00:10").expect("ts"))
    );
    let out = batch(&[row(4, "2024-03-01 10:06:00")], &[1]);
    let w10 = vec![ts("2024-03-01 10:00:00")];
    let closed = store.groups.borrow()[&w10].clone();
    assert!(closed.closed, "both partitions are past 10:01:10 now");
    assert_eq!(
        closed.row,
        Some(vec![ts("2024-03-01 10:00:00"), Value::Int(2)])
    );
    assert_eq!(out.late_events, 0);
    // A truncate starts event time over: the re-snapshot fills the window again.
    let out = batch(
        &[SourceEvent::Truncate, row(1, "2024-03-01 10:00:10")],
        &[0, 0],
    );
    assert_eq!(out.late_events, 0);
    assert!(
        out.changes
            .iter()
            .any(|ch| ch.key == w10 && ch.row == Some(vec![w10[0].clone(), Value::Int(1)])),
        "{:?}",
        out.changes
    );
}

#[test]
fn a_hopping_row_is_in_every_window_holding_it_and_late_only_in_the_closed_ones() {
    let stream_sql = "CREATE EXTERNAL STREAM ev(id int64, at datetime64(3), v int64) SETTINGS type='kafka', brokers='b:1', topic='t', data_format='Debezium', primary_key='id'";
    let view_sql = "CREATE MATERIALIZED VIEW h AS SELECT window_start, window_end, count() AS n, sum(v) AS total FROM hop(ev, at, 1m, 3m) GROUP BY window_start, window_end SETTINGS allowed_lateness='0s'";
    let (def, stream) = plan_over(stream_sql, view_sql);
    assert!(def.plan.hop.is_some() && def.plan.window.is_some());
    let mut c = ViewCore::new(def.clone(), &stream, HashMap::new()).expect("core");
    let store = Store::default();
    let ts = |s: &str| Value::Timestamp(catalog::parse_timestamp(s).expect("ts"));
    let row = |id: i64, at: &str, v: i64| vec![Value::Int(id), ts(at), Value::Int(v)];
    let window = |start: &str, end: &str, n: i64, total: i64| {
        (
            vec![ts(start), ts(end)],
            Some(vec![ts(start), ts(end), Value::Int(n), Value::Int(total)]),
        )
    };
    let changes = |out: &BatchOutput| -> Vec<(Key, Option<Row>)> {
        out.changes
            .iter()
            .map(|c| (c.key.clone(), c.row.clone()))
            .collect()
    };
    // 10:02:30 is in the windows starting 10:00, 10:01 and 10:02.
    let out = run(
        &mut c,
        &store,
        &[SourceEvent::Upsert(row(1, "2024-03-01 10:02:30", 5))],
    );
    assert_eq!(
        changes(&out),
        vec![
            window("2024-03-01 10:00:00", "2024-03-01 10:03:00", 1, 5),
            window("2024-03-01 10:01:00", "2024-03-01 10:04:00", 1, 5),
            window("2024-03-01 10:02:00", "2024-03-01 10:05:00", 1, 5),
        ]
    );
    // Event time 10:03:40 closes the window ending 10:03 (no lateness allowed).
    let out = run(
        &mut c,
        &store,
        &[SourceEvent::Upsert(row(2, "2024-03-01 10:03:40", 7))],
    );
    assert_eq!(
        changes(&out),
        vec![
            window("2024-03-01 10:01:00", "2024-03-01 10:04:00", 2, 12),
            window("2024-03-01 10:02:00", "2024-03-01 10:05:00", 2, 12),
            window("2024-03-01 10:03:00", "2024-03-01 10:06:00", 1, 7),
        ]
    );
    // Row 1 changes: it stays frozen in the closed window, and moves in the open ones.
    let out = run(
        &mut c,
        &store,
        &[SourceEvent::Upsert(row(1, "2024-03-01 10:02:50", 100))],
    );
    assert_eq!(
        changes(&out),
        vec![
            window("2024-03-01 10:01:00", "2024-03-01 10:04:00", 2, 107),
            window("2024-03-01 10:02:00", "2024-03-01 10:05:00", 2, 107),
        ]
    );
    assert_eq!(
        out.late_events, 1,
        "the closed window kept row 1's old version"
    );
    // A row only in closed windows is late and stored as contributing nothing: deleting it
    // later changes nothing.
    let out = run(
        &mut c,
        &store,
        &[SourceEvent::Upsert(row(3, "2024-03-01 10:00:10", 1))],
    );
    assert!(out.changes.is_empty(), "{:?}", out.changes);
    assert_eq!(out.late_events, 1);
    let out = run(
        &mut c,
        &store,
        &[SourceEvent::Delete {
            key: vec![Value::Int(3)],
        }],
    );
    assert!(out.changes.is_empty(), "{:?}", out.changes);
    // Deleting row 1 retracts it from its open windows only.
    let out = run(
        &mut c,
        &store,
        &[SourceEvent::Delete {
            key: vec![Value::Int(1)],
        }],
    );
    assert_eq!(
        changes(&out),
        vec![
            window("2024-03-01 10:01:00", "2024-03-01 10:04:00", 1, 7),
            window("2024-03-01 10:02:00", "2024-03-01 10:05:00", 1, 7),
        ]
    );
}

/// EMIT AFTER WATERMARK: a window's row enters the view once, final, when the window closes;
/// open windows change nothing downstream; a late change is counted and not applied; a
/// truncate takes the emitted rows out; a full resync lists closed windows only.
#[test]
fn emit_after_watermark_emits_each_window_once_when_it_closes() {
    let stream_sql = "CREATE EXTERNAL STREAM ev(id int64, at datetime64(3), v int64) SETTINGS type='kafka', brokers='b:1', topic='t', data_format='Debezium', primary_key='id'";
    let view_sql = "CREATE MATERIALIZED VIEW w AS SELECT window_start, count() AS n, sum(v) AS total FROM tumble(ev, at, 1m) GROUP BY window_start EMIT AFTER WATERMARK SETTINGS allowed_lateness='0s'";
    let (def, stream) = plan_over(stream_sql, view_sql);
    assert!(def.plan.emit_final);
    let mut c = ViewCore::new(def.clone(), &stream, HashMap::new()).expect("core");
    let store = Store::default();
    let ts = |s: &str| Value::Timestamp(catalog::parse_timestamp(s).expect("ts"));
    let row = |id: i64, at: &str, v: i64| vec![Value::Int(id), ts(at), Value::Int(v)];
    let (w0, w1) = (ts("2024-03-01 10:00:00"), ts("2024-03-01 10:01:00"));
    // Open windows: nothing is emitted, even as rows move and leave.
    let out = run(
        &mut c,
        &store,
        &[
            SourceEvent::Upsert(row(1, "2024-03-01 10:00:05", 1)),
            SourceEvent::Upsert(row(2, "2024-03-01 10:00:30", 2)),
        ],
    );
    assert!(out.changes.is_empty(), "{:?}", out.changes);
    let out = run(
        &mut c,
        &store,
        &[
            SourceEvent::Upsert(row(2, "2024-03-01 10:00:40", 5)),
            SourceEvent::Upsert(row(3, "2024-03-01 10:00:50", 7)),
            SourceEvent::Delete {
                key: vec![Value::Int(3)],
            },
        ],
    );
    assert!(out.changes.is_empty(), "{:?}", out.changes);
    assert_eq!(out.rows_delta, 0);
    // An event at 10:01:10 closes 10:00: its final row, once.
    let out = run(
        &mut c,
        &store,
        &[SourceEvent::Upsert(row(4, "2024-03-01 10:01:10", 10))],
    );
    assert_eq!(
        out.changes,
        vec![RowChange {
            key: vec![w0.clone()],
            row: Some(vec![w0.clone(), Value::Int(2), Value::Int(6)])
        }]
    );
    assert_eq!(out.rows_delta, 1);
    // A late change to 10:00 is counted, not applied, and emits nothing.
    let out = run(
        &mut c,
        &store,
        &[SourceEvent::Upsert(row(1, "2024-03-01 10:00:06", 100))],
    );
    assert!(out.changes.is_empty(), "{:?}", out.changes);
    assert_eq!(out.late_events, 1);
    // A crash and restart keeps it so: the full resync lists the closed window only.
    let mut again =
        ViewCore::new(def.clone(), &stream, store.groups.borrow().clone()).expect("core");
    let all = again.all_rows().expect("rows");
    assert_eq!(
        all,
        vec![RowChange {
            key: vec![w0.clone()],
            row: Some(vec![w0.clone(), Value::Int(2), Value::Int(6)])
        }]
    );
    // A truncate takes the emitted window out; 10:01 was never emitted, so nothing for it.
    let out = run(&mut c, &store, &[SourceEvent::Truncate]);
    assert_eq!(
        out.changes,
        vec![RowChange {
            key: vec![w0.clone()],
            row: None
        }]
    );
    assert_eq!(out.rows_delta, -1);
    // Event time starts over: 10:01 opens again and closes with a later event.
    let out = run(
        &mut c,
        &store,
        &[
            SourceEvent::Upsert(row(5, "2024-03-01 10:01:20", 3)),
            SourceEvent::Upsert(row(6, "2024-03-01 10:02:00", 4)),
        ],
    );
    assert_eq!(
        out.changes,
        vec![RowChange {
            key: vec![w1.clone()],
            row: Some(vec![w1, Value::Int(1), Value::Int(3)])
        }]
    );
    // EMIT AFTER WATERMARK needs windows that close, and other EMITs are refused.
    for (sql, why) in [
        ("CREATE MATERIALIZED VIEW x AS SELECT window_start, count() AS n FROM tumble(ev, at, 1m) GROUP BY window_start EMIT AFTER WATERMARK", "needs windows that close"),
        ("CREATE MATERIALIZED VIEW x AS SELECT window_start, count() AS n FROM tumble(ev, at, 1m) GROUP BY window_start EMIT STREAM", "other than EMIT AFTER WATERMARK"),
        ("CREATE MATERIALIZED VIEW x AS SELECT window_start, count() AS n FROM tumble(ev, at, 1m) GROUP BY window_start EMIT AFTER WATERMARK AND DELAY 2s SETTINGS allowed_lateness='0s'", "AND DELAY"),
    ] {
        let mut cat = Catalog::default();
        let ch = cat.plan(stream_sql).expect("stream");
        cat.apply(1, stream_sql, ch);
        let e = cat.plan(sql).err().unwrap_or_else(|| panic!("accepted: {sql}"));
        assert!(e.message.contains(why), "{sql}: {}", e.message);
    }
    // A window whose row cannot be computed when it closes is left out, with the reason.
    let (def2, _) = plan_over(stream_sql, "CREATE MATERIALIZED VIEW big AS SELECT window_start, sum(v) AS total FROM tumble(ev, at, 1m) GROUP BY window_start EMIT AFTER WATERMARK SETTINGS allowed_lateness='0s'");
    let mut big = ViewCore::new(def2, &stream, HashMap::new()).expect("core");
    let store2 = Store::default();
    run(
        &mut big,
        &store2,
        &[
            SourceEvent::Upsert(row(1, "2024-03-01 10:00:05", i64::MAX)),
            SourceEvent::Upsert(row(2, "2024-03-01 10:00:06", 1)),
        ],
    );
    let out = run(
        &mut big,
        &store2,
        &[SourceEvent::Upsert(row(3, "2024-03-01 10:01:00", 1))],
    );
    assert!(out.changes.is_empty(), "{:?}", out.changes);
    assert_eq!(out.group_errors.len(), 1, "{:?}", out.group_errors);
    assert!(
        out.group_errors[0].1.contains("does not fit"),
        "{:?}",
        out.group_errors
    );
    // A column or alias named emit is a name, not a clause; a misplaced EMIT says where it goes.
    let (named, _) = plan_over(stream_sql, "CREATE MATERIALIZED VIEW x AS SELECT window_start, count() AS emit, max(emit.v) AS top FROM tumble(ev, at, 1m) AS emit GROUP BY window_start");
    assert!(!named.plan.emit_final);
    let mut cat = Catalog::default();
    let ch = cat.plan(stream_sql).expect("stream");
    cat.apply(1, stream_sql, ch);
    let e = cat
        .plan("CREATE MATERIALIZED VIEW x AS SELECT window_start, count() AS n FROM tumble(ev, at, 1m) EMIT AFTER WATERMARK GROUP BY window_start SETTINGS allowed_lateness='0s'")
        .expect_err("misplaced");
    assert!(
        e.message.contains("EMIT goes after GROUP BY"),
        "{}",
        e.message
    );
    // EMIT CHANGELOG is what a view does anyway.
    let (plain, _) = plan_over(stream_sql, "CREATE MATERIALIZED VIEW x AS SELECT window_start, count() AS n FROM tumble(ev, at, 1m) GROUP BY window_start EMIT CHANGELOG SETTINGS allowed_lateness='0s'");
    assert!(!plain.plan.emit_final && plain.plan.window.is_some());
}

/// `window_retention`: a closed window leaves the view and the central state once the
/// watermark is that far past its end; a late change to it stays late; a resync agrees.
#[test]
fn closed_windows_leave_the_view_after_their_retention() {
    let stream_sql = "CREATE EXTERNAL STREAM ev(id int64, at datetime64(3), v int64) SETTINGS type='kafka', brokers='b:1', topic='t', data_format='Debezium', primary_key='id'";
    let view_sql = "CREATE MATERIALIZED VIEW w AS SELECT window_start, count() AS n FROM tumble(ev, at, 1m) GROUP BY window_start SETTINGS allowed_lateness='0s', window_retention='2m'";
    let (def, stream) = plan_over(stream_sql, view_sql);
    assert_eq!(
        def.plan.window.as_ref().and_then(|w| w.retention_us),
        Some(120_000_000)
    );
    let mut c = ViewCore::new(def.clone(), &stream, HashMap::new()).expect("core");
    let store = Store::default();
    let ts = |s: &str| Value::Timestamp(catalog::parse_timestamp(s).expect("ts"));
    let row = |id: i64, at: &str| vec![Value::Int(id), ts(at), Value::Int(1)];
    let start = |m: i64| ts(&format!("2024-03-01 10:{m:02}:00"));
    // One event in each minute 10:00 to 10:05: 10:00 to 10:04 close, 10:05 is open. The
    // watermark is 10:05:10: 10:00 to 10:02 are past their retention, but a window leaves
    // only once it was closed (and so emitted) in an earlier batch.
    let events: Vec<SourceEvent> = (0..6)
        .map(|m| SourceEvent::Upsert(row(m, &format!("2024-03-01 10:{m:02}:10"))))
        .collect();
    let out = run(&mut c, &store, &events);
    assert!(
        out.changes.iter().all(|ch| ch.row.is_some()),
        "{:?}",
        out.changes
    );
    assert_eq!(out.changes.len(), 6);
    // Time moves on to 10:06:30: windows ending at or before 10:04:30 leave (10:00 to 10:03,
    // each in the view), and a late change to 10:00 stays late.
    let out = run(
        &mut c,
        &store,
        &[
            SourceEvent::Upsert(row(6, "2024-03-01 10:06:30")),
            SourceEvent::Upsert(row(7, "2024-03-01 10:00:30")),
        ],
    );
    assert_eq!(out.late_events, 1);
    let gone: Vec<Key> = out
        .changes
        .iter()
        .filter(|ch| ch.row.is_none())
        .map(|ch| ch.key.clone())
        .collect();
    assert_eq!(
        gone,
        (0..4).map(|m| vec![start(m)]).collect::<Vec<_>>(),
        "{:?}",
        out.changes
    );
    assert_eq!(out.rows_delta, 1 - 4, "10:06 comes, 10:00 to 10:03 go");
    assert_eq!(
        store.groups.borrow().len(),
        3,
        "the evicted windows' state is gone"
    );
    // A restart lists what the replicas hold.
    let mut again =
        ViewCore::new(def.clone(), &stream, store.groups.borrow().clone()).expect("core");
    let keys: Vec<Key> = again
        .all_rows()
        .expect("rows")
        .into_iter()
        .map(|ch| ch.key)
        .collect();
    assert_eq!(keys, vec![vec![start(4)], vec![start(5)], vec![start(6)]]);
    // Under EMIT AFTER WATERMARK a window past its retention still shows its final row
    // before it leaves, even when it closes that late.
    let (final_def, _) = plan_over(stream_sql, "CREATE MATERIALIZED VIEW f AS SELECT window_start, count() AS n FROM tumble(ev, at, 1m) GROUP BY window_start EMIT AFTER WATERMARK SETTINGS allowed_lateness='0s', window_retention='0s'");
    let mut f = ViewCore::new(final_def, &stream, HashMap::new()).expect("core");
    let fstore = Store::default();
    run(
        &mut f,
        &fstore,
        &[SourceEvent::Upsert(row(1, "2024-03-01 10:00:10"))],
    );
    let out = run(
        &mut f,
        &fstore,
        &[SourceEvent::Upsert(row(2, "2024-03-01 12:00:00"))],
    );
    assert_eq!(
        out.changes,
        vec![RowChange {
            key: vec![start(0)],
            row: Some(vec![start(0), Value::Int(1)])
        }]
    );
    let out = run(
        &mut f,
        &fstore,
        &[SourceEvent::Upsert(row(3, "2024-03-01 12:00:01"))],
    );
    assert_eq!(
        out.changes,
        vec![RowChange {
            key: vec![start(0)],
            row: None
        }]
    );
    assert_eq!(out.rows_delta, -1);
    // It needs windows that close.
    let mut cat = Catalog::default();
    let ch = cat.plan(stream_sql).expect("stream");
    cat.apply(1, stream_sql, ch);
    let e = cat
        .plan("CREATE MATERIALIZED VIEW x AS SELECT window_start, count() AS n FROM tumble(ev, at, 1m) GROUP BY window_start SETTINGS window_retention='1h'")
        .expect_err("refused");
    assert!(
        e.message
            .contains("window_retention is for windows that close"),
        "{}",
        e.message
    );
}
