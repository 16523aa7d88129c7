//! Streams that views write INTO (`CREATE STREAM ... PRIMARY KEY k SETTINGS
//! mode='versioned_kv'`), as Proton's table-like streams: the latest row per key.
//!
//! Such a stream is written by exactly one view (`CREATE MATERIALIZED VIEW v INTO s AS ...`):
//! what a view reading the stream reads is that view's change log, through the view's change
//! topic, as for a view over a view. So one writer's epochs fence its former owners, and the
//! stream needs no storage of its own.

use serde::{Deserialize, Serialize};

use crate::ast;
use crate::defs::{columns_of, Column, StreamDef, ViewDef};
use crate::error::SqlError;

/// How the stream's rows change; both keep the latest row per key (a view's change log is
/// upserts and deletes by key either way).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvMode {
    VersionedKv,
    ChangelogKv,
}

impl std::fmt::Display for KvMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KvMode::VersionedKv => "versioned_kv",
            KvMode::ChangelogKv => "changelog_kv",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KvStreamDef {
    pub name: String,
    pub columns: Vec<Column>,
    /// Indexes into `columns`.
    pub primary_key: Vec<usize>,
    pub mode: KvMode,
}

impl KvStreamDef {
    pub fn from_ast(sql: &str, stmt: &ast::CreateStream) -> Result<KvStreamDef, SqlError> {
        let columns = columns_of(sql, &stmt.columns)?;
        let mut mode = None;
        for s in &stmt.settings {
            match s.key.value.as_str() {
                "mode" => {
                    mode = Some(match s.value.value.to_ascii_lowercase().as_str() {
                        "versioned_kv" => KvMode::VersionedKv,
                        "changelog_kv" => KvMode::ChangelogKv,
                        other => {
                            return Err(SqlError::at(
                                sql,
                                s.value.offset,
                                format!("mode '{other}' is not supported: a stream that views write INTO keeps the latest row per key (mode='versioned_kv' or 'changelog_kv'); an append-only stream of Kafka messages is an EXTERNAL STREAM"),
                            ))
                        }
                    })
                }
                other => {
                    return Err(SqlError::at(
                        sql,
                        s.key.offset,
                        format!("unsupported setting '{other}' for a stream that views write INTO (supported: mode); Kafka settings belong to EXTERNAL STREAMs, and the stream is kept on the brokers of the view that writes it"),
                    ))
                }
            }
        }
        let Some(mode) = mode else {
            return Err(SqlError::at(
                sql,
                stmt.name.offset,
                "a stream that views write INTO needs SETTINGS mode='versioned_kv' (or 'changelog_kv') and a PRIMARY KEY; an append-only stream of Kafka messages is an EXTERNAL STREAM".to_string(),
            ));
        };
        if stmt.primary_key.is_empty() {
            return Err(SqlError::at(
                sql,
                stmt.name.offset,
                "a versioned_kv or changelog_kv stream needs a PRIMARY KEY (the view writing INTO it writes rows by key)".to_string(),
            ));
        }
        let mut primary_key = Vec::new();
        for k in &stmt.primary_key {
            let Some(i) = columns
                .iter()
                .position(|c| c.name.eq_ignore_ascii_case(&k.value))
            else {
                return Err(SqlError::at(
                    sql,
                    k.offset,
                    format!(
                        "primary key column '{}' is not a column of the stream",
                        k.value
                    ),
                ));
            };
            if primary_key.contains(&i) {
                return Err(SqlError::at(
                    sql,
                    k.offset,
                    format!("primary key column '{}' is named twice", k.value),
                ));
            }
            primary_key.push(i);
        }
        Ok(KvStreamDef {
            name: stmt.name.value.clone(),
            columns,
            primary_key,
            mode,
        })
    }

    /// Checks that `view` can write INTO this stream: the same columns in the same order with
    /// the same types, and its key is the stream's primary key. `at`: where INTO names the
    /// stream, for the error.
    pub fn check_writer(&self, sql: &str, at: usize, view: &ViewDef) -> Result<(), SqlError> {
        let here = |msg: String| SqlError::at(sql, at, msg);
        let names = |cols: Vec<String>| cols.join(", ");
        let theirs = names(view.outputs.iter().map(|o| o.name.clone()).collect());
        let ours = names(self.columns.iter().map(|c| c.name.clone()).collect());
        if view.outputs.len() != self.columns.len()
            || view
                .outputs
                .iter()
                .zip(&self.columns)
                .any(|(o, c)| !o.name.eq_ignore_ascii_case(&c.name))
        {
            return Err(here(format!(
                "view '{}' has columns ({theirs}); stream '{}' has ({ours}): a view writes INTO a stream with the same columns, in order",
                view.name, self.name
            )));
        }
        if let Some((o, c)) = view
            .outputs
            .iter()
            .zip(&self.columns)
            .find(|(o, c)| o.ty != c.ty)
        {
            return Err(here(format!(
                "column '{}' is {} in view '{}' but {} ('{}') in stream '{}'",
                c.name, o.ty, view.name, c.ty, c.declared, self.name
            )));
        }
        if view.key_outputs != self.primary_key {
            let key =
                |ix: &[usize]| names(ix.iter().map(|&i| self.columns[i].name.clone()).collect());
            return Err(here(format!(
                "view '{}' is keyed by ({}), stream '{}' by ({}): a view writes INTO a stream keyed as the view is (its GROUP BY keys, or its stream's primary key)",
                view.name,
                key(&view.key_outputs),
                self.name,
                key(&self.primary_key)
            )));
        }
        Ok(())
    }

    /// The stream as a view reading it sees it: the change stream of the view writing INTO it
    /// (`writer`: that view's change stream), under this stream's name and declared types.
    pub fn as_source(&self, writer: StreamDef) -> StreamDef {
        StreamDef {
            name: self.name.clone(),
            columns: self.columns.clone(),
            primary_key: self.primary_key.clone(),
            ..writer
        }
    }
}

#[cfg(test)]
mod tests;
