//! Shared memory: one place for all live state (DESIGN.md). The master maps
//! an anonymous shared region before the first fork; every worker inherits
//! it. Each slot is written only by the process it belongs to (and cleared by
//! the master after reaping), so updates are plain atomic stores: no locks,
//! no syscalls, no Python.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::metrics::store::WorkerMetrics;

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
    pub requests: AtomicU64,
    exit_reason: AtomicU32,
}

impl Slot {
    pub fn state(&self) -> State {
        State::from_u32(self.state.load(Ordering::Acquire))
    }

    /// Marks the worker busy (a request started) or idle: a heartbeat and
    /// the state, without moving the state's entry time (requests flip
    /// these constantly; the exporter shows time in the booting/quitting
    /// states, not per request).
    pub fn set_busy(&self, busy: bool) {
        let s = if busy { State::Busy } else { State::Idle };
        self.state.store(s as u32, Ordering::Release);
        if busy {
            self.beat();
        }
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

    #[allow(dead_code)] // read by the exporter (gunicorn_worker_state's timestamp label)
    pub fn state_since(&self) -> u64 {
        self.state_since.load(Ordering::Relaxed)
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

pub fn monotonic_ms() -> u64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC);
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
}

impl Shm {
    pub fn new(slots: usize) -> Result<Shm, String> {
        Ok(Shm {
            slots: Mapping::new(slots)?,
            metrics: Mapping::new(slots + 1)?,
        })
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

    /// Hands a free slot to a new worker (master only). Returns its index.
    pub fn claim(&self) -> Option<usize> {
        (0..self.slots.len).find(|&i| {
            self.slot(i).is_some_and(|s| {
                if s.state() != State::Free {
                    return false;
                }
                s.generation.fetch_add(1, Ordering::AcqRel);
                s.pid.store(0, Ordering::Relaxed);
                s.requests.store(0, Ordering::Relaxed);
                s.exit_reason.store(0, Ordering::Relaxed);
                s.set_state(State::Booting);
                true
            })
        })
    }

    /// Returns a reaped worker's slot to the pool (master only), folding its
    /// metrics into the retired accumulator first so totals stay monotonic.
    pub fn release(&self, i: usize) {
        if let (Some(m), Some(retired)) = (self.metrics(i), self.metrics.get(self.slots.len)) {
            m.fold_into(retired);
            m.clear();
        }
        if let Some(s) = self.slot(i) {
            s.pid.store(0, Ordering::Relaxed);
            s.state.store(State::Free as u32, Ordering::Release);
        }
    }
}

// SAFETY: the region holds only atomics; every access goes through &Slot
// with atomic operations, so sharing the handle between threads is sound.
unsafe impl Send for Shm {}
// SAFETY: as above.
unsafe impl Sync for Shm {}

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
        let i = shm.claim().unwrap();
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
        assert_eq!(shm.claim(), Some(i));
    }
}
