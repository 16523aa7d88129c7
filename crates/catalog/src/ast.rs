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
    pub items: Vec<SelectItem>,
    pub from: Spanned<String>,
    pub filter: Option<ExprAst>,
    pub group_by: Vec<Spanned<String>>,
    pub settings: Vec<Setting>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SelectItem {
    pub expr: ItemExpr,
    pub alias: Option<String>,
    pub offset: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ItemExpr {
    Column(String),
    /// An aggregate call: function name (lowercase) and its argument; `None` for `count()`
    /// and `count(*)`.
    Aggregate {
        function: String,
        arg: Option<Spanned<String>>,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub enum Literal {
    Null,
    Int(i64),
    Float(f64),
    Str(String),
    Bool(bool),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    NotEq,
    Lt,
    LtEq,
    Gt,
    GtEq,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ExprAst {
    Column(Spanned<String>),
    Literal(Spanned<Literal>),
    Cmp(CmpOp, Box<ExprAst>, Box<ExprAst>),
    And(Box<ExprAst>, Box<ExprAst>),
    Or(Box<ExprAst>, Box<ExprAst>),
    Not(Box<ExprAst>),
    IsNull {
        expr: Box<ExprAst>,
        negated: bool,
    },
    InList {
        expr: Box<ExprAst>,
        list: Vec<ExprAst>,
        negated: bool,
    },
}
