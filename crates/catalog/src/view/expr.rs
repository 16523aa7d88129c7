//! Expressions: each supported construct translated to DuckDB SQL over a source row or a
//! group.

use super::join::JoinCtx;
use super::*;

/// The length of a fixed interval (`INTERVAL 5 MINUTE`) in microseconds; `None` for months
/// and years, whose length varies.
pub(super) fn interval_micros(iv: &sqlparser::ast::Interval) -> Option<i64> {
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

pub(super) fn unit_micros(unit: &str) -> Option<i64> {
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
pub(super) fn duration_micros(s: &str) -> Option<i64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = s.split_at(split);
    n.parse::<i64>()
        .ok()?
        .checked_mul(unit_micros(unit.trim())?)
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// Over one source row: stream columns.
    Row,
    /// Over one group: keys and aggregates.
    Group,
}

/// An aggregate as the query names it: its function, its argument's and its ordering
/// argument's index into `args` (`arg_min(x, by)`), its text and where it is written.
pub(super) type PendingAgg = (AggFunc, Option<usize>, Option<usize>, String, usize);

pub(super) struct Planner<'a> {
    pub(super) join: Option<JoinCtx<'a>>,
    pub(super) sql: &'a str,
    pub(super) base: usize,
    pub(super) text: &'a QueryText,
    /// `tumble(...)`: the DuckDB SQL of `window_start` and `window_end`.
    pub(super) window: Option<(String, String)>,
    /// `tumble(...)`: the window's size in microseconds (when fixed) and the event time's SQL.
    pub(super) window_size_us: Option<i64>,
    pub(super) window_time: Option<String>,
    /// `hop(...)`: how far each window starts after the previous one, in microseconds.
    pub(super) hop_slide_us: Option<i64>,
    /// The subquery the view reads FROM: its columns stand for their expressions (taken out
    /// while one of those is walked, since they are over the stream).
    pub(super) derived: Option<Box<Derived>>,
    pub(super) stream: &'a StreamDef,
    /// Names a column may be qualified with: the stream's name and its alias.
    pub(super) qualifiers: Vec<String>,
    pub(super) nodes: usize,
    pub(super) depth: usize,
    /// Row-mode SQL of the GROUP BY keys.
    pub(super) keys: Vec<String>,
    /// Row-mode SQL of the aggregates' arguments.
    pub(super) args: Vec<String>,
    pub(super) aggs: Vec<PendingAgg>,
    /// Output aliases, for GROUP BY and HAVING written with them.
    pub(super) aliases: Vec<(String, Expr)>,
}

pub(super) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

pub(super) fn quote_str(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The DuckDB type of a Proton type name, as written in `CAST(x AS t)` or `x::t`.
pub(super) fn cast_target(t: &str) -> Option<String> {
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
    pub(super) fn at(&self, span: Span) -> usize {
        if span.start.line == 0 {
            return self.base;
        }
        self.base + self.text.locate(span.start)
    }

    /// A column of the subquery the view reads FROM, as the SQL of its expression over the
    /// stream; `None` when there is no subquery, or the name is a stream column its `*` passes.
    pub(super) fn derived_column(&mut self, name: &Ident) -> Result<Option<String>, SqlError> {
        let Some(d) = &self.derived else {
            return Ok(None);
        };
        let Some(e) = d.column(&name.value).cloned() else {
            if d.has_star() {
                return Ok(None);
            }
            return Err(self.err(
                name.span,
                format!(
                    "unknown column '{}' in the subquery (its columns: {})",
                    name.value,
                    d.column_names().join(", ")
                ),
            ));
        };
        let derived = self.derived.take();
        let sql = self.walk(&e, Mode::Row);
        self.derived = derived;
        let sql = sql?;
        Ok(Some(match e {
            Expr::Identifier(_) => sql,
            _ => format!("({sql})"),
        }))
    }

    /// Whether `q` names the subquery the view reads FROM.
    fn names_derived(&self, q: &Ident) -> bool {
        self.derived
            .as_ref()
            .is_some_and(|d| d.names.iter().any(|n| n.eq_ignore_ascii_case(&q.value)))
    }

    pub(super) fn err(&self, span: Span, msg: impl Into<String>) -> SqlError {
        SqlError::at(self.sql, self.at(span), msg.into())
    }

    pub(super) fn column(&self, ident: &Ident) -> Result<String, SqlError> {
        if let Some(j) = &self.join {
            if j.ambiguous
                .iter()
                .any(|a| a.eq_ignore_ascii_case(&ident.value))
            {
                return Err(self.err(
                    ident.span,
                    format!(
                        "column '{}' is in both stream '{}' and stream '{}'; qualify it",
                        ident.value, self.stream.name, j.right.name
                    ),
                ));
            }
        }
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
    pub(super) fn probe(&mut self, e: &Expr) -> Option<String> {
        let nodes = self.nodes;
        let r = self.walk(e, Mode::Row).ok();
        self.nodes = nodes;
        r
    }

    pub(super) fn walk(&mut self, e: &Expr, mode: Mode) -> Result<String, SqlError> {
        if self.depth >= EXPR_DEPTH_MAX {
            return Err(self.err(e.span(), format!("expression nested deeper than {EXPR_DEPTH_MAX} levels (a chain of AND, OR or + counts one level per term)")));
        }
        self.depth += 1;
        let r = self.walk_inner(e, mode);
        self.depth -= 1;
        r
    }

    pub(super) fn walk_inner(&mut self, e: &Expr, mode: Mode) -> Result<String, SqlError> {
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
                let derived = self
                    .derived
                    .as_ref()
                    .is_some_and(|d| d.column(&id.value).is_some());
                if (self.stream.column_index(&id.value).is_some() || derived) && aliased.is_some() {
                    return Err(self.err(
                        id.span,
                        format!("'{}' is both a column of {} and the alias of another output column; rename the alias", id.value, if derived { "the subquery".to_string() } else { format!("stream '{}'", self.stream.name) }),
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
                    let derived = self
                        .derived
                        .as_ref()
                        .is_some_and(|d| d.column(&id.value).is_some());
                    // An output alias, as in HAVING n > 1.
                    if self.stream.column_index(&id.value).is_none() && !derived {
                        if let Some((_, aliased)) = self
                            .aliases
                            .iter()
                            .find(|(a, x)| a.eq_ignore_ascii_case(&id.value) && x != e)
                            .cloned()
                        {
                            return self.walk(&aliased, mode);
                        }
                    }
                    if !derived && self.window_column(&id.value).is_none() {
                        self.column(id)?;
                    }
                    return Err(group_col(self, id));
                }
                if let Some(sql) = self.derived_column(id)? {
                    return Ok(sql);
                }
                match self.window_column(&id.value) {
                    Some(sql) => sql,
                    None => self.column(id)?,
                }
            }
            Expr::CompoundIdentifier(parts) => match parts.as_slice() {
                [q, col] if self.names_right(q) => {
                    let sql = self.right_column(col)?;
                    if mode == Mode::Group {
                        return Err(group_col(self, col));
                    }
                    sql
                }
                [q, col] if self.names_derived(q) => {
                    if mode == Mode::Group {
                        return Err(group_col(self, col));
                    }
                    match self.derived_column(col)? {
                        Some(sql) => sql,
                        None => match self.window_column(&col.value) {
                            Some(sql) => sql,
                            None => self.column(col)?,
                        },
                    }
                }
                [q, col]
                    if self
                        .qualifiers
                        .iter()
                        .any(|n| n.eq_ignore_ascii_case(&q.value)) =>
                {
                    if self.derived.is_some() {
                        // The view reads the subquery, whose columns hide the stream's.
                        return Err(self.err(
                            e.span(),
                            format!("'{e}' names the stream inside the subquery; read the subquery's columns (unqualified, or qualified with its name)"),
                        ));
                    }
                    if mode == Mode::Group {
                        self.qualified_column(col)?;
                        return Err(group_col(self, col));
                    }
                    self.qualified_column(col)?
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
}
