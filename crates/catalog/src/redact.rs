//! Secrets in stored statements (a stream's `password`, secret `properties`) kept out of
//! what status shows.

use crate::lexer::{tokenize, Tok};

/// The statement with the values of `password=` and of secret librdkafka properties replaced
/// by `***`. A statement that does not tokenize is returned whole only if it holds no
/// `password` at all.
pub fn redact_secrets(sql: &str) -> String {
    let Ok(tokens) = tokenize(sql) else {
        return if sql.to_ascii_lowercase().contains("password") {
            "(statement hidden: it may hold a password)".to_string()
        } else {
            sql.to_string()
        };
    };
    let mut out = String::with_capacity(sql.len());
    let mut copied = 0;
    for w in tokens.windows(3) {
        let (Tok::Word(key), Tok::Sym("="), Tok::Str(value)) = (&w[0].tok, &w[1].tok, &w[2].tok)
        else {
            continue;
        };
        let key = key.to_ascii_lowercase();
        let redacted = if key == "password" {
            "***".to_string()
        } else if key == "properties" {
            value
                .split(';')
                .map(|part| match part.split_once('=') {
                    Some((k, _)) if crate::defs::is_secret_option(k.trim()) => format!("{k}=***"),
                    _ => part.to_string(),
                })
                .collect::<Vec<_>>()
                .join(";")
        } else {
            continue;
        };
        // The quoted value runs from its token to the next token (or the end).
        let start = w[2].offset;
        let end = tokens
            .iter()
            .map(|t| t.offset)
            .find(|&o| o > start)
            .unwrap_or(sql.len());
        let quoted = sql[start..end].trim_end();
        out.push_str(&sql[copied..start]);
        out.push_str(&format!("'{}'", redacted.replace('\'', "''")));
        copied = start + quoted.len();
    }
    out.push_str(&sql[copied..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_and_secret_properties_are_hidden() {
        let sql = "CREATE EXTERNAL STREAM s(raw string) SETTINGS type='kafka', brokers='b:9093', topic='t', security_protocol='SASL_SSL', username='app', password='s3cr''et', properties='fetch.wait.max.ms=10;ssl.key.password=k3y'";
        let r = redact_secrets(sql);
        assert!(!r.contains("s3cr") && !r.contains("k3y"), "{r}");
        assert!(
            r.contains("password='***'")
                && r.contains("ssl.key.password=***")
                && r.contains("fetch.wait.max.ms=10"),
            "{r}"
        );
        assert!(r.contains("username='app'"), "{r}");
    }
}
