//! Joins: reading `JOIN t [AS a] ON ...`, the joined row's columns, and planning the join's
//! condition into a [`JoinPlan`].

use super::expr::Planner;
use super::*;

/// The evaluator's names of a join's input columns: the stream's, then the joined stream's,
/// where a name the stream has too is qualified with the joined stream's alias or name.
pub fn join_input_names(left: &StreamDef, right: &StreamDef, qualifier: &str) -> Vec<String> {
    let mut names: Vec<String> = left.columns.iter().map(|c| c.name.clone()).collect();
    for c in &right.columns {
        if left.column_index(&c.name).is_some() {
            names.push(format!("{qualifier}.{}", c.name));
        } else {
            names.push(c.name.clone());
        }
    }
    names
}

/// The row a join view's expressions read, as one stream: the stream's columns (and its
/// primary key), then the joined stream's under `names` ([`join_input_names`]).
pub fn joined_input(left: &StreamDef, right: &StreamDef, names: &[String]) -> StreamDef {
    let mut s = left.clone();
    for (c, n) in right
        .columns
        .iter()
        .zip(names.iter().skip(left.columns.len()))
    {
        s.columns.push(crate::defs::Column {
            name: n.clone(),
            ..c.clone()
        });
    }
    s
}

/// Where a stream read by name carries more than `name [AS alias]` (an alias's column list,
/// a sample, a version, hints...), which the view would otherwise ignore.
pub(super) fn relation_extras(t: &TableFactor) -> Option<Span> {
    let TableFactor::Table {
        name,
        alias,
        args: None,
        ..
    } = t
    else {
        return None;
    };
    let shown = t.to_string();
    let plain = match alias {
        Some(a) if a.columns.is_empty() => {
            shown == format!("{name} AS {}", a.name) || shown == format!("{name} {}", a.name)
        }
        Some(_) => false,
        None => shown == name.to_string(),
    };
    (!plain).then(|| t.span())
}

/// `[INNER | LEFT [OUTER]] JOIN stream [AS alias] ON condition`: the joined stream's name.
pub(super) fn parse_join(
    sql: &str,
    at: &dyn Fn(Span) -> usize,
    j: &sqlparser::ast::Join,
    derived: bool,
) -> Result<Spanned<String>, SqlError> {
    use sqlparser::ast::{JoinConstraint, JoinOperator};
    let here = |span: Span, msg: &str| SqlError::at(sql, at(span), msg.to_string());
    if derived {
        return Err(here(
            j.relation.span(),
            "a join with a subquery or WITH query is not supported yet; join the streams themselves",
        ));
    }
    let constraint = match &j.join_operator {
        JoinOperator::Join(c)
        | JoinOperator::Inner(c)
        | JoinOperator::Left(c)
        | JoinOperator::LeftOuter(c) => c,
        _ => {
            return Err(here(
                j.relation.span(),
                "only INNER and LEFT joins are supported in materialized views (RIGHT, FULL, CROSS, SEMI, ANTI and ASOF are not)",
            ))
        }
    };
    if !matches!(constraint, JoinConstraint::On(_)) {
        return Err(here(
            j.relation.span(),
            "a join needs ON, equating the joined stream's primary key (USING and NATURAL are not supported)",
        ));
    }
    if j.global {
        return Err(here(j.relation.span(), "GLOBAL JOIN is not supported"));
    }
    if let Some(span) = relation_extras(&j.relation) {
        return Err(here(span, "a joined stream takes a name and an alias only (no column list, sample, version or hints)"));
    }
    match &j.relation {
        TableFactor::Table {
            name, args: None, ..
        } => match object_name(name) {
            Some(n) => Ok(Spanned {
                value: n,
                offset: at(name.span()),
            }),
            None => Err(here(name.span(), &format!("'{name}' is not a stream name"))),
        },
        other => Err(here(
            other.span(),
            "a view joins a stream (by name), not a subquery or table function",
        )),
    }
}

/// What a join view's planner needs to resolve columns: which names are the joined stream's,
/// and which both streams have (those must be qualified).
pub struct JoinCtx<'a> {
    pub(super) right: &'a StreamDef,
    /// Names the joined stream's columns may be qualified with: its name and its alias.
    pub(super) qualifiers: Vec<String>,
    /// The evaluator's names of the joined row's columns ([`super::join_input_names`]).
    pub(super) names: Vec<String>,
    pub(super) n_left: usize,
    /// Column names both streams have.
    pub(super) ambiguous: Vec<String>,
    pub(super) kind: JoinKind,
    pub(super) on: Expr,
}

/// Reads `JOIN t [AS a] ON ...` of a parsed view over `left`.
pub(super) fn join_context<'a>(
    sql: &str,
    parsed: &ParsedQuery,
    left: &StreamDef,
    right: &'a StreamDef,
) -> Result<JoinCtx<'a>, SqlError> {
    let SetExpr::Select(select) = parsed.query.body.as_ref() else {
        return Err(SqlError::at(
            sql,
            parsed.offset,
            "a join needs a SELECT".to_string(),
        ));
    };
    let Some(j) = select.from.first().and_then(|f| f.joins.first()) else {
        return Err(SqlError::at(
            sql,
            parsed.offset,
            "the view has no JOIN".to_string(),
        ));
    };
    use sqlparser::ast::{JoinConstraint, JoinOperator};
    let (kind, on) = match &j.join_operator {
        JoinOperator::Left(JoinConstraint::On(e))
        | JoinOperator::LeftOuter(JoinConstraint::On(e)) => (JoinKind::Left, e.clone()),
        JoinOperator::Join(JoinConstraint::On(e)) | JoinOperator::Inner(JoinConstraint::On(e)) => {
            (JoinKind::Inner, e.clone())
        }
        _ => {
            return Err(SqlError::at(
                sql,
                parsed.offset,
                "only INNER and LEFT joins with ON are supported".to_string(),
            ))
        }
    };
    // As in SQL, an aliased stream is named by its alias only.
    let qualifiers = match &j.relation {
        TableFactor::Table { alias: Some(a), .. } => vec![a.name.value.clone()],
        _ => vec![right.name.clone()],
    };
    let qualifier = qualifiers.last().cloned().unwrap_or_default();
    let ambiguous = right
        .columns
        .iter()
        .filter(|c| left.column_index(&c.name).is_some())
        .map(|c| c.name.clone())
        .collect();
    Ok(JoinCtx {
        right,
        names: super::join_input_names(left, right, &qualifier),
        qualifiers,
        n_left: left.columns.len(),
        ambiguous,
        kind,
        on,
    })
}

/// A column a join's condition names: of the view's stream, or of the joined stream.
enum Side {
    Left(usize),
    Right(usize),
}

impl Planner<'_> {
    /// A column named `q.col` where `q` names the view's stream.
    pub(super) fn qualified_column(&self, ident: &Ident) -> Result<String, SqlError> {
        match &self.join {
            Some(j) => match self
                .stream
                .column_index(&ident.value)
                .filter(|&i| i < j.n_left)
            {
                Some(i) => Ok(quote_ident(&self.stream.columns[i].name)),
                None => Err(self.err(
                    ident.span,
                    format!(
                        "unknown column '{}' in stream '{}'",
                        ident.value, self.stream.name
                    ),
                )),
            },
            None => self.column(ident),
        }
    }

    /// A column of the joined stream, named `q.col` where `q` names it.
    pub(super) fn right_column(&self, ident: &Ident) -> Result<String, SqlError> {
        let Some(j) = &self.join else {
            return self.column(ident);
        };
        match j.right.column_index(&ident.value) {
            Some(i) => Ok(quote_ident(&j.names[j.n_left + i])),
            None => {
                let known: Vec<&str> = j.right.columns.iter().map(|c| c.name.as_str()).collect();
                Err(self.err(
                    ident.span,
                    format!(
                        "unknown column '{}' in stream '{}' (columns: {})",
                        ident.value,
                        j.right.name,
                        known.join(", ")
                    ),
                ))
            }
        }
    }

    pub(super) fn names_right(&self, q: &Ident) -> bool {
        self.join.as_ref().is_some_and(|j| {
            j.qualifiers
                .iter()
                .any(|n| n.eq_ignore_ascii_case(&q.value))
        })
    }

    /// Which stream's column a join condition's operand is.
    fn join_side(&self, e: &Expr) -> Result<Option<Side>, SqlError> {
        let Some(j) = &self.join else {
            return Ok(None);
        };
        Ok(match e {
            Expr::Nested(inner) => return self.join_side(inner),
            Expr::Identifier(id) => {
                self.column(id)?;
                match self.stream.column_index(&id.value) {
                    Some(i) if i < j.n_left => Some(Side::Left(i)),
                    Some(i) => Some(Side::Right(i - j.n_left)),
                    None => None,
                }
            }
            Expr::CompoundIdentifier(parts) => match parts.as_slice() {
                [q, col] if self.names_right(q) => {
                    self.right_column(col)?;
                    j.right.column_index(&col.value).map(Side::Right)
                }
                [q, col]
                    if self
                        .qualifiers
                        .iter()
                        .any(|n| n.eq_ignore_ascii_case(&q.value)) =>
                {
                    self.qualified_column(col)?;
                    self.stream.column_index(&col.value).map(Side::Left)
                }
                _ => None,
            },
            _ => None,
        })
    }

    /// The join of a join view, from its ON condition: equalities (ANDed) between columns of
    /// the view's stream and the whole primary key of the joined stream.
    pub(super) fn join_plan(&self, _s: &Select, left: &StreamDef) -> Result<JoinPlan, SqlError> {
        let Some(j) = &self.join else {
            return Err(self.err(Span::empty(), "the view has no join"));
        };
        let usage = format!(
            "a join's ON equates columns of stream '{}' with the whole primary key of stream '{}' ({}), joined by AND; filter with WHERE",
            left.name,
            j.right.name,
            j.right
                .primary_key
                .iter()
                .map(|&i| j.right.columns[i].name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        let mut terms = vec![&j.on];
        let mut pairs: Vec<(usize, usize, Span)> = Vec::new();
        while let Some(e) = terms.pop() {
            match e {
                Expr::Nested(inner) => terms.push(inner.as_ref()),
                Expr::BinaryOp {
                    left: a,
                    op: BinaryOperator::And,
                    right: b,
                } => {
                    terms.push(b.as_ref());
                    terms.push(a.as_ref());
                }
                Expr::BinaryOp {
                    left: a,
                    op: BinaryOperator::Eq,
                    right: b,
                } => match (self.join_side(a)?, self.join_side(b)?) {
                    (Some(Side::Left(l)), Some(Side::Right(r)))
                    | (Some(Side::Right(r)), Some(Side::Left(l))) => pairs.push((l, r, e.span())),
                    _ => return Err(self.err(e.span(), usage.clone())),
                },
                other => return Err(self.err(other.span(), usage.clone())),
            }
        }
        let mut left_key = Vec::new();
        for &pk in &j.right.primary_key {
            let mut matching = pairs.iter().filter(|(_, r, _)| *r == pk);
            let Some(&(l, _, span)) = matching.next() else {
                return Err(self.err(j.on.span(), usage.clone()));
            };
            if let Some((_, _, again)) = matching.next() {
                return Err(self.err(
                    *again,
                    format!(
                        "'{}' of stream '{}' is equated twice",
                        j.right.columns[pk].name, j.right.name
                    ),
                ));
            }
            let (lt, rt) = (left.columns[l].ty, j.right.columns[pk].ty);
            if lt == ColumnType::Float64 {
                return Err(self.err(
                    span,
                    format!("a join on a floating-point column ('{}') is not supported: SQL equates -0.0 with 0.0 where a key lookup would not; cast both sides to an integer or a string in the streams", left.columns[l].name),
                ));
            }
            if let ColumnType::List(_) = lt {
                return Err(self.err(
                    span,
                    format!("a join on an array column ('{}') is not supported: arrays are passed through a view, not compared", left.columns[l].name),
                ));
            }
            if lt != rt {
                return Err(self.err(
                    span,
                    format!(
                        "a join compares equal types: '{}' is {} and '{}' is {}",
                        left.columns[l].name,
                        lt.name(),
                        j.right.columns[pk].name,
                        rt.name()
                    ),
                ));
            }
            left_key.push(l);
        }
        if let Some((_, _, span)) = pairs
            .iter()
            .find(|(_, r, _)| !j.right.primary_key.contains(r))
        {
            return Err(self.err(*span, usage));
        }
        Ok(JoinPlan {
            stream: j.right.name.clone(),
            kind: j.kind,
            left_key,
            input_names: j.names.clone(),
        })
    }
}
