//! How fresh a view's change log is: the time up to which it reflects every message of its
//! stream. A probe reads the partitions' high watermarks every [`PROBE_INTERVAL`], stamped
//! with the time the read began; once the view's committed offsets reach a sample's marks on
//! every partition, the change log at that commit reflects everything the brokers held at
//! the sample's time. Shippers send it with every push, so that a region can tell "no news"
//! (a quiet view the central tier still vouches for) from "behind" (no word for a while).
//!
//! Conservative by construction: a sample is only ever satisfied by offsets the view has
//! committed, so a view never looks fresher than it is. A partition whose end is a
//! transaction marker is reached only with the next message after it, so such a quiet view
//! reads as behind.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use tokio::sync::{mpsc, watch};
use tracing::debug;

use crate::Clock;

/// How often the probe reads the high watermarks.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(1_000);
/// Samples kept waiting for the view to reach them (a view far behind drops the oldest).
pub const SAMPLES_MAX: usize = 16;

/// The change log up to `seq` reflects every message the brokers held at `at_ms`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fresh {
    pub seq: u64,
    pub at_ms: i64,
}

/// The high watermark of each partition, read starting at `at_ms`.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub at_ms: i64,
    pub marks: HashMap<i32, i64>,
}

/// Sans IO: samples in, the freshness they prove out.
#[derive(Default)]
pub struct Freshness {
    samples: VecDeque<Sample>,
    current: Fresh,
}

impl Freshness {
    pub fn sample(&mut self, s: Sample) {
        if self.samples.len() >= SAMPLES_MAX {
            self.samples.pop_front();
        }
        self.samples.push_back(s);
    }

    /// The view committed `seq` with next offsets `offsets`: the latest sample they reach on
    /// every partition makes the change log at `seq` fresh as of its time. Returns the new
    /// freshness when it moved.
    pub fn committed(&mut self, seq: u64, offsets: &HashMap<i32, i64>) -> Option<Fresh> {
        let mut moved = None;
        while let Some(s) = self.samples.front() {
            let reached = s
                .marks
                .iter()
                .all(|(p, high)| offsets.get(p).copied().unwrap_or(0) >= *high);
            if !reached {
                break;
            }
            if s.at_ms >= self.current.at_ms {
                self.current = Fresh {
                    seq,
                    at_ms: s.at_ms,
                };
                moved = Some(self.current);
            }
            self.samples.pop_front();
        }
        moved
    }
}

/// Starts the probe on a thread of its own (the client's calls block). It reads the marks of
/// the input partitions in `partitions` (of `topics`, by input: see
/// [`crate::core::INPUT_SHIFT`]) and sends each sample to `tx`, dropping it when the actor
/// has not taken the last ones; it ends when the actor drops the receiver.
pub fn spawn_probe(
    consumer: BaseConsumer,
    topics: Vec<String>,
    partitions: watch::Receiver<Vec<i32>>,
    clock: Arc<dyn Clock>,
    tx: mpsc::Sender<Sample>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("fresh-probe".into())
        .spawn(move || {
            while !tx.is_closed() {
                let started = std::time::Instant::now();
                let at_ms = clock.now_ms();
                let wanted = partitions.borrow().clone();
                let mut marks = HashMap::with_capacity(wanted.len());
                let mut ok = !wanted.is_empty();
                for p in wanted {
                    let (source, partition) = crate::core::split_input(p);
                    let Some(topic) = topics.get(source) else {
                        ok = false;
                        break;
                    };
                    match consumer.fetch_watermarks(topic, partition, PROBE_INTERVAL * 5) {
                        Ok((_, high)) => {
                            marks.insert(p, high);
                        }
                        Err(e) => {
                            debug!(partition = p, error = %e, "reading a high watermark for freshness failed");
                            ok = false;
                            break;
                        }
                    }
                }
                if ok && tx.try_send(Sample { at_ms, marks }).is_err() && tx.is_closed() {
                    return;
                }
                std::thread::sleep(PROBE_INTERVAL.saturating_sub(started.elapsed()));
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at_ms: i64, marks: &[(i32, i64)]) -> Sample {
        Sample {
            at_ms,
            marks: marks.iter().copied().collect(),
        }
    }

    #[test]
    fn a_sample_counts_only_once_every_partition_reached_it() {
        let mut f = Freshness::default();
        f.sample(sample(1_000, &[(0, 10), (1, 5)]));
        f.sample(sample(2_000, &[(0, 12), (1, 5)]));
        let offsets = |a: i64, b: i64| HashMap::from([(0, a), (1, b)]);
        // Partition 1 is behind the first sample: nothing is proven.
        assert_eq!(f.committed(3, &offsets(10, 4)), None);
        // Both reach the first sample, not the second.
        assert_eq!(
            f.committed(4, &offsets(11, 5)),
            Some(Fresh {
                seq: 4,
                at_ms: 1_000
            })
        );
        // A partition with no offset yet counts from 0.
        f.sample(sample(3_000, &[(0, 12), (1, 5), (2, 0)]));
        assert_eq!(
            f.committed(5, &offsets(12, 5)),
            Some(Fresh {
                seq: 5,
                at_ms: 3_000
            })
        );
        // Nothing more to prove until a new sample.
        assert_eq!(f.committed(6, &offsets(13, 5)), None);
    }

    #[test]
    fn a_view_far_behind_keeps_the_latest_samples() {
        let mut f = Freshness::default();
        for i in 0..(SAMPLES_MAX as i64 + 4) {
            f.sample(sample(i * 1_000, &[(0, i * 10)]));
        }
        let last = (SAMPLES_MAX as i64 + 3) * 1_000;
        assert_eq!(
            f.committed(9, &HashMap::from([(0, 10_000)])),
            Some(Fresh {
                seq: 9,
                at_ms: last
            })
        );
    }
}
