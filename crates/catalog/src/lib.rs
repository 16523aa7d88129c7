//! Meridian's SQL dialect (a subset of Timeplus Proton's DDL) and the catalog it builds.
//!
//! Pure code: no IO. The coordinator validates and persists statements with it; the central
//! worker rebuilds the same [`Catalog`] from the stored statements.

pub mod ast;
mod catalog;
mod defs;
mod error;
mod lexer;
mod parser;
mod value;

pub use catalog::{is_reserved, Catalog, Change, Entry, Object};
pub use defs::{
    valid_region_name, Column, DataFormat, Expr, Output, OutputKind, StreamDef, ViewDef,
};
pub use error::{Pos, SqlError};
pub use parser::parse;
pub use value::{ColumnType, Value};

#[cfg(test)]
mod tests;
