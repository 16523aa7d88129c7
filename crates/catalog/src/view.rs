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
    Query, Select, SelectItem, SetExpr, Spanned as _, TableFactor, TableWithJoins, UnaryOperator,
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

mod emit;
mod expr;
mod functions;
use functions::aggregate_type;
mod join;
mod parse;
mod plan;
mod settings;
mod window;

use expr::{duration_micros, quote_ident, quote_str, Mode, Planner};
pub use join::{join_input_names, joined_input};
use parse::object_name;
pub use parse::{parse_query, Derived, DerivedItem, ParsedQuery, QueryText};
pub use plan::{
    AggFunc, Aggregate, Finish, HopPlan, JoinKind, JoinPlan, Plan, PlanKind, Ref, Slot, WindowPlan,
};

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

/// Plans a parsed view query over its stream (and the stream it joins, if it does).
pub fn plan(
    sql: &str,
    parsed: &ParsedQuery,
    stream: &StreamDef,
    joined: Option<&StreamDef>,
) -> Result<Planned, SqlError> {
    let q = &parsed.query;
    let join = match (&parsed.join, joined) {
        (Some(_), Some(right)) => Some(join::join_context(sql, parsed, stream, right)?),
        (Some(j), None) => {
            return Err(SqlError::at(
                sql,
                j.offset,
                format!("stream '{}' to join was not found", j.value),
            ))
        }
        (None, _) => None,
    };
    let input = match &join {
        Some(j) => joined_input(stream, j.right, &j.names),
        None => stream.clone(),
    };
    let left_stream = stream;
    let stream = &input;
    let mut p = Planner {
        join,
        sql,
        base: parsed.offset,
        text: &parsed.text,
        window: None,
        window_size_us: None,
        window_time: None,
        hop_slide_us: None,
        derived: parsed.derived.clone(),
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
        if p.join.is_some() {
            // As in SQL, an aliased stream is named by its alias only.
            p.qualifiers.clear();
        }
        p.qualifiers.push(a.name.value.clone());
    }
    if let Some(j) = &p.join {
        if let Some(q) = j
            .qualifiers
            .iter()
            .find(|q| p.qualifiers.iter().any(|l| l.eq_ignore_ascii_case(q)))
        {
            return Err(p.err(
                select_span,
                format!("both sides of the join are named '{q}'; give them different aliases"),
            ));
        }
    }
    if let Some(TableFactor::Table {
        name,
        args: Some(args),
        ..
    }) = s.from.first().map(|f| &f.relation)
    {
        if object_name(name).is_some_and(|f| f.eq_ignore_ascii_case("hop")) {
            p.hop(&args.args, name.span())?;
        } else {
            p.tumble(&args.args, name.span())?;
        }
    }
    let settings::Settings {
        regions,
        lateness,
        retention,
    } = settings::view_settings(&p, q)?;
    // A subquery read FROM computes columns; aggregating is the view's own job.
    if let Some(d) = &parsed.derived {
        for item in &d.items {
            if let DerivedItem::Column(_, e) = item {
                if let Some(span) = p.find_aggregate(e) {
                    return Err(p.err(span, "a subquery that aggregates is not supported; create it as a view of its own and read that view FROM (a view over a view)"));
                }
            }
        }
    }
    // Select items: expressions with their output names.
    let mut items: Vec<(Expr, String, Span)> = Vec::new();
    let stream_columns = |items: &mut Vec<(Expr, String, Span)>, span: Span| {
        for c in &stream.columns {
            let id = Ident::new(c.name.clone());
            items.push((Expr::Identifier(id), c.name.clone(), span));
        }
    };
    for item in &s.projection {
        match item {
            SelectItem::UnnamedExpr(e) => items.push((e.clone(), output_name(e), e.span())),
            SelectItem::ExprWithAlias { expr, alias } => {
                items.push((expr.clone(), alias.value.clone(), expr.span()))
            }
            SelectItem::Wildcard(opts) | SelectItem::QualifiedWildcard(_, opts)
                if !parse::plain_wildcard(opts) =>
            {
                return Err(p.err(
                    item.span(),
                    "SELECT * with EXCLUDE, EXCEPT, REPLACE, RENAME or ILIKE is not supported in materialized views; list the columns",
                ))
            }
            SelectItem::QualifiedWildcard(..) if p.join.is_some() => {
                return Err(p.err(
                    item.span(),
                    "a qualified * (o.* or c.*) over a join is not supported; list the columns",
                ))
            }
            SelectItem::Wildcard(_) if p.join.as_ref().is_some_and(|j| !j.ambiguous.is_empty()) => {
                let both = p.join.as_ref().map(|j| j.ambiguous.join(", ")).unwrap_or_default();
                return Err(p.err(
                    item.span(),
                    format!("SELECT * over a join whose streams both have column(s) {both}; list the columns (qualified where both have them)"),
                ));
            }
            SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..) => match &parsed.derived {
                // The subquery's columns, in its order.
                Some(d) => {
                    for di in &d.items {
                        match di {
                            DerivedItem::Column(n, _) => items.push((
                                Expr::Identifier(Ident::new(n.clone())),
                                n.clone(),
                                item.span(),
                            )),
                            DerivedItem::Star => stream_columns(&mut items, item.span()),
                        }
                    }
                }
                None => stream_columns(&mut items, item.span()),
            },
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
    // The subquery's WHERE, over the stream, holds too.
    let inner_filter = match parsed.derived.as_ref().and_then(|d| d.selection.clone()) {
        Some(w) => {
            if let Some(span) = p.find_aggregate(&w) {
                return Err(p.err(span, "aggregates are not allowed in WHERE"));
            }
            let derived = p.derived.take();
            let sql = p.walk(&w, Mode::Row);
            p.derived = derived;
            Some((sql?, w.span()))
        }
        None => None,
    };
    let filter = match (inner_filter, filter) {
        (Some((a, _)), Some((b, span))) => Some((format!("({a}) AND ({b})"), span)),
        (one, None) | (None, one) => one,
    };
    // GROUP BY keys: an expression, an output alias or a position.
    let mut key_spans = Vec::new();
    for g in &group_by {
        let target: Expr = match g {
            Expr::Identifier(id)
                if stream.column_index(&id.value).is_none()
                    && parsed
                        .derived
                        .as_ref()
                        .is_none_or(|d| d.column(&id.value).is_none()) =>
            {
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
    if let (PlanKind::Project, Some(_)) = (kind, p.hop_slide_us) {
        return Err(p.err(
            select_span,
            "a hop() view aggregates: GROUP BY window_start (a row is in several windows, so a view without aggregates has no one row per source row)",
        ));
    }
    if let (PlanKind::Project, Some((_, span))) = (kind, lateness.or(retention)) {
        return Err(p.err(
            span,
            "allowed_lateness and window_retention are for windowed aggregates (GROUP BY window_start)",
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
                    hop: None,
                    join: None,
                    emit_final: false,
                    emit_period_us: None,
                },
            )
        }
        PlanKind::Aggregate => {
            let (hop_plan, window_plan) = p.window_plans(
                &key_spans,
                select_span,
                filter_sql.as_deref(),
                lateness,
                retention,
            )?;
            let mut row_exprs = p.keys.clone();
            row_exprs.extend(p.args.iter().cloned());
            let mut spans = key_spans.clone();
            spans.extend(p.args.iter().map(|_| select_span));
            let project = typed(&p, &row_exprs, &spans, &stream_cols)?;
            let n_keys = p.keys.len();
            // Arrays pass through a view: they are not grouped by, compared or aggregated.
            if let Some(i) = (0..n_keys).find(|&i| matches!(project[i].ty, ColumnType::List(_))) {
                return Err(p.err(
                    key_spans[i],
                    format!("GROUP BY {}: an array cannot be a group key; group by a scalar, such as array_length(...) or to_string(...)", p.keys[i]),
                ));
            }
            let mut aggregates = Vec::new();
            for (func, arg, by, text, at) in &p.aggs {
                let arg_ty = arg.map(|a| project[n_keys + a].ty);
                let by_ty = by.map(|b| project[n_keys + b].ty);
                let ty = aggregate_type(*func, arg_ty, by_ty, text)
                    .map_err(|m| SqlError::at(sql, *at, m))?;
                aggregates.push(Aggregate {
                    func: *func,
                    arg: arg.map(|a| n_keys + a),
                    by: by.map(|b| n_keys + b),
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
                hop: hop_plan,
                join: None,
                emit_final: false,
                emit_period_us: None,
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
    let mut plan = plan;
    plan.emit_period_us = parsed.emit.periodic_us;
    if let Some(at) = parsed.emit.after_watermark {
        if plan.window.is_none() {
            return Err(SqlError::at(sql, at + parsed.offset, "EMIT AFTER WATERMARK needs windows that close: FROM tumble() or hop() grouped by window_start, with SETTINGS allowed_lateness".to_string()));
        }
        plan.emit_final = true;
    }
    if p.join.is_some() {
        if let Some(a) = plan
            .aggregates
            .iter()
            .find(|a| matches!(a.func, AggFunc::Latest | AggFunc::Earliest))
        {
            return Err(p.err(
                select_span,
                format!("{} over a join is not supported yet: a change to the joined stream re-joins rows, which has no arrival order", a.text),
            ));
        }
        plan.join = Some(Box::new(p.join_plan(s, left_stream)?));
    }
    Ok(Planned {
        outputs,
        key_outputs,
        regions,
        plan,
    })
}
