//! Prometheus text exposition of a central worker's views at `/metrics` (`--metrics-listen`):
//! progress, dead letters, stalled partitions, and where each region stands in the change log.
//! Rendered from the same report the worker sends the coordinator.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use meridian_proto::v1 as pb;
use tokio::sync::watch;

fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The text exposition of `report`, `now_ms` being the wall clock.
pub fn render(report: &pb::CentralReport, now_ms: i64) -> String {
    let mut out = String::new();
    let mut metric = |name: &str, help: &str, kind: &str, rows: Vec<(String, String)>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in rows {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    };
    let view = |v: &pb::ViewReport| format!("view=\"{}\"", label(&v.view));
    let per_view = |f: &dyn Fn(&pb::ViewReport) -> String| {
        report
            .views
            .iter()
            .map(|v| (view(v), f(v)))
            .collect::<Vec<_>>()
    };
    metric(
        "meridian_view_seq",
        "Last change batch of the view's change log.",
        "gauge",
        per_view(&|v| v.seq.to_string()),
    );
    metric(
        "meridian_view_events_total",
        "Source messages consumed, dead letters included.",
        "counter",
        per_view(&|v| v.events.to_string()),
    );
    metric(
        "meridian_view_dead_letters_total",
        "Source messages that could not be decoded or evaluated.",
        "counter",
        per_view(&|v| v.dead_letters.to_string()),
    );
    metric(
        "meridian_view_source_bytes_total",
        "Bytes of the source messages consumed (keys and values).",
        "counter",
        per_view(&|v| v.source_bytes.to_string()),
    );
    metric(
        "meridian_view_rows",
        "Rows the view holds now.",
        "gauge",
        per_view(&|v| v.view_rows.to_string()),
    );
    metric(
        "meridian_view_bytes",
        "Size of the view's rows (8 bytes a number, the length of a string); over source bytes it is the reduction ratio R.",
        "gauge",
        per_view(&|v| v.view_bytes.to_string()),
    );
    metric(
        "meridian_view_late_events_total",
        "Changes to a closed window, counted and not applied (views with allowed_lateness).",
        "counter",
        per_view(&|v| v.late_events.to_string()),
    );
    metric(
        "meridian_view_ok",
        "1 when the view's actor runs without error.",
        "gauge",
        per_view(&|v| u8::from(v.error.is_empty()).to_string()),
    );
    metric(
        "meridian_view_stalled_partitions",
        "Partitions the view is behind on and made no progress between two checks.",
        "gauge",
        per_view(&|v| v.stalled.len().to_string()),
    );
    let stalled = |f: &dyn Fn(&pb::StalledPartition) -> String| {
        report
            .views
            .iter()
            .flat_map(|v| {
                v.stalled.iter().map(move |s| {
                    (
                        format!(
                            "{},topic=\"{}\",partition=\"{}\"",
                            view(v),
                            label(&s.topic),
                            s.partition
                        ),
                        f(s),
                    )
                })
            })
            .collect::<Vec<_>>()
    };
    metric(
        "meridian_view_stalled_seconds",
        "How long a stalled partition has made no progress.",
        "gauge",
        stalled(&|s| ((now_ms - s.since_ms).max(0) / 1000).to_string()),
    );
    metric(
        "meridian_view_stalled_behind_messages",
        "Messages between a stalled partition's position and its high watermark.",
        "gauge",
        stalled(&|s| (s.high_watermark - s.offset).max(0).to_string()),
    );
    let shipping = |f: &dyn Fn(&pb::ViewReport, &pb::ShipStatus) -> String| {
        report
            .views
            .iter()
            .flat_map(|v| {
                v.shipping.iter().map(move |sh| {
                    (
                        // The change topic (a view read by another view) is a target
                        // like a region.
                        if sh.topic.is_empty() {
                            format!("{},region=\"{}\"", view(v), label(&sh.region))
                        } else {
                            format!("{},topic=\"{}\"", view(v), label(&sh.topic))
                        },
                        f(v, sh),
                    )
                })
            })
            .collect::<Vec<_>>()
    };
    metric(
        "meridian_ship_acked_seq",
        "The region's applied seq in the change log's current epoch.",
        "gauge",
        shipping(&|_, sh| sh.acked_seq.to_string()),
    );
    metric(
        "meridian_ship_behind_batches",
        "Change batches the region has yet to apply.",
        "gauge",
        shipping(&|v, sh| v.seq.saturating_sub(sh.acked_seq).to_string()),
    );
    metric(
        "meridian_ship_epoch",
        "The change log's epoch.",
        "gauge",
        shipping(&|_, sh| sh.epoch.to_string()),
    );
    out
}

/// Serves `/metrics` on `addr` from the worker's latest report until `shutdown` flips.
pub async fn serve(
    addr: SocketAddr,
    report: Arc<Mutex<pb::CentralReport>>,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    use axum::routing::get;
    let app = axum::Router::new()
        .route("/healthz", get(|| async { "Ok.\n" }))
        .route(
            "/metrics",
            get(move || {
                let report = report.clone();
                async move {
                    let now_ms = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as i64);
                    let body = render(&report.lock().unwrap_or_else(|p| p.into_inner()), now_ms);
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4",
                        )],
                        body,
                    )
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "central worker metrics listening");
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = shutdown.changed().await;
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stalls_and_shipping_are_exposed() {
        let report = pb::CentralReport {
            worker: "central-1".into(),
            views: vec![pb::ViewReport {
                view: "v\"1".into(),
                seq: 9,
                events: 100,
                stalled: vec![pb::StalledPartition {
                    partition: 2,
                    offset: 40,
                    high_watermark: 90,
                    since_ms: 1_000,
                    topic: "orders".into(),
                }],
                shipping: vec![
                    pb::ShipStatus {
                        region: "eu".into(),
                        acked_seq: 7,
                        epoch: 5,
                        ..Default::default()
                    },
                    pb::ShipStatus {
                        topic: "meridian.changes.1.2.v".into(),
                        acked_seq: 8,
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }],
            ..Default::default()
        };
        let text = render(&report, 31_000);
        for line in [
            "meridian_view_seq{view=\"v\\\"1\"} 9",
            "meridian_view_events_total{view=\"v\\\"1\"} 100",
            "meridian_view_stalled_partitions{view=\"v\\\"1\"} 1",
            "meridian_view_stalled_seconds{view=\"v\\\"1\",topic=\"orders\",partition=\"2\"} 30",
            "meridian_view_stalled_behind_messages{view=\"v\\\"1\",topic=\"orders\",partition=\"2\"} 50",
            "meridian_ship_acked_seq{view=\"v\\\"1\",topic=\"meridian.changes.1.2.v\"} 8",
            "meridian_ship_acked_seq{view=\"v\\\"1\",region=\"eu\"} 7",
            "meridian_ship_behind_batches{view=\"v\\\"1\",region=\"eu\"} 2",
            "meridian_ship_epoch{view=\"v\\\"1\",region=\"eu\"} 5",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}:\n{text}");
        }
    }
}
