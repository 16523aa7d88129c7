//! What a worker reports of one view to the coordinator.

use meridian_proto::v1 as pb;
use tokio::time::Instant;

use super::RunningView;

pub(super) fn report_view(view_id: u64, v: &mut RunningView) -> pb::ViewReport {
    let s = v.status.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let now = Instant::now();
    let (events_then, then) = v.rate_mark;
    let secs = now.duration_since(then).as_secs_f64();
    let events_per_s = if secs > 0.0 && events_then > 0 {
        s.events.saturating_sub(events_then) as f64 / secs
    } else {
        0.0
    };
    v.rate_mark = (s.events, now);
    let mut shipping: Vec<pb::ShipStatus> = v
        .shippers
        .iter()
        .map(|(region, sh)| {
            let st = sh.state.lock().unwrap_or_else(|p| p.into_inner()).clone();
            pb::ShipStatus {
                region: region.clone(),
                acked_seq: st.acked_seq,
                error: st.error,
                epoch: st.epoch,
                last_reseed: st.last_reseed,
                topic: String::new(),
            }
        })
        .collect();
    shipping.sort_by(|a, b| a.region.cmp(&b.region));
    if let Some(sink) = &v.sink {
        let st = sink.state.lock().unwrap_or_else(|p| p.into_inner()).clone();
        shipping.push(pb::ShipStatus {
            region: String::new(),
            acked_seq: st.acked_seq,
            error: st.error,
            epoch: st.epoch,
            last_reseed: st.last_reseed,
            topic: sink.topic.clone(),
        });
    }
    pb::ViewReport {
        view: v.name.clone(),
        seq: s.seq,
        events: s.events,
        dead_letters: s.dead_letters,
        recent_dead_letters: s
            .recent_dead_letters
            .iter()
            .map(|d| pb::DeadLetter {
                topic: d.topic.clone(),
                partition: d.partition,
                offset: d.offset,
                reason: d.reason.clone(),
            })
            .collect(),
        error: s.error,
        shipping,
        last_batch_at_ms: s.last_batch_at_ms,
        view_id,
        log_first_seq: v.truncated_to + 1,
        source_bytes: s.source_bytes,
        view_rows: s.view_rows,
        view_bytes: s.view_bytes,
        plan: v.plan.clone(),
        late_events: s.late_events,
        watermark_us: s.watermark_us.unwrap_or(0),
        events_per_s,
        owner: String::new(),
        lease_epoch: v.lease.borrow().epoch,
        stalled: s
            .stalled
            .iter()
            .map(|(topic, st)| pb::StalledPartition {
                partition: st.partition,
                offset: st.offset,
                high_watermark: st.high_watermark,
                since_ms: st.since_ms,
                topic: topic.clone(),
            })
            .collect(),
    }
}
