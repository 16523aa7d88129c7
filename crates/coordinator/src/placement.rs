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
    /// Answers issued to this session (each numbered), and the last one the worker said it
    /// acted on: its `running` reflects that answer.
    answers: u64,
    acted_on: u64,
}

#[derive(Debug)]
struct Assignment {
    grant: Grant,
    /// Being released: the number of the first answer to the holder that leaves the view out.
    /// A report from a worker that acted on that answer (or a later one) and no longer runs
    /// the view confirms it stopped; an answer lost on the way confirms nothing.
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
    #[allow(clippy::too_many_arguments)]
    pub fn heartbeat(
        &mut self,
        name: &str,
        session: u64,
        draining: bool,
        running: BTreeSet<u64>,
        sizes: &[(u64, u64)],
        acted_on: u64,
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
        let (draining, answers) = match self.workers.get(name) {
            Some(w) if w.session != session && self.is_live(w, now) => {
                return Err(format!(
                    "a central worker named '{name}' is already running (session {:x}, last report {} ms ago): if that process is gone, this one is accepted once its lease lapses; otherwise give each worker its own --name",
                    w.session,
                    now.saturating_duration_since(w.last_seen).as_millis()
                ));
            }
            Some(w) if w.session == session => (draining || w.draining, w.answers),
            _ => (draining, 0),
        };
        self.workers.insert(
            name.to_string(),
            Worker {
                session,
                last_seen: now,
                draining,
                running,
                answers,
                acted_on: acted_on.min(answers),
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
                        if w.is_some_and(|w| w.acted_on >= confirming && !w.running.contains(&v)) {
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

    /// Makes changes visible (grants and forgets only once persisted).
    pub fn apply(&mut self, changes: &[Change]) {
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
                        let answers = self
                            .workers
                            .get(&h.worker)
                            .filter(|w| w.session == h.session)
                            .map_or(0, |w| w.answers);
                        a.releasing = Some(answers + 1);
                    }
                }
            }
        }
    }

    /// Issues the next numbered answer to a worker session: the leases it holds now.
    pub fn answer(&mut self, name: &str, session: u64) -> (u64, Vec<(u64, u64)>) {
        let leases = self.leases(name, session);
        let number = match self.workers.get_mut(name) {
            Some(w) if w.session == session => {
                w.answers += 1;
                w.answers
            }
            _ => 0,
        };
        (number, leases)
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

    /// Plans and applies until nothing changes.
    fn settle(p: &mut Placement, views: &[u64], now: Instant) -> Vec<Change> {
        let mut all = Vec::new();
        for _ in 0..10 {
            let c = p.plan(views, now);
            if c.is_empty() {
                break;
            }
            p.apply(&c);
            all.extend(c);
        }
        all
    }

    fn answers(p: &Placement, name: &str, session: u64) -> u64 {
        p.workers
            .get(name)
            .filter(|w| w.session == session)
            .map_or(0, |w| w.answers)
    }

    /// A report as the service takes it from a worker that acted on every answer it got:
    /// heartbeat, placement, then the next answer (the leases it may run).
    fn report(
        p: &mut Placement,
        name: &str,
        session: u64,
        draining: bool,
        running: &[u64],
        views: &[u64],
        now: Instant,
    ) -> Result<Vec<(u64, u64)>, String> {
        let acted = answers(p, name, session);
        p.heartbeat(name, session, draining, set(running), &[], acted, now)?;
        settle(p, views, now);
        Ok(p.answer(name, session).1)
    }

    /// Runs workers that act on what they are told (they run exactly what they hold) until
    /// placement is stable.
    fn run_workers(p: &mut Placement, workers: &[(&str, u64)], views: &[u64], now: Instant) {
        let mut held: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
        for _ in 0..20 {
            for &(name, session) in workers {
                let running = held.get(name).cloned().unwrap_or_default();
                let leases = report(p, name, session, false, &running, views, now).expect("report");
                held.insert(name, leases.into_iter().map(|(v, _)| v).collect());
            }
        }
    }

    #[test]
    fn views_spread_over_workers_and_epochs_grow_on_every_grant() {
        let t0 = Instant::now();
        let views = [1, 2, 3, 4];
        let mut p = Placement::new(LEASE, t0, vec![], 1);
        assert_eq!(
            report(&mut p, "a", 1, false, &[], &views, t0)
                .expect("a")
                .len(),
            4
        );
        assert!(p.leases("a", 1).iter().all(|(_, e)| *e == 1));
        // A second worker: a view is released, and moves only once a confirms.
        let b = report(&mut p, "b", 7, false, &[], &views, t0).expect("b");
        assert!(b.is_empty(), "not before a confirms");
        let leased_a = p.leases("a", 1);
        assert_eq!(leased_a.len(), 3, "one view released");
        let moving = views
            .into_iter()
            .find(|v| !leased_a.iter().any(|(l, _)| l == v))
            .expect("released view");
        // a still runs it (its answer telling it to stop is not acted on yet): no move.
        p.heartbeat("a", 1, false, set(&views), &[], answers(&p, "a", 1) - 1, t0)
            .expect("a");
        assert!(settle(&mut p, &views, t0).is_empty());
        // A report that acted on an older answer proves nothing, even without the view.
        p.heartbeat("a", 1, false, set(&[]), &[], 0, t0).expect("a");
        assert!(settle(&mut p, &views, t0).is_empty());
        assert!(p.leases("b", 7).is_empty());
        // Workers that act on what they are told end balanced, every move under a new epoch.
        run_workers(&mut p, &[("a", 1), ("b", 7)], &views, t0);
        assert_eq!(p.leases("a", 1).len(), 2);
        assert_eq!(p.leases("b", 7).len(), 2);
        assert!(p.leases("b", 7).iter().all(|(_, e)| *e == 2), "a new epoch");
        assert!(p.leases("b", 7).iter().any(|(v, _)| *v == moving));
    }

    #[test]
    fn an_answer_lost_on_the_way_confirms_nothing() {
        let t0 = Instant::now();
        let mut p = Placement::new(LEASE, t0, vec![], 1);
        report(&mut p, "a", 1, false, &[], &[1], t0).expect("a");
        report(&mut p, "a", 1, false, &[1], &[1], t0).expect("a runs 1");
        report(&mut p, "b", 2, false, &[], &[1], t0).expect("b");
        p.drain("a", t0).expect("drain");
        // a's next report: the answer releasing view 1 is issued, but never reaches a.
        report(&mut p, "a", 1, false, &[1], &[1], t0).expect("a");
        let lost = answers(&p, "a", 1);
        // a's following report, acting on the answer before, happens not to list the view
        // (say it was restarting it): no confirmation.
        p.heartbeat("a", 1, false, set(&[]), &[], lost - 1, t0)
            .expect("a");
        assert!(settle(&mut p, &[1], t0).is_empty());
        assert!(p.leases("b", 2).is_empty());
        // Once a acted on an answer without the view and runs it no more, it moves.
        p.heartbeat("a", 1, true, set(&[]), &[], lost, t0)
            .expect("a");
        settle(&mut p, &[1], t0);
        assert_eq!(p.leases("b", 2), vec![(1, 2)]);
    }

    #[test]
    fn a_lapsed_worker_loses_its_views_and_cannot_come_back_as_a_twin() {
        let t0 = Instant::now();
        let mut p = Placement::new(LEASE, t0, vec![], 1);
        report(&mut p, "a", 1, false, &[], &[1], t0).expect("a");
        report(&mut p, "b", 2, false, &[], &[1], t0).expect("b");
        assert_eq!(p.leases("a", 1), vec![(1, 1)]);
        // A second process under a live name is refused.
        let err = p
            .heartbeat("a", 9, false, set(&[]), &[], 0, t0)
            .expect_err("twin");
        assert!(err.contains("already running"), "{err}");
        // a stops reporting; b keeps reporting; just before the lease ends nothing moves.
        let t1 = t0 + LEASE - Duration::from_millis(1);
        report(&mut p, "b", 2, false, &[], &[1], t1).expect("b");
        assert!(p.leases("b", 2).is_empty());
        let t2 = t0 + LEASE;
        assert_eq!(
            report(&mut p, "b", 2, false, &[], &[1], t2).expect("b"),
            vec![(1, 2)]
        );
        // a comes back (resumed, or restarted): same session gets nothing back.
        assert!(report(&mut p, "a", 1, false, &[1], &[1], t2)
            .expect("a again")
            .is_empty());
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
        assert!(
            report(&mut p, "b", 4, false, &[], &[5], t0)
                .expect("b")
                .is_empty(),
            "a may still be alive"
        );
        // Nor may another process take a's name before a's lease could have lapsed.
        let err = p
            .heartbeat("a", 77, false, set(&[]), &[], 0, t0)
            .expect_err("twin after a restart");
        assert!(
            err.contains("held views when the coordinator started"),
            "{err}"
        );
        // a reports in time with its session: it keeps the lease and its epoch.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(
            report(&mut p, "a", 3, false, &[5], &[5], t1).expect("a"),
            vec![(5, 9)]
        );
        // a restarts under a new session once its lease lapsed: a new epoch.
        let t = t1 + LEASE;
        report(&mut p, "a", 8, false, &[], &[5], t).expect("a restarted");
        report(&mut p, "b", 4, false, &[], &[5], t).expect("b");
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
        let mut p = Placement::new(LEASE, t0, vec![], 400);
        report(&mut p, "a", 1, false, &[], &[1, 2], t0).expect("a");
        assert_eq!(
            p.leases("a", 1),
            vec![(1, 400), (2, 400)],
            "the first epoch is the floor"
        );
        assert!(
            p.drain("a", t0).is_err(),
            "no other worker to take the views"
        );
        report(&mut p, "b", 2, false, &[], &[1, 2], t0).expect("b");
        assert!(p.drain("nobody", t0).is_err());
        assert_eq!(p.drain("a", t0), Ok(2));
        // a's report (not yet aware) does not undo the drain; the answer leaves both out.
        assert!(report(&mut p, "a", 1, false, &[1, 2], &[1, 2], t0)
            .expect("a")
            .is_empty());
        assert!(p.draining("a"));
        assert!(p.leases("b", 2).is_empty(), "not before a confirms");
        // a acted on it and stopped them: they move.
        report(&mut p, "a", 1, true, &[], &[1, 2], t0).expect("a");
        assert_eq!(p.leases("b", 2), vec![(1, 401), (2, 401)]);
        let c = settle(&mut p, &[2], t0);
        assert_eq!(c, vec![Change::Forget { view: 1 }]);
        assert!(p.grant(1).is_none());
    }

    #[test]
    fn with_no_live_worker_a_view_waits() {
        let t0 = Instant::now();
        let mut p = Placement::new(LEASE, t0, vec![], 1);
        assert!(settle(&mut p, &[1], t0).is_empty());
        assert!(
            report(&mut p, "a", 1, true, &[], &[1], t0)
                .expect("a")
                .is_empty(),
            "a draining worker takes nothing"
        );
    }
}
