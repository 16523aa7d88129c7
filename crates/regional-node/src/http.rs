//! The HTTP SQL endpoint, compatible with the chDB/ClickHouse wrapper in the design notes:
//! `GET /?query=<sql>&default_format=JSONCompact`, `POST /` with the SQL as the body, a
//! trailing `FORMAT <name>` in the SQL as ClickHouse takes it, `GET /ping` (alive) and
//! `GET /replicas_status` (ready for reads). A read's consistency is chosen by parameters
//! (see [`crate::consistency`]): `max_staleness_ms`, `at_least=<token>`,
//! `consistency=linearizable`, all waiting at most `max_staleness_wait_ms`.

use std::collections::HashMap;
use std::time::Instant;

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::formats::{positions_header, render, Format, FORMATS};
use crate::service::Shared;

pub fn router(shared: Shared) -> Router {
    Router::new()
        .route("/", get(get_query).post(post_query))
        .route("/ping", get(|| async { "Ok.\n" }))
        .route("/replicas_status", get(replicas_status))
        // The names Kubernetes probes use: alive, and ready for reads.
        .route("/healthz", get(|| async { "Ok.\n" }))
        .route("/readyz", get(replicas_status))
        .route("/metrics", get(metrics))
        .route("/subscribe", get(subscribe))
        .with_state(shared)
}

/// A node this many committed Raft entries behind is not ready for reads.
pub const READY_APPLY_BEHIND_MAX: u64 = 100;

/// Why a node should not take reads now (`Ok` when it should): it does not serve (a failed
/// apply), knows no leader of its region, or is behind on applying what it knows committed.
pub fn readiness(st: &meridian_proto::v1::NodeStatusResponse) -> Result<(), String> {
    let mut why = Vec::new();
    if !st.apply_error.is_empty() {
        why.push(format!("does not serve reads: {}", st.apply_error));
    }
    if st.leader_id == 0 {
        why.push("knows no leader of its region".to_string());
    }
    let behind = st.commit_index.saturating_sub(st.applied_index);
    if behind > READY_APPLY_BEHIND_MAX {
        why.push(format!(
            "{behind} committed entries not applied yet (ready within {READY_APPLY_BEHIND_MAX})"
        ));
    }
    if why.is_empty() {
        Ok(())
    } else {
        Err(why.join("; "))
    }
}

/// Readiness for load balancers, as ClickHouse's `/replicas_status`: `200 Ok.` or `503` with
/// the reasons.
async fn replicas_status(State(s): State<Shared>) -> Response {
    match s.status().await {
        Ok(st) => match readiness(&st) {
            Ok(()) => (StatusCode::OK, "Ok.\n").into_response(),
            Err(why) => error_response(StatusCode::SERVICE_UNAVAILABLE, why),
        },
        Err(e) => error_response(StatusCode::SERVICE_UNAVAILABLE, e.message().to_string()),
    }
}

/// Prometheus text exposition of the node's Raft and replica state and its query counters.
async fn metrics(State(s): State<Shared>) -> Response {
    match s.status().await {
        Ok(st) => {
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            let body = crate::metrics::render(&st, &s.metrics, now_ms);
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                body,
            )
                .into_response()
        }
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.message().to_string()).into_response(),
    }
}

async fn get_query(
    State(s): State<Shared>,
    Query(params): Query<HashMap<String, String>>,
    headers: header::HeaderMap,
) -> Response {
    let sql = params.get("query").cloned().unwrap_or_default();
    answer(s, sql, &params, default_format(&headers)).await
}

async fn post_query(
    State(s): State<Shared>,
    Query(params): Query<HashMap<String, String>>,
    headers: header::HeaderMap,
    body: String,
) -> Response {
    // ClickHouse concatenates `query` from the URL with the body.
    let sql = match params.get("query") {
        Some(q) if !q.trim().is_empty() => format!("{q} {body}"),
        _ => body,
    };
    answer(s, sql, &params, default_format(&headers)).await
}

/// The format of an answer that names none: the chDB wrapper's default (JSONCompact), or
/// ClickHouse's (TabSeparated) for a ClickHouse client (`clickhouse-connect/1.12 ...`,
/// `clickhouse-go/...`), which reads what a ClickHouse server would send it.
fn default_format(headers: &header::HeaderMap) -> &'static str {
    let agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if agent.to_ascii_lowercase().starts_with("clickhouse") {
        "TabSeparated"
    } else {
        "JSONCompact"
    }
}

/// `GET /subscribe?view=<name>[&from=view_id:epoch:seq]`: `Region.Subscribe` as chunked
/// JSONEachRow lines (see [`crate::subscribe::json_lines`]); a failure after the stream began
/// is a last `{"_op":"error","message":...}` line.
async fn subscribe(
    State(s): State<Shared>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    use futures::StreamExt as _;
    let Some(view) = params.get("view") else {
        return bad_request("subscribe: name the view as ?view=<name>".into());
    };
    let from = match params
        .get("from")
        .map(|f| crate::subscribe::parse_from(f))
        .transpose()
    {
        Ok(from) => from.unwrap_or_default(),
        Err(e) => return bad_request(e),
    };
    let req = meridian_proto::v1::SubscribeRequest {
        view: view.clone(),
        view_id: from.0,
        epoch: from.1,
        seq: from.2,
    };
    let stream = match crate::subscribe::subscribe(&s, req) {
        Ok(stream) => stream,
        Err(status) => {
            let code = match status.code() {
                tonic::Code::InvalidArgument => StatusCode::BAD_REQUEST,
                tonic::Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
                _ => StatusCode::SERVICE_UNAVAILABLE,
            };
            return error_response(code, status.message().to_string());
        }
    };
    let mut schema = None;
    let lines = stream.map(move |item| -> Result<String, std::convert::Infallible> {
        Ok(match item {
            Ok(ev) => {
                if let Some(s) = &ev.schema {
                    schema = Some(s.clone());
                }
                crate::subscribe::json_lines(&ev, schema.as_ref())
            }
            Err(status) => format!(
                "{}\n",
                serde_json::json!({"_op": "error", "message": status.message()})
            ),
        })
    });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/x-ndjson; charset=UTF-8")],
        axum::body::Body::from_stream(lines),
    )
        .into_response()
}

fn bad_request(msg: String) -> Response {
    error_response(StatusCode::BAD_REQUEST, msg)
}

fn error_response(status: StatusCode, msg: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=UTF-8")],
        format!("{msg}\n"),
    )
        .into_response()
}

/// Splits a trailing `FORMAT <name>` (and `;`) off a statement, as ClickHouse reads it.
fn split_format(sql: &str) -> (&str, Option<&str>) {
    let body = sql.trim_end().trim_end_matches(';').trim_end();
    // A last line with a `--` comment may hold the words: leave the statement to DuckDB.
    if body
        .rsplit('\n')
        .next()
        .is_some_and(|line| line.contains("--"))
    {
        return (sql, None);
    }
    let Some((rest, name)) = body.rsplit_once(char::is_whitespace) else {
        return (sql, None);
    };
    let rest = rest.trim_end();
    let Some(split) = rest.len().checked_sub("FORMAT".len()) else {
        return (sql, None);
    };
    let (query, keyword) = rest.split_at_checked(split).unwrap_or(("", ""));
    let word_start = query.is_empty() || query.ends_with(char::is_whitespace);
    if keyword.eq_ignore_ascii_case("FORMAT")
        && word_start
        && !query.trim().is_empty()
        && !name.is_empty()
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        (query.trim_end(), Some(name))
    } else {
        (sql, None)
    }
}

/// What ClickHouse clients ask a server on connect (clickhouse-connect: its version and time
/// zone, then its settings), answered as a ClickHouse server in UTC with no settings to
/// change would: the replica's DuckDB has no `timezone()` and no `system.settings`. The
/// version is the ClickHouse release whose HTTP interface this endpoint follows.
fn client_introspection(sql: &str) -> Option<&'static str> {
    let normal = sql
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_ascii_lowercase();
    match normal.trim_end_matches(';').trim_end() {
        "select version(), timezone()" => {
            Some("SELECT '24.8.1.1' AS \"version()\", 'UTC' AS \"timezone()\"")
        }
        "select version()" => Some("SELECT '24.8.1.1' AS \"version()\""),
        "select timezone()" => Some("SELECT 'UTC' AS \"timezone()\""),
        "select name, value, readonly from system.settings limit 10000" => Some(
            "SELECT ''::VARCHAR AS name, ''::VARCHAR AS value, 0::UTINYINT AS readonly WHERE false",
        ),
        _ => None,
    }
}

async fn answer(
    s: Shared,
    sql: String,
    params: &HashMap<String, String>,
    default: &'static str,
) -> Response {
    if sql.trim().is_empty() {
        return bad_request("Query not found: pass it as ?query=<sql> or as the POST body".into());
    }
    let (statement, named) = split_format(&sql);
    // A client's connect-time question gets ClickHouse's default format (TabSeparated) when
    // it names none, as a ClickHouse server answers it.
    let (statement, named) = match client_introspection(statement) {
        Some(answer) if named.is_none() && !params.contains_key("default_format") => {
            (answer, Some("TabSeparated"))
        }
        Some(answer) => (answer, named),
        None => (statement, named),
    };
    let format_name = named
        .or(params.get("default_format").map(String::as_str))
        .unwrap_or(default)
        .to_string();
    let sql = statement.to_string();
    let format_name = format_name.as_str();
    let Some(format) = Format::parse(format_name) else {
        return bad_request(format!(
            "Unknown output format '{format_name}'; supported: {FORMATS}"
        ));
    };
    let quote_64bit = params
        .get("output_format_json_quote_64bit_integers")
        .is_none_or(|v| v != "0");
    let number = |name: &str| -> Result<Option<u64>, String> {
        match params.get(name) {
            None => Ok(None),
            Some(v) => v
                .trim()
                .parse::<u64>()
                .map(Some)
                .map_err(|_| format!("{name}={v}: expected a number of milliseconds")),
        }
    };
    let max_staleness = match number("max_staleness_ms") {
        Ok(v) => v.map(|v| i64::try_from(v).unwrap_or(i64::MAX)),
        Err(e) => return bad_request(e),
    };
    let wait_ms = match number("max_staleness_wait_ms") {
        Ok(v) => crate::staleness::wait_ms(v),
        Err(e) => return bad_request(e),
    };
    let at_least = match crate::consistency::ReadLevel::parse_token(
        params.get("at_least").map_or("", String::as_str),
    ) {
        Ok(t) => t,
        Err(e) => return bad_request(e.to_string()),
    };
    let linearizable = match params.get("consistency").map(|v| v.trim()) {
        None | Some("any") => false,
        Some("linearizable") => true,
        Some(other) => {
            return bad_request(format!(
                "consistency={other}: expected any or linearizable (bounded staleness is max_staleness_ms=N, monotonic reads at_least=<token>)"
            ))
        }
    };
    let level = crate::consistency::ReadLevel {
        max_staleness_ms: max_staleness,
        at_least,
        linearizable,
        wait_ms,
    };
    let started = Instant::now();
    let result = s.query_at_shaped(sql, &level, format.shape()).await;
    match result {
        Ok(mut r) => {
            let token = s.token(&r).to_string();
            let body: axum::body::Body = match r.arrow.take() {
                Some(bytes) => bytes.into(),
                None => render(
                    format,
                    &r,
                    &token,
                    started.elapsed().as_secs_f64(),
                    quote_64bit,
                )
                .into(),
            };
            let mut response = (
                StatusCode::OK,
                [(header::CONTENT_TYPE, format.content_type())],
                body,
            )
                .into_response();
            // What the answer reflects, per view (also in JSON bodies under "meridian").
            if let Ok(v) = header::HeaderValue::from_str(&positions_header(&r.positions)) {
                response.headers_mut().insert("x-meridian-positions", v);
            }
            // The state it reflects, for a later read's at_least.
            if let Ok(v) = header::HeaderValue::from_str(&token) {
                response.headers_mut().insert("x-meridian-token", v);
            }
            response
        }
        Err(e) => {
            use crate::query::QueryError as E;
            let status = match &e {
                E::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
                E::Unavailable(_) | E::TooStale(_) => StatusCode::SERVICE_UNAVAILABLE,
                E::TooManyRows(_) | E::TooManyBytes(_) => StatusCode::PAYLOAD_TOO_LARGE,
                E::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
                _ => StatusCode::BAD_REQUEST,
            };
            error_response(status, e.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{default_format, readiness, split_format, READY_APPLY_BEHIND_MAX};
    use meridian_proto::v1::NodeStatusResponse;

    #[test]
    fn clickhouse_clients_get_clickhouses_default_format() {
        let with_agent = |agent: &str| {
            let mut h = axum::http::HeaderMap::new();
            h.insert(
                axum::http::header::USER_AGENT,
                agent.parse().expect("header"),
            );
            default_format(&h)
        };
        assert_eq!(
            with_agent("clickhouse-connect/1.12.0 (lv:py/3.11; mode:sync; os:linux)"),
            "TabSeparated"
        );
        assert_eq!(with_agent("curl/8.5.0"), "JSONCompact");
        assert_eq!(default_format(&axum::http::HeaderMap::new()), "JSONCompact");
    }

    #[test]
    fn a_node_is_ready_only_serving_with_a_leader_and_caught_up() {
        let ok = NodeStatusResponse {
            leader_id: 2,
            commit_index: 500,
            applied_index: 500 - READY_APPLY_BEHIND_MAX,
            ..Default::default()
        };
        assert_eq!(readiness(&ok), Ok(()));
        let behind = NodeStatusResponse {
            applied_index: 10,
            ..ok.clone()
        };
        assert!(readiness(&behind).is_err_and(|e| e.contains("490 committed entries")));
        let stalled = NodeStatusResponse {
            apply_error: "disk full".into(),
            leader_id: 0,
            ..ok
        };
        let why = readiness(&stalled).expect_err("not ready");
        assert!(
            why.contains("disk full") && why.contains("no leader"),
            "{why}"
        );
    }

    #[test]
    fn a_trailing_format_clause_is_split_off() {
        assert_eq!(
            split_format("SELECT 1 FORMAT JSONEachRow"),
            ("SELECT 1", Some("JSONEachRow"))
        );
        assert_eq!(
            split_format("select a from t\nformat CSV ;\n"),
            ("select a from t", Some("CSV"))
        );
        for kept in [
            "SELECT 1",
            "SELECT 'x FORMAT JSON'",
            "SELECT informat JSON",
            "FORMAT JSON",
            "SELECT a AS format",
            "SELECT 1 -- see FORMAT docs",
            "SELECT 1 -- FORMAT CSV",
        ] {
            assert_eq!(split_format(kept), (kept, None), "{kept}");
        }
    }
}
