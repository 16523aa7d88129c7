//! Parsed statements before they are resolved against the catalog.

/// A name and the byte offset where it was written.
#[derive(Clone, Debug, PartialEq)]
pub struct Spanned<T> {
    pub value: T,
    pub offset: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Statement {
    CreateStream(CreateStream),
    CreateView(CreateView),
    Drop {
        kind: ObjectKind,
        name: Spanned<String>,
        if_exists: bool,
    },
    Show(ObjectKind),
    /// `EXPLAIN MATERIALIZED VIEW v`: the view's plan.
    ExplainView(Spanned<String>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObjectKind {
    Stream,
    View,
}

#[derive(Clone, Debug, PartialEq)]
pub struct CreateStream {
    pub name: Spanned<String>,
    pub if_not_exists: bool,
    /// Column name and the type as written, such as `nullable(int32)`.
    pub columns: Vec<(Spanned<String>, Spanned<String>)>,
    pub settings: Vec<Setting>,
    /// `CREATE EXTERNAL STREAM` (a Kafka topic) rather than `CREATE STREAM` (a stream that
    /// views write INTO).
    pub external: bool,
    /// `PRIMARY KEY (a, b)` after the columns (`CREATE STREAM` only).
    pub primary_key: Vec<Spanned<String>>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Setting {
    pub key: Spanned<String>,
    pub value: Spanned<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct CreateView {
    pub name: Spanned<String>,
    pub if_not_exists: bool,
    /// `CREATE OR REPLACE`: where `OR` starts, when written.
    pub or_replace: Option<usize>,
    /// `INTO s`: the stream the view writes its changes to.
    pub into: Option<Spanned<String>>,
    pub query: crate::view::ParsedQuery,
}
