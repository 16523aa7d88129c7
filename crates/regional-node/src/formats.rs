//! ClickHouse output formats for the HTTP endpoint (JSONCompact, JSON, JSONEachRow, CSV,
//! CSVWithNames, TabSeparated, TabSeparatedWithNames; ArrowStream, Arrow and Parquet are
//! DuckDB's Arrow output, written by the query itself). Pure functions over a query result.

use meridian_proto::v1 as pb;
use serde_json::{json, Value as Json};

use crate::query::QueryResult;

pub const FORMATS: &str =
    "JSONCompact, JSON, JSONEachRow, CSV, CSVWithNames, TabSeparated, TabSeparatedWithNames, ArrowStream, Arrow, Parquet, Native";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    JsonCompact,
    Json,
    JsonEachRow,
    Csv {
        names: bool,
    },
    Tsv {
        names: bool,
    },
    /// Arrow IPC, stream (`ArrowStream`) or file (`Arrow`) format: the bytes are the query's.
    Arrow(crate::query::Shape),
}

impl Format {
    pub fn parse(name: &str) -> Option<Format> {
        Some(match name {
            "JSONCompact" => Format::JsonCompact,
            "JSON" => Format::Json,
            "JSONEachRow" => Format::JsonEachRow,
            "CSV" => Format::Csv { names: false },
            "CSVWithNames" => Format::Csv { names: true },
            "TabSeparated" | "TSV" => Format::Tsv { names: false },
            "TabSeparatedWithNames" | "TSVWithNames" => Format::Tsv { names: true },
            "ArrowStream" => Format::Arrow(crate::query::Shape::ArrowStream),
            "Arrow" => Format::Arrow(crate::query::Shape::ArrowFile),
            "Parquet" => Format::Arrow(crate::query::Shape::Parquet),
            "Native" => Format::Arrow(crate::query::Shape::Native),
            _ => return None,
        })
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::JsonCompact | Format::Json => "application/json; charset=UTF-8",
            Format::JsonEachRow => "application/x-ndjson; charset=UTF-8",
            Format::Csv { .. } => "text/csv; charset=UTF-8",
            Format::Tsv { .. } => "text/tab-separated-values; charset=UTF-8",
            Format::Arrow(crate::query::Shape::ArrowFile) => "application/vnd.apache.arrow.file",
            Format::Arrow(crate::query::Shape::Parquet) => "application/vnd.apache.parquet",
            Format::Arrow(crate::query::Shape::Native) => "application/octet-stream",
            Format::Arrow(_) => "application/vnd.apache.arrow.stream",
        }
    }

    /// The shape the query answers in for this format.
    pub fn shape(self) -> crate::query::Shape {
        match self {
            Format::Arrow(shape) => shape,
            _ => crate::query::Shape::Rows,
        }
    }
}

/// ClickHouse's name for a DuckDB type.
pub fn clickhouse_type(duckdb: &str) -> String {
    match duckdb {
        "BIGINT" => "Int64".into(),
        "INTEGER" => "Int32".into(),
        "SMALLINT" => "Int16".into(),
        "TINYINT" => "Int8".into(),
        "UBIGINT" => "UInt64".into(),
        "UINTEGER" => "UInt32".into(),
        "USMALLINT" => "UInt16".into(),
        "UTINYINT" => "UInt8".into(),
        "HUGEINT" => "Int128".into(),
        "DOUBLE" => "Float64".into(),
        "FLOAT" => "Float32".into(),
        "VARCHAR" => "String".into(),
        "BOOLEAN" => "Bool".into(),
        "DATE" => "Date".into(),
        "TIMESTAMP" => "DateTime64(6)".into(),
        other => match (other.strip_suffix("[]"), other.strip_prefix("DECIMAL")) {
            (Some(elem), _) => format!("Array({})", clickhouse_type(elem)),
            (None, Some(rest)) => format!("Decimal{rest}"),
            (None, None) => other.into(),
        },
    }
}

/// How a column's values are written in JSON formats.
#[derive(Clone)]
struct JsonCol {
    /// Its DuckDB type.
    duck: String,
    /// Whether 64-bit integers are quoted (ClickHouse's default).
    quote_64bit: bool,
    /// Whether this column's values are quoted: 64-bit integers, when `quote_64bit`.
    quote: bool,
}

impl JsonCol {
    fn new(duck: &str, quote_64bit: bool) -> JsonCol {
        JsonCol {
            duck: duck.to_string(),
            quote_64bit,
            quote: quote_64bit && is_wide_int(&clickhouse_type(duck)),
        }
    }

    /// A cell: a list as a JSON array of its elements, as ClickHouse writes one; anything
    /// else by its wire value.
    fn cell(&self, v: &pb::Value) -> Json {
        let quote = self.quote;
        match (&v.kind, self.duck.strip_suffix("[]")) {
            (Some(pb::value::Kind::Text(s)), Some(elem)) => catalog::chtext::parse_list(s)
                .map_or_else(
                    || Json::String(s.clone()),
                    |items| list_json(items, elem, self.quote_64bit),
                ),
            _ => json_value(v, quote),
        }
    }
}

/// The elements of a printed list of DuckDB element type `elem` as a JSON array.
fn list_json(items: Vec<catalog::chtext::Elem>, elem: &str, quote_64bit: bool) -> Json {
    use catalog::chtext::Elem;
    let quote = quote_64bit && is_wide_int(&clickhouse_type(elem));
    Json::Array(
        items
            .into_iter()
            .map(|e| match e {
                Elem::Null => Json::Null,
                Elem::Quoted(s) => Json::String(s),
                Elem::List(inner) => {
                    list_json(inner, elem.strip_suffix("[]").unwrap_or(elem), quote_64bit)
                }
                // A number only when JSON readers hold it exactly (HUGEINTs stay text).
                Elem::Bare(t) if catalog::chtext::is_integer_type(elem) && !quote => {
                    match (t.parse::<i64>(), t.parse::<u64>()) {
                        (Ok(i), _) => Json::from(i),
                        (_, Ok(u)) => Json::from(u),
                        _ => Json::String(t),
                    }
                }
                Elem::Bare(t) if matches!(elem, "DOUBLE" | "FLOAT") => t
                    .parse::<f64>()
                    .ok()
                    .and_then(serde_json::Number::from_f64)
                    .map_or(Json::String(t), Json::Number),
                Elem::Bare(t) if elem == "BOOLEAN" => match t.as_str() {
                    "true" => Json::Bool(true),
                    "false" => Json::Bool(false),
                    _ => Json::String(t),
                },
                Elem::Bare(t) => Json::String(t),
            })
            .collect(),
    )
}

/// ClickHouse quotes 64-bit and wider integers in JSON formats by default
/// (`output_format_json_quote_64bit_integers=1`), because JavaScript cannot hold them.
fn is_wide_int(ch_type: &str) -> bool {
    matches!(ch_type, "Int64" | "UInt64" | "Int128")
}

pub(crate) fn json_value(v: &pb::Value, quote_wide: bool) -> Json {
    use pb::value::Kind;
    match &v.kind {
        None => Json::Null,
        Some(Kind::Int(i)) if quote_wide => Json::String(i.to_string()),
        Some(Kind::Int(i)) => json!(i),
        Some(Kind::Float(f)) => serde_json::Number::from_f64(*f)
            .map_or_else(|| Json::String(f.to_string()), Json::Number),
        Some(Kind::Text(s)) => Json::String(s.clone()),
        Some(Kind::Boolean(b)) => Json::Bool(*b),
    }
}

fn plain(v: &pb::Value) -> Option<String> {
    use pb::value::Kind;
    match &v.kind {
        None => None,
        Some(Kind::Int(i)) => Some(i.to_string()),
        Some(Kind::Float(f)) => Some(f.to_string()),
        Some(Kind::Text(s)) => Some(s.clone()),
        Some(Kind::Boolean(b)) => Some(b.to_string()),
    }
}

fn csv_field(v: &pb::Value) -> String {
    match (&v.kind, plain(v)) {
        (_, None) => "\\N".into(),
        (Some(pb::value::Kind::Text(_)), Some(s)) => format!("\"{}\"", s.replace('"', "\"\"")),
        (_, Some(s)) => s,
    }
}

fn tsv_escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('\t', "\\t")
        .replace('\n', "\\n")
}

/// The change batch of each view the answer reflects (every view of the replica, read in the
/// query's transaction): for the `meridian` key of JSON bodies.
pub fn positions_json(positions: &[pb::ViewPosition]) -> Json {
    Json::Array(
        positions
            .iter()
            .map(|p| {
                json!({
                    "view": p.view, "view_id": p.view_id, "applied_seq": p.applied_seq,
                    "epoch": p.epoch, "produced_at_ms": p.produced_at_ms,
                    "applied_at_ms": p.applied_at_ms,
                    "fresh_at_ms": p.fresh_at_ms,
                    "staleness_ms": (p.staleness_ms >= 0).then_some(p.staleness_ms),
                })
            })
            .collect(),
    )
}

/// The same as an HTTP header value:
/// `view;seq=N;epoch=N;produced_at_ms=N;applied_at_ms=N;fresh_at_ms=N;staleness_ms=N`, one
/// per view, comma-separated (`staleness_ms` only when known).
pub fn positions_header(positions: &[pb::ViewPosition]) -> String {
    positions
        .iter()
        .map(|p| {
            let staleness = if p.staleness_ms >= 0 {
                format!(";staleness_ms={}", p.staleness_ms)
            } else {
                String::new()
            };
            format!(
                "{};seq={};epoch={};produced_at_ms={};applied_at_ms={};fresh_at_ms={}{staleness}",
                p.view, p.applied_seq, p.epoch, p.produced_at_ms, p.applied_at_ms, p.fresh_at_ms
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Renders a result. `quote_64bit` follows ClickHouse's setting of the same name.
/// `token` is the answer's read token (in JSON bodies under `meridian`).
pub fn render(
    format: Format,
    r: &QueryResult,
    token: &str,
    elapsed_s: f64,
    quote_64bit: bool,
) -> String {
    let ch_types: Vec<String> = r
        .columns
        .iter()
        .map(|c| clickhouse_type(&c.r#type))
        .collect();
    let quote: Vec<JsonCol> = r
        .columns
        .iter()
        .map(|c| JsonCol::new(&c.r#type, quote_64bit))
        .collect();
    let meta: Vec<Json> = r
        .columns
        .iter()
        .zip(&ch_types)
        .map(|(c, t)| json!({"name": c.name, "type": t}))
        .collect();
    let statistics = json!({"elapsed": elapsed_s, "rows_read": r.rows.len(), "bytes_read": 0});
    match format {
        // The top level is written by hand, in ClickHouse's order (meta, data, rows,
        // statistics): a JSON map would sort the keys, and JSON objects reorder the columns.
        Format::JsonCompact | Format::Json => {
            let data: Vec<String> = r
                .rows
                .iter()
                .map(|row| match format {
                    Format::Json => format!("\t\t{}", object(r, row, &quote)),
                    _ => format!(
                        "\t\t{}",
                        Json::Array(
                            row.values
                                .iter()
                                .zip(&quote)
                                .map(|(v, q)| q.cell(v))
                                .collect()
                        )
                    ),
                })
                .collect();
            format!(
                "{{\n\t\"meta\": {},\n\t\"data\": [\n{}\n\t],\n\t\"rows\": {},\n\t\"statistics\": {},\n\t\"meridian\": {}\n}}\n",
                Json::Array(meta),
                data.join(",\n"),
                r.rows.len(),
                statistics,
                json!({"positions": positions_json(&r.positions), "token": token})
            )
        }
        Format::JsonEachRow => r
            .rows
            .iter()
            .map(|row| format!("{}\n", object(r, row, &quote)))
            .collect(),
        Format::Csv { names } => {
            let mut out = String::new();
            if names {
                out.push_str(
                    &r.columns
                        .iter()
                        .map(|c| format!("\"{}\"", c.name.replace('"', "\"\"")))
                        .collect::<Vec<_>>()
                        .join(","),
                );
                out.push('\n');
            }
            for row in &r.rows {
                out.push_str(
                    &row.values
                        .iter()
                        .map(csv_field)
                        .collect::<Vec<_>>()
                        .join(","),
                );
                out.push('\n');
            }
            out
        }
        Format::Tsv { names } => {
            let mut out = String::new();
            if names {
                out.push_str(
                    &r.columns
                        .iter()
                        .map(|c| tsv_escape(&c.name))
                        .collect::<Vec<_>>()
                        .join("\t"),
                );
                out.push('\n');
            }
            for row in &r.rows {
                out.push_str(
                    &row.values
                        .iter()
                        .map(|v| plain(v).map_or_else(|| "\\N".to_string(), |s| tsv_escape(&s)))
                        .collect::<Vec<_>>()
                        .join("\t"),
                );
                out.push('\n');
            }
            out
        }
        // The query wrote the bytes (`QueryResult::arrow`); there is no text to render.
        Format::Arrow(_) => String::new(),
    }
}

/// One row as a JSON object with the columns in result order.
fn object(r: &QueryResult, row: &pb::Row, quote: &[JsonCol]) -> String {
    let fields: Vec<String> = r
        .columns
        .iter()
        .zip(&row.values)
        .zip(quote)
        .map(|((c, v), q)| format!("{}:{}", Json::String(c.name.clone()), q.cell(v)))
        .collect();
    format!("{{{}}}", fields.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result() -> QueryResult {
        use pb::value::Kind;
        let v = |k| pb::Value { kind: k };
        QueryResult {
            columns: vec![
                pb::ColumnInfo {
                    name: "region".into(),
                    r#type: "VARCHAR".into(),
                },
                pb::ColumnInfo {
                    name: "n".into(),
                    r#type: "BIGINT".into(),
                },
            ],
            rows: vec![
                pb::Row {
                    values: vec![
                        v(Some(Kind::Text("eu \"west\"".into()))),
                        v(Some(Kind::Int(3))),
                    ],
                },
                pb::Row {
                    values: vec![v(None), v(Some(Kind::Int(1)))],
                },
            ],
            positions: vec![pb::ViewPosition {
                view: "v".into(),
                applied_seq: 7,
                produced_at_ms: 100,
                applied_at_ms: 120,
                view_id: 3,
                epoch: 9,
                fresh_at_ms: 110,
                staleness_ms: 25,
            }],
            raft_index: 7,
            arrow: None,
        }
    }

    #[test]
    fn formats_match_clickhouse() {
        let r = result();
        let compact: Json =
            serde_json::from_str(&render(Format::JsonCompact, &r, "eu:7", 0.5, true))
                .expect("json");
        assert_eq!(
            compact["meta"],
            json!([{"name": "region", "type": "String"}, {"name": "n", "type": "Int64"}])
        );
        assert_eq!(compact["data"], json!([["eu \"west\"", "3"], [null, "1"]]));
        assert_eq!(compact["rows"], json!(2));
        assert_eq!(
            compact["meridian"]["positions"],
            json!([{"view": "v", "view_id": 3, "applied_seq": 7, "epoch": 9, "produced_at_ms": 100, "applied_at_ms": 120, "fresh_at_ms": 110, "staleness_ms": 25}])
        );
        assert_eq!(
            compact["meridian"]["token"],
            json!("eu:7"),
            "the answer's read token"
        );
        assert_eq!(
            positions_header(&r.positions),
            "v;seq=7;epoch=9;produced_at_ms=100;applied_at_ms=120;fresh_at_ms=110;staleness_ms=25"
        );
        assert_eq!(
            render(Format::JsonEachRow, &r, "eu:7", 0.0, false),
            "{\"region\":\"eu \\\"west\\\"\",\"n\":3}\n{\"region\":null,\"n\":1}\n"
        );
        assert_eq!(
            render(Format::Csv { names: false }, &r, "eu:7", 0.0, true),
            "\"eu \"\"west\"\"\",3\n\\N,1\n"
        );
        assert_eq!(
            render(Format::Csv { names: true }, &r, "eu:7", 0.0, true)
                .lines()
                .next(),
            Some("\"region\",\"n\"")
        );
        assert_eq!(
            render(Format::Tsv { names: false }, &r, "eu:7", 0.0, true),
            "eu \"west\"\t3\n\\N\t1\n"
        );
        let full: Json = serde_json::from_str(&render(Format::Json, &r, "eu:7", 0.5, true))
            .expect("JSON is JSON");
        assert_eq!(full["data"][1], json!({"region": null, "n": "1"}));
        assert_eq!(
            Format::parse("Parquet").map(Format::shape),
            Some(crate::query::Shape::Parquet)
        );
        assert_eq!(Format::parse("Pretty"), None);
    }
}

#[cfg(test)]
mod list_tests {
    use super::*;

    #[test]
    fn lists_are_json_arrays_in_json_formats_as_clickhouse_writes_them() {
        let col = |name: &str, ty: &str| pb::ColumnInfo {
            name: name.into(),
            r#type: ty.into(),
        };
        let text = |s: &str| pb::Value {
            kind: Some(pb::value::Kind::Text(s.into())),
        };
        let r = QueryResult {
            columns: vec![
                col("s", "VARCHAR[]"),
                col("n", "BIGINT[]"),
                col("i", "INTEGER[][]"),
                col("f", "DOUBLE[]"),
                col("b", "BOOLEAN[]"),
                col("h", "HUGEINT[]"),
                col("t", "STRUCT(a INTEGER)[]"),
            ],
            rows: vec![pb::Row {
                values: vec![
                    text(r"['a,b','c\'d',NULL]"),
                    text("[1,NULL]"),
                    text("[[1],[]]"),
                    text("[1.5,inf]"),
                    text("[true]"),
                    text("[170141183460469231731687303715884105727,-1]"),
                    text("[(1)]"),
                ],
            }],
            positions: Vec::new(),
            raft_index: 1,
            arrow: None,
        };
        let out: Json = serde_json::from_str(&render(Format::JsonCompact, &r, "eu:1", 0.0, true))
            .expect("json");
        assert_eq!(
            out["meta"][0],
            json!({"name": "s", "type": "Array(String)"})
        );
        assert_eq!(out["meta"][2]["type"], json!("Array(Array(Int32))"));
        assert_eq!(
            out["data"][0],
            json!([
                ["a,b", "c'd", null],
                ["1", null],
                [[1], []],
                [1.5, "inf"],
                [true],
                ["170141183460469231731687303715884105727", "-1"],
                "[(1)]"
            ]),
            "64-bit integers quoted inside arrays too; what does not read as a list stays text"
        );
        let each = render(Format::JsonEachRow, &r, "eu:1", 0.0, false);
        let row: Json = serde_json::from_str(each.trim()).expect("json");
        assert_eq!(row["n"], json!([1, null]));
        assert_eq!(
            row["h"],
            json!(["170141183460469231731687303715884105727", -1]),
            "a number only when JSON readers hold it exactly"
        );
    }
}
