//! Request metrics in shared memory: one [`WorkerMetrics`] per worker slot,
//! written only by that worker (any number of its threads at once) with
//! relaxed atomic adds (no locks, no syscalls, no Python), read by the
//! exporter, and folded by the master into a retired accumulator when it
//! reaps the worker, so that server-wide counters stay monotonic across
//! restarts (docs/architecture.md, Shared memory).

use std::sync::atomic::{AtomicU64, Ordering};

/// prometheus_client's default buckets united with gunicorn-prometheus-exporter's
/// (the default of `metrics_duration_buckets`).
#[cfg(test)]
pub const DURATION_BUCKETS: [f64; 16] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 30.0, 60.0,
];

/// Room for duration bounds in shared memory (`metrics_duration_buckets`).
pub const MAX_DURATION_BUCKETS: usize = 32;

/// Whether `bounds` can be the duration histograms' upper bounds: 1 to
/// [`MAX_DURATION_BUCKETS`] finite values in ascending order (the
/// configuration validates `metrics_duration_buckets` with it).
pub fn check_duration_bounds(bounds: &[f64]) -> Result<(), String> {
    if bounds.is_empty() || bounds.len() > MAX_DURATION_BUCKETS {
        return Err(format!("give 1 to {MAX_DURATION_BUCKETS} bounds"));
    }
    if bounds.iter().any(|b| !b.is_finite()) {
        return Err("bounds must be finite numbers of seconds".to_owned());
    }
    if bounds.windows(2).any(|w| w[0] >= w[1]) {
        return Err("bounds must be in ascending order".to_owned());
    }
    Ok(())
}

static DURATION_BOUNDS: std::sync::OnceLock<Vec<f64>> = std::sync::OnceLock::new();

/// Sets the duration bounds for the run (master, before the first fork;
/// they cannot change later without mixing bucket layouts, so a reload
/// keeps the first ones). Returns false if other bounds were set already.
pub fn set_duration_bounds(bounds: Vec<f64>) -> bool {
    let want = bounds.clone();
    DURATION_BOUNDS.get_or_init(|| bounds) == &want
}

/// The duration histograms' upper bounds (at most [`MAX_DURATION_BUCKETS`]).
pub fn duration_bounds() -> &'static [f64] {
    DURATION_BOUNDS
        .get()
        .map_or(&[1.0][..], |b| &b[..b.len().min(MAX_DURATION_BUCKETS)])
}

/// Request and response body sizes, in bytes.
pub const SIZE_BUCKETS: [f64; 7] = [
    100.0,
    1_000.0,
    10_000.0,
    100_000.0,
    1_000_000.0,
    10_000_000.0,
    100_000_000.0,
];

/// Method label values; anything else is `OTHER`.
pub const METHODS: [&str; 10] = [
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE", "OTHER",
];

/// Status codes 100..=599 are counted individually.
pub const STATUS_MIN: u16 = 100;
pub const STATUSES: usize = 500;

pub fn method_index(method: &str) -> usize {
    METHODS[..9]
        .iter()
        .position(|m| *m == method)
        .unwrap_or(METHODS.len() - 1)
}

/// A histogram with room for `N` bounds (the bounds themselves, at most
/// `N`, are given by the caller): per-bucket (non-cumulative) counts, one
/// overflow bucket for +Inf, and the sum in micro-units (µs or bytes).
#[repr(C)]
pub struct Histogram<const N: usize> {
    counts: [AtomicU64; N],
    overflow: AtomicU64,
    sum_micros: AtomicU64,
}

/// A histogram as read: cumulative `(le, count)` for the finite bounds, the
/// total count and the sum in micro-units. Sums stay integers until they are
/// shown ([`micros`]): adding floats in another order (live workers plus the
/// retired ones, which change as workers are folded) could make a total
/// shrink by a rounding step, which Prometheus reads as a counter reset.
pub type Snapshot = (Vec<(f64, u64)>, u64, u64);

/// Micro-units as units (seconds, bytes): monotonic in its argument.
pub fn micros(sum: u64) -> f64 {
    sum as f64 / 1e6
}

/// Adds a histogram's snapshot into a server-wide one (same bounds).
pub fn add_snapshot(acc: &mut Snapshot, (buckets, count, sum): Snapshot) {
    if acc.0.is_empty() {
        acc.0 = buckets;
    } else {
        for (a, b) in acc.0.iter_mut().zip(buckets) {
            a.1 += b.1;
        }
    }
    acc.1 += count;
    acc.2 += sum;
}

/// The bucket a value falls in: an index into the bounds, or `bounds.len()`
/// for +Inf.
pub fn bucket_of(bounds: &[f64], value: f64) -> usize {
    bounds.partition_point(|b| *b < value)
}

impl<const N: usize> Histogram<N> {
    pub fn observe(&self, bounds: &[f64], value: f64) {
        self.observe_in(bucket_of(bounds, value), value);
    }

    /// Records `value` in bucket `i` (from [`bucket_of`]; an index past the
    /// bounds counts as +Inf).
    pub fn observe_in(&self, i: usize, value: f64) {
        match self.counts.get(i) {
            Some(c) => c.fetch_add(1, Ordering::Relaxed),
            None => self.overflow.fetch_add(1, Ordering::Relaxed),
        };
        self.sum_micros
            .fetch_add((value * 1e6).max(0.0) as u64, Ordering::Relaxed);
    }

    /// Cumulative (le, count) pairs for the finite bounds, the total count
    /// and the sum, as the exposition wants them.
    pub fn snapshot(&self, bounds: &[f64]) -> Snapshot {
        let mut cumulative = 0;
        let buckets = bounds
            .iter()
            .zip(&self.counts)
            .map(|(b, c)| {
                cumulative += c.load(Ordering::Relaxed);
                (*b, cumulative)
            })
            .collect();
        // Values past the last bound land in the slots after it (or in
        // `overflow` when the bounds fill the histogram): all are +Inf.
        let count = self.count().max(cumulative);
        (buckets, count, self.sum_micros.load(Ordering::Relaxed))
    }

    /// Adds the per-bucket (non-cumulative) counts into `out`: index `i`
    /// for bucket `i` of [`Histogram::observe_in`], index `N` for the
    /// overflow (indices from the number of bounds on are all +Inf).
    /// `out` needs `N + 1` entries; a shorter one misses the rest.
    pub fn add_counts_into(&self, out: &mut [u64]) {
        for (o, c) in out.iter_mut().zip(&self.counts) {
            *o += c.load(Ordering::Relaxed);
        }
        if let Some(o) = out.get_mut(N) {
            *o += self.overflow.load(Ordering::Relaxed);
        }
    }

    /// The sum of the observed values, in micro-units.
    pub fn sum_micros(&self) -> u64 {
        self.sum_micros.load(Ordering::Relaxed)
    }

    /// Observations recorded.
    pub fn count(&self) -> u64 {
        self.counts
            .iter()
            .chain(std::iter::once(&self.overflow))
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    fn add_into(&self, into: &Self) {
        for (a, b) in self.counts.iter().zip(&into.counts) {
            b.fetch_add(a.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        into.overflow
            .fetch_add(self.overflow.load(Ordering::Relaxed), Ordering::Relaxed);
        into.sum_micros
            .fetch_add(self.sum_micros.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    fn clear(&self) {
        for c in &self.counts {
            c.store(0, Ordering::Relaxed);
        }
        self.overflow.store(0, Ordering::Relaxed);
        self.sum_micros.store(0, Ordering::Relaxed);
    }
}

/// One worker's request metrics (also the layout of the retired accumulator).
#[repr(C)]
pub struct WorkerMetrics {
    pub duration: Histogram<MAX_DURATION_BUCKETS>,
    pub request_size: Histogram<7>,
    pub response_size: Histogram<7>,
    /// Server-wide families: duration by method, requests by method and status.
    pub method_duration: [Histogram<MAX_DURATION_BUCKETS>; 10],
    by_status: [[AtomicU64; STATUSES]; 10],
    /// Status codes outside 100..=599 (cannot happen from the app: the
    /// status line is validated; kept so that nothing is lost silently).
    odd_status: [AtomicU64; 10],
    pub in_flight: AtomicU64,
    /// Server-wide: from a request's first byte to the app call (waiting
    /// for a free thread or greenlet, and the head's own arrival).
    pub queue: Histogram<MAX_DURATION_BUCKETS>,
    /// Requests the worker can run at once (1, --threads, or
    /// --worker-connections), set when it starts serving.
    pub capacity: AtomicU64,
    /// WebSocket sessions open now (asgi).
    pub websockets: AtomicU64,
}

/// What the worker records once a request is answered.
pub struct Observation {
    pub method: usize,
    pub status: u16,
    pub seconds: f64,
    pub request_bytes: u64,
    pub response_bytes: u64,
}

impl WorkerMetrics {
    pub fn record(&self, o: &Observation) {
        let i = bucket_of(duration_bounds(), o.seconds);
        self.duration.observe_in(i, o.seconds);
        self.method_duration[o.method].observe_in(i, o.seconds);
        self.request_size
            .observe(&SIZE_BUCKETS, o.request_bytes as f64);
        self.response_size
            .observe(&SIZE_BUCKETS, o.response_bytes as f64);
        match o.status.checked_sub(STATUS_MIN).map(usize::from) {
            Some(i) if i < STATUSES => self.by_status[o.method][i].fetch_add(1, Ordering::Relaxed),
            _ => self.odd_status[o.method].fetch_add(1, Ordering::Relaxed),
        };
    }

    /// A request reaches the app `seconds` after its first byte.
    pub fn record_queue(&self, seconds: f64) {
        self.queue.observe(duration_bounds(), seconds);
    }

    /// Requests per (method, status); status 0 stands for codes outside 100..=599.
    pub fn requests_by_status(&self) -> Vec<(usize, u16, u64)> {
        let mut out = Vec::new();
        for (m, row) in self.by_status.iter().enumerate() {
            for (i, c) in row.iter().enumerate() {
                let n = c.load(Ordering::Relaxed);
                if n > 0 {
                    out.push((m, STATUS_MIN + i as u16, n));
                }
            }
            let odd = self.odd_status[m].load(Ordering::Relaxed);
            if odd > 0 {
                out.push((m, 0, odd));
            }
        }
        out
    }

    /// Adds the requests per status code (all methods) into `out`, index
    /// `status - STATUS_MIN`; codes outside 100..=599 are not included.
    pub fn add_statuses_into(&self, out: &mut [u64; STATUSES]) {
        for row in &self.by_status {
            for (o, c) in out.iter_mut().zip(row) {
                *o += c.load(Ordering::Relaxed);
            }
        }
    }

    /// Total requests recorded.
    pub fn requests(&self) -> u64 {
        self.duration.count()
    }

    /// Adds everything into `into` (the master's retired accumulator).
    pub fn fold_into(&self, into: &WorkerMetrics) {
        self.duration.add_into(&into.duration);
        self.request_size.add_into(&into.request_size);
        self.response_size.add_into(&into.response_size);
        for (a, b) in self.method_duration.iter().zip(&into.method_duration) {
            a.add_into(b);
        }
        for (ra, rb) in self.by_status.iter().zip(&into.by_status) {
            for (a, b) in ra.iter().zip(rb) {
                let n = a.load(Ordering::Relaxed);
                if n > 0 {
                    b.fetch_add(n, Ordering::Relaxed);
                }
            }
        }
        for (a, b) in self.odd_status.iter().zip(&into.odd_status) {
            b.fetch_add(a.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        self.queue.add_into(&into.queue);
    }

    /// Zeroes a slot for its next worker (master, after folding).
    pub fn clear(&self) {
        self.duration.clear();
        self.request_size.clear();
        self.response_size.clear();
        for h in &self.method_duration {
            h.clear();
        }
        for row in &self.by_status {
            for c in row {
                c.store(0, Ordering::Relaxed);
            }
        }
        for c in &self.odd_status {
            c.store(0, Ordering::Relaxed);
        }
        self.in_flight.store(0, Ordering::Relaxed);
        self.queue.clear();
        self.capacity.store(0, Ordering::Relaxed);
        self.websockets.store(0, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zeroed() -> Box<WorkerMetrics> {
        // SAFETY: WorkerMetrics holds only atomics, for which all-zero bytes
        // are valid values (this is what a fresh shared mapping contains).
        unsafe { Box::new(std::mem::zeroed()) }
    }

    #[test]
    fn records_and_folds() {
        set_duration_bounds(DURATION_BUCKETS.to_vec());
        let w = zeroed();
        let retired = zeroed();
        let obs = |method, status, seconds| Observation {
            method,
            status,
            seconds,
            request_bytes: 10,
            response_bytes: 5000,
        };
        w.record(&obs(method_index("GET"), 200, 0.003));
        w.record(&obs(method_index("GET"), 200, 0.2));
        w.record(&obs(method_index("BREW"), 418, 100.0));
        assert_eq!(w.requests(), 3);
        let (buckets, count, sum) = w.duration.snapshot(&DURATION_BUCKETS);
        assert_eq!(count, 3);
        assert_eq!(buckets[0], (0.005, 1));
        assert_eq!(buckets.last(), Some(&(60.0, 2)));
        assert!((micros(sum) - 100.203).abs() < 1e-6);
        let mut by = w.requests_by_status();
        by.sort();
        assert_eq!(by, vec![(0, 200, 2), (9, 418, 1)]);
        w.record_queue(0.001);
        w.record_queue(0.3);
        w.fold_into(&retired);
        w.clear();
        assert_eq!(w.requests(), 0);
        assert_eq!(w.queue.count(), 0);
        assert_eq!(retired.requests(), 3);
        let (queue, n, _) = retired.queue.snapshot(&DURATION_BUCKETS);
        assert_eq!((queue[0], n), ((0.005, 1), 2));
        assert_eq!(
            retired.response_size.snapshot(&SIZE_BUCKETS).0[2],
            (10_000.0, 3)
        );
    }

    /// A worker's sum moves into the retired one when it is folded; the
    /// server-wide sum shown must not change (as floats, 2 µs + 13,860 µs
    /// shows 0.013862000000000001 s and the folded 13,862 µs 0.013862 s: a
    /// decrease, which Prometheus takes for a counter reset).
    #[test]
    fn server_wide_sum_is_the_same_before_and_after_a_fold() {
        set_duration_bounds(DURATION_BUCKETS.to_vec());
        let live = zeroed();
        let retired = zeroed();
        let obs = |seconds| Observation {
            method: method_index("GET"),
            status: 200,
            seconds,
            request_bytes: 0,
            response_bytes: 0,
        };
        live.record(&obs(0.000002));
        retired.record(&obs(0.01386));
        let shown = |ms: &[&WorkerMetrics]| {
            let mut acc: Snapshot = (Vec::new(), 0, 0);
            for m in ms {
                add_snapshot(&mut acc, m.duration.snapshot(&DURATION_BUCKETS));
            }
            (acc.1, micros(acc.2))
        };
        let before = shown(&[&live, &retired]);
        live.fold_into(&retired);
        live.clear();
        let after = shown(&[&live, &retired]);
        assert_eq!(before, (2, 0.013862));
        assert_eq!(after, before);
    }
}
