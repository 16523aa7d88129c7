use std::fmt;

/// A place in a statement, both counted from 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}, column {}", self.line, self.column)
    }
}

/// A statement that was refused, with the reason and where in the statement it is.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message} (at {pos})")]
pub struct SqlError {
    pub message: String,
    pub pos: Pos,
}

impl SqlError {
    pub fn at(sql: &str, offset: usize, message: String) -> SqlError {
        SqlError {
            message,
            pos: crate::lexer::position(sql, offset),
        }
    }
}
