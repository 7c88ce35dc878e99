//! Rolling reload (`reload_strategy = rolling`, the default): HUP replaces
//! the workers a few at a time. A new worker counts once it is ready (its
//! shared-memory slot left `booting`: app imported, post_worker_init done,
//! listeners polled); an old worker is told to stop only when a ready new
//! one takes its place, so the ready workers never number fewer than the
//! configured count. A new worker that exits before it is ready stops the
//! rollout, not the server ([`Arbiter::abort_rollout`]).
//!
//! [`Rollout::plan`] is the decision, over a snapshot of the workers: what to
//! spawn and whom to retire at each turn of the master's loop (every 50 ms
//! while a rollout runs). The `impl Arbiter` below acts on it.

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::{Arbiter, Halt};
use crate::shm::Slot;
use crate::worker::{APP_LOAD_ERROR, WORKER_BOOT_ERROR};

/// One live worker (not already told to stop), as the rollout sees it.
#[derive(Clone, Copy, Debug)]
pub struct Member {
    pub pid: Pid,
    /// Spawn order: the oldest old workers are retired first.
    pub age: u64,
    /// The reload generation the worker was spawned in.
    pub generation: u64,
    /// Booted and serving (slot state idle or busy).
    pub ready: bool,
}

/// A rollout in progress.
#[derive(Debug)]
pub struct Rollout {
    /// Workers spawned in this generation are the new ones.
    pub generation: u64,
    /// New workers booting at once, at most: a quarter of the target,
    /// rounded up (the extra processes during the rollout).
    batch: usize,
}

/// What the master does at one turn.
#[derive(Debug, PartialEq, Eq)]
pub struct Plan {
    /// New workers to fork.
    pub spawn: usize,
    /// Old workers to stop gracefully (their places are taken by ready new
    /// ones, or the target went down).
    pub retire: Vec<Pid>,
    /// Once `retire` is done, no old worker is left and no new one is
    /// booting or to spawn: the reload is over.
    pub done: bool,
}

impl Rollout {
    pub fn new(generation: u64, target: usize) -> Rollout {
        Rollout {
            generation,
            batch: target.div_ceil(4).max(1),
        }
    }

    pub fn batch(&self) -> usize {
        self.batch
    }

    /// The next step towards `target` ready new workers, given every worker
    /// not already told to stop.
    pub fn plan(&self, target: usize, workers: &[Member]) -> Plan {
        let mut old: Vec<&Member> = workers
            .iter()
            .filter(|m| m.generation < self.generation)
            .collect();
        old.sort_by_key(|m| m.age);
        let (new_ready, new_booting) = workers
            .iter()
            .filter(|m| m.generation >= self.generation)
            .fold((0usize, 0usize), |(r, b), m| {
                if m.ready {
                    (r + 1, b)
                } else {
                    (r, b + 1)
                }
            });
        // Every old worker beyond what the ready new ones leave to fill.
        let excess = old
            .len()
            .saturating_add(new_ready)
            .saturating_sub(target)
            .min(old.len());
        let retire: Vec<Pid> = old.iter().take(excess).map(|m| m.pid).collect();
        let old_left = old.len() - excess;
        let spawn = target
            .saturating_sub(new_ready.saturating_add(new_booting))
            .min(self.batch.saturating_sub(new_booting));
        Plan {
            spawn,
            retire,
            done: old_left == 0 && new_booting == 0 && spawn == 0,
        }
    }
}

/// The master's side: start, step and stop a rollout.
impl Arbiter {
    /// Begins a rolling reload (the main loop's turns carry it on). Workers
    /// still booting give no capacity and would serve the previous code:
    /// they are stopped now.
    pub(super) fn start_rollout(&mut self) {
        for (pid, w) in self.workers.iter_mut() {
            let booting = self.shm.slot(w.slot).is_none_or(|s| !s.ready());
            if w.retired.is_none() && booting {
                w.retired = Some("reload");
                let _ = kill(*pid, Signal::SIGTERM);
            }
        }
        let r = Rollout::new(self.generation, self.num_workers);
        crate::log_info!(
            "Rolling reload: {} worker{}, {} at a time; each old one stops once a new one is ready",
            self.num_workers,
            if self.num_workers == 1 { "" } else { "s" },
            r.batch()
        );
        self.rollout = Some(r);
        // A boot failure after a failed reload waits no longer.
        self.spawn_not_before = None;
    }

    /// One turn of the rolling reload: retire the old workers whose places
    /// ready new ones took, spawn the next new ones; end it when done.
    pub(super) fn step_rollout(&mut self) -> Result<(), Halt> {
        let Some(r) = &self.rollout else {
            return Ok(());
        };
        let shm = self.shm;
        let members: Vec<Member> = self
            .workers
            .iter_mut()
            .filter(|(_, w)| w.retired.is_none())
            .map(|(pid, w)| {
                let ready = shm.slot(w.slot).is_some_and(Slot::ready);
                w.seen_ready |= ready;
                Member {
                    pid: *pid,
                    age: w.age,
                    generation: w.generation,
                    ready,
                }
            })
            .collect();
        let plan = r.plan(self.num_workers, &members);
        for pid in plan.retire {
            if let Some(w) = self.workers.get_mut(&pid) {
                w.retired = Some("reload");
                let _ = kill(pid, Signal::SIGTERM);
            }
        }
        for _ in 0..plan.spawn {
            self.spawn_worker()?;
        }
        if plan.done {
            crate::log_info!(
                "Rolling reload done: {} workers of the new generation serving",
                self.num_workers
            );
            self.rollout = None;
            self.reload_failed = false;
        }
        Ok(())
    }

    /// A new worker of the rolling reload exited before it was ready: stop
    /// the rollout. Its booting siblings are stopped; the workers serving
    /// (old ones, and new ones already ready) keep serving.
    pub(super) fn abort_rollout(&mut self, pid: Pid, status: Result<i32, Signal>) {
        let Some(r) = self.rollout.take() else {
            return;
        };
        let why = match status {
            Ok(WORKER_BOOT_ERROR) => "failed to boot".to_owned(),
            Ok(APP_LOAD_ERROR) => "failed to load the app".to_owned(),
            Ok(code) => format!("exited with code {code} before it was ready"),
            Err(sig) => format!("was killed by {} before it was ready", sig.as_str()),
        };
        let mut stopped = 0;
        for (p, w) in self.workers.iter_mut() {
            let ready = self.shm.slot(w.slot).is_some_and(Slot::ready);
            if w.retired.is_none() && w.generation == r.generation && !ready {
                w.retired = Some("reload");
                let _ = kill(*p, Signal::SIGTERM);
                stopped += 1;
            }
        }
        let serving = self.active_workers();
        crate::log_error!(
            "Reload failed: new worker (pid:{pid}) {why} (its error is logged above); the rolling \
             reload stops{}, the {serving} workers serving keep serving. Fix the cause and send HUP again.",
            if stopped > 0 {
                format!(" ({stopped} other new workers still booting are stopped)")
            } else {
                String::new()
            }
        );
        if let Some(m) = self.shm.master() {
            m.count_reload_failure();
        }
        self.reload_failed = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(pid: i32, generation: u64, ready: bool) -> Member {
        Member {
            pid: Pid::from_raw(pid),
            age: pid as u64,
            generation,
            ready,
        }
    }

    /// Plays a rollout to its end: each turn applies the plan, then the
    /// booting new workers become ready. Returns the fewest ready workers
    /// seen at any time and the number of turns.
    fn play(target: usize, old: usize) -> (usize, usize) {
        let r = Rollout::new(1, target);
        let mut workers: Vec<Member> = (0..old).map(|i| member(i as i32 + 1, 0, true)).collect();
        let mut next_pid = 100;
        let mut fewest = usize::MAX;
        for turn in 1..100 {
            let p = r.plan(target, &workers);
            workers.retain(|m| !p.retire.contains(&m.pid));
            if p.done {
                assert!(workers.iter().all(|m| m.generation == 1 && m.ready));
                assert_eq!(workers.len(), target);
                return (fewest, turn);
            }
            fewest = fewest.min(workers.iter().filter(|m| m.ready).count());
            for _ in 0..p.spawn {
                workers.push(member(next_pid, 1, false));
                next_pid += 1;
            }
            let booting = workers.iter().filter(|m| !m.ready).count();
            assert!(booting <= r.batch(), "{booting} booting at once");
            for m in workers.iter_mut() {
                m.ready = true;
            }
        }
        panic!("the rollout never ended");
    }

    #[test]
    fn capacity_never_drops_below_the_target() {
        for n in 1..=9 {
            let (fewest, _) = play(n, n);
            assert!(fewest >= n, "{n} workers: {fewest} ready at one point");
        }
    }

    #[test]
    fn a_changed_target_is_reached() {
        // more workers: the old ones serve until the new ones are ready
        let (fewest, _) = play(6, 4);
        assert_eq!(fewest, 4);
        // fewer: the extra old ones are retired at once
        let (fewest, _) = play(2, 4);
        assert_eq!(fewest, 2);
    }

    #[test]
    fn one_at_a_time_for_four_workers_oldest_first() {
        let r = Rollout::new(1, 4);
        let mut w: Vec<Member> = (1..=4).map(|p| member(p, 0, true)).collect();
        let p = r.plan(4, &w);
        assert_eq!((p.spawn, p.retire.clone(), p.done), (1, vec![], false));
        w.push(member(10, 1, false));
        // booting: nothing more
        assert_eq!(r.plan(4, &w).spawn, 0);
        assert!(r.plan(4, &w).retire.is_empty());
        w[4].ready = true;
        let p = r.plan(4, &w);
        // the oldest old one makes room, the next new one starts
        assert_eq!(p.retire, vec![Pid::from_raw(1)]);
        assert_eq!(p.spawn, 1);
    }

    #[test]
    fn a_lost_old_worker_is_replaced_by_a_new_one() {
        let r = Rollout::new(1, 4);
        // one old worker died during the rollout: a new one per batch still
        let w: Vec<Member> = (1..=3).map(|p| member(p, 0, true)).collect();
        let p = r.plan(4, &w);
        assert_eq!((p.spawn, p.retire.len(), p.done), (1, 0, false));
    }

    #[test]
    fn zero_target_retires_everyone() {
        let r = Rollout::new(1, 0);
        let w: Vec<Member> = (1..=3).map(|p| member(p, 0, true)).collect();
        let p = r.plan(0, &w);
        assert_eq!((p.spawn, p.retire.len(), p.done), (0, 3, true));
    }
}
