//! `meridian status --check`: what is wrong with the cluster, for scripts and probes. Exits
//! non-zero when a view is in error or stalled, a region has no leader, a node is not serving
//! or has stopped reporting, or a replica is staler than the bound.

use meridian_proto::v1 as pb;

/// A node whose last report is older than this counts as gone.
pub const REPORT_AGE_MAX_MS: i64 = 15_000;

/// Every problem found in `s`, one line each (empty: healthy). A replica's staleness is the
/// node's at its last report plus the report's age.
pub fn problems(s: &pb::ClusterStatus, max_staleness_ms: i64) -> Vec<String> {
    let mut out = Vec::new();
    for v in &s.views {
        if !v.error.is_empty() {
            out.push(format!("view '{}' is in error: {}", v.view, v.error));
        }
        for st in &v.stalled {
            out.push(format!(
                "view '{}' is stalled on partition {} of topic '{}' at offset {} (high watermark {})",
                v.view, st.partition, st.topic, st.offset, st.high_watermark
            ));
        }
        for sh in &v.shipping {
            if !sh.topic.is_empty() {
                if !sh.error.is_empty() {
                    out.push(format!(
                        "view '{}' cannot write its change topic '{}': {}",
                        v.view, sh.topic, sh.error
                    ));
                }
                continue;
            }
            if !sh.error.is_empty() {
                out.push(format!(
                    "view '{}' cannot ship to region '{}': {}",
                    v.view, sh.region, sh.error
                ));
            }
            // A region the view ships to whose nodes the coordinator has not heard from.
            if !s
                .regions
                .iter()
                .any(|r| r.region == sh.region && r.nodes.iter().any(|n| n.status.is_some()))
            {
                out.push(format!(
                    "region '{}' (view '{}') has no node reporting",
                    sh.region, v.view
                ));
            }
        }
    }
    for r in &s.regions {
        let reporting: Vec<(&pb::NodeReport, &pb::NodeStatusResponse)> = r
            .nodes
            .iter()
            .filter_map(|n| n.status.as_ref().map(|st| (n, st)))
            .collect();
        let live: Vec<_> = reporting
            .iter()
            .filter(|(n, _)| n.report_age_ms <= REPORT_AGE_MAX_MS)
            .collect();
        for (n, st) in &reporting {
            if n.report_age_ms > REPORT_AGE_MAX_MS {
                out.push(format!(
                    "region '{}' node {} has not reported for {} s",
                    r.region,
                    st.node_id,
                    n.report_age_ms / 1000
                ));
            }
        }
        if !live.iter().any(|(_, st)| st.role == "leader") {
            out.push(format!("region '{}' has no leader", r.region));
        }
        for (n, st) in &live {
            if !st.apply_error.is_empty() {
                out.push(format!(
                    "region '{}' node {} serves no reads: {}",
                    r.region, st.node_id, st.apply_error
                ));
            }
            for p in &st.positions {
                if p.staleness_ms < 0 {
                    continue;
                }
                let staleness = p.staleness_ms + n.report_age_ms;
                if staleness > max_staleness_ms {
                    out.push(format!(
                        "region '{}' node {}: view '{}' is {} ms behind its source (bound {} ms)",
                        r.region, st.node_id, p.view, staleness, max_staleness_ms
                    ));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u64, role: &str, age: i64, staleness: i64) -> pb::NodeReport {
        pb::NodeReport {
            status: Some(pb::NodeStatusResponse {
                node_id: id,
                role: role.into(),
                positions: vec![pb::ViewPosition {
                    view: "v".into(),
                    staleness_ms: staleness,
                    ..Default::default()
                }],
                ..Default::default()
            }),
            report_age_ms: age,
        }
    }

    fn cluster(nodes: Vec<pb::NodeReport>) -> pb::ClusterStatus {
        pb::ClusterStatus {
            regions: vec![pb::RegionStatus {
                region: "eu".into(),
                nodes,
            }],
            views: vec![pb::ViewReport {
                view: "v".into(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn a_healthy_cluster_has_no_problems_and_each_fault_is_named() {
        let healthy = cluster(vec![
            node(1, "leader", 500, 800),
            node(2, "follower", 500, 900),
            node(3, "follower", 500, -1),
        ]);
        assert_eq!(problems(&healthy, 30_000), Vec::<String>::new());

        let no_leader = cluster(vec![
            node(1, "follower", 500, 800),
            node(2, "candidate", 500, 800),
            // A leader that stopped reporting does not count.
            node(3, "leader", 60_000, 800),
        ]);
        let p = problems(&no_leader, 30_000);
        assert!(p.iter().any(|l| l == "region 'eu' has no leader"), "{p:?}");
        assert!(
            p.iter()
                .any(|l| l.contains("node 3 has not reported for 60 s")),
            "{p:?}"
        );

        let stale = cluster(vec![
            node(1, "leader", 500, 800),
            node(2, "follower", 2_000, 29_000),
            node(3, "follower", 500, 800),
        ]);
        let p = problems(&stale, 30_000);
        assert_eq!(
            p,
            vec!["region 'eu' node 2: view 'v' is 31000 ms behind its source (bound 30000 ms)"]
        );

        let mut unshipped = healthy.clone();
        unshipped.views[0].shipping = vec![
            pb::ShipStatus {
                region: "eu".into(),
                error: "push timed out".into(),
                ..Default::default()
            },
            pb::ShipStatus {
                region: "us".into(),
                ..Default::default()
            },
        ];
        assert_eq!(
            problems(&unshipped, 30_000),
            vec![
                "view 'v' cannot ship to region 'eu': push timed out",
                "region 'us' (view 'v') has no node reporting"
            ]
        );

        let mut broken = healthy.clone();
        broken.views[0].error = "decode failed".into();
        broken.views[0].stalled.push(pb::StalledPartition {
            partition: 2,
            offset: 10,
            high_watermark: 50,
            topic: "orders".into(),
            ..Default::default()
        });
        if let Some(st) = broken.regions[0].nodes[1].status.as_mut() {
            st.apply_error = "cannot apply raft entry 9".into();
        }
        let p = problems(&broken, 30_000);
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(p[0].contains("in error: decode failed"));
        assert!(p[1].contains("stalled on partition 2 of topic 'orders' at offset 10"));
        assert!(p[2].contains("node 2 serves no reads"));
    }
}
