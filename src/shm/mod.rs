//! Shared memory: one place for all live state (docs/architecture.md). The
//! master maps an anonymous shared region before the first fork; every
//! worker inherits it. Each slot is written only by the process it belongs to (and cleared by
//! the master after reaping), so updates are plain atomic stores: no locks,
//! no syscalls, no Python. Within a worker, any number of threads may record
//! requests at once: counters are atomic adds, the busy state is a count of
//! requests in progress, and the failed-request table ([`errors`]) claims
//! its entries with a compare-and-swap.
//!
//! The layout of the metric tables is the `metrics` module's
//! ([`WorkerMetrics`]); this module maps them and hands them out per slot.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::metrics::store::WorkerMetrics;

mod errors;
mod inflight;
mod statsd;

pub use errors::ErrorTable;
pub use inflight::{InFlight, Ticket};
pub use statsd::{LogCounts, StatsdSent};

/// Worker states, as exported later by `gunicorn_worker_state`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Free = 0,
    Booting = 1,
    Idle = 2,
    Busy = 3,
    Quitting = 4,
    Aborting = 5,
}

impl State {
    fn from_u32(v: u32) -> State {
        match v {
            1 => State::Booting,
            2 => State::Idle,
            3 => State::Busy,
            4 => State::Quitting,
            5 => State::Aborting,
            _ => State::Free,
        }
    }
}

/// Why a worker left, written by the worker itself before it exits
/// (the master adds the causes only it can know: timeout, signal, reload).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitReason {
    Unknown = 0,
    MaxRequests = 1,
    Shutdown = 2,
}

/// One worker's live state.
#[repr(C, align(64))]
pub struct Slot {
    /// Bumped each time the slot is handed to a new worker, so a reader can
    /// tell that the slot was recycled while it read.
    pub generation: AtomicU64,
    pub pid: AtomicU32,
    state: AtomicU32,
    /// CLOCK_MONOTONIC milliseconds of the last sign of life (system-wide
    /// clock, so master and workers compare the same time base).
    heartbeat_ms: AtomicU64,
    /// CLOCK_MONOTONIC milliseconds when the worker entered its current
    /// state (the exporter converts it to wall-clock time).
    state_since: AtomicU64,
    /// gunicorn's `worker.nr`: counted when a request starts (hooks see the
    /// current one included). The request metrics count on completion, with
    /// the status; this is not a copy of them.
    pub requests: AtomicU64,
    exit_reason: AtomicU32,
    /// Requests being handled right now, by all threads of the worker
    /// ([`Slot::begin_request`]): the worker shows as busy while this is
    /// above zero. (Fits the padding after `exit_reason`: a slot stays one
    /// 64-byte cache line.)
    in_progress: AtomicU32,
    /// gunicorn's worker age (spawn order), for the `worker_id` label.
    pub age: AtomicU64,
    /// CLOCK_MONOTONIC milliseconds when the master forked the worker.
    born_ms: AtomicU64,
}

impl Slot {
    /// The worker's state: Busy while it handles a request (Idle with a
    /// request in progress reads as Busy).
    pub fn state(&self) -> State {
        match State::from_u32(self.state.load(Ordering::Acquire)) {
            State::Idle if self.in_progress.load(Ordering::Relaxed) > 0 => State::Busy,
            s => s,
        }
    }

    /// Booted and serving (idle or busy): the app is imported,
    /// post_worker_init has run and the listeners are polled.
    pub fn ready(&self) -> bool {
        matches!(self.state(), State::Idle | State::Busy)
    }

    /// A request starts (any thread of the worker): a heartbeat, and the
    /// worker reads as busy until every request begun has ended. It leaves the state's entry time alone (requests
    /// come and go constantly; the exporter shows time in the
    /// booting/quitting states, not per request). The state itself stays
    /// what [`Slot::set_state`] made it, so two threads starting and ending
    /// requests at once cannot leave a wrong state behind. Returns the
    /// heartbeat's time (CLOCK_MONOTONIC ms), the request's start for the
    /// in-flight table: one clock read per request.
    pub fn begin_request(&self) -> u64 {
        self.in_progress.fetch_add(1, Ordering::Relaxed);
        let now = monotonic_ms();
        self.heartbeat_ms.store(now, Ordering::Relaxed);
        now
    }

    /// A request begun with [`Slot::begin_request`] ended.
    pub fn end_request(&self) {
        if self.in_progress.fetch_sub(1, Ordering::Relaxed) == 0 {
            // More ends than begins (a bug in the caller): stay at zero
            // rather than read as busy forever.
            self.in_progress.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Requests in progress (see [`Slot::begin_request`]).
    #[cfg(test)]
    fn in_progress(&self) -> u32 {
        self.in_progress.load(Ordering::Relaxed)
    }

    /// Records a state change (and its time) plus a heartbeat.
    pub fn set_state(&self, s: State) {
        let now = monotonic_ms();
        if self.state.load(Ordering::Relaxed) != s as u32 {
            self.state_since.store(now, Ordering::Relaxed);
            self.state.store(s as u32, Ordering::Release);
        }
        self.heartbeat_ms.store(now, Ordering::Relaxed);
    }

    /// CLOCK_MONOTONIC milliseconds when the current state was entered.
    pub fn state_since(&self) -> u64 {
        self.state_since.load(Ordering::Relaxed)
    }

    /// CLOCK_MONOTONIC milliseconds when the worker was forked.
    pub fn born_ms(&self) -> u64 {
        self.born_ms.load(Ordering::Relaxed)
    }

    /// gunicorn's `worker.notify()`.
    pub fn beat(&self) {
        self.heartbeat_ms.store(monotonic_ms(), Ordering::Relaxed);
    }

    /// Milliseconds since the last heartbeat.
    pub fn silent_for_ms(&self) -> u64 {
        monotonic_ms().saturating_sub(self.heartbeat_ms.load(Ordering::Relaxed))
    }

    pub fn set_exit_reason(&self, r: ExitReason) {
        self.exit_reason.store(r as u32, Ordering::Relaxed);
    }

    pub fn exit_reason(&self) -> ExitReason {
        match self.exit_reason.load(Ordering::Relaxed) {
            1 => ExitReason::MaxRequests,
            2 => ExitReason::Shutdown,
            _ => ExitReason::Unknown,
        }
    }
}

/// CLOCK_MONOTONIC in milliseconds, from the coarse clock (the kernel's
/// last tick, 1-4 ms old): heartbeats and state times need no more, and
/// it reads no time-stamp counter (a heartbeat is taken per request).
pub fn monotonic_ms() -> u64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC_COARSE);
    ts.map(|t| t.tv_sec() as u64 * 1000 + t.tv_nsec() as u64 / 1_000_000)
        .unwrap_or(0)
}

/// An anonymous shared mapping of `len` zeroed `T`s, inherited by every
/// child forked after it was made. `T` must consist of atomics only (all-zero
/// bytes are a valid value and shared access needs no lock).
struct Mapping<T> {
    base: std::ptr::NonNull<T>,
    len: usize,
}

impl<T> Mapping<T> {
    fn new(len: usize) -> Result<Mapping<T>, String> {
        let bytes = len
            .checked_mul(std::mem::size_of::<T>())
            .and_then(std::num::NonZeroUsize::new)
            .ok_or("shared memory size overflow")?;
        // SAFETY: an anonymous shared mapping with no address hint; the
        // kernel returns zeroed, page-aligned memory (valid all-zero values:
        // T holds only atomics) that lives until munmap in Drop. Pages are
        // only backed once touched (MAP_NORESERVE).
        let ptr = unsafe {
            nix::sys::mman::mmap_anonymous(
                None,
                bytes,
                nix::sys::mman::ProtFlags::PROT_READ | nix::sys::mman::ProtFlags::PROT_WRITE,
                nix::sys::mman::MapFlags::MAP_SHARED | nix::sys::mman::MapFlags::MAP_NORESERVE,
            )
        }
        .map_err(|e| format!("mapping {} bytes of shared memory: {e}", bytes.get()))?;
        Ok(Mapping {
            base: ptr.cast(),
            len,
        })
    }

    fn get(&self, i: usize) -> Option<&T> {
        // SAFETY: i is in bounds of the mapping, which outlives &self; T holds
        // only atomics, so shared references across processes are sound.
        (i < self.len).then(|| unsafe { &*self.base.as_ptr().add(i) })
    }
}

impl<T> Drop for Mapping<T> {
    fn drop(&mut self) {
        let bytes = self.len * std::mem::size_of::<T>();
        // SAFETY: base/len are exactly what mmap returned; no reference into
        // the mapping outlives it (get() borrows &self).
        let _ = unsafe { nix::sys::mman::munmap(self.base.cast(), bytes) };
    }
}

/// The shared region: `slots` worker slots, their request metrics, and the
/// retired accumulator (metrics of reaped workers, folded by the master).
pub struct Shm {
    slots: Mapping<Slot>,
    /// One per slot, then the retired accumulator at index `slots`.
    metrics: Mapping<WorkerMetrics>,
    /// One per slot: the worker's failed requests by label set.
    errors: Mapping<ErrorTable>,
    /// One per slot: the requests the worker is serving now.
    in_flight: Mapping<InFlight>,
    /// The master's own counters (written by the master only).
    master: Mapping<MasterStats>,
    /// Error-log lines at WARNING and above, by every process.
    log: Mapping<LogCounts>,
    /// What the exporter has sent to statsd (written by the exporter only).
    statsd: Mapping<StatsdSent>,
}

impl Shm {
    pub fn new(slots: usize) -> Result<Shm, String> {
        Ok(Shm {
            slots: Mapping::new(slots)?,
            metrics: Mapping::new(slots + 1)?,
            errors: Mapping::new(slots)?,
            in_flight: Mapping::new(slots)?,
            master: Mapping::new(1)?,
            log: Mapping::new(1)?,
            statsd: Mapping::new(1)?,
        })
    }

    /// Error-log lines counted by level (`crate::log::count_into`).
    pub fn log_counts(&self) -> Option<&LogCounts> {
        self.log.get(0)
    }

    /// The statsd totals sent so far.
    pub fn statsd_sent(&self) -> Option<&StatsdSent> {
        self.statsd.get(0)
    }

    /// Number of worker slots.
    pub fn len(&self) -> usize {
        self.slots.len
    }

    /// The failed-request table of slot `i`.
    pub fn errors(&self, i: usize) -> Option<&ErrorTable> {
        self.errors.get(i)
    }

    /// The requests in flight of slot `i`.
    pub fn in_flight(&self, i: usize) -> Option<&InFlight> {
        self.in_flight.get(i)
    }

    /// The master's counters.
    pub fn master(&self) -> Option<&MasterStats> {
        self.master.get(0)
    }

    pub fn slot(&self, i: usize) -> Option<&Slot> {
        self.slots.get(i)
    }

    /// The request metrics of slot `i`.
    pub fn metrics(&self, i: usize) -> Option<&WorkerMetrics> {
        (i < self.slots.len).then(|| self.metrics.get(i)).flatten()
    }

    /// Metrics of every worker reaped so far.
    pub fn retired(&self) -> Option<&WorkerMetrics> {
        self.metrics.get(self.slots.len)
    }

    /// Hands a free slot to a new worker of age `age` (master only).
    /// Returns its index.
    pub fn claim(&self, age: u64) -> Option<usize> {
        (0..self.slots.len).find(|&i| {
            self.slot(i).is_some_and(|s| {
                if s.state() != State::Free {
                    return false;
                }
                s.generation.fetch_add(1, Ordering::AcqRel);
                s.pid.store(0, Ordering::Relaxed);
                s.requests.store(0, Ordering::Relaxed);
                s.exit_reason.store(0, Ordering::Relaxed);
                s.in_progress.store(0, Ordering::Relaxed);
                s.age.store(age, Ordering::Relaxed);
                s.born_ms.store(monotonic_ms(), Ordering::Relaxed);
                s.set_state(State::Booting);
                true
            })
        })
    }

    /// Returns a reaped worker's slot to the pool (master only), folding its
    /// metrics into the retired accumulator first so totals stay monotonic.
    pub fn release(&self, i: usize) {
        let epoch = self.master().map(|m| &m.fold_epoch);
        if let Some(e) = epoch {
            e.fetch_add(1, Ordering::SeqCst);
        }
        if let (Some(m), Some(retired)) = (self.metrics(i), self.metrics.get(self.slots.len)) {
            m.fold_into(retired);
            m.clear();
        }
        if let Some(s) = self.slot(i) {
            // Not a live worker any more (before the epoch closes, so a
            // reader sees the slot either live and unfolded or gone).
            s.pid.store(0, Ordering::Relaxed);
            s.in_progress.store(0, Ordering::Relaxed);
            s.state.store(State::Free as u32, Ordering::Release);
        }
        if let Some(e) = self.errors(i) {
            e.clear();
        }
        if let Some(f) = self.in_flight(i) {
            f.clear();
        }
        if let Some(e) = epoch {
            e.fetch_add(1, Ordering::SeqCst);
        }
    }
}

// SAFETY: the region holds only atomics; every access goes through &Slot
// with atomic operations, so sharing the handle between threads is sound.
unsafe impl Send for Shm {}
// SAFETY: as above.
unsafe impl Sync for Shm {}

/// Why the master reaped a worker: the `reason` label of
/// gunicorn_master_worker_restarts_total, besides signal names.
pub const RESTART_REASONS: [&str; 9] = [
    "timeout",
    "max_requests",
    "memory",
    "lifetime",
    "reload",
    "ttou",
    "exit",
    "exit_code",
    "crash",
];

/// Signal numbers counted (1..=64).
const SIGNALS: usize = 65;

/// The master's counters: worker exits by cause and signals handled.
#[repr(C)]
pub struct MasterStats {
    restarts: [AtomicU64; RESTART_REASONS.len()],
    /// Workers killed by a signal the master did not send, by signal number.
    killed_by: [AtomicU64; SIGNALS],
    signals: [AtomicU64; SIGNALS],
    /// Odd while the master folds a reaped worker into the retired
    /// accumulator: a reader that sees it change (or odd) reads again, so a
    /// worker is never counted twice or not at all (totals stay monotonic).
    fold_epoch: AtomicU64,
    /// HUP reloads begun (the new configuration read), and those that
    /// failed: a configuration that does not load, or a rolling reload
    /// stopped because a new worker did not boot.
    reloads: AtomicU64,
    reload_failures: AtomicU64,
}

impl MasterStats {
    pub fn fold_epoch(&self) -> u64 {
        self.fold_epoch.load(Ordering::SeqCst)
    }

    /// Counts a worker exit with one of [`RESTART_REASONS`].
    pub fn count_restart(&self, reason: &str) {
        debug_assert!(
            RESTART_REASONS.contains(&reason),
            "restart reason {reason} is not in RESTART_REASONS"
        );
        if let Some(i) = RESTART_REASONS.iter().position(|r| *r == reason) {
            self.restarts[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a worker killed by signal `sig`.
    pub fn count_killed_by(&self, sig: i32) {
        if let Some(c) = usize::try_from(sig)
            .ok()
            .and_then(|i| self.killed_by.get(i))
        {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn count_signal(&self, sig: i32) {
        if let Some(c) = usize::try_from(sig).ok().and_then(|i| self.signals.get(i)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A reload begins (HUP, configuration read).
    pub fn count_reload(&self) {
        self.reloads.fetch_add(1, Ordering::Relaxed);
    }

    /// A reload failed (see [`MasterStats::reload_failures`]).
    pub fn count_reload_failure(&self) {
        self.reload_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Reloads begun.
    pub fn reloads(&self) -> u64 {
        self.reloads.load(Ordering::Relaxed)
    }

    /// Reloads that failed: the configuration did not load, or a new worker
    /// of a rolling reload did not boot.
    pub fn reload_failures(&self) -> u64 {
        self.reload_failures.load(Ordering::Relaxed)
    }

    /// (reason, count) for the named reasons.
    pub fn restarts(&self) -> Vec<(&'static str, u64)> {
        RESTART_REASONS
            .iter()
            .zip(&self.restarts)
            .map(|(r, c)| (*r, c.load(Ordering::Relaxed)))
            .collect()
    }

    /// (signal number, count) of workers killed by signals, non-zero only.
    pub fn killed_by(&self) -> Vec<(i32, u64)> {
        nonzero(&self.killed_by)
    }

    /// (signal number, count) of signals handled, non-zero only.
    pub fn signals(&self) -> Vec<(i32, u64)> {
        nonzero(&self.signals)
    }
}

fn nonzero(counts: &[AtomicU64]) -> Vec<(i32, u64)> {
    counts
        .iter()
        .enumerate()
        .filter_map(|(i, c)| {
            let n = c.load(Ordering::Relaxed);
            (n > 0).then_some((i as i32, n))
        })
        .collect()
}

static GLOBAL: std::sync::OnceLock<Shm> = std::sync::OnceLock::new();

/// Maps the process-wide region once (master, before the first fork);
/// children inherit it through fork.
pub fn init(slots: usize) -> Result<&'static Shm, String> {
    if let Some(s) = GLOBAL.get() {
        return Ok(s);
    }
    let shm = Shm::new(slots)?;
    Ok(GLOBAL.get_or_init(|| shm))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_shared_with_children() {
        let shm = Shm::new(4).unwrap();
        let i = shm.claim(1).unwrap();
        assert_eq!(shm.slot(i).unwrap().state(), State::Booting);
        // SAFETY: test-only fork; the child only touches the mapping and exits.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                let s = shm.slot(i).unwrap();
                s.set_state(State::Busy);
                s.requests.fetch_add(7, Ordering::Relaxed);
                s.set_exit_reason(ExitReason::MaxRequests);
                // SAFETY: immediate exit of the forked test child.
                unsafe { libc::_exit(0) };
            }
            nix::unistd::ForkResult::Parent { child } => {
                nix::sys::wait::waitpid(child, None).unwrap();
            }
        }
        let s = shm.slot(i).unwrap();
        assert_eq!(s.state(), State::Busy);
        assert_eq!(s.requests.load(Ordering::Relaxed), 7);
        assert_eq!(s.exit_reason(), ExitReason::MaxRequests);
        assert!(s.silent_for_ms() < 5_000);
        shm.release(i);
        assert_eq!(shm.slot(i).unwrap().state(), State::Free);
        assert_eq!(shm.claim(2), Some(i));
        assert_eq!(shm.slot(i).unwrap().age.load(Ordering::Relaxed), 2);
    }

    /// Threads of one worker begin and end requests at once: the worker is
    /// busy exactly while one is in progress, the state's entry time does
    /// not move, and a lifecycle state (quitting) is not hidden by requests.
    #[test]
    fn requests_in_progress_from_several_threads() {
        let shm = Shm::new(1).unwrap();
        let i = shm.claim(1).unwrap();
        let s = shm.slot(i).unwrap();
        s.set_state(State::Idle);
        let since = s.state_since();
        s.begin_request();
        s.begin_request();
        assert_eq!(s.state(), State::Busy);
        s.end_request();
        assert_eq!(s.state(), State::Busy);
        s.end_request();
        assert_eq!(s.state(), State::Idle);
        // A stray end does not make the worker look busy forever.
        s.end_request();
        assert_eq!((s.state(), s.in_progress()), (State::Idle, 0));

        const THREADS: usize = 8;
        let (begun, release) = (
            std::sync::Barrier::new(THREADS + 1),
            std::sync::Barrier::new(THREADS + 1),
        );
        std::thread::scope(|sc| {
            for _ in 0..THREADS {
                let (begun, release) = (&begun, &release);
                sc.spawn(move || {
                    for _ in 0..10_000 {
                        s.begin_request();
                        s.end_request();
                    }
                    s.begin_request();
                    begun.wait();
                    release.wait();
                    s.end_request();
                });
            }
            begun.wait();
            assert_eq!(s.in_progress(), THREADS as u32);
            assert_eq!(s.state(), State::Busy);
            release.wait();
        });
        assert_eq!((s.state(), s.in_progress()), (State::Idle, 0));
        assert_eq!(s.state_since(), since);

        s.begin_request();
        s.set_state(State::Quitting);
        assert_eq!(s.state(), State::Quitting);
        s.end_request();
        assert_eq!(s.state(), State::Quitting);
        // A recycled slot starts with no request in progress.
        s.begin_request();
        shm.release(i);
        assert_eq!(shm.claim(2), Some(i));
        s.set_state(State::Idle);
        assert_eq!((s.state(), s.in_progress()), (State::Idle, 0));
    }

    #[test]
    fn a_slot_is_one_cache_line() {
        assert_eq!(std::mem::size_of::<Slot>(), 64);
    }
}
