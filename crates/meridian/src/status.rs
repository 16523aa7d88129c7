//! The admin commands: `sql`, `query` and `status`.

use std::time::Duration;

use anyhow::Context;
use meridian_proto::v1 as pb;
use meridian_proto::v1::coordinator_client::CoordinatorClient;
use serde_json::json;
use tonic::transport::{Channel, Endpoint};

pub async fn connect(url: &str) -> anyhow::Result<CoordinatorClient<Channel>> {
    let endpoint = Endpoint::from_shared(url.to_string())
        .with_context(|| format!("bad coordinator address '{url}'"))?;
    let channel = endpoint
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(30))
        .connect()
        .await
        .with_context(|| format!("cannot reach the coordinator at {url} (is `meridian dev` or `meridian coordinator` running?)"))?;
    Ok(CoordinatorClient::new(channel))
}

/// `meridian central drain NAME`.
pub async fn drain(url: &str, worker: &str) -> anyhow::Result<()> {
    let mut c = connect(url).await?;
    let resp = c
        .drain(pb::DrainRequest {
            worker: worker.to_string(),
        })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner();
    println!("{}", resp.message);
    Ok(())
}

/// A change log's epoch as `lease.generation`.
pub fn epoch_text(epoch: u64) -> String {
    format!("{}.{}", epoch >> 32, epoch & 0xffff_ffff)
}

pub async fn sql(url: &str, statement: &str) -> anyhow::Result<()> {
    let mut c = connect(url).await?;
    let resp = c
        .execute(pb::ExecuteRequest {
            sql: statement.to_string(),
        })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner();
    if !resp.columns.is_empty() {
        let rows: Vec<Vec<String>> = resp.rows.into_iter().map(|r| r.cells).collect();
        print!(
            "{}",
            table(
                &resp.columns.iter().map(String::as_str).collect::<Vec<_>>(),
                &rows
            )
        );
    }
    println!("{}", resp.message);
    Ok(())
}

pub async fn query(
    url: &str,
    region: &str,
    sql: &str,
    options: &client::QueryOptions,
) -> anyhow::Result<()> {
    let client = client::Client::discover(url, region).await?;
    let r = client.query_with(sql, options).await?;
    print!("{}", result_table(&r));
    let pos: Vec<String> = r
        .positions
        .iter()
        .map(|p| format!("{}@{}", p.view, p.applied_seq))
        .collect();
    println!(
        "{} rows from {} node {} (applied: {}; token {})",
        r.rows.len(),
        r.region,
        r.node_id,
        pos.join(", "),
        r.token.as_ref().map_or("-".into(), ToString::to_string)
    );
    Ok(())
}

pub fn cell(v: &client::Value) -> String {
    match v {
        client::Value::Null => "NULL".into(),
        client::Value::Int(i) => i.to_string(),
        client::Value::Float(f) => f.to_string(),
        client::Value::Text(s) => s.clone(),
        client::Value::Bool(b) => b.to_string(),
        client::Value::Date(d) => d.to_string(),
        client::Value::Timestamp(t) => t.to_string(),
        client::Value::Decimal(d) => d.to_string(),
        client::Value::List(items) => {
            format!("[{}]", items.iter().map(cell).collect::<Vec<_>>().join(","))
        }
    }
}

/// A query result as a text table.
pub fn result_table(r: &client::QueryResult) -> String {
    let headers: Vec<&str> = r.columns.iter().map(|c| c.name.as_str()).collect();
    let rows: Vec<Vec<String>> = r
        .rows
        .iter()
        .map(|row| row.iter().map(cell).collect())
        .collect();
    table(&headers, &rows)
}

/// A plain text table with a header line.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ");
        s.truncate(s.trim_end().len());
        s.push('\n');
        s
    };
    let mut out = line(headers.to_vec());
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

pub async fn fetch(url: &str) -> anyhow::Result<pb::ClusterStatus> {
    let mut c = connect(url).await?;
    Ok(c.status(pb::StatusRequest {})
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner())
}

pub async fn status(url: &str, as_json: bool) -> anyhow::Result<()> {
    let s = fetch(url).await?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&to_json(&s))?);
    } else {
        print!("{}", render(&s));
    }
    Ok(())
}

/// `status --check`: the problems, one per line on standard error (a JSON array on standard
/// output with `--json`), and an error when there is one.
pub async fn check(url: &str, as_json: bool, max_staleness_ms: i64) -> anyhow::Result<()> {
    let s = fetch(url).await?;
    let problems = crate::check::problems(&s, max_staleness_ms);
    if as_json {
        println!("{}", serde_json::to_string_pretty(&problems)?);
    } else if problems.is_empty() {
        println!(
            "ok: {} regions, {} views, every replica within {max_staleness_ms} ms of its source",
            s.regions.len(),
            s.views.len()
        );
    } else {
        for p in &problems {
            eprintln!("{p}");
        }
    }
    anyhow::ensure!(problems.is_empty(), "{} problems found", problems.len());
    Ok(())
}

/// The catalog's id of `view` when a node still serves an older incarnation of it (after
/// `CREATE OR REPLACE`, until the new one has caught up and swapped in).
fn replaced_by(s: &pb::ClusterStatus, view: &str, view_id: u64) -> Option<u64> {
    s.views
        .iter()
        .find(|v| v.view.eq_ignore_ascii_case(view))
        .map(|v| v.view_id)
        .filter(|&id| id > view_id)
}

pub fn to_json(s: &pb::ClusterStatus) -> serde_json::Value {
    let regions: Vec<_> = s
        .regions
        .iter()
        .map(|r| {
            let nodes: Vec<_> = r
                .nodes
                .iter()
                .filter_map(|n| n.status.as_ref().map(|st| (n, st)))
                .map(|(n, st)| {
                    let views: Vec<_> = st
                        .positions
                        .iter()
                        .map(|p| json!({"view": p.view, "view_id": p.view_id, "applied_seq": p.applied_seq, "produced_at_ms": p.produced_at_ms, "applied_at_ms": p.applied_at_ms, "lag_ms": (p.applied_at_ms - p.produced_at_ms).max(0), "epoch": p.epoch, "fresh_at_ms": p.fresh_at_ms, "staleness_ms": (p.staleness_ms >= 0).then_some(p.staleness_ms), "replaced_by": replaced_by(s, &p.view, p.view_id)}))
                        .collect();
                    json!({
                        "node_id": st.node_id, "role": st.role, "term": st.term, "leader_id": st.leader_id,
                        "commit_index": st.commit_index, "applied_index": st.applied_index, "log_first_index": st.log_first_index, "started_at_ms": st.started_at_ms,
                        "apply_error": st.apply_error, "serving": st.apply_error.is_empty(),
                        "grpc_addr": st.grpc_addr, "http_addr": st.http_addr,
                        "report_age_ms": n.report_age_ms, "views": views,
                    })
                })
                .collect();
            json!({"region": r.region, "nodes": nodes})
        })
        .collect();
    let views: Vec<_> = s
        .views
        .iter()
        .map(|v| {
            json!({
                "view": v.view, "view_id": v.view_id, "seq": v.seq, "log_first_seq": v.log_first_seq, "events": v.events, "dead_letters": v.dead_letters, "error": v.error,
                "owner": v.owner, "lease_epoch": v.lease_epoch, "events_per_s": v.events_per_s,
                "last_batch_at_ms": v.last_batch_at_ms,
                "source_bytes": v.source_bytes, "view_rows": v.view_rows, "view_bytes": v.view_bytes,
                "reduction": {"rows": ratio(v.view_rows, v.events), "bytes": ratio(v.view_bytes, v.source_bytes)},
                "plan": v.plan,
                "late_events": v.late_events, "watermark_us": v.watermark_us,
                "recent_dead_letters": v.recent_dead_letters.iter().map(|d| json!({"topic": d.topic, "partition": d.partition, "offset": d.offset, "reason": d.reason})).collect::<Vec<_>>(),
                "stalled": v.stalled.iter().map(|st| json!({"topic": st.topic, "partition": st.partition, "offset": st.offset, "high_watermark": st.high_watermark, "since_ms": st.since_ms})).collect::<Vec<_>>(),
                "shipping": v.shipping.iter().map(|sh| json!({"region": sh.region, "topic": sh.topic, "acked_seq": sh.acked_seq, "central_seq": v.seq, "epoch": sh.epoch, "error": sh.error, "last_reseed": sh.last_reseed})).collect::<Vec<_>>(),
            })
        })
        .collect();
    let catalog: Vec<_> = s
        .catalog
        .iter()
        .map(|e| json!({"id": e.id, "kind": e.kind, "name": e.name, "sql": e.sql}))
        .collect();
    let workers: Vec<_> = s
        .workers
        .iter()
        .map(|w| json!({"name": w.name, "session": format!("{:x}", w.session), "live": w.live, "draining": w.draining, "report_age_ms": w.report_age_ms, "views": w.views}))
        .collect();
    json!({"now_ms": s.now_ms, "regions": regions, "views": views, "catalog": catalog, "workers": workers})
}

pub fn render(s: &pb::ClusterStatus) -> String {
    let mut out = String::new();
    let mut rows = Vec::new();
    for r in &s.regions {
        for n in &r.nodes {
            let Some(st) = &n.status else { continue };
            let views = st
                .positions
                .iter()
                .map(|p| {
                    let stale = if p.staleness_ms >= 0 {
                        format!(", {} ms behind the source", p.staleness_ms)
                    } else {
                        String::new()
                    };
                    let replaced = match replaced_by(s, &p.view, p.view_id) {
                        Some(id) => format!(
                            " [still the replaced incarnation {}: id {id} has not caught up yet]",
                            p.view_id
                        ),
                        None => String::new(),
                    };
                    format!(
                        "{}@{} (lag {} ms{stale}){replaced}",
                        p.view,
                        p.applied_seq,
                        (p.applied_at_ms - p.produced_at_ms).max(0)
                    )
                })
                .collect::<Vec<_>>()
                .join(", ");
            let views = if st.apply_error.is_empty() {
                views
            } else {
                format!("NOT SERVING: {}; {views}", st.apply_error)
            };
            rows.push(vec![
                r.region.clone(),
                st.node_id.to_string(),
                st.role.clone(),
                st.term.to_string(),
                st.applied_index.to_string(),
                st.grpc_addr.clone(),
                st.http_addr.clone(),
                views,
            ]);
        }
    }
    if rows.is_empty() {
        out.push_str("no regional nodes have reported yet\n");
    } else {
        out.push_str(&table(
            &[
                "REGION",
                "NODE",
                "ROLE",
                "TERM",
                "RAFT_APPLIED",
                "GRPC",
                "HTTP",
                "VIEWS (applied seq, last batch lag)",
            ],
            &rows,
        ));
    }
    out.push('\n');
    let mut rows = Vec::new();
    for v in &s.views {
        let ship = v
            .shipping
            .iter()
            .map(|sh| {
                let target = if sh.topic.is_empty() {
                    sh.region.clone()
                } else {
                    format!("topic {}", sh.topic)
                };
                let mut out = format!(
                    "{}@{}/{} epoch {}",
                    target,
                    sh.acked_seq,
                    v.seq,
                    epoch_text(sh.epoch)
                );
                if !sh.error.is_empty() {
                    out.push_str(&format!(" ({})", sh.error));
                }
                if !sh.last_reseed.is_empty() {
                    out.push_str(&format!(" [re-seeded: {}]", sh.last_reseed));
                }
                out
            })
            .collect::<Vec<_>>()
            .join(", ");
        let age = if v.last_batch_at_ms > 0 {
            format!("{} ms ago", (s.now_ms - v.last_batch_at_ms).max(0))
        } else {
            "-".into()
        };
        rows.push(vec![
            v.view.clone(),
            if v.owner.is_empty() {
                "-".to_string()
            } else {
                format!("{} (lease {})", v.owner, v.lease_epoch)
            },
            v.seq.to_string(),
            format!("{} ({:.0}/s)", v.events, v.events_per_s),
            v.dead_letters.to_string(),
            format!(
                "{} rows, {}",
                v.view_rows,
                ratio(v.view_bytes, v.source_bytes)
                    .map_or_else(|| "-".to_string(), |r| format!("R={r:.2e}"))
            ),
            age,
            ship,
            {
                let mut problems: Vec<String> = v
                    .stalled
                    .iter()
                    .map(|st| {
                        format!(
                            "STALLED: partition {} of {} at offset {} of {} for {} s",
                            st.partition,
                            st.topic,
                            st.offset,
                            st.high_watermark,
                            (s.now_ms - st.since_ms).max(0) / 1000
                        )
                    })
                    .collect();
                if v.late_events > 0 {
                    problems.push(format!(
                        "{} late changes to closed windows (not applied)",
                        v.late_events
                    ));
                }
                if !v.error.is_empty() {
                    problems.push(v.error.clone());
                }
                problems.join("; ")
            },
        ]);
    }
    if rows.is_empty() {
        out.push_str("no materialized views\n");
    } else {
        out.push_str(&table(
            &[
                "VIEW",
                "OWNER",
                "SEQ",
                "EVENTS",
                "DEAD_LETTERS",
                "SIZE (R = view/source bytes)",
                "LAST_BATCH",
                "SHIPPED (region@acked/central seq, epoch)",
                "ERROR",
            ],
            &rows,
        ));
    }
    if !s.workers.is_empty() {
        out.push('\n');
        let rows: Vec<Vec<String>> = s
            .workers
            .iter()
            .map(|w| {
                vec![
                    w.name.clone(),
                    if !w.live {
                        format!("gone ({} s without a report)", w.report_age_ms / 1000)
                    } else if w.draining {
                        "draining".to_string()
                    } else {
                        "live".to_string()
                    },
                    w.views.join(", "),
                ]
            })
            .collect();
        out.push_str(&table(&["CENTRAL WORKER", "STATE", "VIEWS"], &rows));
    }
    for v in &s.views {
        for d in &v.recent_dead_letters {
            out.push_str(&format!(
                "dead letter in {}: {}[{}]@{}: {}\n",
                v.view, d.topic, d.partition, d.offset, d.reason
            ));
        }
    }
    out
}

/// The reduction ratio R = view / source (design notes: D_r / D_t); `None` before any source.
fn ratio(view: u64, source: u64) -> Option<f64> {
    (source > 0).then(|| view as f64 / source as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_still_serving_a_replaced_incarnation_says_so() {
        // A name the catalog spells otherwise is the same view (DuckDB folds case).
        let position = |view_id| pb::ViewPosition {
            view: if view_id == 3 { "V" } else { "v" }.into(),
            view_id,
            applied_seq: 9,
            ..Default::default()
        };
        let node = |id, view_id| pb::NodeReport {
            status: Some(pb::NodeStatusResponse {
                region: "eu".into(),
                node_id: id,
                positions: vec![position(view_id)],
                ..Default::default()
            }),
            report_age_ms: 0,
        };
        let s = pb::ClusterStatus {
            regions: vec![pb::RegionStatus {
                region: "eu".into(),
                nodes: vec![node(1, 3), node(2, 8), node(3, 9)],
            }],
            views: vec![pb::ViewReport {
                view: "v".into(),
                view_id: 8,
                ..Default::default()
            }],
            ..Default::default()
        };
        let json = to_json(&s);
        let replaced: Vec<&serde_json::Value> = json["regions"][0]["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .map(|n| &n["views"][0]["replaced_by"])
            .collect();
        assert_eq!(
            replaced,
            [
                &serde_json::json!(8),
                &serde_json::Value::Null,
                &serde_json::Value::Null
            ],
            "only an older incarnation is marked"
        );
        let text = render(&s);
        assert_eq!(
            text.matches("still the replaced incarnation 3: id 8 has not caught up yet")
                .count(),
            1,
            "{text}"
        );
    }
}
