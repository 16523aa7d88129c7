//! Recursive-descent parser for the Proton DDL subset Meridian accepts.

use crate::ast::*;
use crate::error::SqlError;
use crate::lexer::{tokenize, Tok, Token};

/// Parses exactly one statement; a trailing `;` is allowed.
pub fn parse(sql: &str) -> Result<Statement, SqlError> {
    let tokens = tokenize(sql)?;
    let mut p = Parser {
        sql,
        tokens,
        idx: 0,
        depth: 0,
        nodes: 0,
    };
    let stmt = p.statement()?;
    p.eat_sym(";");
    if !matches!(p.peek(), Tok::Eof) {
        return Err(p.error_here("expected end of statement"));
    }
    Ok(stmt)
}

/// Deepest nesting of parentheses and NOT in an expression: the parser, the resolver and the
/// evaluator recurse on it, and a hostile statement must not exhaust their stack.
const EXPR_DEPTH_MAX: usize = 64;
/// Most terms in one statement's expressions (a long AND chain is a deep tree too).
const EXPR_NODES_MAX: usize = 1_000;

struct Parser<'a> {
    sql: &'a str,
    tokens: Vec<Token>,
    idx: usize,
    depth: usize,
    nodes: usize,
}

impl Parser<'_> {
    fn peek(&self) -> &Tok {
        &self.tokens[self.idx.min(self.tokens.len() - 1)].tok
    }

    fn peek_at(&self, ahead: usize) -> &Tok {
        &self.tokens[(self.idx + ahead).min(self.tokens.len() - 1)].tok
    }

    fn offset(&self) -> usize {
        self.tokens[self.idx.min(self.tokens.len() - 1)].offset
    }

    fn bump(&mut self) -> Token {
        let t = self.tokens[self.idx.min(self.tokens.len() - 1)].clone();
        if self.idx < self.tokens.len() - 1 {
            self.idx += 1;
        }
        t
    }

    fn error_here(&self, expected: &str) -> SqlError {
        SqlError::at(
            self.sql,
            self.offset(),
            format!("{expected}, found {}", self.peek().describe()),
        )
    }

    fn is_keyword(&self, kw: &str) -> bool {
        matches!(self.peek(), Tok::Word(w) if w.eq_ignore_ascii_case(kw))
    }

    fn eat_keyword(&mut self, kw: &str) -> bool {
        if self.is_keyword(kw) {
            self.bump();
            true
        } else {
            false
        }
    }

    fn expect_keyword(&mut self, kw: &str) -> Result<(), SqlError> {
        if self.eat_keyword(kw) {
            Ok(())
        } else {
            Err(self.error_here(&format!("expected {}", kw.to_uppercase())))
        }
    }

    fn eat_sym(&mut self, sym: &str) -> bool {
        if matches!(self.peek(), Tok::Sym(s) if *s == sym) {
            self.bump();
            true
        } else {
            false
        }
    }

    fn expect_sym(&mut self, sym: &str) -> Result<(), SqlError> {
        if self.eat_sym(sym) {
            Ok(())
        } else {
            Err(self.error_here(&format!("expected '{sym}'")))
        }
    }

    fn ident(&mut self, what: &str) -> Result<Spanned<String>, SqlError> {
        let offset = self.offset();
        match self.peek().clone() {
            Tok::Word(w) if !is_reserved(&w) => {
                self.bump();
                Ok(Spanned { value: w, offset })
            }
            Tok::Quoted(w) if !w.is_empty() => {
                self.bump();
                Ok(Spanned { value: w, offset })
            }
            _ => Err(self.error_here(&format!("expected {what}"))),
        }
    }

    fn statement(&mut self) -> Result<Statement, SqlError> {
        if self.eat_keyword("create") {
            if self.eat_keyword("external") {
                self.expect_keyword("stream")?;
                return self.create_stream().map(Statement::CreateStream);
            }
            if self.eat_keyword("materialized") {
                self.expect_keyword("view")?;
                return self.create_view().map(Statement::CreateView);
            }
            if self.is_keyword("stream") {
                return Err(self.error_here(
                    "only external streams are supported (CREATE EXTERNAL STREAM ... SETTINGS type='kafka', ...)",
                ));
            }
            return Err(
                self.error_here("expected EXTERNAL STREAM or MATERIALIZED VIEW after CREATE")
            );
        }
        if self.eat_keyword("drop") {
            let kind = self.object_kind()?;
            let if_exists = if self.eat_keyword("if") {
                self.expect_keyword("exists")?;
                true
            } else {
                false
            };
            let name = self.ident("a name")?;
            return Ok(Statement::Drop {
                kind,
                name,
                if_exists,
            });
        }
        if self.eat_keyword("show") {
            let kind = if self.eat_keyword("streams") {
                ObjectKind::Stream
            } else if self.eat_keyword("views") {
                ObjectKind::View
            } else if self.eat_keyword("materialized") {
                if !self.eat_keyword("views") {
                    return Err(self.error_here("expected VIEWS"));
                }
                ObjectKind::View
            } else {
                return Err(self.error_here("expected STREAMS or VIEWS after SHOW"));
            };
            return Ok(Statement::Show(kind));
        }
        Err(self.error_here(
            "expected CREATE EXTERNAL STREAM, CREATE MATERIALIZED VIEW, DROP or SHOW (regional reads go to a region, not to the coordinator)",
        ))
    }

    fn object_kind(&mut self) -> Result<ObjectKind, SqlError> {
        if self.eat_keyword("external") {
            self.expect_keyword("stream")?;
            return Ok(ObjectKind::Stream);
        }
        if self.eat_keyword("stream") {
            return Ok(ObjectKind::Stream);
        }
        if self.eat_keyword("materialized") {
            self.expect_keyword("view")?;
            return Ok(ObjectKind::View);
        }
        if self.eat_keyword("view") {
            return Ok(ObjectKind::View);
        }
        Err(self.error_here("expected STREAM or MATERIALIZED VIEW"))
    }

    fn if_not_exists(&mut self) -> Result<bool, SqlError> {
        if self.eat_keyword("if") {
            self.expect_keyword("not")?;
            self.expect_keyword("exists")?;
            return Ok(true);
        }
        Ok(false)
    }

    fn create_stream(&mut self) -> Result<CreateStream, SqlError> {
        let if_not_exists = self.if_not_exists()?;
        let name = self.ident("a stream name")?;
        self.expect_sym("(")?;
        let mut columns = Vec::new();
        loop {
            let col = self.ident("a column name")?;
            let ty = self.type_name()?;
            columns.push((col, ty));
            if self.eat_sym(",") {
                continue;
            }
            self.expect_sym(")")?;
            break;
        }
        let settings = if self.eat_keyword("settings") {
            self.settings()?
        } else {
            Vec::new()
        };
        Ok(CreateStream {
            name,
            if_not_exists,
            columns,
            settings,
        })
    }

    /// A type such as `int64`, `string` or `nullable(float64)`, returned as written (lowercase).
    fn type_name(&mut self) -> Result<Spanned<String>, SqlError> {
        let offset = self.offset();
        let Tok::Word(w) = self.peek().clone() else {
            return Err(self.error_here("expected a column type"));
        };
        self.bump();
        let mut text = w.to_ascii_lowercase();
        if self.eat_sym("(") {
            // Type arguments are either types (nullable(int32)) or numbers (decimal(10, 2)).
            let mut args = Vec::new();
            loop {
                match self.peek().clone() {
                    Tok::Int(v) => {
                        self.bump();
                        args.push(v.to_string());
                    }
                    _ => args.push(self.type_name()?.value),
                }
                if !self.eat_sym(",") {
                    break;
                }
            }
            self.expect_sym(")")?;
            text = format!("{text}({})", args.join(", "));
        }
        Ok(Spanned {
            value: text,
            offset,
        })
    }

    fn settings(&mut self) -> Result<Vec<Setting>, SqlError> {
        let mut settings = Vec::new();
        loop {
            let key_offset = self.offset();
            let Tok::Word(key) = self.peek().clone() else {
                return Err(self.error_here("expected a setting name"));
            };
            self.bump();
            self.expect_sym("=")?;
            let value_offset = self.offset();
            let value = match self.peek().clone() {
                Tok::Str(s) => s,
                Tok::Int(v) => v.to_string(),
                Tok::Word(w)
                    if w.eq_ignore_ascii_case("true") || w.eq_ignore_ascii_case("false") =>
                {
                    w
                }
                _ => {
                    return Err(
                        self.error_here(&format!("expected a quoted value for setting '{key}'"))
                    )
                }
            };
            self.bump();
            settings.push(Setting {
                key: Spanned {
                    value: key.to_ascii_lowercase(),
                    offset: key_offset,
                },
                value: Spanned {
                    value,
                    offset: value_offset,
                },
            });
            if !self.eat_sym(",") {
                return Ok(settings);
            }
        }
    }

    fn create_view(&mut self) -> Result<CreateView, SqlError> {
        let if_not_exists = self.if_not_exists()?;
        let name = self.ident("a view name")?;
        if self.is_keyword("into") {
            return Err(self.error_here("materialized views INTO a target stream are not supported; the view is its own table"));
        }
        self.expect_keyword("as")?;
        self.expect_keyword("select")?;
        let mut items = Vec::new();
        loop {
            items.push(self.select_item()?);
            if !self.eat_sym(",") {
                break;
            }
        }
        self.expect_keyword("from")?;
        let from = self.ident("a stream name after FROM")?;
        if self.is_keyword("join")
            || self.is_keyword("inner")
            || self.is_keyword("left")
            || matches!(self.peek(), Tok::Sym(","))
        {
            return Err(self.error_here("joins are not supported in materialized views"));
        }
        let filter = if self.eat_keyword("where") {
            Some(self.expr()?)
        } else {
            None
        };
        let mut group_by = Vec::new();
        if self.eat_keyword("group") {
            self.expect_keyword("by")?;
            loop {
                group_by.push(self.ident("a column name in GROUP BY")?);
                if !self.eat_sym(",") {
                    break;
                }
            }
        }
        if self.is_keyword("having") || self.is_keyword("order") || self.is_keyword("limit") {
            return Err(self.error_here("HAVING, ORDER BY and LIMIT are not supported in materialized views; apply them when reading"));
        }
        let settings = if self.eat_keyword("settings") {
            self.settings()?
        } else {
            Vec::new()
        };
        Ok(CreateView {
            name,
            if_not_exists,
            items,
            from,
            filter,
            group_by,
            settings,
        })
    }

    fn select_item(&mut self) -> Result<SelectItem, SqlError> {
        let offset = self.offset();
        let expr = match (self.peek().clone(), self.peek_at(1).clone()) {
            (Tok::Word(f), Tok::Sym("(")) => {
                self.bump();
                self.bump();
                let function = f.to_ascii_lowercase();
                let arg = if self.eat_sym(")") {
                    None
                } else if self.eat_sym("*") {
                    self.expect_sym(")")?;
                    None
                } else {
                    let arg = self.ident("a column name")?;
                    self.expect_sym(")")?;
                    Some(arg)
                };
                ItemExpr::Aggregate { function, arg }
            }
            (Tok::Sym("*"), _) => return Err(self.error_here("SELECT * is not supported in a materialized view; name the GROUP BY columns and aggregates")),
            _ => ItemExpr::Column(self.ident("a column or an aggregate such as count() or sum(x)")?.value),
        };
        let alias = if self.eat_keyword("as") {
            Some(self.ident("an alias after AS")?.value)
        } else if let Tok::Quoted(_) = self.peek() {
            Some(self.ident("an alias")?.value)
        } else if matches!(self.peek(), Tok::Word(w) if !is_reserved(w)) {
            Some(self.ident("an alias")?.value)
        } else {
            None
        };
        Ok(SelectItem {
            expr,
            alias,
            offset,
        })
    }

    fn expr(&mut self) -> Result<ExprAst, SqlError> {
        self.nested(Self::or_expr)
    }

    /// Parses one level deeper, refusing to go past `EXPR_DEPTH_MAX`.
    fn nested(
        &mut self,
        parse: fn(&mut Self) -> Result<ExprAst, SqlError>,
    ) -> Result<ExprAst, SqlError> {
        if self.depth >= EXPR_DEPTH_MAX {
            return Err(SqlError::at(
                self.sql,
                self.offset(),
                format!("expression nested deeper than {EXPR_DEPTH_MAX} levels"),
            ));
        }
        self.depth += 1;
        let e = parse(self);
        self.depth -= 1;
        e
    }

    fn or_expr(&mut self) -> Result<ExprAst, SqlError> {
        let mut left = self.and_expr()?;
        while self.eat_keyword("or") {
            let right = self.and_expr()?;
            left = ExprAst::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and_expr(&mut self) -> Result<ExprAst, SqlError> {
        let mut left = self.not_expr()?;
        while self.eat_keyword("and") {
            let right = self.not_expr()?;
            left = ExprAst::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn not_expr(&mut self) -> Result<ExprAst, SqlError> {
        if self.is_keyword("not") {
            // NOT nests like a parenthesis.
            self.bump();
            return Ok(ExprAst::Not(Box::new(self.nested(Self::not_expr)?)));
        }
        self.comparison()
    }

    fn comparison(&mut self) -> Result<ExprAst, SqlError> {
        let left = self.primary()?;
        if self.eat_keyword("is") {
            let negated = self.eat_keyword("not");
            self.expect_keyword("null")?;
            return Ok(ExprAst::IsNull {
                expr: Box::new(left),
                negated,
            });
        }
        let negated_in = self.is_keyword("not")
            && matches!(self.peek_at(1), Tok::Word(w) if w.eq_ignore_ascii_case("in"));
        if negated_in {
            self.bump();
        }
        if self.eat_keyword("in") {
            self.expect_sym("(")?;
            let mut list = Vec::new();
            loop {
                list.push(self.primary()?);
                if !self.eat_sym(",") {
                    break;
                }
            }
            self.expect_sym(")")?;
            return Ok(ExprAst::InList {
                expr: Box::new(left),
                list,
                negated: negated_in,
            });
        }
        let op = match self.peek() {
            Tok::Sym("=") => CmpOp::Eq,
            Tok::Sym("!=") | Tok::Sym("<>") => CmpOp::NotEq,
            Tok::Sym("<") => CmpOp::Lt,
            Tok::Sym("<=") => CmpOp::LtEq,
            Tok::Sym(">") => CmpOp::Gt,
            Tok::Sym(">=") => CmpOp::GtEq,
            _ => return Ok(left),
        };
        self.bump();
        let right = self.primary()?;
        Ok(ExprAst::Cmp(op, Box::new(left), Box::new(right)))
    }

    fn primary(&mut self) -> Result<ExprAst, SqlError> {
        let offset = self.offset();
        self.nodes += 1;
        if self.nodes > EXPR_NODES_MAX {
            return Err(SqlError::at(
                self.sql,
                offset,
                format!("the statement has more than {EXPR_NODES_MAX} expression terms"),
            ));
        }
        let lit = |value| Ok(ExprAst::Literal(Spanned { value, offset }));
        match self.peek().clone() {
            Tok::Sym("(") => {
                self.bump();
                let e = self.expr()?;
                self.expect_sym(")")?;
                Ok(e)
            }
            Tok::Sym("-") => {
                self.bump();
                match self.bump().tok {
                    Tok::Int(v) => lit(Literal::Int(-v)),
                    Tok::Float(v) => lit(Literal::Float(-v)),
                    _ => Err(SqlError::at(
                        self.sql,
                        offset,
                        "expected a number after '-'".to_string(),
                    )),
                }
            }
            Tok::Int(v) => {
                self.bump();
                lit(Literal::Int(v))
            }
            Tok::Float(v) => {
                self.bump();
                lit(Literal::Float(v))
            }
            Tok::Str(s) => {
                self.bump();
                lit(Literal::Str(s))
            }
            Tok::Word(w) if w.eq_ignore_ascii_case("null") => {
                self.bump();
                lit(Literal::Null)
            }
            Tok::Word(w) if w.eq_ignore_ascii_case("true") || w.eq_ignore_ascii_case("false") => {
                self.bump();
                lit(Literal::Bool(w.eq_ignore_ascii_case("true")))
            }
            Tok::Word(_) | Tok::Quoted(_) => {
                if matches!(self.peek_at(1), Tok::Sym("(")) {
                    return Err(self.error_here(
                        "functions are not supported in WHERE; compare columns with literals",
                    ));
                }
                Ok(ExprAst::Column(self.ident("a column name")?))
            }
            _ => Err(self.error_here("expected a column, a literal or '('")),
        }
    }
}

/// Words that end a clause and so cannot be bare identifiers or aliases.
fn is_reserved(word: &str) -> bool {
    const RESERVED: [&str; 22] = [
        "select", "from", "where", "group", "by", "settings", "as", "and", "or", "not", "is", "in",
        "null", "having", "order", "limit", "join", "on", "create", "drop", "true", "false",
    ];
    RESERVED.iter().any(|r| r.eq_ignore_ascii_case(word))
}
