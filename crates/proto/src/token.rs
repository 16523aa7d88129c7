//! Read tokens: the state a regional answer reflected, so that a later read can ask for a
//! state at least as new (`QueryRequest.at_least`) on any node of the region.
//!
//! Every node of a region applies the same Raft log, and a replica's state is a function of
//! the prefix it applied, so the Raft index of the last entry a replica applied orders the
//! states of all the region's nodes. A token is that index and the region's name: indexes of
//! two regions' logs say nothing about each other.

use std::fmt;

/// `region:index`, as answers carry it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ReadToken {
    pub region: String,
    pub index: u64,
}

/// Why a token's text could not be read.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("bad read token '{text}': {why} (expected region:index, as an earlier answer's token)")]
pub struct TokenError {
    pub text: String,
    pub why: &'static str,
}

/// Longest token text read: a region name is short, and a token may come from any caller.
const TOKEN_TEXT_MAX: usize = 300;

impl ReadToken {
    pub fn new(region: impl Into<String>, index: u64) -> ReadToken {
        ReadToken {
            region: region.into(),
            index,
        }
    }

    pub fn parse(text: &str) -> Result<ReadToken, TokenError> {
        let err = |why| TokenError {
            text: text.chars().take(80).collect(),
            why,
        };
        if text.len() > TOKEN_TEXT_MAX {
            return Err(err("too long"));
        }
        let (region, index) = text.rsplit_once(':').ok_or_else(|| err("no ':'"))?;
        if region.is_empty() {
            return Err(err("no region"));
        }
        let index = index
            .parse::<u64>()
            .map_err(|_| err("the index is not a whole number"))?;
        Ok(ReadToken::new(region, index))
    }

    /// The newer of two tokens of one region (`self` when they name different regions).
    pub fn newer(self, other: ReadToken) -> ReadToken {
        if other.region == self.region && other.index > self.index {
            other
        } else {
            self
        }
    }
}

impl fmt::Display for ReadToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.region, self.index)
    }
}

impl std::str::FromStr for ReadToken {
    type Err = TokenError;
    fn from_str(s: &str) -> Result<ReadToken, TokenError> {
        ReadToken::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_read_back_what_they_print_and_refuse_the_rest() {
        let t = ReadToken::new("eu-west:1", 42);
        assert_eq!(t.to_string(), "eu-west:1:42");
        assert_eq!(ReadToken::parse(&t.to_string()), Ok(t.clone()));
        for bad in [
            "",
            "eu",
            ":5",
            "eu:",
            "eu:-1",
            "eu:x",
            "eu:99999999999999999999",
        ] {
            assert!(ReadToken::parse(bad).is_err(), "{bad}");
        }
        assert!(ReadToken::parse(&"r".repeat(400))
            .is_err_and(|e| e.why == "too long" && e.text.len() == 80));
        let newer = ReadToken::new("eu-west:1", 50);
        assert_eq!(t.clone().newer(newer.clone()), newer);
        assert_eq!(newer.clone().newer(t.clone()), newer);
        assert_eq!(t.clone().newer(ReadToken::new("us", 900)), t);
    }
}
