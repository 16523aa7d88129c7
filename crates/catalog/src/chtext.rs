//! Lists as ClickHouse prints them (`[1,NULL,3]`, `['a','b\'c']`, `[[1],[2,3]]`), as regional
//! reads send them, read back into their elements: shared by the SDK, which types them, and
//! the JSON output formats, which write them as JSON arrays.

/// Most nesting read back; a deeper list stays text.
pub const DEPTH_MAX: usize = 16;

/// One element of a printed list.
#[derive(Clone, Debug, PartialEq)]
pub enum Elem {
    Null,
    /// A quoted string (strings, and dates and times inside lists), unescaped.
    Quoted(String),
    /// An unquoted token: a number, a decimal, `true`/`false`, `inf`, `NaN`.
    Bare(String),
    List(Vec<Elem>),
}

/// The elements of a printed list; `None` when `text` is not one whole list of numbers,
/// strings and lists (a list of tuples or maps stays text). Reads bytes: every delimiter is
/// ASCII, which no byte of a multi-byte UTF-8 character is.
pub fn parse_list(text: &str) -> Option<Vec<Elem>> {
    let mut p = Reader {
        bytes: text.as_bytes(),
        at: 0,
        depth: 0,
    };
    let items = p.list()?;
    (p.at == p.bytes.len()).then_some(items)
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
    depth: usize,
}

impl Reader<'_> {
    fn eat(&mut self, c: u8) -> bool {
        let hit = self.bytes.get(self.at) == Some(&c);
        if hit {
            self.at += 1;
        }
        hit
    }

    fn list(&mut self) -> Option<Vec<Elem>> {
        self.depth += 1;
        if self.depth > DEPTH_MAX || !self.eat(b'[') {
            return None;
        }
        let mut items = Vec::new();
        if !self.eat(b']') {
            loop {
                items.push(self.elem()?);
                if self.eat(b']') {
                    break;
                }
                if !self.eat(b',') {
                    return None;
                }
            }
        }
        self.depth -= 1;
        Some(items)
    }

    fn elem(&mut self) -> Option<Elem> {
        match self.bytes.get(self.at)? {
            b'[' => self.list().map(Elem::List),
            b'\'' => {
                self.at += 1;
                let mut text = Vec::new();
                loop {
                    match *self.bytes.get(self.at)? {
                        b'\\' => {
                            text.push(*self.bytes.get(self.at + 1)?);
                            self.at += 2;
                        }
                        b'\'' => {
                            self.at += 1;
                            return String::from_utf8(text).ok().map(Elem::Quoted);
                        }
                        c => {
                            text.push(c);
                            self.at += 1;
                        }
                    }
                }
            }
            b'(' | b'{' => None,
            _ => {
                let start = self.at;
                while self
                    .bytes
                    .get(self.at)
                    .is_some_and(|c| *c != b',' && *c != b']')
                {
                    self.at += 1;
                }
                let token = std::str::from_utf8(&self.bytes[start..self.at]).ok()?;
                Some(if token == "NULL" {
                    Elem::Null
                } else {
                    Elem::Bare(token.to_string())
                })
            }
        }
    }
}

/// Whether a DuckDB type is an integer type.
pub fn is_integer_type(ty: &str) -> bool {
    matches!(
        ty,
        "TINYINT"
            | "SMALLINT"
            | "INTEGER"
            | "BIGINT"
            | "UTINYINT"
            | "USMALLINT"
            | "UINTEGER"
            | "UBIGINT"
            | "HUGEINT"
            | "UHUGEINT"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printed_lists_read_back_whole_or_not_at_all() {
        let q = |s: &str| Elem::Quoted(s.into());
        let b = |s: &str| Elem::Bare(s.into());
        assert_eq!(
            parse_list(r"['a','b\'c',NULL,'x,y]','é\'ü']"),
            Some(vec![q("a"), q("b'c"), Elem::Null, q("x,y]"), q("é'ü")])
        );
        assert_eq!(
            parse_list("[[1.5],[],[inf]]"),
            Some(vec![
                Elem::List(vec![b("1.5")]),
                Elem::List(vec![]),
                Elem::List(vec![b("inf")])
            ])
        );
        assert_eq!(parse_list("[]"), Some(vec![]));
        for bad in ["[(1,'v')]", "[1,2", "['a", "[1]x", "1", "[{'a':1}]"] {
            assert_eq!(parse_list(bad), None, "{bad}");
        }
        let deep = format!("{}1{}", "[".repeat(17), "]".repeat(17));
        assert_eq!(parse_list(&deep), None);
    }
}
