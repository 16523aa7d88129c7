//! Windows: `tumble()` and `hop()` read FROM, `window_start`/`window_end`, and the plans of
//! windows that close and of hopping windows.

use super::expr::{interval_micros, Planner};
use super::*;

/// The unnamed arguments of a window table function (`tumble`, `hop`).
fn window_args(args: &[FunctionArg]) -> Vec<&Expr> {
    args.iter()
        .filter_map(|a| match a {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Some(e),
            _ => None,
        })
        .collect()
}

/// The most windows of a `hop()` one row may be in (its size over its slide).
pub const HOP_WINDOWS_MAX: i64 = 1_000;

impl Planner<'_> {
    /// `window_start` / `window_end` of a `tumble()` view.
    pub(super) fn window_column(&self, name: &str) -> Option<String> {
        let (start, end) = self.window.as_ref()?;
        if self.stream.column_index(name).is_some() {
            return None;
        }
        match name.to_ascii_lowercase().as_str() {
            "window_start" => Some(start.clone()),
            "window_end" => Some(end.clone()),
            _ => None,
        }
    }

    /// The event-time column of window function `f`: a date or datetime column, as SQL.
    fn window_time_column(&self, f: &str, time: &Ident) -> Result<String, SqlError> {
        let col = self.column(time)?;
        let ty = self
            .stream
            .column_index(&time.value)
            .map(|i| self.stream.columns[i].ty);
        if !matches!(ty, Some(ColumnType::Timestamp | ColumnType::Date)) {
            return Err(self.err(
                time.span,
                format!(
                    "{f}() needs a date or datetime column, and '{}' is not one",
                    time.value
                ),
            ));
        }
        Ok(col)
    }

    /// `tumble(stream, time_column, interval)`: the window's start and end over each row.
    pub(super) fn tumble(&mut self, args: &[FunctionArg], span: Span) -> Result<(), SqlError> {
        let exprs = window_args(args);
        let [_, Expr::Identifier(time), size] = exprs.as_slice() else {
            return Err(self.err(span, "tumble() takes tumble(stream, time_column, INTERVAL 1 MINUTE) (or 1m); the time column is required"));
        };
        let col = self.window_time_column("tumble", time)?;
        let Expr::Interval(iv) = size else {
            return Err(self.err(
                size.span(),
                "tumble() takes its size as an interval: INTERVAL 5 MINUTE or 5m",
            ));
        };
        self.window_size_us = interval_micros(iv);
        self.window_time = Some(format!("CAST({col} AS TIMESTAMP)"));
        let size = self.walk(size, Mode::Row)?;
        // Windows are aligned on the Unix epoch, as Proton aligns them.
        let start = format!(
            "time_bucket({size}, CAST({col} AS TIMESTAMP), TIMESTAMP '1970-01-01 00:00:00')"
        );
        let end = format!("({start} + {size})");
        self.window = Some((start, end));
        Ok(())
    }

    /// `hop(stream, time_column, slide, size)`: windows of `size` starting every `slide`, so
    /// that a row is in `size / slide` of them. Over each row, `window_start` and `window_end`
    /// are those of the latest window holding it; the view's core adds the row to the earlier
    /// ones too.
    pub(super) fn hop(&mut self, args: &[FunctionArg], span: Span) -> Result<(), SqlError> {
        let exprs = window_args(args);
        let usage = "hop() takes hop(stream, time_column, slide, size), as in hop(s, ts, 1m, 5m): windows of the size, one starting every slide";
        let [_, Expr::Identifier(time), slide, size] = exprs.as_slice() else {
            return Err(self.err(span, usage));
        };
        let col = self.window_time_column("hop", time)?;
        let fixed = |p: &Self, e: &Expr, what: &str| -> Result<i64, SqlError> {
            let Expr::Interval(iv) = e else {
                return Err(p.err(
                    e.span(),
                    format!("hop() takes its {what} as an interval: INTERVAL 5 MINUTE or 5m"),
                ));
            };
            match interval_micros(iv) {
                Some(us) if us > 0 => Ok(us),
                _ => Err(p.err(
                    e.span(),
                    format!("hop() needs a fixed, positive {what} (seconds to days; months and years vary in length)"),
                )),
            }
        };
        let slide_us = fixed(self, slide, "slide")?;
        let size_us = fixed(self, size, "size")?;
        if size_us % slide_us != 0 {
            return Err(self.err(
                size.span(),
                "hop()'s size must be a whole number of slides (as 1m and 5m), so that every row is in the same number of windows",
            ));
        }
        if size_us / slide_us > HOP_WINDOWS_MAX {
            return Err(self.err(
                size.span(),
                format!("hop() windows would hold each row {} times; at most {HOP_WINDOWS_MAX} (a larger slide, or a smaller size)", size_us / slide_us),
            ));
        }
        self.window_size_us = Some(size_us);
        self.hop_slide_us = Some(slide_us);
        self.window_time = Some(format!("CAST({col} AS TIMESTAMP)"));
        let slide = self.walk(slide, Mode::Row)?;
        let size = self.walk(size, Mode::Row)?;
        let start = format!(
            "time_bucket({slide}, CAST({col} AS TIMESTAMP), TIMESTAMP '1970-01-01 00:00:00')"
        );
        let end = format!("({start} + {size})");
        self.window = Some((start, end));
        Ok(())
    }

    /// The plans of windows that close (`allowed_lateness`) and of hopping windows, from the
    /// window the view reads FROM and its GROUP BY keys. Both put the event time in one more
    /// slot after the aggregates' arguments; a hopping window's keys are shifted to each
    /// window holding the row.
    pub(super) fn window_plans(
        &mut self,
        key_spans: &[Span],
        select_span: Span,
        filter_sql: Option<&str>,
        lateness: Option<(i64, Span)>,
        retention: Option<(i64, Span)>,
    ) -> Result<(Option<Box<HopPlan>>, Option<WindowPlan>), SqlError> {
        // Windows that close: the event time is one more slot, after the aggregates'.
        // Hopping windows: the event time is one more slot too, and the window's keys are
        // shifted to each window holding the row.
        let mut hop_plan = None;
        if let (Some(slide_us), Some(size_us), Some((start, end)), Some(time)) = (
            self.hop_slide_us,
            self.window_size_us,
            self.window.clone(),
            self.window_time.clone(),
        ) {
            let mut shifted = Vec::new();
            for (i, k) in self.keys.iter().enumerate() {
                if *k == start {
                    shifted.push((i, false));
                } else if *k == end {
                    shifted.push((i, true));
                } else if k.contains(&start) {
                    return Err(self.err(
                        key_spans.get(i).copied().unwrap_or(select_span),
                        "a hop() view groups by window_start and window_end as they are, not by an expression over them (compute that when selecting)",
                    ));
                }
            }
            if !shifted.iter().any(|(_, is_end)| !is_end) {
                return Err(self.err(
                    select_span,
                    "a hop() view must GROUP BY window_start: a row is in several windows",
                ));
            }
            let in_rows = self.args.iter().any(|a| a.contains(&start))
                || filter_sql.is_some_and(|f| f.contains(&start));
            if in_rows {
                return Err(self.err(
                    select_span,
                    "in a hop() view, window_start and window_end can be grouped by and selected, not used in WHERE or inside an aggregate (a row is in several windows)",
                ));
            }
            self.args.push(time);
            hop_plan = Some(Box::new(HopPlan {
                slide_us,
                size_us,
                time_slot: self.keys.len() + self.args.len() - 1,
                shifted,
            }));
        }
        let mut window_plan = None;
        if let Some((lateness_us, span)) = lateness {
            let start = self.window.as_ref().map(|(start, _)| start.clone());
            let start_key = start.and_then(|st| self.keys.iter().position(|k| *k == st));
            let (Some(start_key), Some(size_us), Some(time)) =
                (start_key, self.window_size_us, self.window_time.clone())
            else {
                return Err(self.err(span, "allowed_lateness needs FROM tumble(stream, time, size) or hop(stream, time, slide, size) with a fixed size, grouped by window_start"));
            };
            let time_slot = match &hop_plan {
                Some(h) => h.time_slot,
                None => {
                    self.args.push(time);
                    self.keys.len() + self.args.len() - 1
                }
            };
            window_plan = Some(WindowPlan {
                start_key,
                time_slot,
                size_us,
                lateness_us,
                retention_us: retention.map(|(us, _)| us),
            });
        }
        if let (Some((_, span)), None) = (retention, &window_plan) {
            return Err(self.err(span, "window_retention is for windows that close: FROM tumble() or hop() grouped by window_start, with allowed_lateness"));
        }
        Ok((hop_plan, window_plan))
    }
}
