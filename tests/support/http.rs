//! A minimal HTTP client for the regional nodes' endpoint, enough for tests.

use std::time::Duration;

use anyhow::Context;

/// A minimal HTTP/1.1 client for the chDB-compatible endpoint: (status, body).
pub fn http(
    method: &str,
    url: &str,
    path_and_query: &str,
    body: &str,
) -> anyhow::Result<(u16, String)> {
    use std::io::{Read, Write};
    let host = url.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(host)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(s, "{method} {path_and_query} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    parse_response(&raw)
}

/// A GET whose body is bytes (an Arrow answer), not chunked: (status, body).
pub fn http_bytes(url: &str, path_and_query: &str) -> anyhow::Result<(u16, Vec<u8>)> {
    use std::io::{Read, Write};
    let host = url.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(host)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "GET {path_and_query} HTTP/1.0\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let at = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("HTTP response has a head")?;
    let head = String::from_utf8_lossy(&raw[..at]).to_string();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .context("status code")?
        .parse()?;
    anyhow::ensure!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "an HTTP/1.0 answer is not chunked"
    );
    Ok((status, raw[at + 4..].to_vec()))
}

fn parse_response(raw: &str) -> anyhow::Result<(u16, String)> {
    let (head, rest) = raw
        .split_once("\r\n\r\n")
        .context("HTTP response has a head")?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .context("status code")?
        .parse()?;
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    Ok((status, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Percent-encodes a query string value.
pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
