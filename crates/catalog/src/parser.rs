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
    };
    let stmt = p.statement()?;
    p.eat_sym(";");
    if !matches!(p.peek(), Tok::Eof) {
        return Err(p.error_here("expected end of statement"));
    }
    Ok(stmt)
}

struct Parser<'a> {
    sql: &'a str,
    tokens: Vec<Token>,
    idx: usize,
}

impl Parser<'_> {
    fn peek(&self) -> &Tok {
        &self.tokens[self.idx.min(self.tokens.len() - 1)].tok
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
            let or_replace = self.offset();
            if self.eat_keyword("or") {
                self.expect_keyword("replace")?;
                if !self.is_keyword("materialized") {
                    return Err(self.error_here(
                        "CREATE OR REPLACE replaces a materialized view only (a stream is dropped and created again); expected MATERIALIZED VIEW",
                    ));
                }
            }
            let or_replace = (or_replace != self.offset()).then_some(or_replace);
            if self.eat_keyword("external") {
                self.expect_keyword("stream")?;
                return self.create_stream(true).map(Statement::CreateStream);
            }
            if self.eat_keyword("stream") {
                return self.create_stream(false).map(Statement::CreateStream);
            }
            if self.eat_keyword("materialized") {
                self.expect_keyword("view")?;
                return self.create_view(or_replace).map(Statement::CreateView);
            }
            return Err(self
                .error_here("expected EXTERNAL STREAM, STREAM or MATERIALIZED VIEW after CREATE"));
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
        if self.eat_keyword("explain") {
            if !(self.eat_keyword("materialized") && self.eat_keyword("view")) {
                return Err(self.error_here("expected MATERIALIZED VIEW after EXPLAIN"));
            }
            return Ok(Statement::ExplainView(self.ident("a view name")?));
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
            "expected CREATE EXTERNAL STREAM, CREATE MATERIALIZED VIEW, DROP, SHOW or EXPLAIN (regional reads go to a region, not to the coordinator)",
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

    fn create_stream(&mut self, external: bool) -> Result<CreateStream, SqlError> {
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
        let mut primary_key = Vec::new();
        if self.is_keyword("primary") {
            if external {
                return Err(self.error_here(
                    "an external stream names its primary key in SETTINGS primary_key='col[,col]'; expected SETTINGS",
                ));
            }
            self.bump();
            self.expect_keyword("key")?;
            if self.eat_sym("(") {
                loop {
                    primary_key.push(self.ident("a column name")?);
                    if !self.eat_sym(",") {
                        break;
                    }
                }
                self.expect_sym(")")?;
            } else {
                primary_key.push(self.ident("a column name")?);
            }
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
            external,
            primary_key,
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
                    // A time zone, as in datetime64(3, 'UTC').
                    Tok::Str(z) => {
                        self.bump();
                        args.push(format!("'{z}'"));
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

    fn create_view(&mut self, or_replace: Option<usize>) -> Result<CreateView, SqlError> {
        let if_not_exists = self.if_not_exists()?;
        if let (Some(at), true) = (or_replace, if_not_exists) {
            return Err(SqlError::at(
                self.sql,
                at,
                "OR REPLACE and IF NOT EXISTS contradict each other; write one of them".to_string(),
            ));
        }
        let name = self.ident("a view name")?;
        let into = if self.eat_keyword("into") {
            Some(self.ident("a stream name")?)
        } else {
            None
        };
        self.expect_keyword("as")?;
        if !matches!(self.peek(), Tok::Query) {
            return Err(self.error_here("expected SELECT"));
        }
        let query = crate::view::parse_query(self.sql, self.offset())?;
        // The query runs to the end of the statement.
        self.idx = self.tokens.len() - 1;
        Ok(CreateView {
            name,
            if_not_exists,
            or_replace,
            into,
            query,
        })
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
