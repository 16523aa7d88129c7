//! Resolved, validated catalog objects: external streams and materialized views.

use serde::{Deserialize, Serialize};

use crate::ast::{self, CmpOp, ExprAst, ItemExpr, Literal};
use crate::error::SqlError;
use crate::value::{ColumnType, Value};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Column {
    pub name: String,
    pub ty: ColumnType,
    /// The type as the user wrote it, such as `nullable(int32)`.
    pub declared: String,
}

impl Column {
    /// The values an integer column may hold, from its declared type (`int32`, `uint8`...);
    /// `None` when any 64-bit integer fits.
    pub fn int_range(&self) -> Option<(i64, i64)> {
        let mut t = self.declared.as_str();
        while let Some(inner) = t
            .strip_prefix("nullable(")
            .or_else(|| t.strip_prefix("low_cardinality("))
            .and_then(|r| r.strip_suffix(')'))
        {
            t = inner;
        }
        Some(match t {
            "int8" => (i8::MIN.into(), i8::MAX.into()),
            "int16" => (i16::MIN.into(), i16::MAX.into()),
            "int32" | "int" | "integer" => (i32::MIN.into(), i32::MAX.into()),
            "uint8" => (0, u8::MAX.into()),
            "uint16" => (0, u16::MAX.into()),
            "uint32" => (0, u32::MAX.into()),
            _ => return None,
        })
    }
}

/// How a stream's Kafka message values are decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DataFormat {
    /// The whole message is the value of the stream's single string column.
    Raw,
    /// One JSON object per message, keys are column names.
    JsonEachRow,
    /// A Debezium change event (`op`, `before`, `after`), with or without the schema envelope.
    Debezium,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StreamDef {
    pub name: String,
    pub columns: Vec<Column>,
    pub brokers: String,
    pub topic: String,
    pub format: DataFormat,
    /// Indexes into `columns` of the source table's primary key (empty for append-only streams).
    pub primary_key: Vec<usize>,
}

impl StreamDef {
    pub fn from_ast(sql: &str, stmt: &ast::CreateStream) -> Result<StreamDef, SqlError> {
        let mut columns: Vec<Column> = Vec::new();
        for (name, ty) in &stmt.columns {
            // DuckDB folds identifiers' case: `Amount` and `amount` are one column there.
            if let Some(c) = columns
                .iter()
                .find(|c| c.name.eq_ignore_ascii_case(&name.value))
            {
                return Err(SqlError::at(
                    sql,
                    name.offset,
                    if c.name == name.value {
                        format!("column '{}' is declared twice", name.value)
                    } else {
                        format!(
                            "column '{}' is declared twice ('{}' differs only by case, and identifiers are case-insensitive)",
                            name.value, c.name
                        )
                    },
                ));
            }
            crate::catalog::check_not_reserved(sql, name)?;
            let Some(parsed) = parse_type(&ty.value) else {
                return Err(SqlError::at(
                    sql,
                    ty.offset,
                    format!(
                        "unsupported type '{}' for column '{}'; supported: int8..int64, uint8..uint32, float32, float64, string, bool, nullable(T), low_cardinality(T)",
                        ty.value, name.value
                    ),
                ));
            };
            columns.push(Column {
                name: name.value.clone(),
                ty: parsed,
                declared: ty.value.clone(),
            });
        }
        let mut kind = None;
        let mut brokers = None;
        let mut topic = None;
        let mut format = None;
        let mut primary_key = Vec::new();
        for s in &stmt.settings {
            let v = &s.value.value;
            match s.key.value.as_str() {
                "type" => {
                    if !v.eq_ignore_ascii_case("kafka") {
                        return Err(SqlError::at(sql, s.value.offset, format!("unsupported stream type '{v}'; only 'kafka' is supported")));
                    }
                    kind = Some(());
                }
                "brokers" => {
                    if v.trim().is_empty() || v.contains('<') {
                        return Err(SqlError::at(sql, s.value.offset, format!("brokers '{v}' is not a host:port list")));
                    }
                    brokers = Some(v.clone());
                }
                "topic" => {
                    if v.is_empty() {
                        return Err(SqlError::at(sql, s.value.offset, "topic must not be empty".to_string()));
                    }
                    topic = Some(v.clone());
                }
                "data_format" => {
                    format = Some(match v.to_ascii_lowercase().as_str() {
                        "jsoneachrow" => DataFormat::JsonEachRow,
                        "debezium" | "debeziumjson" => DataFormat::Debezium,
                        "rawblob" | "raw" => DataFormat::Raw,
                        _ => {
                            return Err(SqlError::at(
                                sql,
                                s.value.offset,
                                format!("unsupported data_format '{v}'; supported: 'JSONEachRow', 'Debezium', 'RawBLOB'"),
                            ))
                        }
                    })
                }
                "primary_key" => {
                    for part in v.split(',').map(str::trim) {
                        let Some(idx) = columns.iter().position(|c| c.name == part) else {
                            return Err(SqlError::at(sql, s.value.offset, format!("primary_key column '{part}' is not a column of the stream")));
                        };
                        primary_key.push(idx);
                    }
                }
                other => {
                    return Err(SqlError::at(
                        sql,
                        s.key.offset,
                        format!("unknown stream setting '{other}'; supported: type, brokers, topic, data_format, primary_key"),
                    ))
                }
            }
        }
        let missing = |what: &str| {
            SqlError::at(
                sql,
                stmt.name.offset,
                format!("stream '{}' needs the setting {what}", stmt.name.value),
            )
        };
        kind.ok_or_else(|| missing("type='kafka'"))?;
        let brokers = brokers.ok_or_else(|| missing("brokers='host:port'"))?;
        let topic = topic.ok_or_else(|| missing("topic='name'"))?;
        let single_string = columns.len() == 1 && columns[0].ty == ColumnType::String;
        let format = match format {
            Some(f) => f,
            None if single_string => DataFormat::Raw,
            None => DataFormat::JsonEachRow,
        };
        if format == DataFormat::Raw && !single_string {
            return Err(SqlError::at(
                sql,
                stmt.name.offset,
                "data_format 'RawBLOB' needs exactly one string column".to_string(),
            ));
        }
        if format == DataFormat::Debezium && primary_key.is_empty() {
            return Err(SqlError::at(
                sql,
                stmt.name.offset,
                "a Debezium stream needs primary_key='col[,col]' so that updates and deletes can be retracted".to_string(),
            ));
        }
        Ok(StreamDef {
            name: stmt.name.value.clone(),
            columns,
            brokers,
            topic,
            format,
            primary_key,
        })
    }

    /// A column by name, case-insensitively as in DuckDB (names are unique that way).
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns
            .iter()
            .position(|c| c.name == name)
            .or_else(|| {
                self.columns
                    .iter()
                    .position(|c| c.name.eq_ignore_ascii_case(name))
            })
    }
}

fn parse_type(t: &str) -> Option<ColumnType> {
    if let Some(inner) = t
        .strip_prefix("nullable(")
        .or_else(|| t.strip_prefix("low_cardinality("))
        .and_then(|r| r.strip_suffix(')'))
    {
        return parse_type(inner);
    }
    Some(match t {
        "int8" | "int16" | "int32" | "int64" | "int" | "integer" | "bigint" | "uint8"
        | "uint16" | "uint32" => ColumnType::Int64,
        "float32" | "float64" | "float" | "double" => ColumnType::Float64,
        "string" | "varchar" | "text" => ColumnType::String,
        "bool" | "boolean" => ColumnType::Bool,
        _ => return None,
    })
}

/// What one output column of a view computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OutputKind {
    /// A GROUP BY column: the stream column index.
    Key(usize),
    /// `count()`: rows in the group.
    Count,
    /// `count(col)`: rows whose column is not NULL.
    CountColumn(usize),
    /// `sum(col)`: NULL when every value is NULL.
    Sum(usize),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Output {
    pub name: String,
    pub ty: ColumnType,
    pub kind: OutputKind,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ViewDef {
    pub name: String,
    pub stream: String,
    pub outputs: Vec<Output>,
    /// Stream column indexes of the GROUP BY key, in GROUP BY order.
    pub group_columns: Vec<usize>,
    /// Output positions of the GROUP BY key, in GROUP BY order.
    pub key_outputs: Vec<usize>,
    pub filter: Option<Expr>,
    /// Regions the view is assigned to; `None` means every region.
    pub regions: Option<Vec<String>>,
}

impl ViewDef {
    pub fn from_ast(
        sql: &str,
        stmt: &ast::CreateView,
        stream: &StreamDef,
    ) -> Result<ViewDef, SqlError> {
        let column = |name: &str, offset: usize| {
            stream.column_index(name).ok_or_else(|| {
                let known: Vec<&str> = stream.columns.iter().map(|c| c.name.as_str()).collect();
                SqlError::at(
                    sql,
                    offset,
                    format!(
                        "unknown column '{name}' in stream '{}' (columns: {})",
                        stream.name,
                        known.join(", ")
                    ),
                )
            })
        };
        let mut group_columns = Vec::new();
        for g in &stmt.group_by {
            let idx = column(&g.value, g.offset)?;
            if group_columns.contains(&idx) {
                return Err(SqlError::at(
                    sql,
                    g.offset,
                    format!("column '{}' appears twice in GROUP BY", g.value),
                ));
            }
            group_columns.push(idx);
        }
        let mut outputs: Vec<Output> = Vec::new();
        let mut has_aggregate = false;
        for item in &stmt.items {
            let (default_name, ty, kind) = match &item.expr {
                ItemExpr::Column(name) => {
                    let idx = column(name, item.offset)?;
                    if !group_columns.contains(&idx) {
                        return Err(SqlError::at(sql, item.offset, format!("column '{name}' must appear in GROUP BY or be used in an aggregate")));
                    }
                    (name.clone(), stream.columns[idx].ty, OutputKind::Key(idx))
                }
                ItemExpr::Aggregate { function, arg } => {
                    has_aggregate = true;
                    match (function.as_str(), arg) {
                        ("count", None) => ("count()".to_string(), ColumnType::Int64, OutputKind::Count),
                        ("count", Some(a)) => {
                            let idx = column(&a.value, a.offset)?;
                            (format!("count({})", a.value), ColumnType::Int64, OutputKind::CountColumn(idx))
                        }
                        ("sum", Some(a)) => {
                            let idx = column(&a.value, a.offset)?;
                            let ty = stream.columns[idx].ty;
                            if !ty.is_numeric() {
                                return Err(SqlError::at(sql, a.offset, format!("sum({}) needs a number, but column '{}' is {}", a.value, a.value, stream.columns[idx].declared)));
                            }
                            (format!("sum({})", a.value), ty, OutputKind::Sum(idx))
                        }
                        ("sum", None) => return Err(SqlError::at(sql, item.offset, "sum() needs a column argument".to_string())),
                        (f, _) => {
                            return Err(SqlError::at(sql, item.offset, format!("unsupported aggregate '{f}'; supported: count(), count(col), sum(col)")))
                        }
                    }
                }
            };
            let name = item.alias.clone().unwrap_or(default_name);
            if crate::catalog::is_reserved(&name) {
                return Err(SqlError::at(
                    sql,
                    item.offset,
                    format!("output column '{name}': names starting with '_meridian' are reserved"),
                ));
            }
            if outputs.iter().any(|o| o.name.eq_ignore_ascii_case(&name)) {
                return Err(SqlError::at(
                    sql,
                    item.offset,
                    format!("output column '{name}' appears twice; give it an alias with AS"),
                ));
            }
            outputs.push(Output { name, ty, kind });
        }
        if !has_aggregate {
            return Err(SqlError::at(
                sql,
                stmt.name.offset,
                "a materialized view needs at least one aggregate such as count() or sum(x)"
                    .to_string(),
            ));
        }
        let mut key_outputs = Vec::new();
        for (g, idx) in stmt.group_by.iter().zip(&group_columns) {
            let Some(pos) = outputs.iter().position(|o| o.kind == OutputKind::Key(*idx)) else {
                return Err(SqlError::at(sql, g.offset, format!("GROUP BY column '{}' must also be selected: it is the key of the view's rows", g.value)));
            };
            key_outputs.push(pos);
        }
        let filter = match &stmt.filter {
            Some(e) => {
                let expr = resolve_expr(sql, e, stream)?;
                if expr.ty != Some(ColumnType::Bool) && expr.ty.is_some() {
                    return Err(SqlError::at(
                        sql,
                        expr_offset(e),
                        "WHERE needs a condition, not a value".to_string(),
                    ));
                }
                Some(expr.expr)
            }
            None => None,
        };
        let mut regions = None;
        for s in &stmt.settings {
            match s.key.value.as_str() {
                "regions" => {
                    let list: Vec<String> = s
                        .value
                        .value
                        .split(',')
                        .map(|r| r.trim().to_string())
                        .filter(|r| !r.is_empty())
                        .collect();
                    if list.is_empty() {
                        return Err(SqlError::at(
                            sql,
                            s.value.offset,
                            "regions must name at least one region".to_string(),
                        ));
                    }
                    if let Some(bad) = list.iter().find(|r| !valid_region_name(r)) {
                        return Err(SqlError::at(
                            sql,
                            s.value.offset,
                            format!("'{bad}' is not a region name (letters, digits, '-' and '_')"),
                        ));
                    }
                    regions = Some(list);
                }
                other => {
                    return Err(SqlError::at(
                        sql,
                        s.key.offset,
                        format!("unknown view setting '{other}'; supported: regions"),
                    ))
                }
            }
        }
        Ok(ViewDef {
            name: stmt.name.value.clone(),
            stream: stream.name.clone(),
            outputs,
            group_columns,
            key_outputs,
            filter,
            regions,
        })
    }

    pub fn assigned_to(&self, region: &str) -> bool {
        self.regions
            .as_ref()
            .is_none_or(|r| r.iter().any(|x| x == region))
    }
}

pub fn valid_region_name(r: &str) -> bool {
    !r.is_empty()
        && r.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// A resolved WHERE expression over a stream row.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Expr {
    Column(usize),
    Literal(Value),
    Cmp(CmpOpDef, Box<Expr>, Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    IsNull(Box<Expr>, bool),
    InList(Box<Expr>, Vec<Expr>, bool),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CmpOpDef {
    Eq,
    NotEq,
    Lt,
    LtEq,
    Gt,
    GtEq,
}

impl Expr {
    /// Evaluates with SQL's three-valued logic: `Value::Null` is unknown.
    pub fn eval(&self, row: &[Value]) -> Value {
        match self {
            Expr::Column(i) => row.get(*i).cloned().unwrap_or(Value::Null),
            Expr::Literal(v) => v.clone(),
            Expr::Cmp(op, l, r) => {
                let (l, r) = (l.eval(row), r.eval(row));
                match l.sql_cmp(&r) {
                    None => Value::Null,
                    Some(ord) => Value::Bool(match op {
                        CmpOpDef::Eq => ord.is_eq(),
                        CmpOpDef::NotEq => ord.is_ne(),
                        CmpOpDef::Lt => ord.is_lt(),
                        CmpOpDef::LtEq => ord.is_le(),
                        CmpOpDef::Gt => ord.is_gt(),
                        CmpOpDef::GtEq => ord.is_ge(),
                    }),
                }
            }
            Expr::And(l, r) => match (l.eval(row), r.eval(row)) {
                (Value::Bool(false), _) | (_, Value::Bool(false)) => Value::Bool(false),
                (Value::Bool(true), Value::Bool(true)) => Value::Bool(true),
                _ => Value::Null,
            },
            Expr::Or(l, r) => match (l.eval(row), r.eval(row)) {
                (Value::Bool(true), _) | (_, Value::Bool(true)) => Value::Bool(true),
                (Value::Bool(false), Value::Bool(false)) => Value::Bool(false),
                _ => Value::Null,
            },
            Expr::Not(e) => match e.eval(row) {
                Value::Bool(b) => Value::Bool(!b),
                _ => Value::Null,
            },
            Expr::IsNull(e, negated) => Value::Bool(e.eval(row).is_null() != *negated),
            Expr::InList(e, list, negated) => {
                let v = e.eval(row);
                if v.is_null() {
                    return Value::Null;
                }
                let mut saw_null = false;
                for item in list {
                    let x = item.eval(row);
                    match v.sql_cmp(&x) {
                        Some(ord) if ord.is_eq() => return Value::Bool(!negated),
                        None if x.is_null() => saw_null = true,
                        _ => {}
                    }
                }
                if saw_null {
                    Value::Null
                } else {
                    Value::Bool(*negated)
                }
            }
        }
    }

    /// True only when the condition holds (NULL filters the row out, as in SQL).
    pub fn matches(&self, row: &[Value]) -> bool {
        matches!(self.eval(row), Value::Bool(true))
    }
}

struct Typed {
    expr: Expr,
    /// `None` for a NULL literal, which fits any type.
    ty: Option<ColumnType>,
}

fn expr_offset(e: &ExprAst) -> usize {
    match e {
        ExprAst::Column(c) => c.offset,
        ExprAst::Literal(l) => l.offset,
        ExprAst::Cmp(_, l, _) | ExprAst::And(l, _) | ExprAst::Or(l, _) => expr_offset(l),
        ExprAst::Not(e) => expr_offset(e),
        ExprAst::IsNull { expr, .. } | ExprAst::InList { expr, .. } => expr_offset(expr),
    }
}

fn compatible(a: Option<ColumnType>, b: Option<ColumnType>) -> bool {
    match (a, b) {
        (None, _) | (_, None) => true,
        (Some(a), Some(b)) => a == b || (a.is_numeric() && b.is_numeric()),
    }
}

fn resolve_expr(sql: &str, e: &ExprAst, stream: &StreamDef) -> Result<Typed, SqlError> {
    let boolean = |expr| {
        Ok(Typed {
            expr,
            ty: Some(ColumnType::Bool),
        })
    };
    let need_bool = |t: &Typed, at: &ExprAst| -> Result<(), SqlError> {
        if compatible(t.ty, Some(ColumnType::Bool)) {
            Ok(())
        } else {
            Err(SqlError::at(
                sql,
                expr_offset(at),
                format!(
                    "expected a condition, found a {} value",
                    t.ty.map_or("null", ColumnType::name)
                ),
            ))
        }
    };
    match e {
        ExprAst::Column(c) => {
            let idx = stream.column_index(&c.value).ok_or_else(|| {
                SqlError::at(
                    sql,
                    c.offset,
                    format!("unknown column '{}' in stream '{}'", c.value, stream.name),
                )
            })?;
            Ok(Typed {
                expr: Expr::Column(idx),
                ty: Some(stream.columns[idx].ty),
            })
        }
        ExprAst::Literal(l) => {
            let (v, ty) = match &l.value {
                Literal::Null => (Value::Null, None),
                Literal::Int(v) => (Value::Int(*v), Some(ColumnType::Int64)),
                Literal::Float(v) => (Value::Float(*v), Some(ColumnType::Float64)),
                Literal::Str(s) => (Value::Text(s.clone()), Some(ColumnType::String)),
                Literal::Bool(b) => (Value::Bool(*b), Some(ColumnType::Bool)),
            };
            Ok(Typed {
                expr: Expr::Literal(v),
                ty,
            })
        }
        ExprAst::Cmp(op, l, r) => {
            let (lt, rt) = (resolve_expr(sql, l, stream)?, resolve_expr(sql, r, stream)?);
            if !compatible(lt.ty, rt.ty) {
                return Err(SqlError::at(
                    sql,
                    expr_offset(r),
                    format!(
                        "type mismatch: cannot compare {} with {}",
                        lt.ty.map_or("null", ColumnType::name),
                        rt.ty.map_or("null", ColumnType::name)
                    ),
                ));
            }
            let op = match op {
                CmpOp::Eq => CmpOpDef::Eq,
                CmpOp::NotEq => CmpOpDef::NotEq,
                CmpOp::Lt => CmpOpDef::Lt,
                CmpOp::LtEq => CmpOpDef::LtEq,
                CmpOp::Gt => CmpOpDef::Gt,
                CmpOp::GtEq => CmpOpDef::GtEq,
            };
            boolean(Expr::Cmp(op, Box::new(lt.expr), Box::new(rt.expr)))
        }
        ExprAst::And(l, r) | ExprAst::Or(l, r) => {
            let (lt, rt) = (resolve_expr(sql, l, stream)?, resolve_expr(sql, r, stream)?);
            need_bool(&lt, l)?;
            need_bool(&rt, r)?;
            let (a, b) = (Box::new(lt.expr), Box::new(rt.expr));
            boolean(if matches!(e, ExprAst::And(..)) {
                Expr::And(a, b)
            } else {
                Expr::Or(a, b)
            })
        }
        ExprAst::Not(inner) => {
            let t = resolve_expr(sql, inner, stream)?;
            need_bool(&t, inner)?;
            boolean(Expr::Not(Box::new(t.expr)))
        }
        ExprAst::IsNull { expr, negated } => {
            let t = resolve_expr(sql, expr, stream)?;
            boolean(Expr::IsNull(Box::new(t.expr), *negated))
        }
        ExprAst::InList {
            expr,
            list,
            negated,
        } => {
            let t = resolve_expr(sql, expr, stream)?;
            let mut items = Vec::new();
            for item in list {
                let it = resolve_expr(sql, item, stream)?;
                if !compatible(t.ty, it.ty) {
                    return Err(SqlError::at(
                        sql,
                        expr_offset(item),
                        format!(
                            "type mismatch in IN list: {} is not {}",
                            it.ty.map_or("null", ColumnType::name),
                            t.ty.map_or("null", ColumnType::name)
                        ),
                    ));
                }
                items.push(it.expr);
            }
            boolean(Expr::InList(Box::new(t.expr), items, *negated))
        }
    }
}
