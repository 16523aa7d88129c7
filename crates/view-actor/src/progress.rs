//! Watches a view's consumption against its partitions' high watermarks, so that a view that is
//! behind and makes no progress shows as stalled instead of looking idle. Pure: the actor feeds
//! it offsets and watermarks and carries out the rewinds it asks for.
//!
//! A rewind works around a broker that answers a fetch from an offset inside a multi-record
//! batch with no records (seen with tansu 0.6): the consumer is moved back, and the actor skips
//! the messages below its stored position, which it counted already.

use std::collections::HashMap;

/// How far back a stalled partition is rewound: more than one producer batch holds.
pub const REWIND_MESSAGES: i64 = 10_000;

/// A partition that is behind its high watermark and did not move between two checks.
#[derive(Clone, Debug, PartialEq)]
pub struct Stalled {
    pub partition: i32,
    /// The view's next offset on the partition.
    pub offset: i64,
    pub high_watermark: i64,
    /// Wall clock (ms) of the check that first saw no progress.
    pub since_ms: i64,
}

/// The view's next offset on a partition is below the partition's oldest message: messages were
/// deleted (retention) before the view read them.
#[derive(Clone, Debug, PartialEq)]
pub struct Lost {
    pub partition: i32,
    pub offset: i64,
    pub low_watermark: i64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Rewind {
    pub partition: i32,
    pub to: i64,
}

#[derive(Default)]
struct Partition {
    last_offset: Option<i64>,
    stalled_since_ms: Option<i64>,
    high_watermark: i64,
    rewound: bool,
}

#[derive(Default)]
pub struct ProgressWatch {
    partitions: HashMap<i32, Partition>,
}

impl ProgressWatch {
    /// One check: `next` is the view's next offset per partition, `marks` each partition's
    /// (low, high) watermarks now. Returns the rewinds to make (one per stall), or the first
    /// partition whose unread messages are gone, which no rewind may skip over.
    pub fn check(
        &mut self,
        next: &HashMap<i32, i64>,
        marks: &HashMap<i32, (i64, i64)>,
        now_ms: i64,
    ) -> Result<Vec<Rewind>, Lost> {
        let mut rewinds = Vec::new();
        for (&partition, &(low, high)) in marks {
            let offset = next.get(&partition).copied().unwrap_or(low);
            if offset < low {
                return Err(Lost {
                    partition,
                    offset,
                    low_watermark: low,
                });
            }
            let p = self.partitions.entry(partition).or_default();
            p.high_watermark = high;
            let moved = p.last_offset != Some(offset);
            let first_look = p.last_offset.is_none();
            p.last_offset = Some(offset);
            if first_look || moved || high <= offset {
                p.stalled_since_ms = None;
                p.rewound = false;
                continue;
            }
            if p.stalled_since_ms.is_none() {
                p.stalled_since_ms = Some(now_ms);
            }
            if !p.rewound {
                p.rewound = true;
                rewinds.push(Rewind {
                    partition,
                    to: (offset - REWIND_MESSAGES).max(low),
                });
            }
        }
        rewinds.sort_by_key(|r| r.partition);
        Ok(rewinds)
    }

    /// The partitions seen stalled at the last check.
    pub fn stalled(&self) -> Vec<Stalled> {
        let mut out: Vec<Stalled> = self
            .partitions
            .iter()
            .filter_map(|(&partition, p)| {
                Some(Stalled {
                    partition,
                    offset: p.last_offset?,
                    high_watermark: p.high_watermark,
                    since_ms: p.stalled_since_ms?,
                })
            })
            .collect();
        out.sort_by_key(|s| s.partition);
        out
    }
}

/// What to do with a message, given where its partition was positioned.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Verdict {
    /// Consume it.
    Take,
    /// Below the stored position: consumed before.
    Skip,
    /// From a fetch that skipped ahead; a rewind is under way.
    Drop,
    /// The first message after positioning the partition is past the position: fetch again
    /// from earlier (`REWIND_MESSAGES` back) and drop this one.
    RewindAndDrop,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Fresh {
    AwaitFirst,
    Rewinding,
    AwaitFirstAfterRewind,
}

/// Checks the first message of each partition after the consumer was positioned (assigned or
/// sought) at the view's next offset. A broker that answers a fetch from inside a
/// multi-record batch with the *next* batch (tansu 0.6 does) would make the view skip the rest
/// of the batch silently; the offset that comes back says so, and the partition is fetched
/// again from earlier. If the messages are still not there after that (a compacted topic,
/// transaction markers), the gap is real and consumption goes on.
#[derive(Default)]
pub struct FirstFetch {
    partitions: HashMap<i32, Fresh>,
}

impl FirstFetch {
    /// The partition's fetch (re)starts at the view's next offset.
    pub fn positioned(&mut self, partition: i32) {
        self.partitions.insert(partition, Fresh::AwaitFirst);
    }

    /// The rewind asked for by `RewindAndDrop` was made.
    pub fn rewound(&mut self, partition: i32) {
        if self.partitions.get(&partition) == Some(&Fresh::Rewinding) {
            self.partitions
                .insert(partition, Fresh::AwaitFirstAfterRewind);
        }
    }

    pub fn verdict(&mut self, partition: i32, offset: i64, next: i64) -> Verdict {
        if offset < next {
            return Verdict::Skip;
        }
        match self.partitions.get(&partition).copied() {
            None => Verdict::Take,
            Some(Fresh::AwaitFirst) if offset > next => {
                self.partitions.insert(partition, Fresh::Rewinding);
                Verdict::RewindAndDrop
            }
            Some(Fresh::Rewinding) => Verdict::Drop,
            Some(_) => {
                self.partitions.remove(&partition);
                Verdict::Take
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map<V: Copy>(pairs: &[(i32, V)]) -> HashMap<i32, V> {
        pairs.iter().copied().collect()
    }

    #[test]
    fn a_view_behind_without_progress_is_stalled_and_rewound_once() {
        let mut w = ProgressWatch::default();
        // First look: behind, but nothing to compare with yet.
        assert!(w
            .check(&map(&[(0, 50)]), &map(&[(0, (0, 100))]), 1_000)
            .expect("nothing lost")
            .is_empty());
        assert!(w.stalled().is_empty());
        // No progress since: stalled, rewound.
        let r = w.check(&map(&[(0, 50)]), &map(&[(0, (0, 100))]), 2_000);
        assert_eq!(
            r,
            Ok(vec![Rewind {
                partition: 0,
                to: 0
            }])
        );
        assert_eq!(
            w.stalled(),
            vec![Stalled {
                partition: 0,
                offset: 50,
                high_watermark: 100,
                since_ms: 2_000
            }]
        );
        // Still stuck: reported since the first time, not rewound again.
        assert!(w
            .check(&map(&[(0, 50)]), &map(&[(0, (0, 120))]), 3_000)
            .expect("nothing lost")
            .is_empty());
        assert_eq!(w.stalled()[0].since_ms, 2_000);
        assert_eq!(w.stalled()[0].high_watermark, 120);
        // Progress clears it.
        assert!(w
            .check(&map(&[(0, 60)]), &map(&[(0, (0, 120))]), 4_000)
            .expect("nothing lost")
            .is_empty());
        assert!(w.stalled().is_empty());
    }

    #[test]
    fn idle_or_progressing_views_are_not_stalled() {
        let mut w = ProgressWatch::default();
        for t in 0..5 {
            // Caught up on partition 0; moving on partition 1.
            let r = w.check(
                &map(&[(0, 100), (1, 10 + t)]),
                &map(&[(0, (0, 100)), (1, (0, 1_000))]),
                t * 1_000,
            );
            assert_eq!(r, Ok(Vec::new()));
            assert!(w.stalled().is_empty(), "at {t}");
        }
        // A partition the view never consumed starts at its low watermark.
        let _ = w.check(&HashMap::new(), &map(&[(2, (20_000, 30_000))]), 10_000);
        let r = w.check(&HashMap::new(), &map(&[(2, (20_000, 30_000))]), 11_000);
        assert_eq!(
            r,
            Ok(vec![Rewind {
                partition: 2,
                to: 20_000
            }])
        );
        let mut w = ProgressWatch::default();
        let _ = w.check(&map(&[(0, 50_000)]), &map(&[(0, (0, 60_000))]), 0);
        let r = w.check(&map(&[(0, 50_000)]), &map(&[(0, (0, 60_000))]), 1);
        assert_eq!(r.expect("nothing lost")[0].to, 50_000 - REWIND_MESSAGES);
    }

    #[test]
    fn unread_messages_deleted_by_retention_are_reported_not_skipped() {
        let mut w = ProgressWatch::default();
        assert_eq!(
            w.check(&map(&[(0, 10)]), &map(&[(0, (500, 900))]), 0),
            Err(Lost {
                partition: 0,
                offset: 10,
                low_watermark: 500
            })
        );
    }

    #[test]
    fn a_fetch_that_skips_ahead_of_the_position_is_fetched_again() {
        let mut f = FirstFetch::default();
        f.positioned(0);
        f.positioned(1);
        // Partition 0 comes back from the batch after the position: drop and rewind.
        assert_eq!(f.verdict(0, 100, 50), Verdict::RewindAndDrop);
        assert_eq!(f.verdict(0, 101, 50), Verdict::Drop);
        // Partition 1 starts where it should.
        assert_eq!(f.verdict(1, 7, 7), Verdict::Take);
        assert_eq!(
            f.verdict(1, 9, 8),
            Verdict::Take,
            "later gaps are the broker's business"
        );
        f.rewound(0);
        assert_eq!(f.verdict(0, 0, 50), Verdict::Skip);
        assert_eq!(f.verdict(0, 49, 50), Verdict::Skip);
        assert_eq!(f.verdict(0, 50, 50), Verdict::Take);
        assert_eq!(f.verdict(0, 51, 51), Verdict::Take);
        // A real gap (compaction): taken after one rewind.
        f.positioned(2);
        assert_eq!(f.verdict(2, 20, 10), Verdict::RewindAndDrop);
        f.rewound(2);
        assert_eq!(f.verdict(2, 20, 10), Verdict::Take);
        assert_eq!(f.verdict(2, 21, 21), Verdict::Take);
    }
}
