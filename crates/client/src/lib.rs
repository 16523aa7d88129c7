//! Meridian's Rust client for regional reads.
//!
//! ```no_run
//! # async fn demo() -> Result<(), client::Error> {
//! let client = client::Client::connect(["http://127.0.0.1:7101", "http://127.0.0.1:7102"]).await?;
//! let result = client.query("SELECT region, orders FROM revenue_by_region ORDER BY region").await?;
//! for row in &result.rows {
//!     println!("{:?}", row);
//! }
//! println!("reflects change batch {:?}", result.position("revenue_by_region"));
//! # Ok(()) }
//! ```
//!
//! A `Client` is a session with monotonic reads: it keeps the newest read token its answers
//! carried and sends it with every read, so no answer reflects an older state of the region
//! than one it already returned, whichever node answers. `QueryOptions` adds bounded
//! staleness and linearizable reads.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

pub use meridian_proto::ReadToken;

mod health;
pub use health::{healthiest, Member, MemberStatus, STATUS_TIMEOUT};
mod subscribe;
pub use subscribe::{Change, SubscribePosition, Subscription, SubscriptionEvent};
mod values;
/// The Arrow crate the record batches of [`Client::query_arrow`] are of.
pub use arrow;
pub use values::{Date, Decimal, Timestamp};

use meridian_proto::v1 as pb;
use meridian_proto::v1::region_client::RegionClient;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

/// Largest query response the client accepts.
pub const RESPONSE_BYTES_MAX: usize = 512 << 20;

/// Per-attempt deadline of a query.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a query may take in all, retries included, unless `QueryOptions::deadline` says.
/// Until then the client goes round the region's nodes (a region electing a leader, or a node
/// restarting, is given that time), pausing between rounds.
pub const QUERY_DEADLINE: Duration = Duration::from_secs(60);
/// The first pause between two rounds over the region's nodes; each pause doubles, up to
/// [`RETRY_PAUSE_MAX`].
pub const RETRY_PAUSE_FIRST: Duration = Duration::from_millis(100);
/// The longest pause between two rounds over the region's nodes.
pub const RETRY_PAUSE_MAX: Duration = Duration::from_secs(1);
/// A node's own wait for a read's conditions when the read does not say (the node's default).
const NODE_WAIT_DEFAULT: Duration = Duration::from_secs(2);
/// HTTP/2 pings on every connection, so that a node that stopped answering is noticed.
pub const KEEPALIVE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no endpoints given")]
    NoEndpoints,
    #[error("bad endpoint '{0}': {1}")]
    Endpoint(String, String),
    /// The statement was refused (syntax, unknown table, not read-only...).
    #[error("query refused by {node}: {message}")]
    Refused { node: String, message: String },
    /// A row did not map onto the type asked for (`query_as`, `rows_as`).
    #[error("row {row} does not map onto the type asked for: {message}")]
    Decode { row: usize, message: String },
    /// Every node of the region failed, or none met the read's staleness bound; the last
    /// error is kept.
    #[error("no node of the region could answer; last error from {node}: {message}")]
    Unavailable { node: String, message: String },
}

/// A value of a result row.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Int(i64),
    Float(f64),
    Text(String),
    Bool(bool),
    Date(Date),
    Timestamp(Timestamp),
    Decimal(Decimal),
    /// A list (DuckDB `T[]`), its elements typed as its element type.
    List(Vec<Value>),
}

impl Value {
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Text(s) => Some(s),
            _ => None,
        }
    }
}

impl From<pb::Value> for Value {
    fn from(v: pb::Value) -> Value {
        use pb::value::Kind;
        match v.kind {
            None => Value::Null,
            Some(Kind::Int(i)) => Value::Int(i),
            Some(Kind::Float(f)) => Value::Float(f),
            Some(Kind::Text(s)) => Value::Text(s),
            Some(Kind::Boolean(b)) => Value::Bool(b),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Column {
    pub name: String,
    /// DuckDB's type name, such as BIGINT or VARCHAR.
    pub type_name: String,
}

/// How a read is answered.
#[derive(Clone, Debug, Default)]
pub struct QueryOptions {
    /// Bounded staleness: every view the statement names at most this far behind its source.
    pub max_staleness: Option<std::time::Duration>,
    /// How long a node may wait for the read's conditions (staleness bound, `at_least`, the
    /// session's token, `linearizable`) before the client tries the next node (`None`: the
    /// node's default, 2 s).
    pub max_staleness_wait: Option<std::time::Duration>,
    /// A state at least as new as this token's (from an earlier answer, possibly of another
    /// client), on top of the session's own token.
    pub at_least: Option<ReadToken>,
    /// Linearizable: the answer reflects every batch the region acknowledged before the read
    /// began (Raft ReadIndex through the leader). A node cut off from a majority of its region
    /// fails the read instead of answering stale.
    pub linearizable: bool,
    /// Answer as Arrow record batches ([`QueryResult::batches`], DuckDB's own Arrow output
    /// over Arrow IPC) rather than as rows.
    pub arrow: bool,
    /// How long the query may take in all, retries over the region's nodes included
    /// (`None`: [`QUERY_DEADLINE`]). One node is always asked, however short it is. (A field
    /// added in 0.1: build `QueryOptions` with `..Default::default()`.)
    pub deadline: Option<Duration>,
}

/// Which change batch of a view a node had applied when it answered.
#[derive(Clone, Debug, PartialEq)]
pub struct Position {
    pub view: String,
    /// Catalog id of the view: a view dropped and created again under its name gets a new one.
    pub view_id: u64,
    pub applied_seq: u64,
    pub produced_at_ms: i64,
    pub applied_at_ms: i64,
    /// Epoch of the change log applied.
    pub epoch: u64,
    /// The node's replica reflected every source message the brokers held at this time (ms
    /// since the Unix epoch), as the central tier vouched; `None` while not known.
    pub fresh_at_ms: Option<i64>,
    /// How far behind the source the answer may be, as the node measured when it answered:
    /// its time minus `fresh_at_ms`. Grows while no news reaches the region.
    pub staleness_ms: Option<i64>,
}

#[derive(Clone, Debug)]
pub struct QueryResult {
    pub columns: Vec<Column>,
    pub rows: Vec<Vec<Value>>,
    pub positions: Vec<Position>,
    pub region: String,
    pub node_id: u64,
    /// The state the answer reflects, for a later read's `QueryOptions::at_least`.
    pub token: Option<ReadToken>,
    /// With [`QueryOptions::arrow`] ([`Client::query_arrow`]): the result as Arrow record
    /// batches, and `rows` empty.
    pub batches: Vec<arrow::record_batch::RecordBatch>,
}

impl QueryResult {
    /// The rows mapped onto `T` through serde, by column name: a struct with a field per
    /// column (or a subset, unless it denies unknown fields). Dates map as `2024-01-01`,
    /// timestamps as RFC 3339 in UTC (`2024-01-01T12:00:00Z`, what chrono's `DateTime<Utc>`
    /// reads), decimals as numbers (integers at scale 0).
    pub fn rows_as<T: serde::de::DeserializeOwned>(&self) -> Result<Vec<T>, Error> {
        if let Some(c) = self
            .columns
            .iter()
            .enumerate()
            .find(|(i, c)| self.columns[..*i].iter().any(|d| d.name == c.name))
        {
            return Err(Error::Decode {
                row: 0,
                message: format!(
                    "two columns are named '{}'; give them distinct names (AS) to map rows by name",
                    c.1.name
                ),
            });
        }
        self.rows
            .iter()
            .enumerate()
            .map(|(i, row)| {
                let object: serde_json::Map<String, serde_json::Value> = self
                    .columns
                    .iter()
                    .zip(row)
                    .map(|(c, v)| (c.name.clone(), values::to_json(v)))
                    .collect();
                serde_json::from_value(serde_json::Value::Object(object)).map_err(|e| {
                    Error::Decode {
                        row: i,
                        message: e.to_string(),
                    }
                })
            })
            .collect()
    }

    pub fn position(&self, view: &str) -> Option<u64> {
        self.positions
            .iter()
            .find(|p| p.view == view)
            .map(|p| p.applied_seq)
    }

    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }
}

/// A client of one region: queries go to one node, and to the next when a node is down.
pub struct Client {
    nodes: Vec<(String, RegionClient<Channel>)>,
    preferred: AtomicUsize,
    /// The newest state an answer of this session reflected.
    session: Mutex<Option<ReadToken>>,
}

impl Client {
    /// Asks the coordinator at `coordinator` (gRPC URL) for the nodes of `region`, connects
    /// to them, and asks the healthiest first ([`Client::prefer_healthiest`]). The list is the
    /// coordinator's at this moment.
    pub async fn discover(coordinator: &str, region: &str) -> Result<Client, Error> {
        use meridian_proto::v1::coordinator_client::CoordinatorClient;
        let fail = |message: String| Error::Unavailable {
            node: coordinator.to_string(),
            message,
        };
        let endpoint = Endpoint::from_shared(coordinator.to_string())
            .map_err(|e| Error::Endpoint(coordinator.to_string(), e.to_string()))?
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(30));
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| fail(format!("cannot reach the coordinator: {e}")))?;
        let catalog = CoordinatorClient::new(channel)
            .get_catalog(pb::GetCatalogRequest {})
            .await
            .map_err(|s| fail(s.message().to_string()))?
            .into_inner();
        let nodes: Vec<String> = catalog
            .regions
            .iter()
            .filter(|r| r.region == region)
            .flat_map(|r| r.nodes.iter().map(|n| n.grpc_addr.clone()))
            .collect();
        if nodes.is_empty() {
            return Err(fail(format!(
                "the coordinator knows no node of region '{region}'"
            )));
        }
        let client = Client::connect(nodes).await?;
        client.prefer_healthiest().await;
        Ok(client)
    }

    /// Takes the gRPC URLs of a region's nodes. Connections are made lazily, so a node that is
    /// down at connect time does not fail the call.
    pub async fn connect<I, S>(endpoints: I) -> Result<Client, Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut nodes = Vec::new();
        for e in endpoints {
            let url: String = e.into();
            let endpoint = Endpoint::from_shared(url.clone())
                .map_err(|err| Error::Endpoint(url.clone(), err.to_string()))?
                .connect_timeout(Duration::from_secs(2))
                .timeout(QUERY_TIMEOUT)
                // A subscription's node that stops answering (paused, or its host gone) is
                // noticed; a node cut off from its region ends its subscriptions itself.
                .http2_keep_alive_interval(KEEPALIVE)
                .keep_alive_timeout(KEEPALIVE)
                .keep_alive_while_idle(true);
            // A query may return up to 100 000 rows, far past tonic's 4 MB default.
            nodes.push((
                url,
                RegionClient::new(endpoint.connect_lazy())
                    .max_decoding_message_size(RESPONSE_BYTES_MAX),
            ));
        }
        if nodes.is_empty() {
            return Err(Error::NoEndpoints);
        }
        Ok(Client {
            nodes,
            preferred: AtomicUsize::new(0),
            session: Mutex::new(None),
        })
    }

    /// The newest state this session's answers reflected: no later read answers from an
    /// older one.
    pub fn token(&self) -> Option<ReadToken> {
        self.session
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A view's changes as the region applies them: a snapshot first, then every batch in
    /// seq order; resumed on the region's next node when one goes away, from the last event
    /// received (without a new snapshot when that node still holds the batches after it).
    pub fn subscribe(&self, view: &str) -> Subscription {
        self.subscribe_from(view, None)
    }

    /// [`Client::subscribe`] from a position an earlier subscription reached.
    pub fn subscribe_from(&self, view: &str, from: Option<SubscribePosition>) -> Subscription {
        Subscription {
            view: view.to_string(),
            nodes: self.nodes.clone(),
            next_node: self.preferred.load(Ordering::Relaxed),
            stream: None,
            position: from,
            snapshots: 0,
        }
    }

    /// Forgets the session's token (for a region rebuilt from empty disks, whose log starts
    /// over, so that no node can reach the old token).
    pub fn reset_session(&self) {
        *self.session.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    fn remember(&self, token: &ReadToken) {
        let mut session = self.session.lock().unwrap_or_else(|p| p.into_inner());
        *session = Some(match session.take() {
            Some(old) if old.region == token.region => old.newer(token.clone()),
            _ => token.clone(),
        });
    }

    /// Runs a read-only statement. Every node of the region serves reads from its own replica.
    pub async fn query(&self, sql: &str) -> Result<QueryResult, Error> {
        self.query_with(sql, &QueryOptions::default()).await
    }

    /// Runs a read-only statement and answers its result as Arrow record batches
    /// ([`QueryResult::batches`]), for analytical results: the node sends DuckDB's own Arrow
    /// output over Arrow IPC, with no conversion value by value.
    pub async fn query_arrow(&self, sql: &str) -> Result<QueryResult, Error> {
        let options = QueryOptions {
            arrow: true,
            ..QueryOptions::default()
        };
        self.query_with(sql, &options).await
    }

    /// Runs a read-only statement and maps its rows onto `T` (see [`QueryResult::rows_as`]).
    pub async fn query_as<T: serde::de::DeserializeOwned>(
        &self,
        sql: &str,
    ) -> Result<Vec<T>, Error> {
        self.query(sql).await?.rows_as()
    }

    /// Runs a read-only statement with options: with `max_staleness`, a node answers only
    /// when every view the statement names is at most that far behind its source (waiting up
    /// to `max_staleness_wait`), and a node that stays too stale sends the client to the
    /// region's next node; the same for `at_least`, the session's token and `linearizable`.
    pub async fn query_with(
        &self,
        sql: &str,
        options: &QueryOptions,
    ) -> Result<QueryResult, Error> {
        let at_least_of = |mine: Option<ReadToken>| match (mine, options.at_least.clone()) {
            (Some(mine), Some(theirs)) if mine.region == theirs.region => Some(mine.newer(theirs)),
            // A token of another region means nothing here: the node refuses it.
            (_, Some(theirs)) => Some(theirs),
            (mine, None) => mine,
        };
        let deadline = tokio::time::Instant::now() + options.deadline.unwrap_or(QUERY_DEADLINE);
        let mut last = None;
        let mut pause = RETRY_PAUSE_FIRST;
        let mut asked = false;
        'rounds: loop {
            if asked {
                // Every node failed: a pause, longer each round, within the deadline.
                if tokio::time::Instant::now() + pause >= deadline {
                    break;
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(RETRY_PAUSE_MAX);
            }
            let start = self.preferred.load(Ordering::Relaxed);
            // Whether a node of this round could not be reached (rather than answered that
            // it cannot serve the read now, as a node too stale for a staleness bound does
            // after its own wait): only then is another round worth it.
            let mut unreached = false;
            for attempt in 0..self.nodes.len() {
                let now = tokio::time::Instant::now();
                if asked && now >= deadline {
                    break 'rounds;
                }
                asked = true;
                // The node waits no longer than the query has left.
                let remaining = deadline
                    .saturating_duration_since(now)
                    .max(Duration::from_millis(1));
                let wait = match options.max_staleness_wait {
                    Some(w) => Some(w.min(remaining)),
                    None if remaining < NODE_WAIT_DEFAULT => Some(remaining),
                    None => None,
                };
                let idx = (start + attempt) % self.nodes.len();
                let (url, client) = &self.nodes[idx];
                let mut client = client.clone();
                // The newest token at this attempt (a concurrent read of the session may have
                // moved it on since the first).
                let at_least = at_least_of(self.token());
                let call = client.query(pb::QueryRequest {
                    sql: sql.to_string(),
                    max_staleness_ms: options
                        .max_staleness
                        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
                    max_staleness_wait_ms: wait
                        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                    at_least: at_least
                        .as_ref()
                        .map(ToString::to_string)
                        .unwrap_or_default(),
                    linearizable: options.linearizable,
                    arrow: options.arrow,
                });
                let answer = match tokio::time::timeout(remaining, call).await {
                    Ok(answer) => answer,
                    Err(_) => {
                        // A node's own reason, when one gave it, says more than the deadline.
                        if last.is_none() {
                            last = Some((url.clone(), "the query's deadline passed".to_string()));
                        }
                        break 'rounds;
                    }
                };
                match answer {
                    Ok(resp) => {
                        self.preferred.store(idx, Ordering::Relaxed);
                        let r = resp.into_inner();
                        // A node that sends no token (or a bad one) leaves the session as it was.
                        let token = ReadToken::parse(&r.token).ok();
                        if let Some(t) = &token {
                            self.remember(t);
                        }
                        let columns: Vec<Column> = r
                            .columns
                            .into_iter()
                            .map(|c| Column {
                                name: c.name,
                                type_name: c.r#type,
                            })
                            .collect();
                        let rows = r
                            .rows
                            .into_iter()
                            .map(|row| {
                                row.values
                                    .into_iter()
                                    .zip(&columns)
                                    .map(|(v, c)| values::typed(Value::from(v), &c.type_name))
                                    .collect()
                            })
                            .collect();
                        let batches = if options.arrow {
                            let reader = arrow::ipc::reader::StreamReader::try_new(
                                std::io::Cursor::new(r.arrow_ipc),
                                None,
                            )
                            .and_then(|reader| reader.collect::<Result<Vec<_>, _>>());
                            reader.map_err(|e| Error::Refused {
                                node: url.clone(),
                                message: format!("the node's Arrow answer does not read: {e}"),
                            })?
                        } else {
                            Vec::new()
                        };
                        return Ok(QueryResult {
                            token,
                            columns,
                            rows,
                            batches,
                            positions: r
                                .positions
                                .into_iter()
                                .map(|p| Position {
                                    view: p.view,
                                    view_id: p.view_id,
                                    applied_seq: p.applied_seq,
                                    produced_at_ms: p.produced_at_ms,
                                    applied_at_ms: p.applied_at_ms,
                                    epoch: p.epoch,
                                    fresh_at_ms: (p.fresh_at_ms > 0).then_some(p.fresh_at_ms),
                                    staleness_ms: (p.staleness_ms >= 0).then_some(p.staleness_ms),
                                })
                                .collect(),
                            region: r.region,
                            node_id: r.node_id,
                        });
                    }
                    // Refused by the node itself: the statement, its size, its time (a query too
                    // slow for one node is too slow for the next), or a fault of the node's own
                    // (a status the server made has no transport error beneath it; a reset
                    // connection's has, and another node is tried).
                    Err(status)
                        if matches!(
                            status.code(),
                            Code::InvalidArgument
                                | Code::ResourceExhausted
                                | Code::DeadlineExceeded
                        ) || (status.code() == Code::Internal
                            && std::error::Error::source(&status).is_none()) =>
                    {
                        return Err(Error::Refused {
                            node: url.clone(),
                            message: status.message().to_string(),
                        });
                    }
                    Err(status) => {
                        tracing::debug!(node = %url, error = %status.message(), "node failed; trying the next");
                        // A status the server made has no transport error beneath it.
                        unreached |= std::error::Error::source(&status).is_some();
                        last = Some((url.clone(), status.message().to_string()));
                    }
                }
            }
            if !unreached {
                break;
            }
        }
        let (node, message) = last.unwrap_or_default();
        Err(Error::Unavailable { node, message })
    }
}
