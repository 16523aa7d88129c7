//! The change feed behind `Region.Subscribe`: every change batch a node's replica applied, in
//! apply order, as it committed them, plus a bounded tail of recent batches per view so that a
//! subscriber that reconnects can resume from its position without a new snapshot.
//!
//! The Raft thread publishes after each commit; subscribers read the tail and start listening
//! under one lock, so that a batch is either in the tail they read or arrives on their
//! channel, and they drop what is at or below the position they already hold.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use meridian_proto::v1 as pb;
use prost::Message as _;
use tokio::sync::broadcast;

/// Batches buffered for each subscriber; one that falls further behind re-reads the view
/// (a new snapshot) rather than holding the writer back.
pub const FEED_CHANNEL_MAX: usize = 1024;
/// Recent batches kept per view for resuming subscribers, by count and encoded bytes.
pub const RETAIN_BATCHES_MAX: usize = 1024;
pub const RETAIN_BYTES_MAX: usize = 16 << 20;

#[derive(Debug)]
pub enum FeedEvent {
    /// A batch the replica applied to `view` (incarnation `view_id`).
    Batch {
        view: String,
        view_id: u64,
        batch: pb::ChangeBatch,
    },
    /// The view's table (every view's, for `None`) was replaced other than by a batch: a
    /// snapshot or a peer's replica was installed, or the view was dropped. Subscribers read
    /// it again.
    Reset { view: Option<String> },
}

impl FeedEvent {
    pub fn concerns(&self, name: &str) -> bool {
        match self {
            FeedEvent::Batch { view, .. } => view == name,
            FeedEvent::Reset { view } => view.as_deref().is_none_or(|v| v == name),
        }
    }
}

#[derive(Default)]
struct Tail {
    view_id: u64,
    /// (epoch, seq) of the last batch published, kept when the batches themselves are trimmed.
    last: Option<(u64, u64)>,
    batches: VecDeque<(Arc<FeedEvent>, usize)>,
    bytes: usize,
}

pub struct Feed {
    tx: broadcast::Sender<Arc<FeedEvent>>,
    tails: Mutex<HashMap<String, Tail>>,
}

/// Where a subscriber starts: the batches after its position when the feed still holds all of
/// them (`None`: it needs a snapshot), and the channel that carries every later one.
pub struct Start {
    pub rx: broadcast::Receiver<Arc<FeedEvent>>,
    pub since: Option<Vec<Arc<FeedEvent>>>,
}

impl Feed {
    pub fn new() -> Arc<Feed> {
        let (tx, _) = broadcast::channel(FEED_CHANNEL_MAX);
        Arc::new(Feed {
            tx,
            tails: Mutex::default(),
        })
    }

    fn tails(&self) -> std::sync::MutexGuard<'_, HashMap<String, Tail>> {
        self.tails.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes the batches of one committed apply.
    pub fn publish(&self, view: &str, view_id: u64, batches: &[&pb::ChangeBatch]) {
        if batches.is_empty() {
            return;
        }
        let mut tails = self.tails();
        let tail = tails.entry(view.to_string()).or_default();
        if tail.view_id != view_id {
            *tail = Tail {
                view_id,
                ..Tail::default()
            };
        }
        for &b in batches {
            let event = Arc::new(FeedEvent::Batch {
                view: view.to_string(),
                view_id,
                batch: b.clone(),
            });
            tail.last = Some((b.epoch, b.seq));
            if b.full {
                // Nothing before a full batch continues into it.
                tail.batches.clear();
                tail.bytes = 0;
            }
            let size = b.encoded_len();
            if !b.full && size <= RETAIN_BYTES_MAX {
                tail.batches.push_back((event.clone(), size));
                tail.bytes += size;
                while tail.batches.len() > RETAIN_BATCHES_MAX || tail.bytes > RETAIN_BYTES_MAX {
                    if let Some((_, n)) = tail.batches.pop_front() {
                        tail.bytes -= n;
                    }
                }
            } else {
                tail.batches.clear();
                tail.bytes = 0;
            }
            // No subscriber is not an error.
            let _ = self.tx.send(event);
        }
    }

    /// The view's table (or every table) was replaced wholesale.
    pub fn reset(&self, view: Option<&str>) {
        let mut tails = self.tails();
        match view {
            Some(v) => {
                tails.remove(v);
            }
            None => tails.clear(),
        }
        let _ = self.tx.send(Arc::new(FeedEvent::Reset {
            view: view.map(str::to_string),
        }));
    }

    /// Starts a subscriber of `view` at position (`view_id`, `epoch`, `seq`).
    pub fn start(&self, view: &str, view_id: u64, epoch: u64, seq: u64) -> Start {
        let tails = self.tails();
        let rx = self.tx.subscribe();
        let since = tails
            .get(view)
            .filter(|t| t.view_id == view_id && view_id != 0)
            .and_then(|t| {
                if t.last == Some((epoch, seq)) {
                    return Some(Vec::new());
                }
                let from = t.batches.iter().position(|(e, _)| {
                    matches!(&**e, FeedEvent::Batch { batch, .. } if batch.epoch == epoch && batch.seq == seq + 1)
                })?;
                Some(t.batches.iter().skip(from).map(|(e, _)| e.clone()).collect())
            });
        Start { rx, since }
    }

    pub fn subscribers(&self) -> usize {
        self.tx.receiver_count()
    }
}

/// Whether a subscriber at (`epoch`, `seq`) takes `batch` next: a later batch of its epoch, a
/// full batch of a newer one, or the first batch of a newer epoch after nothing (as
/// `replica::admit` applies them).
pub fn follows(epoch: u64, seq: u64, batch: &pb::ChangeBatch) -> bool {
    if batch.epoch == epoch {
        batch.seq > seq
    } else {
        batch.epoch > epoch && (batch.full || (seq == 0 && batch.seq == 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(epoch: u64, seq: u64, full: bool) -> pb::ChangeBatch {
        pb::ChangeBatch {
            view: "v".into(),
            seq,
            epoch,
            full,
            ..Default::default()
        }
    }

    fn seqs(events: &[Arc<FeedEvent>]) -> Vec<u64> {
        events
            .iter()
            .filter_map(|e| match &**e {
                FeedEvent::Batch { batch, .. } => Some(batch.seq),
                FeedEvent::Reset { .. } => None,
            })
            .collect()
    }

    #[test]
    fn a_subscriber_resumes_from_the_tail_or_needs_a_snapshot() {
        let feed = Feed::new();
        let (b1, b2, b3) = (batch(1, 1, false), batch(1, 2, false), batch(1, 3, false));
        feed.publish("v", 7, &[&b1, &b2]);
        feed.publish("v", 7, &[&b3]);
        assert_eq!(
            feed.start("v", 7, 1, 1).since.as_deref().map(seqs),
            Some(vec![2, 3])
        );
        assert_eq!(feed.start("v", 7, 1, 3).since.map(|s| s.len()), Some(0));
        // Another incarnation, epoch or an unknown position: a snapshot.
        assert!(feed.start("v", 8, 1, 1).since.is_none());
        assert!(feed.start("v", 7, 2, 1).since.is_none());
        assert!(feed.start("w", 7, 1, 1).since.is_none());
        assert!(feed.start("v", 7, 1, 9).since.is_none());
        // A full batch cuts the tail: nothing before it continues into it.
        let full = batch(2, 10, true);
        feed.publish("v", 7, &[&full]);
        assert!(feed.start("v", 7, 1, 2).since.is_none());
        assert_eq!(feed.start("v", 7, 2, 10).since.map(|s| s.len()), Some(0));
        // The subscriber's channel carries what comes after it started.
        let mut start = feed.start("v", 7, 2, 10);
        feed.publish("v", 7, &[&batch(2, 11, false)]);
        feed.reset(Some("v"));
        let got = start.rx.try_recv().expect("the batch");
        assert!(matches!(&*got, FeedEvent::Batch { batch, .. } if batch.seq == 11));
        let got = start.rx.try_recv().expect("the reset");
        assert!(matches!(&*got, FeedEvent::Reset { view: Some(v) } if v == "v"));
        assert!(got.concerns("v") && !got.concerns("w"));
        assert!(
            feed.start("v", 7, 2, 11).since.is_none(),
            "a reset forgets the tail"
        );
    }

    #[test]
    fn the_tail_is_bounded() {
        let feed = Feed::new();
        for seq in 1..=(RETAIN_BATCHES_MAX as u64 + 10) {
            feed.publish("v", 1, &[&batch(1, seq, false)]);
        }
        assert!(feed.start("v", 1, 1, 5).since.is_none(), "trimmed");
        let since = feed.start("v", 1, 1, 20).since.expect("retained");
        assert_eq!(since.len(), RETAIN_BATCHES_MAX - 10);
    }

    #[test]
    fn only_later_batches_or_a_newer_full_one_follow() {
        assert!(follows(1, 5, &batch(1, 6, false)));
        assert!(!follows(1, 5, &batch(1, 5, false)));
        assert!(!follows(2, 5, &batch(1, 9, false)));
        assert!(!follows(1, 5, &batch(2, 1, false)));
        assert!(follows(1, 5, &batch(2, 3, true)));
        assert!(
            follows(0, 0, &batch(2, 1, false)),
            "a fresh view's first batch"
        );
    }
}
