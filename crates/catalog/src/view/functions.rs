//! Functions and aggregates: Proton's names, what they are in DuckDB, and what is refused.

use super::*;

pub(super) const AGGREGATES: &[&str] = &[
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
    "arg_min",
    "arg_max",
    "min_by",
    "max_by",
    "top_k",
    "max_k",
    "min_k",
];

/// The largest `k` of `top_k(x, k)`, `max_k` and `min_k`: the array is a value of the view's
/// row, so its length is bounded.
pub(super) const TOP_K_MAX: u16 = 1_000;
/// Aggregates of Proton that Meridian does not compute yet (refused by name, not taken for
/// unknown scalar functions).
pub(super) const AGGREGATES_LATER: &[&str] = &[
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
pub(super) const AGGREGATES_HELP: &str = "supported aggregates: count(), count(x), count(DISTINCT x), count_distinct(x), uniq(x), uniq_exact(x), count_if(cond), sum(x), avg(x), min(x), max(x), latest(x), earliest(x), any(x), any_last(x), arg_min(x, by), arg_max(x, by), top_k(x, k), max_k(x, k), min_k(x, k)";

/// Functions whose result depends on when or where a row is processed; a view replayed after
/// a crash must compute the same rows.
/// Proton's conversion functions: `to_int32(x)` is `CAST(x AS INTEGER)`.
pub(super) const CONVERSIONS: &[(&str, &str)] = &[
    ("to_string", "VARCHAR"),
    ("to_int8", "TINYINT"),
    ("to_int16", "SMALLINT"),
    ("to_int32", "INTEGER"),
    ("to_int", "INTEGER"),
    ("to_int64", "BIGINT"),
    ("to_uint8", "UTINYINT"),
    ("to_uint16", "USMALLINT"),
    ("to_uint32", "UINTEGER"),
    ("to_float32", "FLOAT"),
    ("to_float64", "DOUBLE"),
    ("to_float", "DOUBLE"),
    ("to_bool", "BOOLEAN"),
    ("to_date", "DATE"),
];

pub(super) const NONDETERMINISTIC: &[&str] = &[
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

impl<'a> Planner<'a> {
    pub(super) fn function_args<'f>(
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

    pub(super) fn function(&mut self, f: &Function, mode: Mode) -> Result<String, SqlError> {
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
        let conversion = CONVERSIONS.iter().find(|(f, _)| *f == name);
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
            _ if conversion.is_some() => {
                arity(&[1])?;
                cast(conversion.map_or("", |(_, t)| *t))
            }
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

    pub(super) fn aggregate(&mut self, f: &Function, name: &str) -> Result<String, SqlError> {
        let span = f.name.span();
        let (distinct, raw) = self.function_args(f, name)?;
        if matches!(name, "arg_min" | "arg_max" | "min_by" | "max_by") {
            let (x, by) = match raw.as_slice() {
                [FunctionArgExpr::Expr(x), FunctionArgExpr::Expr(by)] if !distinct => (x, by),
                _ => {
                    return Err(self.err(
                        span,
                        format!(
                        "{name}(x, by) takes two arguments: the value, and what orders the rows"
                    ),
                    ))
                }
            };
            let func = if name.contains("min") {
                AggFunc::ArgMin
            } else {
                AggFunc::ArgMax
            };
            let (x, by) = (self.agg_slot(x, name)?, self.agg_slot(by, name)?);
            return Ok(self.agg_ref(func, Some(x), Some(by), f.to_string(), span));
        }
        if matches!(name, "top_k" | "max_k" | "min_k") {
            let usage = || {
                format!("{name}(x, k) takes the value and how many to keep (an integer from 1 to {TOP_K_MAX})")
            };
            let (x, k, rest) = match raw.as_slice() {
                [FunctionArgExpr::Expr(x), FunctionArgExpr::Expr(k), rest @ ..] if !distinct => {
                    (x, k, rest)
                }
                _ => return Err(self.err(span, usage())),
            };
            let k = match k {
                Expr::Value(v) => match &v.value {
                    sqlparser::ast::Value::Number(n, _) => n.parse::<u16>().ok(),
                    _ => None,
                },
                _ => None,
            }
            .filter(|k| (1..=TOP_K_MAX).contains(k))
            .ok_or_else(|| self.err(k.span(), usage()))?;
            match (name, rest) {
                (_, []) => {}
                ("top_k", [FunctionArgExpr::Expr(Expr::Value(v))])
                    if matches!(v.value, sqlparser::ast::Value::Boolean(false)) => {}
                ("top_k", _) => {
                    return Err(self.err(
                        span,
                        "top_k(x, k, true) (with counts) is not supported: it answers an array of tuples; use top_k(x, k) and count(...) per value in another view",
                    ))
                }
                _ => {
                    return Err(self.err(
                        span,
                        format!("{name}(x, k, columns...) is not supported: only the values are kept; use arg_max(column, x) for the row of the greatest"),
                    ))
                }
            }
            let func = match name {
                "top_k" => AggFunc::TopK { k },
                "max_k" => AggFunc::MaxK { k },
                _ => AggFunc::MinK { k },
            };
            let x = self.agg_slot(x, name)?;
            return Ok(self.agg_ref(func, Some(x), None, f.to_string(), span));
        }
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
            Some(x) => Some(self.agg_slot(x, name)?),
        };
        Ok(self.agg_ref(func, slot, None, f.to_string(), span))
    }

    /// The index in `args` of an aggregate's argument (row-mode SQL, shared by aggregates
    /// that read the same expression).
    fn agg_slot(&mut self, x: &Expr, name: &str) -> Result<usize, SqlError> {
        if let Some(inner) = self.find_aggregate(x) {
            return Err(self.err(inner, "an aggregate cannot be inside another aggregate"));
        }
        let mut sql = self.walk(x, Mode::Row)?;
        if name == "count_if" {
            sql = format!("(CASE WHEN {sql} THEN 1 END)");
        }
        Ok(match self.args.iter().position(|a| *a == sql) {
            Some(i) => i,
            None => {
                self.args.push(sql);
                self.args.len() - 1
            }
        })
    }

    /// `a{j}`, the aggregate's column in the per-group stage (an aggregate written twice is
    /// computed once).
    fn agg_ref(
        &mut self,
        func: AggFunc,
        slot: Option<usize>,
        by: Option<usize>,
        text: String,
        span: Span,
    ) -> String {
        let j = match self
            .aggs
            .iter()
            .position(|(g, s, b, _, _)| *g == func && *s == slot && *b == by)
        {
            Some(j) => j,
            None => {
                let at = self.at(span);
                self.aggs.push((func, slot, by, text, at));
                self.aggs.len() - 1
            }
        };
        format!("a{j}")
    }

    /// Where an aggregate call is inside `e`, if one is.
    pub(super) fn find_aggregate(&self, e: &Expr) -> Option<Span> {
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
pub(super) fn sqlparser_visit(e: &Expr, f: &mut dyn FnMut(&Expr) -> bool) -> bool {
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

/// The result type of aggregate `func` over an argument of type `arg_ty` (ordered by `by_ty`
/// for arg_min/arg_max), as DuckDB types it; or why it is refused (`text`: as written).
pub(super) fn aggregate_type(
    func: AggFunc,
    arg_ty: Option<ColumnType>,
    by_ty: Option<ColumnType>,
    text: &str,
) -> Result<ColumnType, String> {
    let list_arg = matches!(arg_ty, Some(ColumnType::List(_)))
        && !matches!(
            func,
            AggFunc::CountNonNull
                | AggFunc::Latest
                | AggFunc::Earliest
                | AggFunc::ArgMin
                | AggFunc::ArgMax
        );
    if list_arg || matches!(by_ty, Some(ColumnType::List(_))) {
        return Err(format!("{text}: arrays are passed through a view, not compared or aggregated (count, latest, earliest and the value of arg_min/arg_max take them)"));
    }
    let numeric = arg_ty.is_some_and(ColumnType::is_numeric);
    Ok(match func {
        AggFunc::Count | AggFunc::CountNonNull | AggFunc::CountDistinct => ColumnType::Int64,
        AggFunc::Sum | AggFunc::Avg if !numeric => {
            return Err(format!(
                "{text} needs a number, but its argument is {}",
                arg_ty.map_or("nothing".to_string(), ColumnType::name)
            ));
        }
        // As DuckDB types it: a sum of decimals has 38 digits.
        AggFunc::Sum => match arg_ty {
            Some(ColumnType::Decimal { scale, .. }) => ColumnType::Decimal {
                precision: crate::decimal::PRECISION_MAX,
                scale,
            },
            other => other.unwrap_or(ColumnType::Int64),
        },
        AggFunc::Avg => ColumnType::Float64,
        AggFunc::Min
        | AggFunc::Max
        | AggFunc::Latest
        | AggFunc::Earliest
        | AggFunc::ArgMin
        | AggFunc::ArgMax => arg_ty.unwrap_or(ColumnType::Int64),
        AggFunc::TopK { .. } | AggFunc::MaxK { .. } | AggFunc::MinK { .. } => {
            let elem = match arg_ty {
                Some(ColumnType::Int64) => crate::ListElem::Int64,
                Some(ColumnType::Float64) => crate::ListElem::Float64,
                Some(ColumnType::String) => crate::ListElem::String,
                Some(ColumnType::Bool) => crate::ListElem::Bool,
                other => {
                    return Err(format!(
                        "{text}: an array of {} is not supported yet (integers, floats, strings and bools are); convert it, for example with to_string(...)",
                        other.map_or("nothing".to_string(), ColumnType::name)
                    ))
                }
            };
            ColumnType::List(elem)
        }
    })
}
