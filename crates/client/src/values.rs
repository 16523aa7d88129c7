//! Typed result values. The wire carries integers, floats, text and booleans; a date, a
//! timestamp or a decimal travels as text (as ClickHouse prints it) next to its column's DuckDB
//! type, and the client turns it back into a typed value here. Rows also map onto user structs
//! through serde ([`crate::QueryResult::rows_as`]).

use std::fmt;

use serde_json::Value as Json;

use crate::Value;

/// A calendar date, as days since 1970-01-01.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Date {
    pub days: i32,
}

impl Date {
    /// (year, month, day).
    pub fn ymd(&self) -> (i64, u32, u32) {
        catalog::civil_from_days(self.days.into())
    }
}

impl fmt::Display for Date {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&catalog::format_date(self.days))
    }
}

/// An instant in UTC, as microseconds since 1970-01-01 00:00:00.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp {
    pub micros: i64,
}

impl Timestamp {
    /// RFC 3339 in UTC: `2024-01-01T12:00:00Z`, with `.ffffff` when there are fractions.
    pub fn rfc3339(&self) -> String {
        format!(
            "{}Z",
            catalog::format_timestamp(self.micros).replacen(' ', "T", 1)
        )
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&catalog::format_timestamp(self.micros))
    }
}

/// An exact decimal: `unscaled / 10^scale` (1.50 is 150 at scale 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Decimal {
    pub unscaled: i128,
    pub scale: u32,
}

/// Most digits a decimal holds (DuckDB's DECIMAL goes to 38).
const DECIMAL_DIGITS_MAX: usize = 38;

impl Decimal {
    /// Reads `-12.340` (digits, at most one point, an optional sign).
    pub fn parse(text: &str) -> Option<Decimal> {
        let (negative, digits) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
        // Significant digits: 0.05 has two.
        let significant = int.trim_start_matches('0').len() + frac.len();
        if int.is_empty()
            || significant > DECIMAL_DIGITS_MAX
            || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
        {
            return None;
        }
        let unscaled: i128 = format!("{int}{frac}").parse().ok()?;
        Some(Decimal {
            unscaled: if negative { -unscaled } else { unscaled },
            scale: u32::try_from(frac.len()).ok()?,
        })
    }

    /// The nearest float (exact only for few digits).
    pub fn to_f64(&self) -> f64 {
        self.to_string().parse().unwrap_or(f64::NAN)
    }
}

impl fmt::Display for Decimal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let digits = self.unscaled.unsigned_abs().to_string();
        let scale = self.scale as usize;
        let sign = if self.unscaled < 0 { "-" } else { "" };
        if scale == 0 {
            return write!(f, "{sign}{digits}");
        }
        let padded = format!("{digits:0>width$}", width = scale + 1);
        let (int, frac) = padded.split_at(padded.len() - scale);
        write!(f, "{sign}{int}.{frac}")
    }
}

/// A wire value of a column of DuckDB type `type_name`, typed when the type says it is a
/// date, a timestamp, a decimal or a list of them or of numbers, strings and bools (text that
/// does not read as one stays text).
pub(crate) fn typed(v: Value, type_name: &str) -> Value {
    let Value::Text(s) = v else {
        return v;
    };
    let parsed = if let Some(elem) = type_name.strip_suffix("[]") {
        catalog::chtext::parse_list(&s)
            .and_then(|items| typed_list(items, elem))
            .map(Value::List)
    } else if type_name == "DATE" {
        catalog::parse_date(&s).map(|days| Value::Date(Date { days }))
    } else if type_name.starts_with("TIMESTAMP") {
        catalog::parse_timestamp(&s).map(|micros| Value::Timestamp(Timestamp { micros }))
    } else if type_name.starts_with("DECIMAL") {
        Decimal::parse(&s).map(Value::Decimal)
    } else {
        None
    };
    parsed.unwrap_or(Value::Text(s))
}

/// A printed list's elements typed as DuckDB type `elem`.
fn typed_list(items: Vec<catalog::chtext::Elem>, elem: &str) -> Option<Vec<Value>> {
    use catalog::chtext::Elem;
    items
        .into_iter()
        .map(|e| match e {
            Elem::Null => Some(Value::Null),
            Elem::Quoted(s) => Some(typed(Value::Text(s), elem)),
            Elem::Bare(token) => Some(scalar(&token, elem)),
            Elem::List(inner) => typed_list(inner, elem.strip_suffix("[]")?).map(Value::List),
        })
        .collect()
}

/// An unquoted list element of DuckDB type `ty`.
fn scalar(token: &str, ty: &str) -> Value {
    let parsed = match ty {
        _ if catalog::chtext::is_integer_type(ty) => token.parse().ok().map(Value::Int),
        "DOUBLE" | "FLOAT" => token.parse().ok().map(Value::Float),
        "BOOLEAN" => token.parse().ok().map(Value::Bool),
        _ if ty.starts_with("DECIMAL") => Decimal::parse(token).map(Value::Decimal),
        _ => None,
    };
    parsed.unwrap_or_else(|| Value::Text(token.to_string()))
}

/// A value as JSON, for serde: dates and timestamps as their text, decimals as numbers (the
/// exact digits are in [`Value::Decimal`]).
pub(crate) fn to_json(v: &Value) -> Json {
    match v {
        Value::Null => Json::Null,
        Value::Int(i) => Json::from(*i),
        Value::Float(f) => serde_json::Number::from_f64(*f).map_or(Json::Null, Json::Number),
        Value::Text(s) => Json::String(s.clone()),
        Value::Bool(b) => Json::Bool(*b),
        Value::Date(d) => Json::String(d.to_string()),
        Value::Timestamp(t) => Json::String(t.rfc3339()),
        Value::Decimal(d) if d.scale == 0 => {
            i64::try_from(d.unscaled).map_or_else(|_| Json::String(d.to_string()), Json::from)
        }
        Value::Decimal(d) => serde_json::Number::from_f64(d.to_f64())
            .map_or_else(|| Json::String(d.to_string()), Json::Number),
        Value::List(items) => Json::Array(items.iter().map(to_json).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_arrive_typed_element_by_element() {
        let list = |t: &str, ty: &str| typed(Value::Text(t.into()), ty);
        let text = |s: &str| Value::Text(s.into());
        assert_eq!(
            list(r"['a','b\'c',NULL,'x,y]']", "VARCHAR[]"),
            Value::List(vec![text("a"), text("b'c"), Value::Null, text("x,y]")])
        );
        assert_eq!(
            list("[1,NULL,-3]", "BIGINT[]"),
            Value::List(vec![Value::Int(1), Value::Null, Value::Int(-3)])
        );
        assert_eq!(list("[]", "DOUBLE[]"), Value::List(vec![]));
        assert_eq!(
            list("[[1.5],[],[inf]]", "DOUBLE[][]"),
            Value::List(vec![
                Value::List(vec![Value::Float(1.5)]),
                Value::List(vec![]),
                Value::List(vec![Value::Float(f64::INFINITY)]),
            ])
        );
        assert_eq!(
            list("['2024-01-01']", "DATE[]"),
            Value::List(vec![Value::Date(Date { days: 19_723 })])
        );
        assert_eq!(
            list("[1.50,true]", "DECIMAL(10,2)[]"),
            Value::List(vec![
                Value::Decimal(Decimal {
                    unscaled: 150,
                    scale: 2
                }),
                text("true")
            ])
        );
        assert_eq!(
            to_json(&list("[true,false]", "BOOLEAN[]")),
            serde_json::json!([true, false])
        );
        // Not such a list: stays text.
        for (t, ty) in [
            ("[(1,'v')]", "STRUCT(a INTEGER)[]"),
            ("[1,2", "BIGINT[]"),
            ("['a", "VARCHAR[]"),
            ("[1]x", "BIGINT[]"),
            (
                "[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]",
                "BIGINT[][][][][][][][][][][][][][][][][][]",
            ),
        ] {
            assert_eq!(list(t, ty), text(t), "{t}");
        }
    }

    #[test]
    fn dates_timestamps_and_decimals_arrive_typed() {
        assert_eq!(
            typed(Value::Text("2024-01-01".into()), "DATE"),
            Value::Date(Date { days: 19_723 })
        );
        assert_eq!(
            typed(Value::Text("2024-01-01 00:00:01.5".into()), "TIMESTAMP"),
            Value::Timestamp(Timestamp {
                micros: 1_704_067_201_500_000
            })
        );
        assert_eq!(
            typed(Value::Text("1.50".into()), "DECIMAL(10,2)"),
            Value::Decimal(Decimal {
                unscaled: 150,
                scale: 2
            })
        );
        // Other text, and text that is not what its type says, stays text.
        assert_eq!(
            typed(Value::Text("x".into()), "VARCHAR"),
            Value::Text("x".into())
        );
        assert_eq!(
            typed(Value::Text("soon".into()), "DATE"),
            Value::Text("soon".into())
        );
        assert_eq!(typed(Value::Int(3), "DATE"), Value::Int(3));
        for text in ["1.50", "-0.05", "12", "-7", "0.000"] {
            let d = Decimal::parse(text).expect(text);
            assert_eq!(d.to_string(), text, "prints back exactly");
        }
        assert!(Decimal::parse("1.2.3").is_none() && Decimal::parse("").is_none());
        assert!(Decimal::parse(&"9".repeat(39)).is_none());
        assert!(
            Decimal::parse(&format!("0.{}", "1".repeat(38))).is_some(),
            "DECIMAL(38,38)"
        );
        assert_eq!(
            to_json(&Value::Timestamp(Timestamp {
                micros: 1_704_067_201_500_000
            })),
            Json::String("2024-01-01T00:00:01.500000Z".into())
        );
        assert_eq!(
            to_json(&Value::Decimal(Decimal {
                unscaled: 12,
                scale: 0
            })),
            Json::from(12)
        );
        assert_eq!(Date { days: 19_723 }.ymd(), (2024, 1, 1));
    }
}
