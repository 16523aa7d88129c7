//! SQL values and column types shared by the catalog, the view actor and the replicas.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};

use serde::{Deserialize, Serialize};

/// The storage type of a column. Proton's many integer widths all map to `Int64`; the
/// declared name is kept in [`Column::declared`] for display.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ColumnType {
    Int64,
    Float64,
    String,
    Bool,
}

impl ColumnType {
    /// The name used in the wire schema and in messages.
    pub fn name(self) -> &'static str {
        match self {
            ColumnType::Int64 => "int64",
            ColumnType::Float64 => "float64",
            ColumnType::String => "string",
            ColumnType::Bool => "bool",
        }
    }

    /// Parses a wire schema type name, the inverse of [`ColumnType::name`].
    pub fn from_name(name: &str) -> Option<ColumnType> {
        match name {
            "int64" => Some(ColumnType::Int64),
            "float64" => Some(ColumnType::Float64),
            "string" => Some(ColumnType::String),
            "bool" => Some(ColumnType::Bool),
            _ => None,
        }
    }

    /// The DuckDB type a replica stores this column as.
    pub fn duckdb_type(self) -> &'static str {
        match self {
            ColumnType::Int64 => "BIGINT",
            ColumnType::Float64 => "DOUBLE",
            ColumnType::String => "VARCHAR",
            ColumnType::Bool => "BOOLEAN",
        }
    }

    pub fn is_numeric(self) -> bool {
        matches!(self, ColumnType::Int64 | ColumnType::Float64)
    }
}

impl fmt::Display for ColumnType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A SQL value. Floats compare and hash by bit pattern so that values can be group keys.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Value {
    Null,
    Int(i64),
    Float(f64),
    Text(String),
    Bool(bool),
}

impl Value {
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// The name of the value's kind, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Int(_) => "integer",
            Value::Float(_) => "float",
            Value::Text(_) => "string",
            Value::Bool(_) => "bool",
        }
    }

    /// A total order over all values: NULL, then bools, numbers, strings. Numbers compare by
    /// value, an integer before an equal float; floats by `f64::total_cmp`. For sorted keys and
    /// the value sets of `min`, `max` and `count(DISTINCT)`.
    pub fn total_cmp(&self, other: &Value) -> Ordering {
        let rank = |v: &Value| match v {
            Value::Null => 0,
            Value::Bool(_) => 1,
            Value::Int(_) | Value::Float(_) => 2,
            Value::Text(_) => 3,
        };
        rank(self)
            .cmp(&rank(other))
            .then_with(|| match (self, other) {
                (Value::Bool(a), Value::Bool(b)) => a.cmp(b),
                (Value::Int(a), Value::Int(b)) => a.cmp(b),
                (Value::Float(a), Value::Float(b)) => a.total_cmp(b),
                (Value::Int(a), Value::Float(b)) => (*a as f64).total_cmp(b).then(Ordering::Less),
                (Value::Float(a), Value::Int(b)) => {
                    a.total_cmp(&(*b as f64)).then(Ordering::Greater)
                }
                (Value::Text(a), Value::Text(b)) => a.cmp(b),
                _ => Ordering::Equal,
            })
    }

    /// SQL comparison: `None` when either side is NULL or the kinds cannot be compared.
    pub fn sql_cmp(&self, other: &Value) -> Option<Ordering> {
        match (self, other) {
            (Value::Int(a), Value::Int(b)) => Some(a.cmp(b)),
            (Value::Int(a), Value::Float(b)) => (*a as f64).partial_cmp(b),
            (Value::Float(a), Value::Int(b)) => a.partial_cmp(&(*b as f64)),
            (Value::Float(a), Value::Float(b)) => a.partial_cmp(b),
            (Value::Text(a), Value::Text(b)) => Some(a.cmp(b)),
            (Value::Bool(a), Value::Bool(b)) => Some(a.cmp(b)),
            _ => None,
        }
    }
}

impl PartialEq for Value {
    fn eq(&self, other: &Value) -> bool {
        match (self, other) {
            (Value::Null, Value::Null) => true,
            (Value::Int(a), Value::Int(b)) => a == b,
            (Value::Float(a), Value::Float(b)) => a.to_bits() == b.to_bits(),
            (Value::Text(a), Value::Text(b)) => a == b,
            (Value::Bool(a), Value::Bool(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for Value {}

impl Hash for Value {
    fn hash<H: Hasher>(&self, state: &mut H) {
        std::mem::discriminant(self).hash(state);
        match self {
            Value::Null => {}
            Value::Int(v) => v.hash(state),
            Value::Float(v) => v.to_bits().hash(state),
            Value::Text(v) => v.hash(state),
            Value::Bool(v) => v.hash(state),
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("NULL"),
            Value::Int(v) => write!(f, "{v}"),
            Value::Float(v) => write!(f, "{v}"),
            Value::Text(v) => write!(f, "'{}'", v.replace('\'', "''")),
            Value::Bool(v) => write!(f, "{v}"),
        }
    }
}
