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
    /// gunicorn's `worker.nr`: counted when a request starts (hooks see the
    /// current one included). The request metrics count on completion, with
    /// the status; this is not a copy of them.
    pub requests: AtomicU64,
    exit_reason: AtomicU32,
    /// gunicorn's worker age (spawn order), for the `worker_id` label.
    pub age: AtomicU64,
    /// CLOCK_MONOTONIC milliseconds when the master forked the worker.
    born_ms: AtomicU64,
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
    /// One per slot: the worker's failed requests by label set.
    errors: Mapping<ErrorTable>,
    /// The master's own counters (written by the master only).
    master: Mapping<MasterStats>,
}

impl Shm {
    pub fn new(slots: usize) -> Result<Shm, String> {
        Ok(Shm {
            slots: Mapping::new(slots)?,
            metrics: Mapping::new(slots + 1)?,
            errors: Mapping::new(slots)?,
            master: Mapping::new(1)?,
        })
    }

    /// Number of worker slots.
    pub fn len(&self) -> usize {
        self.slots.len
    }

    /// The failed-request table of slot `i`.
    pub fn errors(&self, i: usize) -> Option<&ErrorTable> {
        self.errors.get(i)
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
            s.state.store(State::Free as u32, Ordering::Release);
        }
        if let Some(e) = self.errors(i) {
            e.clear();
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

/// Label sets of failed requests a worker keeps apart; later ones are
/// counted in one overflow series (bounded cardinality, DESIGN.md).
pub const ERROR_SERIES: usize = 64;
/// Bytes of one label set: `method \0 endpoint \0 error_type`, the endpoint
/// shortened to fit.
const ERROR_KEY_WORDS: usize = 32;
const ERROR_KEY_BYTES: usize = ERROR_KEY_WORDS * 8;

/// One failed-request series: its label set and count.
#[repr(C)]
pub struct ErrorSeries {
    key: [AtomicU64; ERROR_KEY_WORDS],
    key_len: AtomicU32,
    count: AtomicU64,
}

/// A worker's failed requests by (method, endpoint, error_type): an
/// append-only table written only by the worker, published entry by entry
/// with release/acquire ordering so the exporter reads it without locks.
#[repr(C)]
pub struct ErrorTable {
    /// Entries published so far.
    published: AtomicU32,
    /// Failed requests that found the table full.
    overflow: AtomicU64,
    series: [ErrorSeries; ERROR_SERIES],
}

/// One failed request's labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorLabels {
    pub method: String,
    pub endpoint: String,
    pub error_type: String,
}

impl ErrorTable {
    /// Counts one failed request (worker only). `index` is the worker's own
    /// map from label sets to entries, which it keeps in private memory.
    pub fn record(
        &self,
        index: &mut std::collections::HashMap<(String, String, String), usize>,
        l: &ErrorLabels,
    ) {
        let key = (l.method.clone(), l.endpoint.clone(), l.error_type.clone());
        if let Some(&i) = index.get(&key) {
            self.series[i].count.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let n = self.published.load(Ordering::Relaxed) as usize;
        let Some(entry) = self.series.get(n) else {
            self.overflow.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let bytes = encode_key(l);
        for (w, chunk) in entry.key.iter().zip(bytes.chunks(8)) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            w.store(u64::from_le_bytes(word), Ordering::Relaxed);
        }
        entry.key_len.store(bytes.len() as u32, Ordering::Relaxed);
        entry.count.store(1, Ordering::Relaxed);
        // Publish: a reader that sees the new length sees the entry.
        self.published.store(n as u32 + 1, Ordering::Release);
        index.insert(key, n);
    }

    /// The published series and the overflow count (exporter).
    pub fn read(&self) -> (Vec<(ErrorLabels, u64)>, u64) {
        let n = (self.published.load(Ordering::Acquire) as usize).min(ERROR_SERIES);
        let mut out = Vec::with_capacity(n);
        for e in &self.series[..n] {
            let len = (e.key_len.load(Ordering::Relaxed) as usize).min(ERROR_KEY_BYTES);
            let mut bytes = Vec::with_capacity(ERROR_KEY_BYTES);
            for w in &e.key {
                bytes.extend_from_slice(&w.load(Ordering::Relaxed).to_le_bytes());
            }
            bytes.truncate(len);
            if let Some(labels) = decode_key(&bytes) {
                out.push((labels, e.count.load(Ordering::Relaxed)));
            }
        }
        (out, self.overflow.load(Ordering::Relaxed))
    }

    fn clear(&self) {
        self.published.store(0, Ordering::Release);
        self.overflow.store(0, Ordering::Relaxed);
        for e in &self.series {
            e.key_len.store(0, Ordering::Relaxed);
            e.count.store(0, Ordering::Relaxed);
        }
    }
}

fn encode_key(l: &ErrorLabels) -> Vec<u8> {
    let mut error_type = l.error_type.as_bytes();
    error_type = &error_type[..floor_char(&l.error_type, 64)];
    let method = &l.method.as_bytes()[..floor_char(&l.method, 16)];
    let room = ERROR_KEY_BYTES - 2 - method.len() - error_type.len();
    let endpoint = &l.endpoint.as_bytes()[..floor_char(&l.endpoint, room)];
    let mut out = Vec::with_capacity(ERROR_KEY_BYTES);
    out.extend_from_slice(method);
    out.push(0);
    out.extend_from_slice(endpoint);
    out.push(0);
    out.extend_from_slice(error_type);
    out
}

/// The longest prefix of `s` of at most `max` bytes that ends on a char
/// boundary.
fn floor_char(s: &str, max: usize) -> usize {
    let mut n = s.len().min(max);
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    n
}

fn decode_key(b: &[u8]) -> Option<ErrorLabels> {
    let mut parts = b.splitn(3, |c| *c == 0);
    let text = |p: Option<&[u8]>| {
        p.and_then(|p| std::str::from_utf8(p).ok())
            .map(str::to_owned)
    };
    Some(ErrorLabels {
        method: text(parts.next())?,
        endpoint: text(parts.next())?,
        error_type: text(parts.next())?,
    })
}

/// Why the master reaped a worker: the `reason` label of
/// gunicorn_master_worker_restarts_total, besides signal names.
pub const RESTART_REASONS: [&str; 7] = [
    "timeout",
    "max_requests",
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
}

impl MasterStats {
    pub fn fold_epoch(&self) -> u64 {
        self.fold_epoch.load(Ordering::SeqCst)
    }

    /// Counts a worker exit with one of [`RESTART_REASONS`].
    pub fn count_restart(&self, reason: &str) {
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

    #[test]
    fn error_table_publishes_and_overflows() {
        let shm = Shm::new(2).unwrap();
        let t = shm.errors(0).unwrap();
        let mut index = std::collections::HashMap::new();
        let l = |ep: &str| ErrorLabels {
            method: "GET".into(),
            endpoint: ep.into(),
            error_type: "ZeroDivisionError".into(),
        };
        t.record(&mut index, &l("/a"));
        t.record(&mut index, &l("/a"));
        t.record(&mut index, &l(&"é".repeat(300)));
        let (series, overflow) = t.read();
        assert_eq!(overflow, 0);
        assert_eq!(series[0], (l("/a"), 2));
        // A long endpoint is cut on a character boundary.
        assert!(series[1].0.endpoint.starts_with("éé"));
        assert!(series[1].0.endpoint.len() < 256);
        for n in 0..ERROR_SERIES {
            t.record(&mut index, &l(&format!("/{n}")));
        }
        let (series, overflow) = t.read();
        assert_eq!(series.len(), ERROR_SERIES);
        assert_eq!(overflow, 2);
        shm.release(0);
        assert_eq!(t.read(), (Vec::new(), 0));
    }
}
