//! The plan of a view: its stages, and how EXPLAIN prints them.

use super::*;

/// What a view keeps per key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PlanKind {
    /// GROUP BY and aggregates: one row per group.
    Aggregate,
    /// No aggregates: one row per source row, keyed by the stream's primary key.
    Project,
}

/// One value computed per source row.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Slot {
    /// DuckDB SQL over the stream's columns.
    pub sql: String,
    pub ty: ColumnType,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AggFunc {
    /// `count()`: rows in the group.
    Count,
    /// `count(x)`, `count_if(c)`: rows where the argument is not NULL.
    CountNonNull,
    /// `count(DISTINCT x)`, `count_distinct`, `uniq`, `uniq_exact`: distinct non-NULL values.
    CountDistinct,
    Sum,
    Avg,
    Min,
    Max,
    /// `latest(x)` / `any_last(x)`: the non-null value of the row changed last (by arrival).
    Latest,
    /// `earliest(x)` / `any(x)`: the non-null value of the row changed first, of those still in
    /// the group.
    Earliest,
    /// `arg_min(x, by)` / `min_by`: `x` of the row with the least `by` (rows where either is
    /// NULL left out; of rows tied on `by`, the least `x`).
    ArgMin,
    /// `arg_max(x, by)` / `max_by`: `x` of the row with the greatest `by` (of ties, the
    /// greatest `x`).
    ArgMax,
    /// `top_k(x, k)`: an array of the `k` most frequent non-null values, most frequent first
    /// (exact; of values as frequent, the least first).
    TopK {
        k: u16,
    },
    /// `max_k(x, k)`: an array of the `k` greatest non-null values, greatest first, each as
    /// often as it occurs.
    MaxK {
        k: u16,
    },
    /// `min_k(x, k)`: the `k` least, least first.
    MinK {
        k: u16,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Aggregate {
    pub func: AggFunc,
    /// Index into [`Plan::project`] of the argument; `None` for `count()`.
    pub arg: Option<usize>,
    /// For `arg_min` / `arg_max`: index into [`Plan::project`] of what orders the rows.
    #[serde(default)]
    pub by: Option<usize>,
    /// The result type.
    pub ty: ColumnType,
    /// As written, for EXPLAIN.
    pub text: String,
}

/// How an aggregate view's output columns come from a group's keys and aggregates.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Finish {
    /// Each output column is a key (`Key(i)`) or an aggregate (`Agg(j)`), and there is no
    /// HAVING.
    Direct(Vec<Ref>),
    /// DuckDB SQL over a table of `k0..` (keys) and `a0..` (aggregates): one expression per
    /// output column, and the HAVING condition.
    Eval {
        exprs: Vec<String>,
        having: Option<String>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ref {
    Key(usize),
    Agg(usize),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub kind: PlanKind,
    /// DuckDB SQL over the stream's columns; rows where it is not true are not in the view.
    pub filter: Option<String>,
    /// Aggregate: the GROUP BY keys (`n_keys` of them), then the aggregates' arguments.
    /// Project: the output columns.
    pub project: Vec<Slot>,
    pub n_keys: usize,
    pub aggregates: Vec<Aggregate>,
    pub finish: Finish,
    /// Windows that close (`tumble()` grouped by `window_start`, with `allowed_lateness`).
    #[serde(default)]
    pub window: Option<WindowPlan>,
    /// Hopping windows (`hop()`): each row is in `size / slide` windows.
    #[serde(default)]
    pub hop: Option<Box<HopPlan>>,
    /// The stream joined to the view's stream: the plan's expressions are over the joined
    /// row (the stream's columns, then the joined stream's).
    #[serde(default)]
    pub join: Option<Box<JoinPlan>>,
    /// `EMIT AFTER WATERMARK`: a window's row is emitted once, final, when it closes; open
    /// windows are not in the view.
    #[serde(default)]
    pub emit_final: bool,
    /// `EMIT PERIODIC`: a batch of changes stays open this long (microseconds) from its first
    /// source message, unless it fills, so that a view changes at most once a period.
    #[serde(default)]
    pub emit_period_us: Option<u64>,
}

/// `INNER` or `LEFT` join.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JoinKind {
    Inner,
    Left,
}

/// `FROM s JOIN t ON s.a = t.pk`: each row of the view's stream `s` is joined with the one
/// row of the table-like stream `t` whose whole primary key equals its join key, and is
/// joined again whenever that row changes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JoinPlan {
    /// The joined stream.
    pub stream: String,
    pub kind: JoinKind,
    /// For each column of the joined stream's primary key, in its order, the column of the
    /// view's stream it must equal.
    pub left_key: Vec<usize>,
    /// The evaluator's names of the joined row's columns: the stream's, then the joined
    /// stream's (a name both have is qualified for the joined one, as `c.id`).
    pub input_names: Vec<String>,
}

/// `hop(stream, time, slide, size)`: the project slots hold the latest window holding each
/// row; the core adds the row to each earlier window that still holds it, shifting the keys
/// that are `window_start` or `window_end`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HopPlan {
    pub slide_us: i64,
    pub size_us: i64,
    /// The project slot holding each row's event time.
    pub time_slot: usize,
    /// The keys (GROUP BY positions) that are `window_start` (`false`) or `window_end`
    /// (`true`).
    pub shifted: Vec<(usize, bool)>,
}

impl HopPlan {
    /// The windows holding a row whose latest window starts at `start` and whose event time
    /// is `time`, latest first, as `(start, end)`.
    pub fn windows(&self, start: i64, time: i64) -> impl Iterator<Item = (i64, i64)> + '_ {
        (0..self.size_us / self.slide_us)
            .map(move |k| start.saturating_sub(k.saturating_mul(self.slide_us)))
            .map(move |s| (s, s.saturating_add(self.size_us)))
            .take_while(move |(_, end)| *end > time)
    }
}

/// A tumbling window's rules: the watermark is the latest event time seen minus the allowed
/// lateness; a window whose end is at or below it is closed and final.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WindowPlan {
    /// The key (GROUP BY position) that is `window_start`.
    pub start_key: usize,
    /// The project slot holding each row's event time.
    pub time_slot: usize,
    pub size_us: i64,
    pub lateness_us: i64,
    /// `window_retention`: a closed window leaves the view (and the central state) once the
    /// watermark is this far past its end.
    #[serde(default)]
    pub retention_us: Option<i64>,
}

impl Plan {
    /// The input columns of the per-group stage: `k0..` and `a0..` with their DuckDB types.
    pub fn group_columns(&self) -> Vec<(String, String)> {
        let keys = self.project[..self.n_keys]
            .iter()
            .enumerate()
            .map(|(i, s)| (format!("k{i}"), s.ty.duckdb_type().to_string()));
        let aggs = self
            .aggregates
            .iter()
            .enumerate()
            .map(|(j, a)| (format!("a{j}"), a.ty.duckdb_type().to_string()));
        keys.chain(aggs).collect()
    }

    /// The plan as `EXPLAIN MATERIALIZED VIEW` prints it: one operator a line, source first.
    pub fn explain(&self, stream: &StreamDef, outputs: &[Output]) -> String {
        let what = if stream.format == crate::DataFormat::ChangeLog {
            format!(
                "view {} (its change log, topic {}",
                stream.name, stream.topic
            )
        } else {
            format!("stream {} ({:?}", stream.name, stream.format)
        };
        let mut lines = vec![format!(
            "scan: {what}{})",
            if stream.primary_key.is_empty() {
                ", append-only".to_string()
            } else {
                let pk: Vec<&str> = stream
                    .primary_key
                    .iter()
                    .map(|&i| stream.columns[i].name.as_str())
                    .collect();
                format!(", primary key {}", pk.join(", "))
            }
        )];
        if let Some(j) = &self.join {
            let on: Vec<String> = j
                .left_key
                .iter()
                .map(|&c| {
                    stream
                        .columns
                        .get(c)
                        .map_or("?", |c| c.name.as_str())
                        .to_string()
                })
                .collect();
            lines.push(format!(
                "join: {} stream {} on its primary key = ({}), kept in both directions (a change to either side re-joins the rows it touches)",
                match j.kind {
                    JoinKind::Inner => "inner",
                    JoinKind::Left => "left",
                },
                j.stream,
                on.join(", ")
            ));
        }
        if let Some(f) = &self.filter {
            lines.push(format!("filter: {f}"));
        }
        let slots: Vec<String> = self
            .project
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let name = match self.kind {
                    PlanKind::Aggregate if i < self.n_keys => format!("k{i}"),
                    PlanKind::Aggregate => format!("p{}", i - self.n_keys),
                    PlanKind::Project => outputs[i].name.clone(),
                };
                format!("{name} = {} :: {}", s.sql, s.ty)
            })
            .collect();
        lines.push(format!("project: {}", slots.join(", ")));
        if self.kind == PlanKind::Aggregate {
            let aggs: Vec<String> = self
                .aggregates
                .iter()
                .enumerate()
                .map(|(j, a)| {
                    let slot = |p: usize| match p.checked_sub(self.n_keys) {
                        Some(p) => format!("p{p}"),
                        None => format!("k{p}"),
                    };
                    let arg: Vec<String> = a.arg.iter().chain(&a.by).map(|&p| slot(p)).collect();
                    format!("a{j} = {:?}({}) :: {}", a.func, arg.join(", "), a.ty).to_lowercase()
                })
                .collect();
            let keys: Vec<String> = (0..self.n_keys).map(|i| format!("k{i}")).collect();
            lines.push(format!(
                "aggregate: by ({}) compute {}",
                keys.join(", "),
                if aggs.is_empty() {
                    "nothing".to_string()
                } else {
                    aggs.join(", ")
                }
            ));
            if let Some(h) = &self.hop {
                lines.push(format!(
                    "hop: each row is in the {} windows of {} s starting every {} s that hold its event time (p{}); k{} shifted to each",
                    h.size_us / h.slide_us,
                    h.size_us as f64 / 1e6,
                    h.slide_us as f64 / 1e6,
                    h.time_slot - self.n_keys,
                    h.shifted.iter().map(|(k, _)| k.to_string()).collect::<Vec<_>>().join(", k"),
                ));
            }
            if let Some(w) = &self.window {
                lines.push(format!(
                    "window: k{} closes {} s after its end by event time (p{}); late changes to a closed window are counted and not applied{}",
                    w.start_key,
                    w.lateness_us as f64 / 1e6,
                    w.time_slot - self.n_keys,
                    w.retention_us.map_or(String::new(), |r| format!("; a closed window leaves the view {} s after its end passes the watermark", r as f64 / 1e6))
                ));
            }
            if self.emit_final {
                lines.push("emit: after watermark: a window's row enters the view once, final, when the window closes".to_string());
            }
            match &self.finish {
                Finish::Direct(_) => {}
                Finish::Eval { exprs, having } => {
                    if let Some(h) = having {
                        lines.push(format!("having: {h}"));
                    }
                    let outs: Vec<String> = exprs
                        .iter()
                        .zip(outputs)
                        .map(|(e, o)| format!("{} = {e}", o.name))
                        .collect();
                    lines.push(format!("compute: {}", outs.join(", ")));
                }
            }
        }
        let outs: Vec<String> = outputs
            .iter()
            .map(|o| format!("{} {}", o.name, o.ty))
            .collect();
        lines.push(format!("output: {}", outs.join(", ")));
        if let Some(us) = self.emit_period_us {
            lines.push(format!("emit: periodic: changes leave the view at most once every {} s (sooner when a batch fills)", us as f64 / 1e6));
        }
        lines.join("\n")
    }
}
