//! Tokenizer for the Proton DDL subset. Every token carries its byte offset so that errors
//! can name a line and column.

use crate::error::{Pos, SqlError};

#[derive(Clone, Debug, PartialEq)]
pub enum Tok {
    /// An unquoted word; keywords are words too and are matched case-insensitively.
    Word(String),
    /// A `"quoted"` or `` `quoted` `` identifier, never a keyword.
    Quoted(String),
    Str(String),
    Int(i64),
    Float(f64),
    Sym(&'static str),
    /// The query of `CREATE MATERIALIZED VIEW ... AS`: the rest of the statement, from this
    /// offset, which sqlparser reads (see `view`).
    Query,
    Eof,
}

impl Tok {
    pub fn describe(&self) -> String {
        match self {
            Tok::Word(w) => format!("'{w}'"),
            Tok::Quoted(w) => format!("identifier \"{w}\""),
            Tok::Str(s) => format!("string '{s}'"),
            Tok::Int(v) => format!("number {v}"),
            Tok::Float(v) => format!("number {v}"),
            Tok::Sym(s) => format!("'{s}'"),
            Tok::Query => "a query".to_string(),
            Tok::Eof => "end of statement".to_string(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Token {
    pub tok: Tok,
    pub offset: usize,
}

const SYMBOLS: [&str; 14] = [
    "<=", ">=", "<>", "!=", "(", ")", ",", ";", "=", "<", ">", "*", ".", "-",
];

pub fn tokenize(sql: &str) -> Result<Vec<Token>, SqlError> {
    let bytes = sql.as_bytes();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if c == b'-' && bytes.get(i + 1) == Some(&b'-') {
            while i < bytes.len() && bytes[i] != b'\n' {
                i += 1;
            }
            continue;
        }
        let start = i;
        if c.is_ascii_alphabetic() || c == b'_' {
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            let word = &sql[start..i];
            if is_view_query_start(&tokens, word) {
                tokens.push(Token {
                    tok: Tok::Query,
                    offset: start,
                });
                break;
            }
            tokens.push(Token {
                tok: Tok::Word(word.to_string()),
                offset: start,
            });
        } else if c.is_ascii_digit() {
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            let mut is_float = false;
            if i < bytes.len()
                && bytes[i] == b'.'
                && bytes.get(i + 1).is_some_and(u8::is_ascii_digit)
            {
                is_float = true;
                i += 1;
                while i < bytes.len() && bytes[i].is_ascii_digit() {
                    i += 1;
                }
            }
            let text = &sql[start..i];
            let tok = if is_float {
                Tok::Float(
                    text.parse()
                        .map_err(|_| SqlError::at(sql, start, format!("bad number '{text}'")))?,
                )
            } else {
                Tok::Int(text.parse().map_err(|_| {
                    SqlError::at(sql, start, format!("number '{text}' does not fit in int64"))
                })?)
            };
            tokens.push(Token { tok, offset: start });
        } else if c == b'\'' || c == b'"' || c == b'`' {
            let quote = c;
            i += 1;
            let mut text = String::new();
            loop {
                let Some(&b) = bytes.get(i) else {
                    return Err(SqlError::at(
                        sql,
                        start,
                        "unterminated quoted text".to_string(),
                    ));
                };
                if b == quote {
                    if bytes.get(i + 1) == Some(&quote) {
                        text.push(quote as char);
                        i += 2;
                        continue;
                    }
                    i += 1;
                    break;
                }
                if b == b'\\' && quote == b'\'' && i + 1 < bytes.len() {
                    let next = bytes[i + 1];
                    text.push(match next {
                        b'n' => '\n',
                        b't' => '\t',
                        other => other as char,
                    });
                    i += 2;
                    continue;
                }
                // Copy one whole UTF-8 character.
                let ch = sql[i..].chars().next().unwrap_or('\u{fffd}');
                text.push(ch);
                i += ch.len_utf8();
            }
            let tok = if quote == b'\'' {
                Tok::Str(text)
            } else {
                Tok::Quoted(text)
            };
            tokens.push(Token { tok, offset: start });
        } else {
            let rest = &sql[i..];
            let Some(sym) = SYMBOLS.iter().find(|s| rest.starts_with(**s)) else {
                let ch = rest.chars().next().unwrap_or('?');
                return Err(SqlError::at(
                    sql,
                    start,
                    format!("unexpected character '{ch}'"),
                ));
            };
            i += sym.len();
            tokens.push(Token {
                tok: Tok::Sym(sym),
                offset: start,
            });
        }
    }
    tokens.push(Token {
        tok: Tok::Eof,
        offset: sql.len(),
    });
    Ok(tokens)
}

/// Whether `word` starts the query of a `CREATE MATERIALIZED VIEW ... AS`: the first SELECT
/// or WITH right after AS. The tokenizer stops there, since the query is sqlparser's to read.
fn is_view_query_start(tokens: &[Token], word: &str) -> bool {
    let is = |t: Option<&Token>, kw: &str| matches!(t.map(|t| &t.tok), Some(Tok::Word(w)) if w.eq_ignore_ascii_case(kw));
    (word.eq_ignore_ascii_case("select") || word.eq_ignore_ascii_case("with"))
        && is(tokens.last(), "as")
        && is(tokens.first(), "create")
        && (is(tokens.get(1), "materialized")
            || (is(tokens.get(1), "or")
                && is(tokens.get(2), "replace")
                && is(tokens.get(3), "materialized")))
}

/// Line and column (both from 1) of a byte offset.
pub fn position(sql: &str, offset: usize) -> Pos {
    let mut offset = offset.min(sql.len());
    while !sql.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &sql[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    Pos { line, column }
}
