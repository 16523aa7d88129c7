use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

/// Address `meridian dev` and `meridian coordinator` listen on by default, and that the admin
/// commands talk to by default.
pub const DEFAULT_COORDINATOR: &str = "http://127.0.0.1:7000";

#[derive(Parser)]
#[command(
    name = "meridian",
    version,
    about = "Materialized views computed centrally from Kafka CDC streams, replicated by Raft into DuckDB in every region"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// A TOML file with one table per role ([coordinator], [central], [region], [dev]) whose
    /// keys are the role's flags. Precedence: flags, then environment variables (MERIDIAN_ and
    /// the flag in capitals, such as MERIDIAN_DATA_DIR), then the file, then the defaults.
    #[arg(long, global = true, env = "MERIDIAN_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run an all-in-one local cluster (broker, coordinator, central worker, two 3-node regions)
    /// with sample data, print each region's position and answers, then keep serving.
    Dev(DevArgs),
    /// Run the coordinator: the catalog and the cluster's status.
    Coordinator(CoordinatorArgs),
    /// Run a central worker: one actor per view it is assigned, shipping change logs to the
    /// regions (`meridian central drain NAME` moves a worker's views away before a restart).
    Central(CentralArgs),
    /// Run one node of a region's Raft group.
    Region(RegionArgs),
    /// Send one DDL statement to the coordinator.
    Sql {
        /// The coordinator's gRPC URL (the default is where `meridian dev` listens).
        #[arg(long, env = "MERIDIAN_COORDINATOR", default_value = DEFAULT_COORDINATOR)]
        coordinator: String,
        /// For example: "CREATE MATERIALIZED VIEW v AS SELECT k, count() FROM s GROUP BY k"
        statement: String,
    },
    /// Run a read-only query in a region (nodes found through the coordinator).
    Query {
        /// The coordinator's gRPC URL (the default is where `meridian dev` listens).
        #[arg(long, env = "MERIDIAN_COORDINATOR", default_value = DEFAULT_COORDINATOR)]
        coordinator: String,
        /// Region to read from.
        #[arg(long, env = "MERIDIAN_REGION")]
        region: String,
        /// Answer only when every view the statement names is at most this many ms behind
        /// its source.
        #[arg(long, value_name = "MS")]
        max_staleness_ms: Option<u64>,
        /// Answer from a state at least as new as this read token's (printed by an earlier
        /// query, `region:index`).
        #[arg(long, value_name = "TOKEN")]
        at_least: Option<String>,
        /// Linearizable: reflect every batch the region acknowledged before the read began.
        #[arg(long)]
        linearizable: bool,
        /// A read-only statement, such as "SELECT * FROM revenue_by_country LIMIT 5".
        sql: String,
    },
    /// Configuration files.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Show regions, nodes, Raft roles, views, applied positions and freshness.
    Status {
        /// The coordinator's gRPC URL (the default is where `meridian dev` listens).
        #[arg(long, env = "MERIDIAN_COORDINATOR", default_value = DEFAULT_COORDINATOR)]
        coordinator: String,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Print only what is wrong, and exit non-zero if anything is: a view in error or
        /// stalled, a region without a leader, a node not serving or not reporting, a replica
        /// staler than --max-staleness-ms.
        #[arg(long)]
        check: bool,
        /// The staleness bound of --check.
        #[arg(long, value_name = "MS", default_value_t = 30_000)]
        max_staleness_ms: i64,
    },
}

impl Command {
    /// Long-running roles log at info; one-shot commands stay quiet.
    pub fn is_server(&self) -> bool {
        match self {
            Command::Central(c) => c.action.is_none(),
            Command::Dev(_) | Command::Coordinator(_) | Command::Region(_) => true,
            _ => false,
        }
    }
}

#[derive(Subcommand)]
pub enum ConfigAction {
    /// Check the --config file: its roles, settings and every value, as each role would read
    /// them.
    Check,
}

#[derive(clap::Args)]
pub struct DevArgs {
    /// Where every component keeps its data.
    #[arg(long, env = "MERIDIAN_DATA_DIR", default_value = "./meridian-data")]
    pub data_dir: PathBuf,
    /// Use this Kafka cluster instead of the embedded one.
    #[arg(long, env = "MERIDIAN_BROKERS")]
    pub brokers: Option<String>,
    /// Topic of the sample orders stream.
    #[arg(long, env = "MERIDIAN_TOPIC", default_value = "orders")]
    pub topic: String,
    /// Sample change events to produce.
    #[arg(long, env = "MERIDIAN_EVENTS", default_value_t = 20_000)]
    pub events: usize,
    /// First port: the coordinator listens on it, regions on base+101.. (gRPC) and base+1101.. (HTTP).
    #[arg(long, env = "MERIDIAN_PORT_BASE", default_value_t = 7000)]
    pub port_base: u16,
    /// Stop after the demo instead of serving until Ctrl-C.
    #[arg(long, env = "MERIDIAN_EXIT_AFTER_DEMO")]
    pub exit_after_demo: bool,
}

#[derive(clap::Args)]
pub struct CoordinatorArgs {
    /// gRPC listen address.
    #[arg(long, env = "MERIDIAN_LISTEN", default_value = "127.0.0.1:7000")]
    pub listen: SocketAddr,
    /// Where the catalog (RocksDB) lives.
    #[arg(
        long,
        env = "MERIDIAN_DATA_DIR",
        default_value = "./meridian-data/coordinator"
    )]
    pub data_dir: PathBuf,
    /// How long a central worker keeps its views without renewing its lease (milliseconds):
    /// after that, its views move to another worker, under a new epoch.
    #[arg(long, env = "MERIDIAN_LEASE_MS", default_value_t = 4_000)]
    pub lease_ms: u64,
}

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct CentralArgs {
    #[command(subcommand)]
    pub action: Option<CentralAction>,
    /// The coordinator to take the catalog from and report to.
    #[arg(long, env = "MERIDIAN_COORDINATOR", default_value = DEFAULT_COORDINATOR)]
    pub coordinator: String,
    /// Where view state, offsets and change logs (RocksDB) live.
    #[arg(
        long,
        env = "MERIDIAN_DATA_DIR",
        default_value = "./meridian-data/central"
    )]
    pub data_dir: PathBuf,
    /// This worker's name, unique in the cluster (default: the name kept in the data dir, made
    /// up on first start).
    #[arg(long, env = "MERIDIAN_NAME")]
    pub name: Option<String>,
    /// Change batches kept behind the slowest region; a region further behind gets a full
    /// batch with every row of the view instead.
    #[arg(long, env = "MERIDIAN_CHANGE_LOG_RETAIN", default_value_t = 1_000)]
    pub change_log_retain: u64,
    /// Serve Prometheus metrics at http://ADDR/metrics: per view progress, dead letters,
    /// stalled partitions, and each region's position in the change log.
    #[arg(long, env = "MERIDIAN_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
}

#[derive(Subcommand)]
pub enum CentralAction {
    /// Move every view off a running worker (to the others) before a planned restart; the
    /// worker exits once it holds none.
    Drain {
        /// The coordinator's gRPC URL (the default is where `meridian dev` listens).
        #[arg(long, env = "MERIDIAN_COORDINATOR", default_value = DEFAULT_COORDINATOR)]
        coordinator: String,
        /// The worker's name, as `meridian status` lists it.
        worker: String,
    },
}

#[derive(clap::Args)]
pub struct RegionArgs {
    /// Region name (letters, digits, '-' and '_'), such as eu-west.
    #[arg(long, env = "MERIDIAN_REGION")]
    pub region: String,
    /// This node's Raft id within the region (1, 2, 3...). Without it: the number after the
    /// host name's last '-', plus one (a Kubernetes StatefulSet's pod eu-west-0 is node 1).
    #[arg(long, env = "MERIDIAN_NODE_ID")]
    pub node_id: Option<u64>,
    /// Every node of the region as id=url, this one included:
    /// 1=http://127.0.0.1:7101,2=http://127.0.0.1:7102,3=http://127.0.0.1:7103
    #[arg(long, env = "MERIDIAN_PEERS")]
    pub peers: String,
    /// gRPC listen address (default: the port of this node's --peers entry on 127.0.0.1).
    #[arg(long, env = "MERIDIAN_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Address of the chDB-style HTTP SQL endpoint, such as 127.0.0.1:8101.
    #[arg(long, env = "MERIDIAN_HTTP_LISTEN")]
    pub http_listen: SocketAddr,
    /// URL other processes use for this node's HTTP endpoint (default: from --http-listen).
    #[arg(long, env = "MERIDIAN_HTTP_ADVERTISE")]
    pub http_advertise: Option<String>,
    /// Where the node keeps its Raft log (RocksDB) and DuckDB replica.
    #[arg(long, env = "MERIDIAN_DATA_DIR")]
    pub data_dir: PathBuf,
    /// The coordinator this node reports to.
    #[arg(long, env = "MERIDIAN_COORDINATOR", default_value = DEFAULT_COORDINATOR)]
    pub coordinator: String,
    /// Raft log entries kept behind the replica; older ones are compacted away, and a node that
    /// needs them gets a snapshot of the replica instead.
    #[arg(long, env = "MERIDIAN_RAFT_LOG_RETAIN", default_value_t = 10_000)]
    pub raft_log_retain: u64,
    /// A read that runs longer is interrupted and answers with an error (milliseconds).
    #[arg(long, env = "MERIDIAN_QUERY_TIMEOUT_MS", default_value_t = 30_000)]
    pub query_timeout_ms: u64,
    /// Most rows one read may return; a larger result is refused with an error.
    #[arg(long, env = "MERIDIAN_QUERY_ROWS_MAX", default_value_t = 100_000)]
    pub query_rows_max: usize,
    /// Most bytes of values one read may return; a larger result is refused with an error.
    #[arg(long, env = "MERIDIAN_QUERY_BYTES_MAX", default_value_t = 64 << 20)]
    pub query_bytes_max: usize,
    /// Memory DuckDB may use for this node's replica, readers and writer together (such as
    /// 512MB or 4GB); a read that needs more spills to disk instead of starving the writer.
    #[arg(long, env = "MERIDIAN_REPLICA_MEMORY_MAX", default_value = "1GB")]
    pub replica_memory_max: String,
}

/// The node id a host name gives: its ordinal after the last '-', plus one (`eu-west-2` is 3).
pub fn node_id_from_hostname(host: &str) -> Option<u64> {
    let (_, ordinal) = host.trim().rsplit_once('-')?;
    ordinal.parse::<u64>().ok()?.checked_add(1)
}

/// Parses `1=http://a:1,2=http://b:2`.
pub fn parse_peers(s: &str) -> anyhow::Result<BTreeMap<u64, String>> {
    let mut peers = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, url) = part
            .split_once('=')
            .with_context(|| format!("--peers entry '{part}' is not id=url"))?;
        let id: u64 = id
            .trim()
            .parse()
            .with_context(|| format!("--peers entry '{part}': '{id}' is not a node id"))?;
        let url = url.trim();
        if !url.starts_with("http://") {
            bail!("--peers entry '{part}': the url must start with http://");
        }
        if peers.insert(id, url.to_string()).is_some() {
            bail!("--peers names node {id} twice");
        }
    }
    Ok(peers)
}

impl Cli {
    pub async fn run(self) -> anyhow::Result<()> {
        match self.command {
            Command::Config {
                action: ConfigAction::Check,
            } => crate::config::check(self.config),
            Command::Dev(args) => crate::dev::run(args).await,
            Command::Coordinator(args) => {
                crate::roles::coordinator(args, crate::roles::ctrl_c()).await
            }
            Command::Central(CentralArgs {
                action:
                    Some(CentralAction::Drain {
                        coordinator,
                        worker,
                    }),
                ..
            }) => crate::status::drain(&coordinator, &worker).await,
            Command::Central(args) => crate::roles::central(args, crate::roles::ctrl_c()).await,
            Command::Region(args) => crate::roles::region(args, crate::roles::ctrl_c()).await,
            Command::Sql {
                coordinator,
                statement,
            } => crate::status::sql(&coordinator, &statement).await,
            Command::Query {
                coordinator,
                region,
                max_staleness_ms,
                at_least,
                linearizable,
                sql,
            } => {
                let at_least = at_least.map(|t| client::ReadToken::parse(&t)).transpose()?;
                let options = client::QueryOptions {
                    max_staleness: max_staleness_ms.map(std::time::Duration::from_millis),
                    at_least,
                    linearizable,
                    ..Default::default()
                };
                crate::status::query(&coordinator, &region, &sql, &options).await
            }
            Command::Status {
                coordinator,
                json,
                check: true,
                max_staleness_ms,
            } => crate::status::check(&coordinator, json, max_staleness_ms).await,
            Command::Status {
                coordinator, json, ..
            } => crate::status::status(&coordinator, json).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_parse_and_refuse_nonsense() {
        let p = parse_peers("1=http://127.0.0.1:1, 2=http://h:2").expect("valid");
        assert_eq!(p.get(&2).map(String::as_str), Some("http://h:2"));
        for bad in ["1", "x=http://a:1", "1=a:1", "1=http://a:1,1=http://b:1"] {
            assert!(parse_peers(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_statefulset_pod_name_gives_the_node_id() {
        assert_eq!(node_id_from_hostname("eu-west-0"), Some(1));
        assert_eq!(node_id_from_hostname("us-east-2\n"), Some(3));
        assert_eq!(node_id_from_hostname("meridian"), None);
        assert_eq!(node_id_from_hostname("eu-west-x"), None);
    }
}
