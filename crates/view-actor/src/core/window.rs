//! Windows that close: per-partition event time, the watermark, late changes, and closing
//! the windows the watermark has passed.

use super::*;

impl ViewCore {
    /// Restores the event times and watermark persisted with the view's last batch.
    pub fn set_event_times(&mut self, event_times: BTreeMap<i32, i64>, watermark: Option<i64>) {
        self.event_times = event_times;
        self.watermark = watermark;
    }

    /// The partitions the view reads: the watermark waits until each has delivered an event
    /// (a partition that never does holds windows open).
    pub fn set_partitions(&mut self, partitions: &[i32]) {
        self.partitions = partitions.iter().copied().collect();
        self.update_watermark();
    }

    /// The watermark follows the slowest partition and never goes back.
    pub(super) fn update_watermark(&mut self) {
        let Some(w) = &self.def.plan.window else {
            return;
        };
        let slowest = if self.partitions.is_empty() {
            self.event_times.values().min().copied()
        } else {
            let mut min: Option<i64> = None;
            for p in &self.partitions {
                let Some(t) = self.event_times.get(p) else {
                    return;
                };
                min = Some(min.map_or(*t, |m| m.min(*t)));
            }
            min
        };
        if let Some(t) = slowest {
            let candidate = t.saturating_sub(w.lateness_us);
            self.watermark = Some(self.watermark.map_or(candidate, |m| m.max(candidate)));
        }
    }

    /// Whether a row's contribution falls in a closed window.
    pub(super) fn is_late(&self, t: &Row) -> bool {
        let (Some(w), Some(wm)) = (&self.def.plan.window, self.watermark) else {
            return false;
        };
        matches!(t.get(w.start_key), Some(Value::Timestamp(start)) if start.saturating_add(w.size_us) <= wm)
    }

    /// Moves the event partition's time, and so perhaps the watermark, with a row applied.
    pub(super) fn advance(&mut self, t: &Row) {
        let Some(w) = &self.def.plan.window else {
            return;
        };
        if let Some(Value::Timestamp(at)) = t.get(w.time_slot) {
            let latest = self.event_times.entry(self.partition).or_insert(*at);
            if *at >= *latest {
                *latest = *at;
                self.update_watermark();
            }
        }
    }

    /// Closes the windows the watermark has passed: each keeps its final row and drops its
    /// accumulators (their state is evicted); later changes to it are late.
    pub(super) fn close_windows(&mut self, out: &mut BatchOutput) -> Result<(), String> {
        let (Some(w), Some(wm)) = (self.def.plan.window.clone(), self.watermark) else {
            return Ok(());
        };
        // Closed windows whose end is at or below this leave the view (`window_retention`).
        let cutoff = w.retention_us.map(|r| wm.saturating_sub(r));
        let must_close = self.open_end_min.is_none_or(|end| end <= wm);
        let must_evict = cutoff.is_some_and(|c| self.closed_end_min.is_none_or(|end| end <= c));
        if !must_close && !must_evict {
            return Ok(());
        }
        let mut closing: Vec<Key> = Vec::new();
        let mut evicting: Vec<Key> = Vec::new();
        let (mut open_end_min, mut closed_end_min) = (i64::MAX, i64::MAX);
        for (key, g) in &self.groups {
            let Some(Value::Timestamp(start)) = key.get(w.start_key) else {
                continue;
            };
            let end = start.saturating_add(w.size_us);
            if g.closed && cutoff.is_some_and(|c| end <= c) {
                // Closed in an earlier batch (so its final row was emitted) and past its
                // retention: it leaves.
                evicting.push(key.clone());
            } else if g.closed {
                closed_end_min = closed_end_min.min(end);
            } else if end <= wm {
                // A window past its retention closes first (its final row is emitted under
                // EMIT AFTER WATERMARK) and leaves with the next batch.
                closing.push(key.clone());
                closed_end_min = closed_end_min.min(end);
            } else {
                open_end_min = open_end_min.min(end);
            }
        }
        self.open_end_min = Some(open_end_min);
        self.closed_end_min = Some(closed_end_min);
        for key in evicting {
            if let Some(g) = self.groups.remove(&key) {
                if g.out_bytes > 0 {
                    out.rows_delta -= 1;
                    out.bytes_delta -= g.out_bytes as i64;
                    out.changes.push(RowChange {
                        key: key.clone(),
                        row: None,
                    });
                }
                out.groups.push((key, None));
            }
        }
        if closing.is_empty() {
            return Ok(());
        }
        let agg_rows: Vec<Result<Row, String>> = closing
            .iter()
            .filter_map(|k| self.groups.get(k).map(|g| agg_row(&self.def, k, g)))
            .collect();
        let rows = self.finish.rows(&self.def, &agg_rows)?;
        let emit = self.def.plan.emit_final;
        for (key, row) in closing.into_iter().zip(rows) {
            if let Some(g) = self.groups.get_mut(&key) {
                g.row = match row {
                    Ok(row) => row,
                    Err(reason) => {
                        if emit {
                            // Its row was never computed before: the reason is recorded now.
                            out.group_errors.push((key.clone(), reason));
                        }
                        None
                    }
                };
                g.aggregates = Vec::new();
                g.closed = true;
                if emit {
                    // EMIT AFTER WATERMARK: the window's row enters the view now, final.
                    let bytes = g.row.as_deref().map_or(0, row_bytes);
                    out.rows_delta += i64::from(bytes > 0) - i64::from(g.out_bytes > 0);
                    out.bytes_delta += bytes as i64 - g.out_bytes as i64;
                    g.out_bytes = bytes;
                    if g.row.is_some() {
                        out.changes.push(RowChange {
                            key: key.clone(),
                            row: g.row.clone(),
                        });
                    }
                }
                // After any earlier entry for the key: the last write of a key wins.
                out.groups.push((key, Some(g.clone())));
            }
        }
        Ok(())
    }
}
