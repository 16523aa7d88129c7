//! The catalog: streams and views in creation order, and the rules for changing it.

use crate::ast::{ObjectKind, Statement};
use crate::defs::{StreamDef, ViewDef};
use crate::error::SqlError;
use crate::kv::KvStreamDef;
use crate::parser::parse;

/// Few and held by the catalog only: not worth boxing the larger variant.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    Stream(StreamDef),
    View(ViewDef),
    /// A stream that a view writes INTO (`CREATE STREAM ... PRIMARY KEY`).
    KvStream(KvStreamDef),
}

impl Object {
    pub fn name(&self) -> &str {
        match self {
            Object::Stream(s) => &s.name,
            Object::View(v) => &v.name,
            Object::KvStream(k) => &k.name,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Object::Stream(_) | Object::KvStream(_) => "stream",
            Object::View(_) => "view",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// Creation order; never reused.
    pub id: u64,
    /// The statement as the user sent it.
    pub sql: String,
    pub object: Object,
}

/// Stack of the thread a statement is planned on.
const PLAN_STACK_BYTES: usize = 32 << 20;

/// What a statement asks of the catalog, once validated against it.
#[derive(Clone, Debug, PartialEq)]
#[allow(clippy::large_enum_variant)] // one per statement; boxing buys nothing
pub enum Change {
    Create(Object),
    /// `CREATE OR REPLACE MATERIALIZED VIEW` of an existing view: a new incarnation (a new id)
    /// takes the place of entry `replaces`. Regions keep serving the old one until the new one
    /// has caught up, then switch to it in one step.
    Replace {
        replaces: u64,
        object: Object,
    },
    Drop {
        name: String,
    },
    Show(ObjectKind),
    /// `EXPLAIN MATERIALIZED VIEW`: the view's plan, one operator a line.
    Explain(String),
    /// `IF NOT EXISTS` / `IF EXISTS` made the statement a no-op; the text says why.
    Nothing(String),
}

#[derive(Clone, Debug, Default)]
pub struct Catalog {
    entries: Vec<Entry>,
    /// Ids are never reused, even after the newest entry is dropped: an id names one
    /// incarnation of an object everywhere (view state, replica tables).
    next_id: u64,
    /// The identity of the coordinator's catalog (drawn when its store was created; 0 when
    /// unknown): part of the names of views' change topics.
    identity: u64,
}

impl Catalog {
    /// Rebuilds a catalog from stored `(id, sql)` pairs, replaying them in id order.
    pub fn load(mut stored: Vec<(u64, String)>) -> Result<Catalog, SqlError> {
        stored.sort_by_key(|(id, _)| *id);
        let mut catalog = Catalog::default();
        for (id, sql) in stored {
            match catalog.plan(&sql)? {
                Change::Create(object) => catalog.entries.push(Entry { id, sql, object }),
                // Stored replacements delete what they replace in the same write, so this is
                // only met in a store written otherwise; replaying it is still right.
                change @ Change::Replace { .. } => catalog.apply(id, &sql, change),
                other => {
                    return Err(SqlError {
                        message: format!("stored catalog entry {id} is not a CREATE: {other:?}"),
                        pos: crate::error::Pos { line: 1, column: 1 },
                    })
                }
            }
        }
        Ok(catalog)
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// An object by name. Names are case-insensitive, as DuckDB's identifiers are (a view's
    /// replica table is named after it), so at most one object matches.
    pub fn get(&self, name: &str) -> Option<&Entry> {
        self.entries
            .iter()
            .find(|e| e.object.name().eq_ignore_ascii_case(name))
    }

    pub fn stream(&self, name: &str) -> Option<&StreamDef> {
        self.entries.iter().find_map(|e| match &e.object {
            Object::Stream(s) if s.name.eq_ignore_ascii_case(name) => Some(s),
            _ => None,
        })
    }

    /// What a view reading `name` reads: the stream, or for a view, its change log as a
    /// stream (a view over a view). `None` when there is no such object, or it is a view
    /// without a key.
    pub fn source(&self, name: &str) -> Option<StreamDef> {
        let entry = self.get(name)?;
        match &entry.object {
            Object::Stream(s) => Some(s.clone()),
            Object::View(v) => {
                let upstream = self.source(&v.stream)?;
                v.change_stream(self.identity, entry.id, &upstream)
            }
            Object::KvStream(k) => Some(k.as_source(self.source(&self.writer_of(&k.name)?.name)?)),
        }
    }

    /// The view that writes INTO stream `name`, if one does.
    pub fn writer_of(&self, name: &str) -> Option<&ViewDef> {
        self.views().find(|v| {
            v.into
                .as_deref()
                .is_some_and(|s| s.eq_ignore_ascii_case(name))
        })
    }

    /// A view that reads view `name`'s change log: directly, or through the stream it writes
    /// INTO.
    pub fn reader_of(&self, name: &str) -> Option<&ViewDef> {
        let into = self
            .views()
            .find(|v| v.name.eq_ignore_ascii_case(name))
            .and_then(|v| v.into.clone());
        self.views()
            .find(|r| r.reads(name) || into.as_deref().is_some_and(|s| r.reads(s)))
    }

    /// Sets the catalog's identity (see [`crate::change_topic`]).
    pub fn set_identity(&mut self, identity: u64) {
        self.identity = identity;
    }

    /// Whether another view reads view `name`, directly or through the stream it writes INTO
    /// (its change log is then written to Kafka).
    pub fn is_read_by_a_view(&self, name: &str) -> bool {
        self.reader_of(name).is_some()
    }

    pub fn views(&self) -> impl Iterator<Item = &ViewDef> {
        self.entries.iter().filter_map(|e| match &e.object {
            Object::View(v) => Some(v),
            _ => None,
        })
    }

    pub fn next_id(&self) -> u64 {
        self.entries
            .last()
            .map_or(1, |e| e.id + 1)
            .max(self.next_id)
    }

    /// Raises the next id to at least `floor` (the persisted counter, on load).
    pub fn reserve_ids_below(&mut self, floor: u64) {
        self.next_id = self.next_id.max(floor);
    }

    /// A CREATE of a name that is taken: a no-op with IF NOT EXISTS, else an error.
    fn already_exists(
        &self,
        sql: &str,
        name: &crate::ast::Spanned<String>,
        if_not_exists: bool,
    ) -> Result<Option<Change>, SqlError> {
        let Some(existing) = self.get(&name.value) else {
            return Ok(None);
        };
        let message = if existing.object.name() == name.value {
            format!("{} '{}' already exists", existing.object.kind(), name.value)
        } else {
            format!(
                "{} '{}' already exists as '{}' (names are case-insensitive)",
                existing.object.kind(),
                name.value,
                existing.object.name()
            )
        };
        if if_not_exists {
            Ok(Some(Change::Nothing(message)))
        } else {
            Err(SqlError::at(sql, name.offset, message))
        }
    }

    /// Parses and validates a statement against the catalog without changing it.
    pub fn plan(&self, sql: &str) -> Result<Change, SqlError> {
        // The parser, the planner and the parsed tree's drop recurse on the statement's
        // nesting (bounded, but a debug build's frames are large): they get a stack of their
        // own rather than whatever the caller's thread has left.
        std::thread::scope(|scope| {
            std::thread::Builder::new()
                .name("sql-plan".into())
                .stack_size(PLAN_STACK_BYTES)
                .spawn_scoped(scope, || self.plan_here(sql))
                .map_err(|e| SqlError {
                    message: format!("cannot start the planner: {e}"),
                    pos: crate::error::Pos { line: 1, column: 1 },
                })?
                .join()
                .unwrap_or_else(|_| {
                    Err(SqlError {
                        message: "the planner failed on this statement".to_string(),
                        pos: crate::error::Pos { line: 1, column: 1 },
                    })
                })
        })
    }

    /// The stream a view joins, checked: a stream with a primary key (the view keeps one
    /// row of it per key), other than the view's own, on the same brokers with the same
    /// settings (the view reads both with one consumer), and another topic.
    fn joined_stream(
        &self,
        sql: &str,
        left: &StreamDef,
        j: &crate::ast::Spanned<String>,
    ) -> Result<&StreamDef, SqlError> {
        let here = |msg: String| SqlError::at(sql, j.offset, msg);
        let Some(right) = self.stream(&j.value) else {
            let what = match self.get(&j.value).map(|e| &e.object) {
                Some(Object::KvStream(_)) => {
                    "is written by a view (INTO): a join over it is not supported yet"
                }
                Some(_) => "is a view, not a stream (a join over a view is not supported yet)",
                None => "does not exist",
            };
            return Err(here(format!("stream '{}' {what}", j.value)));
        };
        if right.name.eq_ignore_ascii_case(&left.name) {
            return Err(here(format!(
                "a stream joined with itself ('{}') is not supported",
                right.name
            )));
        }
        if left.primary_key.is_empty() {
            return Err(here(format!("stream '{}' has no primary key: a join keeps each of its rows by key, to join it again when the other side changes (set primary_key='...')", left.name)));
        }
        if right.primary_key.is_empty() {
            return Err(here(format!("stream '{}' has no primary key: a view joins a table-like stream, one row per key (set primary_key='...')", right.name)));
        }
        if right.brokers != left.brokers || right.kafka_options != left.kafka_options {
            return Err(here(format!("streams '{}' and '{}' have different brokers or Kafka settings; a view reads both with one consumer", left.name, right.name)));
        }
        if right.topic == left.topic {
            return Err(here(format!(
                "streams '{}' and '{}' read the same topic '{}'",
                left.name, right.name, right.topic
            )));
        }
        Ok(right)
    }

    /// The id of the view `CREATE OR REPLACE` would replace, if it may be: a view
    /// (not a stream) that no other view reads (a reader follows one incarnation's change
    /// log).
    fn replaceable(
        &self,
        sql: &str,
        stmt: &crate::ast::CreateView,
        old: &Entry,
    ) -> Result<u64, SqlError> {
        let here = |msg: String| SqlError::at(sql, stmt.name.offset, msg);
        let Object::View(v) = &old.object else {
            return Err(here(format!(
                "'{}' is a stream; CREATE OR REPLACE replaces a materialized view",
                old.object.name()
            )));
        };
        if let Some(reader) = self.reader_of(&v.name) {
            return Err(here(format!(
                "view '{}' is read by view '{}', which follows this incarnation's change log; drop '{}' first",
                v.name, reader.name, reader.name
            )));
        }
        // Regions find the table a new incarnation replaces by the name as it is spelt (the
        // statement is stored and replayed as written).
        if v.name != stmt.name.value {
            return Err(here(format!(
                "the view is named '{}'; CREATE OR REPLACE must spell its name the same way",
                v.name
            )));
        }
        Ok(old.id)
    }

    /// The stream `view` (named `name`) writes INTO, checked: a stream that views write INTO,
    /// written by no other view, not read by this one, with the view's columns and key.
    fn check_into(
        &self,
        sql: &str,
        name: &str,
        into: &crate::ast::Spanned<String>,
        view: &ViewDef,
    ) -> Result<String, SqlError> {
        let here = |msg: String| SqlError::at(sql, into.offset, msg);
        let Some(Object::KvStream(k)) = self.get(&into.value).map(|e| &e.object) else {
            let what = match self.get(&into.value) {
                Some(e) => format!("is a {}", e.object.kind()),
                None => "does not exist".to_string(),
            };
            return Err(here(format!("'{}' {what}: a view writes INTO a stream created with CREATE STREAM {} (...) PRIMARY KEY ... SETTINGS mode='versioned_kv'", into.value, into.value)));
        };
        if let Some(w) = self
            .writer_of(&k.name)
            .filter(|w| !w.name.eq_ignore_ascii_case(name))
        {
            return Err(here(format!(
                "stream '{}' is written by view '{}'; a stream takes INTO from one view",
                k.name, w.name
            )));
        }
        if view.reads(&k.name) {
            return Err(here(format!(
                "a view cannot write INTO the stream it reads ('{}')",
                k.name
            )));
        }
        k.check_writer(sql, into.offset, view)?;
        Ok(k.name.clone())
    }

    fn plan_here(&self, sql: &str) -> Result<Change, SqlError> {
        match parse(sql)? {
            Statement::CreateStream(stmt) => {
                if let Some(done) = self.already_exists(sql, &stmt.name, stmt.if_not_exists)? {
                    return Ok(done);
                }
                check_not_reserved(sql, &stmt.name)?;
                if !stmt.external {
                    return Ok(Change::Create(Object::KvStream(KvStreamDef::from_ast(
                        sql, &stmt,
                    )?)));
                }
                Ok(Change::Create(Object::Stream(StreamDef::from_ast(
                    sql, &stmt,
                )?)))
            }
            Statement::CreateView(stmt) => {
                let replaces = match (stmt.or_replace, self.get(&stmt.name.value)) {
                    (Some(_), Some(old)) => Some(self.replaceable(sql, &stmt, old)?),
                    _ => None,
                };
                if replaces.is_none() {
                    if let Some(done) = self.already_exists(sql, &stmt.name, stmt.if_not_exists)? {
                        return Ok(done);
                    }
                }
                check_not_reserved(sql, &stmt.name)?;
                let from = &stmt.query.from;
                if replaces.is_some() && from.value.eq_ignore_ascii_case(&stmt.name.value) {
                    return Err(SqlError::at(
                        sql,
                        from.offset,
                        format!(
                            "a view cannot read itself ('{}' is the view being replaced)",
                            from.value
                        ),
                    ));
                }
                if let Some(w) = self
                    .writer_of(&from.value)
                    .filter(|w| replaces.is_some() && w.name.eq_ignore_ascii_case(&stmt.name.value))
                {
                    return Err(SqlError::at(
                        sql,
                        from.offset,
                        format!(
                            "a view cannot read the stream it writes ('{}' is written INTO by '{}', the view being replaced)",
                            from.value, w.name
                        ),
                    ));
                }
                let stream = match self.get(&from.value).map(|e| &e.object) {
                    Some(Object::Stream(s)) => s.clone(),
                    Some(Object::View(v)) => {
                        if stmt.query.join.is_some() {
                            return Err(SqlError::at(sql, from.offset, format!("'{}' is a view: a join reads streams only (a join over a view is not supported yet)", v.name)));
                        }
                        self.source(&v.name).ok_or_else(|| {
                            SqlError::at(sql, from.offset, format!("view '{}' has no key (no GROUP BY, or its stream has no primary key), so its changes cannot be applied by key: a view over it is not supported", v.name))
                        })?
                    }
                    Some(Object::KvStream(k)) => {
                        if stmt.query.join.is_some() {
                            return Err(SqlError::at(sql, from.offset, format!("stream '{}' is written by a view (INTO): a join over it is not supported yet", k.name)));
                        }
                        self.source(&k.name).ok_or_else(|| {
                            SqlError::at(sql, from.offset, format!("stream '{}' has no view writing INTO it yet; create that view first", k.name))
                        })?
                    }
                    None => {
                        return Err(SqlError::at(
                            sql,
                            from.offset,
                            format!("stream '{}' does not exist", from.value),
                        ))
                    }
                };
                let joined = match &stmt.query.join {
                    Some(j) => Some(self.joined_stream(sql, &stream, j)?),
                    None => None,
                };
                let mut view = ViewDef::from_ast(sql, &stmt, &stream, joined)?;
                if let Some(into) = &stmt.into {
                    view.into = Some(self.check_into(sql, &stmt.name.value, into, &view)?);
                }
                let view = Object::View(view);
                Ok(match replaces {
                    Some(replaces) => Change::Replace {
                        replaces,
                        object: view,
                    },
                    None => Change::Create(view),
                })
            }
            Statement::Drop {
                kind,
                name,
                if_exists,
            } => {
                let found = self.get(&name.value).filter(|e| match kind {
                    ObjectKind::Stream => {
                        matches!(e.object, Object::Stream(_) | Object::KvStream(_))
                    }
                    ObjectKind::View => matches!(e.object, Object::View(_)),
                });
                let what = match kind {
                    ObjectKind::Stream => "stream",
                    ObjectKind::View => "view",
                };
                if found.is_none() {
                    if if_exists {
                        return Ok(Change::Nothing(format!(
                            "{what} '{}' does not exist",
                            name.value
                        )));
                    }
                    return Err(SqlError::at(
                        sql,
                        name.offset,
                        format!("{what} '{}' does not exist", name.value),
                    ));
                }
                let name = match found {
                    Some(e) => crate::ast::Spanned {
                        value: e.object.name().to_string(),
                        offset: name.offset,
                    },
                    None => name,
                };
                let reader = match kind {
                    ObjectKind::View => self.reader_of(&name.value),
                    ObjectKind::Stream => self.views().find(|v| v.reads(&name.value)),
                };
                if let Some(v) = reader {
                    return Err(SqlError::at(
                        sql,
                        name.offset,
                        format!(
                            "{what} '{}' is read by view '{}'; drop the view first",
                            name.value, v.name
                        ),
                    ));
                }
                if let Some(w) = self
                    .writer_of(&name.value)
                    .filter(|_| kind == ObjectKind::Stream)
                {
                    return Err(SqlError::at(
                        sql,
                        name.offset,
                        format!(
                            "stream '{}' is written by view '{}' (INTO); drop the view first",
                            name.value, w.name
                        ),
                    ));
                }
                Ok(Change::Drop { name: name.value })
            }
            Statement::Show(kind) => Ok(Change::Show(kind)),
            Statement::ExplainView(name) => {
                let Some(view) = self
                    .views()
                    .find(|v| v.name.eq_ignore_ascii_case(&name.value))
                else {
                    return Err(SqlError::at(
                        sql,
                        name.offset,
                        format!("view '{}' does not exist", name.value),
                    ));
                };
                let Some(stream) = self.source(&view.stream) else {
                    return Err(SqlError::at(
                        sql,
                        name.offset,
                        format!(
                            "stream '{}' of view '{}' does not exist",
                            view.stream, view.name
                        ),
                    ));
                };
                let right = view.joined_stream().and_then(|j| self.stream(j));
                let input = view.input(&stream, right);
                let mut text = view.plan.explain(&input, &view.outputs);
                if let Some(w) = self.writer_of(&view.stream) {
                    // A stream written INTO is read as its writer's change log.
                    text = text.replacen(
                        &format!("scan: view {} (its change log", stream.name),
                        &format!(
                            "scan: stream {} (the change log of view {} writing INTO it",
                            stream.name, w.name
                        ),
                        1,
                    );
                }
                let mut lines = vec![text];
                if let Some(into) = &view.into {
                    lines.push(format!(
                        "into: stream {into} (its change log is read by the views over it)"
                    ));
                }
                Ok(Change::Explain(lines.join("\n")))
            }
        }
    }

    /// Applies a planned change. `Create` and `Replace` take the id the caller persisted the
    /// new entry under.
    /// `Drop` names the object as the catalog spells it.
    pub fn apply(&mut self, id: u64, sql: &str, change: Change) {
        match change {
            Change::Create(object) => {
                self.next_id = self.next_id.max(id + 1);
                self.entries.push(Entry {
                    id,
                    sql: sql.to_string(),
                    object,
                });
            }
            Change::Replace { replaces, object } => {
                self.entries.retain(|e| e.id != replaces);
                self.apply(id, sql, Change::Create(object));
            }
            Change::Drop { name } => self.entries.retain(|e| e.object.name() != name),
            Change::Show(_) | Change::Explain(_) | Change::Nothing(_) => {}
        }
    }
}

/// Names starting with `_meridian` (in any case) belong to Meridian's own tables and columns.
pub fn is_reserved(name: &str) -> bool {
    name.len() >= 9 && name[..9].eq_ignore_ascii_case("_meridian")
}

pub(crate) fn check_not_reserved(
    sql: &str,
    name: &crate::ast::Spanned<String>,
) -> Result<(), SqlError> {
    if is_reserved(&name.value) {
        return Err(SqlError::at(
            sql,
            name.offset,
            format!(
                "'{}': names starting with '_meridian' are reserved",
                name.value
            ),
        ));
    }
    Ok(())
}
