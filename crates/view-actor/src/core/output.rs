//! The per-group stage: a group's keys and aggregates made into its output row (output
//! expressions and HAVING), and every row of the view for a full resynchronisation.

use super::*;

/// The per-group stage of an aggregate view: output columns from keys and aggregates.
pub struct Finisher {
    eval: Option<Evaluator>,
}

impl Finisher {
    pub fn new(def: &ViewDef) -> Result<Finisher, String> {
        let eval = match &def.plan.finish {
            Finish::Eval { exprs, having } if def.plan.kind == PlanKind::Aggregate => Some(
                Evaluator::new(&def.plan.group_columns(), exprs, having.as_deref())
                    .map_err(|e| format!("view '{}': {e}", def.name))?
                    .with_output_types(&def.outputs.iter().map(|o| o.ty).collect::<Vec<_>>()),
            ),
            _ => None,
        };
        Ok(Finisher { eval })
    }

    /// The output rows of groups given as keys and aggregate values: `Ok(None)` when HAVING
    /// is false, `Err` when the group's row cannot be computed (the reason, for the
    /// dead-letter record). An `Err` of the whole call is a fault of the evaluator.
    #[allow(clippy::type_complexity)]
    pub(super) fn rows(
        &mut self,
        def: &ViewDef,
        groups: &[Result<Row, String>],
    ) -> Result<Vec<Result<Option<Row>, String>>, String> {
        match (&def.plan.finish, &mut self.eval) {
            (Finish::Direct(refs), _) => Ok(groups
                .iter()
                .map(|g| {
                    let g = g.as_ref().map_err(Clone::clone)?;
                    Ok(Some(
                        refs.iter()
                            .map(|r| match r {
                                Ref::Key(i) => g[*i].clone(),
                                Ref::Agg(j) => g[def.plan.n_keys + j].clone(),
                            })
                            .collect(),
                    ))
                })
                .collect()),
            (Finish::Eval { .. }, Some(eval)) => {
                let ok: Vec<&[Value]> = groups
                    .iter()
                    .filter_map(|g| g.as_ref().ok().map(Vec::as_slice))
                    .collect();
                let mut evaluated = eval.eval(&ok)?.into_iter();
                Ok(groups
                    .iter()
                    .map(|g| match g {
                        Err(e) => Err(e.clone()),
                        Ok(_) => evaluated.next().unwrap_or(Ok(None)).map_err(|e| {
                            format!("computing the view's output columns failed: {e}")
                        }),
                    })
                    .collect())
            }
            (Finish::Eval { .. }, None) => Err("the view's output stage is missing".to_string()),
        }
    }
}

/// Every row of the view, from its groups, in key order.
pub fn all_rows(
    def: &ViewDef,
    groups: &HashMap<Key, GroupState>,
    finish: &mut Finisher,
) -> Result<Vec<RowChange>, String> {
    let mut keys: Vec<KeyOrd> = groups.keys().cloned().map(KeyOrd).collect();
    keys.sort();
    let mut out = Vec::with_capacity(keys.len());
    for chunk in keys.chunks(FINISH_CHUNK) {
        let mut present = Vec::new();
        let mut agg_rows = Vec::new();
        for KeyOrd(key) in chunk {
            let Some(g) = groups.get(key) else { continue };
            match def.plan.kind {
                PlanKind::Project => {
                    if let Some(row) = &g.row {
                        out.push(RowChange {
                            key: key.clone(),
                            row: Some(row.clone()),
                        });
                    }
                }
                PlanKind::Aggregate if g.closed => {
                    if let Some(row) = &g.row {
                        out.push(RowChange {
                            key: key.clone(),
                            row: Some(row.clone()),
                        });
                    }
                }
                // EMIT AFTER WATERMARK: open windows are not in the view yet.
                PlanKind::Aggregate if def.plan.emit_final => {}
                PlanKind::Aggregate if exists(key, g) => {
                    present.push(key.clone());
                    agg_rows.push(agg_row(def, key, g));
                }
                PlanKind::Aggregate => {}
            }
        }
        for (key, row) in present.into_iter().zip(finish.rows(def, &agg_rows)?) {
            // A group whose row cannot be computed is left out, as in the incremental path.
            if let Ok(Some(row)) = row {
                out.push(RowChange {
                    key,
                    row: Some(row),
                });
            }
        }
    }
    Ok(out)
}

/// Whether an aggregate group has a row: while it has source rows, and always for a view
/// without GROUP BY (SQL answers one row even over no rows).
pub(super) fn exists(key: &Key, g: &GroupState) -> bool {
    g.rows > 0 || key.is_empty()
}

/// A group's keys followed by its aggregates' values; an error when a value does not fit its
/// column (an integer sum beyond int64, which DuckDB would widen).
pub(super) fn agg_row(def: &ViewDef, key: &Key, g: &GroupState) -> Result<Row, String> {
    let mut row = key.clone();
    for (acc, agg) in g.aggregates.iter().zip(&def.plan.aggregates) {
        row.push(match (agg.func, acc) {
            (AggFunc::Count, _) => Value::Int(g.rows),
            (_, Accumulator::CountColumn(n)) => Value::Int(*n),
            (AggFunc::CountDistinct, Accumulator::Values(v)) => Value::Int(v.len() as i64),
            (AggFunc::Min, Accumulator::Values(v)) => {
                v.first().map_or(Value::Null, |(x, _)| x.clone())
            }
            (AggFunc::Max, Accumulator::Values(v)) => {
                v.last().map_or(Value::Null, |(x, _)| x.clone())
            }
            (AggFunc::TopK { k }, Accumulator::Values(v)) => {
                let mut by_count: Vec<&(Value, i64)> = v.iter().collect();
                // Most frequent first; of values as frequent, the least first (`v` is sorted).
                by_count.sort_by_key(|x| std::cmp::Reverse(x.1));
                list(agg, by_count.iter().take(usize::from(k)).map(|(x, _)| x))?
            }
            (AggFunc::MaxK { k }, Accumulator::Values(v)) => list(
                agg,
                v.iter()
                    .rev()
                    .flat_map(|(x, n)| std::iter::repeat_n(x, usize::try_from(*n).unwrap_or(0)))
                    .take(usize::from(k)),
            )?,
            (AggFunc::MinK { k }, Accumulator::Values(v)) => list(
                agg,
                v.iter()
                    .flat_map(|(x, n)| std::iter::repeat_n(x, usize::try_from(*n).unwrap_or(0)))
                    .take(usize::from(k)),
            )?,
            (AggFunc::Latest, Accumulator::Ordered(v)) => {
                v.last().map_or(Value::Null, |(_, x)| x.clone())
            }
            (AggFunc::ArgMin, Accumulator::Pairs(p)) => {
                p.first().map_or(Value::Null, |(_, x, _)| x.clone())
            }
            (AggFunc::ArgMax, Accumulator::Pairs(p)) => {
                p.last().map_or(Value::Null, |(_, x, _)| x.clone())
            }
            (AggFunc::Earliest, Accumulator::Ordered(v)) => {
                v.first().map_or(Value::Null, |(_, x)| x.clone())
            }
            (
                _,
                Accumulator::SumInt { non_null: 0, .. } | Accumulator::SumFloat { non_null: 0, .. },
            ) => Value::Null,
            (_, Accumulator::SumInt { wraps, .. }) if *wraps != 0 => {
                return Err(format!("{} is beyond 2^127", agg.text));
            }
            (AggFunc::Avg, Accumulator::SumInt { sum, non_null, .. }) => {
                let scale = match agg.arg.map(|i| def.plan.project[i].ty) {
                    Some(ColumnType::Decimal { scale, .. }) => scale,
                    _ => 0,
                };
                Value::Float(catalog::decimal::to_f64(*sum, scale) / *non_null as f64)
            }
            (_, Accumulator::SumInt { sum, .. })
                if matches!(agg.ty, ColumnType::Decimal { .. }) =>
            {
                let scale = match agg.ty {
                    ColumnType::Decimal { scale, .. } => scale,
                    _ => 0,
                };
                if !catalog::decimal::fits(*sum, catalog::decimal::PRECISION_MAX) {
                    return Err(format!(
                        "{} = {} does not fit in decimal(38,{scale})",
                        agg.text,
                        catalog::decimal::format(*sum, scale),
                    ));
                }
                Value::Decimal(*sum, scale)
            }
            (AggFunc::Avg, Accumulator::SumFloat { sum, non_null }) => {
                Value::Float(sum.value() / *non_null as f64)
            }
            (_, Accumulator::SumInt { sum, .. }) => Value::Int(
                i64::try_from(*sum)
                    .map_err(|_| format!("{} = {sum} does not fit in int64", agg.text))?,
            ),
            (_, Accumulator::SumFloat { sum, .. }) => Value::Float(sum.value()),
            _ => Value::Null,
        });
    }
    Ok(row)
}

/// An array value of `items` (as its JSON text), for top_k, max_k and min_k.
fn list<'a>(
    agg: &catalog::Aggregate,
    items: impl Iterator<Item = &'a Value>,
) -> Result<Value, String> {
    let mut out = Vec::new();
    for x in items {
        out.push(match x {
            Value::Int(i) => serde_json::Value::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f)
                .map(serde_json::Value::Number)
                .ok_or_else(|| format!("{}: {f} cannot be an array element", agg.text))?,
            Value::Text(s) => serde_json::Value::from(s.as_str()),
            Value::Bool(b) => serde_json::Value::from(*b),
            other => {
                return Err(format!(
                    "{}: a {} cannot be an array element",
                    agg.text,
                    other.kind()
                ))
            }
        });
    }
    Ok(Value::List(serde_json::Value::Array(out).to_string()))
}

impl ViewCore {
    /// Ends the batch: the change of every touched key and what to persist.
    pub fn finish_batch(&mut self) -> Result<BatchOutput, String> {
        let mut out = BatchOutput {
            rows_delta: -std::mem::take(&mut self.gone_rows),
            bytes_delta: -std::mem::take(&mut self.gone_bytes),
            ..BatchOutput::default()
        };
        let mut present = Vec::new();
        let mut agg_rows = Vec::new();
        for KeyOrd(key) in std::mem::take(&mut self.touched) {
            match self.def.plan.kind {
                PlanKind::Project => {
                    let row = match self.groups.get_mut(&key) {
                        Some(g) => {
                            g.out_bytes = g.row.as_deref().map_or(0, row_bytes);
                            out.rows_delta += 1;
                            out.bytes_delta += g.out_bytes as i64;
                            g.row.clone()
                        }
                        None => None,
                    };
                    out.groups
                        .push((key.clone(), self.groups.get(&key).cloned()));
                    out.changes.push(RowChange { key, row });
                }
                PlanKind::Aggregate => match self.groups.get(&key) {
                    // EMIT AFTER WATERMARK: an open window is kept, not emitted.
                    Some(g) if exists(&key, g) && self.def.plan.emit_final && !g.closed => {
                        out.groups.push((key.clone(), Some(g.clone())));
                        if self.forgotten.contains(&KeyOrd(key.clone())) {
                            // Its final row from before a truncate leaves the view.
                            out.changes.push(RowChange { key, row: None });
                        }
                    }
                    Some(g) if exists(&key, g) => {
                        agg_rows.push(agg_row(&self.def, &key, g));
                        present.push(key);
                    }
                    _ => {
                        let mut emitted = !self.def.plan.emit_final
                            || self.forgotten.contains(&KeyOrd(key.clone()));
                        if let Some(g) = self.groups.remove(&key) {
                            if g.out_bytes > 0 {
                                emitted = true;
                                out.rows_delta -= 1;
                                out.bytes_delta -= g.out_bytes as i64;
                            }
                        }
                        out.groups.push((key.clone(), None));
                        if emitted {
                            out.changes.push(RowChange { key, row: None });
                        }
                    }
                },
            }
        }
        if !agg_rows.is_empty() {
            let rows = self.finish.rows(&self.def, &agg_rows)?;
            for (key, row) in present.into_iter().zip(rows) {
                // A group HAVING filters out keeps its state; its row is deleted. So is the
                // row of a group that cannot be computed, and the reason is recorded.
                let row = match row {
                    Ok(row) => row,
                    Err(reason) => {
                        out.group_errors.push((key.clone(), reason));
                        None
                    }
                };
                if let Some(g) = self.groups.get_mut(&key) {
                    let bytes = row.as_deref().map_or(0, row_bytes);
                    out.rows_delta += i64::from(bytes > 0) - i64::from(g.out_bytes > 0);
                    out.bytes_delta += bytes as i64 - g.out_bytes as i64;
                    g.out_bytes = bytes;
                    out.groups.push((key.clone(), Some(g.clone())));
                }
                out.changes.push(RowChange { key, row });
            }
            out.changes.sort_by_key(|c| KeyOrd(c.key.clone()));
        }
        self.close_windows(&mut out)?;
        let window_retention = self
            .def
            .plan
            .window
            .as_ref()
            .is_some_and(|w| w.retention_us.is_some());
        if self.def.plan.emit_final || window_retention {
            // One change per key, the last: a window re-opened after a truncate and closed
            // in the same batch has its delete, then its final row.
            out.changes.sort_by_key(|c| KeyOrd(c.key.clone()));
            out.changes.reverse();
            out.changes.dedup_by(|later, kept| later.key == kept.key);
            out.changes.reverse();
            self.forgotten.clear();
        }
        out.watermark = self.watermark;
        out.event_times = self.event_times.clone();
        out.arrival = self.arrival;
        out.late_events = std::mem::take(&mut self.late_events);
        out.rows = self.pending_rows.drain().collect();
        out.truncate_rows = std::mem::take(&mut self.truncated);
        out.join = self.join.as_mut().map(join::JoinState::take_writes);
        Ok(out)
    }
}
