//! Reading a view's query: Proton's shorthand rewritten, sqlparser, positions mapped back,
//! and the stream it reads found.

use super::emit::{emit_clause, Emit};
use super::*;

/// A view's query after parsing, before it is planned against its stream.
#[derive(Clone, Debug, PartialEq)]
pub struct ParsedQuery {
    /// The query; when it reads FROM a subquery (or a WITH query), its FROM is the
    /// subquery's, and the subquery's columns and WHERE are in `derived`.
    pub query: Box<Query>,
    /// Byte offset of the query in the statement.
    pub offset: usize,
    pub from: Spanned<String>,
    /// The text sqlparser read, with Proton's interval shorthand rewritten.
    pub text: QueryText,
    pub derived: Option<Box<Derived>>,
    /// `JOIN t ON ...`: the joined stream's name (the condition is planned with the view).
    pub join: Option<Spanned<String>>,
    /// The `EMIT` clause.
    pub emit: Emit,
}

/// A subquery in FROM (or a WITH query) that only filters and computes columns over a stream:
/// the view reads the stream, and the subquery's columns stand for their expressions.
#[derive(Clone, Debug, PartialEq)]
pub struct Derived {
    /// What the view may qualify its columns with: the subquery's alias or the WITH name.
    pub names: Vec<String>,
    pub items: Vec<DerivedItem>,
    /// The subquery's WHERE, over the stream.
    pub selection: Option<Expr>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum DerivedItem {
    /// An output column: its name and its expression over the stream.
    Column(String, Box<Expr>),
    /// `*`: the stream's columns.
    Star,
}

impl Derived {
    pub fn column(&self, name: &str) -> Option<&Expr> {
        self.items.iter().find_map(|i| match i {
            DerivedItem::Column(n, e) if n.eq_ignore_ascii_case(name) => Some(e.as_ref()),
            _ => None,
        })
    }

    pub fn has_star(&self) -> bool {
        self.items.iter().any(|i| matches!(i, DerivedItem::Star))
    }

    pub fn column_names(&self) -> Vec<&str> {
        self.items
            .iter()
            .filter_map(|i| match i {
                DerivedItem::Column(n, _) => Some(n.as_str()),
                DerivedItem::Star => None,
            })
            .collect()
    }
}

/// Reads a subquery in FROM, or a WITH query read FROM, into the outer query: the outer query
/// then reads the subquery's FROM, and the subquery's columns and WHERE are returned. Only a
/// subquery that filters and computes columns (no aggregates, GROUP BY, DISTINCT, LIMIT, or
/// another subquery) is read this way; others are refused with their position.
fn inline_subquery(
    sql: &str,
    at: &dyn Fn(Span) -> usize,
    mut query: Box<Query>,
) -> Result<(Box<Query>, Option<Box<Derived>>), SqlError> {
    let refuse = |span: Span, msg: &str| Err(SqlError::at(sql, at(span), msg.to_string()));
    let with = query.with.take();
    let SetExpr::Select(select) = query.body.as_mut() else {
        query.with = with;
        return Ok((query, None));
    };
    let Some(from) = select.from.first() else {
        query.with = with;
        return Ok((query, None));
    };
    if select.from.len() > 1 || !from.joins.is_empty() {
        query.with = with;
        return Ok((query, None));
    }
    let (inner, names): (Query, Vec<String>) = match &from.relation {
        TableFactor::Derived {
            lateral,
            subquery,
            alias,
            ..
        } => {
            if *lateral {
                return refuse(
                    from.relation.span(),
                    "LATERAL subqueries are not supported in materialized views",
                );
            }
            if let Some(w) = &with {
                return refuse(
                    w.with_token.0.span,
                    "WITH and a subquery in FROM together are not supported; use one of them",
                );
            }
            if alias.as_ref().is_some_and(|a| !a.columns.is_empty()) {
                return refuse(from.relation.span(), "column names after a subquery's alias are not supported; name the columns inside the subquery (AS)");
            }
            (
                subquery.as_ref().clone(),
                alias.iter().map(|a| a.name.value.clone()).collect(),
            )
        }
        TableFactor::Table {
            name,
            args: None,
            alias,
            ..
        } if with.is_some() => {
            let Some(w) = &with else { unreachable!() };
            if w.recursive {
                return refuse(
                    w.with_token.0.span,
                    "WITH RECURSIVE is not supported in materialized views",
                );
            }
            let [cte] = w.cte_tables.as_slice() else {
                return refuse(
                    w.with_token.0.span,
                    "a materialized view reads one WITH query; write the others into it",
                );
            };
            let from_name = object_name(name).unwrap_or_default();
            if !cte.alias.name.value.eq_ignore_ascii_case(&from_name) {
                return refuse(
                    name.span(),
                    &format!(
                        "the view reads FROM '{from_name}', not the WITH query '{}'; read FROM it",
                        cte.alias.name.value
                    ),
                );
            }
            if !cte.alias.columns.is_empty() {
                return refuse(cte.alias.name.span, "column names after a WITH query's name are not supported; name the columns inside it (AS)");
            }
            if cte.materialized.is_some() {
                return refuse(cte.alias.name.span, "MATERIALIZED in WITH is not supported");
            }
            let mut names = vec![cte.alias.name.value.clone()];
            names.extend(alias.iter().map(|a| a.name.value.clone()));
            (cte.query.as_ref().clone(), names)
        }
        _ => {
            if let Some(w) = &with {
                return refuse(
                    w.with_token.0.span,
                    "a WITH query must be what the view reads FROM",
                );
            }
            return Ok((query, None));
        }
    };
    // The subquery: one SELECT that filters and computes columns over a stream.
    let span = inner.body.span();
    if inner.with.is_some() {
        return refuse(
            span,
            "WITH inside a subquery is not supported; subqueries nest one level",
        );
    }
    if inner.order_by.is_some() || inner.limit_clause.is_some() || inner.fetch.is_some() {
        return refuse(
            span,
            "ORDER BY and LIMIT are not supported in a view's subquery",
        );
    }
    if inner.settings.is_some()
        || !inner.locks.is_empty()
        || inner.format_clause.is_some()
        || inner.for_clause.is_some()
        || !inner.pipe_operators.is_empty()
    {
        return refuse(
            span,
            "unsupported clause in a view's subquery (SETTINGS belong to the view)",
        );
    }
    let SetExpr::Select(inner_select) = *inner.body else {
        return refuse(
            span,
            "a view's subquery must be one SELECT (UNION, VALUES and the like are not supported)",
        );
    };
    let inner_span = inner_select.select_token.0.span;
    if inner_select.distinct.is_some() {
        return refuse(inner_span, "SELECT DISTINCT in a subquery is not supported");
    }
    match &inner_select.group_by {
        GroupByExpr::Expressions(list, mods) if list.is_empty() && mods.is_empty() => {}
        _ => {
            return refuse(inner_span, "a subquery that groups is not supported; create it as a view of its own and read that view FROM (a view over a view)");
        }
    }
    if inner_select.having.is_some()
        || !inner_select.named_window.is_empty()
        || inner_select.qualify.is_some()
        || inner_select.prewhere.is_some()
        || inner_select.top.is_some()
        || inner_select.into.is_some()
    {
        return refuse(inner_span, "unsupported clause in a view's subquery (HAVING, WINDOW, QUALIFY, PREWHERE and the like)");
    }
    if let Some(TableWithJoins {
        relation: TableFactor::Derived { .. },
        ..
    }) = inner_select.from.first()
    {
        return refuse(
            inner_select.from[0].relation.span(),
            "subqueries nest one level in materialized views",
        );
    }
    let mut items = Vec::new();
    for item in &inner_select.projection {
        match item {
            SelectItem::UnnamedExpr(e) => items.push(DerivedItem::Column(
                super::output_name(e),
                Box::new(e.clone()),
            )),
            SelectItem::ExprWithAlias { expr, alias } => items.push(DerivedItem::Column(
                alias.value.clone(),
                Box::new(expr.clone()),
            )),
            SelectItem::Wildcard(opts) | SelectItem::QualifiedWildcard(_, opts)
                if !plain_wildcard(opts) =>
            {
                return refuse(item.span(), "SELECT * with EXCLUDE, EXCEPT, REPLACE, RENAME or ILIKE is not supported in a view's subquery; list the columns");
            }
            SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..) => {
                items.push(DerivedItem::Star)
            }
            other => {
                return refuse(
                    other.span(),
                    &format!("unsupported select item '{other}' in a subquery"),
                );
            }
        }
    }
    select.from = inner_select.from.clone();
    Ok((
        query,
        Some(Box::new(Derived {
            names,
            items,
            selection: inner_select.selection.clone(),
        })),
    ))
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
    pub(super) fn rewrite(
        original: &str,
        tokens: &[sqlparser::tokenizer::TokenWithSpan],
    ) -> QueryText {
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
    pub(super) fn original(&self, at: usize) -> usize {
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
    pub(super) fn locate(&self, loc: Location) -> usize {
        self.original(offset_of(&self.text, loc))
    }
}

pub(super) fn parser_error(sql: &str, base: usize, text: &QueryText, e: ParserError) -> SqlError {
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
pub(super) fn offset_of(text: &str, loc: Location) -> usize {
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
    // Proton's EMIT clause has no counterpart in the parser: it is read here and blanked out
    // (same length, so positions stay) before the query is parsed.
    let (emit, blanked) = emit_clause(sql, offset, original, &tokens)?;
    let tokens = match &blanked {
        Some(b) => Tokenizer::new(&dialect, b)
            .tokenize_with_location()
            .map_err(|e| {
                parser_error(
                    sql,
                    offset,
                    &as_is,
                    ParserError::TokenizerError(e.to_string()),
                )
            })?,
        None => tokens,
    };
    let original = blanked.as_deref().unwrap_or(original);
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
    let (query, derived) = inline_subquery(sql, &at, query)?;
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
    if let Some(span) = join::relation_extras(&from.relation) {
        return Err(SqlError::at(
            sql,
            at(span),
            "a view reads a stream by its name and an alias only (no column list, sample, version or hints)".to_string(),
        ));
    }
    let join = match from.joins.as_slice() {
        [] => None,
        [j] => Some(join::parse_join(sql, &at, j, derived.is_some())?),
        [_, second, ..] => return Err(SqlError::at(
            sql,
            at(second.relation.span()),
            "a materialized view joins one stream with one other (a second JOIN is not supported)"
                .to_string(),
        )),
    };
    if let (
        Some(j),
        TableFactor::Table {
            args: Some(_),
            name,
            ..
        },
    ) = (&join, &from.relation)
    {
        return Err(SqlError::at(
            sql,
            at(name.span()),
            format!(
                "windows over a join are not supported yet (tumble() or hop() with JOIN {})",
                j.value
            ),
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
                ("tumble" | "hop", Some(id)) => {
                    let from = Spanned {
                        value: id.value.clone(),
                        offset: at(id.span),
                    };
                    return Ok(ParsedQuery { query: query.clone(), offset, from, text, derived, join: None, emit });
                }
                ("tumble", None) => {
                    return Err(SqlError::at(sql, at(name.span()), "tumble() takes a stream first: tumble(stream, time_column, INTERVAL 1 MINUTE)".to_string()))
                }
                ("hop", None) => {
                    return Err(SqlError::at(sql, at(name.span()), "hop() takes a stream first: hop(stream, time_column, INTERVAL 1 MINUTE, INTERVAL 5 MINUTE) (the slide, then the size)".to_string()))
                }
                ("session", _) => {
                    return Err(SqlError::at(sql, at(name.span()), format!("{f}() windows are not supported yet in materialized views (tumble() and hop() are)")))
                }
                _ => {
                    return Err(SqlError::at(sql, at(name.span()), format!("table function '{f}' is not supported in materialized views; read FROM a stream or tumble(stream, ...)")))
                }
            }
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
        derived,
        join,
        emit,
    })
}

/// `*` with nothing after it (no EXCLUDE, EXCEPT, REPLACE, RENAME or ILIKE).
pub(super) fn plain_wildcard(o: &sqlparser::ast::WildcardAdditionalOptions) -> bool {
    o.opt_ilike.is_none()
        && o.opt_exclude.is_none()
        && o.opt_except.is_none()
        && o.opt_replace.is_none()
        && o.opt_rename.is_none()
}

/// A one-part name's text.
pub(super) fn object_name(name: &ObjectName) -> Option<String> {
    match name.0.as_slice() {
        [ObjectNamePart::Identifier(id)] => Some(id.value.clone()),
        _ => None,
    }
}
