//! Adding and retracting one projected source row in its group's accumulators (and, for
//! `hop()` and closing windows, in each of its windows).

use super::*;

/// The accumulators of a group with no rows yet.
pub(super) fn new_group(def: &ViewDef) -> GroupState {
    GroupState {
        rows: 0,
        aggregates: def
            .plan
            .aggregates
            .iter()
            .map(|a| match a.func {
                AggFunc::Count => Accumulator::Count,
                AggFunc::CountNonNull => Accumulator::CountColumn(0),
                AggFunc::CountDistinct
                | AggFunc::Min
                | AggFunc::Max
                | AggFunc::TopK { .. }
                | AggFunc::MaxK { .. }
                | AggFunc::MinK { .. } => Accumulator::Values(Vec::new()),
                AggFunc::Latest | AggFunc::Earliest => Accumulator::Ordered(Vec::new()),
                AggFunc::ArgMin | AggFunc::ArgMax => Accumulator::Pairs(Vec::new()),
                AggFunc::Sum | AggFunc::Avg => {
                    let float = a
                        .arg
                        .is_some_and(|i| def.plan.project[i].ty == ColumnType::Float64);
                    if float {
                        Accumulator::SumFloat {
                            sum: Box::default(),
                            non_null: 0,
                        }
                    } else {
                        Accumulator::SumInt {
                            sum: 0,
                            non_null: 0,
                            wraps: 0,
                        }
                    }
                }
            })
            .collect(),
        row: None,
        out_bytes: 0,
        closed: false,
    }
}

/// Adds `delta` to the exact sum `wraps * 2^128 + sum`.
fn add_exact(sum: &mut i128, wraps: &mut i64, delta: i128) {
    let (next, wrapped) = sum.overflowing_add(delta);
    *sum = next;
    if wrapped {
        *wraps += if delta > 0 { 1 } else { -1 };
    }
}

impl ViewCore {
    /// Adds (`sign` 1) or retracts (`sign` -1) one projected source row in each of its
    /// windows that is open (every row is in one "window" without `hop()` or closing windows).
    /// Answers whether one of its windows was closed (so the change was late there) and
    /// whether one was open.
    pub(super) fn add_open(&mut self, t: &Row, sign: i64) -> (bool, bool) {
        let (mut late, mut open) = (false, false);
        let Some(h) = self.def.plan.hop.clone() else {
            if self.is_late(t) {
                late = true;
            } else {
                self.add(t, sign);
                open = true;
            }
            return (late, open);
        };
        let first = h
            .shifted
            .iter()
            .find(|(_, is_end)| !is_end)
            .map(|(k, _)| *k);
        let (Some(Value::Timestamp(start)), Some(Value::Timestamp(time))) =
            (first.and_then(|k| t.get(k)), t.get(h.time_slot))
        else {
            // No event time: in no window.
            return (false, false);
        };
        let (start, time) = (*start, *time);
        let mut row = t.clone();
        for (s, e) in h.windows(start, time) {
            for &(k, is_end) in &h.shifted {
                row[k] = Value::Timestamp(if is_end { e } else { s });
            }
            if self.is_late(&row) {
                late = true;
            } else {
                self.add(&row, sign);
                open = true;
            }
        }
        (late, open)
    }

    /// Adds (`sign` 1) or retracts (`sign` -1) one projected source row in its group.
    pub(super) fn add(&mut self, t: &Row, sign: i64) {
        let n_keys = self.def.plan.n_keys;
        let key: Key = t[..n_keys].to_vec();
        let arrival_slot = self.def.plan.project.len();
        let def = &self.def;
        if let Some(w) = &def.plan.window {
            if let (Some(Value::Timestamp(start)), Some(min)) =
                (key.get(w.start_key), self.open_end_min)
            {
                self.open_end_min = Some(min.min(start.saturating_add(w.size_us)));
            }
        }
        let group = self
            .groups
            .entry(key.clone())
            .or_insert_with(|| new_group(def));
        group.rows += sign;
        for (acc, agg) in group.aggregates.iter_mut().zip(&def.plan.aggregates) {
            let value = agg.arg.and_then(|i| t.get(i)).unwrap_or(&Value::Null);
            match (acc, value) {
                (Accumulator::Count, _) | (_, Value::Null) => {}
                (Accumulator::CountColumn(n), _) => *n += sign,
                (
                    Accumulator::SumInt {
                        sum,
                        non_null,
                        wraps,
                    },
                    Value::Int(v),
                ) => {
                    add_exact(sum, wraps, i128::from(*v) * i128::from(sign));
                    *non_null += sign;
                }
                // Decimals of one column share its scale: their unscaled sum is exact.
                (
                    Accumulator::SumInt {
                        sum,
                        non_null,
                        wraps,
                    },
                    Value::Decimal(v, _),
                ) => {
                    add_exact(sum, wraps, v.saturating_mul(i128::from(sign)));
                    *non_null += sign;
                }
                (Accumulator::SumFloat { sum, non_null }, Value::Float(v)) => {
                    sum.add(*v, sign);
                    *non_null += sign;
                }
                (Accumulator::SumFloat { sum, non_null }, Value::Int(v)) => {
                    sum.add(*v as f64, sign);
                    *non_null += sign;
                }
                (Accumulator::Ordered(values), v) => {
                    let at = match t.get(arrival_slot) {
                        Some(Value::Int(a)) => u64::try_from(*a).unwrap_or(0),
                        _ => 0,
                    };
                    match values.binary_search_by(|(a, _)| a.cmp(&at)) {
                        Ok(i) if sign < 0 => {
                            values.remove(i);
                        }
                        Ok(_) => {}
                        Err(i) if sign > 0 => values.insert(i, (at, v.clone())),
                        Err(_) => {}
                    }
                }
                (Accumulator::Pairs(pairs), v) => {
                    let by = match agg.by.and_then(|i| t.get(i)) {
                        None | Some(Value::Null) => continue,
                        // Ordered as DuckDB orders them: -0.0 is 0.0, and every NaN is one
                        // NaN, above everything.
                        Some(Value::Float(f)) if *f == 0.0 => Value::Float(0.0),
                        Some(Value::Float(f)) if f.is_nan() => Value::Float(f64::NAN),
                        Some(by) => by.clone(),
                    };
                    let at = pairs.binary_search_by(|(b, x, _)| {
                        b.total_cmp(&by).then_with(|| x.total_cmp(v))
                    });
                    match at {
                        Ok(i) => {
                            pairs[i].2 += sign;
                            if pairs[i].2 == 0 {
                                pairs.remove(i);
                            }
                        }
                        Err(i) => pairs.insert(i, (by, v.clone(), sign)),
                    }
                }
                (Accumulator::Values(values), v) => {
                    match values.binary_search_by(|(x, _)| x.total_cmp(v)) {
                        Ok(i) => {
                            values[i].1 += sign;
                            if values[i].1 == 0 {
                                values.remove(i);
                            }
                        }
                        Err(i) => values.insert(i, (v.clone(), sign)),
                    }
                }
                // The evaluator types every value by its slot, so a sum never sees a string.
                (_, _) => {}
            }
        }
        assert!(
            group.rows >= 0,
            "group row count went negative: a row was retracted twice"
        );
        self.touched.insert(KeyOrd(key));
    }
}

#[cfg(test)]
mod tests {
    use super::add_exact;

    #[test]
    fn a_sum_that_grows_past_i128_and_is_retracted_back_is_exact() {
        let nine = 9 * 10i128.pow(37);
        let (mut sum, mut wraps) = (0i128, 0i64);
        add_exact(&mut sum, &mut wraps, nine);
        add_exact(&mut sum, &mut wraps, nine);
        assert_eq!(wraps, 1, "1.8e38 is past i128");
        add_exact(&mut sum, &mut wraps, -nine);
        assert_eq!((sum, wraps), (nine, 0));
        add_exact(&mut sum, &mut wraps, -nine);
        add_exact(&mut sum, &mut wraps, -nine);
        add_exact(&mut sum, &mut wraps, -nine);
        assert_eq!(wraps, -1);
        add_exact(&mut sum, &mut wraps, nine);
        assert_eq!((sum, wraps), (-nine, 0));
    }
}
