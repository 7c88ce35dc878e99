//! Rolling reload (`reload_strategy = rolling`, the default): HUP replaces
//! the workers a few at a time. A new worker counts once it is ready (its
//! shared-memory slot left `booting`: app imported, post_worker_init done,
//! listeners polled); an old worker is told to stop only when a ready new
//! one takes its place, so the ready workers never number fewer than the
//! configured count. The arbiter stops the rollout when a new worker exits
//! before it is ready (see `Arbiter::abort_rollout`).
//!
//! This module is the decision alone, over a snapshot of the workers: what
//! to spawn and whom to retire at each turn of the master's loop.

use nix::unistd::Pid;

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
