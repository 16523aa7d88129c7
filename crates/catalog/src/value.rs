//! SQL values and column types shared by the catalog, the view actor and the replicas.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};

use serde::{Deserialize, Serialize};

/// The storage type of a column. Proton's many integer widths all map to `Int64`; the
/// declared name is kept in [`Column::declared`] for display.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ColumnType {
    Int64,
    Float64,
    String,
    Bool,
    /// Days since 1970-01-01 (Proton `date`).
    Date,
    /// Microseconds since 1970-01-01 00:00:00 UTC (Proton `datetime`, `datetime64(p)`).
    Timestamp,
    /// An exact decimal of `precision` digits, `scale` of them after the point (Proton
    /// `decimal(p, s)`), held as its unscaled integer (see [`decimal`]).
    Decimal {
        precision: u8,
        scale: u8,
    },
    /// A list (Proton `array(T)`), which views pass through but do not group, compare or
    /// aggregate; held as its JSON text (see [`Value::List`]).
    List(ListElem),
}

/// The element type of a list column.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ListElem {
    Int64,
    Float64,
    String,
    Bool,
}

impl ListElem {
    pub fn name(self) -> &'static str {
        match self {
            ListElem::Int64 => "int64",
            ListElem::Float64 => "float64",
            ListElem::String => "string",
            ListElem::Bool => "bool",
        }
    }

    /// The DuckDB type of an element.
    pub fn duckdb_type(self) -> &'static str {
        match self {
            ListElem::Int64 => "BIGINT",
            ListElem::Float64 => "DOUBLE",
            ListElem::String => "VARCHAR",
            ListElem::Bool => "BOOLEAN",
        }
    }

    fn from_name(name: &str) -> Option<ListElem> {
        [
            ListElem::Int64,
            ListElem::Float64,
            ListElem::String,
            ListElem::Bool,
        ]
        .into_iter()
        .find(|e| e.name() == name)
    }

    /// Whether a JSON element is one of this type (NULL is one of every type).
    pub fn holds(self, v: &serde_json::Value) -> bool {
        use serde_json::Value as Json;
        match (self, v) {
            (_, Json::Null) => true,
            (ListElem::Int64, Json::Number(n)) => n.is_i64(),
            (ListElem::Float64, Json::Number(_)) => true,
            (ListElem::String, Json::String(_)) => true,
            (ListElem::Bool, Json::Bool(_)) => true,
            _ => false,
        }
    }

    /// The canonical JSON text of a list of this type from a JSON value, or why it is not one.
    pub fn list_text(self, v: &serde_json::Value) -> Result<String, String> {
        let items = v
            .as_array()
            .ok_or_else(|| format!("expected an array of {}", self.name()))?;
        if let Some(bad) = items.iter().find(|x| !self.holds(x)) {
            return Err(format!("{bad} is not a {} array element", self.name()));
        }
        Ok(serde_json::Value::Array(items.clone()).to_string())
    }
}

impl ColumnType {
    /// The name used in the wire schema and in messages.
    pub fn name(self) -> String {
        match self {
            ColumnType::Int64 => "int64".into(),
            ColumnType::Float64 => "float64".into(),
            ColumnType::String => "string".into(),
            ColumnType::Bool => "bool".into(),
            ColumnType::Date => "date".into(),
            ColumnType::Timestamp => "timestamp".into(),
            ColumnType::Decimal { precision, scale } => format!("decimal({precision},{scale})"),
            ColumnType::List(e) => format!("array({})", e.name()),
        }
    }

    /// Parses a wire schema type name, the inverse of [`ColumnType::name`].
    pub fn from_name(name: &str) -> Option<ColumnType> {
        match name {
            "int64" => Some(ColumnType::Int64),
            "float64" => Some(ColumnType::Float64),
            "string" => Some(ColumnType::String),
            "bool" => Some(ColumnType::Bool),
            "date" => Some(ColumnType::Date),
            "timestamp" => Some(ColumnType::Timestamp),
            _ if name.starts_with("array(") => name
                .strip_prefix("array(")?
                .strip_suffix(')')
                .and_then(ListElem::from_name)
                .map(ColumnType::List),
            _ => {
                let args = name.strip_prefix("decimal(")?.strip_suffix(')')?;
                let (p, s) = args.split_once(',')?;
                ColumnType::decimal(p.trim().parse().ok()?, s.trim().parse().ok()?)
            }
        }
    }

    /// `decimal(precision, scale)`, when a replica can hold it: 1 to
    /// [`decimal::PRECISION_MAX`] digits, the scale no more than the precision.
    pub fn decimal(precision: u8, scale: u8) -> Option<ColumnType> {
        ((1..=decimal::PRECISION_MAX).contains(&precision) && scale <= precision)
            .then_some(ColumnType::Decimal { precision, scale })
    }

    /// The DuckDB type a replica stores this column as.
    pub fn duckdb_type(self) -> String {
        match self {
            ColumnType::Int64 => "BIGINT".into(),
            ColumnType::Float64 => "DOUBLE".into(),
            ColumnType::String => "VARCHAR".into(),
            ColumnType::Bool => "BOOLEAN".into(),
            ColumnType::Date => "DATE".into(),
            ColumnType::Timestamp => "TIMESTAMP".into(),
            ColumnType::Decimal { precision, scale } => format!("DECIMAL({precision},{scale})"),
            ColumnType::List(e) => format!("{}[]", e.duckdb_type()),
        }
    }

    pub fn is_numeric(self) -> bool {
        matches!(
            self,
            ColumnType::Int64 | ColumnType::Float64 | ColumnType::Decimal { .. }
        )
    }
}

impl fmt::Display for ColumnType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// A SQL value. Floats compare and hash by bit pattern so that values can be group keys.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Value {
    Null,
    Int(i64),
    /// Stored by bit pattern: exact through JSON, NaN and infinities included.
    Float(#[serde(with = "float_bits")] f64),
    Text(String),
    Bool(bool),
    /// Days since 1970-01-01.
    Date(i32),
    /// Microseconds since 1970-01-01 00:00:00 UTC.
    Timestamp(i64),
    /// An exact decimal: the unscaled integer and the scale (1.50 at scale 2 is `(150, 2)`).
    /// Its magnitude is below 10^[`decimal::PRECISION_MAX`].
    Decimal(i128, u8),
    /// A list, as the canonical JSON text of its elements (`[1,2,null]`, `["a","b"]`).
    List(String),
}

impl Value {
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// The name of the value's kind, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Int(_) => "integer",
            Value::Float(_) => "float",
            Value::Text(_) => "string",
            Value::Bool(_) => "bool",
            Value::Date(_) => "date",
            Value::Timestamp(_) => "timestamp",
            Value::Decimal(..) => "decimal",
            Value::List(_) => "array",
        }
    }

    /// A total order over all values: NULL, then bools, numbers, strings. Numbers compare by
    /// value, an integer before an equal float; floats by `f64::total_cmp`. For sorted keys and
    /// the value sets of `min`, `max` and `count(DISTINCT)`.
    pub fn total_cmp(&self, other: &Value) -> Ordering {
        let rank = |v: &Value| match v {
            Value::Null => 0,
            Value::Bool(_) => 1,
            Value::Int(_) | Value::Float(_) => 2,
            Value::Text(_) => 3,
            Value::Date(_) => 4,
            Value::Timestamp(_) => 5,
            Value::Decimal(..) => 6,
            Value::List(_) => 7,
        };
        rank(self)
            .cmp(&rank(other))
            .then_with(|| match (self, other) {
                (Value::Bool(a), Value::Bool(b)) => a.cmp(b),
                (Value::Int(a), Value::Int(b)) => a.cmp(b),
                (Value::Float(a), Value::Float(b)) => a.total_cmp(b),
                (Value::Int(a), Value::Float(b)) => (*a as f64).total_cmp(b).then(Ordering::Less),
                (Value::Float(a), Value::Int(b)) => {
                    a.total_cmp(&(*b as f64)).then(Ordering::Greater)
                }
                (Value::Text(a), Value::Text(b)) => a.cmp(b),
                (Value::Date(a), Value::Date(b)) => a.cmp(b),
                (Value::Timestamp(a), Value::Timestamp(b)) => a.cmp(b),
                (Value::Decimal(a, sa), Value::Decimal(b, sb)) => {
                    decimal::cmp((*a, *sa), (*b, *sb)).then(sa.cmp(sb))
                }
                (Value::List(a), Value::List(b)) => a.cmp(b),
                _ => Ordering::Equal,
            })
    }

    /// SQL comparison: `None` when either side is NULL or the kinds cannot be compared.
    pub fn sql_cmp(&self, other: &Value) -> Option<Ordering> {
        match (self, other) {
            (Value::Int(a), Value::Int(b)) => Some(a.cmp(b)),
            (Value::Int(a), Value::Float(b)) => (*a as f64).partial_cmp(b),
            (Value::Float(a), Value::Int(b)) => a.partial_cmp(&(*b as f64)),
            (Value::Float(a), Value::Float(b)) => a.partial_cmp(b),
            (Value::Text(a), Value::Text(b)) => Some(a.cmp(b)),
            (Value::Bool(a), Value::Bool(b)) => Some(a.cmp(b)),
            (Value::Date(a), Value::Date(b)) => Some(a.cmp(b)),
            (Value::Timestamp(a), Value::Timestamp(b)) => Some(a.cmp(b)),
            (Value::Decimal(a, sa), Value::Decimal(b, sb)) => {
                Some(decimal::cmp((*a, *sa), (*b, *sb)))
            }
            _ => None,
        }
    }
}

impl PartialEq for Value {
    fn eq(&self, other: &Value) -> bool {
        match (self, other) {
            (Value::Null, Value::Null) => true,
            (Value::Int(a), Value::Int(b)) => a == b,
            (Value::Float(a), Value::Float(b)) => a.to_bits() == b.to_bits(),
            (Value::Text(a), Value::Text(b)) => a == b,
            (Value::Bool(a), Value::Bool(b)) => a == b,
            (Value::Date(a), Value::Date(b)) => a == b,
            (Value::Timestamp(a), Value::Timestamp(b)) => a == b,
            (Value::Decimal(a, sa), Value::Decimal(b, sb)) => a == b && sa == sb,
            (Value::List(a), Value::List(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for Value {}

impl Hash for Value {
    fn hash<H: Hasher>(&self, state: &mut H) {
        std::mem::discriminant(self).hash(state);
        match self {
            Value::Null => {}
            Value::Int(v) => v.hash(state),
            Value::Float(v) => v.to_bits().hash(state),
            Value::Text(v) => v.hash(state),
            Value::Bool(v) => v.hash(state),
            Value::Date(v) => v.hash(state),
            Value::Timestamp(v) => v.hash(state),
            Value::Decimal(v, scale) => {
                v.hash(state);
                scale.hash(state);
            }
            Value::List(v) => v.hash(state),
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("NULL"),
            Value::Int(v) => write!(f, "{v}"),
            Value::Float(v) => write!(f, "{v}"),
            Value::Text(v) => write!(f, "'{}'", v.replace('\'', "''")),
            Value::Bool(v) => write!(f, "{v}"),
            Value::Date(d) => write!(f, "'{}'", format_date(*d)),
            Value::Timestamp(t) => write!(f, "'{}'", format_timestamp(*t)),
            Value::Decimal(v, scale) => f.write_str(&decimal::format(*v, *scale)),
            Value::List(v) => write!(f, "'{}'", v.replace('\'', "''")),
        }
    }
}

mod float_bits {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(v.to_bits())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        u64::deserialize(d).map(f64::from_bits)
    }
}

/// Exact decimals as unscaled integers: 1.50 at scale 2 is 150.
pub mod decimal {
    use std::cmp::Ordering;

    /// Most digits a decimal type may have, as in DuckDB.
    pub const PRECISION_MAX: u8 = 38;

    /// 10^n for n up to 38; `i128::MAX` beyond (a scale read from a damaged state).
    pub fn pow10(n: u8) -> i128 {
        10i128.checked_pow(u32::from(n)).unwrap_or(i128::MAX)
    }

    /// Whether `unscaled` has at most `precision` digits.
    pub fn fits(unscaled: i128, precision: u8) -> bool {
        precision <= 38 && unscaled.unsigned_abs() < pow10(precision).unsigned_abs()
    }

    /// The decimal text `[-]digits[.digits]` (or a JSON number's `1.5e3`) as an unscaled
    /// integer at `scale`. Refused, never rounded: a value with more digits after the point
    /// than the scale, or more than `precision` digits in all.
    pub fn parse(text: &str, precision: u8, scale: u8) -> Result<i128, String> {
        let t = text.trim();
        let bad = || {
            format!(
                "'{}' is not a decimal number",
                t.chars().take(40).collect::<String>()
            )
        };
        let (mantissa, exp) = match t.find(['e', 'E']) {
            Some(i) => (&t[..i], t[i + 1..].parse::<i32>().map_err(|_| bad())?),
            None => (t, 0),
        };
        let (neg, digits) = match mantissa.strip_prefix('-') {
            Some(d) => (true, d),
            None => (false, mantissa.strip_prefix('+').unwrap_or(mantissa)),
        };
        let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
        if int.is_empty() && frac.is_empty()
            || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
        {
            return Err(bad());
        }
        // All the digits, and how many of them are after the point once the exponent applies.
        let all: String = int.chars().chain(frac.chars()).collect();
        let after = i64::try_from(frac.len()).map_err(|_| bad())? - i64::from(exp);
        let all = all.trim_start_matches('0');
        if all.is_empty() {
            return Ok(0);
        }
        let (all, after) = if after < 0 {
            // 15e2: digits then zeros.
            let zeros = usize::try_from(-after).map_err(|_| bad())?;
            if zeros > 40 {
                return Err(format!("{t} does not fit in decimal({precision},{scale})"));
            }
            (format!("{all}{}", "0".repeat(zeros)), 0)
        } else {
            (all.to_string(), after)
        };
        // Trailing zeros after the point do not count against the scale: 1.50 is 1.5.
        let mut all = all;
        let mut after = after;
        while after > i64::from(scale) && all.ends_with('0') {
            all.pop();
            after -= 1;
        }
        if after > i64::from(scale) {
            return Err(format!(
                "{t} has more than {scale} digits after the point, which decimal({precision},{scale}) would round"
            ));
        }
        let shift = u8::try_from(i64::from(scale) - after).map_err(|_| bad())?;
        let too_big = || format!("{t} does not fit in decimal({precision},{scale})");
        if all.len() > 38 {
            return Err(too_big());
        }
        let v: i128 = all.parse().map_err(|_| bad())?;
        let v = v.checked_mul(pow10(shift)).ok_or_else(too_big)?;
        if !fits(v, precision) {
            return Err(too_big());
        }
        Ok(if neg { -v } else { v })
    }

    /// `unscaled / 10^scale` as text, with exactly `scale` digits after the point.
    pub fn format(unscaled: i128, scale: u8) -> String {
        let digits = unscaled.unsigned_abs().to_string();
        let sign = if unscaled < 0 { "-" } else { "" };
        if scale == 0 {
            return format!("{sign}{digits}");
        }
        let scale = usize::from(scale);
        let padded = format!("{digits:0>width$}", width = scale + 1);
        let (int, frac) = padded.split_at(padded.len() - scale);
        format!("{sign}{int}.{frac}")
    }

    /// The value as a float (for `avg`).
    pub fn to_f64(unscaled: i128, scale: u8) -> f64 {
        unscaled as f64 / 10f64.powi(i32::from(scale))
    }

    /// Compares two decimals of any scales by value.
    pub fn cmp(a: (i128, u8), b: (i128, u8)) -> Ordering {
        let s = a.1.max(b.1);
        let up = |(v, scale): (i128, u8)| v.checked_mul(pow10(s - scale));
        match (up(a), up(b)) {
            (Some(x), Some(y)) => x.cmp(&y),
            // Beyond i128 only when the magnitudes differ by many digits: floats order them.
            _ => to_f64(a.0, a.1).total_cmp(&to_f64(b.0, b.1)),
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn decimals_parse_exactly_and_refuse_rounding() {
            assert_eq!(parse("1.5", 10, 2), Ok(150));
            assert_eq!(parse("-0.07", 10, 2), Ok(-7));
            assert_eq!(parse("12", 10, 2), Ok(1200));
            assert_eq!(parse("1.500", 10, 2), Ok(150));
            assert_eq!(parse("1.5e2", 10, 2), Ok(15000));
            assert_eq!(parse("15E-1", 10, 2), Ok(150));
            assert_eq!(parse(".5", 10, 2), Ok(50));
            assert_eq!(parse("-0.000", 10, 2), Ok(0));
            assert!(parse("1.555", 10, 2)
                .expect_err("refused")
                .contains("round"));
            assert!(parse("123456789", 10, 2)
                .expect_err("refused")
                .contains("fit"));
            assert!(parse("1e60", 28, 0).is_err());
            assert!(parse(&"9".repeat(39), 38, 0)
                .expect_err("refused")
                .contains("fit"));
            assert_eq!(parse(&"9".repeat(38), 38, 0), Ok(pow10(38) - 1));
            assert!(parse("abc", 10, 2).is_err());
            assert!(parse("1.2.3", 10, 2).is_err());
            assert!(parse("-", 10, 2).is_err());
            assert!(parse("", 10, 2).is_err());
            assert_eq!(format(150, 2), "1.50");
            assert_eq!(format(-7, 2), "-0.07");
            assert_eq!(format(-1200, 0), "-1200");
            assert_eq!(format(5, 3), "0.005");
            assert_eq!(cmp((150, 2), (15, 1)), Ordering::Equal);
            assert_eq!(cmp((151, 2), (15, 1)), Ordering::Greater);
            assert_eq!(cmp((-1, 0), (5, 3)), Ordering::Less);
        }
    }
}

const MICROS_PER_DAY: i64 = 86_400_000_000;

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day number (the inverse of [`days_from_civil`]).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// `YYYY-MM-DD`.
pub fn format_date(days: i32) -> String {
    let (y, m, d) = civil_from_days(days.into());
    format!("{y:04}-{m:02}-{d:02}")
}

/// `YYYY-MM-DD HH:MM:SS`, with `.ffffff` when there are fractions of a second (UTC).
pub fn format_timestamp(micros: i64) -> String {
    let days = micros.div_euclid(MICROS_PER_DAY);
    let rest = micros.rem_euclid(MICROS_PER_DAY);
    let (y, m, d) = civil_from_days(days);
    let secs = rest / 1_000_000;
    let frac = rest % 1_000_000;
    let base = format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    );
    if frac == 0 {
        base
    } else {
        format!("{base}.{frac:06}")
    }
}

fn digits(s: &str) -> Option<i64> {
    (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

/// Parses `YYYY-MM-DD`.
pub fn parse_date(s: &str) -> Option<i32> {
    let mut parts = s.trim().splitn(3, '-');
    let (y, m, d) = (
        digits(parts.next()?)?,
        digits(parts.next()?)?,
        digits(parts.next()?)?,
    );
    let (m, d) = (u32::try_from(m).ok()?, u32::try_from(d).ok()?);
    if !(1..=12).contains(&m) || d == 0 || d > 31 {
        return None;
    }
    let days = days_from_civil(y, m, d);
    // 2023-02-30 is not a date: it must come back as itself.
    (civil_from_days(days) == (y, m, d))
        .then(|| i32::try_from(days).ok())
        .flatten()
}

/// Parses ISO-8601 `YYYY-MM-DD[T| ]HH:MM[:SS[.fraction]][Z|+HH:MM|-HH:MM]` (UTC when no
/// offset is given) or a bare date, into microseconds since the epoch.
pub fn parse_timestamp(s: &str) -> Option<i64> {
    let s = s.trim();
    if s.len() == 10 {
        return parse_date(s).map(|d| i64::from(d) * MICROS_PER_DAY);
    }
    let (date, time) = s.split_at_checked(10)?;
    let days = i64::from(parse_date(date)?);
    let time = time.strip_prefix('T').or_else(|| time.strip_prefix(' '))?;
    // The offset, if any.
    let (time, offset_secs) = if let Some(t) = time.strip_suffix('Z') {
        (t, 0)
    } else if let Some(i) = time.rfind(['+', '-']) {
        let (t, off) = time.split_at(i);
        let sign = if off.starts_with('-') { -1 } else { 1 };
        let off = &off[1..];
        let (h, m) = match off.split_once(':') {
            Some((h, m)) => (digits(h)?, digits(m)?),
            None if off.len() == 4 => (digits(&off[..2])?, digits(&off[2..])?),
            None => (digits(off)?, 0),
        };
        (t, sign * (h * 3600 + m * 60))
    } else {
        (time, 0)
    };
    let (hms, frac) = match time.split_once('.') {
        Some((hms, frac)) => (hms, frac),
        None => (time, ""),
    };
    let mut parts = hms.split(':');
    let h = digits(parts.next()?)?;
    let mi = digits(parts.next()?)?;
    let sec = parts.next().map_or(Some(0), digits)?;
    if parts.next().is_some() || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let micros = if frac.is_empty() {
        0
    } else {
        let f: String = frac.chars().chain(std::iter::repeat('0')).take(6).collect();
        if !frac.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits(&f)?
    };
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec - offset_secs;
    secs.checked_mul(1_000_000)?.checked_add(micros)
}

#[cfg(test)]
mod time_tests {
    use super::*;

    #[test]
    fn dates_and_timestamps_round_trip() {
        assert_eq!(parse_date("1970-01-01"), Some(0));
        assert_eq!(parse_date("2024-02-29"), Some(19_782));
        assert_eq!(parse_date("2023-02-29"), None);
        assert_eq!(format_date(19_782), "2024-02-29");
        assert_eq!(format_date(-1), "1969-12-31");
        let t = parse_timestamp("2024-02-29T13:45:06.5Z").expect("ts");
        assert_eq!(format_timestamp(t), "2024-02-29 13:45:06.500000");
        assert_eq!(parse_timestamp("2024-02-29 15:45:06.5+02:00"), Some(t));
        assert_eq!(parse_timestamp("2024-02-29 13:45:06.500"), Some(t));
        assert_eq!(parse_timestamp("2024-02-29"), Some(19_782 * MICROS_PER_DAY));
        assert_eq!(parse_timestamp("2024-02-29T25:00:00"), None);
        assert_eq!(format_timestamp(-1), "1969-12-31 23:59:59.999999");
    }
}
