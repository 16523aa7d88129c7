//! Meridian's SQL dialect (a subset of Timeplus Proton's DDL) and the catalog it builds.
//!
//! Pure code: no IO. The coordinator validates and persists statements with it; the central
//! worker rebuilds the same [`Catalog`] from the stored statements. A view's query is read by
//! sqlparser and typed by DuckDB in memory (`eval`), the same evaluator the view actor runs.

pub mod ast;
mod catalog;
pub mod chtext;
mod defs;
mod error;
pub mod eval;
mod kv;
mod lexer;
mod parser;
mod redact;
mod value;
pub mod view;

pub use catalog::{is_reserved, Catalog, Change, Entry, Object};
pub use defs::{
    change_topic, is_secret_option, valid_region_name, Column, DataFormat, Output, StreamDef,
    ViewDef,
};
pub use error::{Pos, SqlError};
pub use kv::{KvMode, KvStreamDef};
pub use parser::parse;
pub use redact::redact_secrets;
pub use value::{
    civil_from_days, days_from_civil, decimal, format_date, format_timestamp, parse_date,
    parse_timestamp, ColumnType, ListElem, Value,
};
pub use view::{
    AggFunc, Aggregate, Finish, JoinKind, JoinPlan, Plan, PlanKind, Ref, Slot, WindowPlan,
};

#[cfg(test)]
mod tests;
