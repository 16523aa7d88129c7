//! Placement of views on central workers, sans IO: leases with epochs, balance, drain.
//!
//! Every grant of a view to a worker *session* (one run of a `meridian central` process) has a
//! new, larger epoch, persisted before anyone is told. A worker runs a view only while it holds
//! the view's lease, which it renews with each report; the worker stops by itself when its
//! lease lapses (it measures the lease from when it *sent* the report, the coordinator from
//! when it *received* it, so the worker always gives up first). A view moves only once its
//! holder is gone (its lease lapsed) or has confirmed that it stopped the view, so two workers
//! never run one view's lease at once; the epoch fences any batch a paused holder still sends.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// How long a lease runs without renewal.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(4);

/// A worker session holding a view's lease.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Holder {
    pub worker: String,
    pub session: u64,
}

/// A view's persisted lease: the last epoch granted and to whom.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Grant {
    pub epoch: u64,
    pub holder: Holder,
}

/// A decision of [`Placement::plan`]. Grants and forgets are persisted (synced) before
/// [`Placement::apply`] makes them visible; a release lives in memory only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Grant {
        view: u64,
        grant: Grant,
    },
    /// The view left the catalog.
    Forget {
        view: u64,
    },
    /// Ask the holder to stop the view (drain, rebalance); it moves once the holder confirms.
    Release {
        view: u64,
    },
}

#[derive(Debug)]
struct Worker {
    session: u64,
    last_seen: Instant,
    draining: bool,
    /// Views the worker runs or is still stopping, as of its last report.
    running: BTreeSet<u64>,
    /// Reports received from this session.
    reports: u64,
}

#[derive(Debug)]
struct Assignment {
    grant: Grant,
    /// Being released: the first report of the holder that can confirm it stopped the view.
    /// The answer to the next report is the first to leave the view out; the report after
    /// that is the first sent once the worker acted on it.
    releasing: Option<u64>,
}

/// One worker as status shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkerView {
    pub name: String,
    pub session: u64,
    pub age: Duration,
    pub live: bool,
    pub draining: bool,
    pub views: Vec<u64>,
}

#[derive(Debug)]
pub struct Placement {
    lease: Duration,
    started: Instant,
    /// The smallest lease epoch granted to a view that has none: above the epochs a change log
    /// was stamped with before leases existed (milliseconds since the Unix epoch).
    epoch_floor: u64,
    workers: BTreeMap<String, Worker>,
    views: BTreeMap<u64, Assignment>,
    /// Per view, its size (rows) as last reported: the cheapest view is the one moved.
    sizes: BTreeMap<u64, u64>,
}

impl Placement {
    /// `stored`: the persisted grants. Their holders count as live for one lease after `now`,
    /// so that a restarted coordinator does not move views whose workers are fine.
    /// `epoch_floor`: the first lease epoch of a view.
    pub fn new(
        lease: Duration,
        now: Instant,
        stored: Vec<(u64, Grant)>,
        epoch_floor: u64,
    ) -> Placement {
        Placement {
            lease,
            started: now,
            epoch_floor: epoch_floor.max(1),
            workers: BTreeMap::new(),
            views: stored
                .into_iter()
                .map(|(v, grant)| {
                    (
                        v,
                        Assignment {
                            grant,
                            releasing: None,
                        },
                    )
                })
                .collect(),
            sizes: BTreeMap::new(),
        }
    }

    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// Records a worker's report. A second session under a live worker's name is refused: two
    /// processes must not share a name.
    pub fn heartbeat(
        &mut self,
        name: &str,
        session: u64,
        draining: bool,
        running: BTreeSet<u64>,
        sizes: &[(u64, u64)],
        now: Instant,
    ) -> Result<(), String> {
        if name.is_empty() || session == 0 {
            return Err("a central worker report needs a name and a session".into());
        }
        // After a restart, a name that held views before counts as taken by that session
        // until its lease could have lapsed.
        if !self.workers.contains_key(name) && now < self.started + self.lease {
            if let Some(a) = self
                .views
                .values()
                .find(|a| a.grant.holder.worker == name && a.grant.holder.session != session)
            {
                return Err(format!(
                    "a central worker named '{name}' (session {:x}) held views when the coordinator started; waiting for it or for its lease to lapse",
                    a.grant.holder.session
                ));
            }
        }
        let (draining, reports) = match self.workers.get(name) {
            Some(w) if w.session != session && self.is_live(w, now) => {
                return Err(format!(
                    "a central worker named '{name}' is already running (session {:x}, last report {} ms ago): if that process is gone, this one is accepted once its lease lapses; otherwise give each worker its own --name",
                    w.session,
                    now.saturating_duration_since(w.last_seen).as_millis()
                ));
            }
            Some(w) if w.session == session => (draining || w.draining, w.reports + 1),
            _ => (draining, 1),
        };
        self.workers.insert(
            name.to_string(),
            Worker {
                session,
                last_seen: now,
                draining,
                running,
                reports,
            },
        );
        for (v, size) in sizes {
            if self.holder_is(*v, name, session) {
                self.sizes.insert(*v, *size);
            }
        }
        Ok(())
    }

    /// Marks a worker as draining: its views move to others and it exits once it holds none.
    /// Refused when no other live worker could take them.
    pub fn drain(&mut self, name: &str, now: Instant) -> Result<usize, String> {
        let lease = self.lease;
        let others = self
            .workers
            .iter()
            .any(|(n, w)| n != name && now < w.last_seen + lease && !w.draining);
        let w = self
            .workers
            .get_mut(name)
            .filter(|w| now < w.last_seen + lease)
            .ok_or_else(|| format!("no live central worker is named '{name}'"))?;
        if !others {
            return Err(format!(
                "no other live worker could take the views of '{name}'; start one first"
            ));
        }
        w.draining = true;
        let session = w.session;
        Ok(self
            .views
            .values()
            .filter(|a| a.grant.holder.worker == name && a.grant.holder.session == session)
            .count())
    }

    fn is_live(&self, w: &Worker, now: Instant) -> bool {
        now < w.last_seen + self.lease
    }

    fn holder_is(&self, view: u64, name: &str, session: u64) -> bool {
        self.views
            .get(&view)
            .is_some_and(|a| a.grant.holder.worker == name && a.grant.holder.session == session)
    }

    /// Whether the holder still holds its lease: it reported within one lease, or (unseen since
    /// this coordinator started) one lease has not passed since.
    fn holder_live(&self, h: &Holder, now: Instant) -> bool {
        match self.workers.get(&h.worker) {
            Some(w) if w.session == h.session => self.is_live(w, now),
            Some(w) if self.is_live(w, now) => false,
            // Replaced by a live session of the same name, or never seen since a restart.
            _ => now < self.started + self.lease && !self.workers.contains_key(&h.worker),
        }
    }

    /// What should change now, given the views in the catalog.
    pub fn plan(&self, catalog_views: &[u64], now: Instant) -> Vec<Change> {
        let mut changes = Vec::new();
        for v in self.views.keys() {
            if !catalog_views.contains(v) {
                changes.push(Change::Forget { view: *v });
            }
        }
        // Workers that may take views, with how many they hold.
        let mut counts: BTreeMap<&str, usize> = self
            .workers
            .iter()
            .filter(|(_, w)| self.is_live(w, now) && !w.draining)
            .map(|(n, _)| (n.as_str(), 0))
            .collect();
        let mut free = Vec::new();
        let mut releasing = false;
        for &v in catalog_views {
            match self.views.get(&v) {
                Some(a) if self.holder_live(&a.grant.holder, now) => {
                    let h = &a.grant.holder;
                    let w = self.workers.get(&h.worker);
                    if let Some(confirming) = a.releasing {
                        if w.is_some_and(|w| w.reports >= confirming && !w.running.contains(&v)) {
                            free.push(v);
                            continue;
                        }
                    }
                    releasing |= a.releasing.is_some();
                    if let Some(c) = counts.get_mut(h.worker.as_str()) {
                        *c += 1;
                    }
                    if a.releasing.is_none() && w.is_some_and(|w| w.draining) {
                        changes.push(Change::Release { view: v });
                        releasing = true;
                    }
                }
                _ => free.push(v),
            }
        }
        for v in free {
            let Some((&target, _)) = counts.iter().min_by_key(|(n, c)| (**c, **n)) else {
                break;
            };
            let session = self.workers.get(target).map_or(0, |w| w.session);
            let epoch = self
                .views
                .get(&v)
                .map_or(self.epoch_floor, |a| a.grant.epoch + 1);
            changes.push(Change::Grant {
                view: v,
                grant: Grant {
                    epoch,
                    holder: Holder {
                        worker: target.to_string(),
                        session,
                    },
                },
            });
            if let Some(c) = counts.get_mut(target) {
                *c += 1;
            }
        }
        // Balance: move one view at a time from the busiest worker to the idlest, when they
        // differ by two or more (a move costs the new owner a catch-up).
        if !releasing && changes.iter().all(|c| !matches!(c, Change::Grant { .. })) {
            let most = counts
                .iter()
                .max_by_key(|(n, c)| (**c, std::cmp::Reverse(**n)));
            let least = counts.iter().min_by_key(|(n, c)| (**c, **n));
            if let (Some((&busy, &hi)), Some((_, &lo))) = (most, least) {
                if hi >= lo + 2 {
                    let smallest = catalog_views
                        .iter()
                        .filter(|v| {
                            self.views.get(*v).is_some_and(|a| {
                                a.grant.holder.worker == busy
                                    && self.holder_live(&a.grant.holder, now)
                            })
                        })
                        .min_by_key(|v| (self.sizes.get(*v).copied().unwrap_or(0), **v));
                    if let Some(&v) = smallest {
                        changes.push(Change::Release { view: v });
                    }
                }
            }
        }
        changes
    }

    /// Makes changes visible (grants and forgets only once persisted). `reporting`: the worker
    /// session whose report is being answered, if any: the answer already leaves out what it
    /// releases, so its very next report can confirm.
    pub fn apply(&mut self, changes: &[Change], reporting: Option<(&str, u64)>) {
        for c in changes {
            match c {
                Change::Grant { view, grant } => {
                    self.views.insert(
                        *view,
                        Assignment {
                            grant: grant.clone(),
                            releasing: None,
                        },
                    );
                }
                Change::Forget { view } => {
                    self.views.remove(view);
                    self.sizes.remove(view);
                }
                Change::Release { view } => {
                    if let Some(a) = self.views.get_mut(view) {
                        let h = &a.grant.holder;
                        let reports = self.workers.get(&h.worker).map_or(0, |w| w.reports);
                        let answering = reporting == Some((h.worker.as_str(), h.session));
                        a.releasing = Some(reports + if answering { 1 } else { 2 });
                    }
                }
            }
        }
    }

    /// The leases a worker session holds now: what it may run.
    pub fn leases(&self, name: &str, session: u64) -> Vec<(u64, u64)> {
        self.views
            .iter()
            .filter(|(_, a)| {
                a.releasing.is_none()
                    && a.grant.holder.worker == name
                    && a.grant.holder.session == session
            })
            .map(|(v, a)| (*v, a.grant.epoch))
            .collect()
    }

    /// Whether the worker was asked to drain.
    pub fn draining(&self, name: &str) -> bool {
        self.workers.get(name).is_some_and(|w| w.draining)
    }

    /// A view's last grant: its epoch and holder.
    pub fn grant(&self, view: u64) -> Option<&Grant> {
        self.views.get(&view).map(|a| &a.grant)
    }

    pub fn workers(&self, now: Instant) -> Vec<WorkerView> {
        self.workers
            .iter()
            .map(|(name, w)| WorkerView {
                name: name.clone(),
                session: w.session,
                age: now.saturating_duration_since(w.last_seen),
                live: self.is_live(w, now),
                draining: w.draining,
                views: self
                    .leases(name, w.session)
                    .into_iter()
                    .map(|(v, _)| v)
                    .collect(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(4);

    fn set(v: &[u64]) -> BTreeSet<u64> {
        v.iter().copied().collect()
    }

    /// Plans and applies until nothing changes, as the service does on every report.
    fn settle(p: &mut Placement, views: &[u64], now: Instant) -> Vec<Change> {
        let mut all = Vec::new();
        for _ in 0..10 {
            let c = p.plan(views, now);
            if c.is_empty() {
                break;
            }
            p.apply(&c, None);
            all.extend(c);
        }
        all
    }

    #[test]
    fn views_spread_over_workers_and_epochs_grow_on_every_grant() {
        let t0 = Instant::now();
        let mut p = Placement::new(LEASE, t0, vec![], 1);
        p.heartbeat("a", 1, false, set(&[]), &[], t0).expect("a");
        settle(&mut p, &[1, 2, 3, 4], t0);
        assert_eq!(p.leases("a", 1).len(), 4);
        assert!(p.leases("a", 1).iter().all(|(_, e)| *e == 1));
        // A second worker: views move one at a time, each only once its holder let it go.
        p.heartbeat("b", 7, false, set(&[]), &[], t0).expect("b");
        let c = settle(&mut p, &[1, 2, 3, 4], t0);
        assert_eq!(c.len(), 1, "{c:?}");
        let Change::Release { view: moving } = c[0] else {
            panic!("{c:?}")
        };
        assert!(!p.leases("a", 1).iter().any(|(v, _)| *v == moving));
        assert!(p.leases("b", 7).is_empty(), "not before a confirms");
        // A report sent before a heard of the release proves nothing, even one without the
        // view; nor does one that still shows it stopping.
        p.heartbeat("a", 1, false, set(&[]), &[], t0).expect("a");
        assert!(settle(&mut p, &[1, 2, 3, 4], t0).is_empty());
        p.heartbeat("a", 1, false, set(&[1, 2, 3, 4]), &[], t0)
            .expect("a");
        assert!(settle(&mut p, &[1, 2, 3, 4], t0).is_empty());
        // a acts on what it is told, as the worker does: it runs what it holds.
        for _ in 0..12 {
            let held: Vec<u64> = p.leases("a", 1).into_iter().map(|(v, _)| v).collect();
            p.heartbeat("a", 1, false, set(&held), &[], t0).expect("a");
            p.heartbeat("b", 7, false, set(&[]), &[], t0).expect("b");
            settle(&mut p, &[1, 2, 3, 4], t0);
        }
        assert_eq!(p.leases("a", 1).len(), 2);
        assert_eq!(p.leases("b", 7).len(), 2);
        assert!(p.leases("b", 7).iter().all(|(_, e)| *e == 2), "a new epoch");
    }

    #[test]
    fn a_lapsed_worker_loses_its_views_and_cannot_come_back_as_a_twin() {
        let t0 = Instant::now();
        let mut p = Placement::new(LEASE, t0, vec![], 1);
        p.heartbeat("a", 1, false, set(&[]), &[], t0).expect("a");
        settle(&mut p, &[1], t0);
        p.heartbeat("b", 2, false, set(&[]), &[], t0).expect("b");
        settle(&mut p, &[1], t0);
        assert_eq!(p.leases("a", 1), vec![(1, 1)]);
        // A second process under a live name is refused.
        let err = p
            .heartbeat("a", 9, false, set(&[]), &[], t0)
            .expect_err("twin");
        assert!(err.contains("already running"), "{err}");
        // a stops reporting; b keeps reporting; just before the lease ends nothing moves.
        let t1 = t0 + LEASE - Duration::from_millis(1);
        p.heartbeat("b", 2, false, set(&[]), &[], t1).expect("b");
        assert!(settle(&mut p, &[1], t1).is_empty());
        let t2 = t0 + LEASE;
        p.heartbeat("b", 2, false, set(&[]), &[], t2).expect("b");
        settle(&mut p, &[1], t2);
        assert_eq!(p.leases("b", 2), vec![(1, 2)]);
        // a comes back (resumed, or restarted): same session gets nothing back.
        p.heartbeat("a", 1, false, set(&[1]), &[], t2)
            .expect("a again");
        settle(&mut p, &[1], t2);
        assert!(p.leases("a", 1).is_empty());
    }

    #[test]
    fn a_restarted_coordinator_keeps_grants_for_one_lease_and_epochs_never_repeat() {
        let t0 = Instant::now();
        let stored = vec![(
            5,
            Grant {
                epoch: 9,
                holder: Holder {
                    worker: "a".into(),
                    session: 3,
                },
            },
        )];
        let mut p = Placement::new(LEASE, t0, stored, 1);
        p.heartbeat("b", 4, false, set(&[]), &[], t0).expect("b");
        assert!(settle(&mut p, &[5], t0).is_empty(), "a may still be alive");
        // Nor may another process take a's name before a's lease could have lapsed.
        let err = p
            .heartbeat("a", 77, false, set(&[]), &[], t0)
            .expect_err("twin after a restart");
        assert!(
            err.contains("held views when the coordinator started"),
            "{err}"
        );
        // a reports in time with its session: it keeps the lease and its epoch.
        p.heartbeat("a", 3, false, set(&[5]), &[], t0 + Duration::from_secs(1))
            .expect("a");
        settle(&mut p, &[5], t0 + Duration::from_secs(1));
        assert_eq!(p.leases("a", 3), vec![(5, 9)]);
        // a restarts under a new session once its lease lapsed: a new epoch.
        let t = t0 + Duration::from_secs(1) + LEASE;
        p.heartbeat("a", 8, false, set(&[]), &[], t)
            .expect("a restarted");
        p.heartbeat("b", 4, false, set(&[]), &[], t).expect("b");
        settle(&mut p, &[5], t);
        let all: Vec<(u64, u64)> = p
            .leases("a", 8)
            .into_iter()
            .chain(p.leases("b", 4))
            .collect();
        assert_eq!(all, vec![(5, 10)]);
    }

    #[test]
    fn draining_moves_every_view_and_dropped_views_are_forgotten() {
        let t0 = Instant::now();
        let mut p = Placement::new(LEASE, t0, vec![], 1);
        p.heartbeat("a", 1, false, set(&[]), &[], t0).expect("a");
        settle(&mut p, &[1, 2], t0);
        assert!(
            p.drain("a", t0).is_err(),
            "no other worker to take the views"
        );
        p.heartbeat("b", 2, false, set(&[]), &[], t0).expect("b");
        assert!(p.drain("nobody", t0).is_err());
        assert_eq!(p.drain("a", t0), Ok(2));
        settle(&mut p, &[1, 2], t0);
        assert!(p.leases("a", 1).is_empty(), "released");
        assert!(p.leases("b", 2).is_empty(), "not before a confirms");
        // The worker's own report (not yet aware) does not undo the drain.
        p.heartbeat("a", 1, false, set(&[]), &[], t0).expect("a");
        assert!(p.draining("a"));
        assert!(
            settle(&mut p, &[1, 2], t0).is_empty(),
            "a has not heard yet"
        );
        p.heartbeat("a", 1, true, set(&[]), &[], t0)
            .expect("a stopped them");
        settle(&mut p, &[1, 2], t0);
        assert_eq!(p.leases("b", 2), vec![(1, 2), (2, 2)]);
        let c = settle(&mut p, &[2], t0);
        assert_eq!(c, vec![Change::Forget { view: 1 }]);
        assert!(p.grant(1).is_none());
    }

    #[test]
    fn a_release_decided_while_answering_the_holder_is_confirmed_by_its_next_report() {
        let t0 = Instant::now();
        let mut p = Placement::new(LEASE, t0, vec![], 400);
        p.heartbeat("a", 1, false, set(&[]), &[], t0).expect("a");
        settle(&mut p, &[1], t0);
        assert_eq!(
            p.leases("a", 1),
            vec![(1, 400)],
            "the first epoch is the floor"
        );
        p.heartbeat("b", 2, false, set(&[]), &[], t0).expect("b");
        p.drain("a", t0).expect("drain");
        // a reports; the release is decided while answering it, and the answer leaves it out.
        p.heartbeat("a", 1, true, set(&[1]), &[], t0).expect("a");
        let c = p.plan(&[1], t0);
        p.apply(&c, Some(("a", 1)));
        assert!(p.leases("a", 1).is_empty());
        // Its next report, without the view, lets it move.
        p.heartbeat("a", 1, true, set(&[]), &[], t0).expect("a");
        let c = p.plan(&[1], t0);
        p.apply(&c, Some(("a", 1)));
        assert_eq!(p.leases("b", 2), vec![(1, 401)]);
    }

    #[test]
    fn with_no_live_worker_a_view_waits() {
        let t0 = Instant::now();
        let mut p = Placement::new(LEASE, t0, vec![], 1);
        assert!(settle(&mut p, &[1], t0).is_empty());
        p.heartbeat("a", 1, true, set(&[]), &[], t0).expect("a");
        assert!(
            settle(&mut p, &[1], t0).is_empty(),
            "a draining worker takes nothing"
        );
    }
}
