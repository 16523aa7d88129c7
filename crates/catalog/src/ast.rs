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
    pub query: crate::view::ParsedQuery,
}
