//! Proton's `EMIT` clause: when a view's changes leave it.

use super::parse::offset_of;
use super::*;

/// The shortest and longest `EMIT PERIODIC` period: the period is how long a batch of
/// changes may stay open, so it bounds the latency it adds.
pub const PERIOD_MIN_US: u64 = 10_000;
pub const PERIOD_MAX_US: u64 = 3_600_000_000;

/// What a view's `EMIT` clause asks for.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Emit {
    /// `EMIT AFTER WATERMARK`: where it was written.
    pub after_watermark: Option<usize>,
    /// `EMIT PERIODIC 5s`: the period, in microseconds.
    pub periodic_us: Option<u64>,
}

/// Proton's `EMIT` clause, at the query's top level up to `SETTINGS` or the end. Answers
/// what it asks for, and the query with the clause blanked out; an `EMIT CHANGELOG` or
/// `EMIT ON UPDATE` is what a view does anyway (its changes at the end of every batch), and
/// other forms are refused with the reason.
pub(super) fn emit_clause(
    sql: &str,
    offset: usize,
    original: &str,
    tokens: &[sqlparser::tokenizer::TokenWithSpan],
) -> Result<(Emit, Option<String>), SqlError> {
    // `emit` starts the clause only where a clause can (not after `.` or `AS`) and when a
    // word of one follows, so a column or alias named `emit` stays one.
    let significant: Vec<&sqlparser::tokenizer::TokenWithSpan> = tokens
        .iter()
        .filter(|t| !matches!(t.token, Token::Whitespace(_)))
        .collect();
    let upper = |i: usize| match significant.get(i).map(|t| &t.token) {
        Some(Token::Word(w)) if w.quote_style.is_none() => w.value.to_ascii_uppercase(),
        _ => String::new(),
    };
    let starts_clause = |i: usize| {
        let after_name =
            i > 0 && (matches!(significant[i - 1].token, Token::Period) || upper(i - 1) == "AS");
        let next = upper(i + 1);
        !after_name
            && (matches!(
                next.as_str(),
                "AFTER" | "CHANGELOG" | "PERIODIC" | "STREAM" | "LAST" | "TIMEOUT"
            ) || (next == "ON" && upper(i + 2) == "UPDATE"))
    };
    let mut depth = 0i32;
    let mut start = None;
    let mut end = original.len();
    let mut words: Vec<String> = Vec::new();
    for (i, t) in significant.iter().enumerate() {
        match &t.token {
            Token::LParen => depth += 1,
            Token::RParen => depth -= 1,
            _ => {}
        }
        if depth != 0 {
            if start.is_some() {
                words.push(t.token.to_string());
            }
            continue;
        }
        let word = match &t.token {
            Token::Word(w) if w.quote_style.is_none() => Some(w.value.to_ascii_uppercase()),
            _ => None,
        };
        match (start, word.as_deref()) {
            (None, Some("EMIT")) if starts_clause(i) => {
                start = Some(offset_of(original, t.span.start))
            }
            (Some(_), Some("SETTINGS")) => {
                end = offset_of(original, t.span.start);
                break;
            }
            (Some(_), _) => words.push(word.unwrap_or_else(|| t.token.to_string())),
            (None, _) => {}
        }
    }
    let Some(at) = start else {
        return Ok((Emit::default(), None));
    };
    let here = |msg: &str| SqlError::at(sql, offset + at, msg.to_string());
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    let mut emit = Emit::default();
    match words.as_slice() {
        ["AFTER", "WATERMARK"] => emit.after_watermark = Some(at),
        ["CHANGELOG"] | ["ON", "UPDATE"] => {}
        ["PERIODIC", period @ ..] => {
            let text = period.concat().to_ascii_lowercase();
            let us = duration_micros(&text)
                .and_then(|us| u64::try_from(us).ok())
                .filter(|us| (PERIOD_MIN_US..=PERIOD_MAX_US).contains(us))
                .ok_or_else(|| here(&format!("EMIT PERIODIC '{text}': write a period from 10ms to 1h, such as 5s")))?;
            emit.periodic_us = Some(us);
        }
        ["AFTER", "WATERMARK", "AND", "DELAY", ..] => {
            return Err(here("EMIT AFTER WATERMARK AND DELAY is not supported yet; use EMIT AFTER WATERMARK with SETTINGS allowed_lateness"))
        }
        [first, ..] if ["AFTER", "CHANGELOG", "ON"].contains(first) => {
            return Err(here("EMIT goes after GROUP BY and HAVING, before SETTINGS: EMIT AFTER WATERMARK, EMIT PERIODIC 5s or EMIT CHANGELOG"))
        }
        _ => {
            return Err(here("EMIT clauses other than EMIT AFTER WATERMARK (windows that close), EMIT PERIODIC (changes at most once a period) and EMIT CHANGELOG are not supported: a view emits its changes at the end of every batch"))
        }
    }
    let clause = &original[at..end];
    let blanked = format!(
        "{}{}{}",
        &original[..at],
        " ".repeat(clause.len()),
        &original[end..]
    );
    Ok((emit, Some(blanked)))
}
