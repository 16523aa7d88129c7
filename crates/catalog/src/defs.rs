//! Resolved, validated catalog objects: external streams and materialized views.

use serde::{Deserialize, Serialize};

use crate::ast;
use crate::error::SqlError;
use crate::value::ColumnType;
use crate::view::Plan;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Column {
    pub name: String,
    pub ty: ColumnType,
    /// The type as the user wrote it, such as `nullable(int32)`.
    pub declared: String,
}

impl Column {
    /// How an epoch number in a message converts to microseconds for this timestamp column:
    /// numbers are in the column's precision (`datetime` seconds, `datetime64(3)` milliseconds,
    /// `datetime64(6)` microseconds), as Debezium's Timestamp and MicroTimestamp send them.
    /// Returns (multiply by, divide by).
    pub fn epoch_scale(&self) -> (i64, i64) {
        let t = self.base_type();
        match timestamp_precision(t) {
            Some(p) if p <= 6 => (10i64.pow(6 - p), 1),
            Some(p) => (1, 10i64.pow(p - 6)),
            None => (1, 1),
        }
    }

    /// The declared type without `nullable(...)` and `low_cardinality(...)` around it.
    fn base_type(&self) -> &str {
        unwrapped(&self.declared)
    }

    /// For an `array(int32)` column, the values its elements may hold, as
    /// [`Column::int_range`].
    pub fn elem_int_range(&self) -> Option<(i64, i64)> {
        let inner = self.base_type().strip_prefix("array(")?.strip_suffix(')')?;
        int_range_of(unwrapped(inner))
    }

    /// The values an integer column may hold, from its declared type (`int32`, `uint8`...);
    /// `None` when any 64-bit integer fits.
    pub fn int_range(&self) -> Option<(i64, i64)> {
        int_range_of(self.base_type())
    }
}

/// A type without `nullable(...)` and `low_cardinality(...)` around it.
fn unwrapped(declared: &str) -> &str {
    let mut t = declared;
    while let Some(inner) = t
        .strip_prefix("nullable(")
        .or_else(|| t.strip_prefix("low_cardinality("))
        .and_then(|r| r.strip_suffix(')'))
    {
        t = inner;
    }
    t
}

/// The values an integer type (`int32`, `uint8`...) holds; `None` when any 64-bit integer fits.
fn int_range_of(t: &str) -> Option<(i64, i64)> {
    Some(match t {
        "int8" => (i8::MIN.into(), i8::MAX.into()),
        "int16" => (i16::MIN.into(), i16::MAX.into()),
        "int32" | "int" | "integer" => (i32::MIN.into(), i32::MAX.into()),
        "uint8" => (0, u8::MAX.into()),
        "uint16" => (0, u16::MAX.into()),
        "uint32" => (0, u32::MAX.into()),
        _ => return None,
    })
}

/// How a stream's Kafka message values are decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DataFormat {
    /// The whole message is the value of the stream's single string column.
    Raw,
    /// One JSON object per message, keys are column names.
    JsonEachRow,
    /// A Debezium change event (`op`, `before`, `after`), with or without the schema envelope.
    Debezium,
    /// A PeerDB CDC record as its Kafka connector writes it without a script
    /// (`{"kind":"insert"|"update"|"delete","old":{..},"new":{..},"checkpoint":..}`).
    PeerDb,
    /// A materialized view's change log as its worker writes it to Kafka for views over the
    /// view: one change per message, stamped with the change log's epoch
    /// (`{"epoch":E,"seq":S,"op":"u","row":[..]}`, `"op":"d","key":[..]`, `"op":"t"`).
    ChangeLog,
}

/// The Kafka topic a view's change log is written to when another view reads the view.
/// Named by the catalog's identity (a coordinator started on an empty data dir issues ids
/// again: its views must not read another catalog's topics), the view's id (names are reused
/// after a DROP, ids are not) and its name (for people listing topics), with characters Kafka
/// does not allow in topic names replaced.
pub fn change_topic(catalog_identity: u64, view_id: u64, view_name: &str) -> String {
    let name: String = view_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(100)
        .collect();
    format!("meridian.changes.{catalog_identity:x}.{view_id}.{name}")
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StreamDef {
    pub name: String,
    pub columns: Vec<Column>,
    pub brokers: String,
    pub topic: String,
    pub format: DataFormat,
    /// Indexes into `columns` of the source table's primary key (empty for append-only streams).
    pub primary_key: Vec<usize>,
    /// librdkafka options for every client of this stream: `properties='k=v;...'` and the
    /// security settings (`security_protocol`, `sasl_mechanism`, `username`, `password`,
    /// `ssl_ca_cert_file`, `skip_ssl_cert_check`).
    #[serde(default)]
    pub kafka_options: Vec<(String, String)>,
}

/// librdkafka options Meridian sets itself: a stream's `properties` cannot change them.
const KAFKA_OPTIONS_OWN: &[&str] = &[
    "bootstrap.servers",
    "metadata.broker.list",
    "group.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "auto.offset.reset",
    "enable.partition.eof",
];

/// Whether a librdkafka option holds a secret (kept out of status output).
pub fn is_secret_option(key: &str) -> bool {
    key.contains("password") || key.contains("secret")
}

impl StreamDef {
    pub fn from_ast(sql: &str, stmt: &ast::CreateStream) -> Result<StreamDef, SqlError> {
        let columns = columns_of(sql, &stmt.columns)?;
        let mut kind = None;
        let mut brokers = None;
        let mut topic = None;
        let mut format = None;
        let mut primary_key = Vec::new();
        let mut kafka_options: Vec<(String, String)> = Vec::new();
        for s in &stmt.settings {
            let v = &s.value.value;
            match s.key.value.as_str() {
                "type" => {
                    if !v.eq_ignore_ascii_case("kafka") {
                        return Err(SqlError::at(sql, s.value.offset, format!("unsupported stream type '{v}'; only 'kafka' is supported")));
                    }
                    kind = Some(());
                }
                "brokers" => {
                    if v.trim().is_empty() || v.contains('<') {
                        return Err(SqlError::at(sql, s.value.offset, format!("brokers '{v}' is not a host:port list")));
                    }
                    brokers = Some(v.clone());
                }
                "topic" => {
                    if v.is_empty() {
                        return Err(SqlError::at(sql, s.value.offset, "topic must not be empty".to_string()));
                    }
                    topic = Some(v.clone());
                }
                "data_format" => {
                    format = Some(match v.to_ascii_lowercase().as_str() {
                        "jsoneachrow" => DataFormat::JsonEachRow,
                        "debezium" | "debeziumjson" => DataFormat::Debezium,
                        "peerdb" => DataFormat::PeerDb,
                        "rawblob" | "raw" => DataFormat::Raw,
                        _ => {
                            return Err(SqlError::at(
                                sql,
                                s.value.offset,
                                format!("unsupported data_format '{v}'; supported: 'JSONEachRow', 'Debezium', 'PeerDB', 'RawBLOB'"),
                            ))
                        }
                    })
                }
                "properties" => {
                    for part in v.split(';').map(str::trim).filter(|p| !p.is_empty()) {
                        let Some((k, val)) = part.split_once('=') else {
                            return Err(SqlError::at(sql, s.value.offset, format!("properties: '{part}' is not key=value")));
                        };
                        let (k, val) = (k.trim(), val.trim());
                        if k.is_empty() || !k.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'_') {
                            return Err(SqlError::at(sql, s.value.offset, format!("properties: '{k}' is not a librdkafka option name")));
                        }
                        if KAFKA_OPTIONS_OWN.contains(&k) {
                            return Err(SqlError::at(sql, s.value.offset, format!("properties: '{k}' is set by Meridian (use the brokers setting for the brokers)")));
                        }
                        kafka_options.push((k.to_string(), val.to_string()));
                    }
                }
                "security_protocol" => {
                    let p = v.to_ascii_uppercase();
                    if !["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"].contains(&p.as_str()) {
                        return Err(SqlError::at(sql, s.value.offset, format!("security_protocol '{v}': expected PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL")));
                    }
                    kafka_options.push(("security.protocol".into(), p.to_ascii_lowercase()));
                }
                "sasl_mechanism" => {
                    let m = v.to_ascii_uppercase();
                    if !["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER", "GSSAPI"].contains(&m.as_str()) {
                        return Err(SqlError::at(sql, s.value.offset, format!("sasl_mechanism '{v}': expected PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, OAUTHBEARER or GSSAPI")));
                    }
                    kafka_options.push(("sasl.mechanism".into(), m));
                }
                "username" => kafka_options.push(("sasl.username".into(), v.clone())),
                "password" => kafka_options.push(("sasl.password".into(), v.clone())),
                "ssl_ca_cert_file" => kafka_options.push(("ssl.ca.location".into(), v.clone())),
                "skip_ssl_cert_check" => {
                    let skip = match v.to_ascii_lowercase().as_str() {
                        "true" | "1" => true,
                        "false" | "0" => false,
                        _ => return Err(SqlError::at(sql, s.value.offset, format!("skip_ssl_cert_check '{v}': expected true or false"))),
                    };
                    kafka_options.push(("enable.ssl.certificate.verification".into(), (!skip).to_string()));
                }
                "primary_key" => {
                    for part in v.split(',').map(str::trim) {
                        let Some(idx) = columns.iter().position(|c| c.name == part) else {
                            return Err(SqlError::at(sql, s.value.offset, format!("primary_key column '{part}' is not a column of the stream")));
                        };
                        if let ColumnType::List(_) = columns[idx].ty {
                            return Err(SqlError::at(sql, s.value.offset, format!("primary_key column '{part}' is an array, which cannot be a key")));
                        }
                        primary_key.push(idx);
                    }
                }
                other => {
                    return Err(SqlError::at(
                        sql,
                        s.key.offset,
                        format!("unknown stream setting '{other}'; supported: type, brokers, topic, data_format, primary_key, properties, security_protocol, sasl_mechanism, username, password, ssl_ca_cert_file, skip_ssl_cert_check"),
                    ))
                }
            }
        }
        let missing = |what: &str| {
            SqlError::at(
                sql,
                stmt.name.offset,
                format!("stream '{}' needs the setting {what}", stmt.name.value),
            )
        };
        kind.ok_or_else(|| missing("type='kafka'"))?;
        let brokers = brokers.ok_or_else(|| missing("brokers='host:port'"))?;
        let topic = topic.ok_or_else(|| missing("topic='name'"))?;
        let single_string = columns.len() == 1 && columns[0].ty == ColumnType::String;
        let format = match format {
            Some(f) => f,
            None if single_string => DataFormat::Raw,
            None => DataFormat::JsonEachRow,
        };
        if format == DataFormat::Raw && !single_string {
            return Err(SqlError::at(
                sql,
                stmt.name.offset,
                "data_format 'RawBLOB' needs exactly one string column".to_string(),
            ));
        }
        if matches!(format, DataFormat::Debezium | DataFormat::PeerDb) && primary_key.is_empty() {
            let what = if format == DataFormat::Debezium {
                "Debezium"
            } else {
                "PeerDB"
            };
            return Err(SqlError::at(
                sql,
                stmt.name.offset,
                format!("a {what} stream needs primary_key='col[,col]' so that updates and deletes can be retracted"),
            ));
        }
        Ok(StreamDef {
            name: stmt.name.value.clone(),
            columns,
            brokers,
            topic,
            format,
            primary_key,
            kafka_options,
        })
    }

    /// A column by name, case-insensitively as in DuckDB (names are unique that way).
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns
            .iter()
            .position(|c| c.name == name)
            .or_else(|| {
                self.columns
                    .iter()
                    .position(|c| c.name.eq_ignore_ascii_case(name))
            })
    }
}

/// A stream's declared columns, checked: names unique (case-insensitively, as in DuckDB) and
/// not reserved, types supported.
pub(crate) fn columns_of(
    sql: &str,
    declared: &[(ast::Spanned<String>, ast::Spanned<String>)],
) -> Result<Vec<Column>, SqlError> {
    let mut columns: Vec<Column> = Vec::new();
    for (name, ty) in declared {
        // DuckDB folds identifiers' case: `Amount` and `amount` are one column there.
        if let Some(c) = columns
            .iter()
            .find(|c| c.name.eq_ignore_ascii_case(&name.value))
        {
            return Err(SqlError::at(
                sql,
                name.offset,
                if c.name == name.value {
                    format!("column '{}' is declared twice", name.value)
                } else {
                    format!(
                            "column '{}' is declared twice ('{}' differs only by case, and identifiers are case-insensitive)",
                            name.value, c.name
                        )
                },
            ));
        }
        crate::catalog::check_not_reserved(sql, name)?;
        let Some(parsed) = parse_type(&ty.value) else {
            return Err(SqlError::at(
                    sql,
                    ty.offset,
                    format!(
                        "unsupported type '{}' for column '{}'; supported: int8..int64, uint8..uint32, float32, float64, string, bool, date, datetime, datetime64(p), decimal(p, s), array(T) of integers, floats, strings or bools, nullable(T), low_cardinality(T)",
                        ty.value, name.value
                    ),
                ));
        };
        columns.push(Column {
            name: name.value.clone(),
            ty: parsed,
            declared: ty.value.clone(),
        });
    }
    Ok(columns)
}

fn parse_type(t: &str) -> Option<ColumnType> {
    if let Some(inner) = t
        .strip_prefix("nullable(")
        .or_else(|| t.strip_prefix("low_cardinality("))
        .and_then(|r| r.strip_suffix(')'))
    {
        return parse_type(inner);
    }
    Some(match t {
        "int8" | "int16" | "int32" | "int64" | "int" | "integer" | "bigint" | "uint8"
        | "uint16" | "uint32" => ColumnType::Int64,
        "float32" | "float64" | "float" | "double" => ColumnType::Float64,
        "string" | "varchar" | "text" => ColumnType::String,
        "bool" | "boolean" => ColumnType::Bool,
        "date" | "date32" => ColumnType::Date,
        "datetime" => ColumnType::Timestamp,
        // datetime64(p) and datetime64(p, 'UTC'): values are kept in UTC.
        _ if timestamp_precision(t).is_some() => ColumnType::Timestamp,
        _ if t.starts_with("array(") => {
            let inner = t.strip_prefix("array(")?.strip_suffix(')')?;
            let elem = match parse_type(inner)? {
                ColumnType::Int64 => crate::ListElem::Int64,
                ColumnType::Float64 => crate::ListElem::Float64,
                ColumnType::String => crate::ListElem::String,
                ColumnType::Bool => crate::ListElem::Bool,
                _ => return None,
            };
            ColumnType::List(elem)
        }
        _ => return decimal_type(t),
    })
}

/// Proton's `decimal(p, s)`, `decimal(p)` (scale 0), and `decimal32(s)`, `decimal64(s)`,
/// `decimal128(s)` (precision 9, 18, 38), when a view can hold it exactly.
pub(crate) fn decimal_type(t: &str) -> Option<ColumnType> {
    let args = |prefix: &str| {
        t.strip_prefix(prefix)?
            .strip_suffix(')')
            .map(|a| a.split(',').map(str::trim).collect::<Vec<_>>())
    };
    let num = |a: &str| a.parse::<u8>().ok();
    if let Some(a) = args("decimal(") {
        return match a.as_slice() {
            [p] => ColumnType::decimal(num(p)?, 0),
            [p, s] => ColumnType::decimal(num(p)?, num(s)?),
            _ => None,
        };
    }
    for (prefix, p) in [("decimal32(", 9), ("decimal64(", 18), ("decimal128(", 38)] {
        if let Some(a) = args(prefix) {
            return match a.as_slice() {
                [s] => ColumnType::decimal(p, num(s)?),
                _ => None,
            };
        }
    }
    None
}

/// The precision (digits after the second) of `datetime` (0) or `datetime64(p[, 'UTC'])`.
fn timestamp_precision(t: &str) -> Option<u32> {
    if t == "datetime" || t.starts_with("datetime(") {
        return Some(0);
    }
    let args = t.strip_prefix("datetime64(")?.strip_suffix(')')?;
    let mut parts = args.split(',').map(str::trim);
    let p: u32 = parts.next()?.parse().ok().filter(|p| *p <= 9)?;
    match parts.next() {
        None => Some(p),
        Some(z) if z.eq_ignore_ascii_case("'utc'") => Some(p),
        Some(_) => None,
    }
}

/// One output column of a view: a column of its replica table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Output {
    pub name: String,
    pub ty: ColumnType,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ViewDef {
    pub name: String,
    pub stream: String,
    pub outputs: Vec<Output>,
    /// Output positions of the view's key (the GROUP BY keys in GROUP BY order, or the
    /// stream's primary key for a view without aggregates).
    pub key_outputs: Vec<usize>,
    /// Regions the view is assigned to; `None` means every region.
    pub regions: Option<Vec<String>>,
    pub plan: Plan,
    /// The stream the view writes INTO (`CREATE MATERIALIZED VIEW v INTO s`): views reading
    /// that stream read this view's change log.
    #[serde(default)]
    pub into: Option<String>,
}

impl ViewDef {
    pub fn from_ast(
        sql: &str,
        stmt: &ast::CreateView,
        stream: &StreamDef,
        joined: Option<&StreamDef>,
    ) -> Result<ViewDef, SqlError> {
        let planned = crate::view::plan(sql, &stmt.query, stream, joined)?;
        Ok(ViewDef {
            name: stmt.name.value.clone(),
            stream: stream.name.clone(),
            outputs: planned.outputs,
            key_outputs: planned.key_outputs,
            regions: planned.regions,
            plan: planned.plan,
            // Resolved against the catalog by the caller.
            into: None,
        })
    }

    /// The stream the view joins, if it does.
    pub fn joined_stream(&self) -> Option<&str> {
        self.plan.join.as_ref().map(|j| j.stream.as_str())
    }

    /// Whether the view reads stream `name` (its own, or the one it joins).
    pub fn reads(&self, name: &str) -> bool {
        self.stream.eq_ignore_ascii_case(name)
            || self
                .joined_stream()
                .is_some_and(|j| j.eq_ignore_ascii_case(name))
    }

    /// The row the view's expressions read: its stream, or for a join the stream's columns
    /// followed by the joined stream's (`right`).
    pub fn input(&self, stream: &StreamDef, right: Option<&StreamDef>) -> StreamDef {
        match (&self.plan.join, right) {
            (Some(j), Some(r)) => crate::view::joined_input(stream, r, &j.input_names),
            _ => stream.clone(),
        }
    }

    /// The view's change log as a stream another view reads: its output columns, keyed by its
    /// key, in its change topic on the brokers of the stream it reads (`source`, with that
    /// stream's Kafka settings). `None` for a view without a key (one row, or append-only):
    /// its changes cannot be applied by key.
    pub fn change_stream(
        &self,
        catalog_identity: u64,
        view_id: u64,
        source: &StreamDef,
    ) -> Option<StreamDef> {
        if self.key_outputs.is_empty() {
            return None;
        }
        let columns = self
            .outputs
            .iter()
            .map(|o| Column {
                name: o.name.clone(),
                ty: o.ty,
                declared: format!(
                    "nullable({})",
                    match o.ty {
                        ColumnType::Timestamp => "datetime64(6)".to_string(),
                        other => other.name(),
                    }
                ),
            })
            .collect();
        Some(StreamDef {
            name: self.name.clone(),
            columns,
            brokers: source.brokers.clone(),
            topic: change_topic(catalog_identity, view_id, &self.name),
            format: DataFormat::ChangeLog,
            primary_key: self.key_outputs.clone(),
            kafka_options: source.kafka_options.clone(),
        })
    }

    pub fn assigned_to(&self, region: &str) -> bool {
        self.regions
            .as_ref()
            .is_none_or(|r| r.iter().any(|x| x == region))
    }
}

pub fn valid_region_name(r: &str) -> bool {
    !r.is_empty()
        && r.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}
