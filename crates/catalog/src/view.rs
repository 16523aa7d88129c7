//! A materialized view's query: parsed by sqlparser (ClickHouse dialect), checked against the
//! functions and constructs Meridian supports, translated to DuckDB SQL and typed by DuckDB.
//!
//! The result is a [`Plan`]: a stateless part evaluated over every source row (filter, then
//! the GROUP BY keys and the aggregates' arguments, or the output columns of a view without
//! aggregates), the aggregates, and a last stateless part evaluated over each group (output
//! expressions over keys and aggregates, and HAVING).

use serde::{Deserialize, Serialize};
use sqlparser::ast::{
    BinaryOperator, CastKind, DuplicateTreatment, Expr, Function, FunctionArg, FunctionArgExpr,
    FunctionArguments, GroupByExpr, Ident, InTarget, JsonPathElem, ObjectName, ObjectNamePart,
    Query, Select, SelectItem, SetExpr, Spanned as _, TableFactor, UnaryOperator,
    Value as SqlValue,
};
use sqlparser::dialect::ClickHouseDialect;
use sqlparser::parser::{Parser, ParserError};
use sqlparser::tokenizer::{Location, Span, Token, Tokenizer};

use crate::ast::Spanned;
use crate::defs::{Output, StreamDef};
use crate::error::SqlError;
use crate::eval;
use crate::value::ColumnType;

/// Deepest nesting of an expression: the parser, the planner and DuckDB recurse on it, and a
/// hostile statement must not exhaust their stack.
pub const EXPR_DEPTH_MAX: usize = 64;
/// Most terms in one view's expressions (a long AND chain is a deep tree too).
pub const EXPR_NODES_MAX: usize = 1_000;
/// Most tokens in a view's query, checked before it is parsed: a left-deep chain of
/// operators is as deep as it is long, and parsed trees are dropped and compared recursively.
pub const QUERY_TOKENS_MAX: usize = 4 * EXPR_NODES_MAX;

/// What a view keeps per key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PlanKind {
    /// GROUP BY and aggregates: one row per group.
    Aggregate,
    /// No aggregates: one row per source row, keyed by the stream's primary key.
    Project,
}

/// One value computed per source row.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Slot {
    /// DuckDB SQL over the stream's columns.
    pub sql: String,
    pub ty: ColumnType,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AggFunc {
    /// `count()`: rows in the group.
    Count,
    /// `count(x)`, `count_if(c)`: rows where the argument is not NULL.
    CountNonNull,
    /// `count(DISTINCT x)`, `count_distinct`, `uniq`, `uniq_exact`: distinct non-NULL values.
    CountDistinct,
    Sum,
    Avg,
    Min,
    Max,
    /// `latest(x)` / `any_last(x)`: the non-null value of the row changed last (by arrival).
    Latest,
    /// `earliest(x)` / `any(x)`: the non-null value of the row changed first, of those still in
    /// the group.
    Earliest,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Aggregate {
    pub func: AggFunc,
    /// Index into [`Plan::project`] of the argument; `None` for `count()`.
    pub arg: Option<usize>,
    /// The result type.
    pub ty: ColumnType,
    /// As written, for EXPLAIN.
    pub text: String,
}

/// How an aggregate view's output columns come from a group's keys and aggregates.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Finish {
    /// Each output column is a key (`Key(i)`) or an aggregate (`Agg(j)`), and there is no
    /// HAVING.
    Direct(Vec<Ref>),
    /// DuckDB SQL over a table of `k0..` (keys) and `a0..` (aggregates): one expression per
    /// output column, and the HAVING condition.
    Eval {
        exprs: Vec<String>,
        having: Option<String>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ref {
    Key(usize),
    Agg(usize),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub kind: PlanKind,
    /// DuckDB SQL over the stream's columns; rows where it is not true are not in the view.
    pub filter: Option<String>,
    /// Aggregate: the GROUP BY keys (`n_keys` of them), then the aggregates' arguments.
    /// Project: the output columns.
    pub project: Vec<Slot>,
    pub n_keys: usize,
    pub aggregates: Vec<Aggregate>,
    pub finish: Finish,
    /// Windows that close (`tumble()` grouped by `window_start`, with `allowed_lateness`).
    #[serde(default)]
    pub window: Option<WindowPlan>,
}

/// A tumbling window's rules: the watermark is the latest event time seen minus the allowed
/// lateness; a window whose end is at or below it is closed and final.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WindowPlan {
    /// The key (GROUP BY position) that is `window_start`.
    pub start_key: usize,
    /// The project slot holding each row's event time.
    pub time_slot: usize,
    pub size_us: i64,
    pub lateness_us: i64,
}

impl Plan {
    /// The input columns of the per-group stage: `k0..` and `a0..` with their DuckDB types.
    pub fn group_columns(&self) -> Vec<(String, String)> {
        let keys = self.project[..self.n_keys]
            .iter()
            .enumerate()
            .map(|(i, s)| (format!("k{i}"), s.ty.duckdb_type().to_string()));
        let aggs = self
            .aggregates
            .iter()
            .enumerate()
            .map(|(j, a)| (format!("a{j}"), a.ty.duckdb_type().to_string()));
        keys.chain(aggs).collect()
    }

    /// The plan as `EXPLAIN MATERIALIZED VIEW` prints it: one operator a line, source first.
    pub fn explain(&self, stream: &StreamDef, outputs: &[Output]) -> String {
        let mut lines = vec![format!(
            "scan: stream {} ({:?}{})",
            stream.name,
            stream.format,
            if stream.primary_key.is_empty() {
                ", append-only".to_string()
            } else {
                let pk: Vec<&str> = stream
                    .primary_key
                    .iter()
                    .map(|&i| stream.columns[i].name.as_str())
                    .collect();
                format!(", primary key {}", pk.join(", "))
            }
        )];
        if let Some(f) = &self.filter {
            lines.push(format!("filter: {f}"));
        }
        let slots: Vec<String> = self
            .project
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let name = match self.kind {
                    PlanKind::Aggregate if i < self.n_keys => format!("k{i}"),
                    PlanKind::Aggregate => format!("p{}", i - self.n_keys),
                    PlanKind::Project => outputs[i].name.clone(),
                };
                format!("{name} = {} :: {}", s.sql, s.ty)
            })
            .collect();
        lines.push(format!("project: {}", slots.join(", ")));
        if self.kind == PlanKind::Aggregate {
            let aggs: Vec<String> = self
                .aggregates
                .iter()
                .enumerate()
                .map(|(j, a)| {
                    let arg = a
                        .arg
                        .map_or(String::new(), |p| match p.checked_sub(self.n_keys) {
                            Some(p) => format!("p{p}"),
                            None => format!("k{p}"),
                        });
                    format!("a{j} = {:?}({arg}) :: {}", a.func, a.ty).to_lowercase()
                })
                .collect();
            let keys: Vec<String> = (0..self.n_keys).map(|i| format!("k{i}")).collect();
            lines.push(format!(
                "aggregate: by ({}) compute {}",
                keys.join(", "),
                if aggs.is_empty() {
                    "nothing".to_string()
                } else {
                    aggs.join(", ")
                }
            ));
            if let Some(w) = &self.window {
                lines.push(format!(
                    "window: k{} closes {} s after its end by event time (p{}); late changes to a closed window are counted and not applied",
                    w.start_key,
                    w.lateness_us as f64 / 1e6,
                    w.time_slot - self.n_keys
                ));
            }
            match &self.finish {
                Finish::Direct(_) => {}
                Finish::Eval { exprs, having } => {
                    if let Some(h) = having {
                        lines.push(format!("having: {h}"));
                    }
                    let outs: Vec<String> = exprs
                        .iter()
                        .zip(outputs)
                        .map(|(e, o)| format!("{} = {e}", o.name))
                        .collect();
                    lines.push(format!("compute: {}", outs.join(", ")));
                }
            }
        }
        let outs: Vec<String> = outputs
            .iter()
            .map(|o| format!("{} {}", o.name, o.ty))
            .collect();
        lines.push(format!("output: {}", outs.join(", ")));
        lines.join("\n")
    }
}

/// A view's query after parsing, before it is planned against its stream.
#[derive(Clone, Debug, PartialEq)]
pub struct ParsedQuery {
    pub query: Box<Query>,
    /// Byte offset of the query in the statement.
    pub offset: usize,
    pub from: Spanned<String>,
    /// The text sqlparser read, with Proton's interval shorthand rewritten.
    pub text: QueryText,
}

/// A query's text as the parser reads it: Proton's `5m` becomes `INTERVAL 5 MINUTE`, and
/// positions map back to what the user wrote.
#[derive(Clone, Debug, PartialEq)]
pub struct QueryText {
    pub text: String,
    /// Replacements: (start and end in `text`, start in the original, how much longer `text`
    /// is than the original after it).
    shifts: Vec<(usize, usize, usize, isize)>,
}

impl QueryText {
    fn rewrite(original: &str, tokens: &[sqlparser::tokenizer::TokenWithSpan]) -> QueryText {
        let mut text = String::with_capacity(original.len());
        let mut shifts = Vec::new();
        let mut copied = 0;
        for pair in tokens.windows(2) {
            let (Token::Number(n, _), Token::Word(w)) = (&pair[0].token, &pair[1].token) else {
                continue;
            };
            let unit = match w.value.to_ascii_lowercase().as_str() {
                "us" => "MICROSECOND",
                "ms" => "MILLISECOND",
                "s" => "SECOND",
                "m" => "MINUTE",
                "h" => "HOUR",
                "d" => "DAY",
                "w" => "WEEK",
                _ => continue,
            };
            if pair[0].span.end != pair[1].span.start || w.quote_style.is_some() {
                continue;
            }
            let (start, end) = (
                offset_of(original, pair[0].span.start),
                offset_of(original, pair[1].span.end),
            );
            if start < copied || end > original.len() {
                continue;
            }
            text.push_str(&original[copied..start]);
            let new_start = text.len();
            text.push_str(&format!("INTERVAL {n} {unit}"));
            copied = end;
            let delta = text.len() as isize - end as isize;
            shifts.push((new_start, text.len(), start, delta));
        }
        text.push_str(&original[copied..]);
        QueryText { text, shifts }
    }

    /// The offset in the original text of an offset in the rewritten one (the start of what
    /// was written for a place inside a replacement).
    fn original(&self, at: usize) -> usize {
        match self
            .shifts
            .iter()
            .rev()
            .find(|(start, _, _, _)| *start <= at)
        {
            Some((_, end, old_start, _)) if at < *end => *old_start,
            Some((_, _, _, delta)) => (at as isize - delta).max(0) as usize,
            None => at,
        }
    }

    /// The offset in the original text of a parser location.
    fn locate(&self, loc: Location) -> usize {
        self.original(offset_of(&self.text, loc))
    }
}

fn parser_error(sql: &str, base: usize, text: &QueryText, e: ParserError) -> SqlError {
    let msg = match e {
        ParserError::TokenizerError(m) | ParserError::ParserError(m) => m,
        ParserError::RecursionLimitExceeded => {
            return SqlError::at(
                sql,
                base,
                format!("expression nested deeper than {EXPR_DEPTH_MAX} levels"),
            )
        }
    };
    // sqlparser ends its messages with " at Line: L, Column: C".
    if let Some(i) = msg.rfind(" at Line: ") {
        let loc = &msg[i + " at Line: ".len()..];
        let mut parts = loc.split(", Column: ");
        let line = parts.next().and_then(|l| l.trim().parse::<u64>().ok());
        let column = parts.next().and_then(|c| c.trim().parse::<u64>().ok());
        if let (Some(line), Some(column)) = (line, column) {
            let offset = base + text.locate(Location { line, column });
            return SqlError::at(sql, offset, msg[..i].to_string());
        }
    }
    SqlError::at(sql, base, msg)
}

/// Byte offset in `text` of a sqlparser location (line and column from 1, in characters).
fn offset_of(text: &str, loc: Location) -> usize {
    if loc.line == 0 {
        return 0;
    }
    let mut line = 1;
    let mut column = 1;
    for (i, ch) in text.char_indices() {
        if line == loc.line && column == loc.column {
            return i;
        }
        if ch == '\n' {
            line += 1;
            column = 1;
        } else {
            column += 1;
        }
    }
    text.len()
}

/// Parses the query of `CREATE MATERIALIZED VIEW ... AS <query>`, which starts at `offset`.
pub fn parse_query(sql: &str, offset: usize) -> Result<ParsedQuery, SqlError> {
    let original = sql[offset..].trim_end();
    let original = original.strip_suffix(';').unwrap_or(original).trim_end();
    let dialect = ClickHouseDialect {};
    let as_is = QueryText {
        text: original.to_string(),
        shifts: Vec::new(),
    };
    let tokens = Tokenizer::new(&dialect, original)
        .tokenize_with_location()
        .map_err(|e| {
            parser_error(
                sql,
                offset,
                &as_is,
                ParserError::TokenizerError(e.to_string()),
            )
        })?;
    let significant = tokens
        .iter()
        .filter(|t| !matches!(t.token, Token::Whitespace(_)))
        .count();
    if significant > QUERY_TOKENS_MAX {
        return Err(SqlError::at(
            sql,
            offset,
            format!("the view's query has more than {QUERY_TOKENS_MAX} tokens; too many expression terms"),
        ));
    }
    // Proton's EMIT clause has no counterpart in the parser; say so rather than "expected end".
    let mut depth = 0i32;
    for t in &tokens {
        match &t.token {
            Token::LParen => depth += 1,
            Token::RParen => depth -= 1,
            Token::Word(w)
                if depth == 0
                    && w.quote_style.is_none()
                    && w.value.eq_ignore_ascii_case("emit") =>
            {
                return Err(SqlError::at(
                    sql,
                    offset + offset_of(original, t.span.start),
                    "EMIT clauses are not supported yet: a view emits its changes at the end of every batch".to_string(),
                ));
            }
            _ => {}
        }
    }
    let text = QueryText::rewrite(original, &tokens);
    let mut parser = Parser::new(&dialect)
        .with_recursion_limit(EXPR_DEPTH_MAX)
        .try_with_sql(&text.text)
        .map_err(|e| parser_error(sql, offset, &text, e))?;
    let query = parser
        .parse_query()
        .map_err(|e| parser_error(sql, offset, &text, e))?;
    let next = parser.peek_token();
    if next.token != Token::EOF {
        return Err(SqlError::at(
            sql,
            offset + text.locate(next.span.start),
            format!("expected end of statement, found '{}'", next.token),
        ));
    }
    let at = |span: Span| offset + text.locate(span.start);
    let select = match query.body.as_ref() {
        SetExpr::Select(s) => s,
        other => {
            return Err(SqlError::at(
                sql,
                at(other.span()),
                "a materialized view's query must be one SELECT (UNION, VALUES and the like are not supported)".to_string(),
            ))
        }
    };
    let from = match select.from.as_slice() {
        [one] => one,
        [] => {
            return Err(SqlError::at(
                sql,
                at(select.select_token.0.span),
                "a materialized view needs FROM a stream".to_string(),
            ))
        }
        [_, second, ..] => {
            return Err(SqlError::at(
                sql,
                at(second.relation.span()),
                "joins are not supported yet in materialized views (FROM a, b)".to_string(),
            ))
        }
    };
    if let Some(j) = from.joins.first() {
        return Err(SqlError::at(
            sql,
            at(j.relation.span()),
            "joins are not supported yet in materialized views".to_string(),
        ));
    }
    let name = match &from.relation {
        TableFactor::Table {
            name, args: None, ..
        } => name,
        TableFactor::Table {
            name,
            args: Some(args),
            ..
        } => {
            let f = object_name(name).unwrap_or_default().to_ascii_lowercase();
            let stream_arg = match args.args.first() {
                Some(FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::Identifier(id)))) => Some(id),
                _ => None,
            };
            match (f.as_str(), stream_arg) {
                ("tumble", Some(id)) => {
                    let from = Spanned {
                        value: id.value.clone(),
                        offset: at(id.span),
                    };
                    return Ok(ParsedQuery { query: query.clone(), offset, from, text });
                }
                ("tumble", None) => {
                    return Err(SqlError::at(sql, at(name.span()), "tumble() takes a stream first: tumble(stream, time_column, INTERVAL 1 MINUTE)".to_string()))
                }
                ("hop" | "session", _) => {
                    return Err(SqlError::at(sql, at(name.span()), format!("{f}() windows are not supported yet in materialized views (tumble() is)")))
                }
                _ => {
                    return Err(SqlError::at(sql, at(name.span()), format!("table function '{f}' is not supported in materialized views; read FROM a stream or tumble(stream, ...)")))
                }
            }
        }
        TableFactor::Derived { .. } => {
            return Err(SqlError::at(
                sql,
                at(from.relation.span()),
                "subqueries in FROM are not supported yet in materialized views".to_string(),
            ))
        }
        other => {
            return Err(SqlError::at(
                sql,
                at(other.span()),
                "a materialized view reads FROM a stream".to_string(),
            ))
        }
    };
    let Some(from_name) = object_name(name) else {
        return Err(SqlError::at(
            sql,
            at(name.span()),
            format!("'{name}' is not a stream name"),
        ));
    };
    let from = Spanned {
        value: from_name,
        offset: at(name.span()),
    };
    Ok(ParsedQuery {
        query,
        offset,
        from,
        text,
    })
}

/// The length of a fixed interval (`INTERVAL 5 MINUTE`) in microseconds; `None` for months
/// and years, whose length varies.
fn interval_micros(iv: &sqlparser::ast::Interval) -> Option<i64> {
    let n: i64 = match iv.value.as_ref() {
        Expr::Value(v) => match &v.value {
            SqlValue::Number(n, _) => n.parse().ok()?,
            SqlValue::SingleQuotedString(s) => s.trim().parse().ok()?,
            _ => return None,
        },
        _ => return None,
    };
    let unit = iv.leading_field.as_ref()?.to_string().to_ascii_lowercase();
    let unit = unit.strip_suffix('s').unwrap_or(&unit);
    n.checked_mul(unit_micros(unit)?)
}

fn unit_micros(unit: &str) -> Option<i64> {
    Some(match unit {
        "microsecond" | "us" => 1,
        "millisecond" | "ms" => 1_000,
        "second" | "s" => 1_000_000,
        "minute" | "m" => 60_000_000,
        "hour" | "h" => 3_600_000_000,
        "day" | "d" => 86_400_000_000,
        "week" | "w" => 604_800_000_000,
        _ => return None,
    })
}

/// A duration written as `30s`, `5m`, `0s`, in microseconds.
fn duration_micros(s: &str) -> Option<i64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = s.split_at(split);
    n.parse::<i64>()
        .ok()?
        .checked_mul(unit_micros(unit.trim())?)
}

/// A one-part name's text.
fn object_name(name: &ObjectName) -> Option<String> {
    match name.0.as_slice() {
        [ObjectNamePart::Identifier(id)] => Some(id.value.clone()),
        _ => None,
    }
}

const AGGREGATES: &[&str] = &[
    "count",
    "count_if",
    "count_distinct",
    "uniq",
    "uniq_exact",
    "sum",
    "avg",
    "min",
    "max",
    "latest",
    "earliest",
    "any",
    "any_last",
];
/// Aggregates of Proton that Meridian does not compute yet (refused by name, not taken for
/// unknown scalar functions).
const AGGREGATES_LATER: &[&str] = &[
    "top_k",
    "arg_min",
    "arg_max",
    "median",
    "quantile",
    "p90",
    "p95",
    "p99",
    "group_array",
    "group_uniq_array",
    "stddev_pop",
    "stddev_samp",
    "var_pop",
    "var_samp",
    "sum_if",
    "avg_if",
    "min_if",
    "max_if",
    "uniq_combined",
    "count_distinct_if",
    "moving_sum",
    "lag",
    "lags",
    "latest_if",
    "first_value",
    "last_value",
    "sum_distinct",
];
const AGGREGATES_HELP: &str = "supported aggregates: count(), count(x), count(DISTINCT x), count_distinct(x), uniq(x), uniq_exact(x), count_if(cond), sum(x), avg(x), min(x), max(x), latest(x), earliest(x), any(x), any_last(x)";

/// Functions whose result depends on when or where a row is processed; a view replayed after
/// a crash must compute the same rows.
const NONDETERMINISTIC: &[&str] = &[
    "now",
    "now64",
    "today",
    "yesterday",
    "rand",
    "rand64",
    "random",
    "rand_constant",
    "uuid",
    "generate_uuidv4",
    "gen_random_uuid",
    "current_timestamp",
    "current_date",
    "current_time",
    "localtimestamp",
    "local_timestamp",
    "timezone",
    "hostname",
    "version",
    "uptime",
    "row_number",
    "rank",
    "nextval",
    "current_setting",
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Over one source row: stream columns.
    Row,
    /// Over one group: keys and aggregates.
    Group,
}

struct Planner<'a> {
    sql: &'a str,
    base: usize,
    text: &'a QueryText,
    /// `tumble(...)`: the DuckDB SQL of `window_start` and `window_end`.
    window: Option<(String, String)>,
    /// `tumble(...)`: the window's size in microseconds (when fixed) and the event time's SQL.
    window_size_us: Option<i64>,
    window_time: Option<String>,
    stream: &'a StreamDef,
    /// Names a column may be qualified with: the stream's name and its alias.
    qualifiers: Vec<String>,
    nodes: usize,
    depth: usize,
    /// Row-mode SQL of the GROUP BY keys.
    keys: Vec<String>,
    /// Row-mode SQL of the aggregates' arguments.
    args: Vec<String>,
    aggs: Vec<(AggFunc, Option<usize>, String, usize)>,
    /// Output aliases, for GROUP BY and HAVING written with them.
    aliases: Vec<(String, Expr)>,
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn quote_str(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The DuckDB type of a Proton type name, as written in `CAST(x AS t)` or `x::t`.
fn cast_target(t: &str) -> Option<String> {
    let t = t.trim().to_ascii_lowercase();
    for wrapper in ["nullable(", "low_cardinality(", "lowcardinality("] {
        if let Some(inner) = t.strip_prefix(wrapper).and_then(|r| r.strip_suffix(')')) {
            return cast_target(inner);
        }
    }
    Some(
        match t.as_str() {
            "int8" | "tinyint" => "TINYINT",
            "int16" | "smallint" => "SMALLINT",
            "int32" | "int" | "integer" => "INTEGER",
            "int64" | "bigint" => "BIGINT",
            "uint8" => "UTINYINT",
            "uint16" => "USMALLINT",
            "uint32" => "UINTEGER",
            "uint64" => "UBIGINT",
            "float32" | "float" | "real" => "FLOAT",
            "float64" | "double" => "DOUBLE",
            "string" | "varchar" | "text" => "VARCHAR",
            "bool" | "boolean" => "BOOLEAN",
            "date" => "DATE",
            "datetime" => "TIMESTAMP",
            _ => {
                if let Some(p) = t
                    .strip_prefix("datetime64(")
                    .and_then(|r| r.strip_suffix(')'))
                {
                    return p.trim().parse::<u8>().ok().map(|_| "TIMESTAMP".to_string());
                }
                if let Some(ps) = t.strip_prefix("decimal(").and_then(|r| r.strip_suffix(')')) {
                    let nums: Vec<Option<u8>> =
                        ps.split(',').map(|n| n.trim().parse::<u8>().ok()).collect();
                    return match nums.as_slice() {
                        [Some(p)] if (1..=38).contains(p) => Some(format!("DECIMAL({p},0)")),
                        [Some(p), Some(s)] if (1..=38).contains(p) && s <= p => {
                            Some(format!("DECIMAL({p},{s})"))
                        }
                        _ => None,
                    };
                }
                return None;
            }
        }
        .to_string(),
    )
}

impl<'a> Planner<'a> {
    fn at(&self, span: Span) -> usize {
        if span.start.line == 0 {
            return self.base;
        }
        self.base + self.text.locate(span.start)
    }

    /// `window_start` / `window_end` of a `tumble()` view.
    fn window_column(&self, name: &str) -> Option<String> {
        let (start, end) = self.window.as_ref()?;
        if self.stream.column_index(name).is_some() {
            return None;
        }
        match name.to_ascii_lowercase().as_str() {
            "window_start" => Some(start.clone()),
            "window_end" => Some(end.clone()),
            _ => None,
        }
    }

    /// `tumble(stream, time_column, interval)`: the window's start and end over each row.
    fn tumble(&mut self, args: &[FunctionArg], span: Span) -> Result<(), SqlError> {
        let exprs: Vec<&Expr> = args
            .iter()
            .filter_map(|a| match a {
                FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Some(e),
                _ => None,
            })
            .collect();
        let [_, Expr::Identifier(time), size] = exprs.as_slice() else {
            return Err(self.err(span, "tumble() takes tumble(stream, time_column, INTERVAL 1 MINUTE) (or 1m); the time column is required"));
        };
        let col = self.column(time)?;
        let ty = self
            .stream
            .column_index(&time.value)
            .map(|i| self.stream.columns[i].ty);
        if !matches!(ty, Some(ColumnType::Timestamp | ColumnType::Date)) {
            return Err(self.err(
                time.span,
                format!(
                    "tumble() needs a date or datetime column, and '{}' is not one",
                    time.value
                ),
            ));
        }
        let Expr::Interval(iv) = size else {
            return Err(self.err(
                size.span(),
                "tumble() takes its size as an interval: INTERVAL 5 MINUTE or 5m",
            ));
        };
        self.window_size_us = interval_micros(iv);
        self.window_time = Some(format!("CAST({col} AS TIMESTAMP)"));
        let size = self.walk(size, Mode::Row)?;
        // Windows are aligned on the Unix epoch, as Proton aligns them.
        let start = format!(
            "time_bucket({size}, CAST({col} AS TIMESTAMP), TIMESTAMP '1970-01-01 00:00:00')"
        );
        let end = format!("({start} + {size})");
        self.window = Some((start, end));
        Ok(())
    }

    fn err(&self, span: Span, msg: impl Into<String>) -> SqlError {
        SqlError::at(self.sql, self.at(span), msg.into())
    }

    fn column(&self, ident: &Ident) -> Result<String, SqlError> {
        match self.stream.column_index(&ident.value) {
            Some(i) => Ok(quote_ident(&self.stream.columns[i].name)),
            None => {
                let known: Vec<&str> = self
                    .stream
                    .columns
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect();
                Err(self.err(
                    ident.span,
                    format!(
                        "unknown column '{}' in stream '{}' (columns: {})",
                        ident.value,
                        self.stream.name,
                        known.join(", ")
                    ),
                ))
            }
        }
    }

    /// The expression's row-mode SQL if it has one, without counting it.
    fn probe(&mut self, e: &Expr) -> Option<String> {
        let nodes = self.nodes;
        let r = self.walk(e, Mode::Row).ok();
        self.nodes = nodes;
        r
    }

    fn walk(&mut self, e: &Expr, mode: Mode) -> Result<String, SqlError> {
        if self.depth >= EXPR_DEPTH_MAX {
            return Err(self.err(e.span(), format!("expression nested deeper than {EXPR_DEPTH_MAX} levels (a chain of AND, OR or + counts one level per term)")));
        }
        self.depth += 1;
        let r = self.walk_inner(e, mode);
        self.depth -= 1;
        r
    }

    fn walk_inner(&mut self, e: &Expr, mode: Mode) -> Result<String, SqlError> {
        self.nodes += 1;
        if self.nodes > EXPR_NODES_MAX {
            return Err(self.err(
                e.span(),
                format!("the view's expressions hold more than {EXPR_NODES_MAX} terms"),
            ));
        }
        if mode == Mode::Group {
            if let Expr::Identifier(id) = e {
                let aliased = self
                    .aliases
                    .iter()
                    .find(|(a, x)| a.eq_ignore_ascii_case(&id.value) && x != e);
                if self.stream.column_index(&id.value).is_some() && aliased.is_some() {
                    return Err(self.err(
                        id.span,
                        format!("'{}' is both a column of stream '{}' and the alias of another output column; rename the alias", id.value, self.stream.name),
                    ));
                }
            }
            if let Some(row) = self.probe(e) {
                if let Some(i) = self.keys.iter().position(|k| *k == row) {
                    return Ok(format!("k{i}"));
                }
            }
        }
        let group_col = |p: &Planner, id: &Ident| -> SqlError {
            p.err(
                id.span,
                format!(
                    "column '{}' must appear in GROUP BY or be used in an aggregate",
                    id.value
                ),
            )
        };
        Ok(match e {
            Expr::Identifier(id) => {
                if mode == Mode::Group {
                    // An output alias, as in HAVING n > 1.
                    if self.stream.column_index(&id.value).is_none() {
                        if let Some((_, aliased)) = self
                            .aliases
                            .iter()
                            .find(|(a, _)| a.eq_ignore_ascii_case(&id.value))
                            .cloned()
                        {
                            return self.walk(&aliased, mode);
                        }
                    }
                    if self.window_column(&id.value).is_none() {
                        self.column(id)?;
                    }
                    return Err(group_col(self, id));
                }
                match self.window_column(&id.value) {
                    Some(sql) => sql,
                    None => self.column(id)?,
                }
            }
            Expr::CompoundIdentifier(parts) => match parts.as_slice() {
                [q, col]
                    if self
                        .qualifiers
                        .iter()
                        .any(|n| n.eq_ignore_ascii_case(&q.value)) =>
                {
                    if mode == Mode::Group {
                        self.column(col)?;
                        return Err(group_col(self, col));
                    }
                    self.column(col)?
                }
                _ => {
                    return Err(self.err(
                        e.span(),
                        format!("'{e}' is not a column of stream '{}'", self.stream.name),
                    ))
                }
            },
            Expr::Value(v) => match &v.value {
                SqlValue::Number(n, _) => {
                    if n.parse::<i64>().is_ok() {
                        n.clone()
                    } else if n.parse::<f64>().is_ok() {
                        // Proton reads a literal with a point or an exponent as float64.
                        format!("CAST({n} AS DOUBLE)")
                    } else {
                        return Err(self.err(v.span, format!("number '{n}' is out of range")));
                    }
                }
                SqlValue::SingleQuotedString(s) => quote_str(s),
                SqlValue::Boolean(b) => b.to_string(),
                SqlValue::Null => "NULL".to_string(),
                other => return Err(self.err(v.span, format!("unsupported literal {other}"))),
            },
            Expr::Nested(inner) => format!("({})", self.walk(inner, mode)?),
            Expr::UnaryOp { op, expr } => {
                let inner = self.walk(expr, mode)?;
                match op {
                    UnaryOperator::Not => format!("(NOT {inner})"),
                    UnaryOperator::Minus => format!("(- {inner})"),
                    UnaryOperator::Plus => inner,
                    other => {
                        return Err(self.err(e.span(), format!("unsupported operator '{other}'")))
                    }
                }
            }
            Expr::BinaryOp { left, op, right } => {
                let sym = match op {
                    BinaryOperator::Plus => "+",
                    BinaryOperator::Minus => "-",
                    BinaryOperator::Multiply => "*",
                    BinaryOperator::Divide => "/",
                    BinaryOperator::Modulo => "%",
                    BinaryOperator::Gt => ">",
                    BinaryOperator::Lt => "<",
                    BinaryOperator::GtEq => ">=",
                    BinaryOperator::LtEq => "<=",
                    BinaryOperator::Eq => "=",
                    BinaryOperator::NotEq => "<>",
                    BinaryOperator::And => "AND",
                    BinaryOperator::Or => "OR",
                    BinaryOperator::StringConcat => "||",
                    other => {
                        return Err(self.err(e.span(), format!("unsupported operator '{other}'")))
                    }
                };
                let l = self.walk(left, mode)?;
                let r = self.walk(right, mode)?;
                format!("({l} {sym} {r})")
            }
            Expr::IsNull(inner) => format!("({} IS NULL)", self.walk(inner, mode)?),
            Expr::IsNotNull(inner) => format!("({} IS NOT NULL)", self.walk(inner, mode)?),
            Expr::In {
                expr,
                target,
                negated,
                global: false,
            } => match target {
                InTarget::List(list) => {
                    let x = self.walk(expr, mode)?;
                    let mut items = Vec::new();
                    for i in list {
                        items.push(self.walk(i, mode)?);
                    }
                    let not = if *negated { "NOT " } else { "" };
                    format!("({x} {not}IN ({}))", items.join(", "))
                }
                _ => {
                    return Err(self.err(
                        e.span(),
                        "IN with a subquery is not supported in materialized views",
                    ))
                }
            },
            Expr::Between {
                expr,
                negated,
                low,
                high,
            } => {
                let (x, l, h) = (
                    self.walk(expr, mode)?,
                    self.walk(low, mode)?,
                    self.walk(high, mode)?,
                );
                let not = if *negated { "NOT " } else { "" };
                format!("({x} {not}BETWEEN {l} AND {h})")
            }
            Expr::Like {
                negated,
                any: false,
                expr,
                pattern,
                escape_char: None,
            }
            | Expr::ILike {
                negated,
                any: false,
                expr,
                pattern,
                escape_char: None,
            } => {
                let op = if matches!(e, Expr::Like { .. }) {
                    "LIKE"
                } else {
                    "ILIKE"
                };
                let (x, p) = (self.walk(expr, mode)?, self.walk(pattern, mode)?);
                let not = if *negated { "NOT " } else { "" };
                format!("({x} {not}{op} {p})")
            }
            Expr::Case {
                operand,
                conditions,
                else_result,
                ..
            } => {
                let mut out = String::from("(CASE");
                if let Some(o) = operand {
                    out.push_str(&format!(" {}", self.walk(o, mode)?));
                }
                for w in conditions {
                    let c = self.walk(&w.condition, mode)?;
                    let r = self.walk(&w.result, mode)?;
                    out.push_str(&format!(" WHEN {c} THEN {r}"));
                }
                if let Some(x) = else_result {
                    out.push_str(&format!(" ELSE {}", self.walk(x, mode)?));
                }
                out.push_str(" END)");
                out
            }
            Expr::Cast {
                kind,
                expr,
                data_type,
                format: None,
            } => {
                let Some(target) = cast_target(&data_type.to_string()) else {
                    return Err(self.err(
                        e.span(),
                        format!("unsupported type '{data_type}' in a cast; supported: int8..int64, uint8..uint64, float32, float64, decimal(p,s), string, bool, date, datetime, datetime64(p)"),
                    ));
                };
                let x = self.walk(expr, mode)?;
                let f = match kind {
                    CastKind::TryCast | CastKind::SafeCast => "TRY_CAST",
                    CastKind::Cast | CastKind::DoubleColon => "CAST",
                };
                format!("{f}({x} AS {target})")
            }
            Expr::JsonAccess { value, path } => {
                let base = self.walk(value, mode)?;
                let mut p = String::from("$");
                for elem in &path.path {
                    match elem {
                        JsonPathElem::Dot { key, .. } => {
                            p.push_str(&format!(".\"{}\"", key.replace('"', "\\\"")))
                        }
                        JsonPathElem::Bracket {
                            key: Expr::Value(v),
                        } if matches!(&v.value, SqlValue::Number(n, _) if n.parse::<u32>().is_ok()) => {
                            if let SqlValue::Number(n, _) = &v.value {
                                p.push_str(&format!("[{n}]"));
                            }
                        }
                        _ => return Err(self.err(
                            e.span(),
                            "a JSON path takes field names and array positions, as in raw:a.b[0]",
                        )),
                    }
                }
                // Proton's `raw:path` is the field's text.
                format!("json_extract_string({base}, {})", quote_str(&p))
            }
            Expr::Interval(iv) => {
                let unit = iv
                    .leading_field
                    .as_ref()
                    .map(|f| f.to_string().to_ascii_lowercase());
                let n = match iv.value.as_ref() {
                    Expr::Value(v) => match &v.value {
                        SqlValue::Number(n, _) => n.parse::<u64>().ok(),
                        SqlValue::SingleQuotedString(s) => s.trim().parse::<u64>().ok(),
                        _ => None,
                    },
                    _ => None,
                };
                let units = [
                    "microsecond",
                    "millisecond",
                    "second",
                    "minute",
                    "hour",
                    "day",
                    "week",
                    "month",
                    "year",
                ];
                match (n, unit) {
                    (Some(n), Some(u))
                        if units.contains(&u.as_str()) && iv.last_field.is_none() =>
                    {
                        format!("INTERVAL '{n} {u}'")
                    }
                    _ => {
                        return Err(self.err(
                            e.span(),
                            format!("unsupported interval '{e}'; write INTERVAL 5 MINUTE or 5m"),
                        ))
                    }
                }
            }
            Expr::Function(f) => self.function(f, mode)?,
            other => {
                return Err(self.err(
                    other.span(),
                    format!("unsupported expression '{other}' in a materialized view"),
                ))
            }
        })
    }

    fn function_args<'f>(
        &self,
        f: &'f Function,
        name: &str,
    ) -> Result<(bool, Vec<&'f FunctionArgExpr>), SqlError> {
        if f.over.is_some() {
            return Err(self.err(f.name.span(), format!("window functions ({name}(...) OVER ...) are not supported in materialized views")));
        }
        if f.filter.is_some() || !f.within_group.is_empty() || f.null_treatment.is_some() {
            return Err(self.err(
                f.name.span(),
                format!("FILTER, WITHIN GROUP and IGNORE NULLS are not supported ({name})"),
            ));
        }
        if !matches!(f.parameters, FunctionArguments::None) {
            return Err(self.err(
                f.name.span(),
                format!("parametric functions such as {name}(...)(...) are not supported yet"),
            ));
        }
        match &f.args {
            FunctionArguments::None => Ok((false, Vec::new())),
            FunctionArguments::Subquery(_) => Err(self.err(
                f.name.span(),
                format!("{name}() with a subquery is not supported"),
            )),
            FunctionArguments::List(list) => {
                if !list.clauses.is_empty() {
                    return Err(self.err(
                        f.name.span(),
                        format!("clauses inside {name}(...) are not supported"),
                    ));
                }
                let mut args = Vec::new();
                for a in &list.args {
                    match a {
                        FunctionArg::Unnamed(x) => args.push(x),
                        _ => {
                            return Err(self.err(
                                f.name.span(),
                                format!("named arguments are not supported ({name})"),
                            ))
                        }
                    }
                }
                Ok((
                    matches!(list.duplicate_treatment, Some(DuplicateTreatment::Distinct)),
                    args,
                ))
            }
        }
    }

    fn function(&mut self, f: &Function, mode: Mode) -> Result<String, SqlError> {
        let Some(name) = object_name(&f.name).map(|n| n.to_ascii_lowercase()) else {
            return Err(self.err(f.name.span(), format!("unsupported function '{}'", f.name)));
        };
        let span = f.name.span();
        if AGGREGATES.contains(&name.as_str()) {
            if mode == Mode::Row {
                return Err(self.err(span, format!("aggregate function '{name}' is not allowed here (not in WHERE, GROUP BY, or inside another aggregate)")));
            }
            return self.aggregate(f, &name);
        }
        if AGGREGATES_LATER.contains(&name.as_str()) {
            return Err(self.err(
                span,
                format!("aggregate '{name}' is not supported yet; {AGGREGATES_HELP}"),
            ));
        }
        if NONDETERMINISTIC.contains(&name.as_str()) {
            return Err(self.err(span, format!("{name}() is not deterministic: a view's rows must not depend on when a message is processed (a replay after a crash would compute other rows); use a time column of the stream")));
        }
        let (distinct, raw) = self.function_args(f, &name)?;
        if distinct {
            return Err(self.err(
                span,
                format!("DISTINCT is only supported in count(DISTINCT x), not in {name}"),
            ));
        }
        let mut args = Vec::new();
        let mut exprs = Vec::new();
        for a in &raw {
            match a {
                FunctionArgExpr::Expr(x) => {
                    exprs.push(x);
                    args.push(self.walk(x, mode)?);
                }
                _ => return Err(self.err(span, format!("'*' is not an argument of {name}"))),
            }
        }
        let n = args.len();
        let arity = |want: &[usize]| -> Result<(), SqlError> {
            if want.contains(&n) {
                Ok(())
            } else {
                let w: Vec<String> = want.iter().map(usize::to_string).collect();
                Err(self.err(
                    span,
                    format!("{name}() takes {} arguments, got {n}", w.join(" or ")),
                ))
            }
        };
        let call = |f: &str| format!("{f}({})", args.join(", "));
        let cast = |t: &str| -> String {
            format!("CAST({} AS {t})", args.first().cloned().unwrap_or_default())
        };
        // A JSON path argument: '$.a.b' as is, a plain key as '$.key'.
        let json_path = |p: &Planner, i: usize| -> Result<String, SqlError> {
            match exprs.get(i).map(|x| x as &Expr) {
                Some(Expr::Value(v)) => match &v.value {
                    SqlValue::SingleQuotedString(s) if s.starts_with('$') => Ok(quote_str(s)),
                    SqlValue::SingleQuotedString(s) => {
                        Ok(quote_str(&format!("$.\"{}\"", s.replace('"', "\\\""))))
                    }
                    _ => Err(p.err(
                        span,
                        format!("{name}() takes a JSON path as a quoted string"),
                    )),
                },
                _ => Err(p.err(
                    span,
                    format!("{name}() takes a JSON path as a quoted string"),
                )),
            }
        };
        Ok(match name.as_str() {
            // The same function in DuckDB.
            "lower" | "upper" | "concat" | "trim" | "ltrim" | "rtrim" | "replace" | "reverse"
            | "starts_with" | "ends_with" | "abs" | "floor" | "ceil" | "sqrt" | "exp" | "ln"
            | "log10" | "log2" | "pow" | "power" | "greatest" | "least" | "coalesce" | "nullif"
            | "ifnull" | "substring" | "substr" | "left" | "right" | "lpad" | "rpad"
            | "repeat" | "sign" | "round" | "position" | "md5" | "sha256" | "regexp_replace"
            | "regexp_extract" | "split_part" | "year" | "month" | "hour" | "minute"
            | "second" | "date_trunc" | "date_diff" | "json_extract_string" | "json_valid" => {
                call(&name)
            }
            "length" | "char_length" | "length_utf8" => {
                arity(&[1])?;
                call("length")
            }
            "empty" => { arity(&[1])?; format!("(length({}) = 0)", args[0]) }
            "not_empty" => { arity(&[1])?; format!("(length({}) > 0)", args[0]) }
            "match" => { arity(&[2])?; call("regexp_matches") }
            "if" => {
                arity(&[3])?;
                format!("(CASE WHEN {} THEN {} ELSE {} END)", args[0], args[1], args[2])
            }
            "multi_if" => {
                if n < 3 || n % 2 == 0 {
                    return Err(self.err(span, "multi_if() takes cond1, then1, [cond2, then2, ...], else"));
                }
                let mut out = String::from("(CASE");
                for pair in args[..n - 1].chunks(2) {
                    out.push_str(&format!(" WHEN {} THEN {}", pair[0], pair[1]));
                }
                out.push_str(&format!(" ELSE {} END)", args[n - 1]));
                out
            }
            "if_null" => { arity(&[2])?; call("ifnull") }
            "null_if" => { arity(&[2])?; call("nullif") }
            "to_string" => { arity(&[1])?; cast("VARCHAR") }
            "to_int8" => { arity(&[1])?; cast("TINYINT") }
            "to_int16" => { arity(&[1])?; cast("SMALLINT") }
            "to_int32" | "to_int" => { arity(&[1])?; cast("INTEGER") }
            "to_int64" => { arity(&[1])?; cast("BIGINT") }
            "to_uint8" => { arity(&[1])?; cast("UTINYINT") }
            "to_uint16" => { arity(&[1])?; cast("USMALLINT") }
            "to_uint32" => { arity(&[1])?; cast("UINTEGER") }
            "to_float32" => { arity(&[1])?; cast("FLOAT") }
            "to_float64" | "to_float" => { arity(&[1])?; cast("DOUBLE") }
            "to_bool" => { arity(&[1])?; cast("BOOLEAN") }
            "to_date" => { arity(&[1])?; cast("DATE") }
            "to_datetime" | "to_datetime64" => { arity(&[1, 2])?; format!("CAST({} AS TIMESTAMP)", args[0]) }
            "to_start_of_second" | "to_start_of_minute" | "to_start_of_hour" | "to_start_of_day"
            | "to_start_of_month" | "to_start_of_quarter" | "to_start_of_year" => {
                arity(&[1])?;
                let unit = name.trim_start_matches("to_start_of_");
                format!("date_trunc('{unit}', {})", args[0])
            }
            "to_year" => { arity(&[1])?; call("year") }
            "to_quarter" => { arity(&[1])?; call("quarter") }
            "to_month" => { arity(&[1])?; call("month") }
            "to_day_of_month" => { arity(&[1])?; call("day") }
            "to_day_of_year" => { arity(&[1])?; call("dayofyear") }
            "to_day_of_week" => { arity(&[1])?; call("isodow") }
            "to_hour" => { arity(&[1])?; call("hour") }
            "to_minute" => { arity(&[1])?; call("minute") }
            "to_second" => { arity(&[1])?; call("second") }
            "int_div" => { arity(&[2])?; format!("({} // {})", args[0], args[1]) }
            "json_value" => { arity(&[2])?; format!("json_extract_string({}, {})", args[0], json_path(self, 1)?) }
            "json_extract_int" | "json_extract_float" | "json_extract_bool" => {
                arity(&[2])?;
                let t = match name.as_str() {
                    "json_extract_int" => "BIGINT",
                    "json_extract_float" => "DOUBLE",
                    _ => "BOOLEAN",
                };
                format!("TRY_CAST(json_extract_string({}, {}) AS {t})", args[0], json_path(self, 1)?)
            }
            "json_has" => { arity(&[2])?; format!("(json_extract({}, {}) IS NOT NULL)", args[0], json_path(self, 1)?) }
            _ => {
                return Err(self.err(span, format!("unsupported function '{name}' in a materialized view (string, number, date, JSON and conditional functions are supported; see EXPLAIN for what a view computes)")))
            }
        })
    }

    fn aggregate(&mut self, f: &Function, name: &str) -> Result<String, SqlError> {
        let span = f.name.span();
        let (distinct, raw) = self.function_args(f, name)?;
        let star = matches!(raw.as_slice(), [FunctionArgExpr::Wildcard]);
        let arg = match raw.as_slice() {
            [] => None,
            [FunctionArgExpr::Wildcard] => None,
            [FunctionArgExpr::Expr(x)] => Some(x),
            [_] => return Err(self.err(span, format!("unsupported argument of {name}()"))),
            _ => return Err(self.err(span, format!("{name}() takes one argument"))),
        };
        let func = match (name, distinct, arg.is_some()) {
            ("count", false, false) => AggFunc::Count,
            ("count", false, true) | ("count_if", false, true) => AggFunc::CountNonNull,
            ("count", true, true) | ("count_distinct" | "uniq" | "uniq_exact", false, true) => {
                AggFunc::CountDistinct
            }
            ("sum", false, true) => AggFunc::Sum,
            ("avg", false, true) => AggFunc::Avg,
            ("min", false, true) => AggFunc::Min,
            ("max", false, true) => AggFunc::Max,
            ("latest" | "any_last", false, true) => AggFunc::Latest,
            ("earliest" | "any", false, true) => AggFunc::Earliest,
            (_, true, _) => {
                return Err(self.err(
                    span,
                    format!("DISTINCT is only supported in count(DISTINCT x); {AGGREGATES_HELP}"),
                ))
            }
            (_, _, false) if star && name != "count" => {
                return Err(self.err(span, format!("{name}(*) is not supported")))
            }
            (_, _, false) => return Err(self.err(span, format!("{name}() needs an argument"))),
            (_, _, true) => return Err(self.err(span, format!("{name}() takes no argument"))),
        };
        let slot = match arg {
            None => None,
            Some(x) => {
                if let Some(inner) = self.find_aggregate(x) {
                    return Err(self.err(inner, "an aggregate cannot be inside another aggregate"));
                }
                let mut sql = self.walk(x, Mode::Row)?;
                if name == "count_if" {
                    sql = format!("(CASE WHEN {sql} THEN 1 END)");
                }
                Some(match self.args.iter().position(|a| *a == sql) {
                    Some(i) => i,
                    None => {
                        self.args.push(sql);
                        self.args.len() - 1
                    }
                })
            }
        };
        let text = f.to_string();
        let j = match self
            .aggs
            .iter()
            .position(|(g, s, _, _)| *g == func && *s == slot)
        {
            Some(j) => j,
            None => {
                self.aggs.push((func, slot, text, self.at(span)));
                self.aggs.len() - 1
            }
        };
        Ok(format!("a{j}"))
    }

    /// Where an aggregate call is inside `e`, if one is.
    fn find_aggregate(&self, e: &Expr) -> Option<Span> {
        let mut found = None;
        let _ = sqlparser_visit(e, &mut |x| {
            if let Expr::Function(f) = x {
                if object_name(&f.name)
                    .is_some_and(|n| AGGREGATES.contains(&n.to_ascii_lowercase().as_str()))
                {
                    found = Some(f.name.span());
                    return true;
                }
            }
            false
        });
        found
    }
}

/// Calls `f` on `e` and every sub-expression the planner supports, depth first, until it
/// returns true.
fn sqlparser_visit(e: &Expr, f: &mut dyn FnMut(&Expr) -> bool) -> bool {
    if f(e) {
        return true;
    }
    let children: Vec<&Expr> = match e {
        Expr::Nested(x) | Expr::UnaryOp { expr: x, .. } | Expr::IsNull(x) | Expr::IsNotNull(x) => {
            vec![x]
        }
        Expr::Cast { expr, .. } => vec![expr],
        Expr::JsonAccess { value, .. } => vec![value],
        Expr::BinaryOp { left, right, .. } => vec![left, right],
        Expr::In {
            expr,
            target: InTarget::List(list),
            ..
        } => std::iter::once(expr.as_ref()).chain(list).collect(),
        Expr::Between {
            expr, low, high, ..
        } => vec![expr, low, high],
        Expr::Like { expr, pattern, .. } | Expr::ILike { expr, pattern, .. } => vec![expr, pattern],
        Expr::Case {
            operand,
            conditions,
            else_result,
            ..
        } => operand
            .iter()
            .map(|b| b.as_ref())
            .chain(conditions.iter().flat_map(|w| [&w.condition, &w.result]))
            .chain(else_result.iter().map(|b| b.as_ref()))
            .collect(),
        Expr::Function(func) => match &func.args {
            FunctionArguments::List(l) => l
                .args
                .iter()
                .filter_map(|a| match a {
                    FunctionArg::Unnamed(FunctionArgExpr::Expr(x)) => Some(x),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        },
        _ => Vec::new(),
    };
    children.into_iter().any(|c| sqlparser_visit(c, f))
}

/// The planned view: outputs, their key positions, regions and the plan.
pub struct Planned {
    pub outputs: Vec<Output>,
    pub key_outputs: Vec<usize>,
    pub regions: Option<Vec<String>>,
    pub plan: Plan,
}

fn output_name(e: &Expr) -> String {
    match e {
        Expr::Identifier(id) => id.value.clone(),
        Expr::CompoundIdentifier(parts) => parts
            .last()
            .map_or_else(|| e.to_string(), |p| p.value.clone()),
        _ => e.to_string(),
    }
}

/// Plans a parsed view query over its stream.
pub fn plan(
    sql: &str,
    view_name: &Spanned<String>,
    parsed: &ParsedQuery,
    stream: &StreamDef,
) -> Result<Planned, SqlError> {
    let q = &parsed.query;
    let mut p = Planner {
        sql,
        base: parsed.offset,
        text: &parsed.text,
        window: None,
        window_size_us: None,
        window_time: None,
        stream,
        qualifiers: vec![stream.name.clone()],
        nodes: 0,
        depth: 0,
        keys: Vec::new(),
        args: Vec::new(),
        aggs: Vec::new(),
        aliases: Vec::new(),
    };
    if let Some(w) = &q.with {
        return Err(p.err(
            w.with_token.0.span,
            "WITH is not supported yet in materialized views",
        ));
    }
    if let Some(o) = &q.order_by {
        return Err(p.err(
            o.span(),
            "ORDER BY is not supported in materialized views; order when reading",
        ));
    }
    if q.limit_clause.is_some() || q.fetch.is_some() {
        return Err(p.err(
            q.span(),
            "LIMIT is not supported in materialized views; limit when reading",
        ));
    }
    if !q.locks.is_empty()
        || q.for_clause.is_some()
        || q.format_clause.is_some()
        || !q.pipe_operators.is_empty()
    {
        return Err(p.err(
            q.span(),
            "unsupported clause in a materialized view's query",
        ));
    }
    let SetExpr::Select(select) = q.body.as_ref() else {
        return Err(p.err(q.span(), "a materialized view's query must be one SELECT"));
    };
    let s: &Select = select;
    let select_span = s.select_token.0.span;
    if s.distinct.is_some() {
        return Err(p.err(
            select_span,
            "SELECT DISTINCT is not supported; use GROUP BY",
        ));
    }
    if s.top.is_some()
        || s.into.is_some()
        || !s.lateral_views.is_empty()
        || s.prewhere.is_some()
        || !s.connect_by.is_empty()
        || !s.cluster_by.is_empty()
        || !s.distribute_by.is_empty()
        || !s.sort_by.is_empty()
        || !s.named_window.is_empty()
        || s.qualify.is_some()
        || s.exclude.is_some()
    {
        return Err(p.err(select_span, "unsupported clause in a materialized view's SELECT (TOP, INTO, PREWHERE, WINDOW, QUALIFY and the like)"));
    }
    if let Some(TableFactor::Table { alias: Some(a), .. }) = s.from.first().map(|f| &f.relation) {
        p.qualifiers.push(a.name.value.clone());
    }
    if let Some(TableFactor::Table {
        name,
        args: Some(args),
        ..
    }) = s.from.first().map(|f| &f.relation)
    {
        p.tumble(&args.args, name.span())?;
    }
    // The view's settings.
    let mut regions = None;
    let mut lateness: Option<(i64, Span)> = None;
    for setting in q.settings.iter().flatten() {
        let key = setting.key.value.to_ascii_lowercase();
        let value = match &setting.value {
            Expr::Value(v) => match &v.value {
                SqlValue::SingleQuotedString(s) => s.clone(),
                _ => {
                    return Err(p.err(
                        setting.value.span(),
                        format!("setting '{key}' takes a quoted value"),
                    ))
                }
            },
            other => {
                return Err(p.err(
                    other.span(),
                    format!("setting '{key}' takes a quoted value"),
                ))
            }
        };
        match key.as_str() {
            "regions" => {
                let list: Vec<String> = value
                    .split(',')
                    .map(|r| r.trim().to_string())
                    .filter(|r| !r.is_empty())
                    .collect();
                if list.is_empty() {
                    return Err(p.err(
                        setting.value.span(),
                        "regions must name at least one region",
                    ));
                }
                if let Some(bad) = list.iter().find(|r| !crate::defs::valid_region_name(r)) {
                    return Err(p.err(
                        setting.value.span(),
                        format!("'{bad}' is not a region name (letters, digits, '-' and '_')"),
                    ));
                }
                regions = Some(list);
            }
            "allowed_lateness" => {
                let Some(us) = duration_micros(&value) else {
                    return Err(p.err(setting.value.span(), format!("allowed_lateness '{value}': write a duration such as '30s', '5m' or '0s'")));
                };
                lateness = Some((us, setting.value.span()));
            }
            other => {
                return Err(p.err(
                    setting.key.span,
                    format!("unknown view setting '{other}'; supported: regions, allowed_lateness"),
                ))
            }
        }
    }
    // Select items: expressions with their output names.
    let mut items: Vec<(Expr, String, Span)> = Vec::new();
    for item in &s.projection {
        match item {
            SelectItem::UnnamedExpr(e) => items.push((e.clone(), output_name(e), e.span())),
            SelectItem::ExprWithAlias { expr, alias } => {
                items.push((expr.clone(), alias.value.clone(), expr.span()))
            }
            SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..) => {
                for c in &stream.columns {
                    let id = Ident::new(c.name.clone());
                    items.push((Expr::Identifier(id), c.name.clone(), item.span()));
                }
            }
            other => return Err(p.err(other.span(), format!("unsupported select item '{other}'"))),
        }
    }
    p.aliases = items
        .iter()
        .map(|(e, n, _)| (n.clone(), e.clone()))
        .collect();
    let group_by: Vec<Expr> = match &s.group_by {
        GroupByExpr::Expressions(list, mods) if mods.is_empty() => list.clone(),
        _ => {
            return Err(p.err(
                select_span,
                "GROUP BY ALL, ROLLUP, CUBE and WITH TOTALS are not supported",
            ))
        }
    };
    let has_aggregate = items.iter().any(|(e, _, _)| p.find_aggregate(e).is_some())
        || s.having
            .as_ref()
            .is_some_and(|h| p.find_aggregate(h).is_some());
    let kind = if group_by.is_empty() && !has_aggregate {
        PlanKind::Project
    } else {
        PlanKind::Aggregate
    };
    // WHERE, over the source row.
    let filter = match &s.selection {
        Some(w) => {
            if let Some(span) = p.find_aggregate(w) {
                return Err(p.err(span, "aggregates are not allowed in WHERE; use HAVING"));
            }
            Some((p.walk(w, Mode::Row)?, w.span()))
        }
        None => None,
    };
    // GROUP BY keys: an expression, an output alias or a position.
    let mut key_spans = Vec::new();
    for g in &group_by {
        let target: Expr = match g {
            Expr::Identifier(id) if stream.column_index(&id.value).is_none() => {
                match items
                    .iter()
                    .find(|(_, n, _)| n.eq_ignore_ascii_case(&id.value))
                {
                    Some((e, _, _)) => e.clone(),
                    None => g.clone(),
                }
            }
            Expr::Value(v) if matches!(&v.value, SqlValue::Number(..)) => {
                let SqlValue::Number(n, _) = &v.value else {
                    unreachable!()
                };
                match n
                    .parse::<usize>()
                    .ok()
                    .and_then(|i| i.checked_sub(1))
                    .and_then(|i| items.get(i))
                {
                    Some((e, _, _)) => e.clone(),
                    None => {
                        return Err(
                            p.err(v.span, format!("GROUP BY {n}: there is no select item {n}"))
                        )
                    }
                }
            }
            _ => g.clone(),
        };
        if let Some(span) = p.find_aggregate(&target) {
            return Err(p.err(span, "aggregates are not allowed in GROUP BY"));
        }
        let key = p.walk(&target, Mode::Row)?;
        if p.keys.contains(&key) {
            return Err(p.err(g.span(), format!("'{g}' appears twice in GROUP BY")));
        }
        p.keys.push(key);
        key_spans.push(g.span());
    }
    // The outputs.
    let mut out_sql = Vec::new();
    for (e, name, span) in &items {
        if crate::catalog::is_reserved(name) {
            return Err(p.err(
                *span,
                format!("output column '{name}': names starting with '_meridian' are reserved"),
            ));
        }
        if out_sql.len()
            != items
                .iter()
                .position(|(_, n, _)| n.eq_ignore_ascii_case(name))
                .unwrap_or(out_sql.len())
        {
            return Err(p.err(
                *span,
                format!("output column '{name}' appears twice; give it an alias with AS"),
            ));
        }
        let mode = if kind == PlanKind::Aggregate {
            Mode::Group
        } else {
            Mode::Row
        };
        out_sql.push(p.walk(e, mode)?);
    }
    let having = match &s.having {
        Some(h) if kind == PlanKind::Aggregate => Some((p.walk(h, Mode::Group)?, h.span())),
        Some(h) => return Err(p.err(h.span(), "HAVING needs GROUP BY or an aggregate")),
        None => None,
    };

    // Types: the stateless part over the stream's columns.
    let stream_cols: Vec<(String, String)> = stream
        .columns
        .iter()
        .map(|c| (c.name.clone(), c.ty.duckdb_type().to_string()))
        .collect();
    let filter_sql = match filter {
        Some((f, span)) => {
            let t = eval::describe(&stream_cols, std::slice::from_ref(&f))
                .map_err(|(_, m)| p.err(span, m))?;
            if !matches!(
                t.first().map(String::as_str),
                Some("BOOLEAN") | Some("\"NULL\"") | Some("NULL")
            ) {
                return Err(p.err(
                    span,
                    format!(
                        "WHERE needs a condition, not a {} value",
                        t.first().map_or("", String::as_str)
                    ),
                ));
            }
            Some(f)
        }
        None => None,
    };
    let typed = |p: &Planner,
                 exprs: &[String],
                 spans: &[Span],
                 cols: &[(String, String)]|
     -> Result<Vec<Slot>, SqlError> {
        let types = eval::describe(cols, exprs)
            .map_err(|(i, m)| p.err(spans.get(i).copied().unwrap_or(select_span), m))?;
        exprs
            .iter()
            .zip(&types)
            .enumerate()
            .map(|(i, (sql, t))| {
                eval::storage_type(t, sql)
                    .map(|(ty, sql)| Slot { sql, ty })
                    .map_err(|m| {
                        p.err(
                            spans.get(i).copied().unwrap_or(select_span),
                            format!("'{}' cannot be a view column: {m}", exprs[i]),
                        )
                    })
            })
            .collect()
    };
    let item_spans: Vec<Span> = items.iter().map(|(_, _, s)| *s).collect();
    if let (PlanKind::Project, Some((_, span))) = (kind, lateness) {
        return Err(p.err(
            span,
            "allowed_lateness is for windowed aggregates (GROUP BY window_start)",
        ));
    }
    let (outputs, key_outputs, plan) = match kind {
        PlanKind::Project => {
            let slots = typed(&p, &out_sql, &item_spans, &stream_cols)?;
            if stream.primary_key.is_empty() {
                return Err(p.err(select_span, format!("a view without aggregates keeps one row per source row, keyed by the stream's primary key, and stream '{}' has none (set primary_key='...' on the stream, or aggregate with GROUP BY)", stream.name)));
            }
            let mut key_outputs = Vec::new();
            for &pk in &stream.primary_key {
                let col = quote_ident(&stream.columns[pk].name);
                let Some(pos) = out_sql.iter().position(|s| *s == col) else {
                    return Err(p.err(select_span, format!("a view without aggregates is keyed by the stream's primary key: select column '{}' as it is", stream.columns[pk].name)));
                };
                key_outputs.push(pos);
            }
            let outputs = items
                .iter()
                .zip(&slots)
                .map(|((_, n, _), s)| Output {
                    name: n.clone(),
                    ty: s.ty,
                })
                .collect();
            (
                outputs,
                key_outputs,
                Plan {
                    kind,
                    filter: filter_sql,
                    project: slots,
                    n_keys: 0,
                    aggregates: Vec::new(),
                    finish: Finish::Direct(Vec::new()),
                    window: None,
                },
            )
        }
        PlanKind::Aggregate => {
            // Windows that close: the event time is one more slot, after the aggregates'.
            let mut window_plan = None;
            if let Some((lateness_us, span)) = lateness {
                let start = p.window.as_ref().map(|(start, _)| start.clone());
                let start_key = start.and_then(|st| p.keys.iter().position(|k| *k == st));
                let (Some(start_key), Some(size_us), Some(time)) =
                    (start_key, p.window_size_us, p.window_time.clone())
                else {
                    return Err(p.err(span, "allowed_lateness needs FROM tumble(stream, time, size) with a fixed size, grouped by window_start"));
                };
                p.args.push(time);
                window_plan = Some(WindowPlan {
                    start_key,
                    time_slot: p.keys.len() + p.args.len() - 1,
                    size_us,
                    lateness_us,
                });
            }
            let mut row_exprs = p.keys.clone();
            row_exprs.extend(p.args.iter().cloned());
            let mut spans = key_spans.clone();
            spans.extend(p.args.iter().map(|_| select_span));
            let project = typed(&p, &row_exprs, &spans, &stream_cols)?;
            let n_keys = p.keys.len();
            let mut aggregates = Vec::new();
            for (func, arg, text, at) in &p.aggs {
                let arg_ty = arg.map(|a| project[n_keys + a].ty);
                let numeric = arg_ty.is_some_and(ColumnType::is_numeric);
                let ty = match func {
                    AggFunc::Count | AggFunc::CountNonNull | AggFunc::CountDistinct => {
                        ColumnType::Int64
                    }
                    AggFunc::Sum | AggFunc::Avg if !numeric => {
                        return Err(SqlError::at(
                            sql,
                            *at,
                            format!(
                                "{text} needs a number, but its argument is {}",
                                arg_ty.map_or("nothing", ColumnType::name)
                            ),
                        ));
                    }
                    AggFunc::Sum => arg_ty.unwrap_or(ColumnType::Int64),
                    AggFunc::Avg => ColumnType::Float64,
                    AggFunc::Min | AggFunc::Max | AggFunc::Latest | AggFunc::Earliest => {
                        arg_ty.unwrap_or(ColumnType::Int64)
                    }
                };
                aggregates.push(Aggregate {
                    func: *func,
                    arg: arg.map(|a| n_keys + a),
                    ty,
                    text: text.clone(),
                });
            }
            let mut plan = Plan {
                kind,
                filter: filter_sql,
                project,
                n_keys,
                aggregates,
                finish: Finish::Direct(Vec::new()),
                window: window_plan,
            };
            // Outputs straight from keys and aggregates need no evaluation per group.
            let direct: Option<Vec<Ref>> = out_sql
                .iter()
                .map(|s| {
                    let (kind, n) = s.split_at(1);
                    let n: usize = n.parse().ok()?;
                    match kind {
                        "k" => Some(Ref::Key(n)),
                        "a" => Some(Ref::Agg(n)),
                        _ => None,
                    }
                })
                .collect();
            let group_cols = plan.group_columns();
            let outputs: Vec<Output> = match (direct, &having) {
                (Some(refs), None) => {
                    let outputs = items
                        .iter()
                        .zip(&refs)
                        .map(|((_, n, _), r)| Output {
                            name: n.clone(),
                            ty: match r {
                                Ref::Key(i) => plan.project[*i].ty,
                                Ref::Agg(j) => plan.aggregates[*j].ty,
                            },
                        })
                        .collect();
                    plan.finish = Finish::Direct(refs);
                    outputs
                }
                _ => {
                    let slots = typed(&p, &out_sql, &item_spans, &group_cols)?;
                    let having = match having {
                        Some((h, span)) => {
                            let t = eval::describe(&group_cols, std::slice::from_ref(&h))
                                .map_err(|(_, m)| p.err(span, m))?;
                            if !matches!(t.first().map(String::as_str), Some("BOOLEAN")) {
                                return Err(p.err(span, "HAVING needs a condition"));
                            }
                            Some(h)
                        }
                        None => None,
                    };
                    let outputs = items
                        .iter()
                        .zip(&slots)
                        .map(|((_, n, _), s)| Output {
                            name: n.clone(),
                            ty: s.ty,
                        })
                        .collect();
                    plan.finish = Finish::Eval {
                        exprs: slots.into_iter().map(|s| s.sql).collect(),
                        having,
                    };
                    outputs
                }
            };
            let mut key_outputs = Vec::new();
            for (i, span) in key_spans.iter().enumerate() {
                let k = format!("k{i}");
                let Some(pos) = out_sql.iter().position(|s| *s == k) else {
                    return Err(p.err(*span, "a GROUP BY expression must also be selected: it is the key of the view's rows"));
                };
                key_outputs.push(pos);
            }
            (outputs, key_outputs, plan)
        }
    };
    if kind == PlanKind::Aggregate && plan.aggregates.is_empty() && !plan.project.is_empty() {
        // GROUP BY without aggregates is a distinct list of keys: fine, rows count the group.
    }
    let _ = view_name;
    Ok(Planned {
        outputs,
        key_outputs,
        regions,
        plan,
    })
}
