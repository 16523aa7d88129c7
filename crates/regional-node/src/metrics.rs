//! Prometheus metrics of a regional node, served at `GET /metrics` on its HTTP port.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use meridian_proto::v1 as pb;

/// Counters of the read path.
#[derive(Debug, Default)]
pub struct QueryMetrics {
    queries: AtomicU64,
    errors: AtomicU64,
    micros: AtomicU64,
}

impl QueryMetrics {
    pub fn record_query(&self, elapsed: Duration, ok: bool) {
        self.queries.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.micros
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }
}

fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The text exposition format: one `# TYPE` line per metric, labels with region and node.
pub fn render(st: &pb::NodeStatusResponse, q: &QueryMetrics, now_ms: i64) -> String {
    let node = format!("region=\"{}\",node=\"{}\"", label(&st.region), st.node_id);
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, kind: &str, rows: Vec<(String, String)>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in rows {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    };
    gauge(
        "meridian_raft_term",
        "Current Raft term.",
        "gauge",
        vec![(node.clone(), st.term.to_string())],
    );
    gauge(
        "meridian_raft_is_leader",
        "1 when this node leads its region.",
        "gauge",
        vec![(node.clone(), u8::from(st.role == "leader").to_string())],
    );
    gauge(
        "meridian_node_serving",
        "1 when the node answers reads; 0 while its replica cannot apply a committed entry.",
        "gauge",
        vec![(
            node.clone(),
            u8::from(st.apply_error.is_empty()).to_string(),
        )],
    );
    gauge(
        "meridian_raft_commit_index",
        "Highest committed Raft index.",
        "gauge",
        vec![(node.clone(), st.commit_index.to_string())],
    );
    gauge(
        "meridian_raft_applied_index",
        "Highest Raft index applied to the replica.",
        "gauge",
        vec![(node.clone(), st.applied_index.to_string())],
    );
    gauge(
        "meridian_raft_log_first_index",
        "First index still in the Raft log.",
        "gauge",
        vec![(node.clone(), st.log_first_index.to_string())],
    );
    let per_view = |f: &dyn Fn(&pb::ViewPosition) -> String| {
        st.positions
            .iter()
            .map(|p| (format!("{node},view=\"{}\"", label(&p.view)), f(p)))
            .collect::<Vec<_>>()
    };
    gauge(
        "meridian_view_applied_seq",
        "Last change batch of the view applied here.",
        "gauge",
        per_view(&|p| p.applied_seq.to_string()),
    );
    gauge(
        "meridian_view_lag_ms",
        "From the central worker emitting the last applied batch to its apply here.",
        "gauge",
        per_view(&|p| (p.applied_at_ms - p.produced_at_ms).max(0).to_string()),
    );
    gauge(
        "meridian_view_age_ms",
        "Time since the last applied batch was emitted.",
        "gauge",
        per_view(&|p| (now_ms - p.produced_at_ms).max(0).to_string()),
    );
    let vouched: Vec<pb::ViewPosition> = st
        .positions
        .iter()
        .filter(|p| p.fresh_at_ms > 0)
        .cloned()
        .collect();
    gauge(
        "meridian_view_staleness_ms",
        "How far behind the source the replica may be: time since the moment up to which the central tier vouched it reflects every source message (only views it vouched for).",
        "gauge",
        vouched
            .iter()
            .map(|p| {
                (
                    format!("{node},view=\"{}\"", label(&p.view)),
                    (now_ms - p.fresh_at_ms).max(0).to_string(),
                )
            })
            .collect(),
    );
    gauge(
        "meridian_queries_total",
        "Read-only queries answered or refused.",
        "counter",
        vec![(node.clone(), q.queries.load(Ordering::Relaxed).to_string())],
    );
    gauge(
        "meridian_query_errors_total",
        "Queries refused or failed.",
        "counter",
        vec![(node.clone(), q.errors.load(Ordering::Relaxed).to_string())],
    );
    gauge(
        "meridian_query_seconds_total",
        "Time spent answering queries.",
        "counter",
        vec![(
            node,
            format!("{:.6}", q.micros.load(Ordering::Relaxed) as f64 / 1e6),
        )],
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_exposition_format() {
        let st = pb::NodeStatusResponse {
            region: "eu-west".into(),
            node_id: 2,
            role: "leader".into(),
            term: 3,
            positions: vec![pb::ViewPosition {
                view: "v\"1".into(),
                applied_seq: 7,
                produced_at_ms: 100,
                applied_at_ms: 130,
                view_id: 4,
                epoch: 1,
                fresh_at_ms: 90,
                staleness_ms: 0,
            }],
            ..Default::default()
        };
        let q = QueryMetrics::default();
        q.record_query(Duration::from_millis(5), true);
        q.record_query(Duration::from_millis(5), false);
        let text = render(&st, &q, 1_100);
        for line in [
            "meridian_raft_is_leader{region=\"eu-west\",node=\"2\"} 1",
            "meridian_view_applied_seq{region=\"eu-west\",node=\"2\",view=\"v\\\"1\"} 7",
            "meridian_view_lag_ms{region=\"eu-west\",node=\"2\",view=\"v\\\"1\"} 30",
            "meridian_view_age_ms{region=\"eu-west\",node=\"2\",view=\"v\\\"1\"} 1000",
            "meridian_view_staleness_ms{region=\"eu-west\",node=\"2\",view=\"v\\\"1\"} 1010",
            "meridian_queries_total{region=\"eu-west\",node=\"2\"} 2",
            "meridian_query_errors_total{region=\"eu-west\",node=\"2\"} 1",
            "# TYPE meridian_queries_total counter",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line} in:\n{text}"
            );
        }
    }
}
