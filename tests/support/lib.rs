//! Harness for the end-to-end tests: a real Kafka-protocol broker (tansu) and every Meridian
//! role as its own process, talking over loopback.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::Value as Json;

/// The sample view of the orders stream.
pub const VIEW: &str = "revenue_by_country";
/// How long a test waits for the replicas to catch up.
pub const CONVERGE_TIMEOUT: Duration = Duration::from_secs(240);

pub struct NodeAddr {
    pub region: String,
    pub id: u64,
    pub grpc: String,
    pub http: String,
}

/// Coordinator, central worker and two regions of three nodes, each a process.
pub struct Cluster<'w> {
    work: &'w Workdir,
    pub coordinator: String,
    coordinator_proc: Option<Proc>,
    /// Central workers by name (`central` is the one every cluster starts with).
    centrals: Vec<(String, Option<Proc>)>,
    central_starts: usize,
    nodes: Vec<(NodeAddr, Option<Proc>)>,
    /// Extra arguments of every `meridian region` process.
    region_args: Vec<String>,
    /// Extra arguments of the `meridian central` process.
    central_args: Vec<String>,
}

pub const REGIONS: [&str; 2] = ["eu-west", "us-east"];

impl<'w> Cluster<'w> {
    pub fn start(work: &'w Workdir) -> Cluster<'w> {
        Cluster::start_with(work, &[], &[])
    }

    /// A cluster whose regional nodes get `region_args` and central worker `central_args` too.
    pub fn start_with(
        work: &'w Workdir,
        region_args: &[&str],
        central_args: &[&str],
    ) -> Cluster<'w> {
        let port = free_port();
        let coordinator = format!("http://127.0.0.1:{port}");
        let bin = meridian_bin();
        let coordinator_proc = spawn(
            work,
            "coordinator",
            Command::new(&bin)
                .args([
                    "coordinator",
                    "--listen",
                    &format!("127.0.0.1:{port}"),
                    "--data-dir",
                ])
                .arg(work.path.join("coordinator")),
        );
        wait_for_port(port, Duration::from_secs(20)).expect("coordinator listens");
        let mut cluster = Cluster {
            work,
            coordinator,
            coordinator_proc: Some(coordinator_proc),
            centrals: Vec::new(),
            central_starts: 0,
            nodes: Vec::new(),
            region_args: region_args.iter().map(|a| a.to_string()).collect(),
            central_args: central_args.iter().map(|a| a.to_string()).collect(),
        };
        for region in REGIONS {
            let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
            let peers = ports
                .iter()
                .enumerate()
                .map(|(i, (g, _))| format!("{}=http://127.0.0.1:{g}", i + 1))
                .collect::<Vec<_>>()
                .join(",");
            for (i, (g, h)) in ports.iter().enumerate() {
                let addr = NodeAddr {
                    region: region.into(),
                    id: i as u64 + 1,
                    grpc: format!("http://127.0.0.1:{g}"),
                    http: format!("http://127.0.0.1:{h}"),
                };
                cluster.nodes.push((addr, None));
                let idx = cluster.nodes.len() - 1;
                cluster.start_node(idx, &peers);
            }
        }
        cluster.start_central();
        cluster
    }

    fn node_peers(&self, region: &str) -> String {
        self.nodes
            .iter()
            .filter(|(a, _)| a.region == region)
            .map(|(a, _)| format!("{}={}", a.id, a.grpc))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn start_node(&mut self, idx: usize, peers: &str) {
        self.start_node_env(idx, peers, &[]);
    }

    fn start_node_env(&mut self, idx: usize, peers: &str, env: &[(&str, &str)]) {
        let (a, _) = &self.nodes[idx];
        let http = a.http.trim_start_matches("http://").to_string();
        let name = format!("{}-{}", a.region, a.id);
        let proc = spawn(
            self.work,
            &name,
            Command::new(meridian_bin())
                .args([
                    "region",
                    "--region",
                    &a.region,
                    "--node-id",
                    &a.id.to_string(),
                    "--peers",
                    peers,
                    "--http-listen",
                    &http,
                    "--coordinator",
                    &self.coordinator,
                    "--data-dir",
                ])
                .arg(self.work.path.join(&name))
                .args(&self.region_args)
                .envs(env.iter().copied()),
        );
        self.nodes[idx].1 = Some(proc);
    }

    pub fn nodes(&self) -> impl Iterator<Item = &NodeAddr> {
        self.nodes.iter().map(|(a, _)| a)
    }

    pub fn region_endpoints(&self, region: &str) -> Vec<String> {
        self.nodes()
            .filter(|a| a.region == region)
            .map(|a| a.grpc.clone())
            .collect()
    }

    /// Kills a node with SIGKILL.
    pub fn kill_node(&mut self, region: &str, id: u64) {
        let (_, proc) = self
            .nodes
            .iter_mut()
            .find(|(a, _)| a.region == region && a.id == id)
            .expect("node exists");
        drop(proc.take());
    }

    pub fn restart_node(&mut self, region: &str, id: u64) {
        self.restart_node_env(region, id, &[]);
    }

    /// Starts a node (again) with extra environment variables, such as `MERIDIAN_FAILPOINTS`.
    pub fn restart_node_env(&mut self, region: &str, id: u64, env: &[(&str, &str)]) {
        let peers = self.node_peers(region);
        let idx = self
            .nodes
            .iter()
            .position(|(a, _)| a.region == region && a.id == id)
            .expect("node exists");
        self.start_node_env(idx, &peers, env);
    }

    /// Sends a signal (`STOP`, `CONT`, `TERM`) to a regional node.
    pub fn signal_node(&mut self, region: &str, id: u64, signal: &str) {
        self.nodes
            .iter()
            .find(|(a, _)| a.region == region && a.id == id)
            .and_then(|(_, p)| p.as_ref())
            .unwrap_or_else(|| panic!("no running node {region}-{id}"))
            .signal(signal);
    }

    /// Whether the node's process is still running (false once it exited or was killed).
    pub fn node_running(&mut self, region: &str, id: u64) -> bool {
        self.nodes
            .iter_mut()
            .find(|(a, _)| a.region == region && a.id == id)
            .and_then(|(_, p)| p.as_mut())
            .is_some_and(|p| matches!(p.child.try_wait(), Ok(None)))
    }

    /// Where the central worker keeps its state.
    pub fn central_dir(&self) -> PathBuf {
        self.work.path.join("central")
    }

    /// The address of one node.
    pub fn node_of(&self, region: &str, id: u64) -> &NodeAddr {
        self.nodes()
            .find(|a| a.region == region && a.id == id)
            .expect("node exists")
    }

    pub fn start_central(&mut self) {
        self.start_worker("central");
    }

    /// Starts (again) the central worker `name`, with its own data dir under that name.
    pub fn start_worker(&mut self, name: &str) {
        self.central_starts += 1;
        let log = format!("{name}-{}", self.central_starts);
        let proc = spawn(
            self.work,
            &log,
            Command::new(meridian_bin())
                .args([
                    "central",
                    "--coordinator",
                    &self.coordinator,
                    "--name",
                    name,
                ])
                .arg("--data-dir")
                .arg(self.work.path.join(name))
                .args(&self.central_args),
        );
        match self.centrals.iter_mut().find(|(n, _)| n == name) {
            Some((_, p)) => *p = Some(proc),
            None => self.centrals.push((name.to_string(), Some(proc))),
        }
    }

    fn worker_proc(&mut self, name: &str) -> Option<&mut Proc> {
        self.centrals
            .iter_mut()
            .find(|(n, _)| n == name)
            .and_then(|(_, p)| p.as_mut())
    }

    /// SIGKILL a central worker.
    pub fn kill_worker(&mut self, name: &str) {
        if let Some((_, slot)) = self.centrals.iter_mut().find(|(n, _)| n == name) {
            if let Some(mut p) = slot.take() {
                p.child.kill().expect("SIGKILL the central worker");
                let _ = p.child.wait();
                eprintln!("killed {}", p.name);
            }
        }
    }

    /// Sends a signal (`STOP`, `CONT`, `TERM`) to a central worker.
    pub fn signal_worker(&mut self, name: &str, signal: &str) {
        self.worker_proc(name)
            .unwrap_or_else(|| panic!("no running central worker '{name}'"))
            .signal(signal);
    }

    /// Whether the worker's process is still running (false once it exited or was killed).
    pub fn worker_running(&mut self, name: &str) -> bool {
        self.worker_proc(name)
            .is_some_and(|p| matches!(p.child.try_wait(), Ok(None)))
    }

    /// Everything central worker `name` logged, over all its starts.
    pub fn worker_log(&self, name: &str) -> String {
        (1..=self.central_starts)
            .map(|n| self.work.log_text(&format!("{name}-{n}")))
            .collect()
    }

    /// The worker that holds `view`'s lease, and the lease epoch, as the coordinator says.
    pub fn view_owner(&self, view: &str) -> Option<(String, u64)> {
        let s = self.status().ok()?;
        let v = s["views"]
            .as_array()?
            .iter()
            .find(|v| v["view"] == view)?
            .clone();
        let owner = v["owner"].as_str().filter(|o| !o.is_empty())?.to_string();
        Some((owner, v["lease_epoch"].as_u64()?))
    }

    /// Replaces every node of `region` with an empty one: the region is rebuilt from scratch.
    pub fn wipe_region(&mut self, region: &str) {
        let peers = self.node_peers(region);
        let idxs: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].0.region == region)
            .collect();
        for &i in &idxs {
            drop(self.nodes[i].1.take());
            let dir = self
                .work
                .path
                .join(format!("{}-{}", region, self.nodes[i].0.id));
            std::fs::remove_dir_all(&dir)
                .unwrap_or_else(|e| panic!("removing {}: {e}", dir.display()));
        }
        let restarted_at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        for &i in &idxs {
            self.start_node(i, &peers);
        }
        // Until the new processes report, the coordinator still shows the old ones.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let fresh = self.status().ok().and_then(|s| {
                let nodes = s["regions"]
                    .as_array()?
                    .iter()
                    .find(|r| r["region"] == region)?["nodes"]
                    .as_array()?
                    .clone();
                Some(
                    nodes
                        .iter()
                        .filter(|n| n["started_at_ms"].as_i64().unwrap_or(0) >= restarted_at_ms)
                        .count(),
                )
            });
            if fresh == Some(idxs.len()) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the rebuilt nodes of {region} never reported"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Sends a signal (`STOP`, `CONT`) to the coordinator.
    pub fn signal_coordinator(&mut self, signal: &str) {
        self.coordinator_proc
            .as_ref()
            .expect("the coordinator runs")
            .signal(signal);
    }

    /// SIGKILL: no chance to flush or say goodbye.
    pub fn kill_central(&mut self) {
        self.kill_worker("central");
    }

    /// Restarts the coordinator on the same port and data dir.
    pub fn restart_coordinator(&mut self) {
        drop(self.coordinator_proc.take());
        let listen = self.coordinator.trim_start_matches("http://").to_string();
        self.coordinator_proc = Some(spawn(
            self.work,
            "coordinator-2",
            Command::new(meridian_bin())
                .args(["coordinator", "--listen", &listen, "--data-dir"])
                .arg(self.work.path.join("coordinator")),
        ));
        let port: u16 = listen
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port");
        wait_for_port(port, Duration::from_secs(20)).expect("coordinator listens again");
    }

    /// Runs `meridian <args>` against this cluster's coordinator: Ok(stdout) or Err(stderr).
    pub fn cli(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(meridian_bin())
            .args(args)
            .env("MERIDIAN_COORDINATOR", &self.coordinator)
            .output()
            .expect("run meridian");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).to_string())
        }
    }

    pub fn sql(&self, statement: &str) -> Result<String, String> {
        self.cli(&["sql", statement])
    }

    pub fn status(&self) -> anyhow::Result<Json> {
        let out = self
            .cli(&["status", "--json"])
            .map_err(|e| anyhow::anyhow!(e))?;
        serde_json::from_str(&out).context("status --json is JSON")
    }

    /// The status of every node of `region`, as the coordinator last heard it.
    pub fn region_nodes(&self, region: &str) -> Vec<Json> {
        self.status()
            .ok()
            .and_then(|s| {
                s["regions"]
                    .as_array()?
                    .iter()
                    .find(|r| r["region"] == region)?["nodes"]
                    .as_array()
                    .cloned()
            })
            .unwrap_or_default()
    }

    /// Source messages `view` has consumed (0 before it reports).
    pub fn view_events(&self, view: &str) -> u64 {
        self.status()
            .ok()
            .and_then(|s| {
                s["views"].as_array()?.iter().find(|v| v["view"] == view)?["events"].as_u64()
            })
            .unwrap_or(0)
    }

    /// Waits until `view` has consumed more than `events` messages.
    pub fn wait_events(&self, view: &str, events: u64, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while self.view_events(view) <= events {
            if Instant::now() > deadline {
                bail!("view '{view}' did not get past {events} messages within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// The id of a node of `region` that reports itself a follower.
    pub fn follower(&self, region: &str) -> anyhow::Result<u64> {
        let s = self.status()?;
        s["regions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["region"] == region)
            .flat_map(|r| r["nodes"].as_array().cloned().unwrap_or_default())
            .find(|n| n["role"] == "follower")
            .and_then(|n| n["node_id"].as_u64())
            .context("no follower reported")
    }

    /// Waits until every region has a leader and all six nodes report.
    pub fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            if let Ok(s) = self.status() {
                let regions = s["regions"].as_array().cloned().unwrap_or_default();
                let ok = REGIONS.iter().all(|r| {
                    regions.iter().any(|x| {
                        x["region"] == *r
                            && x["nodes"].as_array().is_some_and(|n| {
                                n.len() == 3 && n.iter().any(|n| n["role"] == "leader")
                            })
                    })
                });
                if ok {
                    return Ok(());
                }
            }
            if start.elapsed() > timeout {
                bail!(
                    "cluster not ready after {timeout:?}: {}",
                    self.status().map(|s| s.to_string()).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until the view consumed at least `messages` and every node applied its last batch.
    /// Returns the view's sequence.
    pub fn wait_converged(
        &self,
        view: &str,
        messages: u64,
        timeout: Duration,
    ) -> anyhow::Result<u64> {
        let start = Instant::now();
        let mut last = Json::Null;
        while start.elapsed() < timeout {
            if let Ok(s) = self.status() {
                let v = s["views"]
                    .as_array()
                    .and_then(|vs| vs.iter().find(|v| v["view"] == view))
                    .cloned()
                    .unwrap_or(Json::Null);
                let seq = v["seq"].as_u64().unwrap_or(0);
                let events = v["events"].as_u64().unwrap_or(0);
                let view_id = v["view_id"].as_u64().unwrap_or(0);
                let applied: Vec<u64> = s["regions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|r| r["nodes"].as_array().cloned().unwrap_or_default())
                    .map(|n| {
                        n["views"]
                            .as_array()
                            // Only this incarnation of the view counts.
                            .and_then(|vs| {
                                vs.iter()
                                    .find(|x| x["view"] == view && x["view_id"] == view_id)
                            })
                            .and_then(|x| x["applied_seq"].as_u64())
                            .unwrap_or(0)
                    })
                    .collect();
                if events >= messages
                    && seq > 0
                    && applied.len() == 6
                    && applied.iter().all(|a| *a == seq)
                {
                    return Ok(seq);
                }
                last = s;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        bail!("view '{view}' did not converge on {messages} messages within {timeout:?}; last status: {last:#}")
    }
}

mod http;
pub use http::*;
mod procs;
pub use procs::*;
pub mod netns;
mod oracle;
pub use oracle::*;
