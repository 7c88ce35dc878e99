//! Shared state of the statsd sender beside the request metrics: the
//! error-log lines counted by level, and the totals the exporter has sent.

use std::sync::atomic::AtomicU64;

use crate::metrics::store::{MAX_DURATION_BUCKETS, STATUSES};

/// Error-log lines at WARNING and above, counted by every process with one
/// atomic add per line (`crate::log::COUNTED` names the entries).
#[repr(C)]
pub struct LogCounts {
    pub counts: [AtomicU64; 4],
}

/// The server-wide totals the exporter has sent to statsd so far. They live
/// in shared memory rather than in the exporter so that an exporter that
/// restarts (HUP, or a crash the master repairs) carries on from them:
/// nothing counted is sent twice or never. Written by the exporter only
/// (one at a time: the master starts the next when the last one is reaped).
#[repr(C)]
pub struct StatsdSent {
    pub requests: AtomicU64,
    /// By status code, index `status - STATUS_MIN`.
    pub statuses: [AtomicU64; STATUSES],
    /// Duration histogram per bucket (non-cumulative), overflow last.
    pub duration: [AtomicU64; MAX_DURATION_BUCKETS + 1],
    pub duration_sum_micros: AtomicU64,
    pub log: [AtomicU64; 4],
    /// The `gunicorn.workers` gauge last sent, plus one (0: none yet).
    pub workers: AtomicU64,
}
